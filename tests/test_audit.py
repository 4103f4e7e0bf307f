"""The node's hash-chained audit log: every request is recorded (released, refused, malformed,
unauthenticated) without protected values, and any edit, deletion, insertion or reordering of
lines is detected by `genofed audit verify`."""

from __future__ import annotations

import json
import threading

import pyarrow.flight as flight
import pytest
from click.testing import CliRunner
from conftest import LocalFederation, clone_federation

from genofed.cli import main
from genofed.connectors.federation import FederationConfig
from genofed.connectors.tls import flight_client
from genofed.engine.errors import DisclosureError
from genofed.privacy.audit import AuditLog, records, verify


def _write(tmp_path, n=5):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(n):
        log.append("release", researcher="alice", query_id=f"q{i}", decision="released", groups=i)
    return tmp_path / "audit.log"


def test_chain_detects_edit_delete_insert_reorder_and_torn_line(tmp_path):
    path = _write(tmp_path)
    assert verify(path).ok and verify(path).lines == 5
    lines = path.read_bytes().split(b"\n")[:-1]

    def check(new_lines, problem_line, trailing=b"\n"):
        path.write_bytes(b"\n".join(new_lines) + trailing)
        v = verify(path)
        assert not v.ok and v.line == problem_line, v
        return v

    rec = json.loads(lines[2])
    rec["groups"] = 99  # an edited count
    check([*lines[:2], json.dumps(rec, sort_keys=True, separators=(",", ":")).encode(), *lines[3:]], 3)
    check([*lines[:1], *lines[2:]], 2)  # a deleted line
    check([lines[0], lines[2], lines[1], *lines[3:]], 2)  # reordered
    check([*lines[:3], lines[1], *lines[3:]], 4)  # a replayed (inserted) line
    v = check([*lines, lines[4][:20]], 6, trailing=b"")  # a torn last line
    assert "incomplete" in v.problem
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert verify(path).ok


def test_concurrent_appends_keep_one_chain(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    threads = [threading.Thread(target=lambda: [log.append("release", researcher="r") for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = verify(tmp_path / "audit.log")
    assert v.ok and v.lines == 200


@pytest.fixture(scope="module")
def audited(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_audit"), min_count=5, combine="plain")
    lf = LocalFederation(root)
    try:
        yield lf, root
    finally:
        lf.close()


def test_every_request_is_audited_without_protected_values(audited):
    lf, root = audited
    fed = lf.fed
    res = fed.sql("SELECT population, count(*) AS n FROM samples GROUP BY population")
    with pytest.raises(DisclosureError):  # refused by the planner: never reaches a node
        fed.sql("SELECT sample_id, outcome FROM samples")
    # a fragment sent straight to a node, grouping by sample_id: the node refuses it
    with pytest.raises(DisclosureError):
        fed._transports[0].run_fragment("SELECT sample_id AS _k0, count(*) AS _p0 FROM samples GROUP BY sample_id", "direct", 30)
    cfg = FederationConfig.load(root)
    node = cfg.nodes[0]
    # no token, and a wrong token: refused and audited
    client = flight_client(node.location(root), cfg.client_tls())
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("catalog", b"")))
    opts = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-a-token")])
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("catalog", b""), opts))
    client.close()
    log_path = root / node.name / "audit.log"
    assert verify(log_path).ok
    recs = list(records(log_path))
    events = [r["event"] for r in recs]
    assert "release" in events and "refused" in events and events.count("auth_failed") >= 2
    release = [r for r in recs if r["event"] == "release"][-1]
    assert release["researcher"] and len(release["fragment_sha256"]) == 64 and release["combine"] == "plain"
    refused = [r for r in recs if r["event"] == "refused"][-1]
    assert refused["rule"] == "row_level"
    text = log_path.read_text()
    # no sample id, no released value, no SQL text in the log
    assert "HG00096" not in text and "outcome" not in text and "SELECT" not in text.upper()
    counts = {str(v) for v in res.to_pandas()["n"]}
    assert not any(f'"n":{c}' in text for c in counts)


def test_audit_cli_verify_and_show(audited):
    _, root = audited
    node = FederationConfig.load(root).nodes[0]
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify", str(root / node.config)])
    assert ok.exit_code == 0 and "chain intact" in ok.output
    shown = runner.invoke(main, ["audit", "show", str(root / node.name / "audit.log"), "--event", "refused", "--json"])
    assert shown.exit_code == 0 and all(json.loads(x)["event"] == "refused" for x in shown.output.splitlines())
    log_path = root / node.name / "audit.log"
    original = log_path.read_bytes()
    try:
        log_path.write_bytes(original.replace(b'"decision":"refused"', b'"decision":"released"', 1))
        bad = runner.invoke(main, ["audit", "verify", str(log_path)])
        assert bad.exit_code == 1 and "edited" in bad.output
    finally:
        log_path.write_bytes(original)
