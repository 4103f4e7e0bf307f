"""Secure combine (MPC with MPyC, HE with TenSEAL) against plain mode and the pooled oracle.

- the whole query corpus gives the same answers in plain, mpc and he, over 3 and 5 real nodes
  (integers exactly; reals within the documented fixed-point / CKKS bounds, after finalize);
- a recorder on everything the coordinator receives finds each node's partials in plain mode and
  finds none of them in mpc or he mode;
- the minimum count runs on federation-wide counts: a group small at every node but large in
  total is released; a group small in total is suppressed;
- faults (a party that dies, stalls or tampers with its messages; a tampered ciphertext) end the
  query with an error naming the party, within the timeout, and later queries work again.
"""

from __future__ import annotations

import csv
import os
import signal
import struct
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import LocalFederation, clone_federation
from corpus import CORPUS
from oracle import to_pooled_sql
from test_federated_vs_pooled import assert_same

import genofed
from genofed.engine.errors import CombineError, DisclosureError, NodeError

pytest.importorskip("mpyc")
pytest.importorskip("tenseal")

# finalized reals: MPC sums are exact up to n * 2^-33 per partial; HE sums up to 2^-32 relative
# (rounding) + 2^-29 absolute. Finalize (variance, correlation, regression) can amplify that by
# the ratio mean^2 / variance, hence a looser bound on finalized values for HE.
TOL = {"mpc": (1e-9, 1e-8), "he": (1e-6, 1e-7)}


def assert_close(plain_rows, secure_rows, ordered: bool, label: str, mode: str) -> None:
    rel, abs_tol = TOL[mode]
    assert_same(secure_rows, plain_rows, ordered, f"{label} [{mode}] vs plain", rel=rel, abs_tol=abs_tol)


def _rows(result) -> list[tuple]:
    return [tuple(r.values()) for r in result.to_arrow().to_pylist()]


def _run_corpus(fed, mode: str, pooled=None) -> None:
    failures = []
    for qid, sql in CORPUS:
        ordered = "order by" in sql.lower()
        try:
            plain = fed.sql(sql, combine="plain")
            secure = fed.sql(sql, combine=mode)
            assert secure.provenance.combine == mode
            assert_close(_rows(plain), _rows(secure), ordered, qid, mode)
            assert plain.suppressed == secure.suppressed, f"{qid}: suppression differs"
            if pooled is not None:
                assert_same(_rows(plain), pooled.sql(to_pooled_sql(sql)).fetchall(), ordered, qid)
        except AssertionError as e:
            failures.append(f"{qid}: {e}")
        except Exception as e:  # noqa: BLE001  (report every query that fails)
            failures.append(f"{qid}: {type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} of {len(CORPUS)} corpus queries differ:\n" + "\n".join(failures)


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_corpus_same_in_secure_modes_3_nodes(fed1126, mode):
    _run_corpus(fed1126, mode)


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_corpus_same_in_secure_modes_5_nodes(fed1126_5nodes, pooled1126, mode):
    assert len(fed1126_5nodes.nodes) == 5
    _run_corpus(fed1126_5nodes, mode, pooled=pooled1126 if mode == "mpc" else None)


# -- what the coordinator sees ---------------------------------------------------------------------

RECORD_SQL = (
    "SELECT s.population, sum(g.dosage) AS ac, count(*) AS n_calls, avg(p.ldl) AS ldl "
    "FROM genotypes g JOIN samples s USING (sample_id) JOIN phenotypes p USING (sample_id) "
    "WHERE g.chrom = '22' AND g.pos < 17500000 GROUP BY s.population"
)


class _Recorder:
    """Wraps a transport or the key holder client; keeps the bytes of every answer."""

    def __init__(self, inner, sink: list[bytes]):
        self._inner = inner
        self._sink = sink
        self.name = getattr(inner, "name", "keyholder")

    def _keep(self, obj):
        if isinstance(obj, pa.Table):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, obj.schema) as w:
                w.write_table(obj)
            self._sink.append(sink.getvalue().to_pybytes())
        else:
            self._sink.append(repr(obj).encode())
            if isinstance(obj, dict) and isinstance(obj.get("result"), str):  # mpc_run: the first party's released groups
                import base64

                self._sink.append(base64.b64decode(obj["result"]))
        return obj

    def __getattr__(self, attr):
        fn = getattr(self._inner, attr)
        if not callable(fn):
            return fn
        return lambda *a, **k: self._keep(fn(*a, **k))


def _encodings(values: list[int]) -> list[bytes]:
    """Ways a run of partial values could appear in a message: fixed-width little-endian
    integers (Arrow buffers, MPyC field elements of 64-, 65- and 192-bit fields) and text."""
    out = []
    for width in (4, 8, 9, 16, 24, 25, 32):
        out.append(b"".join(int(v).to_bytes(width, "little", signed=True) for v in values))
    out.append(b"".join(struct.pack("<d", float(v)) for v in values))
    out.append(", ".join(str(int(v)) for v in values).encode())
    return out


def _node_partials(fed_dir: Path, fed) -> dict[str, list[list[int]]]:
    """Each node's own integer partial columns (asked of the node directly, plain)."""
    from genofed.connectors.client import FlightTransport
    from genofed.connectors.federation import FederationConfig

    plan = fed._coord.plan(RECORD_SQL)
    cfg = FederationConfig.load(fed_dir)
    out = {}
    for n in cfg.nodes:
        t = FlightTransport(n.name, n.location(cfg.root), n.token, tls=cfg.client_tls())
        table = t.run_fragment(plan.fragment_sql, "probe", 30)
        t.close()
        cols = []
        for p in plan.partials:
            col = table.column(p.name)
            if pa.types.is_integer(col.type) or pa.types.is_decimal(col.type):
                for order in (table, table.sort_by([(k, "ascending") for k in plan.keys])):
                    vals = [int(v) for v in order.column(p.name).to_pylist() if v is not None]
                    if len(vals) >= 3:
                        cols.append(vals)
        out[n.name] = cols
    return out


def _found(blobs: list[bytes], columns: list[list[int]]) -> bool:
    for vals in columns:
        for i in range(len(vals) - 2):
            for enc in _encodings(vals[i : i + 3]):
                if any(enc in b for b in blobs):
                    return True
    return False


@pytest.mark.parametrize("mode", ["plain", "mpc", "he"])
def test_coordinator_never_receives_a_single_nodes_partials(fed_dir_1126, fed1126, mode):

    partials = _node_partials(fed_dir_1126, fed1126)
    combined = fed1126.sql(RECORD_SQL, combine="plain").to_arrow()
    for node, cols in partials.items():
        assert cols, f"{node} has no integer partials to look for"
        # precondition: a node's partials are not the federation's answer
        assert cols[0] != [int(v) for v in combined.column("ac").to_pylist()], node

    blobs: list[bytes] = []
    coord = fed1126._coord
    saved = (coord.transports, coord.keyholder)
    coord.transports = [_Recorder(t, blobs) for t in coord.transports]
    coord.keyholder = _Recorder(coord.keyholder, blobs)
    try:
        res = fed1126.sql(RECORD_SQL, combine=mode)
    finally:
        coord.transports, coord.keyholder = saved
    # mpc: the coordinator holds no party (the nodes compute among themselves): all it receives
    # are the nodes' answers, the first party's released groups among them
    assert blobs
    assert _rows(res)  # the query answered
    leaked = {node: _found(blobs, cols) for node, cols in partials.items()}
    if mode == "plain":
        assert all(leaked.values()), f"the recorder should see every node's partials in plain mode: {leaked}"
    else:
        assert not any(leaked.values()), f"a single node's partials reached the coordinator in {mode} mode: {leaked}"


# -- minimum count on federation-wide counts -------------------------------------------------------

def _groups_by_node(data_1126, phenotypes_1126) -> tuple[tuple[str, int], tuple[str, int], Counter]:
    split = {}
    with open(data_1126["split"]) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            split[row["sample.id"]] = row["node"]
    sex = {}
    with open(data_1126["samples"]) as f:
        r = csv.reader(f, delimiter="\t")
        header = [h.lower() for h in next(r)]
        for row in r:
            sex[row[0]] = row[header.index("sex")]
    per_node: Counter = Counter()
    total: Counter = Counter()
    with open(phenotypes_1126) as f:
        for row in csv.DictReader(f):
            key = (sex[row["sample_id"]], int(row["age"]))
            per_node[(key, split[row["sample_id"]])] += 1
            total[key] += 1
    nodes = sorted(set(split.values()))
    spread = [k for k, n in total.items() if n >= 5 and all(per_node[(k, nd)] < 5 for nd in nodes) and sum(per_node[(k, nd)] > 0 for nd in nodes) >= 2]
    small = [k for k, n in total.items() if 0 < n < 5]
    assert spread and small, "the fixture cohort has no groups of the needed shapes"
    return sorted(spread)[0], sorted(small)[0], total


@pytest.fixture(scope="module")
def fed_k5(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("secure_k5"), min_count=5, gates=False)
    lf = LocalFederation(root)
    yield lf.fed
    lf.close()


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_min_count_runs_on_federation_wide_counts(fed_k5, data_1126, phenotypes_1126, mode):
    spread, small, total = _groups_by_node(data_1126, phenotypes_1126)
    sql = ("SELECT s.sex, p.age, count(*) AS n, avg(p.bmi) AS bmi FROM samples s JOIN phenotypes p USING (sample_id) "
           f"WHERE (s.sex = '{spread[0]}' AND p.age = {spread[1]}) OR (s.sex = '{small[0]}' AND p.age = {small[1]}) "
           "GROUP BY s.sex, p.age")
    res = fed_k5.sql(sql, combine=mode)
    rows = {(r["sex"], r["age"]): r["n"] for r in res.to_arrow().to_pylist()}
    # below 5 at every node, at least 5 in total: released, with the exact total
    assert rows == {spread: total[spread]}
    # below 5 in total: withheld, and counted (never named) in the provenance
    assert res.suppressed == 1
    # plain mode can only test per node, so it withholds the spread group as well
    plain = fed_k5.sql(sql, combine="plain")
    assert plain.num_rows == 0 and plain.suppressed == 2


def test_node_policy_min_count_is_enforced_in_mpc(fed_dir_1126, tmp_path):
    """A node's own minimum count raises the federation's threshold for its queries."""
    root = clone_federation(fed_dir_1126, tmp_path / "strict", min_count=1, node_min_count=1, gates=False)
    import tomllib

    import tomli_w

    cfg = root / "biobank_B" / "node.toml"
    node = tomllib.loads(cfg.read_text())
    node["policy"]["min_count"] = 200
    cfg.write_text(tomli_w.dumps(node))
    lf = LocalFederation(root)
    try:
        q = "SELECT population, count(*) AS n FROM samples GROUP BY population"
        pops = lf.fed.sql(q, combine="plain").suppressed  # plain: biobank_B suppresses at home
        assert pops == 12
        for mode in ("mpc", "he"):
            res = lf.fed.sql(q, combine=mode)
            assert res.num_rows == 0 and res.suppressed == 12, mode  # every population has < 200
    finally:
        lf.close()


# -- policy and configuration ----------------------------------------------------------------------

def test_plain_refused_unless_every_node_allows_it(fed_dir_1126, tmp_path):
    root = clone_federation(fed_dir_1126, tmp_path / "noplain", min_count=1, combine="mpc", allow_plain=False)
    lf = LocalFederation(root)
    try:
        assert lf.fed.sql("SELECT count(*) AS n FROM samples").provenance.combine == "mpc"  # the default
        with pytest.raises(NodeError, match=r"policy.*allow.*combine='plain'.*use combine='mpc' or 'he'"):
            lf.fed.sql("SELECT count(*) AS n FROM samples", combine="plain")
    finally:
        lf.close()


def test_secure_default_for_new_federations(tmp_path, data_1126):
    from genofed.connectors.federation import FederationConfig, init_federation
    from genofed.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="allow_plain"):
        init_federation(tmp_path / "x", data_1126["vcf"], data_1126["samples"], data_1126["split"], combine="plain")
    assert FederationConfig.load  # the default is exercised by test_official_frequencies (mpc)


def test_unknown_mode_and_min_max_refused(fed1126):
    with pytest.raises(CombineError, match="choose he, mpc, plain"):
        fed1126.sql("SELECT count(*) FROM samples", combine="fhe")
    with pytest.raises(DisclosureError):
        fed1126.sql("SELECT max(age) FROM phenotypes", combine="mpc")


# -- faults ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty(fed_dir_1126, tmp_path_factory):
    """A federation whose nodes' MPC parties read a fault switch before every query."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("faulty"), min_count=1)
    switch = root / "fault.txt"
    switch.write_text("")
    old = os.environ.get("GENOFED_MPC_FAULT_FILE")
    os.environ["GENOFED_MPC_FAULT_FILE"] = str(switch)
    try:
        lf = LocalFederation(root)
    finally:
        if old is None:
            del os.environ["GENOFED_MPC_FAULT_FILE"]
        else:
            os.environ["GENOFED_MPC_FAULT_FILE"] = old
    fed = genofed.connect(root, timeout=8)
    yield fed, switch, root
    fed.close()
    lf.close()


SQL = "SELECT population, count(*) AS n, sum(outcome) AS o FROM samples GROUP BY population"


@pytest.mark.parametrize(
    "fault, code",
    [("die", r"(crashed|disconnected)"), ("stall", r"(timeout|disconnected)"), ("corrupt", r"tampered")],
)
def test_mpc_party_fault_names_the_party(faulty, fault, code):
    fed, switch, _ = faulty
    expected = fed.sql(SQL, combine="mpc").to_arrow()
    switch.write_text(f"biobank_B:{fault}")
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeError, match=rf"node 'biobank_B' {code}: .*nothing was opened") as e:
            fed.sql(SQL, combine="mpc")
    finally:
        switch.write_text("")
    assert e.value.node == "biobank_B"
    assert time.monotonic() - t0 < 8 + 20
    # the federation recovers: the next query gets fresh parties and the same answer
    assert fed.sql(SQL, combine="mpc").to_arrow().equals(expected)


def _tamper(fed, how):
    coord = fed._coord
    victim = coord.transports[1]
    orig = victim.run_he

    def run_he(*a, **k):
        t = orig(*a, **k)
        cts = t.column("ct").to_pylist()
        digests = t.column("sha256").to_pylist()
        if how == "flip":
            b = bytearray(cts[0])
            b[len(b) // 2] ^= 0x01
            cts[0] = bytes(b)
        else:
            import hashlib

            cts[0] = cts[0][: len(cts[0]) // 3]
            digests[0] = hashlib.sha256(cts[0]).digest()
        t = t.set_column(t.column_names.index("ct"), "ct", pa.array(cts, pa.binary()))
        return t.set_column(t.column_names.index("sha256"), "sha256", pa.array(digests, pa.binary(32)))

    victim.run_he = run_he
    return victim, orig


@pytest.mark.parametrize("how, msg", [("flip", "failed its integrity check"), ("truncate", "do not carry that node.s tag")])
def test_he_tampered_ciphertext_is_refused(faulty, how, msg):
    fed, _, _ = faulty
    victim, orig = _tamper(fed, how)
    try:
        # the key holder checks each node's ciphertexts (and tag) before adding them: it names the node
        with pytest.raises((CombineError, NodeError), match=rf"{msg}.*biobank_B|biobank_B.*{msg}"):
            fed.sql(SQL, combine="he")
    finally:
        victim.run_he = orig
    assert fed.sql(SQL, combine="he").num_rows == 12


def test_he_stalled_node_is_named(faulty):
    fed, _, root = faulty
    pid = int((root / "biobank_C" / "node.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeError, match=r"node 'biobank_C' timeout"):
            fed.sql(SQL, combine="he")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - t0 < 8 + 10
    time.sleep(0.5)
    assert fed.sql(SQL, combine="he").num_rows == 12


def test_he_without_key_holder_is_a_clear_error(faulty):
    fed, _, root = faulty
    pid = int((root / "keyholder" / "keyholder.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(NodeError, match=r"(keyholder|key holder)"):
            fed.sql(SQL, combine="he")
    finally:
        os.kill(pid, signal.SIGCONT)


def test_secure_config_errors(tmp_path, fed_dir_1126):
    """Bad key-holder configuration is refused up front, naming the file and the fix."""
    import tomllib

    from genofed.connectors.config import NodeConfig
    from genofed.connectors.federation import FederationConfig
    from genofed.engine.errors import ConfigError
    from genofed.privacy.secure.keyholder import KeyHolderConfig

    node = (fed_dir_1126 / "biobank_A" / "node.toml").read_text()
    data = tomllib.loads(node)
    data["keyholder"] = {"location": "grpc://127.0.0.1:1"}  # no token
    with pytest.raises(ConfigError, match=r"\[keyholder\] needs token"):
        NodeConfig.from_dict(data, base=tmp_path)
    data.pop("keyholder")
    with pytest.raises(ConfigError, match="no \\[keyholder\\].*combine='he'"):
        NodeConfig.from_dict(data, base=tmp_path).keyholder_location()
    fed = tmp_path / "federation.toml"
    fed.write_text('[federation]\ncombine = "he"\n[[nodes]]\nname = "a"\ntoken = "t"\n')
    with pytest.raises(ConfigError, match='combine = "he" needs a \\[keyholder\\]'):
        FederationConfig.load(fed)
    kh = tmp_path / "keyholder.toml"
    kh.write_text('[[clients]]\nname = "a"\nrole = "admin"\ntoken_sha256 = "x"\n')
    with pytest.raises(ConfigError, match="role must be one of"):
        KeyHolderConfig.load(kh)
    with pytest.raises(ConfigError, match="does not exist"):
        KeyHolderConfig.load(tmp_path / "missing.toml")
