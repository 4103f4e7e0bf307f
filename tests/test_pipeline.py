"""The node's request pipeline (genofed.connectors.pipeline): one ordered list of steps for every
transport and combine mode, every outcome audited once.

An in-process node server over a real store of the 1126 federation (minimum count 5); fragments
come from the real planner. The steps are observed by wrapping them (nothing is replaced), and the
node's audit log is read back.
"""

from __future__ import annotations

import json

import pyarrow.flight as flight
import pytest
from conftest import clone_federation

from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.connectors.node import NodeServer
from genofed.connectors.pipeline import Request
from genofed.engine import protocol as P
from genofed.engine.planner import plan_query
from genofed.engine.sqlcheck import parse

STEPS = ["audit", "combine_policy", "rate_limit", "egress", "validate", "authorize", "limits", "execute", "disclose"]


@pytest.fixture(scope="module")
def server(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_pipeline"), min_count=5, combine="plain")
    n = FederationConfig.load(root).nodes[0]
    srv = NodeServer(NodeConfig.load(root / n.config))
    visited: list[str] = []
    steps = []
    for name, fn in srv.pipeline.steps:
        def wrapped(req, proceed, _fn=fn, _name=name):
            visited.append(_name)
            return _fn(req, proceed)
        steps.append((name, wrapped))
    srv.pipeline.steps = steps
    srv.visited = visited  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()


def _fragment(server, sql: str) -> str:
    return plan_query(parse(sql), server.catalog).fragment_sql


def _audit(server) -> list[dict]:
    path = server.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(server, sql: str, combine: str, qid: str):
    server.visited.clear()
    before = len(_audit(server))
    err = None
    try:
        out = server.pipeline(Request("researcher", _fragment(server, sql), qid, combine, user_sql=sql))
    except flight.FlightServerError as e:
        out, err = None, P.decode_error(str(e))
    return out, err, _audit(server)[before:], list(server.visited)


def test_the_node_lists_its_steps(server):
    assert server.pipeline.names == STEPS


@pytest.mark.parametrize("sql, rule, last", [
    ("SELECT count(*) FROM samples WHERE sample_id = 'HG00096'", "identifier", "validate"),
    ("SELECT CASE WHEN outcome > 1e9 THEN 'huge' ELSE 'other' END AS c, count(*) FROM samples GROUP BY 1", "key_branch", "disclose"),
], ids=["rule1_at_validate", "rule2_at_disclose"])
def test_every_combine_mode_passes_the_same_steps_and_is_audited_once(server, sql, rule, last):
    """The same refusal, at the same step, with one audit entry naming the rule, whatever the combine mode."""
    for combine in ("plain", "mpc", "he"):
        out, err, audit, visited = _run(server, sql, combine, f"q-{rule}-{combine}")
        assert out is None and err is not None and err.get("rule") == rule, (combine, err)
        assert visited == STEPS[: STEPS.index(last) + 1], (combine, visited)
        assert [(a["event"], a.get("rule"), a.get("query_id")) for a in audit] == [("refused", rule, f"q-{rule}-{combine}")], audit
        entries = server.releases.by_query("researcher", f"q-{rule}-{combine}")
        assert [(r.decision, r.rule, r.combine, r.user_sql) for r in entries] == [("refused", rule, combine, sql)]


def test_a_plain_release_passes_every_step_and_is_audited_once(server):
    out, err, audit, visited = _run(server, "SELECT population, count(*) FROM samples GROUP BY 1", "plain", "q-plain-ok")
    assert err is None and visited == STEPS
    assert out.num_rows >= 3 and out.schema.metadata[P.META_NODE] == server.config.name.encode()
    assert [(a["event"], a["decision"], a["groups"]) for a in audit] == [("release", "released", out.num_rows)]


def test_a_malformed_fragment_is_refused_at_validate_in_every_mode(server):
    for combine in ("plain", "mpc", "he"):
        server.visited.clear()
        with pytest.raises(flight.FlightServerError) as e:
            server.pipeline(Request("researcher", "SELECT 1 AS _p0 FROM nowhere", f"bad-{combine}", combine))
        assert P.decode_error(str(e.value))["code"] == P.CODE_FRAGMENT
        assert server.visited == STEPS[: STEPS.index("validate") + 1]


class _WithoutInfluence:
    """A backend that cannot count who influences each value (as the Hail backend today)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name in ("influence", "key_branches"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_backend_without_influence_counts_fails_closed(server):
    """Rule 2 cannot be skipped by running a node on a backend that lacks it: sums and counts
    people can weigh are refused (nothing computed leaves), counts of people are answered."""
    from genofed.connectors.node import make_backend

    srv = NodeServer(server.config, backend=_WithoutInfluence(make_backend(server.config)))
    try:
        for sql in ("SELECT sex, sum(outcome) FROM samples GROUP BY 1",
                    "SELECT count(CASE WHEN status = 1 THEN 1 END) FROM samples",
                    "SELECT CASE WHEN outcome > 1e9 THEN 'huge' ELSE 'other' END AS c, count(*) FROM samples GROUP BY 1"):
            with pytest.raises(flight.FlightServerError) as e:
                srv.pipeline(Request("researcher", _fragment(srv, sql), "no-infl", "plain"))
            err = P.decode_error(str(e.value))
            assert err["code"] == P.CODE_UNSUPPORTED and "rule 2" in err["reason"], err
        out = srv.pipeline(Request("researcher", _fragment(srv, "SELECT population, count(*) FROM samples GROUP BY 1"), "ok", "plain"))
        assert out.num_rows >= 3
    finally:
        srv.shutdown()
