"""Combining node partials. ``plain`` sums in the clear (development only); the secure modes
(MPC, HE) implement the same interface in ``genofed.privacy.secure``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from .errors import CombineError
from .planner import PartialSpec
from .protocol import N_COLUMN, SUPPRESSED_COLUMN
from .sqlcheck import DIALECT

_OPS = {"sum": exp.Sum, "min": exp.Min, "max": exp.Max}


def narrow_integers(t: pa.Table) -> pa.Table:
    """HUGEINT sums arrive as decimal128(38, 0); use int64 wherever the values fit (smaller on the
    wire, and numpy-friendly). Values that do not fit stay decimal."""
    for i, f in enumerate(t.schema):
        if pa.types.is_decimal(f.type) and f.type.scale == 0:
            try:
                t = t.set_column(i, f.name, pc.cast(t.column(i), pa.int64()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    return t


class Combiner(ABC):
    """Merges per-node partial tables by group key."""

    mode: str = "abstract"

    @abstractmethod
    def combine(self, parts: dict[str, pa.Table], keys: list[str], partials: list[PartialSpec]) -> pa.Table:
        """One row per group: keys, combined partials, ``_n`` (samples) and ``_suppressed``."""


class PlainCombiner(Combiner):
    """Sums partials in the clear at the coordinator. The coordinator sees every node's partials."""

    mode = "plain"

    def combine(self, parts: dict[str, pa.Table], keys: list[str], partials: list[PartialSpec]) -> pa.Table:
        cols = [*keys, *(p.name for p in partials), N_COLUMN, SUPPRESSED_COLUMN]
        tables = []
        for node, t in parts.items():
            missing = [c for c in cols if c not in t.column_names]
            if missing:
                raise CombineError(f"node {node!r} returned partials without columns {missing}")
            tables.append(narrow_integers(t.select(cols).replace_schema_metadata(None)))
        aligned = _aligned_sum(tables, keys, partials)
        if aligned is not None:
            return aligned
        try:
            union = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise CombineError(f"node partials have incompatible types: {e}") from None
        select = [exp.column(k) for k in keys]
        select += [exp.alias_(_OPS[p.op](this=exp.column(p.name)), p.name) for p in partials]
        select += [
            exp.alias_(exp.Sum(this=exp.column(N_COLUMN)), N_COLUMN),
            exp.alias_(exp.func("BOOL_OR", exp.column(SUPPRESSED_COLUMN)), SUPPRESSED_COLUMN),
        ]
        q = exp.select(*select).from_("_parts")
        if keys:
            q = q.group_by(*[exp.column(k) for k in keys])
        con = duckdb.connect()
        try:
            con.register("_parts", union)
            return narrow_integers(con.sql(q.sql(DIALECT)).to_arrow_table())
        finally:
            con.close()


def _aligned_sum(tables: list[pa.Table], keys: list[str], partials: list[PartialSpec]) -> pa.Table | None:
    """When every node returned the same groups in the same order, combine column by column."""
    first = tables[0]
    if len(tables) == 1:
        return first
    for t in tables[1:]:
        if t.num_rows != first.num_rows or not t.select(keys).equals(first.select(keys)):
            return None
    out = {k: first.column(k) for k in keys}
    for p in [*(p.name for p in partials), N_COLUMN]:
        op = next((x.op for x in partials if x.name == p), "sum")
        cols = [t.column(p) for t in tables]
        if any(not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)) for c in cols):
            return None
        vals = [c.to_numpy(zero_copy_only=False) for c in cols]
        valid = [~np.asarray(c.is_null().to_numpy(zero_copy_only=False)) for c in cols]
        any_valid = np.logical_or.reduce(valid)
        if op == "sum":
            acc = sum(np.where(v, x, 0) for v, x in zip(valid, vals))
        else:
            fill = np.inf if op == "min" else -np.inf
            stacked = np.stack([np.where(v, x, fill) for v, x in zip(valid, vals)])
            acc = stacked.min(axis=0) if op == "min" else stacked.max(axis=0)
        dtype = pa.int64() if all(pa.types.is_integer(c.type) for c in cols) else pa.float64()
        out[p] = pa.array(np.asarray(acc), mask=~any_valid).cast(dtype)
    flags = [t.column(SUPPRESSED_COLUMN).fill_null(False).to_numpy(zero_copy_only=False) for t in tables]
    out[SUPPRESSED_COLUMN] = pa.array(np.logical_or.reduce(flags))
    return pa.table(out)


def check_mode(mode: str) -> str:
    """Validate a combine mode name."""
    if mode not in ("plain", "mpc", "he"):
        raise CombineError(f"unknown combine mode {mode!r}; choose plain, mpc or he")
    return mode
