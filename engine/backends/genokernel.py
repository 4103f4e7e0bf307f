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

import contextvars
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from ...genomics.kernels import group_counts
from ...genomics.store import pack_mask
from .. import limits
from ..schema import GENOTYPE_VARIANT_COLUMNS, SAMPLE_ID
from ..sqlcheck import DIALECT
from .base import N_COLUMN

if TYPE_CHECKING:
    from ..fragment import Fragment
    from .duckdb import DuckDBBackend

SUM_T = pa.decimal128(38, 0)


class _NotKernel(Exception):
    pass


# the last per-variant counts this thread's kernel computed, for the release gates of the same
# request (rule 5's minimum minor-allele count reads the same counts): taken once, never kept
_LAST_COUNTS: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar("genokernel_counts", default=None)


def take_counts(planes: Any, vidx: np.ndarray, masks: np.ndarray, needed: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The counts of ``needed`` per variant ``vidx`` and sample mask row ``masks`` from this
    thread's last kernel run over the same planes, when it counted all of them (else None). Each
    run's counts are taken at most once."""
    last = _LAST_COUNTS.get()
    _LAST_COUNTS.set(None)
    if last is None:
        return None
    planes_id, all_v, k_masks, counts = last
    if planes_id != id(planes) or not np.array_equal(all_v, vidx) or any(k not in counts for k in needed):
        return None
    rows = {k_masks[i].tobytes(): i for i in range(len(k_masks))}
    cols = [rows.get(m.tobytes()) for m in masks]
    if any(c is None for c in cols):
        return None
    return {k: counts[k][:, cols] for k in needed}


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


def _group_ids(table: pa.Table, key_names: list[str]) -> tuple[pa.Table, np.ndarray, int]:
    """Distinct key rows, each row's group id, and the number of groups (NULL is a key value)."""
    n = table.num_rows
    if not key_names:
        return pa.table({}), np.zeros(n, np.int64), 1
    encoded = [pc.dictionary_encode(table.column(k).combine_chunks(), null_encoding="encode") for k in key_names]
    if len(encoded) == 1:  # the dictionary is the distinct keys, the indices the group ids
        enc = encoded[0]
        gid = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        used = np.bincount(gid, minlength=len(enc.dictionary)) > 0
        if used.all():
            return pa.table({key_names[0]: enc.dictionary}), gid, len(enc.dictionary)
    if np.prod([float(len(e.dictionary)) for e in encoded]) > 2.0**62:
        stacked = np.stack([e.indices.to_numpy(zero_copy_only=False).astype(np.int64) for e in encoded], axis=1)
        _, first, gid = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        return table.select(key_names).take(pa.array(first)), gid.reshape(-1).astype(np.int64), len(first)
    code = np.zeros(n, np.int64)
    for enc in encoded:
        code = code * len(enc.dictionary) + enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    _, first, gid = np.unique(code, return_index=True, return_inverse=True)
    return table.select(key_names).take(pa.array(first)), gid.reshape(-1).astype(np.int64), len(first)


def _canonical(groups: pa.Table, gid: np.ndarray, n: int, by_key: bool = False,
               first_idx: np.ndarray | None = None) -> tuple[pa.Table, np.ndarray, int]:
    """Renumber groups in a node-independent order (sample groups by key, variant groups by their
    first variant row), so nodes with the same groups return them in the same order and the
    coordinator can add their partials without hashing keys."""
    if n <= 1 or not groups.num_columns:
        return groups, gid, n
    if by_key:
        keys = [(c, "ascending", "at_start") for c in groups.column_names]
        order = pc.sort_indices(groups, sort_keys=keys).to_numpy()
    else:
        assert first_idx is not None, "variant groups are ordered by their first row: pass first_idx"
        first = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, gid, first_idx)
        order = np.argsort(first, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return groups.take(pa.array(order)), rank[gid], n


def _unique(idx: np.ndarray) -> bool:
    return not len(idx) or bool(np.bincount(idx).max() <= 1)


_NEEDS = {
    "count_star": (), "count_samples": (), "count_dosage": ("called",),
    "sum_dosage": ("alt1", "alt2", "called"), "sum_dosage_sq": ("alt1", "alt2", "called"),
    "allele_count": ("alt1", "alt2"), "allele_number": ("called", "diploid"),
    "het_count": ("het",), "hom_alt_count": ("alt2", "hap_alt"),
    "hom_ref_count": ("diploid", "het", "alt2"), "hom_alt_diploid_count": ("alt2",),
}


def _run(backend: DuckDBBackend, fragment: Fragment, g, conds, keys, partials, joins) -> pa.Table | None:
    s_keys = [k for k in keys if k[1] == "s"]
    v_keys = [k for k in keys if k[1] == "v"]
    cur = backend.con.cursor()
    try:
        s_tab = cur.sql(_side_query("_sidx", "sidx", g, conds["s"], s_keys, joins["s"])).to_arrow_table()
        v_tab = cur.sql(_side_query("_variants", "vidx", g, conds["v"], v_keys, joins["v"])).to_arrow_table()
    finally:
        cur.close()
    s_idx = s_tab.column("_idx").to_numpy().astype(np.int64)
    v_idx = v_tab.column("_idx").to_numpy().astype(np.int64)
    if not (_unique(s_idx) and _unique(v_idx)):
        return None  # a joined table with several rows per sample/variant: row-wise path keeps SQL semantics
    s_groups, s_gid, ns = _canonical(*_group_ids(s_tab, [k[0] for k in s_keys]), by_key=True)
    v_groups, v_gid, nvg = _canonical(*_group_ids(v_tab, [k[0] for k in v_keys]), first_idx=v_idx)
    n_samples = backend.store.manifest.n_samples
    needed = tuple(sorted({c for _, kind in partials for c in _NEEDS[kind]}))
    limits.check_scan(len(v_idx) * len(s_idx))
    limits.check_rows(nvg * ns if keys else 1)
    # counts per variant and sample group, then per group pair: refused before it is allocated
    limits.reserve(8.0 * (len(v_idx) * max(ns, 1) * len(needed) + nvg * max(ns, 1) * (len(needed) + 4)) + ns * n_samples / 8,
                   "counting genotypes per variant and group")
    masks = (np.stack([pack_mask(s_idx[s_gid == i], n_samples) for i in range(ns)])
             if ns and len(s_idx) else np.zeros((0, 1), np.uint64))
    order = np.argsort(v_idx, kind="stable")
    all_v, gid_sorted = v_idx[order], v_gid[order]
    counts = (group_counts(backend.store.planes, all_v, masks, needed, complete=backend.store.complete)
              if len(masks) and len(all_v) else {})
    _LAST_COUNTS.set((id(backend.store.planes), all_v, masks, counts) if counts else None)
    agg = {k: _reduce(counts.get(k), gid_sorted, nvg, ns) for k in needed}
    v_sizes = np.bincount(v_gid, minlength=nvg).astype(np.int64)
    s_sizes = np.bincount(s_gid, minlength=ns).astype(np.int64) if ns else np.zeros(0, np.int64)
    if keys:
        vi, si = np.nonzero((v_sizes[:, None] > 0) & (s_sizes[None, :] > 0))
    else:  # a global aggregate: one row, even over nothing
        vi, si = np.zeros(1, np.int64), np.zeros(1, np.int64)
        if nvg == 0 or ns == 0 or not len(s_idx) or not len(v_idx):
            agg = {k: np.zeros((1, 1), np.int64) for k in needed}
            v_sizes = np.array([len(v_idx)], np.int64)
            s_sizes = np.array([len(s_idx) if len(v_idx) else 0], np.int64)
    a = {k: v[vi, si] for k, v in agg.items()}
    rows_v, rows_s = v_sizes[vi], s_sizes[si]
    called = a.get("called")
    cols: dict[str, pa.Array] = {}
    for name, side, _e in keys:
        src, take = (s_groups, si) if side == "s" else (v_groups, vi)
        cols[name] = src.column(name).take(pa.array(take))
    for name, kind in partials:
        cols[name] = _partial(kind, a, rows_v, rows_s, called)
    cols[N_COLUMN] = pa.array(np.where(rows_v > 0, rows_s, 0).astype(np.int64))
    return pa.table(cols)


def _reduce(counts: np.ndarray | None, gid_sorted: np.ndarray, n_groups: int, ns: int) -> np.ndarray:
    """Sum per-variant counts (rows in vidx order) into variant groups."""
    out = np.zeros((n_groups, ns), dtype=np.int64)
    if counts is None or not len(gid_sorted):
        return out
    if n_groups == len(gid_sorted):  # one variant per group
        out[gid_sorted] = counts
        return out
    by = np.argsort(gid_sorted, kind="stable")
    sizes = np.bincount(gid_sorted, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonempty = sizes > 0
    out[nonempty] = np.add.reduceat(counts[by], starts[nonempty], axis=0)
    return out


def _partial(kind: str, a: dict[str, np.ndarray], rows_v: np.ndarray, rows_s: np.ndarray, called: np.ndarray | None) -> pa.Array:
    nulls = called == 0 if called is not None else np.zeros(len(rows_v), bool)
    if kind == "count_star":
        return pa.array((rows_v * rows_s).astype(np.int64))
    if kind == "count_dosage":
        assert called is not None
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
    if kind == "hom_ref_count":
        return pa.array((a["diploid"] - a["het"] - a["alt2"]).astype(np.int64))
    if kind == "hom_alt_diploid_count":
        return pa.array(a["alt2"].astype(np.int64))
    if kind == "hom_alt_count":
        return pa.array((a["alt2"] + a["hap_alt"]).astype(np.int64))
    raise ValueError(kind)
