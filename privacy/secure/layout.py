"""What the secure combine modes add up: a public *lane layout* over a node's partial table, and
key alignment.

A node's partial table has group keys, partial aggregates and ``_n`` (distinct samples). The
secure modes never see it as a table: every node turns it into the same set of numeric vectors
("lanes"), one value per group of the federation-wide key union, and only sums of lanes are ever
opened or decrypted.

Lanes per partial:

- ``value``: integers exactly (decimals as their unscaled integer), reals as IEEE doubles with
  non-finite values replaced by 0;
- ``valid``: 1 where the node has a non-NULL value, so an all-NULL group stays NULL;
- for reals, ``nan``, ``posinf``, ``neginf``: 1 where the node's value is that special, so the
  released sum follows IEEE addition (NaN if any NaN or both infinities).

plus one ``n`` lane (the group's sample count), which drives the minimum-count test, after the
*influence* lanes of SQL partials (rule 2) and the *guard* lanes of per-variant analyses (rule 5:
``_ng<j>`` people carrying an allele in a cell, tested against the minimum count; ``_nm<j>``
allele counts, tested against the minimum minor-allele count). Guard and influence lanes are
count lanes that are never opened: only whether each group passes.

The layout is derived from the fragment's Arrow schema only (types, never values), so it is
public and identical at every node; parties compare layouts before combining.

Key alignment: a group absent at a node contributes zeros (``valid`` = 0). The key union is
sorted canonically, so its order says nothing about which node contributed which key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genofed.engine import keycodes as K
from genofed.engine.errors import CombineError
from genofed.engine.protocol import N_COLUMN, SUPPRESSED_COLUMN

INT, REAL = "int", "real"
GUARD_PREFIX, MAC_PREFIX = "_ng", "_nm"  # rule-5 guard lanes: carriers (minimum count), allele counts (minimum MAC)
META_MIN_MAC = b"genofed.min_mac"  # a node's minimum minor-allele count, on a secure release's schema
VALUE, VALID, NAN, POSINF, NEGINF, COUNT = "value", "valid", "nan", "posinf", "neginf", "n"


@dataclass(frozen=True)
class PartialLayout:
    """One partial column: its name, ``int`` or ``real``, for ints the decimal scale, and
    whether it is a *count* (COUNT and the genomic counts: never NULL, never negative, so no
    validity lane and, under HE, a single limb). A *finite* real (the statistics of an analysis
    table function, computed by genofed's own kernels) is never NULL nor non-finite, so it needs
    no validity or IEEE-special lanes."""

    name: str
    kind: str
    scale: int = 0
    decimal: bool = False
    count: bool = False
    finite: bool = False  # a real that is never NULL and always finite (analysis statistics): one lane
    influence: int = 0  # influence-count lanes _ni<j>, _ni<j>_1.. (disclosure rule 2), tested like the group's count


COUNT_FUNCTIONS = ("count", "allele_count", "allele_number", "het_count", "hom_alt_count", "hom_ref_count", "hom_alt_diploid_count")


def count_partials(select: Any, partials: list[str]) -> list[str]:
    """The partials of a validated fragment (a sqlglot SELECT) that are counts. Decided from the
    SQL alone, so every node reaches the same answer."""
    from sqlglot import exp

    out = []
    for e in select.expressions:
        if isinstance(e, exp.Alias) and e.alias in partials:
            f = e.this
            name = f.name.lower() if isinstance(f, exp.Anonymous) else type(f).__name__.lower()
            if name in COUNT_FUNCTIONS and not (isinstance(f, exp.Count) and isinstance(f.this, exp.Distinct)):
                out.append(e.alias)
    return out


def lane_hints(fragment: Any) -> tuple[list[str], list[str]]:
    """``(counts, finite)`` partial names of a validated fragment: SQL fragments from their SQL
    (:func:`count_partials`), analysis fragments from their declared statistics."""
    if hasattr(fragment, "finite"):
        return list(fragment.counts), list(fragment.finite)
    return count_partials(fragment.select, list(fragment.partials)), []


@dataclass(frozen=True)
class Lane:
    column: str
    role: str
    kind: str  # int or real: how the lane's values are encoded


@dataclass
class Layout:
    """The public shape of what every node contributes for one query."""

    keys: list[str]
    partials: list[PartialLayout]
    guards: list[str] = field(default_factory=list)  # rule-5 guard count lanes (``_ng<j>``, ``_nm<j>``)
    min_mac: int | None = None  # this node's minimum minor-allele count (announced; not part of the shape)

    def lanes(self) -> list[Lane]:
        out = []
        for p in self.partials:
            out.append(Lane(p.name, VALUE, p.kind))
            if not (p.count or p.finite):
                out.append(Lane(p.name, VALID, INT))
            if p.kind == REAL and not p.finite:
                out += [Lane(p.name, NAN, INT), Lane(p.name, POSINF, INT), Lane(p.name, NEGINF, INT)]
        out += [Lane(influence_column(p.name, b), COUNT, INT) for p in self.partials for b in range(int(p.influence))]
        out += [Lane(g, COUNT, INT) for g in self.guards]
        out.append(Lane(N_COLUMN, COUNT, INT))
        return out

    def count_lanes(self) -> list[Lane]:
        """The lanes the minimum-count test runs on: every influence count, then ``_n`` (last)."""
        return [lane for lane in self.lanes() if lane.role == COUNT]

    def opened_flags(self) -> list[Lane]:
        """The flag lanes opened (as zero tests) for released groups: validity and IEEE specials."""
        return [lane for lane in self.lanes() if lane.role not in (VALUE, COUNT)]

    def value_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes() if lane.role == VALUE]

    def flag_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes() if lane.role != VALUE]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": self.keys, "partials": [asdict(p) for p in self.partials]}
        if self.guards:
            out["guards"] = list(self.guards)
        if self.min_mac is not None:
            out["min_mac"] = int(self.min_mac)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Layout:
        try:
            mac = d.get("min_mac")
            return cls(list(d["keys"]), [PartialLayout(**p) for p in d["partials"]], [str(g) for g in d.get("guards", [])],
                       None if mac is None else int(mac))
        except (KeyError, TypeError, ValueError) as e:
            raise CombineError(f"malformed lane layout: {e}") from None


def split_min_mac(layout_json: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """A layout's JSON without the node's announced minimum minor-allele count (the shape every
    node must agree on), and that count (None when the node announced none)."""
    d = dict(layout_json)
    mac = d.pop("min_mac", None)
    try:
        return d, None if mac is None else int(mac)
    except (TypeError, ValueError):
        raise CombineError("malformed lane layout: min_mac must be an integer") from None


def lane_threshold(lane: Lane, min_count: int, min_mac: int | None) -> int:
    """The minimum a count lane's federation-wide sum must reach: the minor-allele count for the
    rule-5 allele-count lanes (``_nm<j>``, default the minimum count), the minimum count for the
    rest. Every lane but ``_n`` (the group's count) fails at 0 as well when its minimum exceeds 1."""
    if lane.column.startswith(MAC_PREFIX):
        return int(min_count if min_mac is None else min_mac)
    return int(min_count)


def lane_small(lane: Lane, v: np.ndarray, min_count: int, min_mac: int | None, last: bool) -> np.ndarray:
    """Groups a count lane's federation-wide sums ``v`` withhold (HE and plain reference of the
    test MPC evaluates on shares): ``_n`` in 1..k-1; any other count lane below its minimum, 0
    included (a zero where one person would be withheld is their value)."""
    from genofed.privacy.disclosure import below

    return below(np.asarray(v), lane_threshold(lane, min_count, min_mac), zero_small=not last)


def influence_column(partial: str, branch: int = 0) -> str:
    """The influence-count column of partial ``_p<j>`` (``branch`` 0), or of the people taking
    its argument's branch ``b`` (:mod:`genofed.privacy.influence`)."""
    return f"_ni{partial[2:]}" if branch == 0 else f"_ni{partial[2:]}_{branch}"


def layout_for(schema: pa.Schema, keys: list[str], partials: list[str], counts: list[str] | None = None,
               finite: list[str] | None = None) -> Layout:
    """The lane layout of a partial table's schema (``counts``: see :func:`count_partials`;
    ``finite``: real partials declared never NULL and always finite). Refuses partial types that
    cannot be summed exactly or within a documented bound."""
    out = []
    counts = counts or []
    finite = finite or []
    for name in partials:
        if name not in schema.names:
            raise CombineError(f"partial table has no column {name!r}")
        t = schema.field(name).type
        if name in counts and (pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0)):
            out.append(PartialLayout(name, INT, count=True))
        elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
            out.append(PartialLayout(name, INT))
        elif pa.types.is_decimal(t):
            out.append(PartialLayout(name, INT, scale=t.scale, decimal=True))
        elif pa.types.is_floating(t):
            out.append(PartialLayout(name, REAL, finite=name in finite))
        else:
            raise CombineError(f"partial {name!r} has type {t}, which the secure combine modes cannot sum")
    out = [replace(p, influence=(1 + sum(1 for c in schema.names if c.startswith(influence_column(p.name) + "_")))
                   if influence_column(p.name) in schema.names else 0) for p in out]
    guards = [c for c in schema.names if c.startswith((GUARD_PREFIX, MAC_PREFIX))]
    raw = (schema.metadata or {}).get(META_MIN_MAC)
    try:
        mac = int(raw) if raw is not None else None
    except ValueError:
        raise CombineError("a partial table announces a malformed minimum minor-allele count") from None
    return Layout(list(keys), out, guards, mac if guards else None)


# -- key alignment ---------------------------------------------------------------------------------

def key_table(table: pa.Table, keys: list[str]) -> pa.Table:
    """The distinct group keys of a partial table (what a node contributes to the key union)."""
    return table.select(keys).replace_schema_metadata(None)


def union_keys(tables: list[pa.Table], keys: list[str]) -> pa.Table:
    """Sorted distinct union of key tables: the order depends only on the union's contents
    (ascending per key column, NULL last)."""
    if not keys:
        return pa.table({})
    try:
        union = pa.concat_tables([t.select(keys).replace_schema_metadata(None) for t in tables], promote_options="permissive")
        return K.distinct_sorted(union, keys)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError, K.KeyTypeError) as e:
        raise CombineError(f"node key sets do not agree on key columns or types: {e}") from None


def align(table: pa.Table, union: pa.Table, keys: list[str]) -> pa.Table:
    """``table``'s rows in the order of ``union`` (a superset of its keys); absent groups are NULL.

    With no keys the query has one group: a node with no row contributes an all-NULL row.
    Keys match as GROUP BY matches them: NULL equals NULL. (Computed with numpy: Arrow's Acero
    join crashed the process on partial tables received over Flight.)
    """
    if not keys:
        if table.num_rows == 1:
            return table
        if table.num_rows == 0:
            return pa.table({c: pa.nulls(1, table.schema.field(c).type) for c in table.column_names})
        raise CombineError("a query without GROUP BY returned more than one row at a node")
    try:
        rows = K.lookup(union, table, keys)
    except K.KeyTypeError as e:
        if "twice" in str(e):
            raise CombineError("a node's partial table has duplicate group keys") from None
        raise CombineError(f"cannot align a node's partials to the key union: {e}") from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError) as e:
        raise CombineError(f"cannot align a node's partials to the key union: {e}") from None
    take = pa.array(rows, mask=rows < 0)
    cols = {k: union.column(k) for k in keys}
    for c in table.column_names:
        if c not in keys:
            cols[c] = table.column(c).take(take)
    return pa.table(cols)


# -- lanes -----------------------------------------------------------------------------------------

def lane_values(aligned: pa.Table, layout: Layout) -> dict[Lane, np.ndarray]:
    """Every lane of an aligned partial table: ints as Python-int object arrays (exact, any
    size), reals as float64, flags as int64."""
    out: dict[Lane, np.ndarray] = {}
    for p in layout.partials:
        col = aligned.column(p.name)
        valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if p.kind == INT:
            if p.decimal:
                ints = [0 if v is None else int(v.scaleb(p.scale)) for v in col.to_pylist()]
                vals = np.array(ints, dtype=object)
            else:
                vals = pc.fill_null(pc.cast(col, pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            out[Lane(p.name, VALUE, INT)] = vals
        else:
            x = pc.fill_null(pc.cast(col, pa.float64()), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
            if p.finite:
                if not np.isfinite(x).all():
                    raise CombineError(f"statistic {p.name!r} is not finite at this node; nothing was combined")
                out[Lane(p.name, VALUE, REAL)] = x
                continue
            nan, posinf, neginf = np.isnan(x), np.isposinf(x), np.isneginf(x)
            out[Lane(p.name, VALUE, REAL)] = np.where(np.isfinite(x), x, 0.0)
            out[Lane(p.name, NAN, INT)] = (nan & valid).astype(np.int64)
            out[Lane(p.name, POSINF, INT)] = (posinf & valid).astype(np.int64)
            out[Lane(p.name, NEGINF, INT)] = (neginf & valid).astype(np.int64)
        if not p.count:
            out[Lane(p.name, VALID, INT)] = valid.astype(np.int64)
    for p in layout.partials:
        for b in range(int(p.influence)):
            c = aligned.column(influence_column(p.name, b))
            out[Lane(influence_column(p.name, b), COUNT, INT)] = pc.fill_null(pc.cast(c, pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    for g in layout.guards:
        out[Lane(g, COUNT, INT)] = pc.fill_null(pc.cast(aligned.column(g), pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    n = aligned.column(N_COLUMN) if N_COLUMN in aligned.column_names else pa.nulls(aligned.num_rows, pa.int64())
    out[Lane(N_COLUMN, COUNT, INT)] = pc.fill_null(pc.cast(n, pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return {lane: out[lane] for lane in layout.lanes()}


def assemble(union: pa.Table, layout: Layout, released: np.ndarray, sums: dict[Lane, Any], flags: dict[Lane, np.ndarray]) -> pa.Table:
    """The combined table the coordinator finalizes: every key of the union, partials for the
    released groups (NULL elsewhere), ``_n`` NULL (the count is never opened; the threshold test
    already ran) and ``_suppressed`` for the rest.

    ``sums[lane]`` holds values for released rows only, in order; ``flags[lane]`` holds, for
    released rows, whether the lane's federation-wide sum is non-zero.
    """
    g = len(released)
    idx = np.flatnonzero(released)
    cols: dict[str, pa.Array | pa.ChunkedArray] = {k: union.column(k) for k in layout.keys}
    for p in layout.partials:
        nonnull = np.zeros(g, bool)
        nonnull[idx] = True if (p.count or p.finite) else flags[Lane(p.name, VALID, INT)]
        v = sums[Lane(p.name, VALUE, p.kind)]
        if p.kind == INT and not p.decimal and isinstance(v, np.ndarray) and v.dtype == np.int64:
            full64 = np.zeros(g, np.int64)
            full64[idx] = v
            arr = pa.array(full64, mask=~nonnull)
        elif p.kind == INT:
            full: list[int | None] = [None] * g
            for j, i in enumerate(idx):
                if nonnull[i]:
                    full[int(i)] = int(v[j])
            if p.decimal:
                import decimal

                arr = pa.array([None if x is None else decimal.Decimal(x).scaleb(-p.scale) for x in full], pa.decimal128(38, p.scale))
            else:
                arr = _int_array(full)
        elif p.finite:
            x = np.zeros(g, np.float64)
            x[idx] = np.asarray(v, np.float64)
            arr = pa.array(x, mask=~nonnull)
        else:
            x = np.zeros(g, np.float64)
            x[idx] = np.asarray(v, np.float64)
            nan = np.zeros(g, bool)
            pos = np.zeros(g, bool)
            neg = np.zeros(g, bool)
            nan[idx] = flags[Lane(p.name, NAN, INT)]
            pos[idx] = flags[Lane(p.name, POSINF, INT)]
            neg[idx] = flags[Lane(p.name, NEGINF, INT)]
            x = np.where(pos, np.inf, x)
            x = np.where(neg, -np.inf, x)
            x = np.where(nan | (pos & neg), np.nan, x)
            arr = pa.array(x, mask=~nonnull)
        cols[p.name] = arr
    cols[N_COLUMN] = pa.nulls(g, pa.int64())
    cols[SUPPRESSED_COLUMN] = pa.array(~released)
    return pa.table(cols)


def _int_array(vals: list[int | None]) -> pa.Array:
    try:
        return pa.array(vals, pa.int64())
    except (OverflowError, pa.ArrowInvalid):
        import decimal

        return pa.array([None if v is None else decimal.Decimal(v) for v in vals], pa.decimal128(38, 0))


def small_groups(n: np.ndarray, min_count: int) -> np.ndarray:
    """The rule the secure modes enforce on federation-wide counts (same as plain): groups with
    1..min_count-1 samples are suppressed; zero-sample groups are not disclosive. Applied to the
    group's count and to every influence count (the people who make a sum non-zero)."""
    from genofed.privacy.disclosure import below

    return below(np.asarray(n), min_count)
