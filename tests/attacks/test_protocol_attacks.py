"""Attacks on the protocol surface: SQL injection, hand-made fragments sent straight to a node,
missing or wrong credentials, weak HE keys from a rogue key holder, malformed ciphertexts.

Real node servers on loopback (the session federation ``fed1126_k5``: every node's own minimum
count is 5, combine='plain'); faults are injected only by crafting requests. Each attack is
first shown to work where the defence is absent (DuckDB without genofed's validation, SEAL with
its security check off, a digest that anyone can recompute), so the defended assertions can fail.
Oracles come from the pooled sample sheet.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import tomllib
import types
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from genofed import DisclosureError, GenofedError, NodeError
from genofed.connectors.client import FlightTransport
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.engine import protocol as P
from genofed.engine.errors import CombineError
from genofed.privacy.audit import fragment_digest, records

pytestmark = pytest.mark.realdata

NORMAL = "SELECT population, count(*) AS n, count(status) AS cases FROM samples GROUP BY population ORDER BY population"


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed(fed1126_k5):
    return fed1126_k5


@pytest.fixture(scope="module")
def cfg(fed) -> FederationConfig:
    return FederationConfig.load(fed.config.root)


@pytest.fixture(scope="module")
def pooled(data_1126):
    """The pooled sample sheet (all 1126 samples, with their node) as a DuckDB connection."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE samples AS SELECT * FROM read_csv('{data_1126['samples']}', header=true)")
    con.execute(f"CREATE TABLE split AS SELECT * FROM read_csv('{data_1126['split']}', header=true)")
    return con


@pytest.fixture(scope="module")
def baseline(fed, pooled):
    """The normal query's answer, checked against the pooled data once."""
    got = fed.sql(NORMAL).to_arrow().to_pylist()
    truth = pooled.execute('SELECT "Population", count(*), count(status) FROM samples GROUP BY 1 ORDER BY 1').fetchall()
    assert [(r["population"], r["n"], r["cases"]) for r in got] == [tuple(t) for t in truth]
    return got


def _stores(cfg: FederationConfig) -> list[Path]:
    return [NodeConfig.load(cfg.root / n.config).store for n in cfg.nodes]


def _snapshot(cfg: FederationConfig) -> dict[str, tuple[int, int]]:
    """Every file under every node's store: (size, mtime)."""
    out = {}
    for store in _stores(cfg):
        for dirpath, _, files in os.walk(store):
            for f in files:
                p = Path(dirpath) / f
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    assert out, "the stores have files"
    return out


def _audit(cfg: FederationConfig, i: int = 0) -> list[dict]:
    return list(records(cfg.root / cfg.nodes[i].name / "audit.log"))


def _transport(cfg: FederationConfig, i: int = 0, token: str | None = None) -> FlightTransport:
    n = cfg.nodes[i]
    return FlightTransport(n.name, n.location(cfg.root), n.token if token is None else token, tls=cfg.client_tls())


@pytest.fixture
def out(tmp_path) -> Path:
    """Where an injected COPY or ATTACH would write: must stay absent."""
    return tmp_path / "exfil.csv"


# -- SQL injection -----------------------------------------------------------------------------

def test_payloads_work_on_unvalidated_duckdb(tmp_path):
    """Defence off: the same payloads, handed to DuckDB (the nodes' engine) without genofed's
    validation, write files, read the host's files, run several statements and read settings."""
    con = duckdb.connect(str(tmp_path / "node.duckdb"))
    con.execute("CREATE TABLE samples AS SELECT 'HG00096' AS sample_id, 'GBR' AS population")
    target = tmp_path / "exfil.csv"
    con.execute(f"COPY samples TO '{target}'")
    assert target.exists() and "HG00096" in target.read_text()
    assert con.execute("SELECT count(*) FROM read_csv('/etc/passwd', header=false, sep='|')").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM glob('/etc/*')").fetchone()[0] > 0  # lists the host's files
    assert con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.execute("SELECT count(*) FROM samples WHERE population = 'x'; DROP TABLE samples; --'")
    assert not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'samples'").fetchone()[0]
    con.close()


INJECTIONS = [
    ("SELECT count(*) AS n FROM samples WHERE population = 'x'; DROP TABLE samples; --'", "exactly one SQL statement"),
    ("SELECT count(*) AS n FROM samples; COPY samples TO '{out}'", "exactly one SQL statement"),
    ("SELECT 1 AS a; SELECT 2 AS b", "exactly one SQL statement"),
    ('SELECT count(*) AS n FROM "samples; COPY samples TO \'{out}\'"', "unknown table"),
    ("SELECT count(*) AS n FROM read_csv('/etc/passwd')", "table functions .* are not supported"),
    ("SELECT count(*) AS n FROM read_parquet('/tmp/*.parquet')", "table functions .* are not supported"),
    ("SELECT count(*) AS n FROM glob('/*')", "unknown table function glob"),
    ("SELECT count(*) AS n FROM samples WHERE sample_id IN (SELECT column0 FROM read_csv('/etc/passwd'))", "table functions .* are not supported"),
    ("WITH x AS (SELECT * FROM read_csv_auto('/etc/passwd')) SELECT count(*) AS n FROM x", "table functions .* are not supported"),
    ("SELECT count(*) AS n FROM samples s JOIN duckdb_settings() d ON s.sample_id = d.name", "table functions .* are not supported"),
    ("SELECT getenv('HOME') AS h, count(*) AS n FROM samples GROUP BY 1", "unsupported function GETENV"),
    ("SELECT current_setting('threads') AS h, count(*) AS n FROM samples GROUP BY 1", "unsupported function CURRENT_SETTING"),
    ("SELECT count(*) AS n FROM samples WHERE population = chr(39)", "unsupported function CHR"),
    ("SELECT count(*) AS n FROM samples WHERE population = E'x\\' OR 1=1 --'", "unsupported SQL construct"),
    ("SELECT count(*) AS n FROM samples WHERE population = $$x$$", "unsupported SQL construct"),
    ("PRAGMA database_list", "only SELECT queries are supported"),
    ("ATTACH '{out}' AS evil", "only SELECT queries are supported"),
    ("SELECT count(*) AS n FROM evil.main.samples", "only the federated tables"),
    ("SELECT count(*) AS n FROM information_schema.tables", "only the federated tables"),
    ("SELECT count(*) AS n FROM main.samples", "only the federated tables"),
    ("COPY samples TO '{out}'", "only SELECT queries are supported"),
    ("COPY (SELECT * FROM samples) TO '{out}' (FORMAT csv)", "only SELECT queries are supported"),
    ("INSTALL httpfs", "only SELECT queries are supported"),
    ("LOAD httpfs", "only SELECT queries are supported"),
    ("SET threads = 1", "only SELECT queries are supported"),
    ("DROP TABLE samples", "only SELECT queries are supported"),
]


@pytest.mark.parametrize("sql, match", INJECTIONS, ids=[f"inj{i}" for i in range(len(INJECTIONS))])
def test_injection_through_the_coordinator_is_refused(fed, cfg, baseline, out, sql, match):
    before = _snapshot(cfg)
    with pytest.raises(GenofedError, match=match) as e:
        fed.sql(sql.format(out=out))
    assert "Traceback" not in str(e.value) and "File \"" not in str(e.value)
    assert _snapshot(cfg) == before, "the injection changed a node's store"
    assert not out.exists()
    assert fed.sql(NORMAL).to_arrow().to_pylist() == baseline


@pytest.mark.parametrize("sql, expected", [
    # correctly quoted payloads are data: the node compares with the literal string
    ("SELECT count(*) AS n FROM samples WHERE population = 'x''; DROP TABLE samples; --'", [{"n": 0}]),
    ("SELECT count(*) AS n FROM samples WHERE population = 'GBR'' OR 1=1 --'", [{"n": 0}]),
    ("SELECT count(*) AS n FROM samples WHERE population = 'GBR' OR population = 'x'' OR 1=1'", "GBR"),
    ('SELECT count(*) AS "n""; DROP TABLE samples; --" FROM samples', [{'n"; DROP TABLE samples; --': 1126}]),
])
def test_quoted_payloads_are_data(fed, cfg, baseline, pooled, sql, expected):
    before = _snapshot(cfg)
    got = fed.sql(sql).to_arrow().to_pylist()
    if expected == "GBR":
        expected = [{"n": pooled.execute("SELECT count(*) FROM samples WHERE \"Population\" = 'GBR'").fetchone()[0]}]
    assert got == expected
    assert _snapshot(cfg) == before
    assert fed.sql(NORMAL).to_arrow().to_pylist() == baseline


DIRECT_INJECTIONS = [
    ("SELECT count(*) AS _p0 FROM samples WHERE samples.population = 'x'; DROP TABLE samples; --'", "exactly one SQL statement"),
    ("SELECT count(*) AS _p0 FROM samples; COPY samples TO '{out}'", "exactly one SQL statement"),
    ('SELECT count(*) AS _p0 FROM "samples; COPY samples TO \'{out}\'"', "unknown table"),
    ("SELECT count(*) AS _p0 FROM read_csv('/etc/passwd')", "table functions .* are not supported"),
    ("SELECT count(*) AS _p0 FROM read_parquet('/tmp/*.parquet')", "table functions .* are not supported"),
    ("SELECT count(*) AS _p0 FROM glob('/*')", "fragment refused"),
    ("SELECT count(*) AS _p0 FROM samples WHERE getenv('HOME') = '/root'", "unsupported function GETENV"),
    ("SELECT current_setting('threads') AS _k0, count(*) AS _p0 FROM samples GROUP BY current_setting('threads')",
     "unsupported function CURRENT_SETTING"),
    ("SELECT count(*) AS _p0 FROM evil.main.samples", "only the federated tables"),
    ("PRAGMA database_list", "only SELECT queries are supported"),
    ("ATTACH '{out}' AS evil", "only SELECT queries are supported"),
    ("COPY samples TO '{out}'", "only SELECT queries are supported"),
    ("INSTALL httpfs", "only SELECT queries are supported"),
    ("LOAD httpfs", "only SELECT queries are supported"),
    ("SET threads = 1", "only SELECT queries are supported"),
    ('SELECT count(*) AS "_p0""; DROP TABLE samples; --" FROM samples', "neither a key"),
]


@pytest.mark.parametrize("sql, match", DIRECT_INJECTIONS, ids=[f"direct{i}" for i in range(len(DIRECT_INJECTIONS))])
def test_injection_sent_straight_to_a_node_is_refused(fed, cfg, baseline, out, sql, match):
    t = _transport(cfg)
    qid = uuid.uuid4().hex
    before = _snapshot(cfg)
    try:
        with pytest.raises(NodeError, match=match) as e:
            t.run_fragment(sql.format(out=out), qid, 20)
    finally:
        t.close()
    assert e.value.node_code == P.CODE_FRAGMENT and "Traceback" not in str(e.value)
    refused = [r for r in _audit(cfg) if r.get("query_id") == qid]
    assert [(r["event"], r["rule"]) for r in refused] == [("refused", "invalid_fragment")]
    assert _snapshot(cfg) == before
    assert not out.exists()
    assert fed.sql(NORMAL).to_arrow().to_pylist() == baseline


# -- fragments the coordinator would never send ------------------------------------------------

HAND_MADE = [
    ("SELECT samples.sample_id AS _k0, count(*) AS _p0 FROM samples GROUP BY samples.sample_id", "per-person rows", "row_level"),
    ("SELECT samples.sample_id || '' AS _k0, count(*) AS _p0 FROM samples GROUP BY samples.sample_id || ''", "per-person rows", "row_level"),
    ("SELECT substr(samples.sample_id, 1, 7) AS _k0, count(*) AS _p0 FROM samples GROUP BY substr(samples.sample_id, 1, 7)",
     "per-person rows", "row_level"),
    ("SELECT upper(samples.sample_id) AS _k0, count(*) AS _p0 FROM samples GROUP BY upper(samples.sample_id)", "per-person rows", "row_level"),
    ("SELECT hash(samples.sample_id) AS _k0, count(*) AS _p0 FROM samples GROUP BY hash(samples.sample_id)", "unsupported function HASH",
     "invalid_fragment"),
    ("SELECT samples.outcome AS _p0 FROM samples", "must be a partial aggregate", "invalid_fragment"),
    ("SELECT count(*) AS _p0, samples.outcome AS _p1 FROM samples", "must be a partial aggregate", "invalid_fragment"),
    ("SELECT samples.sample_id AS sid, count(*) AS _p0 FROM samples GROUP BY samples.sample_id", "per-person rows|neither a key", None),
    ("SELECT min(samples.outcome) AS _p0 FROM samples", "MIN/MAX", "min_max"),
    ("SELECT samples.population AS _k0, max(samples.outcome) AS _p0 FROM samples GROUP BY samples.population", "MIN/MAX", "min_max"),
    ("SELECT count(*) AS _p0 FROM samples LIMIT 1", "LIMIT is applied by the coordinator", "invalid_fragment"),
    ("SELECT samples.population AS _k0, count(*) AS _p0 FROM samples GROUP BY samples.population ORDER BY samples.population",
     "ORDER is applied by the coordinator", "invalid_fragment"),
    ("SELECT (SELECT s2.outcome FROM samples AS s2 WHERE s2.sample_id = 'HG00096') AS _k0, count(*) AS _p0 FROM samples GROUP BY 1",
     "scalar subqueries are not supported", "invalid_fragment"),
    ("SELECT sum(t.o) AS _p0 FROM (SELECT samples.outcome AS o FROM samples) AS t", "keeps sample_id", "invalid_fragment"),
    ("SELECT sum(t.c) AS _p0 FROM (SELECT samples.population AS p, samples.sample_id AS sample_id, count(*) AS c FROM samples "
     "GROUP BY samples.population, samples.sample_id) AS t", None, None),
]


@pytest.mark.parametrize("sql, match, rule", HAND_MADE, ids=[f"frag{i}" for i in range(len(HAND_MADE))])
def test_hand_made_fragment_is_refused_and_audited(cfg, sql, match, rule):
    t = _transport(cfg)
    qid = uuid.uuid4().hex
    try:
        if match is None:  # node-local per-sample subquery: valid; the node's minimum count (or its
            try:               # differencing defence, after the earlier answers) decides what leaves
                rows = t.run_fragment(sql, qid, 20).to_pylist()
            except DisclosureError as e:
                assert e.rule == "differencing"
                return
            assert len(rows) == 1 and ((rows[0][P.N_COLUMN] or 0) >= 5 or rows[0][P.SUPPRESSED_COLUMN])
            return
        with pytest.raises(GenofedError, match=match):
            t.run_fragment(sql, qid, 20)
    finally:
        t.close()
    refused = [r for r in _audit(cfg) if r.get("query_id") == qid]
    assert len(refused) == 1 and refused[0]["event"] == "refused" and refused[0]["decision"] == "refused"
    assert refused[0]["rule"] == (rule or refused[0]["rule"]) and refused[0]["rule"]
    assert refused[0]["fragment_sha256"] == fragment_digest(sql)  # the steward can match it to the request


def test_renamed_sample_id_is_refused(cfg):
    """A sample_id copied under another name in a subquery must not become a group key."""
    sql = ("SELECT t.sid AS _k0, count(*) AS _p0 FROM (SELECT samples.sample_id AS sample_id, samples.sample_id AS sid "
           "FROM samples) AS t GROUP BY t.sid")
    t = _transport(cfg)
    try:
        with pytest.raises(GenofedError, match="per-person rows"):
            leaked = t.run_fragment(sql, uuid.uuid4().hex, 20).column("_k0").to_pylist()
            print(f"{len(leaked)} sample ids left the node as group keys, e.g. {leaked[:2]}")
    finally:
        t.close()


def test_node_applies_its_own_minimum_count_to_direct_fragments(cfg, pooled):
    """Without the coordinator, a node still refuses identifiers as values (rule 1), withholds
    small groups (min_count 5) and sends nothing about them, keys included (rule 3)."""
    import json

    node = cfg.nodes[0].name
    person, outcome = pooled.execute(f"SELECT \"sample.id\", outcome FROM samples JOIN split USING (\"sample.id\") "
                                     f"WHERE node = '{node}' ORDER BY 1 LIMIT 1").fetchone()
    t = _transport(cfg)
    try:
        with pytest.raises((DisclosureError, NodeError)) as e:
            t.run_fragment(f"SELECT count(*) AS _p0, sum(samples.outcome) AS _p1 FROM samples WHERE samples.sample_id = '{person}'",
                           uuid.uuid4().hex, 20)
        assert getattr(e.value, "rule", None) == "identifier" or "identifier" in str(e.value)
        one = t.run_fragment(f"SELECT count(*) AS _p0, sum(samples.outcome) AS _p1 FROM samples WHERE samples.outcome = {outcome!r}",
                             uuid.uuid4().hex, 20)
        cells = t.run_fragment("SELECT samples.population AS _k0, samples.sex AS _k1, samples.status AS _k2, count(*) AS _p0, "
                               "sum(samples.outcome) AS _p1 FROM samples GROUP BY samples.population, samples.sex, samples.status",
                               uuid.uuid4().hex, 20)
    finally:
        t.close()
    # defence off would release this person's outcome: the pooled data has exactly one such row
    assert pooled.execute(f"SELECT count(*) FROM samples WHERE outcome = {outcome!r}").fetchone()[0] == 1
    (row,) = one.to_pylist()
    assert row[P.SUPPRESSED_COLUMN] and row["_p0"] is None and row["_p1"] is None and row[P.N_COLUMN] is None
    truth = dict(((p, s, st), c) for p, s, st, c in pooled.execute(
        f"SELECT s.\"Population\", s.sex, s.status, count(*) FROM samples s JOIN split USING (\"sample.id\") WHERE node = '{node}' "
        "GROUP BY ALL").fetchall())
    small = {k for k, c in truth.items() if c < 5}
    assert small, "the node has groups below 5"
    got = {(r["_k0"], r["_k1"], r["_k2"]): r for r in cells.to_pylist()}
    assert not small & set(got), "a withheld group's key left the node"
    assert all(not r[P.SUPPRESSED_COLUMN] and r["_p0"] == truth[k] for k, r in got.items())
    assert set(got) == set(truth) - small
    assert json.loads(cells.schema.metadata[P.META_WITHHELD])["min_count"] == len(small)
    assert cells.schema.metadata[P.META_MIN_COUNT] == b"5"


# -- authentication ----------------------------------------------------------------------------

def _calls():
    ticket = flight.Ticket(P.fragment_ticket("SELECT count(*) AS _p0 FROM samples", "noauth"))
    return {
        "do_get": lambda c, o: c.do_get(ticket, o).read_all(),
        "catalog": lambda c, o: list(c.do_action(flight.Action(P.ACTION_CATALOG, b""), o)),
        "history": lambda c, o: list(c.do_action(flight.Action(P.ACTION_HISTORY, b"{}"), o)),
        "mpc_prepare": lambda c, o: list(c.do_action(flight.Action(P.ACTION_MPC_PREPARE, json.dumps(
            {P.KEY_QUERY_ID: "noauth", P.KEY_SQL: "SELECT count(*) AS _p0 FROM samples"}).encode()), o)),
    }


@pytest.mark.parametrize("call", ["do_get", "catalog", "history", "mpc_prepare"])
@pytest.mark.parametrize("header", [None, "Bearer not-the-token", "not-a-bearer", "Bearer "])
def test_unauthenticated_calls_are_refused_and_audited(cfg, call, header):
    n = cfg.nodes[1]
    loc = n.location(cfg.root)
    tls = cfg.client_tls()
    assert loc.startswith("grpc+tls://") and tls is not None  # local federations are TLS by default
    client = flight.FlightClient(loc, tls_root_certs=tls.ca)
    headers = [] if header is None else [(P.AUTH_HEADER.encode(), header.encode())]
    audit = cfg.root / n.name / "audit.log"
    before = sum(1 for r in records(audit) if r["event"] == "auth_failed")
    try:
        # defence check: the same call with the right token is answered
        ok = [(P.AUTH_HEADER.encode(), (P.BEARER + n.token).encode())]
        if call != "mpc_prepare":
            _calls()[call](client, flight.FlightCallOptions(headers=ok, timeout=20))
        with pytest.raises(flight.FlightUnauthenticatedError) as e:
            _calls()[call](client, flight.FlightCallOptions(headers=headers, timeout=20))
    finally:
        client.close()
    body = P.decode_error(str(e.value))
    assert body is not None and body["code"] == P.CODE_AUTH
    assert "no bearer token" in body["reason"] or "token not recognised" in body["reason"]
    after = [r for r in records(audit) if r["event"] == "auth_failed"]
    assert len(after) == before + 1
    assert after[-1]["decision"] == "refused" and after[-1]["rule"] == "auth"
    assert after[-1]["method"] == ("do_get" if call == "do_get" else "do_action")


def test_wrong_token_through_the_client_is_an_auth_error(cfg):
    from genofed.engine.errors import AuthError

    t = _transport(cfg, 2, token="guessed-token")
    try:
        with pytest.raises(AuthError, match="token not recognised"):
            t.run_fragment("SELECT count(*) AS _p0 FROM samples", "badtoken", 20)
    finally:
        t.close()


# -- HE keys below 128-bit security --------------------------------------------------------------

def _save(obj) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x")
        obj.save(p)
        return Path(p).read_bytes()


def _pb(field: int, data: bytes) -> bytes:
    def varint(x: int) -> bytes:
        out = bytearray()
        while True:
            b, x = x & 0x7F, x >> 7
            out.append(b | (0x80 if x else 0))
            if not x:
                return bytes(out)
    return varint(field << 3 | 2) + varint(len(data)) + data


def _weak_context(n: int, bits: list[int], scheme: str):
    """A public TenSEAL context with SEAL's security check switched off: (serialised, sealcontext)."""
    import tenseal.sealapi as sa

    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.BFV if scheme == "bfv" else sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sa.CoeffModulus.Create(n, bits))
    if scheme == "bfv":
        parms.set_plain_modulus(sa.PlainModulus.Batching(n, 20))
    ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.NONE)
    pk = sa.PublicKey()
    sa.KeyGenerator(ctx).create_public_key(pk)
    public = _pb(1, _save(pk)) + b"\x10\x07" + b"\x19" + struct.pack("<d", 2.0**40 if scheme == "ckks" else -1.0)
    return _pb(1, _save(parms)) + _pb(2, public), ctx, parms


WEAK = [(4096, [40, 40, 40]), (2048, [30, 30]), (8192, [60, 60, 60, 60]), (1024, [30])]


@pytest.mark.parametrize("n, bits", WEAK, ids=[f"N{n}_{sum(b)}bits" for n, b in WEAK])
def test_weak_he_keys_are_refused(n, bits):
    import tenseal.sealapi as sa

    from genofed.privacy.secure import he as H

    bfv, ctx, parms = _weak_context(n, bits, "bfv")
    ckks, _, _ = _weak_context(n, bits, "ckks")
    # defence off: with the security level unchecked these keys are valid and usable
    assert ctx.parameters_set()
    assert not sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128).parameters_set()  # SEAL's own tc128 verdict agrees
    assert H.context_parameters(bfv) == ("bfv", n, bits)
    with pytest.raises(CombineError, match="below 128-bit security"):
        H.check_security(n, bits)
    key_id = hashlib.sha256(bfv + ckks).hexdigest()[:16]
    with pytest.raises(CombineError, match="below 128-bit security"):
        H.PublicKeys.load(key_id, bfv, ckks)


def test_security_table_and_default_parameters():
    import tenseal.sealapi as sa

    from genofed.privacy.secure import he as H

    for n, limit in H.HE_STANDARD_128.items():
        assert sa.CoeffModulus.MaxBitCount(n, sa.SEC_LEVEL_TYPE.TC128) == limit
        H.check_security(n, [limit])  # at the limit: accepted
        with pytest.raises(CombineError, match="below 128-bit security"):
            H.check_security(n, [limit, 1])
    H.check_security(H.N_POLY, H.COEFF_BITS)
    kp = H.KeyPair()
    assert H.context_parameters(kp.public_bfv) == ("bfv", H.N_POLY, H.COEFF_BITS)
    assert H.context_parameters(kp.public_ckks) == ("ckks", H.N_POLY, H.COEFF_BITS)
    H.PublicKeys.load(kp.key_id, kp.public_bfv, kp.public_ckks)
    for junk in (b"", b"\xff" * 40, kp.public_bfv[:20]):
        with pytest.raises(CombineError, match="malformed HE context"):
            H.context_parameters(junk)


def test_node_refuses_a_rogue_key_holders_weak_keys(fed, cfg):
    """A key holder (real server, real TLS certificate) hands out N=4096 keys with a 120-bit
    modulus: the node refuses them when it loads the public keys, before encrypting anything."""
    from genofed.privacy.secure.keyholder import KeyHolderClient, KeyHolderConfig, KeyHolderServer

    bfv, _, _ = _weak_context(4096, [40, 40, 40], "bfv")
    ckks, _, _ = _weak_context(4096, [40, 40, 40], "ckks")
    weak = types.SimpleNamespace(key_id=hashlib.sha256(bfv + ckks).hexdigest()[:16], public_bfv=bfv, public_ckks=ckks)
    rogue = KeyHolderServer(KeyHolderConfig.load(cfg.root / cfg.keyholder["config"]))
    rogue.keys = weak
    port_file = cfg.root / "keyholder" / "keyholder.port"
    real_port = port_file.read_text()
    port_file.write_text(str(rogue.port))  # the nodes find their key holder through this file
    t = _transport(cfg)
    try:
        with pytest.raises(NodeError, match="below 128-bit security") as e:
            t.run_he("SELECT count(*) AS _p0 FROM samples", uuid.uuid4().hex, weak.key_id, 20)
        assert e.value.node == cfg.nodes[0].name
        coord = KeyHolderClient(cfg.keyholder_location(), cfg.keyholder["token"], tls=cfg.client_tls())
        with pytest.raises(CombineError, match="below 128-bit security"):
            coord.public_keys()  # the coordinator refuses them too
        coord.close()
    finally:
        port_file.write_text(real_port)
        t.close()
        rogue.shutdown()
    # with the real key holder back, HE queries work and agree with plain
    plain = fed.sql(NORMAL).to_arrow().to_pylist()
    assert fed.sql(NORMAL, combine="he").to_arrow().to_pylist() == plain


# -- malformed ciphertexts sent to the key holder ------------------------------------------------

class _Session:
    """One HE query at the real key holder, with us as the coordinator and as every node (their
    key-holder tokens read from their node.toml): only the first node holds the groups."""

    def __init__(self, cfg: FederationConfig, min_count: int = 1, values=((b"a", 7), (b"b", 3), (b"c", 9))):
        from genofed.privacy.secure import he as H
        from genofed.privacy.secure import layout as L
        from genofed.privacy.secure.keyholder import KeyHolderClient

        tls = cfg.client_tls()
        tokens = {n.name: tomllib.loads((cfg.root / n.config).read_text())["keyholder"]["token"] for n in cfg.nodes}
        self.coord = KeyHolderClient(cfg.keyholder_location(), cfg.keyholder["token"], tls=tls)
        self.nodes = {n: KeyHolderClient(cfg.keyholder_location(), tok, tls=tls) for n, tok in tokens.items()}
        self.first = cfg.nodes[0].name
        self.qid = uuid.uuid4().hex
        self.layout = L.Layout(["_k0"], [L.PartialLayout("_p0", L.INT, count=True), L.PartialLayout("_p1", L.REAL)])
        table = pa.table({"_k0": [k.decode() for k, _ in values], "_p0": pa.array([v for _, v in values], pa.int64()),
                          "_p1": [v / 2 for _, v in values], "_n": pa.array([v for _, v in values], pa.int64())})
        empty = table.slice(0, 0)
        key_id = self.coord.open(self.qid, list(self.nodes), min_count, timeout=20)
        self.keys = self.coord.public_keys()
        assert self.keys.key_id == key_id
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(len(self.nodes)) as pool:  # the key holder answers once every node aligned
            futs = {n: pool.submit(c.align, self.qid, min_count, self.layout, L.key_table(table if n == self.first else empty, ["_k0"]), 20)
                    for n, c in self.nodes.items()}
            unions = {n: f.result() for n, f in futs.items()}
        union = unions[self.first]
        self.g = union.num_rows
        self.parts = {}
        self.tags = {}
        for n in self.nodes:
            mine = table if n == self.first else empty
            cts = H.encrypt_lanes(L.lane_values(L.align(mine, union, ["_k0"]), self.layout), self.layout, self.keys)
            self.parts[n] = cts
            self.tags[n] = H.tag_ciphertexts(cts, self.qid, n, key_id, H.tag_key(hashlib.sha256(tokens[n].encode()).hexdigest()))
        self.sums = self.parts[self.first]  # what tampering targets: the first node's ciphertexts

    def relay(self, first: pa.Table | None = None, parts: dict | None = None) -> pa.Table:
        from genofed.privacy.secure import he as H

        parts = dict(parts or self.parts)
        if first is not None:
            parts[self.first] = first
        return pa.concat_tables([t.append_column(H.NODE_COLUMN, pa.array([n] * t.num_rows, pa.string())) for n, t in parts.items()],
                                promote_options="permissive")

    def release(self, first: pa.Table | None = None, tags: dict | None = None, parts: dict | None = None) -> pa.Table:
        return self.coord.release(self.qid, self.relay(first, parts), 20, tags=self.tags if tags is None else tags)

    def close(self) -> None:
        self.coord.close()
        for c in self.nodes.values():
            c.close()


def _with_ct(sums: pa.Table, row: int, blob: bytes, fix_digest: bool = True) -> pa.Table:
    cts, digests = sums.column("ct").to_pylist(), sums.column("sha256").to_pylist()
    cts[row] = blob
    if fix_digest:
        digests[row] = hashlib.sha256(blob).digest()
    return sums.set_column(2, "ct", pa.array(cts, pa.binary())).set_column(3, "sha256", pa.array(digests, pa.binary(32)))


def _flip(blob: bytes, pos: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x04
    return bytes(b)


TAMPER = {
    "truncated": lambda s: _with_ct(s, 0, s.column("ct")[0].as_py()[: len(s.column("ct")[0].as_py()) // 3]),
    "garbage": lambda s: _with_ct(s, 0, np.random.default_rng(1).bytes(len(s.column("ct")[0].as_py()))),
    "empty": lambda s: _with_ct(s, 1, b""),
    "bitflip_bfv": lambda s: _with_ct(s, 0, _flip(s.column("ct")[0].as_py(), 100_003)),
    "bitflip_ckks": lambda s: _with_ct(s, 1, _flip(s.column("ct")[1].as_py(), 150_001)),
    "bitflip_flags": lambda s: _with_ct(s, 2, _flip(s.column("ct")[2].as_py(), 200_009)),
    "bitflip_no_digest": lambda s: _with_ct(s, 0, _flip(s.column("ct")[0].as_py(), 100_003), fix_digest=False),
    "missing_ciphertext": lambda s: s.slice(1),
    "wrong_schema": lambda s: s.drop_columns(["sha256"]),
}


def test_bitflip_defeats_the_digest(cfg):
    """Defence off: the digest is a plain hash, so whoever sends a ciphertext can recompute it; a
    bit-flipped ciphertext then loads and decrypts to values that are not the sums."""
    from genofed.privacy.secure import he as H

    s = _Session(cfg)
    try:
        kp = H.KeyPair()  # our own keys, to decrypt without the key holder's checks
        import tenseal as ts

        vec = ts.bfv_vector(kp.bfv, [7, 3, 9])
        flipped = _flip(vec.serialize(), 100_003)
        got = ts.bfv_vector_from(kp.bfv, flipped).decrypt()
        assert got != [7, 3, 9]
        bad = TAMPER["bitflip_bfv"](s.sums)
        assert bad.column("sha256")[0].as_py() == hashlib.sha256(bad.column("ct")[0].as_py()).digest()
    finally:
        s.close()


@pytest.mark.parametrize("how", list(TAMPER))
def test_key_holder_refuses_malformed_ciphertexts(cfg, how):
    s = _Session(cfg)
    try:
        with pytest.raises(NodeError) as e:
            s.release(TAMPER[how](s.sums))
        assert e.value.node_code in ("malformed", "tampered", P.CODE_BAD_REQUEST) and "Traceback" not in str(e.value)
        assert "nothing was released" in e.value.reason or "malformed" in e.value.reason
        # the session is spent: the honest ciphertexts are not released afterwards either
        with pytest.raises(NodeError, match="no open HE session"):
            s.release()
    finally:
        s.close()
    # the key holder keeps serving: a fresh query is released exactly
    s2 = _Session(cfg)
    try:
        rows = s2.release().to_pylist()
        assert [(r["_k0"], r["_p0"], r["_p1"]) for r in rows] == [("a", 7, 3.5), ("b", 3, 1.5), ("c", 9, 4.5)]
    finally:
        s2.close()


def test_crafted_count_lane_cannot_lift_a_small_group(cfg):
    """The coordinator adds Enc(4) to the first node's count word (under the public key) so a
    group of one would pass min_count 5. The key holder adds the nodes' ciphertexts itself and
    checks each node's tag: the altered ciphertext is refused, naming the node, nothing released."""
    import tenseal as ts

    from genofed.privacy.secure import he as H

    s = _Session(cfg, min_count=5, values=((b"a", 1),))
    try:
        chs = H.channels(s.layout)
        w = next(i for i, ch in enumerate(chs) if ch.kind == "word")
        word = ts.bfv_vector_from(s.keys.bfv, s.sums.column("ct")[w].as_py())
        lifted = word + ts.bfv_vector(s.keys.bfv, [4])  # the count field is the word's low bits
        with pytest.raises(NodeError) as e:
            s.release(_with_ct(s.sums, w, lifted.serialize()))
        assert e.value.node_code == "tampered" and s.first in e.value.reason and "nothing was released" in e.value.reason
    finally:
        s.close()
    # defence check: the same session shape without the forgery releases nothing either (a group of one)
    s2 = _Session(cfg, min_count=5, values=((b"a", 1),))
    try:
        rows = s2.release().to_pylist()
        assert all(r[P.SUPPRESSED_COLUMN] for r in rows) and all(r["_k0"] is None for r in rows), rows
    finally:
        s2.close()


@pytest.mark.parametrize("how", ["one_node", "subset", "stranger"])
def test_key_holder_opens_sessions_for_the_whole_federation_only(cfg, how):
    """A coordinator that opens an HE session for one node (to have it decrypt that node's
    partials), a subset, or a stranger is refused: the key holder serves its configured nodes."""
    from genofed.privacy.secure.keyholder import KeyHolderClient

    names = [n.name for n in cfg.nodes]
    ask = {"one_node": names[:1], "subset": names[:2], "stranger": [*names, "biobank_X"]}[how]
    kh = KeyHolderClient(cfg.keyholder_location(), cfg.keyholder["token"], tls=cfg.client_tls())
    try:
        with pytest.raises(NodeError, match="nothing was opened") as e:
            kh.open(uuid.uuid4().hex, ask, 5, timeout=20)
        assert ("not a node of the federation" if how == "stranger" else "must include every node") in e.value.reason
    finally:
        kh.close()


@pytest.mark.parametrize("how", ["pre_added_sum", "node_missing", "tag_of_another_query", "tags_swapped"])
def test_key_holder_releases_only_every_nodes_tagged_ciphertexts(cfg, how):
    """What a coordinator could relay instead of the nodes' own tagged ciphertexts: a sum it made
    (over only the first node), a release without one node, tags replayed from another query, or
    tags swapped between nodes. Each is refused and nothing is released."""
    from genofed.privacy.secure import he as H

    s = _Session(cfg)
    other = _Session(cfg)
    try:
        with pytest.raises(NodeError) as e:
            if how == "pre_added_sum":
                summed = H.add_ciphertexts({s.first: s.sums}, s.layout, s.keys, s.g)
                s.coord.release(s.qid, summed, 20, tags=s.tags)
            elif how == "node_missing":
                s.release(parts={n: t for n, t in s.parts.items() if n != list(s.parts)[-1]})
            elif how == "tag_of_another_query":
                s.release(tags=other.tags)
            else:
                names = list(s.tags)
                s.release(tags={**s.tags, names[0]: s.tags[names[1]], names[1]: s.tags[names[0]]})
        assert e.value.node_code in ("malformed", "tampered") and "nothing was released" in e.value.reason, e.value.reason
    finally:
        s.close()
        other.close()

