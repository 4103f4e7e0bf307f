"""Release history on real node servers: each node logs, per researcher, what it released and
refused (the SQL as the researcher wrote it, never values), and answers ``history`` with the
calling researcher's own entries only (``Federation.history()``, ``genofed history``)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pyarrow.flight as flight
import pytest
from conftest import LocalFederation, clone_federation

import genofed
from genofed.connectors.federation import FederationConfig, add_researcher
from genofed.connectors.tls import flight_client
from genofed.engine import protocol as P
from genofed.engine.errors import GenofedError

NODES = ["biobank_A", "biobank_B", "biobank_C"]
# as a researcher types it: lower case, spacing, a comment
Q_SEX = "select sex, count(*) as n\n  from samples   -- people by sex\n group by sex"
Q_POP = "SELECT population, count(*) AS n FROM samples GROUP BY population"
Q_BOB = "SELECT count(*) AS n FROM samples"
Q_BASE = "SELECT count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = 'GBR'"
# the earlier group without one named person: refused (identifiers are join keys only)
Q_NARROWER = Q_BASE + " AND s.sample_id <> 'HG00096'"


@pytest.fixture(scope="module")
def hist(fed_dir_1126, tmp_path_factory):
    """A federation (min count 5, history gates on) with researchers ``researcher`` (the token in
    federation.toml), ``bob``, ``carol`` and ``dave``."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_history"), min_count=5, combine="plain")
    tokens = {name: add_researcher(root, name) for name in ("bob", "carol", "dave")}
    lf = LocalFederation(root)
    others = {name: genofed.connect(root, timeout=60, token=tok) for name, tok in tokens.items()}
    try:
        yield root, lf.fed, others
    finally:
        for f in others.values():
            f.close()
        lf.close()


def _cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "genofed.cli", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_history_lists_only_your_own_releases(hist):
    root, alice, others = hist
    bob = others["bob"]
    q1 = alice.sql(Q_SEX).provenance.query_id
    q2 = alice.sql(Q_POP, combine="mpc").provenance.query_id
    q3 = bob.sql(Q_BOB).provenance.query_id
    h = alice.history()
    assert h.column_names == ["node", "release_id", "query_id", "time", "sql", "kind", "combine", "decision", "rule"]
    rows = h.to_pylist()
    assert sorted((r["node"], r["query_id"]) for r in rows) == sorted((n, q) for n in NODES for q in (q1, q2))
    by_q = {q: [r for r in rows if r["query_id"] == q] for q in (q1, q2)}
    assert {(r["sql"], r["combine"], r["decision"], r["kind"], r["rule"]) for r in by_q[q1]} == {(Q_SEX, "plain", "released", "sql", None)}
    assert {(r["sql"], r["combine"], r["decision"]) for r in by_q[q2]} == {(Q_POP, "mpc", "shared")}
    assert all(r["time"].endswith("Z") and r["time"][:2] == "20" for r in rows)
    assert [r["query_id"] for r in rows if r["node"] == "biobank_A"] == [q1, q2]  # oldest first
    assert q3 not in h.column("query_id").to_pylist() and Q_BOB not in h.column("sql").to_pylist()
    # the other researcher sees their one query, nothing of the first one's
    b = bob.history().to_pylist()
    assert {(r["query_id"], r["sql"]) for r in b} == {(q3, Q_BOB)} and len(b) == 3
    # one node, and pandas
    only_b = alice.history(node="biobank_B").to_pandas()
    assert list(only_b["node"].unique()) == ["biobank_B"] and set(only_b["query_id"]) == {q1, q2}
    with pytest.raises(GenofedError, match="no node 'biobank_Z'.*biobank_A"):
        alice.history(node="biobank_Z")
    # the CLI (federation.toml's token: the first researcher)
    js = json.loads(_cli("history", "--federation", root, "--format", "json").stdout)
    assert {(r["query_id"], r["sql"]) for r in js} == {(q1, Q_SEX), (q2, Q_POP)} and len(js) == 6
    csv = _cli("history", "--federation", root, "--format", "csv", "--node", "biobank_A").stdout.splitlines()
    assert csv[0] == "node,release_id,query_id,time,sql,kind,combine,decision,rule"
    assert {line.split(",")[2] for line in csv[1:] if line.startswith("biobank_A,")} == {q1, q2}
    table = _cli("history", "--federation", root)
    assert q1 in table.stdout and q2 in table.stdout and q3 not in table.stdout and "6 entries" in table.stderr
    bad = _cli("history", "--federation", root, "--node", "nope", check=False)
    assert bad.returncode == 2 and "no node 'nope'" in bad.stderr


def test_refusal_appears_with_its_rule(hist):
    _, _, others = hist
    carol = others["carol"]
    q_ok = carol.sql(Q_BASE).provenance.query_id
    with pytest.raises(GenofedError, match="identifier"):
        carol.sql(Q_NARROWER)
    rows = carol.history().to_pylist()
    ok = [r for r in rows if r["query_id"] == q_ok]
    assert len(ok) == 3 and all(r["decision"] == "released" and r["sql"] == Q_BASE for r in ok)
    refused = [r for r in rows if r["decision"] == "refused"]
    assert refused and all(r["rule"] == "identifier" and r["sql"] == Q_NARROWER and r["combine"] == "plain" for r in refused)
    assert {r["query_id"] for r in rows} - {q_ok} == {refused[0]["query_id"]}  # the refused query, under one query id


def test_encrypted_releases_and_table_function_rounds_carry_the_query_as_written(hist):
    _, _, others = hist
    dave = others["dave"]
    q_he = dave.sql(Q_SEX, combine="he").provenance.query_id
    rows = dave.history().to_pylist()
    assert {(r["query_id"], r["sql"], r["combine"], r["decision"]) for r in rows} == {(q_he, Q_SEX, "he", "encrypted")}
    sql = "SELECT * FROM gwas_linear('samples.outcome', chrom => '22', start => 16000000, stop => 16500000) LIMIT 5"
    try:
        dave.sql(sql)
    except GenofedError:
        pass  # a node may refuse a round (re-identification gate): the refusal is logged all the same
    rounds = [r for r in dave.history().to_pylist() if r["query_id"] != q_he]
    assert rounds and {r["sql"] for r in rounds} == {sql}
    assert "analysis" in {r["kind"] for r in rounds}


def test_history_action_answers_for_the_caller_only(hist):
    root, _, others = hist
    bob = others["bob"]
    t = bob._transports[0]
    # a body naming another researcher changes nothing: the token decides whose history it is
    ans = t.action(P.ACTION_HISTORY, {"researcher": "researcher", "limit": 1000}, 10)
    assert ans["researcher"] == "bob" and all(r["user_sql"] in (Q_BOB, None) for r in ans["releases"])
    assert len(t.history(limit=1)) <= 1
    for body in ({"limit": -1}, {"limit": 10**6}, {"limit": "5"}, {"since": "yesterday"}, {"since": 10**400}):
        with pytest.raises(GenofedError, match="malformed history request"):
            t.action(P.ACTION_HISTORY, body, 10)
    cfg = FederationConfig.load(root)
    n = cfg.nodes[0]
    client = flight_client(n.location(root), cfg.client_tls())
    try:
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(client.do_action(flight.Action(P.ACTION_HISTORY, b"{}")))
    finally:
        client.close()
    for n in cfg.nodes:  # the log is readable by the node's owner only
        path = root / n.name / "state" / "releases.sqlite"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
