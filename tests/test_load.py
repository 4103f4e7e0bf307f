"""Load: concurrent queries from several researchers, each with their own token, against real
node processes; afterwards every answer equals the pooled oracle, no node's ledger double-spends
or overspends (racing identical DP queries charged once, a researcher racing past their budget
stopped exactly at it), every audit log verifies and records every answer, and the
membership-risk state lost no update. The mix and the checks: ``tests/loadrun.py`` (shared with
``benchmarks/bench_load.py``, the 100-query version)."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from conftest import clone_federation, set_node_section
from loadrun import (
    EPSILON,
    Job,
    Oracle,
    Report,
    check_answers,
    check_nodes,
    configure,
    make_mix,
    run_load,
)

import genofed
from genofed.cli import main
from genofed.connectors.config import NodeConfig, hash_token
from genofed.connectors.federation import FederationConfig, add_researcher, down, up
from genofed.engine.errors import ConfigError
from genofed.privacy.ledger import Ledger

BUDGET = 2.0
BURST = "SELECT count(*) AS n FROM samples s WHERE s.sex = 'F'"
RESEARCHERS = ["ana", "ben", "cho"]  # ana is the greedy one


def test_add_researcher_stores_only_the_hash(fed_dir_1126, tmp_path):
    root = clone_federation(fed_dir_1126, tmp_path / "fed", min_count=5)
    r = CliRunner().invoke(main, ["federation", "add-researcher", str(root), "dora"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert len(token) >= 32 and "secure channel" in r.stderr and token not in r.stderr
    fed = FederationConfig.load(root)
    assert token not in (root / "federation.toml").read_text()
    for n in fed.nodes:
        text = (root / n.config).read_text()
        assert token not in text
        cfg = NodeConfig.load(root / n.config)
        dora = cfg.researcher("dora")
        assert dora is not None and dora.token_sha256 == hash_token(token) and dora.roles == []
    kh = (root / fed.keyholder["config"]).read_text()
    assert hash_token(token) in kh and token not in kh
    with pytest.raises(ConfigError, match="already registered"):
        add_researcher(root, "dora")
    with pytest.raises(ConfigError, match=r"roles \['genetics'\] are not defined"):
        add_researcher(root, "eve", roles=["genetics"])
    assert all(NodeConfig.load(root / n.config).researcher("eve") is None for n in fed.nodes)  # nothing half-written
    r = CliRunner().invoke(main, ["federation", "add-researcher", str(root), "dora"])
    assert r.exit_code == 2 and "already registered" in r.output


def test_racing_identical_charge_waits_for_the_first_release(tmp_path):
    """Two identical DP releases racing past an empty cache: the second waits for the first's
    noisy table and gets it free; a first that never stores its release costs the second only a
    bounded wait, then it pays for its own draw."""
    import pyarrow as pa

    import genofed.privacy.ledger as ledger_mod

    with Ledger(tmp_path / "ledger.sqlite") as led:
        first = led.charge_or_cached("ana", "q1", "f", "k", 0.5, 0.0, 1.0, 0.0)
        assert first.charge is not None
        got: list = []
        t = threading.Thread(target=lambda: got.append(led.charge_or_cached("ana", "q2", "f", "k", 0.5, 0.0, 1.0, 0.0)))
        t.start()
        t.join(0.5)
        assert t.is_alive()  # waiting, not charging
        table = pa.table({"n": [41]})
        led.put("ana", "k", table)
        t.join(5)
        assert got and got[0].hit and got[0].cached.equals(table)
        assert led.spent("ana")[0] == 0.5 and len(led.entries("ana")) == 1
        # the first never stores its table (it failed after the charge): the wait is bounded
        assert led.charge_or_cached("ana", "q3", "f", "k2", 0.25, 0.0, 1.0, 0.0).charge is not None
        old = ledger_mod.PENDING_WAIT_S
        ledger_mod.PENDING_WAIT_S = 0.3
        try:
            again = led.charge_or_cached("ana", "q4", "f", "k2", 0.25, 0.0, 1.0, 0.0)
        finally:
            ledger_mod.PENDING_WAIT_S = old
        assert again.charge is not None and led.spent("ana")[0] == 1.0
        led.check_integrity()


@pytest.fixture(scope="module")
def load_fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_load"), min_count=5)
    # the load's exact answers are whole per-variant tables: rule 5's minimum minor-allele count
    # (tested in tests/attacks/test_rule5_membership_bypass.py) would withhold their rare variants
    set_node_section(root, "policy", {"min_mac": 1}, merge=True)
    configure(root, budget_epsilon=BUDGET)
    tokens = {r: add_researcher(root, r) for r in RESEARCHERS}
    up(root)
    try:
        yield root, tokens
    finally:
        down(root)


def test_concurrent_researchers_no_double_spend_audit_complete(load_fed, pooled1126):
    root, tokens = load_fed
    # first, eight identical DP queries of one researcher at once (they used to be charged up to
    # eight times for one answer), then a mix of 22 from all three
    burst = [Job("ben", "small", "plain", BURST, EPSILON, "dp_repeat") for _ in range(8)]
    jobs = burst + make_mix(RESEARCHERS, 22, large_share=0.2, greedy_attempts=6, dp_repeats=2, seed=3)
    assert {j.combine for j in jobs} == {"plain", "mpc"} and {j.size for j in jobs} == {"small", "large"}
    outcomes, _ = run_load(root, tokens, jobs, concurrency=10)
    errors = [(o.job.researcher, o.job.cls, o.error) for o in outcomes if not o.ok and not o.budget_refused]
    assert errors == []
    refused = [o for o in outcomes if o.budget_refused]
    assert refused and all(o.job.researcher == "ana" and o.job.tag == "dp_greedy" for o in refused)
    rep = Report()
    check_answers(rep, outcomes, Oracle(pooled1126))
    check_nodes(rep, root, outcomes, RESEARCHERS)
    rep.raise_if_any()
    assert rep.facts["answers_checked"] == len(outcomes) - len(refused)
    # the greedy researcher, 6 distinct ε = 0.5 counts racing against a budget of 2: every node
    # stopped exactly at the budget, never past it; at most 4 of them were answered
    assert all(v["ana"]["spent"] == pytest.approx(BUDGET) for v in rep.facts["ledgers"].values())
    assert sum(o.ok for o in outcomes if o.job.tag == "dp_greedy") <= BUDGET / EPSILON
    # the racing identical DP queries: all answered, identically (checked above), each charged once
    # per node; every other answer to them came from the node's cache
    repeats = [o for o in outcomes if o.job.tag == "dp_repeat" and o.ok]
    assert len(repeats) == 8 + 2 * 2
    assert rep.facts["identical_dp_groups"] == {"ben/plain": 8, "ben/mpc": 2, "cho/plain": 2}
    for v in rep.facts["ledgers"].values():
        assert v["ben"]["charges"] == 3 and v["cho"]["charges"] == 2  # each distinct DP query once
    burst_cached = [sum(1 for o in outcomes[:8] if o.provenance.details["dp"]["nodes"][n].get("cached")) for n in rep.facts["ledgers"]]
    assert burst_cached == [7, 7, 7]


def test_mpc_completes_while_the_coordinators_pool_is_busy(load_fed):
    """An mpc query's three mpc_run calls block until every party has its configuration: with
    the client's thread pool half held by other calls (as by concurrent queries of the same
    client), the third call must not wait behind them (it used to, until the protocol timed out)."""
    root, tokens = load_fed
    fed = genofed.connect(root, token=tokens["cho"], timeout=20)
    gate = threading.Event()
    try:
        fed.catalog()
        held = [fed._coord._pool.submit(gate.wait, 60) for _ in range(2)]
        res = fed.sql("SELECT s.sex, count(*) AS n FROM samples s GROUP BY 1", combine="mpc")
        assert sorted(res.to_arrow().column("n").to_pylist()) == [551, 575]
        assert not any(h.done() for h in held)
    finally:
        gate.set()
        fed.close()


def test_added_researcher_uses_he_through_the_key_holder(load_fed):
    """add_researcher registers the researcher at the local key holder too: combine='he' works
    with their own token, and the nodes audit the release under their name."""
    from genofed.privacy.audit import records

    root, tokens = load_fed
    with genofed.connect(root, token=tokens["cho"], timeout=60) as fed:
        res = fed.sql("SELECT s.sex, count(*) AS n FROM samples s GROUP BY 1", combine="he")
    assert sorted(res.to_arrow().column("n").to_pylist()) == [551, 575]
    qid = res.provenance.query_id
    for n in FederationConfig.load(root).nodes:
        rec = [r for r in records(root / n.name / "audit.log") if r.get("query_id") == qid]
        assert [(r["event"], r["researcher"], r["decision"]) for r in rec] == [("release", "cho", "encrypted")]
