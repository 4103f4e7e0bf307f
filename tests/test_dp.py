"""Differential privacy: OpenDP noise (statistics, accounting, speed), the per-researcher budget
ledger (exact boundary, concurrent processes, kill -9 inside a transaction) and the release cache
(identical answers across restarts, never shared between researchers). Real OpenDP, real SQLite,
real processes."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from genofed.engine.errors import ConfigError, DisclosureError
from genofed.privacy.dp import Mechanism, accuracy, add_noise, measurement, noise_scale, provenance
from genofed.privacy.ledger import (
    FAULT_PAUSE_ENV,
    BudgetExceeded,
    Ledger,
    LedgerIntegrityError,
    ReleaseCache,
    release_key,
)

ROOT = Path(__file__).resolve().parents[1]


def discrete_laplace_var(scale: float) -> float:
    q = math.exp(-1.0 / scale)
    return 2 * q / (1 - q) ** 2


def discrete_gaussian_var(sigma: float) -> float:
    x = np.arange(-int(40 * sigma) - 10, int(40 * sigma) + 11, dtype=float)
    w = np.exp(-(x**2) / (2 * sigma**2))
    return float((x**2 * w).sum() / w.sum())


# -- mechanisms ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"kind": "laplace", "epsilon": 0.0},
    {"kind": "laplace", "epsilon": -1.0},
    {"kind": "laplace", "epsilon": math.inf},
    {"kind": "laplace", "epsilon": math.nan},
    {"kind": "laplace", "epsilon": 1.0, "delta": 1e-6},
    {"kind": "gaussian", "epsilon": 1.0},
    {"kind": "gaussian", "epsilon": 1.0, "delta": 1.0},
    {"kind": "gaussian", "epsilon": 1.0, "delta": -1e-9},
    {"kind": "exponential", "epsilon": 1.0},
    {"kind": "laplace", "epsilon": True},
])
def test_mechanism_validation(kwargs):
    with pytest.raises(ConfigError) as err:
        Mechanism(**kwargs)
    assert isinstance(err.value, ValueError)


def test_laplace_scale_and_accounting():
    for eps in (0.1, 0.3, 0.7, 1.0, 3.0):
        for l1 in (1, 2, 7):
            mech = Mechanism("laplace", eps)
            s = noise_scale(mech, l1)
            assert s == pytest.approx(l1 / eps, rel=1e-12)
            meas = measurement(mech, l1)
            assert meas.map(l1) <= eps  # OpenDP's own privacy map vouches for the charge
            assert str(meas.output_measure) == "MaxDivergence"
    with pytest.raises(ValueError):
        noise_scale(Mechanism("laplace", 1.0), 0)


def test_gaussian_scale_and_accounting():
    for eps, delta, l2 in ((1.0, 1e-6, 1.0), (2.0, 1e-5, math.sqrt(3))):
        mech = Mechanism("gaussian", eps, delta)
        sigma = noise_scale(mech, l2_sensitivity=l2)
        meas = measurement(mech, l2_sensitivity=l2)
        e, d = meas.map(l2)
        assert e <= eps and d <= delta
        # the smallest such scale: 1% less noise no longer satisfies (ε, δ)
        import opendp.prelude as dp
        vd = dp.vector_domain(dp.atom_domain(T=dp.i64))
        weaker = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(
            dp.m.make_gaussian(vd, dp.l2_distance(T=dp.f64), scale=sigma * 0.99)), delta)
        assert weaker.map(l2)[0] > eps
        # and it scales linearly with the sensitivity
        assert noise_scale(mech, l2_sensitivity=2 * l2) == pytest.approx(2 * sigma, rel=1e-6)


def test_laplace_noise_statistics():
    mech = Mechanism("laplace", 0.5)
    s = noise_scale(mech, 1)
    n = 40_000
    base = np.full(n, 1000, dtype=np.int64)
    noise = add_noise(base, mech, 1) - base
    var = discrete_laplace_var(s)
    assert noise.dtype == np.int64
    assert abs(noise.mean()) < 5 * math.sqrt(var / n)
    assert noise.var() == pytest.approx(var, rel=0.06)  # ~6 standard errors (kurtosis 6)
    assert math.sqrt(var) == pytest.approx(math.sqrt(2) * s, rel=0.05)  # ~sqrt(2)·scale
    # the (1 − α) interval covers what it says: exactly (pmf ∝ q^|x|) at least 95%, and empirically
    acc = accuracy(mech, s, 0.05)
    q = math.exp(-1.0 / s)
    inside = np.arange(-math.ceil(acc) + 1, math.ceil(acc))
    inside = inside[np.abs(inside) < acc]
    exact = float(((1 - q) / (1 + q) * q ** np.abs(inside)).sum())
    assert 0.95 <= exact < 0.97
    assert (np.abs(noise) < acc).mean() == pytest.approx(exact, abs=0.01)


def test_gaussian_noise_statistics():
    mech = Mechanism("gaussian", 1.0, 1e-6)
    sigma = noise_scale(mech, l2_sensitivity=1.0)
    n = 25_000
    base = np.arange(n, dtype=np.int64)
    noise = add_noise(base, mech, l2_sensitivity=1.0) - base
    var = discrete_gaussian_var(sigma)
    assert var == pytest.approx(sigma**2, rel=1e-3)
    assert abs(noise.mean()) < 5 * math.sqrt(var / n)
    assert noise.var() == pytest.approx(var, rel=0.06)
    acc = accuracy(mech, sigma, 0.05)
    assert (np.abs(noise) < acc).mean() >= 0.94
    prov = provenance(mech, l2_sensitivity=1.0)
    assert prov["noise"] == "discrete_gaussian" and prov["scale"] == sigma and prov["accuracy"] == acc


def test_add_noise_shapes_and_speed(capsys):
    lap = Mechanism("laplace", 1.0)
    gau = Mechanism("gaussian", 1.0, 1e-6)
    for mech in (lap, gau):
        out = add_noise(np.array([], dtype=np.int64), mech)
        assert out.dtype == np.int64 and out.shape == (0,)
    with pytest.raises(ValueError):
        add_noise(np.array([0.5, 1.5]), lap)
    with pytest.raises(ValueError):
        add_noise(np.zeros((2, 2), dtype=np.int64), lap)
    big = np.random.default_rng(1).integers(0, 10_000, 100_000).astype(np.int64)
    t = time.perf_counter()
    noisy = add_noise(big, lap)
    elapsed = time.perf_counter() - t
    assert noisy.shape == big.shape and noisy.dtype == np.int64
    assert (noisy != big).mean() > 0.3  # noise on (nearly) every value, one measurement
    with capsys.disabled():
        print(f"\n[dp] discrete laplace on 100,000 int64 values: {elapsed:.2f} s")
    assert elapsed < 20


# -- ledger ----------------------------------------------------------------------------------


def test_budget_exact_boundary(tmp_path):
    with Ledger(tmp_path / "ledger.db") as led:
        for i in range(10):  # ten charges of 0.1 spend a budget of 1.0 exactly
            c = led.charge("alice", f"q{i}", "f" * 64, 0.1, 0.0, 1.0, 0.0)
        assert (c.spent_epsilon, c.remaining_epsilon) == (1.0, 0.0)
        with pytest.raises(BudgetExceeded) as err:
            led.charge("alice", "q10", "f" * 64, 0.1, 0.0, 1.0, 0.0)
        assert isinstance(err.value, DisclosureError) and err.value.rule == "dp_budget"
        assert "remain" in str(err.value) and err.value.remaining_epsilon == 0.0
        # a smaller charge than what is left still fits at the boundary; δ is enforced too
        led.charge("bob", "q", "f", 0.25, 5e-7, 1.0, 1e-6)
        led.charge("bob", "q", "f", 0.75, 5e-7, 1.0, 1e-6)
        assert led.spent("bob") == (1.0, 1e-6)
        with pytest.raises(BudgetExceeded):
            led.charge("bob", "q", "f", 1e-9, 0.0, 1.0, 1e-6)
        with pytest.raises(BudgetExceeded) as err:
            led.charge("carol", "q", "f", 0.1, 2e-6, 1.0, 1e-6)  # δ over budget alone
        assert err.value.remaining_delta == 1e-6
        # a raised budget (policy change) takes effect at once
        led.charge("alice", "q11", "f", 0.1, 0.0, 1.1, 0.0)
        assert led.spent("alice") == pytest.approx((1.1, 0.0))
        assert led.spent("nobody") == (0.0, 0.0)
        assert [e["query_id"] for e in led.entries("alice")] == [*(f"q{i}" for i in range(10)), "q11"]
        assert len(led.entries()) == 13  # refused charges left no row
        led.check_integrity()
        with pytest.raises(ValueError):
            led.charge("alice", "q", "f", 0.0, 0.0, 1.0, 0.0)
        with pytest.raises(ValueError):
            led.charge("alice", "q", "f", math.nan, 0.0, 1.0, 0.0)


def test_threads_share_budget(tmp_path):
    path = tmp_path / "ledger.db"
    shared = Ledger(path)
    ok: list[int] = []
    lock = threading.Lock()

    def worker(own: bool) -> None:
        led = Ledger(path) if own else shared
        for _ in range(30):
            try:
                led.charge("t", "q", "f", 0.01, 0.0, 1.0, 0.0)
                with lock:
                    ok.append(1)
            except BudgetExceeded:
                pass
        if own:
            led.close()

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 100 and shared.spent("t") == (1.0, 0.0)
    shared.check_integrity()
    shared.close()


# Runs in each spawned process through the builtin ``exec``, so the children import only the
# ledger (not this module, OpenDP and pytest): eight processes start in about a second.
WORKER = """
import json, os, time
from genofed.privacy.ledger import BudgetExceeded, Ledger
led = Ledger(PATH)
open(OUT + ".ready", "w").close()
while not os.path.exists(GO):  # start charging together
    time.sleep(0.005)
ids = []
for i in range(N):
    try:
        ids.append(led.charge(WHO, f"{os.getpid()}-{i}", "f" * 64, 0.01, 1e-9, 1.5, 1e-6).id)
    except BudgetExceeded:
        pass
led.close()
with open(OUT, "w") as f:
    json.dump(ids, f)
"""


def test_concurrent_processes_never_overspend(tmp_path):
    path, go = str(tmp_path / "ledger.db"), tmp_path / "go"
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"ids{i}.json" for i in range(8)]
    procs = [ctx.Process(target=exec, args=(WORKER, {"PATH": path, "GO": str(go), "WHO": "mallory",
                                                     "N": 40, "OUT": str(out)}))
             for out in outs]  # 8 × 40 = 320 tries of ε = 0.01 against a budget of 1.5
    for p in procs:
        p.start()
    deadline = time.time() + 60
    while not all(Path(f"{out}.ready").exists() for out in outs):  # all started: then go
        assert time.time() < deadline and all(p.exitcode in (None, 0) for p in procs)
        time.sleep(0.01)
    go.touch()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [json.loads(out.read_text()) for out in outs]
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == 150
    assert sum(1 for r in results if r) > 1  # the processes really interleaved
    with Ledger(path) as led:
        led.check_integrity()
        entries = led.entries("mallory")
        assert sorted(e["id"] for e in entries) == sorted(ids)
        eps, delta = led.spent("mallory")
        assert eps == 1.5 and delta == pytest.approx(150e-9)
        assert math.fsum(e["epsilon"] for e in entries) == pytest.approx(eps, abs=1e-12)


CHILD = """
import os, sys
from genofed.privacy.ledger import Ledger, FAULT_PAUSE_ENV
led = Ledger(sys.argv[1])
mode = sys.argv[2]
i = 0
while True:
    if mode == "pause" and i == 5:
        os.environ[FAULT_PAUSE_ENV] = sys.argv[3]
    c = led.charge("eve", f"q{i}", "f" * 64, 0.001, 0.0, 1000.0, 0.0)
    print(c.id, flush=True)  # printed only after the commit returned
    i += 1
"""


def _child(path: Path, mode: str, marker: Path | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_PAUSE_ENV}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode, str(marker or "")],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _check_after_kill(path: Path, committed: list[int]) -> None:
    with Ledger(path) as led:  # opens (recovers the WAL) after the kill
        led.check_integrity()
        entries = led.entries("eve")
        ids = [e["id"] for e in entries]
        assert set(committed) <= set(ids)  # every committed charge is there
        assert len(ids) <= len(committed) + 1  # at most one committed but not yet printed
        assert led.spent("eve")[0] == pytest.approx(0.001 * len(ids), abs=1e-12)
        assert all(e["epsilon"] == 0.001 and e["fragment_sha256"] == "f" * 64 for e in entries)
        # still usable
        led.charge("eve", "after", "f", 0.001, 0.0, 1000.0, 0.0)
        led.check_integrity()


def test_kill9_inside_open_transaction(tmp_path):
    path, marker = tmp_path / "ledger.db", tmp_path / "paused"
    proc = _child(path, "pause", marker)
    try:
        deadline = time.time() + 30
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "child never reached the fault hook"
            time.sleep(0.02)
        # the child holds the write lock with an uncommitted row; readers see only committed rows
        with Ledger(path) as led:
            assert len(led.entries("eve")) == 5 and led.spent("eve")[0] == pytest.approx(0.005)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    committed = [int(x) for x in out.split()]
    assert len(committed) == 5
    _check_after_kill(path, committed)
    with Ledger(path) as led:
        assert len(led.entries("eve")) == 6  # the 5 committed + the one charged after the kill


def test_kill9_while_charging_in_a_loop(tmp_path):
    for round_ in range(3):  # killed at a different point of the commit cycle each time
        path = tmp_path / f"ledger{round_}.db"
        proc = _child(path, "loop")
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # charging is under way
            assert first.strip()
            time.sleep(0.05 + 0.07 * round_)
            proc.send_signal(signal.SIGKILL)
            rest = proc.stdout.read()  # (not communicate(): it would skip readline's buffer)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        committed = [int(x) for x in (first + rest).split()]
        assert len(committed) > 1
        _check_after_kill(path, committed)


def test_integrity_check_detects_tampering(tmp_path):
    import sqlite3

    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.charge("a", "q", "f", 0.5, 0.0, 1.0, 0.0)
        led.check_integrity()
    con = sqlite3.connect(path)
    con.execute("DELETE FROM charges")  # someone removes a charge to regain budget
    con.commit()
    con.close()
    with Ledger(path) as led, pytest.raises(LedgerIntegrityError):
        led.check_integrity()


# -- release cache -----------------------------------------------------------------------------


def _noisy_table(mech: Mechanism) -> pa.Table:
    counts = np.array([120, 45, 0, 7], dtype=np.int64)
    t = pa.table({"population": ["EUR", "AFR", "EAS", "SAS"], "n": add_noise(counts, mech)})
    return t.replace_schema_metadata({"genofed.dp": "discrete_laplace eps=0.5"})


def test_cache_survives_restart_byte_identical(tmp_path):
    path = tmp_path / "ledger.db"
    mech = Mechanism("laplace", 0.5)
    key = release_key("SELECT population, count(*) FROM samples GROUP BY 1", "plain", mech,
                      l1_sensitivity=1)
    assert key != release_key("SELECT population, count(*) FROM samples GROUP BY 1", "secure", mech,
                              l1_sensitivity=1)
    assert key != release_key("SELECT population, count(*) FROM samples GROUP BY 1", "plain",
                              Mechanism("laplace", 0.25), l1_sensitivity=1)
    with Ledger(path) as led:
        first = led.charge_or_cached("alice", "q1", "f", key, 0.5, 0.0, 1.0, 0.0)
        assert not first.hit and first.charge is not None
        table = _noisy_table(mech)
        stored = led.put("alice", key, table)
        assert stored.equals(table)
        # a second put (a racing identical query) does not replace the released answer
        assert led.put("alice", key, _noisy_table(mech)).equals(table)
        blob = led.cache.get_bytes("alice", key)
    with Ledger(path) as led:  # restart
        again = led.charge_or_cached("alice", "q2", "f", key, 0.5, 0.0, 1.0, 0.0)
        assert again.hit and again.charge is None
        assert again.cached is not None and again.cached.equals(table)
        assert again.cached.schema.metadata == table.schema.metadata
        assert led.cache.get_bytes("alice", key) == blob
        assert led.spent("alice") == (0.5, 0.0)  # the repeat was free
        led.check_integrity()
    with ReleaseCache(path) as cache:  # the cache alone, on the same file
        got = cache.get("alice", key)
        assert got is not None and got.equals(table)


def test_cache_never_shared_between_researchers(tmp_path):
    path = tmp_path / "ledger.db"
    mech = Mechanism("laplace", 0.5)
    key = release_key("SELECT count(*) FROM samples", "plain", mech)
    with Ledger(path) as led:
        assert not led.charge_or_cached("alice", "q", "f", key, 0.5, 0.0, 1.0, 0.0).hit
        led.put("alice", key, _noisy_table(mech))
        bob = led.charge_or_cached("bob", "q", "f", key, 0.5, 0.0, 1.0, 0.0)
        assert not bob.hit and bob.charge is not None  # bob pays for his own draw
        assert led.cache.get("bob", key) is None
        led.put("bob", key, _noisy_table(mech))
        assert led.spent("alice") == led.spent("bob") == (0.5, 0.0)
        # a cached answer is served even when the budget is gone; a new one is refused
        assert led.charge_or_cached("alice", "q", "f", key, 0.5, 0.0, 0.5, 0.0).hit
        other = release_key("SELECT count(*) FROM samples WHERE sex = 'F'", "plain", mech)
        with pytest.raises(BudgetExceeded):
            led.charge_or_cached("alice", "q", "f", other, 0.5, 0.0, 0.5, 0.0)
