"""MPC combine (MPyC): the adapter the coordinator and the node server use.

The parties are the nodes, and only the nodes: the coordinator runs in the researcher's process
and is as untrusted as the researcher, so it holds no share, takes no part in the threshold test
and cannot open anything. Each query runs one MPyC party process per node, started fresh with a
clean ``sys.argv`` (see :mod:`genofed.privacy.secure._mpc_party`, the only module that imports
MPyC).

Message flow for one query:

1. coordinator -> every node: ``mpc_prepare`` (fragment SQL). The node validates and runs the
   fragment through its pipeline, blinds its group keys (keyed tokens only the nodes can compute),
   starts its party and answers with the party's address. No partial leaves the node.
2. coordinator -> every node: ``mpc_run`` (party names, addresses, this node's index). Each node
   checks the session against the membership *it* pins (``[[federation.members]]``: every member,
   or the steward's quorum; no one else), derives the links' authentication key from the nodes'
   shared secret and the session description, and gives its party the partial table through a
   private file. Party links are mutual TLS, each peer's certificate checked against its pinned
   fingerprint, and every message carries an HMAC over (sender, receiver, position, payload).
3. the parties align groups on tokens, secret-share their lanes, test every group's counts on
   shares, open the passing groups' sums, and the first party assembles the released groups
   (keys revealed only for them) and returns them in its ``mpc_run`` answer.

What each participant learns is documented in ``docs/secure-combine.md``.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import queue
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

from genofed.engine.combine import Combiner, Round
from genofed.engine.errors import CombineError, NodeError
from genofed.engine.privatefs import make_private, private_dir
from genofed.engine.protocol import KEY_USER_SQL, MAX_USER_SQL_CHARS, write_ipc_file

PARTY_MODULE = "genofed.privacy.secure._mpc_party"
MIN_PARTIES = 3  # an honest majority of passively corrupt parties needs at least three
TOKEN_COLUMN = "_tok"
MAX_REMEMBERED = 100_000  # query ids a node remembers as used (replays are refused)


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
        """Start a query: the party listens on a free port of ``bind`` (its index comes with the
        session configuration)."""
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
    """A node's MPC sessions: one per query, expiring after ``ttl`` seconds. A query id serves one
    session: preparing or running a used one again (a replayed message) is refused."""

    def __init__(self, ttl: float = 600.0, host: str = "127.0.0.1"):
        self.ttl = ttl
        self.host = host
        self._sessions: dict[str, _Session] = {}
        self._running: dict[str, _Session] = {}  # sessions whose protocol is under way (abort stops them)
        self._used: dict[str, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._lock = threading.Lock()

    def _claim(self, query_id: str) -> None:
        with self._lock:
            if query_id in self._used:
                raise CombineError(f"query id {query_id[:40]!r} was already used for a secure computation at this node: "
                                   "a replayed or repeated session message is refused (every query gets a fresh id)")
            self._used[query_id] = None
            while len(self._used) > MAX_REMEMBERED:
                self._used.pop(next(iter(self._used)))

    def prepare(self, query_id: str, table: pa.Table, keys: list[str], partials: list[str], fragment_sql: str, counts: list[str] | None = None,
                finite: list[str] | None = None, token_secret: str = "") -> dict[str, Any]:
        """Hold a partial table for ``query_id`` and start its party; returns the party's address.
        Group keys are blinded with ``token_secret`` (the nodes' shared secret): the parties align
        on tokens, and a key is revealed only for a released group."""
        require_mpyc("at this node")
        if keys and not token_secret:
            raise CombineError("this node has no [federation] key_secret (the secret the federation's nodes share), so it cannot "
                               "blind its group keys or authenticate MPC links; 'genofed federation init' writes one (docs/stewards.md)")
        self._claim(query_id)
        self._expire()
        plan = plan_fingerprint(fragment_sql)
        if keys:
            from genofed.privacy.rules import blind_keys

            table = table.append_column(TOKEN_COLUMN, blind_keys(table, keys, token_secret, f"mpc\x1f{query_id}\x1f{plan}"))
        workdir = private_dir(tempfile.mkdtemp(prefix="genofed-mpc-"))
        path = workdir / "partials.arrow"
        write_ipc_file(path, table)
        make_private(path)  # the node's partials: only this user (its party) reads them
        party = take_party(-1, self.host)  # its index comes with mpc_run
        try:
            port = party.port(timeout=30)
        except CombineError:
            party.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with self._lock:
            self._sessions[query_id] = _Session(party, workdir, path, keys, partials, plan, list(counts or []), list(finite or []))
        return {"host": self.host, "port": port}

    def run(self, query_id: str, body: dict[str, Any], node: Any) -> dict[str, Any]:
        """Run the protocol for a prepared query at the node configured by ``node`` (its
        :class:`~genofed.connectors.config.NodeConfig`): the session must name exactly the
        members the node pins (or its quorum of them), with this node at its index. Returns
        ``{"bytes_sent": ..}`` and, at the first party, ``{"result": <Arrow IPC file, base64>}``.
        Raises :class:`NodeError` naming the party at fault, :class:`CombineError` for a session
        this node refuses to join."""
        with self._lock:
            s = self._sessions.pop(query_id, None)
        if s is None:
            raise CombineError(f"no prepared MPC session for query {query_id[:40]!r} (expired, never prepared, or already run: "
                               "a replayed mpc_run is refused)")
        try:
            names, parties, pid = body["names"], body["parties"], body["pid"]
            if not (isinstance(names, list) and isinstance(parties, list) and len(names) == len(parties)
                    and all(isinstance(x, str) for x in names) and all(_is_address(x) for x in parties)):
                raise ValueError("names and parties must be lists of the same length: party names, and host:port addresses")
            if type(pid) is not int or not 0 <= pid < len(names):
                raise ValueError(f"pid must be this node's party index, 0 to {len(names) - 1}")
            timeout = body.get("timeout", 60.0)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
                raise ValueError("timeout must be a number of seconds, above 0 and at most 86400")
            check_membership(node, names, pid)
            tls = _party_tls(node, names)
            cfg = {
                "pid": pid,
                "parties": parties,
                "names": names,
                # the links' key: only nodes holding the federation's secret can derive it, and only
                # for this exact session (query, plan, parties, addresses)
                "secret": link_key(node.key_secret, query_id, s.plan, names, parties),
                "tls": tls,
                "timeout": timeout,
                "plan": s.plan,  # this node's own view of the query, not the coordinator's
                "keys": s.keys,
                "partials": s.partials,
                "counts": s.counts,
                "finite": s.finite,
                "min_count": node.min_count,  # this node's own policy, not the coordinator's
                "input": str(s.input),
                "output": str(s.workdir / "released.arrow"),
            }
        except CombineError:
            self._close(s)  # the session was taken: its party and files go too
            raise
        except (KeyError, TypeError, ValueError) as e:
            self._close(s)
            raise CombineError(f"malformed mpc_run request: {str(e)[:200]}") from None
        verdict: dict[str, Any] = {"event": "error", "code": "error", "reason": "interrupted"}
        out: dict[str, Any] = {}
        with self._lock:
            self._running[query_id] = s
        try:
            s.party.start(cfg)
            verdict = _await_verdict(s.party, timeout + 5.0)
            if verdict.get("event") == "done":
                out["bytes_sent"] = int(verdict.get("bytes_sent", 0))
                if pid == 0:  # Arrow IPC file, base64 for the JSON answer
                    out["result"] = base64.b64encode(Path(cfg["output"]).read_bytes()).decode()
        finally:
            with self._lock:
                self._running.pop(query_id, None)
            if verdict.get("event") == "done":
                release_party(s.party)
                shutil.rmtree(s.workdir, ignore_errors=True)
            else:
                self._close(s)
        if verdict.get("event") != "done":
            j = verdict.get("party")
            culprit = names[j] if isinstance(j, int) and 0 <= j < len(names) else node.name
            raise NodeError(culprit, str(verdict.get("code", "mpc")), str(verdict.get("reason", "MPC failed")))
        return out

    def abort(self, query_id: str) -> None:
        """Drop a prepared session, or stop one whose protocol is under way (its party is killed:
        the node's mpc_run answers at once instead of waiting for the party's timeout)."""
        with self._lock:
            s = self._sessions.pop(query_id, None)
            running = self._running.get(query_id)
        if s:
            self._close(s)
        if running is not None:
            running.party.kill()

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


def check_membership(node: Any, names: list[str], pid: int) -> None:
    """Refuse a session whose parties are not the federation this node pins: every name a pinned
    member, no name twice, this node at ``pid``, and every member present (or at least the
    steward's ``[federation] quorum``, never fewer than three)."""
    pinned = [m.name for m in node.members]
    if not pinned:
        raise CombineError("this node pins no federation members ([[federation.members]] in its node.toml), so it computes with "
                           "no one: 'genofed federation init' writes them; for a hand-built node see docs/stewards.md")
    strangers = [n for n in names if n not in pinned]
    if strangers:
        raise CombineError(f"the session names a party this node does not pin as a federation member ({strangers[0][:40]!r}); "
                           "nothing was computed")
    if len(set(names)) != len(names):
        raise CombineError("the session names a member twice; nothing was computed")
    if names[pid] != node.name:
        raise CombineError(f"the session assigns party {pid} to {names[pid][:40]!r}, not to this node; nothing was computed")
    need = node.quorum if node.quorum is not None else len(pinned)
    if len(names) < max(need, MIN_PARTIES):
        missing = sorted(set(pinned) - set(names))
        if len(pinned) < MIN_PARTIES:
            raise CombineError(f"combine='mpc' needs at least {MIN_PARTIES} parties (an honest majority), and this federation pins "
                               f"{len(pinned)} member(s); use combine='he'")
        raise CombineError(f"the session leaves out pinned member(s) {missing[:5]} and this node's policy requires "
                           f"{'every member' if node.quorum is None else f'at least {need} members'}; nothing was computed")


def link_key(secret: str, query_id: str, plan: str, names: list[str], parties: list[str]) -> str:
    """The MPC links' HMAC key for one session, derived from the nodes' shared secret: a party
    that lacks the secret (the coordinator, a stranger) cannot authenticate a message, and a
    message from another session (another query, plan, or party list) fails its check."""
    if not secret:
        raise CombineError("this node has no [federation] key_secret, so it cannot authenticate MPC links; "
                           "'genofed federation init' writes one (docs/stewards.md)")
    import hmac

    ctx = json.dumps(["genofed-mpc-link", query_id, plan, names, parties]).encode()
    return hmac.new(secret.encode(), ctx, hashlib.sha256).hexdigest()


def _party_tls(node: Any, names: list[str]) -> dict[str, Any] | None:
    """The party's TLS settings: this node's certificate and key, the federation CA, and each
    party's pinned fingerprint. None for a federation without TLS (members pinned without
    fingerprints): links are then authenticated (HMAC) but not encrypted."""
    fps = {m.name: m.fingerprint for m in node.members}
    if not any(fps.values()):
        return None
    if not all(fps.get(n) for n in names):
        raise CombineError("some pinned members have no certificate fingerprint: pin every member's (genofed certs fingerprint)")
    ca = node.federation_ca_path()
    cert, key = node.tls.get("cert"), node.tls.get("key")
    if ca is None or not cert or not key:
        raise CombineError("this node pins certificate fingerprints but has no [federation] ca or [tls] cert/key for its MPC links")
    # [tls] paths are already resolved against node.toml's directory when the config loads;
    # absolute, since the party process may run elsewhere
    return {"cert": str(Path(cert).resolve()), "key": str(Path(key).resolve()), "ca": str(Path(ca).resolve()),
            "fingerprints": [fps[n] for n in names]}


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

class MPCCombiner(Combiner):
    """``combine='mpc'``: the nodes compute among themselves (see the module docstring); the
    coordinator relays and receives the released groups."""

    mode = "mpc"

    def run(self, rnd: Round) -> pa.Table:
        return _run(rnd)


def run_mpc(coordinator: Any, targets: list[Any], fragment_sql: str, query_id: str, min_count: int, timeout: float, wire: dict[str, int] | None = None,
            dp: dict[str, Any] | None = None, notes: dict[str, Any] | None = None, user_sql: str | None = None) -> pa.Table:
    """One MPC round driven by ``coordinator`` (its :meth:`~genofed.engine.coordinator.Coordinator.round`)
    over ``targets`` with this ``timeout``; ``min_count`` is unused (each node applies its own)."""
    del min_count
    rnd = coordinator.round(fragment_sql, query_id, targets, dp=dp, notes=notes, user_sql=user_sql)
    rnd.timeout = timeout
    out = _run(rnd)
    if wire is not None:
        wire.update(rnd.wire)
    return out


def _run(rnd: Round) -> pa.Table:
    """Run one query under MPC among the nodes; returns the combined table (released groups with
    keys and partials, withheld groups as rows of NULLs flagged ``_suppressed``, ``_n`` NULL).
    Raises :class:`NodeError` naming the node at fault. The coordinator only relays: it holds no
    share and cannot change what is opened."""
    targets, timeout, query_id, fragment_sql = rnd.targets, rnd.timeout, rnd.query_id, rnd.fragment_sql
    dp, notes, user_sql = rnd.dp, rnd.notes, rnd.user_sql
    if len(targets) < MIN_PARTIES:
        raise CombineError(f"combine='mpc' needs at least {MIN_PARTIES} nodes (an honest majority of parties); this federation has "
                           f"{len(targets)}: use combine='he'")
    names = [t.name for t in targets]
    prepared: dict[str, Any] = {}
    # mpc_run blocks until every node's party has finished: the calls of one query must all be in
    # flight at once, so they get threads of their own, never a shared pool where other queries'
    # blocked calls could hold the workers while this query's last call waits in line
    runners = cf.ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="genofed-mpc-run")
    try:
        body: dict[str, Any] = {"sql": fragment_sql, "query_id": query_id, **({"dp": dp} if dp else {}),
                                **({KEY_USER_SQL: user_sql[:MAX_USER_SQL_CHARS]} if isinstance(user_sql, str) else {})}
        prepared = rnd.fan_out(lambda t: t.action("mpc_prepare", body, timeout), targets)
        if notes is not None:  # each node's DP and re-identification notes for the provenance
            notes.update({t.name: prepared[t.name]["notes"] for t in targets if prepared[t.name].get("notes")})
        parties = [f"{prepared[t.name]['host']}:{int(prepared[t.name]['port'])}" for t in targets]
        futures = {}
        for i, t in enumerate(targets):
            run_body = {"query_id": query_id, "pid": i, "parties": parties, "names": names, "timeout": timeout}
            futures[runners.submit(t.action, "mpc_run", run_body, timeout + 15.0)] = t
        answers = _await_nodes(futures, timeout + 20.0, names)
        rnd.wire.update({t.name: int(answers[t.name].get("bytes_sent", 0) or 0) for t in targets})
        try:
            raw = base64.b64decode(answers[names[0]].get("result") or "", validate=True)
            if not raw:
                raise ValueError("empty")
            return pa.ipc.open_file(pa.BufferReader(raw)).read_all()
        except (pa.ArrowInvalid, OSError, ValueError, TypeError) as e:
            raise NodeError(names[0], "malformed", f"the first party's released groups are not an Arrow file: {e}") from None
    except BaseException:
        for t in targets:
            if t.name in prepared:
                rnd.submit(_quiet_abort, t, query_id)
        raise
    finally:
        runners.shutdown(wait=False)


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


def _await_nodes(futures: dict[Any, Any], timeout: float, names: list[str]) -> dict[str, Any]:
    """Wait for every node's ``mpc_run`` answer. On failure, gather the diagnoses that arrive
    within a moment and raise the most specific: a party that sent a tampered message is named
    over one that merely disconnected after detecting it."""
    deadline = time.monotonic() + timeout
    verdicts: list[dict[str, Any]] = []
    answers: dict[str, Any] = {}
    settle: float | None = None
    seen: set[Any] = set()
    while True:
        for fut, t in futures.items():
            if fut in seen or not fut.done():
                continue
            seen.add(fut)
            e = fut.exception()
            if e is None:
                answers[t.name] = fut.result()
                continue
            if not isinstance(e, NodeError):
                verdicts.append({"code": "error", "node": t.name, "from": t.name, "reason": str(e), "exc": e})
                continue
            verdicts.append({"code": getattr(e, "node_code", "error"), "node": getattr(e, "node", t.name), "from": t.name,
                             "reason": getattr(e, "reason", str(e)), "exc": e})
        if len(answers) == len(futures):
            return answers
        now = time.monotonic()
        if verdicts and settle is None:
            settle = now + 1.5
        if settle is not None and (now >= settle or len(seen) == len(futures) or any(v.get("code") == "tampered" for v in verdicts)):
            v = min(_root_causes(verdicts, names), key=lambda v: _PRIORITY.get(str(v.get("code")), 3))
            e = v["exc"]
            if isinstance(e, NodeError):
                raise NodeError(v["node"], str(v["code"]), f"secure combine aborted, nothing was opened: {v['reason']}") from None
            raise e
        if now > deadline:
            raise CombineError("the MPC protocol did not finish in time; nothing was opened")
        time.sleep(0.02)
