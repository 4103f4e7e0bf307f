"""Disclosure control applied where partials are produced and where answers are released."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genofed.engine.protocol import N_COLUMN, SUPPRESSED_COLUMN

DEFAULT_MIN_COUNT = 5


def below(n: np.ndarray, min_count: int, zero_small: bool = False) -> np.ndarray:
    """The minimum-count rule, written once: counts of 1..min_count-1 people (and 0 too with
    ``zero_small``: a count of the people behind a value, where 0 where one person would be
    withheld tells their value). Nothing is small when ``min_count`` is 1. Every mode applies it:
    plain at the node (:mod:`genofed.privacy.rules`), HE at the key holder and MPC on the
    federation-wide sums (:func:`genofed.privacy.secure.layout.lane_small`; the MPC party
    evaluates the same test on secret shares)."""
    n = np.asarray(n)
    if min_count <= 1:
        return np.zeros(n.shape, bool)
    return ((n >= 0) if zero_small else (n > 0)) & (n < min_count)


def small_cells(n: pa.ChunkedArray | pa.Array, min_count: int) -> np.ndarray:
    """Groups with between 1 and ``min_count - 1`` samples (zero cells are not disclosive)."""
    return below(pc.cast(pc.fill_null(n, 0), pa.int64()).to_numpy(zero_copy_only=False), min_count)


def apply_min_count(table: pa.Table, min_count: int, partials: list[str]) -> tuple[pa.Table, int]:
    """Suppress groups below the minimum count: partials nulled, ``_suppressed`` set.

    Keys stay so the coordinator can suppress the same group federation-wide instead of releasing
    a sum that misses this node. Returns the table and the number of suppressed groups.
    """
    if N_COLUMN not in table.column_names:
        raise ValueError("partial table has no _n column")
    small = small_cells(table.column(N_COLUMN), min_count) if table.num_rows else np.zeros(0, bool)
    flag = pa.array(small, pa.bool_())
    if small.any():
        keep = pa.array(~small)
        for name in [*partials, N_COLUMN]:
            i = table.column_names.index(name)
            col = table.column(name)
            table = table.set_column(i, name, pc.if_else(keep, col, pa.scalar(None, col.type)))
    return table.append_column(SUPPRESSED_COLUMN, flag), int(small.sum())
