"""Combining node partials. ``plain`` sums in the clear (development only); the secure modes
(MPC, HE) implement the same interface in ``genofed.privacy.secure``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import duckdb
import pyarrow as pa
from sqlglot import exp

from .errors import CombineError
from .planner import PartialSpec
from .protocol import N_COLUMN, SUPPRESSED_COLUMN
from .sqlcheck import DIALECT

_OPS = {"sum": exp.Sum, "min": exp.Min, "max": exp.Max}


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
            tables.append(t.select(cols).replace_schema_metadata(None))
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
            return con.sql(q.sql(DIALECT)).to_arrow_table()
        finally:
            con.close()


def get_combiner(mode: str) -> Combiner:
    """The combiner for a mode name."""
    if mode == "plain":
        return PlainCombiner()
    if mode in ("mpc", "he"):
        raise CombineError(f"combine mode {mode!r} is not available yet in this version; use combine='plain'")
    raise CombineError(f"unknown combine mode {mode!r}; choose plain, mpc or he")
