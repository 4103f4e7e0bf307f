"""Differential privacy end to end: real nodes noise their partials with OpenDP before anything
leaves them (plain, mpc, he), charge a persistent per-researcher ledger, answer identical repeats
from their release cache, and keep the ledger consistent after kill -9 mid-charge.

Oracles: the exact answers from DuckDB over the pooled data; the nodes' own ledgers and caches.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import LocalFederation, clone_federation

from genofed.connectors.federation import FederationConfig, down, up
from genofed.engine.errors import GenofedError
from genofed.privacy.ledger import FAULT_PAUSE_ENV, Ledger, ipc_to_table

Q = "SELECT s.population, count(*) AS n FROM samples s GROUP BY 1"


def _dp_fed(src, dst, **dp):
    import tomllib

    import tomli_w

    root = clone_federation(src, dst, min_count=5, combine="plain")
    for n in FederationConfig.load(root).nodes:
        p = root / n.config
        node = tomllib.loads(p.read_text())
        node["dp"] = dp
        p.write_text(tomli_w.dumps(node))
    return root


def _ledgers(root):
    return {n.name: root / n.name / "state" / "ledger.sqlite" for n in FederationConfig.load(root).nodes}


@pytest.fixture(scope="module")
def dp_fed(fed_dir_1126, tmp_path_factory):
    root = _dp_fed(fed_dir_1126, tmp_path_factory.mktemp("fed_dp"), budget_epsilon=4.0, max_epsilon=1.0)
    lf = LocalFederation(root)
    try:
        yield root, lf.fed
    finally:
        lf.close()


def test_noisy_counts_plain_are_close_cached_and_charged(dp_fed, pooled1126):
    root, f = dp_fed
    truth = pooled1126.sql("SELECT population, count(*) AS n FROM samples GROUP BY 1").df().set_index("population")["n"]
    res = f.sql(Q, epsilon=1.0)
    got = res.to_pandas().set_index("population")["n"]
    err = (got - truth.loc[got.index]).to_numpy()
    nodes = res.provenance.details["dp"]["nodes"]
    assert set(nodes) == {"biobank_A", "biobank_B", "biobank_C"}
    # COUNT(*) and the node's own _n: L1 sensitivity 2, discrete Laplace scale 2/ε at each node
    assert all(p["scale"] == 2.0 and p["l1_sensitivity"] == 2 and p["noise"] == "discrete_laplace" for p in nodes.values())
    acc = sum(p["accuracy"] for p in nodes.values())  # 95 % half-width per node, summed
    assert np.abs(err).max() <= 2 * acc and (err != 0).any()  # noisy, and about as noisy as promised
    assert np.mean(np.abs(err) <= acc) >= 0.8
    # the same question again: the same noisy answer from each node's cache, no new charge
    again = f.sql(Q, epsilon=1.0).to_pandas().set_index("population")["n"]
    assert again.sort_index().equals(got.sort_index())
    for path in _ledgers(root).values():
        with Ledger(path) as led:
            assert led.spent("researcher")[0] == pytest.approx(1.0)
            led.check_integrity()


def test_near_duplicates_get_the_cached_noisy_answer(dp_fed, pooled1126):
    """Near-duplicate predicates (age >= 40 vs age > 39.99: the same people) cannot be averaged:
    the node keys its release cache by who is counted, so both get the same noisy answer and the
    second costs nothing. A predicate selecting other people is a new release."""
    root, f = dp_fed
    base = "SELECT count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = 'YRI' AND "
    before = {n: Ledger(p).spent("researcher")[0] for n, p in _ledgers(root).items()}
    a = f.sql(base + "p.age >= 40", epsilon=1.0).to_pandas()["n"].iloc[0]
    for text in ("p.age > 39.99", "p.age > 39.5", "NOT (p.age < 40)"):
        assert f.sql(base + text, epsilon=1.0).to_pandas()["n"].iloc[0] == a
    after = {n: Ledger(p).spent("researcher")[0] for n, p in _ledgers(root).items()}
    assert all(after[n] - before[n] <= 1.0 + 1e-9 for n in after)  # one charge for all four


def test_budget_is_enforced_per_researcher(dp_fed):
    """Budget 4 at every node, ε = 1 per new question: the question that would overspend is
    refused (rule dp_budget) and charged nothing; cached answers stay free afterwards."""
    root, f = dp_fed
    spent_before = Ledger(_ledgers(root)["biobank_A"]).spent("researcher")[0]
    answered = []
    for pop in ("GBR", "CEU", "CHB", "JPT", "LWK", "PUR"):
        q = f"SELECT count(*) AS n FROM samples s WHERE s.population = '{pop}'"
        try:
            f.sql(q, epsilon=1.0)
            answered.append(q)
        except GenofedError as e:
            assert "privacy budget exceeded" in str(e) and getattr(e, "rule", "dp_budget") == "dp_budget", str(e)
    for path in _ledgers(root).values():
        with Ledger(path) as led:
            assert led.spent("researcher")[0] == pytest.approx(4.0)  # never more than the budget
    assert len(answered) == round(4.0 - spent_before)  # what the earlier tests left
    with pytest.raises(GenofedError, match="per-query maximum"):
        f.sql("SELECT count(*) AS n FROM samples s WHERE s.population = 'MXL'", epsilon=2.0)
    f.sql(answered[0], epsilon=1.0)  # a repeat: from the cache, free


def test_noise_is_added_at_the_nodes_under_mpc(fed_dir_1126, tmp_path_factory, pooled1126):
    """Under MPC each node noises its partial before secret-sharing it: the released total is the
    sum of the nodes' noisy partials (read back from their caches), not the true total, so no
    party ever held an un-noised total."""
    root = _dp_fed(fed_dir_1126, tmp_path_factory.mktemp("fed_dp_mpc"), required=True, epsilon=0.5, max_epsilon=1.0)
    lf = LocalFederation(root)
    try:
        q = "SELECT count(*) AS n FROM samples s WHERE s.population = 'GBR'"
        got = lf.fed.sql(q, combine="mpc").to_pandas()["n"].iloc[0]  # no epsilon: the policy requires DP
        truth = pooled1126.sql("SELECT count(*) FROM samples WHERE population = 'GBR'").fetchall()[0][0]
        noisy_parts = []
        for path in _ledgers(root).values():
            import sqlite3

            con = sqlite3.connect(path)
            blobs = con.execute("SELECT ipc FROM releases").fetchall()
            con.close()
            assert len(blobs) == 1
            t = ipc_to_table(blobs[0][0])
            noisy_parts.append(int(pa.compute.sum(t.column("_p0")).as_py()))
        assert got == sum(noisy_parts)
        assert abs(got - truth) < 60
    finally:
        lf.close()


def test_ledger_survives_kill_9_mid_charge(fed_dir_1126, tmp_path_factory):
    """A node killed (SIGKILL) inside the charge transaction: after restart its ledger passes the
    integrity check, holds no half-written charge, and the query then runs and is charged once."""
    root = _dp_fed(fed_dir_1126, tmp_path_factory.mktemp("fed_dp_kill"), budget_epsilon=5.0)
    marker = root / "paused"
    os.environ[FAULT_PAUSE_ENV] = str(marker)
    try:
        up(root)
    finally:
        del os.environ[FAULT_PAUSE_ENV]
    import genofed

    f = genofed.connect(root, timeout=20)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, f.sql, "SELECT count(*) AS n FROM samples", epsilon=1.0), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "no node reached the charge"
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the paused node, mid-transaction
    t.join(60)
    assert errors  # the query failed, naming a node; nothing was released
    f.close()
    down(root)
    for path in _ledgers(root).values():
        if path.exists():
            with Ledger(path) as led:
                led.check_integrity()
                spent = led.spent("researcher")[0]
                assert spent == pytest.approx(sum(e["epsilon"] for e in led.entries("researcher")))
                assert spent in (0.0, 1.0)  # a committed charge, or none: never half of one
    lf = LocalFederation(root)
    try:
        lf.fed.sql("SELECT count(*) AS n FROM samples", epsilon=1.0)
        for path in _ledgers(root).values():
            with Ledger(path) as led:
                led.check_integrity()
                assert led.spent("researcher")[0] in (pytest.approx(1.0), pytest.approx(2.0))
    finally:
        lf.close()


def _catch(errors, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except BaseException as e:  # noqa: BLE001
        errors.append(e)
