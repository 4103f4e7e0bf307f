"""Rule 2 of the disclosure model: influence, not syntax.

A released sum or count is attributed to the people whose data can change it: for ``COUNT(x)``
those with a non-null ``x``, for ``SUM(x)`` those whose own total of ``x`` is non-null and
non-zero. However the query weighs people inside an aggregate (``CASE WHEN age = 101 THEN
income END``, ``income * CAST(zip = '02138' AS INT)``, a self-join repeating one person's row), the
minimum count applies to that set, and a sum must not be dominated by one person (the
``(1, p)`` dominance rule of statistical disclosure control: the largest person's share of the
total of absolute contributions is at most ``p``).

The node's backend computes, per group and partial, the influence count ``_ni<j>``, the largest
person's absolute contribution ``_mi<j>`` and the total of absolute contributions ``_si<j>``
(:meth:`DuckDBBackend.influence`). These never leave the node in plain mode; under MPC and HE the
influence counts travel as secret count lanes and are tested federation-wide with the group's
count (:mod:`genofed.privacy.secure.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genofed.engine.protocol import N_COLUMN

RULE_INFLUENCE = "influence"
RULE_DOMINANCE = "dominance"
DEFAULT_DOMINANCE = 0.9


def influence_columns(partial: str) -> tuple[str, str, str]:
    """The influence-count, max and total column names of partial ``_p<j>``."""
    j = partial[2:]
    return f"_ni{j}", f"_mi{j}", f"_si{j}"


@dataclass
class Verdict:
    """Per group of a partial table: withheld by influence, by dominance."""

    influence: np.ndarray
    dominance: np.ndarray

    @property
    def withheld(self) -> np.ndarray:
        return self.influence | self.dominance


def _col(t: pa.Table, name: str, dtype: type = np.float64) -> np.ndarray:
    return pc.fill_null(t.column(name), 0).to_numpy(zero_copy_only=False).astype(dtype)


def attach(partials: pa.Table, influence: pa.Table, keys: list[str]) -> pa.Table:
    """The partial table with the influence columns of each of its groups appended (aligned on
    the group keys; a global aggregate has one row on each side)."""
    extra = [c for c in influence.column_names if c not in keys]
    if not keys:
        if partials.num_rows != 1 or influence.num_rows > 1:
            raise ValueError("a global aggregate has one row")
        for c in extra:
            col = influence.column(c) if influence.num_rows else pa.nulls(1, influence.schema.field(c).type)
            partials = partials.append_column(c, col)
        return partials
    from genofed.engine.keycodes import key_codes

    codes, _ = key_codes([partials, influence], keys)
    left, right = codes[: partials.num_rows], codes[partials.num_rows:]
    pos = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, np.int64)
    pos[right] = np.arange(len(right))
    idx = pos[left] if len(left) else np.zeros(0, np.int64)
    take = pa.array(np.where(idx < 0, 0, idx), pa.int64())
    valid = pa.array(idx >= 0)
    for c in extra:
        col = influence.column(c).take(take) if influence.num_rows else pa.nulls(partials.num_rows, influence.schema.field(c).type)
        partials = partials.append_column(c, pc.if_else(valid, col, pa.scalar(None, col.type)))
    return partials


def judge(table: pa.Table, partials: list[str], min_count: int, dominance: float, *, local_n: bool = True) -> Verdict:
    """Which groups of a partial table (with influence columns attached) a node must not release
    as they are. ``local_n``: the table's ``_n`` is the release's own group size (plain mode);
    under a secure combine the federation-wide counts decide the influence rule and this judges
    dominance only."""
    g = table.num_rows
    infl = np.zeros(g, bool)
    dom = np.zeros(g, bool)
    n = _col(table, N_COLUMN, np.int64) if N_COLUMN in table.column_names else np.zeros(g, np.int64)
    for p in partials:
        ni, mi, si = influence_columns(p)
        if ni not in table.column_names:
            continue
        cnt = _col(table, ni, np.int64)
        if local_n:
            # 0 counts as small: releasing a zero where one person would be withheld is the
            # person's value (COUNT(CASE WHEN <who> AND hiv = 1 THEN 1 END))
            infl |= (cnt < min_count) & (cnt < n)
            for b in branch_columns(table, p):  # the people taking each branch of a CASE/IF/comparison
                nb = _col(table, b, np.int64)
                infl |= (nb < min_count) & (n > 0)
        if mi in table.column_names and si in table.column_names:
            top, total = _col(table, mi), _col(table, si)
            # dominance where the group is not already protected by its count: a group of fewer
            # than min_count people is withheld (plain) or tested federation-wide (secure)
            dom |= (cnt >= max(2, min_count)) & (total > 0) & (top > dominance * total)
    return Verdict(infl, dom)


def branch_columns(table: pa.Table, partial: str) -> list[str]:
    """The branch-count columns ``_ni<j>_<m>`` of partial ``_p<j>`` present in ``table``."""
    prefix = f"_ni{partial[2:]}_"
    return [c for c in table.column_names if c.startswith(prefix)]


def strip(table: pa.Table, partials: list[str], keep_counts: bool = False) -> pa.Table:
    """The table without influence columns (``keep_counts``: keep the ``_ni`` counts, which a
    secure combine sums as count lanes)."""
    drop = []
    for p in partials:
        ni, mi, si = influence_columns(p)
        drop += [c for c in ((mi, si) if keep_counts else (ni, mi, si)) if c in table.column_names]
        if not keep_counts:
            drop += branch_columns(table, p)
    return table.drop_columns(drop) if drop else table
