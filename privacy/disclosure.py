"""Disclosure control applied where partials are produced and where answers are released."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genofed.engine.protocol import N_COLUMN, SUPPRESSED_COLUMN

DEFAULT_MIN_COUNT = 5


def small_cells(n: pa.ChunkedArray | pa.Array, min_count: int) -> np.ndarray:
    """Groups with between 1 and ``min_count - 1`` samples (zero cells are not disclosive)."""
    arr = pc.cast(pc.fill_null(n, 0), pa.int64()).to_numpy(zero_copy_only=False)
    return (arr > 0) & (arr < min_count)


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
