"""Count-kernel fast path for genotype fragments.

Answers fragments of the shape

    SELECT <sample keys>, <variant keys>, <genomic counts>
    FROM genotypes g [JOIN samples/clinical USING (sample_id)] [JOIN variants USING (variant_id)]
    WHERE <conditions on sample columns> AND <conditions on variant columns>
    GROUP BY <sample keys>, <variant keys>

without a row per genotype: DuckDB resolves the sample groups (over samples and clinical tables)
and the variant groups (over variants), and :func:`genofed.genomics.kernels.group_counts`
counts calls per variant and sample group with ``np.bitwise_count`` on bit-packed planes. Any
other fragment returns ``None`` and runs row-wise in DuckDB; both paths give identical partials
(tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from sqlglot import exp

from ...genomics.kernels import group_counts
from ...genomics.store import pack_mask
from ..schema import GENOTYPE_VARIANT_COLUMNS, SAMPLE_ID
from ..sqlcheck import DIALECT
from .base import N_COLUMN

if TYPE_CHECKING:
    from ..fragment import Fragment
    from .duckdb import DuckDBBackend

SUM_T = pa.decimal128(38, 0)


class _NotKernel(Exception):
    pass


def _side(e: exp.Expression, g: str, v_aliases: set[str], s_aliases: set[str]) -> str:
    """'v' (variant columns only), 's' (sample columns only), or raise."""
    sides = set()
    for c in e.find_all(exp.Column):
        if c.table == g:
            if c.name in GENOTYPE_VARIANT_COLUMNS:
                sides.add("v")
            elif c.name == SAMPLE_ID:
                sides.add("s")
            else:
                raise _NotKernel
        elif c.table in v_aliases:
            sides.add("v")
        elif c.table in s_aliases:
            sides.add("s")
        else:
            raise _NotKernel
    if len(sides) > 1:
        raise _NotKernel
    return sides.pop() if sides else "s"


def _partial_kind(e: exp.Expression, g: str) -> str:
    def is_dosage(x: exp.Expression) -> bool:
        while isinstance(x, exp.Cast):
            x = x.this
        return isinstance(x, exp.Column) and x.table == g and x.name == "dosage"

    if isinstance(e, exp.Count):
        if isinstance(e.this, exp.Star):
            return "count_star"
        if isinstance(e.this, exp.Distinct):
            return "count_samples"
        if is_dosage(e.this):
            return "count_dosage"
    if isinstance(e, exp.Sum):
        if is_dosage(e.this):
            return "sum_dosage"
        if isinstance(e.this, exp.Mul) and is_dosage(e.this.this) and is_dosage(e.this.expression):
            return "sum_dosage_sq"
    if isinstance(e, exp.Anonymous) and e.expressions and is_dosage(e.expressions[0]):
        return e.name.lower()
    raise _NotKernel


def try_kernel(backend: DuckDBBackend, fragment: Fragment) -> pa.Table | None:
    """Run the fragment with the count kernel, or return None if it does not fit the shape."""
    try:
        shape = _analyse(fragment)
    except _NotKernel:
        return None
    return _run(backend, fragment, *shape)


def _analyse(fragment: Fragment):
    q = fragment.select
    if any(s is not q for s in q.find_all(exp.Select)) or q.args.get("with"):
        raise _NotKernel
    frm = q.args.get("from_") or q.args.get("from")
    if frm is None:
        raise _NotKernel
    sources = [frm.this] + [j.this for j in q.args.get("joins") or []]
    for j in q.args.get("joins") or []:
        if (j.args.get("kind") or "").upper() not in ("", "INNER") or j.args.get("side"):
            raise _NotKernel
    if not all(isinstance(s, exp.Table) for s in sources):
        raise _NotKernel
    gen = [s for s in sources if s.name == "genotypes"]
    if len(gen) != 1:
        raise _NotKernel
    g = gen[0].alias_or_name
    v_aliases = {s.alias_or_name for s in sources if s.name == "variants"}
    s_aliases = {s.alias_or_name for s in sources if s.name not in ("variants", "genotypes")}
    where = q.args.get("where")
    conds: dict[str, list[exp.Expression]] = {"s": [], "v": []}
    if where is not None:
        from .duckdb import _conjuncts

        for c in _conjuncts(where.this):
            conds[_side(c, g, v_aliases, s_aliases)].append(c)
    keys: list[tuple[str, str, exp.Expression]] = []  # (name, side, expr)
    partials: list[tuple[str, str]] = []
    for p in q.expressions:
        name, body = p.alias_or_name, p.unalias()
        if name.startswith("_k"):
            keys.append((name, _side(body, g, v_aliases, s_aliases), body))
        else:
            partials.append((name, _partial_kind(body, g)))
    joins: dict[str, list[exp.Join]] = {"s": [], "v": []}
    for j in q.args.get("joins") or []:
        joins["v" if j.this.name == "variants" else "s"].append(j)
    return g, conds, keys, partials, joins


def _side_query(base: str, idx: str, g: str, conds, keys, joins) -> str:
    cols = [exp.alias_(exp.column(idx, table=g), "_idx")]
    cols += [exp.alias_(e.copy(), n) for n, _, e in keys]
    q = exp.select(*cols).from_(exp.to_table(base).as_(g))
    for j in joins:
        q = q.join(j.copy())
    if conds:
        q = q.where(exp.and_(*[c.copy() for c in conds]))
    return q.sql(DIALECT)


def _groups(table: pa.Table, key_names: list[str]) -> tuple[pa.Table, list[np.ndarray]]:
    """Distinct key rows and, for each, the sorted indices belonging to it."""
    idx = table.column("_idx").to_numpy().astype(np.int64)
    if not key_names:
        return pa.table({}), [np.sort(idx)]
    grouped = table.group_by(key_names, use_threads=False).aggregate([("_idx", "list")])
    members = [np.sort(np.asarray(m, dtype=np.int64)) for m in grouped.column("_idx_list").to_pylist()]
    return grouped.select(key_names), members


def _run(backend: DuckDBBackend, fragment: Fragment, g, conds, keys, partials, joins) -> pa.Table | None:
    s_keys = [k for k in keys if k[1] == "s"]
    v_keys = [k for k in keys if k[1] == "v"]
    cur = backend.con.cursor()
    try:
        s_tab = cur.sql(_side_query("_sidx", "sidx", g, conds["s"], s_keys, joins["s"])).to_arrow_table()
        v_tab = cur.sql(_side_query("_variants", "vidx", g, conds["v"], v_keys, joins["v"])).to_arrow_table()
    finally:
        cur.close()
    s_idx = s_tab.column("_idx").to_numpy()
    if len(np.unique(s_idx)) != len(s_idx):
        return None  # a clinical table with several rows per sample: row-wise path keeps SQL semantics
    v_idx = v_tab.column("_idx").to_numpy()
    if len(np.unique(v_idx)) != len(v_idx):
        return None
    s_groups, s_members = _groups(s_tab, [k[0] for k in s_keys])
    v_groups, v_members = _groups(v_tab, [k[0] for k in v_keys])
    n_samples = backend.store.manifest.n_samples
    ns = len(s_members)
    nvg = len(v_members)
    masks = np.stack([pack_mask(m, n_samples) for m in s_members]) if ns else np.zeros((0, 1), np.uint64)
    all_v = np.sort(v_idx.astype(np.int64))
    counts = group_counts(backend.store.planes, all_v, masks) if ns and len(all_v) else None
    # reduce per-variant counts into variant groups
    pos = np.searchsorted(all_v, np.concatenate(v_members)) if v_members and len(all_v) else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(m) for m in v_members])
    agg: dict[str, np.ndarray] = {}
    if counts is not None:
        for k, arr in counts.items():
            ordered = arr[pos]
            starts = bounds[:-1]
            nonempty = starts < len(ordered)
            out = np.zeros((nvg, ns), dtype=np.int64)
            if nonempty.any():
                red = np.add.reduceat(ordered, starts[nonempty], axis=0)
                sizes = np.diff(bounds)[nonempty]
                red[sizes == 0] = 0
                out[nonempty] = red
            agg[k] = out
    else:
        agg = {k: np.zeros((nvg, ns), dtype=np.int64) for k in ("alt1", "alt2", "called", "diploid", "het", "hap_alt")}
    v_sizes = np.array([len(m) for m in v_members], dtype=np.int64)
    s_sizes = np.array([len(m) for m in s_members], dtype=np.int64)
    grouped = bool(keys)
    if grouped:
        vi, si = np.nonzero((v_sizes[:, None] > 0) & (s_sizes[None, :] > 0))
    else:
        vi, si = np.zeros(1, np.int64), np.zeros(1, np.int64)
        if nvg == 0 or ns == 0:
            agg = {k: np.zeros((1, 1), np.int64) for k in agg}
            v_sizes = np.zeros(1, np.int64)
            s_sizes = np.zeros(1, np.int64) if ns == 0 else s_sizes[:1]
    a = {k: v[vi, si] for k, v in agg.items()}
    rows_v = v_sizes[vi]
    rows_s = s_sizes[si]
    called = a["called"]
    cols: dict[str, pa.Array] = {}
    for name, _side_, _e in keys:
        src = s_groups if _side_ == "s" else v_groups
        take = si if _side_ == "s" else vi
        cols[name] = src.column(name).take(pa.array(take))
    for name, kind in partials:
        cols[name] = _partial(kind, a, rows_v, rows_s, called)
    cols[N_COLUMN] = pa.array(np.where(rows_v > 0, rows_s, 0).astype(np.int64))
    return pa.table(cols)


def _partial(kind: str, a: dict[str, np.ndarray], rows_v: np.ndarray, rows_s: np.ndarray, called: np.ndarray) -> pa.Array:
    nulls = called == 0
    if kind == "count_star":
        return pa.array((rows_v * rows_s).astype(np.int64))
    if kind == "count_dosage":
        return pa.array(called.astype(np.int64))
    if kind == "count_samples":
        return pa.array(np.where(rows_v > 0, rows_s, 0).astype(np.int64))
    if kind == "sum_dosage":
        return pa.array(a["alt1"] + a["alt2"], mask=nulls).cast(SUM_T)
    if kind == "sum_dosage_sq":
        return pa.array(a["alt1"] + 3 * a["alt2"], mask=nulls).cast(SUM_T)
    if kind == "allele_count":
        return pa.array(a["alt1"] + a["alt2"]).cast(SUM_T)
    if kind == "allele_number":
        return pa.array(a["called"] + a["diploid"]).cast(SUM_T)
    if kind == "het_count":
        return pa.array(a["het"].astype(np.int64))
    if kind == "hom_alt_count":
        return pa.array((a["alt2"] + a["hap_alt"]).astype(np.int64))
    raise ValueError(kind)
