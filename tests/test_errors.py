"""Bad input from researchers: each error names the problem and the remedy (messages pinned)."""

from __future__ import annotations

import time

import pytest
from conftest import LocalFederation, clone_federation

import genofed
from genofed import (
    AuthError,
    DisclosureError,
    NodeError,
    ParseError,
    PlanningError,
    UnsupportedError,
)
from genofed.connectors.federation import FederationConfig


def test_syntax_error_has_line_and_column(fed1126):
    with pytest.raises(ParseError, match=r"SQL syntax error at line 2, column \d+") as e:
        fed1126.sql("SELECT count(*)\nFROM samples WHERE (sex = 'F'")
    assert e.value.line == 2 and e.value.col is not None
    assert isinstance(e.value, ValueError)


def test_unknown_table(fed1126):
    with pytest.raises(PlanningError, match=r"unknown table 'patients'; the federated tables are genotypes, phenotypes, samples, variants"):
        fed1126.sql("SELECT count(*) FROM patients")


def test_unknown_column(fed1126):
    with pytest.raises(PlanningError, match=r"unknown column: Column 'height' could not be resolved"):
        fed1126.sql("SELECT avg(height) FROM samples")


@pytest.mark.parametrize(
    "sql, match",
    [
        ("SELECT median(outcome) FROM samples", r"unsupported aggregate function MEDIAN; supported aggregates: COUNT\(\*\)"),
        ("SELECT count(*) FROM read_csv('/etc/passwd')", r"table functions such as .* are not supported"),
        ("SELECT count(DISTINCT population) FROM samples", r"COUNT\(DISTINCT \.\.\.\) is supported only on sample_id"),
        ("SELECT sex, row_number() OVER () FROM samples GROUP BY sex", r"window functions"),
        ("SELECT list(sample_id) FROM samples", r"unsupported aggregate function"),
    ],
)
def test_unsupported(fed1126, sql, match):
    with pytest.raises(UnsupportedError, match=match):
        fed1126.sql(sql)


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM samples", "SELECT sample_id, outcome FROM samples WHERE status = 1"],
)
def test_row_level_refused(fed1126, sql):
    with pytest.raises(DisclosureError, match="row-level results are refused") as e:
        fed1126.sql(sql)
    assert e.value.rule == "row_level"


def test_scalar_subquery_refused(fed1126):
    with pytest.raises(PlanningError, match="scalar subqueries are not supported"):
        fed1126.sql("SELECT count(*) FROM samples WHERE outcome > (SELECT avg(outcome) FROM samples)")


def test_cte_aggregated_across_nodes_refused(fed1126):
    with pytest.raises(PlanningError, match="CTE 'p' aggregates across samples of several nodes"):
        fed1126.sql("WITH p AS (SELECT population, avg(outcome) AS m FROM samples GROUP BY population) SELECT avg(m) FROM p")


def test_min_max_refused_by_node_policy(fed1126):
    with pytest.raises(DisclosureError, match="MIN/MAX reveal individual values and are not allowed by this node's policy"):
        fed1126.sql("SELECT max(outcome) FROM samples")


def test_min_max_allowed_when_policy_allows(fed_dir_1126, tmp_path, pooled1126):
    root = clone_federation(fed_dir_1126, tmp_path / "mm", min_count=1, allow_min_max=True)
    lf = LocalFederation(root)
    try:
        got = lf.fed.sql("SELECT min(outcome), max(outcome) FROM samples").to_arrow().to_pylist()[0]
    finally:
        lf.close()
    exp_ = pooled1126.sql("SELECT min(outcome), max(outcome) FROM samples").fetchall()[0]
    assert tuple(got.values()) == exp_


def test_wrong_token(fed_dir_1126, fed1126):
    cfg = FederationConfig.load(fed_dir_1126)
    cfg.nodes[0].token = "not-the-token"
    from genofed.api import Federation

    with Federation(cfg, timeout=10) as bad, pytest.raises(AuthError, match=r"node 'biobank_A' unauthenticated: token not recognised by this node"):
        bad.sql("SELECT count(*) FROM samples")


def test_node_down_names_node_and_releases_nothing(fed_dir_1126, tmp_path):
    root = clone_federation(fed_dir_1126, tmp_path / "down", min_count=1)
    lf = LocalFederation(root)
    try:
        assert lf.fed.sql("SELECT count(*) AS n FROM samples").to_arrow().column("n").to_pylist() == [1126]
        import os
        import signal

        pid = int((root / "biobank_B" / "node.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        t0 = time.monotonic()
        with pytest.raises(NodeError, match=r"node 'biobank_B' (unavailable|timeout|transport)") as e:
            lf.fed.sql("SELECT count(*) AS n FROM samples")
        assert e.value.node == "biobank_B"
        assert time.monotonic() - t0 < 30
    finally:
        lf.close()


def test_stalled_node_times_out(fed_dir_1126, tmp_path):
    import os
    import signal

    root = clone_federation(fed_dir_1126, tmp_path / "stall", min_count=1)
    lf = LocalFederation(root)
    pid = int((root / "biobank_C" / "node.pid").read_text())
    try:
        fed = genofed.connect(root, timeout=2)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(NodeError, match=r"node 'biobank_C' timeout"):
            fed.sql("SELECT count(*) FROM samples")
        assert time.monotonic() - t0 < 10
        fed.close()
    finally:
        os.kill(pid, signal.SIGCONT)
        lf.close()
