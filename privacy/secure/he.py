"""HE combine (TenSEAL)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from genofed.engine.errors import CombineError


def run_he(coordinator: Any, targets: list[Any], fragment_sql: str, query_id: str, min_count: int, timeout: float) -> pa.Table:
    raise CombineError("he: not yet")
