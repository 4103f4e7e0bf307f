"""Differencing and tracker defence: the node remembers who was behind every release.

Per researcher, the node keeps the sample set behind each released group (cell), and behind the
union of a release's cells, as a bitmap over its store's samples (one bit per sample, zlib in
SQLite: a few hundred bytes per set for thousands of samples) with the set's *definition* (the
canonical conditions that select it, :mod:`genofed.engine.samplesets`).

A new release's sets are compared with every remembered set R of the same researcher. With
``a = |S \\ R|`` and ``b = |R \\ S|`` and k the node's minimum count, the release is refused when

* ``0 < a + b < k``: the two sets differ by a few people (with and without one person, near
  duplicate predicates, ``A ∧ B`` from ``COUNT(A) − COUNT(A ∧ ¬B)``, totals minus margins: the
  union of a grouped release's cells misses its suppressed cells);
* ``S`` is empty and its conditions refine R's (they include all of R's conditions and more): a
  count of 0 would say that nobody in the earlier group has the extra value (refinement is
  recognised on the canonical conditions, so it is a syntactic test; differential privacy is the
  robust answer to rewritten predicates). R without conditions (everyone at the node) is exempt:
  "nobody here has X" is what a zero count is for;
* ``S = R`` selected by conditions that include R's and more (or the reverse): the release would
  show that everyone in the earlier group also meets the extra conditions (a count of N). Equal
  sets by unrelated definitions (``pop = 'CEU'`` and ``super_pop = 'EUR'``) pass; a near
  duplicate (``age >= 40`` vs ``age > 39.99``) selecting the same people reveals nothing new,
  and under differential privacy it gets the same cached noisy answer (the cache is keyed by who
  is counted, :meth:`NodeServer._release_identity`). When one side has no conditions at all
  (everyone at the node), "everyone has X" is a cohort-wide fact and passes.

Identical definitions selecting identical sets (the same question, or other aggregates of the
same people) always pass. The decision uses only sample sets and the history, never the values
being released (Kenthapadi et al. 2005: value-dependent denials leak); a refusal reveals at most
that two groups differ by fewer than k people, as a suppressed cell does. Check and record happen
under one lock and one SQLite transaction, so concurrent queries of one researcher cannot slip
past each other.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genofed.engine.errors import DisclosureError

RULE = "differencing"


def state_db(path: Path | None) -> sqlite3.Connection:
    """A node privacy-state database: SQLite in WAL mode with full fsync (``None``: in memory),
    shared by the server's threads (callers hold their own lock). The file (and the ``-wal`` and
    ``-shm`` files SQLite makes with its mode) is its owner's only, in a 0700 directory."""
    if path is not None:
        from genofed.engine.privatefs import private_sqlite

        private_sqlite(path)
    con = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None, timeout=30)
    if path is not None:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


def write_many(con: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    """``executemany`` in one immediate transaction (all rows or none)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        con.executemany(sql, rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@dataclass
class Candidate:
    """One set a release would disclose the size of (or a sum over)."""

    members: np.ndarray  # store sample rows (sidx)
    definition: list[str]
    released: bool = True  # False: only combined securely (the node's count is not disclosed)


@dataclass
class _History:
    bits: np.ndarray  # [h, n_bytes] uint8
    sizes: np.ndarray  # [h]
    defs: list[frozenset[str]]  # definitions (canonical conditions)


def _definition(definition: list[str]) -> frozenset[str]:
    return frozenset(definition)


class SampleTracker:
    """The sets released to each researcher at one node, persisted in SQLite (``path``; None keeps
    them in memory for the server's lifetime)."""

    def __init__(self, path: Path | None, n_samples: int):
        self.path = path
        self.n_samples = n_samples
        self.n_bytes = (n_samples + 7) // 8
        self._lock = threading.Lock()
        self._con = state_db(path)
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS released_sets (id INTEGER PRIMARY KEY, researcher TEXT NOT NULL, "
            "definition TEXT NOT NULL, size INTEGER NOT NULL, n_samples INTEGER NOT NULL, bits BLOB NOT NULL, created REAL NOT NULL)")
        self._con.execute("CREATE INDEX IF NOT EXISTS released_sets_researcher ON released_sets (researcher)")
        self._mem: dict[str, _History] = {}

    def _bits(self, members: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n_bytes * 8, bool)
        mask[members] = True
        return np.packbits(mask)

    def _history(self, researcher: str) -> _History:
        if researcher not in self._mem:
            rows = self._con.execute("SELECT definition, size, bits FROM released_sets WHERE researcher = ? ORDER BY id", (researcher,)).fetchall()
            bits = np.zeros((len(rows), self.n_bytes), np.uint8)
            for i, (_, _, blob) in enumerate(rows):
                b = np.frombuffer(zlib.decompress(blob), np.uint8)[: self.n_bytes]
                bits[i, : len(b)] = b
            self._mem[researcher] = _History(bits, np.array([r[1] for r in rows], np.int64), [frozenset(json.loads(r[0])) for r in rows])
        return self._mem[researcher]

    def check_and_record(self, researcher: str, candidates: list[Candidate], min_count: int) -> None:
        """Refuse (:class:`DisclosureError`, rule ``differencing``) if any candidate set is too close
        to a set released earlier to this researcher; otherwise remember the new sets."""
        with self._lock:
            hist = self._history(researcher)
            new: list[tuple[frozenset[str], int, np.ndarray]] = []
            seen = {(d, hist.bits[i].tobytes()) for i, d in enumerate(hist.defs)}
            for c in candidates:
                bits = self._bits(c.members)
                size = int(len(c.members))
                d = _definition(c.definition)
                self._check(hist, bits, size, d, c.released, min_count)
                if size and (d, bits.tobytes()) not in seen:
                    seen.add((d, bits.tobytes()))
                    new.append((d, size, bits))
            if not new:
                return
            now = time.time()
            write_many(self._con, "INSERT INTO released_sets (researcher, definition, size, n_samples, bits, created) VALUES (?, ?, ?, ?, ?, ?)",
                       [(researcher, json.dumps(sorted(d)), size, self.n_samples, zlib.compress(bits.tobytes()), now) for d, size, bits in new])
            self._mem[researcher] = _History(
                np.vstack([hist.bits, np.stack([b for _, _, b in new])]),
                np.concatenate([hist.sizes, np.array([s for _, s, _ in new], np.int64)]),
                hist.defs + [d for d, _, _ in new])

    @staticmethod
    def _check(hist: _History, bits: np.ndarray, size: int, definition: frozenset[str], released: bool, k: int) -> None:
        if not len(hist.defs):
            return
        a = np.bitwise_count(bits[None, :] & ~hist.bits).sum(axis=1, dtype=np.int64)  # in S, not in R
        b = np.bitwise_count(hist.bits & ~bits[None, :]).sum(axis=1, dtype=np.int64)  # in R, not in S
        same_def = np.array([d == definition for d in hist.defs])
        equal = (a == 0) & (b == 0)
        close = (a + b > 0) & (a + b < k)
        # R's conditions and more; R = everyone at the node (no conditions) is not a group whose
        # members a zero singles out ("nobody here has X" is what a zero count is for)
        refines = np.array([bool(d) and d < definition for d in hist.defs])
        nobody = (size == 0) & released & refines & (hist.sizes > 0)
        # the same people by a narrower definition: everyone in the earlier group has the extra
        # value (R = everyone at the node, no conditions, is exempt: a cohort-wide fact)
        narrower = np.array([(bool(d) and d < definition) or (bool(definition) and definition < d) for d in hist.defs])
        renamed = equal & ~same_def & narrower & (size > 0)
        if (close | nobody | renamed).any():
            raise DisclosureError(
                "refused: this query's samples differ from those of an earlier answer to you by fewer than "
                f"{k} people (or select the same people by different conditions), so comparing the two answers "
                "would reveal individuals; ask about larger groups, or repeat the earlier query's exact conditions",
                rule=RULE)

    def count(self, researcher: str | None = None) -> int:
        """Sets remembered (for one researcher, or all)."""
        if researcher is None:
            return int(self._con.execute("SELECT COUNT(*) FROM released_sets").fetchone()[0])
        return int(self._con.execute("SELECT COUNT(*) FROM released_sets WHERE researcher = ?", (researcher,)).fetchone()[0])

    def close(self) -> None:
        self._con.close()
