"""Faults a federation must survive: a node killed mid-query, a node that stalls, an MPC party
that dies mid-protocol, a full disk during ingest, kill -9 of a node during budgeted queries.

Real node processes on loopback over the 1126-sample 1000 Genomes subset, real MPyC parties,
real signals. Each test checks four things: the failure names the node at fault within the
timeout; nothing is released for the failed query; the state left behind (store, ledger, audit
log) is consistent; and the federation, restarted where needed, answers again exactly as DuckDB
over the pooled data does.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import LocalFederation, clone_federation, set_node_section

import genofed
from genofed.connectors.federation import FederationConfig, up
from genofed.engine.errors import GenofedError, NodeError
from genofed.privacy.audit import AuditLog, records, verify
from genofed.privacy.ledger import Ledger

SMALL = "SELECT s.population, count(*) AS n FROM samples s GROUP BY 1"
# a row-wise fragment (a condition on genotype values): a second or two at each node
SLOW = ("SELECT s.population, count(*) AS n FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id "
        "WHERE g.dosage + g.ploidy > 2 GROUP BY 1")
# per-variant counts under MPC: a protocol long enough to kill a party inside it
PER_VARIANT = "SELECT g.variant_id, sum(g.dosage) AS ac FROM genotypes g GROUP BY 1"


def _rows(t):
    return sorted(zip(*[t.column(i).to_pylist() for i in range(t.num_columns)], strict=True))


def _pid(root: Path, node: str) -> int:
    return int((root / node / "node.pid").read_text())


def _events(root: Path, node: str) -> list[dict]:
    log = root / node / "audit.log"
    v = verify(log)
    assert v.ok, f"{node}: audit log does not verify: {v.problem} (line {v.line})"
    return list(records(log))


def _gone(pid: int) -> None:
    """Until a killed node process has exited and been reaped."""
    try:
        psutil.Process(pid).wait(30)
    except psutil.NoSuchProcess:
        pass


def _wait_busy(pid: int, timeout: float = 60.0) -> None:
    """Until the process is using CPU (executing a fragment)."""
    p = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    p.cpu_percent(None)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if p.cpu_percent(None) > 30:
            return
    raise AssertionError("the node never started working on the query")


def _in_thread(fn, *args, **kw):
    out: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e
        out["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture(scope="module")
def local_fed(fed_dir_1126, tmp_path_factory):
    """One federation for the process-fault tests (each leaves it serving, restarted if need be)."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("faults"), min_count=5, gates=False)
    lf = LocalFederation(root)
    try:
        yield root, lf
    finally:
        lf.close()


def test_node_killed_mid_query_is_named_releases_nothing_and_restarts(local_fed, pooled1126):
    root, lf = local_fed
    fed = lf.fed
    want = _rows(pooled1126.sql("SELECT population, count(*) FROM samples GROUP BY 1").to_arrow_table())
    assert _rows(fed.sql(SMALL, combine="mpc").to_arrow()) == want
    victim = _pid(root, "biobank_B")
    t, out = _in_thread(fed.sql, SLOW, combine="mpc")
    _wait_busy(victim)
    os.kill(victim, signal.SIGKILL)  # mid-fragment
    t.join(90)
    assert isinstance(out.get("error"), NodeError), out
    assert out["error"].node == "biobank_B" and out["error"].node_code in ("unavailable", "transport", "timeout")
    assert out["seconds"] < fed._coord.timeout + 10
    for node in ("biobank_A", "biobank_C"):  # nothing was opened: no secure combine completed
        qids = {e.get("query_id") for e in _events(root, node) if e["event"] == "mpc_done"}
        shared = {e.get("query_id") for e in _events(root, node) if e["event"] == "release"}
        assert len(qids) == 1 and len(shared) >= 1  # the first query only: the killed one was never combined
    _gone(victim)  # reaped, not merely dying
    up(root)  # restarts biobank_B (only), on the address clients know
    assert _pid(root, "biobank_B") != victim
    assert _rows(fed.sql(SMALL, combine="mpc").to_arrow()) == want  # the same client, no reconnect
    slow_want = _rows(pooled1126.sql(
        "SELECT s.population, count(*) FROM genotypes g JOIN samples s USING (sample_id) WHERE g.dosage + g.ploidy > 2 GROUP BY 1"
    ).to_arrow_table())
    assert _rows(fed.sql(SLOW, combine="mpc").to_arrow()) == slow_want


def test_a_node_restarted_on_another_port_is_found_again(local_fed, pooled1126):
    """A local node that crashed and restarted while its old port was taken serves on a new one:
    the connected client reads where it is now and goes on, without reconnecting."""
    import socket

    root, lf = local_fed
    fed = lf.fed
    want = _rows(pooled1126.sql("SELECT population, count(*) FROM samples GROUP BY 1").to_arrow_table())
    assert _rows(fed.sql(SMALL, combine="mpc").to_arrow()) == want
    old = int((root / "biobank_B" / "node.port").read_text())
    victim = _pid(root, "biobank_B")
    os.kill(victim, signal.SIGKILL)
    _gone(victim)
    with socket.socket() as squatter:  # the old port is taken: the node restarts elsewhere
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old connections' TIME_WAIT
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        up(root)
        new = int((root / "biobank_B" / "node.port").read_text())
        assert new != old
        assert _rows(fed.sql(SMALL, combine="mpc").to_arrow()) == want  # the same client
        assert _rows(fed.sql(SMALL, combine="plain").to_arrow()) == want


def test_stalled_node_times_out_then_serves_again(local_fed, pooled1126):
    root, lf = local_fed
    pid = _pid(root, "biobank_C")
    want = _rows(pooled1126.sql("SELECT population, count(*) FROM samples GROUP BY 1").to_arrow_table())
    assert _rows(lf.fed.sql(SMALL, combine="mpc").to_arrow()) == want  # warm: every node has answered under MPC
    fed = genofed.connect(root, timeout=3)
    try:
        fed.catalog()
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(NodeError, match=r"node 'biobank_C' timeout"):
            fed.sql(SMALL, combine="mpc")
        assert time.monotonic() - t0 < 3 + 10
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _rows(fed.sql(SMALL, combine="mpc").to_arrow()) == want
    fed.close()


def _active_parties(node_pid: int) -> list[psutil.Process]:
    """The node's MPC party processes that are inside a protocol (connected to other parties)."""
    out = []
    for c in psutil.Process(node_pid).children(recursive=True):
        try:
            if "_mpc_party" in " ".join(c.cmdline()) and any(x.status == psutil.CONN_ESTABLISHED for x in c.net_connections()):
                out.append(c)
        except psutil.Error:
            continue
    return out


def test_mpc_party_dies_mid_protocol(local_fed, pooled1126):
    root, lf = local_fed
    fed = lf.fed
    # the minimum count and rule 5's minimum minor-allele count, federation-wide (5 copies of each allele)
    want = _rows(pooled1126.sql("SELECT variant_id, sum(dosage) FROM genotypes GROUP BY 1 HAVING count(DISTINCT sample_id) >= 5 "
                                "AND coalesce(sum(dosage), 0) >= 5 AND sum(ploidy) - coalesce(sum(dosage), 0) >= 5")
                 .to_arrow_table())
    got = fed.sql(PER_VARIANT, combine="mpc").to_arrow()  # warm: parties started, kernels compiled
    assert _rows(got) == [(v, int(a)) for v, a in want]
    node_pid = _pid(root, "biobank_B")
    t, out = _in_thread(fed.sql, PER_VARIANT, combine="mpc")
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and t.is_alive():
        parties = _active_parties(node_pid)
        if parties:
            killed = parties[0]
            killed.kill()
        time.sleep(0.01)
    assert killed is not None, "biobank_B's party never entered the protocol"
    t.join(90)
    err = out.get("error")
    assert isinstance(err, GenofedError) and not out.get("value"), out
    assert "biobank_B" in str(err), err  # the node whose party died is named
    assert out["seconds"] < 30  # the other parties notice the dead one: no waiting for the timeout
    assert psutil.pid_exists(node_pid)  # the node itself lives on
    assert _rows(fed.sql(PER_VARIANT, combine="mpc").to_arrow()) == [(v, int(a)) for v, a in want]


# -- disk full during ingest ----------------------------------------------------------------------

def _vcf_head(src: Path, dst: Path, records: int) -> Path:
    with gzip.open(src, "rt") as f, open(dst, "w") as out:
        n = 0
        for line in f:
            if not line.startswith("#"):
                n += 1
                if n > records:
                    break
            out.write(line)
    return dst


def _digest_tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


_INGEST_LIMITED = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
from genofed.connectors.ingest import ingest
from genofed.engine.errors import IngestError
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    ingest(sys.argv[1], sys.argv[2], workers=1)
except IngestError as e:
    print("INGEST-ERROR:", e)
    sys.exit(3)
"""


def test_disk_full_during_ingest_keeps_the_previous_store(data_1126, tmp_path):
    """The file-size limit makes the kernel refuse writes mid-store (EFBIG), as a full disk
    would (ENOSPC): the error says what happened and what to do, the previous store is byte-for-
    byte the current one, and no half-written version is left behind."""
    from genofed.connectors.ingest import ingest
    from genofed.genomics.store import NodeStore

    small = _vcf_head(data_1126["vcf"], tmp_path / "small.vcf", 2000)
    big = _vcf_head(data_1126["vcf"], tmp_path / "big.vcf", 20000)
    store = tmp_path / "store"
    ingest(store, small, workers=1)
    before = _digest_tree(store)
    s = NodeStore(store)
    n_before = s.manifest.n_variants
    s.close()
    proc = subprocess.run([sys.executable, "-c", _INGEST_LIMITED, str(store), str(big), str(600_000)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "INGEST-ERROR: writing the store" in proc.stdout and "File too large" in proc.stdout
    assert "the previous store is unchanged" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert _digest_tree(store) == before  # nothing added, nothing removed, nothing changed
    assert not list(store.glob(".tmp-*")) and not list(store.glob(".current-*"))
    s = NodeStore(store)
    assert s.manifest.n_variants == n_before
    s.close()
    # the store can still be replaced once there is room
    report = ingest(store, big, workers=1)
    assert report.n_records == 20000


def test_ingest_killed_leaves_no_orphan_versions(data_1126, tmp_path):
    """kill -9 during ingest leaves a half-written version; the next ingest removes it."""
    from genofed.connectors.ingest import ingest

    big = _vcf_head(data_1126["vcf"], tmp_path / "big.vcf", 20000)
    store = tmp_path / "store"
    ingest(store, _vcf_head(data_1126["vcf"], tmp_path / "small.vcf", 500), workers=1)
    code = ("import sys\nfrom genofed.connectors.ingest import ingest\n"
            "ingest(sys.argv[1], sys.argv[2], workers=1, chunk_records=256, on_chunk=lambda n: n > 2000 and __import__('time').sleep(60))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(big)])
    deadline = time.monotonic() + 120
    while not list(store.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert list(store.glob(".tmp-*")), "the killed ingest left nothing to clean up"
    ingest(store, big, workers=1)
    assert not list(store.glob(".tmp-*"))


# -- kill -9 during budgeted queries --------------------------------------------------------------

def _dp_root(src: Path, dst: Path, budget: float) -> Path:
    root = clone_federation(src, dst, min_count=5, combine="plain", gates=False)
    return set_node_section(root, "dp", {"budget_epsilon": budget, "max_epsilon": 1.0})


def test_kill_9_during_budgeted_queries_keeps_ledger_and_audit_consistent(fed_dir_1126, tmp_path):
    """Three times: budgeted queries run in a loop while biobank_B is killed with SIGKILL at a
    random moment, then restarted. After each crash the ledgers pass their integrity check, every
    answer the researcher received was charged at every node (a crash may cost budget, never
    release for free), no budget is overspent, and every audit log verifies."""
    budget = 400.0
    root = _dp_root(fed_dir_1126, tmp_path / "dp", budget)
    rng = random.Random(9)
    received: list[str] = []
    lf = LocalFederation(root)
    try:
        fed = lf.fed
        for crash in range(3):
            stop = threading.Event()
            failures: list[BaseException] = []

            def loop(k=crash, stop=stop, failures=failures):
                i = 0
                while not stop.is_set():
                    i += 1  # each query counts other people (outcome ranges 6.6..13.4): charged, not served from the cache
                    q = f"SELECT s.population, count(*) AS n FROM samples s WHERE s.outcome > {7 + (k * 200 + i) * 0.005:.3f} GROUP BY 1"
                    try:
                        res = fed.sql(q, epsilon=0.5)
                        nodes = res.provenance.details["dp"]["nodes"]
                        received.extend((node, res.provenance.query_id) for node, d in nodes.items() if not d.get("cached"))
                    except GenofedError as e:
                        failures.append(e)
                        return

            t = threading.Thread(target=loop, daemon=True)
            t.start()
            time.sleep(rng.uniform(1.0, 4.0))
            victim = _pid(root, "biobank_B")
            os.kill(victim, signal.SIGKILL)
            t.join(90)
            stop.set()
            assert failures and isinstance(failures[0], NodeError) and failures[0].node == "biobank_B", failures
            _gone(victim)
            up(root)
        fed.sql("SELECT count(*) AS n FROM samples", epsilon=0.5)  # serves again after the last restart
    finally:
        lf.close()
    assert len(received) >= 3
    for n in FederationConfig.load(root).nodes:
        with Ledger(root / n.name / "state" / "ledger.sqlite") as led:
            led.check_integrity()
            entries = led.entries("researcher")
            spent = led.spent("researcher")[0]
            assert spent == pytest.approx(sum(e["epsilon"] for e in entries)) and spent <= budget
            charged = {e["query_id"] for e in entries}
            mine = {q for node, q in received if node == n.name}
            assert mine and mine <= charged, f"{n.name}: answers released without a charge"
        events = _events(root, n.name)  # verifies the chain (torn tails recovered)
        released = {e.get("query_id") for e in events if e["event"] == "release"}
        assert mine <= released


def test_audit_log_recovers_a_torn_tail(tmp_path):
    log = tmp_path / "audit.log"
    a = AuditLog(log)
    for i in range(3):
        a.append("release", query_id=f"q{i}")
    with open(log, "ab") as f:  # what a crash inside write() leaves
        f.write(b'{"seq": 4, "time": "2026-11-23T')
    assert not verify(log).ok and "incomplete" in verify(log).problem
    a.append("release", query_id="q4")
    v = verify(log)
    assert v.ok and v.lines == 5
    recs = list(records(log))
    assert [r["event"] for r in recs][-2:] == ["torn_tail_recovered", "release"]
    torn = b'{"seq": 4, "time": "2026-11-23T'
    assert recs[-2]["sha256"] == hashlib.sha256(torn).hexdigest() and recs[-2]["bytes"] == len(torn)
    assert (tmp_path / "audit.log.torn").read_bytes() == torn + b"\n"
