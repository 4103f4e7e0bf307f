"""Rule 4 of the disclosure model: an audit over person sets, per statistic, by linear algebra.

Every released value of a statistic (``count``, ``sum(phenotypes.bmi)``, ``allele_count`` ...)
is, for the researcher, a linear equation: the sum of that statistic over a set of people. The
node remembers, per researcher and statistic, the person set behind every value it released
(a bitmap over its store's samples), and refuses a release when the old and new equations
together determine the sum over a group of 1 to k−1 people: a single person (with and without
them, totals minus margins) or a small group (twelve overlapping sets solved for ten people), by
any linear combination, not only by differences of two answers.

People who are in exactly the same released sets ("atoms") are indistinguishable to the
researcher, so the check runs on atoms: with ``A`` the sets × atoms membership matrix, the
researcher can compute ``yᵀA`` for any ``y``; a release is refused when some combination is
supported on atoms of fewer than k people in all (checked on a basis of the combinations that
vanish outside the small atoms, and for every small atom alone).

Under a secure combine a node's own count is never released alone, so a set released only as
part of a federation-wide sum is not a disclosure by itself; combinations of two or more such
sets are checked as in plain mode (with and without one person at this node isolates them,
whatever the other nodes add, when the other nodes' sets are the same).

Values of different statistics never conflict, so ordinary analysis sequences pass. The
decision depends on the person sets and the history only, never on the values; a refusal names
the earlier releases it conflicts with (by query id), never who. Differentially private
releases are not recorded (their noise is accounted by the ledger).
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genofed.engine.errors import DisclosureError

from .tracker import state_db, write_many

RULE = "linear_audit"
GENOTYPE_VALUES = ("dosage", "phased", "ploidy")
MAX_ROWS = 2000  # per researcher and statistic: distinct person sets the audit keeps (then it refuses)
RULE_CAPACITY = "audit_capacity"


@dataclass
class Row:
    members: np.ndarray  # store sample rows
    direct: bool = True  # False: released only inside a federation-wide secure sum


class AuditConflict(DisclosureError):
    """A linear-audit refusal, with the query ids of the earlier releases it conflicts with."""

    def __init__(self, message: str, conflicts: list[str]):
        super().__init__(message, rule=RULE)
        self.conflicts = conflicts


def statistic_key(text: str) -> str:
    """A statistic's stored name: a hash (the text may quote a predicate the researcher wrote)."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SetAudit:
    """Person sets released per researcher and statistic, persisted in SQLite (``path``; None:
    in memory)."""

    def __init__(self, path: Path | None, n_samples: int):
        self.n_samples = n_samples
        self.n_bytes = (n_samples + 7) // 8
        self._lock = threading.Lock()
        self._con = state_db(path)
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS audit_sets (id INTEGER PRIMARY KEY, researcher TEXT NOT NULL, statistic TEXT NOT NULL, "
            "query_id TEXT NOT NULL, direct INTEGER NOT NULL, size INTEGER NOT NULL, bits BLOB NOT NULL, created REAL NOT NULL)")
        self._con.execute("CREATE INDEX IF NOT EXISTS audit_sets_key ON audit_sets (researcher, statistic)")

    def _bits(self, members: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n_bytes * 8, bool)
        mask[np.asarray(members, np.int64)] = True
        return np.packbits(mask)

    def _history(self, researcher: str, statistic: str) -> tuple[list[np.ndarray], list[bool], list[str]]:
        rows = self._con.execute(
            "SELECT bits, direct, query_id FROM audit_sets WHERE researcher = ? AND statistic = ? ORDER BY id DESC LIMIT ?",
            (researcher, statistic, MAX_ROWS)).fetchall()
        bits = [np.frombuffer(zlib.decompress(b), np.uint8)[: self.n_bytes] for b, _, _ in rows]
        return bits, [bool(d) for _, d, _ in rows], [q for _, _, q in rows]

    def check_and_record(self, researcher: str, query_id: str, statistics: dict[str, list[Row]], k: int) -> None:
        """Refuse (:class:`AuditConflict`) if, for any statistic, this release's sets together with
        the researcher's earlier ones determine a sum over 1..k-1 people; otherwise remember them."""
        if k <= 1:
            return
        with self._lock:
            new_rows: list[tuple] = []
            for stat, rows in statistics.items():
                key = statistic_key(stat)
                old_bits, old_direct, old_q = self._history(researcher, key)
                seen = {b.tobytes() for b in old_bits}
                fresh = []
                for r in rows:
                    if not len(r.members):
                        continue
                    b = self._bits(r.members)
                    if b.tobytes() in seen:
                        continue
                    seen.add(b.tobytes())
                    fresh.append((b, r.direct))
                if not fresh:
                    continue
                if len(old_bits) + len(fresh) > MAX_ROWS:
                    # forgetting the oldest sets would let a researcher flood the audit and then
                    # difference against a forgotten release: refuse instead (fail closed)
                    raise DisclosureError(
                        f"this node's audit already holds {len(old_bits)} distinct person sets of this statistic for you (its "
                        f"limit is {MAX_ROWS}); further exact answers of it could not be checked against all of them. Ask "
                        "with an epsilon, or ask the data steward to review your history", rule=RULE_CAPACITY)
                bits = [b for b, _ in fresh] + old_bits
                direct = [d for _, d in fresh] + old_direct
                queries = [query_id] * len(fresh) + old_q
                _check(np.stack(bits), np.array(direct), queries, query_id, len(fresh), k)
                new_rows += [(researcher, key, query_id, int(d), int(np.bitwise_count(b).sum()), zlib.compress(b.tobytes()), time.time())
                             for b, d in fresh]
            if new_rows:
                write_many(self._con, "INSERT INTO audit_sets (researcher, statistic, query_id, direct, size, bits, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", new_rows)

    def atoms(self, researcher: str, statistics: list[str], people: np.ndarray) -> list[np.ndarray]:
        """The finest cohorts the researcher can compute these statistics for among ``people``
        (store sample rows): the classes of people who are in exactly the same released sets
        (by differences of released sets, an attacker gets a value for each class). The
        membership gate charges each class as a cohort."""
        people = np.unique(np.asarray(people, np.int64))
        if not len(people):
            return []
        with self._lock:
            bits = [b for stat in statistics for b in self._history(researcher, statistic_key(stat))[0]]
        if not bits:
            return [people]
        cols = np.unpackbits(np.stack(bits), axis=1)[:, people].T  # people × sets
        _, atom_of = np.unique(np.packbits(cols, axis=1), axis=0, return_inverse=True)
        atom_of = np.asarray(atom_of).reshape(-1)
        order = np.argsort(atom_of, kind="stable")
        splits = np.flatnonzero(np.diff(atom_of[order])) + 1
        return [people[idx] for idx in np.split(order, splits)]

    def count(self, researcher: str | None = None) -> int:
        if researcher is None:
            return int(self._con.execute("SELECT COUNT(*) FROM audit_sets").fetchone()[0])
        return int(self._con.execute("SELECT COUNT(*) FROM audit_sets WHERE researcher = ?", (researcher,)).fetchone()[0])

    def close(self) -> None:
        self._con.close()


def _null_space(m: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """An orthonormal basis (columns) of {y : m y = 0}."""
    if m.size == 0:
        return np.eye(m.shape[1])
    _, s, vt = np.linalg.svd(m, full_matrices=True)
    rank = int((s > tol * max(m.shape) * (s[0] if len(s) else 1.0)).sum())
    return vt[rank:].T


def _check(bits: np.ndarray, direct: np.ndarray, queries: list[str], query_id: str, n_new: int, k: int) -> None:
    """bits: [rows, n_bytes] of the new rows (first ``n_new``) and the history."""
    cols = np.unpackbits(bits, axis=1).astype(bool)  # rows × samples
    used = cols.any(axis=0)
    if not used.any():
        return
    patterns = cols[:, used].T  # people × rows
    packed = np.packbits(patterns, axis=1)
    _, atom_of, sizes = np.unique(packed, axis=0, return_inverse=True, return_counts=True)
    atom_of = np.asarray(atom_of).reshape(-1)
    n_atoms = len(sizes)
    a = np.zeros((cols.shape[0], n_atoms))
    a[:, atom_of] = patterns.T  # rows × atoms (an atom's column is the pattern of any member)
    small = sizes < k
    if not small.any():
        return
    # combinations y of released sets with yᵀA zero outside the small atoms
    y = _null_space(a[:, ~small].T) if (~small).any() else np.eye(a.shape[0])
    if y.shape[1] == 0:
        return
    v = a[:, small].T @ y  # small atoms × combinations
    keep = np.abs(v).max(axis=0) > 1e-7
    y, v = y[:, keep], v[:, keep]
    if not v.shape[1]:
        return
    small_sizes = sizes[small]
    found: list[np.ndarray] = []
    for j in range(v.shape[1]):  # each basis combination
        support = np.abs(v[:, j]) > 1e-7
        if small_sizes[support].sum() < k:
            found.append(y[:, j])
    if not found:  # every small atom alone
        q, _ = np.linalg.qr(v)
        for i in range(v.shape[0]):
            if abs(1.0 - float(np.sum(q[i] ** 2))) < 1e-7:
                coef, *_ = np.linalg.lstsq(v, np.eye(v.shape[0])[i], rcond=None)
                found.append(y @ coef)
                break
    for comb in found:
        rows = np.flatnonzero(np.abs(comb) > 1e-7)
        if not any(r < n_new for r in rows):
            continue  # known before this release (an older gap): not this release's doing
        if len(rows) == 1 and not direct[rows[0]]:
            continue  # one secure sum alone: this node's part is hidden among the others'
        earlier = sorted({queries[r] for r in rows if r >= n_new and queries[r] != query_id})
        raise AuditConflict(
            f"refused: together with {'your earlier answer(s) ' + ', '.join(earlier) if earlier else 'its own other values'}, "
            f"this answer would determine a total over fewer than {k} people at this node (a linear combination of the "
            "answers singles them out); ask about larger groups, or ask with an epsilon", earlier)


def statistics_of(frag: object) -> list[str]:
    """The statistics a fragment releases, by meaning: each partial aggregate with table aliases
    replaced by table names (``COUNT(*)``, ``COUNT(1)`` and ``COUNT(DISTINCT sample_id)`` are all
    ``count``), marked when it counts genotype rows; an analysis by its name, phenotype and
    covariates."""
    from sqlglot import exp

    from genofed.engine.samplesets import _canonical, _sources

    select = getattr(frag, "select", None)
    if select is None:
        args = getattr(frag, "args", None) or {}
        return [f"analysis:{getattr(frag, 'fn', '?')}:{args.get('phenotype')}:{args.get('covariates')}"]
    names = {a: s.name for a, s in _sources(select).items() if isinstance(s, exp.Table)}
    genotypes = "genotypes" in getattr(frag, "tables", set())
    out = []
    for p in select.expressions:
        if p.alias_or_name not in frag.partials:  # type: ignore[attr-defined]
            continue
        body = p.unalias()
        cols = list(body.find_all(exp.Column))
        if isinstance(body, exp.Count) and (isinstance(body.this, (exp.Star, exp.Distinct, exp.Literal)) or body.this is None):
            text = "count"
        elif genotypes and cols and all(c.name in GENOTYPE_VALUES for c in cols):
            # values of genotypes alone (allele_count(dosage), sum(dosage), sum(dosage * 1),
            # count(CASE WHEN dosage = 1 THEN 1 END), ...): one statistic however spelled, so that
            # slices of a cohort asked with a different spelling each are audited together
            text = "genotype_values"
        else:
            text = _canonical(body, names).lower()
        out.append(f"{text}|genotypes" if genotypes else text)
    return sorted(set(out)) or ["count"]
