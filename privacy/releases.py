"""The releases a node made to each researcher, and the ones it refused, for that researcher to read.

A refusal can then name the earlier release it conflicts with (its query id, time and the SQL as
the researcher wrote it, DESIGN.md "Disclosure model" rule 4), and a researcher can list their own
releases (``Federation.history()``, ``genofed history``).

A row holds what the researcher sent and what the node decided: their SQL text as written
(clipped to :data:`MAX_SQL_CHARS` characters), the sha256 of the node fragment, the query id, the
combine mode, the kind of request, the decision and, for a refusal, its rule. Never a released
value, a group key, a count or a sample set: those stay in the tracker's bitmaps and the ledger.
The researcher's text is shown back to that researcher only; the file is created readable by its
owner only (mode 0600, its WAL files inherit the mode), next to the node's other privacy state.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genofed.engine.protocol import MAX_USER_SQL_CHARS

from .tracker import state_db, write_many

FILE_NAME = "releases.sqlite"
MAX_SQL_CHARS = MAX_USER_SQL_CHARS  # 20,000
MAX_QUERY_ID_CHARS = 200
DECISIONS = ("released", "shared", "encrypted", "refused")

_SELECT = "SELECT id, researcher, query_id, time, user_sql, fragment_sha256, combine, kind, decision, rule FROM releases "


@dataclass(frozen=True)
class Release:
    """One logged decision of a node about a researcher's request.

    ``decision`` is ``released`` (plain partials), ``shared`` (secret-shared into MPC),
    ``encrypted`` (HE ciphertexts) or ``refused`` (then ``rule`` says which rule refused it).
    """

    id: int
    researcher: str
    query_id: str | None
    time: float  # unix seconds
    user_sql: str | None  # the researcher's SQL as written (None: the coordinator did not send it)
    fragment_sha256: str | None
    combine: str | None
    kind: str  # "sql", "analysis", "training", ...
    decision: str
    rule: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_text(value: Any, limit: int = MAX_SQL_CHARS) -> str | None:
    """``value`` as it is stored: a string (anything else is None) of at most ``limit``
    characters, with what UTF-8 cannot encode (lone surrogates from JSON) replaced."""
    if not isinstance(value, str):
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _private_file(path: Path) -> None:
    """Create ``path`` (and chmod its SQLite companions) readable and writable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            os.chmod(p, 0o600)


class ReleaseLog:
    """The release log of one node, in SQLite (``path``; None keeps it in memory).

    Parameters
    ----------
    path
        The database file, by convention ``<state dir>/releases.sqlite``.

    Examples
    --------
    >>> log = ReleaseLog(None)
    >>> rid = log.record("alice", "q1", user_sql="SELECT sex, count(*) FROM samples GROUP BY sex",
    ...                  fragment_sha256="ab" * 32, combine="plain", decision="released")
    >>> log.get(rid).user_sql
    'SELECT sex, count(*) FROM samples GROUP BY sex'
    >>> [r.decision for r in log.list("alice")]
    ['released']
    """

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            _private_file(path)
        self._lock = threading.Lock()
        self._con = state_db(path)
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS releases (id INTEGER PRIMARY KEY AUTOINCREMENT, researcher TEXT NOT NULL, "
            "query_id TEXT, time REAL NOT NULL, user_sql TEXT, fragment_sha256 TEXT, combine TEXT, kind TEXT NOT NULL, "
            "decision TEXT NOT NULL, rule TEXT)")
        self._con.execute("CREATE INDEX IF NOT EXISTS releases_researcher ON releases (researcher, time)")
        self._con.execute("CREATE INDEX IF NOT EXISTS releases_query ON releases (researcher, query_id)")
        if path is not None:
            _private_file(path)  # the WAL files SQLite just made

    def record(self, researcher: str, query_id: str | None, *, user_sql: Any = None, fragment_sha256: str | None = None,
               combine: str | None = None, kind: str = "sql", decision: str = "released", rule: str | None = None,
               at: float | None = None) -> int:
        """Log one decision; returns its release id.

        Parameters
        ----------
        researcher
            Who asked (the authenticated name at the node).
        query_id
            The coordinator's query id (clipped to 200 characters).
        user_sql
            The researcher's SQL as written; anything but a string is stored as None, a string is
            clipped to :data:`MAX_SQL_CHARS` characters.
        fragment_sha256
            The sha256 of the node fragment (its hex digest).
        combine
            ``plain``, ``mpc`` or ``he``.
        kind
            ``sql``, ``analysis``, ``training``, ...
        decision
            One of :data:`DECISIONS`.
        rule
            The rule that refused it (refusals).
        at
            Unix time of the decision (default: now).
        """
        if decision not in DECISIONS:
            raise ValueError(f"unknown release decision {decision!r}; one of {', '.join(DECISIONS)}")
        row = (researcher, clip_text(query_id, MAX_QUERY_ID_CHARS), time.time() if at is None else float(at), clip_text(user_sql),
               clip_text(fragment_sha256, 64), clip_text(combine, 20), clip_text(kind, 40) or "sql", decision, clip_text(rule, 100))
        with self._lock:
            write_many(self._con, "INSERT INTO releases (researcher, query_id, time, user_sql, fragment_sha256, combine, kind, "
                       "decision, rule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [row])
            return int(self._con.execute("SELECT last_insert_rowid()").fetchone()[0])

    def get(self, release_id: int) -> Release | None:
        """The release with this id, whoever it was made to (callers check the researcher)."""
        rows = self._rows(_SELECT + "WHERE id = ?", (int(release_id),))
        return rows[0] if rows else None

    def by_query(self, researcher: str, query_id: str) -> builtins.list[Release]:
        """This researcher's releases of one query (one per fragment or round at this node), oldest first."""
        return self._rows(_SELECT + "WHERE researcher = ? AND query_id = ? ORDER BY id", (researcher, query_id))

    def list(self, researcher: str, limit: int | None = 1000, since: float | None = None) -> builtins.list[Release]:
        """This researcher's newest ``limit`` releases (None: all) made at or after unix time
        ``since``, oldest first."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a whole number, 0 or more, got {limit!r}")
        lower = float("-inf") if since is None else float(since)
        rows = self._rows(_SELECT + "WHERE researcher = ? AND time >= ? ORDER BY id DESC LIMIT ?",
                          (researcher, lower, -1 if limit is None else limit))
        return rows[::-1]

    def count(self, researcher: str | None = None) -> int:
        """Decisions logged (for one researcher, or all)."""
        with self._lock:
            if researcher is None:
                return int(self._con.execute("SELECT COUNT(*) FROM releases").fetchone()[0])
            return int(self._con.execute("SELECT COUNT(*) FROM releases WHERE researcher = ?", (researcher,)).fetchone()[0])

    def _rows(self, sql: str, args: tuple) -> builtins.list[Release]:
        with self._lock:
            return [Release(*r) for r in self._con.execute(sql, args).fetchall()]

    def close(self) -> None:
        self._con.close()
