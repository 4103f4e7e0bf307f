"""A rogue coordinator against MPC (issue 19): fake parties, a chosen subset of nodes, strangers,
replayed session messages, plaintext links.

The coordinator runs in the researcher's process, so these tests play it by hand: they send the
nodes' real ``mpc_prepare``/``mpc_run`` actions with bodies of their choosing and start MPyC party
processes of their own (the same party program the nodes run). The nodes are real servers on
loopback (a clone of the 1126 federation: three nodes, TLS, pinned membership). Each attack is
refused with an error that names the problem, and no node records a finished secure computation
for it; an honest query afterwards still answers exactly (the pooled oracle).
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from genofed.connectors.federation import FederationConfig
from genofed.engine import protocol as P
from genofed.engine.errors import CombineError, GenofedError, NodeError

pytestmark = pytest.mark.realdata

SQL = "SELECT population, count(*) AS n FROM samples GROUP BY population"
RUN_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def lf(fed_dir_1126, tmp_path_factory):
    from conftest import LocalFederation, clone_federation

    pytest.importorskip("mpyc")
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("mpc_members"), min_count=5, gates=False, rate_limit_per_minute=0)
    f = LocalFederation(root)
    yield f
    f.close()


@pytest.fixture(scope="module")
def oracle(pooled1126):
    return sorted(pooled1126.execute('SELECT "Population", count(*) FROM samples GROUP BY 1').fetchall())


def _rows(t: pa.Table) -> list[tuple]:
    return sorted((r["population"], r["n"]) for r in t.to_pylist())


def _fragment(lf) -> str:
    return lf.fed._coord.plan(SQL).fragment_sql


def _transports(lf) -> list:
    return list(lf.fed._coord.transports)


def _prepare(lf, qid: str) -> dict[str, dict]:
    body = {"sql": _fragment(lf), "query_id": qid}
    return {t.name: t.action(P.ACTION_MPC_PREPARE, body, 30.0) for t in _transports(lf)}


def _finished(lf, qid: str) -> list[str]:
    """Nodes whose audit log records a finished secure computation for ``qid``."""
    from genofed.privacy.audit import records

    out = []
    for n in FederationConfig.load(lf.root).nodes:
        log = lf.root / n.name / "audit.log"
        if log.exists() and any(e.get("event") == "mpc_done" and e.get("query_id") == qid for e in records(log)):
            out.append(n.name)
    return out


def _abort(lf, qid: str) -> None:
    for t in _transports(lf):
        try:
            t.action(P.ACTION_MPC_ABORT, {"query_id": qid}, 5.0)
        except GenofedError:
            pass


def _fake_party(pid: int) -> tuple:
    """An MPyC party process the coordinator starts itself, claiming index ``pid``."""
    from genofed.privacy.secure.mpc import PartyProcess

    p = PartyProcess()
    p.begin(pid)
    return p, p.port(30)


def test_honest_query_answers_exactly(lf, oracle):
    assert _rows(lf.fed.sql(SQL, combine="mpc").to_arrow()) == oracle


@pytest.mark.parametrize("tls_kind", ["ca_signed_stranger", "plaintext"])
def test_fake_parties_in_place_of_two_nodes(lf, oracle, tmp_path, tls_kind):
    """The coordinator starts two parties of its own as biobank B and C, feeding zeros, and gives
    node A their addresses: A would open its own partials to them. A's party refuses the links
    (a certificate that is not the pinned one, even when the federation's CA signed it; or no TLS
    at all) and nothing is opened."""
    from genofed.connectors.tls import make_cert

    qid = f"fake-{uuid.uuid4().hex}"
    ts = _transports(lf)
    names = [t.name for t in ts]
    prep = _prepare(lf, qid)
    fakes = []
    try:
        tls = None
        if tls_kind == "ca_signed_stranger":  # the local CA's key sits in the federation directory
            cert, key = make_cert(lf.root / "tls", tmp_path / "fake_tls", "node")
            tls = {"cert": str(cert), "key": str(key), "ca": str(lf.root / "tls" / "ca.crt"),
                   "fingerprints": ["0" * 64] * 3}
        addrs = [f"{prep[names[0]]['host']}:{int(prep[names[0]]['port'])}"]
        for pid in (1, 2):
            p, port = _fake_party(pid)
            fakes.append(p)
            addrs.append(f"127.0.0.1:{port}")
        zeros = tmp_path / "zeros.arrow"
        P.write_ipc_file(zeros, pa.table({"_p0": pa.array([0], pa.int64())}))
        for pid, p in zip((1, 2), fakes):
            p.start({"pid": pid, "parties": addrs, "names": names, "secret": secrets.token_hex(32), "tls": tls,
                     "timeout": RUN_TIMEOUT, "plan": "x", "keys": [], "partials": ["_p0"], "counts": [], "finite": [],
                     "min_count": 1, "input": str(zeros), "output": str(tmp_path / f"out{pid}.arrow")})
        with pytest.raises(NodeError) as e:
            ts[0].action(P.ACTION_MPC_RUN, {"query_id": qid, "pid": 0, "parties": addrs, "names": names, "timeout": RUN_TIMEOUT},
                         RUN_TIMEOUT + 15)
        msg = str(e.value)
        if tls_kind == "ca_signed_stranger":
            assert "not the one this node pins" in msg, msg
        else:
            assert "never connected" in msg and "TLS" in msg, msg
        assert _finished(lf, qid) == []
    finally:
        for p in fakes:
            p.close()
        _abort(lf, qid)
    assert _rows(lf.fed.sql(SQL, combine="mpc").to_arrow()) == oracle  # the federation still answers


@pytest.mark.parametrize("how", ["subset", "stranger", "twice", "wrong_index"])
def test_sessions_that_are_not_the_pinned_federation(lf, how):
    """Each node checks the party list against the membership it pins: a coordinator-chosen subset
    (two nodes would open their partials to each other with no honest majority), a stranger, a
    member twice, or this node at another's index are refused before any party connects."""
    qid = f"members-{how}-{uuid.uuid4().hex}"
    ts = _transports(lf)
    names = [t.name for t in ts]
    prep = _prepare(lf, qid)
    addrs = [f"{prep[n]['host']}:{int(prep[n]['port'])}" for n in names]
    session = {
        "subset": (names[:2], addrs[:2]),
        "stranger": ([*names, "biobank_X"], [*addrs, "127.0.0.1:9"]),
        "twice": ([names[0], names[1], names[1]], [addrs[0], addrs[1], addrs[1]]),
        "wrong_index": ([names[1], names[0], names[2]], [addrs[1], addrs[0], addrs[2]]),
    }[how]
    expect = {"subset": "leaves out pinned member", "stranger": "does not pin as a federation member",
              "twice": "names a member twice", "wrong_index": "not to this node"}[how]
    try:
        with pytest.raises(GenofedError) as e:
            ts[0].action(P.ACTION_MPC_RUN, {"query_id": qid, "pid": 0, "parties": session[1], "names": session[0],
                                            "timeout": RUN_TIMEOUT}, RUN_TIMEOUT + 15)
        assert expect in str(e.value), str(e.value)
        assert "nothing was computed" in str(e.value)
        assert _finished(lf, qid) == []
    finally:
        _abort(lf, qid)


def test_coordinator_api_refuses_fewer_than_three_nodes(lf):
    """The coordinator's own code refuses too (an honest researcher gets the reason up front)."""
    from genofed.privacy.secure.mpc import run_mpc

    coord = lf.fed._coord
    with pytest.raises(CombineError, match="at least 3 nodes"):
        run_mpc(coord, _transports(lf)[:2], _fragment(lf), f"two-{uuid.uuid4().hex}", 5, 10.0)


def test_replayed_session_messages(lf, oracle):
    """A finished session's messages sent again: mpc_run (no session any more) and mpc_prepare
    with the used query id (refused: a query id serves one secure computation)."""
    qid = f"replay-{uuid.uuid4().hex}"
    from genofed.privacy.secure.mpc import run_mpc

    coord = lf.fed._coord
    got = run_mpc(coord, _transports(lf), _fragment(lf), qid, 5, 30.0)
    assert got.num_rows
    assert sorted(_finished(lf, qid)) == sorted(t.name for t in _transports(lf))
    t0 = _transports(lf)[0]
    with pytest.raises(GenofedError, match="replayed"):
        t0.action(P.ACTION_MPC_RUN, {"query_id": qid, "pid": 0, "parties": ["127.0.0.1:1"] * 3,
                                     "names": [t.name for t in _transports(lf)], "timeout": RUN_TIMEOUT}, 20.0)
    with pytest.raises(GenofedError, match="already used"):
        t0.action(P.ACTION_MPC_PREPARE, {"sql": _fragment(lf), "query_id": qid}, 20.0)


def test_node_without_pinned_members_refuses(tmp_path):
    """A hand-built node that pins no members computes with no one (the check itself)."""
    from genofed.connectors.config import Member, NodeConfig
    from genofed.privacy.secure.mpc import check_membership

    cfg = NodeConfig(name="a", store=Path("store"))
    with pytest.raises(CombineError, match="pins no federation members"):
        check_membership(cfg, ["a", "b", "c"], 0)
    cfg.members = [Member("a"), Member("b")]
    with pytest.raises(CombineError, match="at least 3 parties"):
        check_membership(cfg, ["a", "b"], 0)
    cfg.members = [Member(x) for x in "abcd"]
    cfg.quorum = 3
    check_membership(cfg, ["a", "b", "d"], 0)  # the steward's quorum: three of four
    with pytest.raises(CombineError, match="at least 3 members"):
        check_membership(cfg, ["a", "b"], 0)


def test_party_tls_paths_from_a_relative_node_config(lf, monkeypatch):
    """A node started with a relative --config (as `genofed demo` does) hands its MPC party
    absolute certificate paths that exist (the party process may run in another directory)."""
    from genofed.connectors.config import NodeConfig
    from genofed.privacy.secure.mpc import _party_tls

    n = FederationConfig.load(lf.root).nodes[0]
    monkeypatch.chdir(lf.root.parent)
    cfg = NodeConfig.load(Path(lf.root.name) / n.config)
    tls = _party_tls(cfg, [m.name for m in cfg.members])
    assert tls is not None
    for key in ("cert", "key", "ca"):
        assert Path(tls[key]).is_absolute() and Path(tls[key]).exists(), (key, tls[key])
