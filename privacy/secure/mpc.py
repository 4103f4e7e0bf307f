"""MPC combine (MPyC): the adapter the coordinator and the node server use.

Each query runs one MPyC party process per node plus one for the coordinator (party 0), started
fresh with a clean ``sys.argv`` (see :mod:`genofed.privacy.secure._mpc_party`, the only module
that imports MPyC). Ports are negotiated per query: each node party binds a free port and the
node reports it to the coordinator, which hands every party the full address list.

Message flow for one query:

1. coordinator -> every node: ``mpc_prepare`` (fragment SQL). The node validates and runs the
   fragment, starts its party and answers with the party's address. No partial leaves the node.
2. coordinator -> every node: ``mpc_run`` (addresses, party index, per-query MAC secret). The
   node gives its party the partial table *through a private file* and waits for the protocol.
3. the parties run the protocol; the coordinator's party writes the released groups.

What each participant learns is documented in ``docs/secure-combine.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from genofed.engine.errors import CombineError, NodeError
from genofed.engine.privatefs import make_private, private_dir
from genofed.engine.protocol import KEY_USER_SQL, MAX_USER_SQL_CHARS, write_ipc_file

PARTY_MODULE = "genofed.privacy.secure._mpc_party"
COORDINATOR_NAME = "coordinator"


def require_mpyc(where: str) -> None:
    """A clear error when MPyC is not installed (parties would die on import)."""
    import importlib.util

    if importlib.util.find_spec("mpyc") is None:
        raise CombineError(f"combine='mpc' needs MPyC {where}: pip install 'genofed[mpc]' (or use combine='he')")


def plan_fingerprint(fragment_sql: str) -> str:
    """What parties compare to be sure they run the same query."""
    return hashlib.sha256(fragment_sql.encode()).hexdigest()[:16]


class PartyProcess:
    """One spawned MPC party: start it, learn its port, configure it, wait for its verdict.

    A party process imports its libraries first and then waits for :meth:`begin`, so a warm one
    can be kept ready (see :func:`take_party`)."""

    def __init__(self) -> None:
        self.pid = -1
        # the party's stderr: an unlinked temporary file, so nothing is left behind however the
        # party ends; read with pread (the child shares the file offset)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", PARTY_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def begin(self, pid: int, bind: str = "127.0.0.1") -> None:
        """Give the party its index: node parties (pid != 0) then listen on a free port of
        ``bind``."""
        self.pid = pid
        self._send({"pid": pid, "bind": bind})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                continue
        self._events.put({"event": "exit", "code": self.proc.wait()})

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def port(self, timeout: float) -> int:
        ev = self.next_event(timeout)
        if ev is None or ev.get("event") != "port":
            raise CombineError(f"MPC party did not start: {self.log_tail() or ev}")
        return int(ev["port"])

    def start(self, cfg: dict[str, Any]) -> None:
        self._send(cfg)

    def log_tail(self, n: int = 400) -> str:
        try:
            fd = self._log.fileno()
            size = os.fstat(fd).st_size
            return os.pread(fd, n, max(0, size - n)).decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self.kill()
        self._log.close()


_idle: list[PartyProcess] = []
_idle_lock = threading.Lock()
MAX_IDLE = 2


def take_party(pid: int, bind: str = "127.0.0.1") -> PartyProcess:
    """A party process for one query: an idle one that already served a query or was started
    ahead (imports take most of a party's start-up), else a new one."""
    p = None
    with _idle_lock:
        while _idle and p is None:
            cand = _idle.pop()
            if cand.proc.poll() is None:
                p = cand
            else:
                cand.close()
        spare = not _idle
    if p is None:
        p = PartyProcess()
    if spare:
        threading.Thread(target=prewarm, daemon=True).start()
    p.begin(pid, bind)
    return p


def release_party(p: PartyProcess) -> None:
    """Return a party that finished its query cleanly, for the next query."""
    with _idle_lock:
        if p.proc.poll() is None and len(_idle) < MAX_IDLE:
            _idle.append(p)
            return
    p.close()


def close_idle() -> None:
    """Stop the idle parties (the next query starts fresh ones, with the current environment)."""
    with _idle_lock:
        gone = list(_idle)
        _idle.clear()
    for p in gone:
        p.close()


def prewarm() -> None:
    """Start a spare party in the background if MPyC is installed (no-op otherwise)."""
    import importlib.util

    if importlib.util.find_spec("mpyc") is None:
        return
    with _idle_lock:
        if _idle:
            return
    fresh = PartyProcess()
    with _idle_lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(fresh)
            return
    fresh.close()


# -- node side -------------------------------------------------------------------------------------

@dataclass
class _Session:
    party: PartyProcess
    workdir: Path
    input: Path
    keys: list[str]
    partials: list[str]
    plan: str
    counts: list[str]
    finite: list[str]
    created: float = field(default_factory=time.monotonic)


class NodeSessions:
    """A node's MPC sessions: one per query, expiring after ``ttl`` seconds."""

    def __init__(self, ttl: float = 600.0, host: str = "127.0.0.1"):
        self.ttl = ttl
        self.host = host
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def prepare(self, query_id: str, table: pa.Table, keys: list[str], partials: list[str], fragment_sql: str, counts: list[str] | None = None,
                finite: list[str] | None = None) -> dict[str, Any]:
        """Hold a partial table for ``query_id`` and start its party; returns the party's address."""
        require_mpyc("at this node")
        self._expire()
        workdir = private_dir(tempfile.mkdtemp(prefix="genofed-mpc-"))
        path = workdir / "partials.arrow"
        write_ipc_file(path, table)
        make_private(path)  # the node's partials: only this user (its party) reads them
        party = take_party(-1, self.host)  # a node party; its index is assigned by the coordinator in run()
        try:
            port = party.port(timeout=30)
        except CombineError:
            party.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with self._lock:
            old = self._sessions.pop(query_id, None)
            self._sessions[query_id] = _Session(party, workdir, path, keys, partials, plan_fingerprint(fragment_sql), list(counts or []),
                                               list(finite or []))
        if old:
            self._close(old)
        return {"host": self.host, "port": port}

    def run(self, query_id: str, body: dict[str, Any], node_name: str, min_count: int) -> int:
        """Run the protocol for a prepared query; returns the bytes this node's party sent.
        Raises :class:`NodeError` naming the party at fault if it fails."""
        with self._lock:
            s = self._sessions.pop(query_id, None)
        if s is None:
            raise CombineError(f"no prepared MPC session for query {query_id[:40]!r} (expired or never prepared)")
        try:
            names, parties, pid, secret = body["names"], body["parties"], body["pid"], body["secret"]
            if not (isinstance(names, list) and isinstance(parties, list) and 2 <= len(names) == len(parties)
                    and all(isinstance(x, str) for x in names) and all(_is_address(x) for x in parties)):
                raise ValueError("names and parties must be lists of the same length: party names, and host:port addresses")
            if type(pid) is not int or not 1 <= pid < len(names):
                raise ValueError(f"pid must be a node party's index, 1 to {len(names) - 1}")
            if names[pid] != node_name:
                raise CombineError(f"the coordinator assigned party {pid} to {names[pid][:40]!r}, not to this node")
            timeout = body.get("timeout", 60.0)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
                raise ValueError("timeout must be a number of seconds, above 0 and at most 86400")
            if not isinstance(secret, str) or len(secret) < 32 or len(secret) % 2 or not all(c in "0123456789abcdefABCDEF" for c in secret):
                raise ValueError("secret must be a hex string of at least 16 bytes")
            cfg = {
                "pid": pid,
                "parties": parties,
                "names": names,
                "secret": secret,
                "timeout": timeout,
                "plan": s.plan,  # this node's own view of the query, not the coordinator's
                "keys": s.keys,
                "partials": s.partials,
                "counts": s.counts,
                "finite": s.finite,
                "min_count": min_count,  # this node's own policy, not the coordinator's
                "input": str(s.input),
            }
        except CombineError:
            self._close(s)  # the session was taken: its party and files go too
            raise
        except (KeyError, TypeError, ValueError) as e:
            self._close(s)
            raise CombineError(f"malformed mpc_run request: {str(e)[:200]}") from None
        verdict: dict[str, Any] = {"event": "error", "code": "error", "reason": "interrupted"}
        try:
            s.party.start(cfg)
            verdict = _await_verdict(s.party, timeout + 5.0)
        finally:
            if verdict.get("event") == "done":
                release_party(s.party)
                shutil.rmtree(s.workdir, ignore_errors=True)
            else:
                self._close(s)
        if verdict.get("event") != "done":
            j = verdict.get("party")
            culprit = names[j] if isinstance(j, int) and 0 <= j < len(names) else node_name
            raise NodeError(culprit, str(verdict.get("code", "mpc")), str(verdict.get("reason", "MPC failed")))
        return int(verdict.get("bytes_sent", 0))

    def abort(self, query_id: str) -> None:
        with self._lock:
            s = self._sessions.pop(query_id, None)
        if s:
            self._close(s)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [q for q, s in self._sessions.items() if now - s.created > self.ttl]
            gone = [self._sessions.pop(q) for q in old]
        for s in gone:
            self._close(s)

    def _close(self, s: _Session) -> None:
        s.party.close()
        shutil.rmtree(s.workdir, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            gone = list(self._sessions.values())
            self._sessions.clear()
        for s in gone:
            self._close(s)


def _is_address(p: Any) -> bool:
    """``host:port`` as a party address."""
    if not isinstance(p, str) or len(p) > 300:
        return False
    host, _, port = p.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536


def _await_verdict(party: PartyProcess, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        ev = party.next_event(deadline - time.monotonic())
        if ev is None:
            return {"event": "error", "code": "timeout", "party": None, "reason": "the MPC party did not finish in time"}
        if ev.get("event") == "error" and ev.get("code") == "error":
            # this node's party failed on its own: what it printed stays in this node's log
            logging.getLogger("genofed.node").warning("MPC party failed: %s", party.log_tail(4000))
        if ev.get("event") in ("done", "error"):
            return ev
        if ev.get("event") == "exit":
            # the party's output stays in this node's log for the steward; the wire gets the fact only
            logging.getLogger("genofed.node").warning("MPC party exited with code %s: %s", ev.get("code"), party.log_tail())
            return {"event": "error", "code": "crashed", "party": None,
                    "reason": f"the MPC party exited with code {ev.get('code')} (its output is in the node's log)"}


# -- coordinator side ------------------------------------------------------------------------------

def run_mpc(coordinator: Any, targets: list[Any], fragment_sql: str, query_id: str, min_count: int, timeout: float, wire: dict[str, int] | None = None,
            dp: dict[str, Any] | None = None, notes: dict[str, Any] | None = None, user_sql: str | None = None) -> pa.Table:
    """Run one query under MPC; returns the combined table (keys, released partials,
    ``_n`` NULL, ``_suppressed``). Raises :class:`NodeError` naming the node at fault.
    ``user_sql``: the researcher's query as written, for their release history at each node."""
    require_mpyc("at the coordinator")
    workdir = private_dir(tempfile.mkdtemp(prefix="genofed-mpc-coord-"))
    me = take_party(0)
    ok = False
    names = [COORDINATOR_NAME, *(t.name for t in targets)]
    prepared: dict[str, Any] = {}
    # mpc_run blocks until every node's party has its configuration: the calls of one query must
    # all be in flight at once, so they get threads of their own, never a shared pool where other
    # queries' blocked calls could hold the workers while this query's last call waits in line
    runners = cf.ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="genofed-mpc-run")
    try:
        body: dict[str, Any] = {"sql": fragment_sql, "query_id": query_id, **({"dp": dp} if dp else {}),
                                **({KEY_USER_SQL: user_sql[:MAX_USER_SQL_CHARS]} if isinstance(user_sql, str) else {})}
        prepared = coordinator._fan_out(lambda t: t.action("mpc_prepare", body, timeout), targets)
        me.port(timeout=30)
        if notes is not None:  # each node's DP and re-identification notes for the provenance
            notes.update({t.name: prepared[t.name]["notes"] for t in targets if prepared[t.name].get("notes")})
        parties = ["127.0.0.1:0"] + [f"{prepared[t.name]['host']}:{int(prepared[t.name]['port'])}" for t in targets]
        secret = secrets.token_hex(32)
        out = workdir / "combined.arrow"
        me.start({
            "pid": 0, "parties": parties, "names": names, "secret": secret, "timeout": timeout,
            "plan": plan_fingerprint(fragment_sql), "keys": [], "partials": [], "min_count": min_count,
            "output": str(out),
        })
        futures = {}
        for i, t in enumerate(targets, start=1):
            run_body = {"query_id": query_id, "pid": i, "parties": parties, "names": names, "secret": secret, "timeout": timeout}
            futures[runners.submit(t.action, "mpc_run", run_body, timeout + 15.0)] = t
        verdict = _await_coordinator(me, futures, timeout + 10.0, names)
        if verdict.get("event") != "done":
            j = verdict.get("party")
            who = verdict.get("node") or (names[j] if isinstance(j, int) and 0 < j < len(names) else None)
            if who:
                raise NodeError(who, str(verdict.get("code", "mpc")), f"secure combine aborted, nothing was opened: {verdict.get('reason')}")
            raise CombineError(f"secure combine failed at the coordinator's party: {verdict.get('reason')}")
        for fut, t in futures.items():  # each node reports the bytes its party sent
            try:
                sent = int(fut.result(timeout=max(1.0, timeout / 4)).get("bytes_sent", 0))
                if wire is not None:
                    wire[t.name] = sent
            except Exception:  # noqa: BLE001  (the release already happened under the protocol)
                pass
        result = pa.ipc.open_file(str(out)).read_all()
        ok = True
        return result
    except BaseException:
        for t in targets:
            if t.name in prepared:
                coordinator._pool.submit(_quiet_abort, t, query_id)
        raise
    finally:
        runners.shutdown(wait=False)
        if ok:
            release_party(me)
        else:
            me.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _quiet_abort(t: Any, query_id: str) -> None:
    try:
        t.action("mpc_abort", {"query_id": query_id}, 5.0)
    except Exception:  # noqa: BLE001  (best effort: sessions also expire)
        pass


_PRIORITY = {"tampered": 0, "mismatch": 1, "malformed": 1, "crashed": 2, "error": 3, "unavailable": 4, "disconnected": 5, "timeout": 6}


def _root_causes(verdicts: list[dict[str, Any]], names: list[str] | None) -> list[dict[str, Any]]:
    """Drop the verdicts that are consequences: "X disconnected" when X itself reported a fault
    of someone else (X's party gave up on a stalled peer and exited; the others then saw X go)."""
    def blamed(v: dict[str, Any]) -> Any:
        j = v.get("party")
        return v.get("node") or (names[j] if names and isinstance(j, int) and 0 <= j < len(names) else None)

    reported_other = {v.get("from") for v in verdicts if v.get("from") and blamed(v) not in (None, v.get("from"))}
    kept = [v for v in verdicts if not (v.get("code") == "disconnected" and blamed(v) in reported_other)]
    return kept or verdicts


def _await_coordinator(me: PartyProcess, futures: dict[Any, Any], timeout: float, names: list[str] | None = None) -> dict[str, Any]:
    """Wait for the coordinator's party. On failure, gather every diagnosis that arrives within a
    moment (the coordinator's party and the nodes') and return the most specific: a party that
    sent a tampered message is named over one that merely disconnected after detecting it."""
    deadline = time.monotonic() + timeout
    verdicts: list[dict[str, Any]] = []
    own_verdict = False  # the coordinator's party reported an error (its exit then adds nothing)
    settle: float | None = None
    seen: set[Any] = set()
    while True:
        ev = me.next_event(0.05)
        if ev is not None:
            if ev.get("event") == "done":
                return ev
            if ev.get("event") == "error":
                verdicts.append(ev)
                own_verdict = True
            elif ev.get("event") == "exit" and not own_verdict:
                verdicts.append({"event": "error", "code": "crashed", "party": 0, "reason": f"the coordinator's party exited ({ev.get('code')}): {me.log_tail()}"})
        for fut, t in futures.items():
            if fut in seen or not fut.done() or fut.exception() is None:
                continue
            seen.add(fut)
            e = fut.exception()
            node = getattr(e, "node", t.name)
            if node == COORDINATOR_NAME:
                continue  # a node blaming the coordinator: the coordinator's own party knows better
            verdicts.append({"event": "error", "code": getattr(e, "node_code", "error"), "node": node, "from": t.name,
                             "reason": getattr(e, "reason", str(e))})
        now = time.monotonic()
        if verdicts and settle is None:
            settle = now + 1.5
        if settle is not None and (now >= settle or any(v.get("code") == "tampered" for v in verdicts)):
            # most specific first; on a tie, the coordinator's own party (it hears from everyone)
            return min(_root_causes(verdicts, names), key=lambda v: (_PRIORITY.get(str(v.get("code")), 3), "node" in v))
        if now > deadline:
            return {"event": "error", "code": "timeout", "party": None, "reason": "the protocol did not finish in time"}
