"""Bad-input fuzzing of a live node server: malformed tickets, fragments and action bodies.

Every bad request gets a Flight error carrying a genofed wire error (``GENOFED:{code, reason}``,
never the ``internal`` code) or Flight's own "unimplemented"; no message carries a sample ID the
request did not contain; a fragment the node does answer never releases a cell below its minimum
count. Afterwards the node still answers a known count and its audit log still verifies.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.connectors.tls import flight_client
from genofed.engine import protocol as P
from genofed.genomics.store import NodeStore
from genofed.privacy.audit import verify

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
MIN_COUNT = 5


class Node:
    """One live node server (in this process) and a raw Flight client with the researcher's token."""

    def __init__(self, root, name, location, token, tls, config: NodeConfig):
        self.root, self.name, self.config = root, name, config
        self.client = flight_client(location, tls)
        self.headers = [(P.AUTH_HEADER.encode(), (P.BEARER + token).encode())]
        store = NodeStore(config.store)
        self.n_samples = store.manifest.n_samples
        samples = pq.read_table(store.samples_path)
        self.ids = set(samples.column("sample_id").to_pylist())
        self.id_pattern = re.compile("|".join(sorted(map(re.escape, self.ids), key=len, reverse=True)))

    def options(self, timeout: float = 30) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self.headers, timeout=timeout)

    def get(self, ticket: bytes) -> pa.Table:
        return self.client.do_get(flight.Ticket(ticket), self.options()).read_all()

    def action(self, kind: str, body: bytes) -> list[bytes]:
        return [r.body.to_pybytes() for r in self.client.do_action(flight.Action(kind, body), self.options())]


@pytest.fixture(scope="module")
def node(fed_dir_1126, tmp_path_factory):
    from conftest import clone_federation
    from inproc import serve_in_process

    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fuzz_flight"), min_count=MIN_COUNT, gates=False,
                            rate_limit_per_minute=0)
    with serve_in_process(root):
        cfg = FederationConfig.load(root)
        n = cfg.nodes[0]
        nd = Node(root, n.name, n.location(root), n.token, cfg.client_tls(), NodeConfig.load(root / n.config))
        yield nd
        nd.client.close()


def refused(node: Node, call, request: bytes = b"") -> str:
    """Run a call that must fail cleanly (or succeed); returns the reason (or the result)."""
    try:
        out = call()
    except flight.FlightError as e:
        msg = str(e)
        body = P.decode_error(msg)
        assert body is not None, f"{type(e).__name__} without a genofed wire error: {msg[:300]!r}"
        assert body.get("code") != P.CODE_INTERNAL, f"internal error at the node: {msg[:300]!r}"
        assert isinstance(body.get("reason"), str) and body["reason"].strip(), msg[:300]
        assert "Traceback" not in msg, msg[:300]
        assert len(body["reason"]) < 2000, f"reason of {len(body['reason'])} characters"
        leaked = set(node.id_pattern.findall(msg)) - set(node.id_pattern.findall(request.decode("utf-8", "replace")))
        assert not leaked, f"sample ids in an error message: {sorted(leaked)[:3]}"
        return body["reason"]
    return out


def check_release(table: pa.Table) -> None:
    """A released partial table: every cell below the node's minimum count is suppressed."""
    rows = table.to_pylist()
    partials = [c for c in table.column_names if re.fullmatch(r"_p\d+", c)]
    for r in rows:
        if r[P.SUPPRESSED_COLUMN]:
            assert r[P.N_COLUMN] is None and all(r[p] is None for p in partials), r
        else:
            assert r[P.N_COLUMN] is None or r[P.N_COLUMN] == 0 or r[P.N_COLUMN] >= MIN_COUNT, r


def still_serving(node: Node) -> None:
    t = node.get(P.fragment_ticket("SELECT COUNT(*) AS _p0 FROM samples", "health"))
    assert t.column("_p0").to_pylist() == [node.n_samples]
    v = verify(node.config.audit_path())
    assert v.ok, f"audit log broken at line {v.line}: {v.problem}"


def get_or_refused(node: Node, ticket: bytes) -> None:
    out = refused(node, lambda: node.get(ticket), ticket)
    if isinstance(out, pa.Table):
        check_release(out)


# -- do_get ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FRAGMENTS = [
    "SELECT COUNT(*) AS _p0 FROM samples",
    "SELECT samples.population AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.population",
    "SELECT samples.sample_id AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.sample_id",
    "SELECT samples.sample_id AS _p0 FROM samples",
    "SELECT MAX(samples.sample_id) AS _p0 FROM samples",
    "SELECT MIN(samples.outcome) AS _p0 FROM samples",
    "SELECT SUM(LENGTH(samples.sample_id)) AS _p0 FROM samples",
    "SELECT COUNT(*) AS _p0 FROM samples WHERE samples.sample_id = 'HG00096'",
    "SELECT COUNT(*) AS _p0, COUNT(*) AS _p0 FROM samples",
    "SELECT COUNT(*) AS _n FROM samples",
    "SELECT COUNT(*) AS _suppressed FROM samples",
    "SELECT samples.sex AS _p0, COUNT(*) AS _k0 FROM samples GROUP BY samples.sex",
    "SELECT SUBSTRING(samples.sample_id, 1, 7) AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY SUBSTRING(samples.sample_id, 1, 7)",
    "SELECT t.s AS _k0, COUNT(*) AS _p0 FROM (SELECT samples.sample_id AS s FROM samples) AS t GROUP BY t.s",
    "SELECT COUNT(*) AS _p0 FROM samples GROUP BY samples.sample_id",
    "SELECT samples.population AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.population HAVING COUNT(*) > 1",
    "SELECT COUNT(*) AS _p0 FROM samples LIMIT 1",
    "SELECT COUNT(*) AS _p0 FROM samples ORDER BY 1",
    "SELECT allele_count(genotypes.dosage) AS _p0 FROM genotypes WHERE genotypes.chrom = '22' AND genotypes.pos < 16100000",
    "SELECT genotypes.variant_id AS _k0, allele_count(genotypes.dosage) AS _p0 FROM genotypes "
    "WHERE genotypes.chrom = '22' AND genotypes.pos < 16100000 GROUP BY genotypes.variant_id",
    "SELECT genotypes.sample_id AS _k0, SUM(genotypes.dosage) AS _p0 FROM genotypes WHERE genotypes.chrom = '22' GROUP BY genotypes.sample_id",
    "SELECT COUNT(*) AS _p0 FROM variants",
    "SELECT COUNT(*) AS _p0 FROM read_parquet('/etc/passwd')",
    "SELECT COUNT(*) AS _p0 FROM samples; DROP TABLE samples",
    "DROP TABLE samples",
    "PRAGMA database_list",
    "SELECT 1",
    "SELECT COUNT(*) AS _p0 FROM samples AS s JOIN phenotypes AS p ON s.outcome = p.outcome",
    "SELECT COUNT(*) AS _p0 FROM samples WHERE samples.outcome > (SELECT AVG(samples.outcome) FROM samples)",
    "SELECT SUM(samples.status * 9223372036854775807) AS _p0 FROM samples",
    "SELECT COUNT(*) AS _p0 FROM samples WHERE CAST(samples.population AS INT) > 1",
    "SELECT COUNT(*) AS _p0 FROM samples WHERE samples.status // 0 > 1",
    "SELECT COUNT(*) AS _p0 FROM " + "(" * 200 + "samples" + ")" * 200,
    "SELECT COUNT(*) AS _p0 FROM samples WHERE " + "(" * 2000 + "TRUE" + ")" * 2000,
    "SELECT COUNT(*) AS _p0 FROM samples WHERE samples.population = '" + "x" * 100_000 + "'",
    "",
    "\x00",
    "SELECT COUNT(*) AS _p0 FROM samples -- \ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
]


@FUZZ
@given(st.binary(max_size=200))
def test_random_ticket_bytes(node, ticket):
    get_or_refused(node, ticket)


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["v", "kind", "sql", "query_id", "combine", "dp", "key_id", "timeout"]),
                                              json_values, max_size=7)))
def test_json_tickets_of_wrong_shape(node, body):
    get_or_refused(node, json.dumps(body).encode())


@st.composite
def fragment_tickets(draw) -> bytes:
    body: dict = {"v": 1, "kind": "fragment", "sql": draw(st.sampled_from(FRAGMENTS)), "query_id": "q"}
    for key, values in [
        ("v", [1, 0, 2, "1", 1.0, True, None, -1, 2**70]),
        ("kind", ["fragment", "Fragment", "", None, 1, ["fragment"]]),
        ("query_id", ["q", "", 7, None, [], {"a": 1}, "x" * 10_000, "\u0000\ud800"]),
        ("combine", ["plain", "mpc", "he", "", None, 5, {"a": 1}, "PLAIN", "plain "]),
        ("dp", [None, {}, "x", 1, {"epsilon": "a"}, {"epsilon": -1}, {"epsilon": 1e308}, {"epsilon": float("nan")},
                {"mechanism": "foo", "epsilon": 0.5}, {"epsilon": 0.5, "delta": 2}, {"epsilon": 0.5, "mechanism": "gaussian"}]),
        ("key_id", ["k", None, 1]),
        ("timeout", [1, "abc", -5, float("inf"), None, [1]]),
        ("user_sql", ["SELECT 1", "", None, 1, ["SELECT 1"], {"a": 1}, "x" * 100_000, "\u0000\ud800"]),
    ]:
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 5)) == 0:
        del body[draw(st.sampled_from(sorted(body)))]
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@FUZZ
@given(fragment_tickets())
def test_fragment_tickets(node, ticket):
    get_or_refused(node, ticket)


@pytest.mark.parametrize("ticket", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    json.dumps({"v": 1, "kind": "fragment", "sql": "SELECT COUNT(*) AS _p0 FROM samples", "query_id": "q" * 3_000_000}).encode(),
    json.dumps({"v": 1, "kind": "fragment", "sql": "SELECT " + "COUNT(*) + " * 200_000 + "1 AS _p0 FROM samples"}).encode(),
    b"\xff\xfe{}",
    b"\xef\xbb\xbf" + json.dumps({"v": 1, "kind": "fragment", "sql": "SELECT COUNT(*) AS _p0 FROM samples"}).encode(),
    b'{"v": 1, "kind": "fragment", "sql": "SELECT COUNT(*) AS _p0 FROM samples", "v": 2}',
    b'{"v": NaN, "kind": "fragment", "sql": "SELECT 1"}',
    b'{"v": 1e400, "kind": "fragment", "sql": "SELECT 1"}',
    b"",
], ids=lambda t: f"{len(t)}B")
def test_pathological_tickets(node, ticket):
    get_or_refused(node, ticket)


@pytest.mark.parametrize("sql", FRAGMENTS, ids=range(len(FRAGMENTS)))
def test_hand_made_fragments(node, sql):
    get_or_refused(node, P.fragment_ticket(sql, "hand"))


# -- do_action -------------------------------------------------------------------------------

ACTIONS = [P.ACTION_MPC_PREPARE, P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT, P.ACTION_CATALOG, P.ACTION_PING, P.ACTION_HISTORY]


@st.composite
def action_bodies(draw) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=100))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    body = {"query_id": draw(st.one_of(st.just("nosuch"), json_values))}
    for key, values in [
        ("sql", [None, 1, "", "SELECT 1", "DROP TABLE samples", "SELECT samples.sample_id AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY 1"]),
        ("names", [None, [], "abc", ["coordinator", "biobank_A"], [1, 2], {"a": 1}]),
        ("pid", [None, -1, 0, 1, 99, "1", 1.5, True, 2**70]),
        ("parties", [None, [], ["127.0.0.1:1"], "x", [None]]),
        ("secret", [None, "", 1, "s" * 1000]),
        ("timeout", [None, "a", -1, 0, float("inf"), 1e308, [1]]),
        ("dp", [None, "x", {"epsilon": -1}]),
    ]:
        if draw(st.booleans()):
            body[key] = draw(st.sampled_from(values))
    return json.dumps(body).encode()


@FUZZ
@given(kind=st.sampled_from([P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT, P.ACTION_CATALOG, P.ACTION_PING, P.ACTION_HISTORY]), body=action_bodies())
def test_action_bodies(node, kind, body):
    refused(node, lambda: node.action(kind, body), body)


@FUZZ
@given(body=action_bodies().filter(lambda b: b'"sql": "SELECT 1"' not in b))
def test_mpc_prepare_bodies(node, body):
    """mpc_prepare with bodies that never validate (a valid one starts an MPC party process)."""
    try:
        sql = json.loads(body).get("sql")
    except (ValueError, AttributeError):
        sql = None
    if isinstance(sql, str) and sql.startswith("SELECT COUNT"):
        return
    refused(node, lambda: node.action(P.ACTION_MPC_PREPARE, body), body)


@FUZZ
@given(st.one_of(st.text(max_size=30), st.sampled_from(["", " catalog", "CATALOG", "mpc_prepare\x00", "x" * 100_000, "ping\n"])))
def test_unknown_actions(node, kind):
    if kind in ACTIONS:
        return
    reason = refused(node, lambda: node.action(kind, b"{}"), kind.encode("utf-8", "replace"))
    assert isinstance(reason, str)


@pytest.mark.parametrize("kind", [P.ACTION_MPC_PREPARE, P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT])
@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    json.dumps({"query_id": "q" * 3_000_000}).encode(),
    json.dumps({"query_id": "q", "pad": "x" * 3_000_000}).encode(),
    b"\xff",
    b"null",
    b'{"query_id": null}',
], ids=lambda b: f"{len(b)}B")
def test_pathological_action_bodies(node, kind, body):
    refused(node, lambda: node.action(kind, body), body)


GOOD_RUN = {"parties": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], "pid": 1, "timeout": 5}
OTHERS = "OTHERS"  # stands for the federation's other pinned members


@pytest.mark.parametrize("change", [
    {"names": None}, {"names": "abc"}, {"parties": ["x", "y", "z"]},
    {"parties": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:99999"]}, {"pid": -2}, {"pid": 0}, {"pid": 2}, {"pid": 7},
    {"pid": True}, {"pid": "1"}, {"pid": 1.0}, {"timeout": 1e308}, {"timeout": "a"}, {"timeout": float("nan")}, {"timeout": -1},
    # sessions that are not the federation this node pins: a stranger, a member left out, a member twice
    {"names": ["coordinator", "NODE", OTHERS]}, {"names": [OTHERS, "NODE", "stranger"]}, {"names": ["OTHER0", "NODE"]},
    {"names": ["OTHER0", "NODE", "NODE"]},
], ids=lambda c: json.dumps(c, allow_nan=True))
def test_mpc_run_bodies_for_a_prepared_session(node, change):
    """A prepared MPC session and an mpc_run whose body is malformed, or names parties this node
    does not pin: refused, and the session (its party process and files) is gone, not left waiting."""
    pytest.importorskip("mpyc")
    others = [m.name for m in node.config.members if m.name != node.name]

    def names(spec):
        if not isinstance(spec, list):
            return spec
        out = []
        for x in spec:
            out += others if x == OTHERS else [node.name] if x == "NODE" else [others[0]] if x == "OTHER0" else [x]
        return out

    good = [others[0], node.name, *others[1:]]
    qid = f"prep-{abs(hash(json.dumps(change, allow_nan=True)))}"
    prepared = node.action(P.ACTION_MPC_PREPARE, json.dumps({"query_id": qid, "sql": "SELECT COUNT(*) AS _p0 FROM samples"}).encode())
    assert json.loads(prepared[0])["port"]
    body = {**GOOD_RUN, "names": good, "parties": GOOD_RUN["parties"][:2] + [f"127.0.0.1:{4 + i}" for i in range(len(good) - 2)]}
    body = {**body, **{k: names(v) for k, v in change.items()}, "query_id": qid}
    body = {k: v for k, v in body.items() if v is not None}
    reason = refused(node, lambda: node.action(P.ACTION_MPC_RUN, json.dumps(body, allow_nan=True).encode()))
    assert isinstance(reason, str) and re.search("malformed mpc_run request|assigns party|does not pin|leaves out|names a member twice",
                                                 reason), reason
    again = refused(node, lambda: node.action(P.ACTION_MPC_RUN, json.dumps({**body, "names": good, "query_id": qid}).encode()))
    assert "no prepared MPC session" in again


# -- the other Flight methods ----------------------------------------------------------------

def unimplemented(call) -> None:
    with pytest.raises(flight.FlightError) as e:
        call()
    assert "Traceback" not in str(e.value), f"the node sends a Python traceback: {str(e.value)[:200]!r}"
    body = P.decode_error(str(e.value))
    assert body is not None and body["code"] == P.CODE_BAD_REQUEST and "this node does not serve" in body["reason"], str(e.value)[:300]


DESC = flight.FlightDescriptor.for_command(b"SELECT COUNT(*) FROM samples")


@pytest.mark.parametrize("method", [
    pytest.param(lambda n: list(n.client.list_flights(b"", n.options())), id="list_flights"),
    pytest.param(lambda n: n.client.get_flight_info(DESC, n.options()), id="get_flight_info"),
    pytest.param(lambda n: _put(n), id="do_put"),
    pytest.param(lambda n: _exchange(n), id="do_exchange"),
])
def test_unimplemented_flight_methods(node, method):
    unimplemented(lambda: method(node))


def _put(node: Node) -> None:
    table = pa.table({"sample_id": ["x"]})
    writer, _ = node.client.do_put(flight.FlightDescriptor.for_path("samples"), table.schema, node.options())
    writer.write_table(table)
    writer.close()


def _exchange(node: Node) -> None:
    writer, reader = node.client.do_exchange(DESC, node.options())
    writer.begin(pa.schema([("a", pa.int64())]))
    writer.write_table(pa.table({"a": [1]}))
    writer.done_writing()
    reader.read_all()


def test_get_schema_reveals_nothing(node):
    # pyarrow would forward an error raised in get_schema with the server's traceback: no columns instead
    assert node.client.get_schema(DESC, node.options()).schema == pa.schema([])


def test_list_actions(node):
    assert {a.type for a in node.client.list_actions(node.options())} >= set(ACTIONS)


# -- afterwards ------------------------------------------------------------------------------

def test_node_still_serves_and_audit_log_verifies(node):
    """Runs last (file order): the node answers a known count, and its audit chain is intact."""
    still_serving(node)
    t = node.get(P.fragment_ticket("SELECT samples.sex AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.sex", "health"))
    assert sum(t.column("_p0").to_pylist()) == node.n_samples
    check_release(t)
