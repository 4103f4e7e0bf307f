"""A node's per-researcher privacy-budget ledger and noisy-release cache, in one SQLite file.

Accounting is basic sequential composition: a researcher's spent (ε, δ) is the plain sum of the
(ε, δ) of every release charged to them, and a charge is refused (:class:`BudgetExceeded`) when
the sum would go above the budget the node policy gives (``spent + charge <= budget`` is allowed,
exactly at the boundary). Tighter composition (advanced, zCDP) would let a researcher ask more,
never less; the plain sum is always a valid upper bound.

Amounts are stored as exact integers (ε in units of 1e-12, δ in units of 1e-18, each charge
rounded *up* from the shortest decimal form of the float, each budget rounded *down*), so sums
are exact: the boundary is exact, concurrent charges cannot drift, and the integrity check
compares sums for equality.

Durability and concurrency:

* WAL journal, ``synchronous=FULL`` (every commit is fsync'd before ``charge`` returns), and every
  check-and-charge runs inside ``BEGIN IMMEDIATE``: the write lock is taken before the spent
  total is read, so two threads or processes can never both pass the check on the same budget.
* **A charge is committed before the noisy answer is computed or released.** A crash after the
  commit loses that budget (the researcher paid for an answer they never got); a crash before the
  commit leaves no trace and nothing was released. The ledger can over-count, never under-count.
* The release cache lives in the same file so :meth:`Ledger.charge_or_cached` can, in one
  transaction, either return the noisy table already released for an identical query (no new
  charge: repeating a query cannot average the noise away) or charge for a new one. The caller
  then computes the noise and stores it with :meth:`ReleaseCache.put` (or :meth:`Ledger.put`).
  A crash between the charge and the ``put`` means the next identical query is charged again and
  gets fresh noise: conservative (both answers were paid for), never a free second draw.
* Two identical queries racing past an empty cache are charged once: while a charge for the same
  (researcher, key) committed less than ``PENDING_WAIT_S`` ago has no stored release yet, the
  later one waits (outside the write lock) for that release and is answered from the cache. If
  none appears in time (the first one failed after its charge, or its process died), it is
  charged for a draw of its own, as after a crash. ``put`` keeps the first table stored and
  returns it, so every repeat gets the same answer.

Nothing protected is stored: researcher names, query ids, fragment digests, amounts, and the noisy
(already releasable) tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from genofed.engine.errors import DisclosureError
from genofed.engine.privatefs import private_sqlite

EPS_UNIT = Decimal("1e-12")
DELTA_UNIT = Decimal("1e-18")
MAX_EPSILON = 1e6  # a budget above this is a misconfiguration (and would overflow the units)
BUSY_TIMEOUT_MS = 60_000  # how long a charge waits for another writer before giving up
WRITE_BUSY_MS = 2
PENDING_WAIT_S = 30.0  # how long an identical query waits for a racing one's release before paying its own

# Test-only fault hook: when set to a file path, a charge pauses after writing its row and before
# COMMIT (write lock held, row uncommitted), touching that path so a test can SIGKILL it there.
FAULT_PAUSE_ENV = "GENOFED_TEST_LEDGER_PAUSE"

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    researcher TEXT NOT NULL,
    query_id TEXT NOT NULL,
    fragment_sha256 TEXT NOT NULL,
    eps_units INTEGER NOT NULL CHECK (eps_units > 0),
    delta_units INTEGER NOT NULL CHECK (delta_units >= 0),
    release_key TEXT,
    charged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_researcher ON charges (researcher, id);
CREATE TABLE IF NOT EXISTS spent (
    researcher TEXT PRIMARY KEY,
    eps_units INTEGER NOT NULL,
    delta_units INTEGER NOT NULL,
    n_charges INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    researcher TEXT NOT NULL,
    key TEXT NOT NULL,
    ipc BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (researcher, key)
);
"""


class BudgetExceeded(DisclosureError):
    """The researcher's privacy budget cannot cover this release.

    The message states the researcher's own remaining budget (their metadata, not protected data).
    """

    def __init__(self, researcher: str, epsilon: float, delta: float,
                 remaining_epsilon: float, remaining_delta: float):
        super().__init__(
            f"privacy budget exceeded for researcher {researcher!r}: this release needs "
            f"epsilon={epsilon:g}, delta={delta:g} but only epsilon={remaining_epsilon:g}, "
            f"delta={remaining_delta:g} remain; ask the data steward for more budget, or repeat an "
            f"earlier identical query (served from the release cache at no cost)",
            rule="dp_budget")
        self.researcher = researcher
        self.epsilon = epsilon
        self.delta = delta
        self.remaining_epsilon = remaining_epsilon
        self.remaining_delta = remaining_delta


class LedgerIntegrityError(RuntimeError):
    """The ledger file is damaged or its totals disagree with its entries."""


@dataclass(frozen=True)
class Charge:
    """One committed charge, with the researcher's totals right after it."""

    id: int
    researcher: str
    query_id: str
    fragment_sha256: str
    epsilon: float
    delta: float
    charged_at: float
    spent_epsilon: float
    spent_delta: float
    budget_epsilon: float
    budget_delta: float
    remaining_epsilon: float
    remaining_delta: float
    release_key: str | None = None


@dataclass(frozen=True)
class ChargeOrCached:
    """What :meth:`Ledger.charge_or_cached` decided: exactly one of the two is set."""

    charge: Charge | None = None
    cached: pa.Table | None = None

    @property
    def hit(self) -> bool:
        return self.cached is not None


def _units(value: float, unit: Decimal, rounding: str) -> int:
    # The shortest decimal form of the float ("0.1", not 0.1000000000000000055...), so that ten
    # charges of 0.1 spend exactly a budget of 1.0.
    return int((Decimal(repr(float(value))) / unit).to_integral_value(rounding=rounding))


def _eps(units: int) -> float:
    return float(Decimal(units) * EPS_UNIT)


def _delta(units: int) -> float:
    return float(Decimal(units) * DELTA_UNIT)


def _check_amounts(epsilon: float, delta: float, budget_epsilon: float, budget_delta: float) -> None:
    for name, v in (("epsilon", epsilon), ("budget_epsilon", budget_epsilon)):
        if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= MAX_EPSILON):
            raise ValueError(f"{name} must be finite in [0, {MAX_EPSILON:g}], not {v!r}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, not {epsilon!r}")
    for name, v in (("delta", delta), ("budget_delta", budget_delta)):
        if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"{name} must be in [0, 1), not {v!r}")


def table_to_ipc(table: pa.Table) -> bytes:
    """Arrow IPC stream bytes of ``table`` (schema metadata included)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def ipc_to_table(data: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(data)).read_all()


def release_key(fragment_sql: str, combine: str, mechanism: Any, **extra: Any) -> str:
    """sha256 hex digest identifying a release: the fragment SQL, the combine mode, the mechanism
    parameters (a :class:`genofed.privacy.dp.Mechanism` or a dict), and any ``extra`` the node
    wants to bind (sensitivities, a data version so new data is not served stale answers)."""
    mech = mechanism.describe() if hasattr(mechanism, "describe") else dict(mechanism)
    payload = {"fragment_sql": fragment_sql, "combine": combine, "mechanism": mech,
               "extra": extra}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Store:
    """One SQLite connection to the ledger file (WAL, synchronous=FULL), shared by threads."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = private_sqlite(path)  # budgets and cached releases: the owner's only (with -wal, -shm)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerIntegrityError(f"could not put the ledger {self.path} in WAL mode ({mode})")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        # Short from here on: writers wait in _begin_immediate's retry loop, not in SQLite's.
        self._conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_MS}")
        # Create the schema only when missing, so opening a ledger never waits for a writer.
        with self.read() as conn:
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"charges", "spent", "releases"} <= have:
            with self.transaction() as conn:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception), holding the write lock."""
        with self._lock:
            self._begin_immediate()
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _begin_immediate(self) -> None:
        # SQLite's own busy handler backs off to 100 ms sleeps, which starves writers under
        # contention between processes; retry here with short randomized sleeps instead (the
        # connection's busy timeout stays short), up to BUSY_TIMEOUT_MS in all.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.0005
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0, pause))
            pause = min(pause * 2, 0.01)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot (``BEGIN DEFERRED`` read transaction)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ReleaseCache:
    """Noisy tables already released, per (researcher, key), as Arrow IPC bytes.

    An identical repeated query (same :func:`release_key`) is answered with the same noisy table,
    so repetition cannot average the noise away, and this survives restarts. Entries are never
    shared between researchers. Can share the ledger's file (``Ledger(path).cache``) or use its own.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, _store: _Store | None = None):
        if _store is None:
            if path is None:
                raise ValueError("ReleaseCache needs a path")
            _store = _Store(path)
        self._store = _store

    @staticmethod
    def _get(conn: sqlite3.Connection, researcher: str, key: str) -> pa.Table | None:
        row = conn.execute("SELECT ipc, sha256 FROM releases WHERE researcher = ? AND key = ?",
                           (researcher, key)).fetchone()
        if row is None:
            return None
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != row[1]:
            raise LedgerIntegrityError(f"cached release {key[:12]}… for {researcher!r} is corrupt")
        return ipc_to_table(data)

    def get(self, researcher: str, key: str) -> pa.Table | None:
        """The table stored for (researcher, key), or None."""
        with self._store.read() as conn:
            return self._get(conn, researcher, key)

    def get_bytes(self, researcher: str, key: str) -> bytes | None:
        """The stored IPC bytes for (researcher, key), or None."""
        with self._store.read() as conn:
            row = conn.execute("SELECT ipc FROM releases WHERE researcher = ? AND key = ?",
                               (researcher, key)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, researcher: str, key: str, table: pa.Table) -> pa.Table:
        """Store ``table`` for (researcher, key) unless one is stored already (first wins).

        Returns the table now stored: release that one, so every repeat sees the same answer.
        """
        data = table_to_ipc(table)
        with self._store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO releases (researcher, key, ipc, sha256, stored_at) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (researcher, key, data, hashlib.sha256(data).hexdigest(), time.time()))
            stored = self._get(conn, researcher, key)
        assert stored is not None
        return stored

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ReleaseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Ledger:
    """Per-researcher (ε, δ) spending, persistent and safe across threads and processes.

    The budget is given on every call by the caller (the node policy), so a policy change takes
    effect at once. See the module docstring for the crash semantics.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._store = _Store(path)
        self.path = self._store.path
        self.cache = ReleaseCache(_store=self._store)
        self._stored = threading.Condition()  # notified by put (other processes' puts are polled)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- charging ---------------------------------------------------------------------------

    def _charge(self, conn: sqlite3.Connection, researcher: str, query_id: str,
                fragment_sha256: str, epsilon: float, delta: float, budget_epsilon: float,
                budget_delta: float, key: str | None) -> Charge:
        e = _units(epsilon, EPS_UNIT, ROUND_CEILING)
        d = _units(delta, DELTA_UNIT, ROUND_CEILING)
        be = _units(budget_epsilon, EPS_UNIT, ROUND_FLOOR)
        bd = _units(budget_delta, DELTA_UNIT, ROUND_FLOOR)
        row = conn.execute("SELECT eps_units, delta_units, n_charges FROM spent WHERE researcher = ?",
                           (researcher,)).fetchone()
        se, sd, n = row if row is not None else (0, 0, 0)
        if se + e > be or sd + d > bd:
            raise BudgetExceeded(researcher, epsilon, delta, _eps(max(be - se, 0)),
                                 _delta(max(bd - sd, 0)))
        now = time.time()
        cur = conn.execute(
            "INSERT INTO charges (researcher, query_id, fragment_sha256, eps_units, delta_units, "
            "release_key, charged_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (researcher, query_id, fragment_sha256, e, d, key, now))
        conn.execute("INSERT INTO spent (researcher, eps_units, delta_units, n_charges) "
                     "VALUES (?, ?, ?, ?) ON CONFLICT (researcher) DO UPDATE SET "
                     "eps_units = excluded.eps_units, delta_units = excluded.delta_units, "
                     "n_charges = excluded.n_charges", (researcher, se + e, sd + d, n + 1))
        _fault_pause()
        charge_id = cur.lastrowid
        assert charge_id is not None
        return Charge(id=charge_id, researcher=researcher, query_id=query_id,
                      fragment_sha256=fragment_sha256, epsilon=_eps(e), delta=_delta(d),
                      charged_at=now, spent_epsilon=_eps(se + e), spent_delta=_delta(sd + d),
                      budget_epsilon=_eps(be), budget_delta=_delta(bd),
                      remaining_epsilon=_eps(be - se - e), remaining_delta=_delta(bd - sd - d),
                      release_key=key)

    def charge(self, researcher: str, query_id: str, fragment_sha256: str, epsilon: float,
               delta: float, budget_epsilon: float, budget_delta: float) -> Charge:
        """Charge (ε, δ) to ``researcher`` if their budget covers it; committed (fsync'd) on return.

        Raises :class:`BudgetExceeded` (a ``DisclosureError``, rule ``dp_budget``) and records
        nothing when ``spent + (ε, δ)`` would exceed ``(budget_epsilon, budget_delta)``. Call this
        *before* computing the noisy answer.
        """
        _check_amounts(epsilon, delta, budget_epsilon, budget_delta)
        with self._store.transaction() as conn:
            return self._charge(conn, researcher, query_id, fragment_sha256, epsilon, delta,
                                budget_epsilon, budget_delta, None)

    def charge_or_cached(self, researcher: str, query_id: str, fragment_sha256: str, key: str,
                         epsilon: float, delta: float, budget_epsilon: float,
                         budget_delta: float) -> ChargeOrCached:
        """In one transaction: the cached release for (researcher, key) if there is one (no
        charge), otherwise a committed charge (or :class:`BudgetExceeded`). While an identical
        release charged moments ago is still being noised, waits for it instead of charging
        again (see the module docstring).

        After a charge, compute the noisy table and :meth:`put` it under the same key.
        """
        _check_amounts(epsilon, delta, budget_epsilon, budget_delta)
        deadline = time.monotonic() + PENDING_WAIT_S
        while True:
            with self._store.transaction() as conn:
                cached = ReleaseCache._get(conn, researcher, key)
                if cached is not None:
                    return ChargeOrCached(cached=cached)
                pending = time.monotonic() < deadline and conn.execute(
                    "SELECT 1 FROM charges WHERE researcher = ? AND release_key = ? AND charged_at > ? LIMIT 1",
                    (researcher, key, time.time() - PENDING_WAIT_S)).fetchone() is not None
                if not pending:
                    return ChargeOrCached(charge=self._charge(
                        conn, researcher, query_id, fragment_sha256, epsilon, delta, budget_epsilon,
                        budget_delta, key))
            with self._stored:  # an identical release is being noised: wait for it to be stored
                self._stored.wait(timeout=0.05)

    def put(self, researcher: str, key: str, table: pa.Table) -> pa.Table:
        """Store the noisy table released for (researcher, key); see :meth:`ReleaseCache.put`."""
        stored = self.cache.put(researcher, key, table)
        with self._stored:
            self._stored.notify_all()
        return stored

    # -- reading ----------------------------------------------------------------------------

    def spent(self, researcher: str) -> tuple[float, float]:
        """(ε, δ) charged to ``researcher`` so far (0, 0 for someone never charged)."""
        with self._store.read() as conn:
            row = conn.execute("SELECT eps_units, delta_units FROM spent WHERE researcher = ?",
                               (researcher,)).fetchone()
        return (0.0, 0.0) if row is None else (_eps(row[0]), _delta(row[1]))

    def entries(self, researcher: str | None = None) -> list[dict[str, Any]]:
        """Every committed charge (of one researcher, or all), oldest first."""
        sql = ("SELECT id, researcher, query_id, fragment_sha256, eps_units, delta_units, "
               "release_key, charged_at FROM charges")
        args: tuple[Any, ...] = ()
        if researcher is not None:
            sql += " WHERE researcher = ?"
            args = (researcher,)
        with self._store.read() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [{"id": r[0], "researcher": r[1], "query_id": r[2], "fragment_sha256": r[3],
                 "epsilon": _eps(r[4]), "delta": _delta(r[5]), "release_key": r[6],
                 "charged_at": r[7]} for r in rows]

    def researchers(self) -> list[str]:
        with self._store.read() as conn:
            return [r[0] for r in conn.execute("SELECT researcher FROM spent ORDER BY researcher")]

    def check_integrity(self) -> None:
        """``PRAGMA integrity_check``, then every researcher's total equals the exact sum of their
        entries (and the entry count), and every cached table matches its digest. Raises
        :class:`LedgerIntegrityError` naming the first problem."""
        with self._store.read() as conn:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                raise LedgerIntegrityError(f"ledger {self.path} failed integrity_check: {result[:5]}")
            sums = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
                "SELECT researcher, SUM(eps_units), SUM(delta_units), COUNT(*) FROM charges "
                "GROUP BY researcher")}
            totals = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
                "SELECT researcher, eps_units, delta_units, n_charges FROM spent")}
            if sums != totals:
                bad = sorted(set(sums) ^ set(totals)) or sorted(
                    r for r in sums if sums[r] != totals.get(r))
                raise LedgerIntegrityError(
                    f"ledger {self.path}: spent totals disagree with the charges for {bad[:5]}")
            for researcher, key, data, digest in conn.execute(
                    "SELECT researcher, key, ipc, sha256 FROM releases"):
                if hashlib.sha256(bytes(data)).hexdigest() != digest:
                    raise LedgerIntegrityError(
                        f"ledger {self.path}: cached release {key[:12]}… for {researcher!r} is corrupt")


def _fault_pause() -> None:
    marker = os.environ.get(FAULT_PAUSE_ENV)
    if not marker:
        return
    Path(marker).write_text(str(os.getpid()))
    while True:  # held inside the open transaction until the test kills this process
        time.sleep(60)
