"""Minimum-count rule at 5: small groups are suppressed and reported, never released."""

from __future__ import annotations

import json

from genofed.engine.protocol import N_COLUMN


def test_small_groups_suppressed(fed1126_k5, pooled1126):
    q = "SELECT population, sex, status, count(*) AS n, avg(outcome) AS m FROM samples GROUP BY ALL"
    r = fed1126_k5.sql(q)
    got = {(d["population"], d["sex"], d["status"]): d["n"] for d in r.to_arrow().to_pylist()}
    pooled = {(p, s, st): n for p, s, st, n in pooled1126.sql(
        "SELECT population, sex, status, count(*) FROM samples GROUP BY ALL").fetchall()}
    # every released group is exact and >= 5 in the federation and at every node that has it
    assert got and all(n >= 5 for n in got.values())
    for k, n in got.items():
        assert pooled[k] == n
    # provenance counts what is missing, and never says which groups they are (rule 3)
    missing = set(pooled) - set(got)
    assert missing, "the split must produce some small cells for this test to mean anything"
    assert r.provenance.suppressed == len(missing)
    assert "withheld" in r.provenance.suppression_rule
    text = json.dumps(r.provenance.to_dict(), default=str)
    for key in missing:
        assert json.dumps(list(key)) not in text


def test_group_small_at_one_node_is_suppressed_not_underreported(fed1126_k5, pooled1126):
    # per-node small groups: plain mode cannot release a sum that misses a node
    r = fed1126_k5.sql("SELECT population, count(*) AS n FROM samples WHERE status = 1 AND sex = 'M' GROUP BY population")
    pooled = dict(pooled1126.sql(
        "SELECT population, count(*) FROM samples WHERE status = 1 AND sex = 'M' GROUP BY population").fetchall())
    for row in r.to_arrow().to_pylist():
        assert row["n"] == pooled[row["population"]]


def test_global_aggregate_below_threshold_releases_nothing(fed1126_k5):
    r = fed1126_k5.sql("SELECT count(*) AS n, avg(outcome) AS m FROM samples WHERE population = 'GBR' AND sex = 'M' AND status = 1 AND outcome > 11")
    assert r.num_rows == 0
    assert r.provenance.suppressed == 1


def test_zero_counts_are_not_suppressed(fed1126_k5):
    r = fed1126_k5.sql("SELECT count(*) AS n FROM samples WHERE population = 'nowhere'")
    assert r.to_arrow().column("n").to_pylist() == [0]


def test_suppressed_values_never_in_messages_or_provenance(fed1126_k5):
    r = fed1126_k5.sql("SELECT population, sex, status, count(*) AS n FROM samples GROUP BY ALL")
    prov = r.provenance.to_dict()
    assert prov["suppressed"] > 0 and sum(prov["withheld_by"].values()) > 0
    text = json.dumps({k: v for k, v in prov.items() if k != "fragment_sql"}, default=str)
    assert N_COLUMN not in text
