"""Attack: averaging away differential-privacy noise by asking the same count again and again.

Each noisy answer is the true count plus independent noise, so the mean of k answers has error
~ std / sqrt(k): without a defence, enough repeats reveal the exact count. The node's defences:

1. the release cache: an identical query returns the *same* noisy answer (no new charge), so k
   repeats average to the first answer and the error does not shrink at all;
2. the privacy-budget ledger: a rewritten query (new text, so a new cache key) gets fresh noise
   but is charged, and once the researcher's budget is spent further queries are refused, which
   caps how many independent draws anyone can average.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pytest

from genofed.privacy.dp import Mechanism, add_noise, noise_scale
from genofed.privacy.ledger import BudgetExceeded, Ledger, release_key

TRUE_COUNT = 137  # e.g. carriers of a rare variant in one village
SQL = "SELECT count(*) AS n FROM samples s JOIN genotypes g USING (sample_id) WHERE g.alt > 0"
MECH = Mechanism("laplace", 0.5)  # scale 2 for a count (sensitivity 1)
STD = math.sqrt(2 * math.exp(-1 / 2.0) / (1 - math.exp(-1 / 2.0)) ** 2)  # discrete Laplace, scale 2


def answer(led: Ledger, researcher: str, sql: str, budget: float) -> int:
    """What a node does for a noisy count: cached answer, or charge → noise → cache."""
    key = release_key(sql, "plain", MECH, l1_sensitivity=1)
    got = led.charge_or_cached(researcher, "q", hashlib.sha256(sql.encode()).hexdigest(), key,
                               MECH.epsilon, MECH.delta, budget, 0.0)
    if got.cached is not None:
        return int(got.cached.column("n")[0].as_py())
    noisy = pa.table({"n": add_noise(np.array([TRUE_COUNT], dtype=np.int64), MECH, 1)})
    return int(led.put(researcher, key, noisy).column("n")[0].as_py())


def test_without_cache_averaging_converges():
    assert noise_scale(MECH, 1) == pytest.approx(2.0)
    trials = 200
    ks = [1, 4, 16, 64, 256]
    # one draw of trials·k values = trials·k independent releases (independent noise per value)
    draws = add_noise(np.full(trials * sum(ks), TRUE_COUNT, dtype=np.int64), MECH, 1)
    rmse = {}
    start = 0
    for k in ks:
        block = draws[start:start + trials * k].reshape(trials, k).astype(float)
        start += trials * k
        rmse[k] = math.sqrt(((block.mean(axis=1) - TRUE_COUNT) ** 2).mean())
    for k in ks:  # error ~ std / sqrt(k)
        assert rmse[k] * math.sqrt(k) == pytest.approx(STD, rel=0.35), rmse
    slope = np.polyfit(np.log(ks), np.log([rmse[k] for k in ks]), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.1)
    assert rmse[256] < 0.25  # 256 repeats pin the count down to well under one person


def test_with_cache_averaging_gains_nothing(tmp_path):
    attackers, k = 40, 16
    errors_first, errors_avg = [], []
    with Ledger(tmp_path / "ledger.db") as led:
        for a in range(attackers):
            who = f"attacker{a}"
            answers = [answer(led, who, SQL, budget=1.0) for _ in range(k)]
            assert len(set(answers)) == 1  # every repeat is the same noisy answer
            assert led.spent(who) == (0.5, 0.0)  # charged once
            errors_first.append(answers[0] - TRUE_COUNT)
            errors_avg.append(float(np.mean(answers)) - TRUE_COUNT)
        led.check_integrity()
    assert errors_avg == errors_first  # averaging k cached answers is worth exactly one answer
    rmse = math.sqrt(np.mean(np.square(errors_avg)))
    assert 0.45 * STD < rmse < 2.0 * STD  # still the full noise, not STD / 4


def test_rewritten_queries_run_out_of_budget(tmp_path):
    budget = 2.0  # four answers at ε = 0.5
    with Ledger(tmp_path / "ledger.db") as led:
        got = []
        for i in range(4):  # textually different, so each is a fresh (charged) draw
            got.append(answer(led, "mallory", SQL + f" AND {i} = {i}", budget))
        with pytest.raises(BudgetExceeded) as err:
            answer(led, "mallory", SQL + " AND 4 = 4", budget)
        assert err.value.rule == "dp_budget" and err.value.remaining_epsilon == 0.0
        assert str(TRUE_COUNT) not in str(err.value)
        # cached repeats are still served (free), fresh draws are not
        assert answer(led, "mallory", SQL + " AND 0 = 0", budget) == got[0]
        assert led.spent("mallory") == (2.0, 0.0)
        assert len(led.entries("mallory")) == 4
        led.check_integrity()
