"""Count-kernel fast path for genomic aggregates (filled in below)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from ..fragment import Fragment
    from .duckdb import DuckDBBackend


def try_kernel(backend: DuckDBBackend, fragment: Fragment) -> pa.Table | None:
    return None
