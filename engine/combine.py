"""Combining node partials: the :class:`Combiner` plug-in interface, its registry, and ``plain``.

A combine mode is a :class:`Combiner` registered by name. ``plain`` (sums in the clear,
development only) lives here; the secure modes (``mpc``, ``he``) are plug-ins in
``genofed.privacy.secure``, found through the ``genofed.combiners`` entry-point group
(``pyproject.toml``), so the engine never imports them. A third party can add a mode the same
way, or with :func:`register` at run time.

The coordinator hands a combiner one :class:`Round`: the fragment, the nodes, and the services it
may use (fan-out to the nodes, a background pool, the key holder client). The combiner returns one
row per group (keys, combined partials, ``_n``, ``_suppressed``); the coordinator then applies its
own release checks and finalizes.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Round:
    """One combine round as a :class:`Combiner` sees it.

    ``fan_out(fn, targets=None, grace=2.0)`` calls ``fn(transport)`` on every target at once and
    returns ``{node: result}``, raising the first node's error; ``submit(fn, *args)`` runs a
    best-effort background task (aborts); ``wire`` collects the bytes each node sent; ``notes``
    (when not None) collects each node's DP and re-identification notes for the provenance."""

    fragment_sql: str
    keys: list[str]
    partials: list[PartialSpec]
    query_id: str
    targets: list[Any]
    timeout: float
    min_count: int
    fan_out: Callable[..., dict[str, Any]]
    submit: Callable[..., Any]
    dp: dict[str, Any] | None = None
    user_sql: str | None = None
    keyholder: Any = None
    wire: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] | None = None


class Combiner(ABC):
    """A combine mode: merges the nodes' partials for one round."""

    mode: str = "abstract"

    @abstractmethod
    def run(self, rnd: Round) -> pa.Table:
        """One row per group: keys, combined partials, ``_n`` (samples, or NULL when it was never
        opened) and ``_suppressed``."""


_REGISTRY: dict[str, Combiner] = {}
_LOADED = threading.Event()
_LOCK = threading.Lock()
ENTRY_POINT_GROUP = "genofed.combiners"


def register(combiner: Combiner) -> Combiner:
    """Make ``combiner`` available as ``combine=combiner.mode``."""
    with _LOCK:
        _REGISTRY[combiner.mode] = combiner
    return combiner


def _load_plugins() -> None:
    if _LOADED.is_set():
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except ImportError:
            continue  # a mode whose dependencies are missing stays unavailable
        register(cls())
    _LOADED.set()


def combiner(mode: str) -> Combiner:
    """The registered combiner for ``mode``; a clear error names the modes there are."""
    _load_plugins()
    found = _REGISTRY.get(mode)
    if found is None:
        raise CombineError(f"unknown combine mode {mode!r}; choose {', '.join(sorted(_REGISTRY))} (mpc and he are plug-ins of "
                           "genofed's own package, registered when it is installed: reinstall it if one is missing)")
    return found


class PlainCombiner(Combiner):
    """Sums partials in the clear at the coordinator. The coordinator sees every node's partials;
    each node withholds its own small groups, and a group one node withheld is withheld at every
    node through blinded keys (the coordinator never learns a withheld key)."""

    mode = "plain"

    def run(self, rnd: Round) -> pa.Table:
        from .protocol import META_DP, META_NOTES, META_RISK, META_WITHHELD, ipc_size

        mine = {"user_sql": rnd.user_sql} if rnd.user_sql is not None else {}
        parts = rnd.fan_out(lambda t: t.run_fragment(rnd.fragment_sql, rnd.query_id, rnd.timeout,
                                                     **({"dp": rnd.dp} if rnd.dp else {}), **mine), rnd.targets)
        rnd.wire.update({node: ipc_size(t) for node, t in parts.items()})
        if rnd.notes is not None:
            for node, t in parts.items():
                meta = t.schema.metadata or {}
                rnd.notes[node] = {k: json.loads(meta[m]) for k, m in (("dp", META_DP), ("risk", META_RISK),
                                                                       ("withheld", META_WITHHELD)) if m in meta}
                if META_NOTES in meta:
                    rnd.notes[node].update(json.loads(meta[META_NOTES]))
        parts, unmatched = withhold_everywhere(parts)
        if rnd.notes is not None:
            rnd.notes[""] = {"withheld_nowhere_released": unmatched}
        return self.combine(parts, rnd.keys, rnd.partials)

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


def withhold_everywhere(parts: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], int]:
    """plain: a group one node withheld is withheld at every node. Each node sends the blinded
    keys of the groups it withheld and, per released row, that row's blinded key (column
    ``_bk``); every released row whose blinded key some node withheld is flagged, and no
    withheld key is ever learned. Returns the parts without ``_bk`` and how many withheld keys no
    node released."""
    from .protocol import BLINDED_KEY_COLUMN, META_WITHHELD_TOKENS

    withheld: list[pa.Array] = []
    for t in parts.values():
        raw = (t.schema.metadata or {}).get(META_WITHHELD_TOKENS)
        if raw:
            tokens = json.loads(raw)
            try:
                arr = pa.array(tokens, pa.string()) if isinstance(tokens, list) else None
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arr = None
            if arr is None:
                raise CombineError("a node sent malformed blinded keys")
            withheld.append(arr)
    out = dict(parts)
    sent = pc.unique(pa.concat_arrays(withheld)) if withheld else pa.array([], pa.string())
    released = []
    for node, t in parts.items():
        if BLINDED_KEY_COLUMN not in t.column_names:
            continue
        bk = t.column(BLINDED_KEY_COLUMN)
        t = t.drop_columns([BLINDED_KEY_COLUMN])
        if len(sent) and t.num_rows:
            flag = pc.fill_null(pc.is_in(bk, value_set=sent), False)
            i = t.column_names.index(SUPPRESSED_COLUMN)
            t = t.set_column(i, SUPPRESSED_COLUMN, pc.or_(pc.fill_null(t.column(i), False), flag))
            released.append(bk.combine_chunks() if isinstance(bk, pa.ChunkedArray) else bk)
        out[node] = t
    if not len(sent):
        return out, 0
    seen = pa.concat_arrays([a.cast(pa.string()) for a in released]) if released else pa.array([], pa.string())
    matched = int(pc.sum(pc.is_in(sent, value_set=seen)).as_py() or 0)
    return out, len(sent) - matched


register(PlainCombiner())


def check_mode(mode: str) -> str:
    """Validate a combine mode name against the registered combiners."""
    combiner(mode)
    return mode
