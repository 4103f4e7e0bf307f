"""A node's audit log: every request, appended to a hash-chained JSON-lines file.

Each line is one JSON object with ``seq``, ``time`` (UTC ISO 8601), ``prev`` (the previous
line's hash), the event fields (``event``, ``researcher``, ``query_id``, ``fragment_sha256``,
``decision``, ``rule``, ``groups``, ``combine``, ...), and ``hash``: the SHA-256 of ``prev``
and the canonical JSON of every other field. Editing, deleting, inserting or reordering lines
breaks the chain at that line; :func:`verify` names the first broken line.

What is logged never includes released values, cell counts or sample IDs: the fragment appears
as its SHA-256 (the steward can match it against a query), decisions carry the rule name only.
Appends are serialised by a lock and an exclusive file lock (several node processes may share a
log), written with one ``write`` call and fsync'd, so a crash loses at most the line being
written; :func:`verify` reports a torn last line as such. The next append after such a crash
moves the torn bytes to ``<log>.torn`` and records a ``torn_tail_recovered`` event (their length
and SHA-256) before its own line: the chain continues from the last complete record, and nothing
the crash left behind is silently dropped.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genofed.engine.privatefs import DIR_MODE, FILE_MODE, open_private

GENESIS = "0" * 64
_FIELDS_EXCLUDED = ("hash",)


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def line_hash(record: dict[str, Any]) -> str:
    """The hash a record must carry: SHA-256 over its ``prev`` and canonical content."""
    body = {k: v for k, v in record.items() if k not in _FIELDS_EXCLUDED}
    return hashlib.sha256(str(record.get("prev", "")).encode() + b"\n" + _canonical(body)).hexdigest()


def fragment_digest(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained audit log at ``path`` (mode 0600; a new directory for it 0700)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _tail(self, f) -> tuple[int, str]:
        """(last seq, last hash) of the file open at ``f``."""
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0, GENESIS
        step = min(size, 65536)
        while True:
            f.seek(size - step)
            chunk = f.read(step)
            lines = chunk.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or step == size:
                last = json.loads(lines[-1])
                return int(last["seq"]), str(last["hash"])
            step = min(size, step * 4)

    def _recover_torn_tail(self, fd: int) -> dict[str, Any] | None:
        """After a crash mid-append the file ends inside a line: move that partial line to
        ``<log>.torn`` and truncate the log to its last complete record. Returns what was moved
        (for the recovery event), or None when the log ends cleanly."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        start = size
        while start > 0:  # back to the byte after the last newline
            step = min(start, 65536)
            chunk = os.pread(fd, step, start - step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                start = start - step + cut + 1
                break
            start -= step
        torn = os.pread(fd, size - start, start)
        side = self.path.with_name(self.path.name + ".torn")
        with open_private(side, "ab") as out:
            out.write(torn + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.ftruncate(fd, start)
        os.fsync(fd)
        return {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest(), "moved_to": side.name}

    @staticmethod
    def _write(fd: int, seq: int, prev: str, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Write record ``seq + 1`` chained to ``prev`` in one ``write``, then fsync."""
        rec = {"seq": seq + 1, "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
               "prev": prev, "event": event, **{k: v for k, v in fields.items() if v is not None}}
        rec["hash"] = line_hash(rec)
        os.write(fd, _canonical(rec) + b"\n")
        os.fsync(fd)
        return rec

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the written record."""
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
            try:
                if os.fstat(fd).st_mode & 0o077:  # a log an earlier version left readable by others
                    os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "r+b", closefd=False) as f:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        recovered = self._recover_torn_tail(fd)
                        seq, prev = self._tail(f)
                        if recovered is not None:
                            note = self._write(fd, seq, prev, "torn_tail_recovered", recovered)
                            seq, prev = note["seq"], note["hash"]
                        rec = self._write(fd, seq, prev, event, fields)
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return rec


@dataclass
class Verdict:
    ok: bool
    lines: int
    problem: str = ""
    line: int = 0  # 1-based line of the first problem


def verify(path: str | os.PathLike[str]) -> Verdict:
    """Check the whole chain; the first broken line and why."""
    p = Path(path)
    if not p.exists():
        return Verdict(False, 0, f"no audit log at {p}")
    prev, n = GENESIS, 0
    raw = p.read_bytes()
    rows = raw.split(b"\n")
    if rows and rows[-1] == b"":
        rows = rows[:-1]
    for i, line in enumerate(rows, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            torn = i == len(rows) and not raw.endswith(b"\n")
            return Verdict(False, n, "the last line is incomplete (a crash while writing?)" if torn else "not a JSON record", i)
        if not isinstance(rec, dict) or "hash" not in rec:
            return Verdict(False, n, "not an audit record", i)
        if rec.get("prev") != prev:
            return Verdict(False, n, "the chain is broken here: a line before it was removed, inserted or reordered", i)
        if rec.get("seq") != n + 1:
            return Verdict(False, n, f"sequence number {rec.get('seq')} where {n + 1} was expected", i)
        if line_hash(rec) != rec["hash"]:
            return Verdict(False, n, "the line's content does not match its hash: it was edited", i)
        prev, n = rec["hash"], n + 1
    return Verdict(True, n)


def records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a log, in order (unverified: run :func:`verify` first)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
