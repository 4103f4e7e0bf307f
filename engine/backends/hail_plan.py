"""Compile a validated fragment (a sqlglot SELECT) into a Hail plan.

Two compilations, chosen by the fragment's shape (as the DuckDB backend chooses its count kernel):

* **matrix**: genomic aggregates over ``genotypes`` grouped by sample columns and variant columns
  (the common case: allele frequencies by population, call rates, carrier counts). Samples are
  grouped on the MatrixTable's columns (``group_cols_by``), variants filtered and keyed on its
  rows, so no row per genotype is ever built and Hail streams the entries partition by partition.
* **relational**: everything else. Each source becomes a Hail Table (``genotypes`` is the entries
  table of the rows its WHERE selects); joined sample- and variant-level tables are broadcast
  (collected once and looked up by key, so a join never shuffles the genotypes); WHERE filters;
  GROUP BY is ``Table.group_by().aggregate()`` and a global aggregate one struct.

Expressions are compiled by :mod:`.hail_exprs`; anything it lacks raises
:class:`~.hail_exprs.UnsupportedByBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sqlglot import exp

from ..errors import FragmentError
from ..fragment import Fragment
from ..protocol import N_COLUMN
from ..samplesets import _conjuncts
from ..schema import CORE_TABLES, GENOTYPE_VARIANT_COLUMNS, SAMPLE_ID
from ..sqlcheck import DIALECT
from .hail_exprs import Ctx, UnsupportedByBackend, hx, unsupported

MAX_BROADCAST_ROWS = 5_000_000


@dataclass
class HailTables:
    """The node's data as Hail objects."""

    mt: Any  # genotypes MatrixTable (rows: vidx + variant columns; cols: sample_id)
    tables: dict[str, Any]  # samples, variants and clinical/derived tables by name


@dataclass
class Rel:
    """A relation under compilation: a Hail Table and which field holds each (alias, column)."""

    ht: Any
    columns: dict[tuple[str, str], str]
    streams_genotypes: bool = False
    variant_fields: dict[str, dict[str, str]] = field(default_factory=dict)  # genotypes alias -> its variant's columns


@dataclass
class HailPlan:
    """An executable plan: a grouped Table, or a global aggregate (a struct expression)."""

    table: Any = None
    struct: Any = None
    decode: dict[str, Any] = field(default_factory=dict)  # column -> Python function on raw values
    kind: str = "relational"


class Compiler:
    """Compiles fragments against one node's Hail tables."""

    def __init__(self, hl: ModuleType, data: HailTables):
        self.hl = hl
        self.data = data
        self._n = 0
        self._static = frozenset(data.tables)  # converted once; derived tables may be replaced later
        self._sample_sides: dict[tuple, tuple[list[tuple], dict[str, int]] | None] = {}

    def _name(self, alias: str, col: str) -> str:
        self._n += 1
        return f"{alias}__{col}__{self._n}"

    # -- entry point ----------------------------------------------------------------------
    def fragment(self, frag: Fragment) -> HailPlan:
        if "genotypes" in frag.tables:
            plan = self.matrix(frag)
            if plan is not None:
                return plan
        return self.select(frag.select, {}, sample_id=frag.sample_id, top=True)  # type: ignore[return-value]

    # -- relational -----------------------------------------------------------------------
    def select(self, sel: exp.Select, ctes: dict[str, exp.Expression], *, sample_id: exp.Column | None = None,
               top: bool = False) -> Rel | HailPlan:
        hl = self.hl
        for arg in ("order", "limit", "offset", "having", "qualify"):
            if sel.args.get(arg) is not None:
                raise unsupported(f"{arg.upper()} inside a subquery")
        with_ = sel.args.get("with_") or sel.args.get("with")
        if with_ is not None:
            ctes = dict(ctes)
            for cte in with_.expressions:
                ctes[cte.alias_or_name] = cte.this
        rel, pending = self.sources(sel, ctes)
        conds = pending + (_conjuncts(sel.args["where"].this) if sel.args.get("where") is not None else [])
        ctx = self.ctx(rel, ctes)
        if conds:
            rel.ht = rel.ht.filter(hx(exp.and_(*[c.copy() for c in conds]), ctx))
            ctx = self.ctx(rel, ctes)
        projections = [(p.alias_or_name, p.unalias()) for p in sel.expressions]
        group = [g for g in (sel.args["group"].expressions if sel.args.get("group") else [])]
        aggregating = bool(group) or any(_has_aggregate(e) for _, e in projections)
        if not aggregating:
            if top:
                raise FragmentError("a fragment must aggregate")
            out = rel.ht.select(**{self._name("", n): hx(e, ctx) for n, e in projections})
            fields = list(out.row)
            cols = {("", n): f for (n, _), f in zip(projections, fields, strict=True)}
            if sel.args.get("distinct"):
                out = out.key_by(*fields).distinct().key_by()
            return Rel(out, cols, rel.streams_genotypes)
        group_sql = {g.sql(DIALECT): i for i, g in enumerate(group)}
        keys: dict[str, Any] = {}
        key_of: dict[int, str] = {}
        for n, e in projections:
            i = group_sql.get(e.sql(DIALECT))
            if i is not None and i not in key_of:
                keys[n] = hx(e, ctx)
                key_of[i] = n
        for i, g in enumerate(group):
            if i not in key_of:
                keys[f"_g{i}"] = hx(g, ctx)
        actx = ctx.agg()
        aggs = {n: hx(e, actx) for n, e in projections if n not in keys}
        if top:
            aggs[N_COLUMN] = self._n_samples(sample_id, actx)
        if not group:
            return HailPlan(struct=rel.ht.aggregate(hl.struct(**aggs), _localize=False)) if top else \
                self._global_rel(rel, aggs, projections)
        out = rel.ht.group_by(**keys).aggregate(**aggs)
        out = out.key_by().select(*[n for n, _ in projections], *([N_COLUMN] if top else []))
        if top:
            return HailPlan(table=out)
        renamed = {n: self._name("", n) for n, _ in projections}
        out = out.rename(renamed)
        return Rel(out, {("", n): renamed[n] for n, _ in projections})

    def _global_rel(self, rel: Rel, aggs: dict[str, Any], projections: list[tuple[str, exp.Expression]]) -> Rel:
        hl = self.hl
        value = rel.ht.aggregate(hl.struct(**aggs))
        names = {n: self._name("", n) for n, _ in projections}
        ht = hl.Table.parallelize([{names[n]: value[n] for n in names}],
                                  hl.tstruct(**{names[n]: aggs[n].dtype for n in names}))
        return Rel(ht, {("", n): names[n] for n in names})

    def _n_samples(self, sample_id: exp.Column | None, actx: Ctx) -> Any:
        hl = self.hl
        if sample_id is None:
            return hl.missing(hl.tint64)
        v = hx(sample_id, actx)
        return hl.int64(hl.len(hl.agg.filter(hl.is_defined(v), hl.agg.collect_as_set(v))))

    def ctx(self, rel: Rel, ctes: dict[str, exp.Expression]) -> Ctx:
        cols = {k: rel.ht[f] for k, f in rel.columns.items()}
        return Ctx(self.hl, cols, subquery=lambda q: self.values(q, ctes))

    def values(self, query: exp.Expression, ctes: dict[str, exp.Expression]) -> tuple[set, bool]:
        """The values of a one-column subquery (for IN), collected: a semi-join by broadcast."""
        body = query.this if isinstance(query, exp.Subquery) else query
        if not isinstance(body, exp.Select) or len(body.expressions) != 1:
            raise unsupported("IN with a subquery that is not a one-column SELECT")
        rel = self.select(body, ctes)
        assert isinstance(rel, Rel)
        (f,) = rel.columns.values()
        vals = rel.ht.aggregate(self.hl.agg.collect_as_set(rel.ht[f]))
        return {v for v in vals if v is not None}, None in vals

    def sources(self, sel: exp.Select, ctes: dict[str, exp.Expression]) -> tuple[Rel, list[exp.Expression]]:
        """FROM and JOINs as one relation; returns it and the join conditions still to apply."""
        frm = sel.args.get("from_") or sel.args.get("from")
        if frm is None:
            raise unsupported("a SELECT without FROM")
        joins = list(sel.args.get("joins") or [])
        for j in joins:
            if j.args.get("using"):
                raise unsupported("JOIN ... USING (qualified fragments use ON)")
            if (j.args.get("kind") or "").upper() not in ("", "INNER") or (j.args.get("side") or "").upper() not in ("", "LEFT"):
                raise unsupported(f"{j.args.get('side') or ''} {j.args.get('kind') or ''} JOIN".strip())
        items = [(frm.this, None)] + [(j.this, j) for j in joins]
        inner = all(not j.args.get("side") for j in joins)
        if inner:  # stream the genotypes (the large side); broadcast the rest
            items.sort(key=lambda it: 0 if self._reads_genotypes(it[0], ctes) else 1)
        pool: list[exp.Expression] = []
        if inner:
            for j in joins:
                if j.args.get("on") is not None:
                    pool += _conjuncts(j.args["on"])
        where = sel.args.get("where")
        rel = self.source(items[0][0], ctes, _conjuncts(where.this) if where is not None else [])
        aliases = {items[0][0].alias_or_name}
        for src, j in items[1:]:
            alias = src.alias_or_name
            if self._variants_of_genotypes(rel, src, j, pool if inner else None, aliases):
                aliases.add(alias)
                continue
            right = self.source(src, ctes, [])
            if right.streams_genotypes:
                raise unsupported("a join of two genotype relations")
            conds = pool if inner else _conjuncts(j.args["on"]) if j is not None and j.args.get("on") is not None else []
            eq: list[Any] = []
            rest: list[Any] = []
            for c in conds:
                pair = _equi(c, aliases, alias)
                (eq if pair else rest).append(pair or c)
            if not eq:
                raise unsupported("a join without an equality between the joined tables")
            if inner:
                pool = [c for c in pool if _equi(c, aliases, alias) is None]
            elif rest:
                raise unsupported("a LEFT JOIN with a condition other than equalities")
            rel = self.broadcast_join(rel, right, eq, left_join=not inner)
            aliases.add(alias)
        return rel, pool

    def _variants_of_genotypes(self, rel: Rel, src: exp.Expression, j: exp.Join | None, pool: list[exp.Expression] | None,
                               aliases: set[str]) -> bool:
        """``JOIN variants v ON g.variant_id = v.variant_id`` onto genotypes: v's columns are the
        genotype rows' own variant fields (no broadcast of the variant table)."""
        if not (isinstance(src, exp.Table) and src.name == "variants" and rel.variant_fields):
            return False
        alias = src.alias_or_name
        conds = pool if pool is not None else (_conjuncts(j.args["on"]) if j is not None and j.args.get("on") is not None else [])
        if pool is None and len(conds) != 1:
            return False  # a LEFT JOIN with more conditions keeps its general form
        for c in conds:
            pair = _equi(c, set(rel.variant_fields), alias)
            if pair and pair[0].name == "variant_id" and pair[1].name == "variant_id":
                vf = rel.variant_fields[pair[0].table]
                rel.columns.update({(alias, col): f for col, f in vf.items()})
                if pool is not None:
                    pool.remove(c)
                return True
        return False

    def _reads_genotypes(self, src: exp.Expression, ctes: dict[str, exp.Expression]) -> bool:
        if isinstance(src, exp.Table):
            if src.name in ctes:
                return any(t.name == "genotypes" for t in ctes[src.name].find_all(exp.Table)) and not _has_group(ctes[src.name])
            return src.name == "genotypes"
        return any(t.name == "genotypes" for t in src.find_all(exp.Table)) and not _has_group(src)

    def source(self, src: exp.Expression, ctes: dict[str, exp.Expression], where: list[exp.Expression]) -> Rel:
        alias = src.alias_or_name
        if isinstance(src, exp.Table):
            if src.name in ctes:
                return self._aliased(self.select(ctes[src.name], ctes), alias)
            if src.name == "genotypes":
                return self.genotypes(alias, [c for c in where if _only_variant_columns(c, alias)])
            return self.base_table(src.name, alias)
        if isinstance(src, exp.Subquery) and isinstance(src.this, exp.Select):
            return self._aliased(self.select(src.this, ctes), alias)
        raise unsupported(f"the source {src.sql(DIALECT)[:60]}")

    def _aliased(self, rel: Rel | HailPlan, alias: str) -> Rel:
        if not isinstance(rel, Rel):
            raise unsupported("a global aggregate as a source")
        return Rel(rel.ht, {(alias, c): f for (_, c), f in rel.columns.items()}, rel.streams_genotypes)

    def base_table(self, name: str, alias: str) -> Rel:
        if name not in self.data.tables:
            raise FragmentError(f"unknown table {name!r} at this node")
        ht = self.data.tables[name].key_by()
        fields = [f for f in ht.row if not f.startswith("_") and f != "vidx"]
        names = {f: self._name(alias, f) for f in fields}
        out = ht.select(**{names[f]: ht[f] for f in fields})
        return Rel(out, {(alias, f): names[f] for f in fields})

    def genotypes(self, alias: str, variant_conds: list[exp.Expression]) -> Rel:
        hl = self.hl
        mt = self.data.mt
        if variant_conds:
            rctx = Ctx(hl, {(alias, c): mt[c] for c in GENOTYPE_VARIANT_COLUMNS})
            mt = mt.filter_rows(hx(exp.and_(*[c.copy() for c in variant_conds]), rctx))
        ent = mt.entries().key_by()
        cols = list(CORE_TABLES["genotypes"])
        names = {c: self._name(alias, c) for c in cols}
        extra = {c: self._name(alias, f"variant_{c}") for c in CORE_TABLES["variants"] if c not in names}
        out = ent.select(**{names[c]: ent[c] for c in cols}, **{f: ent[c] for c, f in extra.items()})
        vf = {c: names.get(c) or extra[c] for c in CORE_TABLES["variants"]}
        return Rel(out, {(alias, c): names[c] for c in cols}, streams_genotypes=True, variant_fields={alias: vf})

    def broadcast_join(self, left: Rel, right: Rel, eq: list[tuple[exp.Column, exp.Column]], left_join: bool) -> Rel:
        """Join a small relation onto the streamed one by looking rows up in a literal dict."""
        hl = self.hl
        lctx = self.ctx(left, {})
        lkeys = [hx(a, lctx) for a, _ in eq]
        rfields = [right.columns[(b.table, b.name)] for _, b in eq]
        rows = right.ht.collect()
        if len(rows) > MAX_BROADCAST_ROWS:
            raise unsupported(f"a join with a table of more than {MAX_BROADCAST_ROWS:,} rows")
        row_t = right.ht.row.dtype
        key_t = hl.ttuple(*[right.ht[f].dtype for f in rfields])
        lookup: dict[tuple, list] = {}
        for r in rows:
            k = tuple(r[f] for f in rfields)
            if None not in k:
                lookup.setdefault(k, []).append(r)
        table = hl.literal(lookup, dtype=hl.tdict(key_t, hl.tarray(row_t)))
        lk = hl.tuple([_cast_to(hl, x, t) for x, t in zip(lkeys, key_t.types, strict=True)])
        matches = table.get(lk)
        if left_join:
            matches = hl.or_else(matches, hl.array([hl.missing(row_t)]))
        ht = left.ht.annotate(_m=matches)
        if not left_join:
            ht = ht.filter(hl.is_defined(ht._m))
        ht = ht.explode("_m")
        ht = ht.annotate(**{f: ht._m[f] for f in right.ht.row}).drop("_m")
        return Rel(ht, {**left.columns, **right.columns}, left.streams_genotypes, left.variant_fields)

    # -- matrix ---------------------------------------------------------------------------
    def matrix(self, frag: Fragment) -> HailPlan | None:
        """Genomic aggregates grouped by sample and variant columns, on the MatrixTable."""
        from .genokernel import _analyse, _NotKernel

        try:
            g, conds, keys, partials, joins = _analyse(frag)
        except _NotKernel:
            return None
        hl = self.hl
        mt = self.data.mt
        v_aliases = {j.this.alias_or_name for j in joins["v"]}
        for j in joins["v"]:
            pair = _equi(j.args.get("on"), {g}, j.this.alias_or_name) if j.args.get("on") is not None else None
            if pair is None or pair[0].name != "variant_id" or pair[1].name != "variant_id":
                return None
        s_keys = [(n, e) for n, side, e in keys if side == "s"]
        side_key = (g, tuple(j.sql() for j in joins["s"]), tuple(c.sql() for c in conds["s"]),
                    tuple((n, e.sql()) for n, e in s_keys))
        cacheable = all(isinstance(j.this, exp.Table) and j.this.name in self._static for j in joins["s"])
        if cacheable and side_key in self._sample_sides:
            cached = self._sample_sides[side_key]
        else:
            cached = self._sample_side(g, joins, conds, s_keys)
            if cacheable:
                self._sample_sides[side_key] = cached
        if cached is None:
            return None
        group_list, member = cached

        # variant side: row fields of the MatrixTable
        def vctx(m: Any) -> Ctx:
            vcols = {(g, c): m[c] for c in GENOTYPE_VARIANT_COLUMNS}
            for a in v_aliases:
                vcols.update({(a, c): m[c] for c in CORE_TABLES["variants"]})
            return Ctx(hl, vcols)

        if conds["v"]:
            mt = mt.filter_rows(hx(exp.and_(*[c.copy() for c in conds["v"]]), vctx(mt)))
        v_keys = [(n, e) for n, side, e in keys if side == "v"]
        if v_keys:
            ctx_v = vctx(mt)
            mt = mt.annotate_rows(**{n: hx(e, ctx_v) for n, e in v_keys})
        mt = mt.annotate_cols(_grp=hl.literal(member, dtype=hl.tdict(hl.tstr, hl.tint32)).get(mt.sample_id))
        mt = mt.filter_cols(hl.is_defined(mt._grp))
        d, p = mt.dosage, mt.ploidy
        cell = {"_c_n": hl.agg.count(), "_c_called": hl.agg.count_where(hl.is_defined(d))}
        for name, kind in partials:
            cell[f"_c{name}"] = _entry_agg(hl, kind, d, p)
        grouped = mt.group_cols_by(mt._grp).aggregate(**cell)
        ent = grouped.entries()
        final = {N_COLUMN: hl.int64(hl.or_else(hl.agg.max(ent._c_n), 0))}
        called = hl.agg.sum(ent._c_called)
        for name, kind in partials:
            if kind in ("count_samples",):
                final[name] = hl.int64(hl.or_else(hl.agg.max(ent[f"_c{name}"]), 0))
            elif kind in ("sum_dosage", "sum_dosage_sq"):
                final[name] = hl.or_missing(called > 0, hl.agg.sum(ent[f"_c{name}"]))
            else:
                final[name] = hl.int64(hl.agg.sum(ent[f"_c{name}"]))
        decode = {n: (lambda i, k=k: None if i is None else group_list[i][k]) for k, (n, _) in enumerate(s_keys)}
        if not keys:
            return HailPlan(struct=ent.aggregate(hl.struct(**final), _localize=False), kind="matrix")
        out = ent.group_by(_grp=ent._grp, **{n: ent[n] for n, _ in v_keys}).aggregate(**final).key_by()
        out = out.annotate(**{n: out._grp for n, _ in s_keys}).drop("_grp")  # group index, decoded on collect
        return HailPlan(table=out, decode=decode, kind="matrix")

    def _sample_side(self, g: str, joins: dict[str, list], conds: dict[str, list],
                     s_keys: list[tuple[str, exp.Expression]]) -> tuple[list[tuple], dict[str, int]] | None:
        """The sample side of a matrix plan: each sample's group (its sample-level keys), by
        collecting the columns table joined with the sample-level tables and filtered. Small (one
        row per sample), and the same for every fragment with the same sample side, so the
        compiler keeps it (the converted tables never change under it)."""
        mt = self.data.mt
        # sample side: the columns table joined with sample-level tables, filtered, keyed
        cols = mt.cols().key_by()
        sid_field = self._name(g, SAMPLE_ID)
        rel = Rel(cols.select(**{sid_field: cols.sample_id}), {(g, SAMPLE_ID): sid_field})
        for j in joins["s"]:
            right = self.source(j.this, {}, [])
            on = _conjuncts(j.args["on"]) if j.args.get("on") is not None else []
            eq = [p for p in (_equi(c, {g} | {a for a, _ in rel.columns}, j.this.alias_or_name) for c in on) if p]
            if len(eq) != len(on) or not eq:
                return None
            rel = self.broadcast_join(rel, right, eq, left_join=False)
        ctx = self.ctx(rel, {})
        if conds["s"]:
            rel.ht = rel.ht.filter(hx(exp.and_(*[c.copy() for c in conds["s"]]), ctx))
            ctx = self.ctx(rel, {})
        side = rel.ht.select(_sid=rel.ht[sid_field], **{n: hx(e, ctx) for n, e in s_keys}).collect()
        sids = [r["_sid"] for r in side]
        if len(set(sids)) != len(sids):
            return None  # a joined table with several rows per sample: the relational plan keeps SQL semantics
        groups: dict[tuple, int] = {}
        member: dict[str, int] = {}
        for r in side:
            member[r["_sid"]] = groups.setdefault(tuple(r[n] for n, _ in s_keys), len(groups))
        return list(groups), member


def _entry_agg(hl: ModuleType, kind: str, d: Any, p: Any) -> Any:
    from .hail_exprs import genomic_aggregate

    if kind in ("count_star", "count_samples"):
        return hl.agg.count()
    if kind == "count_dosage":
        return hl.agg.count_where(hl.is_defined(d))
    if kind == "sum_dosage":
        return hl.agg.sum(hl.int64(d))
    if kind == "sum_dosage_sq":
        return hl.agg.sum(hl.int64(d * d))
    return genomic_aggregate(hl, kind, d, p)


def _cast_to(hl: ModuleType, x: Any, t: Any) -> Any:
    if x.dtype == t:
        return x
    if t == hl.tint64:
        return hl.int64(x)
    if t == hl.tint32:
        return hl.int32(x)
    if t == hl.tfloat64:
        return hl.float64(x)
    if t == hl.tstr:
        return hl.str(x)
    raise UnsupportedByBackend(f"the hail backend cannot join {x.dtype} with {t}")


def _equi(c: exp.Expression, left: set[str], right: str) -> tuple[exp.Column, exp.Column] | None:
    """``(left column, right column)`` when ``c`` is an equality between the two sides."""
    if not (isinstance(c, exp.EQ) and isinstance(c.this, exp.Column) and isinstance(c.expression, exp.Column)):
        return None
    a, b = c.this, c.expression
    if a.table in left and b.table == right:
        return a, b
    if b.table in left and a.table == right:
        return b, a
    return None


def _only_variant_columns(c: exp.Expression, alias: str) -> bool:
    if any(isinstance(n, (exp.Select, exp.Subquery)) for n in c.walk()):
        return False
    cols = list(c.find_all(exp.Column))
    return bool(cols) and all(x.table == alias and x.name in GENOTYPE_VARIANT_COLUMNS for x in cols)


def _has_aggregate(e: exp.Expression) -> bool:
    from ..sqlcheck import is_aggregate

    return any(is_aggregate(n) for n in e.walk())


def _has_group(e: exp.Expression) -> bool:
    body = e.this if isinstance(e, exp.Subquery) else e
    return isinstance(body, exp.Select) and (body.args.get("group") is not None or any(_has_aggregate(p) for p in body.expressions))
