"""Transport security: every Flight link of a federation made by `federation init` is TLS; clients
without the right CA (or, for mutual TLS, without a client certificate) get a clear error."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pyarrow.flight as flight
import pytest
import tomli_w
from conftest import need, shared_data

import genofed
from genofed.connectors.client import FlightTransport
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig, down, up
from genofed.connectors.node import NodeServer
from genofed.connectors.tls import ClientTLS, ServerTLS, make_ca, make_cert
from genofed.engine.errors import ConfigError, NodeError

GENOFED = [sys.executable, "-m", "genofed.cli"]
SQL = "SELECT super_pop, count(*) AS n, allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) GROUP BY super_pop ORDER BY super_pop"


def run(*args, check=True):
    p = subprocess.run([*GENOFED, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _init(root: Path, *extra: str) -> Path:
    vcf = need(shared_data() / "1kg_2504_aisnps" / "kidd.aisnp.1kg.vcf.gz")
    panel = need(shared_data() / "panel" / "1kg_phase3_2504_panel.tsv")
    run("federation", "init", root, "--vcf", vcf, "--samples", panel, "--nodes", "3", "--min-count", "1", "--allow-plain",
        "--combine", "plain", *extra)
    return root


@pytest.fixture(scope="module")
def feds(tmp_path_factory):
    """The same cohort as a TLS federation (init's default) and a plain one (--no-tls), both up; three nodes (mpc needs an
    honest majority of parties)."""
    tls_root = _init(tmp_path_factory.mktemp("fed_tls") / "fed")
    plain_root = _init(tmp_path_factory.mktemp("fed_plain") / "fed", "--no-tls")
    up(tls_root)
    try:
        up(plain_root)
        yield tls_root, plain_root
    finally:
        down(plain_root)
        down(tls_root)


def _key_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.key"))


def test_init_configures_tls_by_default(feds):
    tls_root, plain_root = feds
    cfg = FederationConfig.load(tls_root)
    assert cfg.tls == {"ca": "tls/ca.crt"}
    assert all(n.tls and n.location(tls_root).startswith("grpc+tls://") for n in cfg.nodes)
    assert (cfg.keyholder_location() or "").startswith("grpc+tls://")
    node = tomllib.loads((tls_root / "node_1" / "node.toml").read_text())
    assert node["tls"] == {"cert": "tls/node.crt", "key": "tls/node.key"}
    assert node["keyholder"]["ca"] == "../tls/ca.crt"
    kh = tomllib.loads((tls_root / "keyholder" / "keyholder.toml").read_text())
    assert kh["tls"] == {"cert": "tls/keyholder.crt", "key": "tls/keyholder.key"}
    # every private key (the CA's, each node's, the key holder's) is readable by its owner only
    keys = _key_files(tls_root)
    assert {k.relative_to(tls_root).as_posix() for k in keys} == {"tls/ca.key", "node_1/tls/node.key", "node_2/tls/node.key",
                                                                    "node_3/tls/node.key", "keyholder/tls/keyholder.key"}
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    # --no-tls: plain links, no certificates
    plain = FederationConfig.load(plain_root)
    assert not plain.tls and not any(n.tls for n in plain.nodes) and not _key_files(plain_root)
    assert all(n.location(plain_root).startswith("grpc://") for n in plain.nodes)


@pytest.mark.parametrize("combine", ["plain", "mpc", "he"])
def test_tls_federation_answers_like_plain(feds, combine):
    tls_root, plain_root = feds
    with genofed.connect(tls_root) as fed:
        secure = fed.sql(SQL, combine=combine).to_arrow().to_pylist()
    with genofed.connect(plain_root) as fed:
        plain = fed.sql(SQL, combine="plain").to_arrow().to_pylist()
    assert [r["super_pop"] for r in secure] == ["AFR", "AMR", "EAS", "EUR", "SAS"]
    assert [(r["super_pop"], r["n"]) for r in secure] == [(r["super_pop"], r["n"]) for r in plain]
    assert all(abs(a["af"] - b["af"]) < 1e-9 for a, b in zip(secure, plain))


def _node(root: Path, tls: ClientTLS | None, scheme: str | None = None) -> FlightTransport:
    cfg = FederationConfig.load(root)
    n = cfg.nodes[0]
    loc = n.location(root)
    if scheme:
        loc = scheme + loc.split("://", 1)[1]
    return FlightTransport(n.name, loc, n.token, tls=tls)


def test_client_without_ca_is_refused_clearly(feds, tmp_path):
    tls_root, _ = feds
    t = _node(tls_root, None)
    with pytest.raises(NodeError, match=r"no CA is configured\. Set \[tls\] ca in federation.toml") as e:
        t.catalog(timeout=10)
    assert e.value.node_code == "tls" and "Traceback" not in str(e.value)
    t.close()
    # the same through the API and the CLI: a federation file without [tls] ca
    text = (tls_root / "federation.toml").read_text().replace('[tls]\nca = "tls/ca.crt"\n', "")
    assert "[tls]" not in text
    data = tomllib.loads(text)
    for entry in data["nodes"]:  # a remote-style federation file: nodes reached by port
        entry["port"] = int((tls_root / entry["name"] / "node.port").read_text())
    data.pop("keyholder")
    copy = tmp_path / "federation.toml"
    copy.write_text(tomli_w.dumps(data))
    with genofed.connect(copy) as fed, pytest.raises(NodeError, match="no CA is configured"):
        fed.sql("SELECT count(*) AS n FROM samples", combine="plain")
    p = run("query", "--federation", copy, "--combine", "plain", "SELECT count(*) AS n FROM samples", check=False)
    assert p.returncode == 2 and "no CA is configured" in p.stderr and "Traceback" not in p.stderr


def test_client_with_wrong_ca_is_refused_clearly(feds, tmp_path):
    tls_root, _ = feds
    make_ca(tmp_path / "other")
    t = _node(tls_root, ClientTLS.load({"ca": "other/ca.crt"}, tmp_path, "test"))
    with pytest.raises(NodeError, match="not signed by the configured CA") as e:
        t.catalog(timeout=10)
    assert e.value.node_code == "tls"
    t.close()


def test_certificate_for_another_host_is_refused_clearly(tmp_path):
    make_ca(tmp_path / "ca")
    crt, key = make_cert(tmp_path / "ca", tmp_path / "srv", "srv", hosts=["node-x.example.org"])
    tls = ServerTLS.load({"cert": str(crt), "key": str(key)}, None, "test")
    assert tls is not None
    server = flight.FlightServerBase("grpc+tls://127.0.0.1:0", **tls.server_kwargs())
    t = FlightTransport("x", f"grpc+tls://127.0.0.1:{server.port}", "t", tls=ClientTLS.load({"ca": "ca/ca.crt"}, tmp_path, "test"))
    try:
        with pytest.raises(NodeError, match="does not name the host dialled"):
            t.catalog(timeout=10)
    finally:
        t.close()
        server.shutdown()


def test_plain_client_to_a_tls_node_and_tls_client_to_a_plain_node(feds):
    tls_root, plain_root = feds
    tls = FederationConfig.load(tls_root).client_tls()
    t = _node(tls_root, None, scheme="grpc://")
    with pytest.raises(NodeError, match="probably requires TLS"):
        t.catalog(timeout=10)
    t.close()
    t = _node(plain_root, tls, scheme="grpc+tls://")
    with pytest.raises(NodeError, match="does not speak TLS"):
        t.catalog(timeout=10)
    t.close()


def test_node_with_mutual_tls(feds, tmp_path):
    """A node whose [tls] names a client_ca refuses clients without a certificate signed by it."""
    tls_root, _ = feds
    make_ca(tmp_path / "clients")
    alice_crt, alice_key = make_cert(tmp_path / "clients", tmp_path / "alice", "alice", client=True)
    make_ca(tmp_path / "rogue")
    make_cert(tmp_path / "rogue", tmp_path / "mallory", "mallory", client=True)
    cfg = NodeConfig.load(tls_root / "node_1" / "node.toml")
    cfg.tls["client_ca"] = str(tmp_path / "clients" / "ca.crt")
    cfg.audit = str(tmp_path / "audit.log")
    server = NodeServer(cfg)
    threading.Thread(target=server.serve, daemon=True).start()
    fed = FederationConfig.load(tls_root)
    token = fed.nodes[0].token
    loc = f"grpc+tls://127.0.0.1:{server.port}"
    ca = (tls_root / "tls" / "ca.crt").read_bytes()

    def call(tls: ClientTLS):
        t = FlightTransport("node_1", loc, token, tls=tls)
        try:
            return t.catalog(timeout=10)
        finally:
            t.close()

    try:
        with pytest.raises(NodeError, match="requires a client certificate") as e:
            call(ClientTLS(ca))
        assert e.value.node_code == "tls" and "genofed certs issue --client" in str(e.value)
        mallory = tmp_path / "mallory"
        with pytest.raises(NodeError, match="rejected the client certificate"):
            call(ClientTLS(ca, (mallory / "mallory.crt").read_bytes(), (mallory / "mallory.key").read_bytes()))
        # the researcher's certificate, configured in the federation file's [tls]
        table = {"ca": str(tls_root / "tls" / "ca.crt"), "cert": str(alice_crt), "key": str(alice_key)}
        assert call(ClientTLS.load(table, None, "test"))["node"] == "node_1"
        # a certificate is not a token: without a valid bearer token the node still refuses
        t = FlightTransport("node_1", loc, "not-a-token", tls=ClientTLS.load(table, None, "test"))
        with pytest.raises(NodeError, match="token not recognised"):
            t.catalog(timeout=10)
        t.close()
    finally:
        server.shutdown()


def test_certs_cli(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = tmp_path / "ca"
    out = run("certs", "ca", ca).stdout
    assert "ca.crt" in out
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    again = run("certs", "ca", ca, check=False)
    assert again.returncode == 2 and "already holds a CA" in again.stderr
    run("certs", "issue", "--ca", ca, "--out", tmp_path / "srv", "biobank-a", "--host", "node-a.example.org", "--host", "10.0.0.7")
    run("certs", "issue", "--ca", ca, "--out", tmp_path / "cli", "alice", "--client")
    for key in (tmp_path / "srv" / "biobank-a.key", tmp_path / "cli" / "alice.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    srv = x509.load_pem_x509_certificate((tmp_path / "srv" / "biobank-a.crt").read_bytes())
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-a.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert list(srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # nodes also dial each other (MPC links)
    cli = x509.load_pem_x509_certificate((tmp_path / "cli" / "alice.crt").read_bytes())
    assert list(cli.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    srv.verify_directly_issued_by(ca_cert)
    cli.verify_directly_issued_by(ca_cert)
    no_ca = run("certs", "issue", "--ca", tmp_path / "srv", "--out", tmp_path / "x", "y", check=False)
    assert no_ca.returncode == 2 and "holds no CA" in no_ca.stderr
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_tls_config_errors(tmp_path):
    base = {"node": {"name": "n"}, "researchers": [{"name": "r", "token_sha256": "0" * 64}]}
    with pytest.raises(ConfigError, match=r"unknown \[tls\] keys \['ca'\]"):
        NodeConfig.from_dict({**base, "tls": {"cert": "a", "key": "b", "ca": "c"}}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"\[tls\] needs cert and key"):
        NodeConfig.from_dict({**base, "tls": {"cert": "a"}}, base=tmp_path)
    cfg = NodeConfig.from_dict({**base, "tls": {"cert": "tls/n.crt", "key": "tls/n.key"}}, base=tmp_path)
    assert cfg.tls["cert"] == str(tmp_path / "tls" / "n.crt")  # relative to node.toml
    assert NodeConfig.from_dict({**base, **cfg.to_toml()}, base=tmp_path).tls == cfg.tls
    with pytest.raises(ConfigError, match="cannot read the certificate .*n.crt"):
        NodeServer(cfg)
    (tmp_path / "federation.toml").write_text('[[nodes]]\nname = "a"\ntoken = "t"\n[tls]\ncert = "c.crt"\nkey = "c.key"\n')
    with pytest.raises(ConfigError, match=r"\[tls\] needs ca"):
        FederationConfig.load(tmp_path)
