"""The embedded default backend: DuckDB over the node store, plus numpy genotype kernels.

Queries over ``samples``, ``variants`` and clinical tables run in DuckDB directly. Queries over
``genotypes`` are first offered to the count kernel (:mod:`.genokernel`), which answers genomic
aggregates grouped by sample and variant attributes from bit-packed planes without building a
row per genotype. Anything else gets the genotype rows of the variants its WHERE clause selects,
unpacked into Arrow and joined in DuckDB, bounded by ``max_genotype_cells``.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from ...genomics.kernels import genotype_rows
from ...genomics.store import NodeStore
from .. import limits
from ..errors import FragmentError, GenofedError
from ..fragment import Fragment
from ..keycodes import group_rows
from ..samplesets import SampleSets, _conjuncts
from ..schema import CORE_TABLES, GENOTYPE_VARIANT_COLUMNS
from ..sqlcheck import DIALECT
from .base import N_COLUMN, Backend
from .engine_errors import describe, translate_duckdb


def _zero_if_null(e: exp.Expression) -> exp.Expression:
    """COUNT_IF over no rows is NULL in DuckDB 2; a count of nothing is 0."""
    return exp.cast(exp.Coalesce(this=e, expressions=[exp.Literal.number(0)]), "BIGINT")


_GENOMIC_SQL = {
    "allele_count": lambda d, p: exp.Coalesce(this=exp.Sum(this=d), expressions=[exp.Literal.number(0)]),
    "allele_number": lambda d, p: exp.Coalesce(this=exp.Sum(this=p), expressions=[exp.Literal.number(0)]),
    "het_count": lambda d, p: _zero_if_null(exp.CountIf(this=exp.and_(exp.EQ(this=p, expression=exp.Literal.number(2)),
                                                        exp.EQ(this=d.copy(), expression=exp.Literal.number(1))))),
    "hom_ref_count": lambda d, p: _zero_if_null(exp.CountIf(this=exp.and_(exp.EQ(this=p, expression=exp.Literal.number(2)),
                                                            exp.EQ(this=d.copy(), expression=exp.Literal.number(0))))),
    "hom_alt_diploid_count": lambda d, p: _zero_if_null(exp.CountIf(this=exp.EQ(this=d, expression=exp.Literal.number(2)))),
    "hom_alt_count": lambda d, p: _zero_if_null(exp.CountIf(this=exp.and_(exp.EQ(this=d, expression=p),
                                                            exp.GT(this=d.copy(), expression=exp.Literal.number(0))))),
}

GENOTYPES_VIEW = (
    "CREATE OR REPLACE TEMP VIEW genotypes AS SELECT s.sample_id, v.variant_id, v.chrom, v.pos, "
    "v.ref, v.alt, g.dosage, g.phased, g.ploidy FROM _g AS g JOIN _sidx AS s ON g.sidx = s.sidx "
    "JOIN _variants AS v ON g.vidx = v.vidx"
)

# peak bytes per genotype on the row-wise path: unpacked planes, the long Arrow table, DuckDB's join
ROW_BYTES = 32


class DuckDBBackend(Backend):
    """DuckDB + numpy execution over a :class:`NodeStore`.

    Parameters
    ----------
    store
        The node store.
    max_genotype_cells
        Upper bound on samples × variants a row-wise genotype query may touch (the count kernel
        has no such bound: it streams).
    """

    name = "duckdb"

    def __init__(self, store: NodeStore, max_genotype_cells: int = 200_000_000):
        self.store = store
        self.max_genotype_cells = max_genotype_cells
        self._lock = threading.Lock()
        con = duckdb.connect(":memory:")
        samples = pq.read_table(store.samples_path)
        sidx = pa.table({
            "sidx": pa.array(np.arange(samples.num_rows, dtype=np.int32)),
            "sample_id": samples.column("sample_id"),
        })
        variants = pq.read_table(store.variants_path)
        con.register("_samples_arrow", samples)
        con.execute("CREATE TABLE samples AS SELECT * FROM _samples_arrow")
        con.unregister("_samples_arrow")
        con.register("_sidx_arrow", sidx)
        con.execute("CREATE TABLE _sidx AS SELECT * FROM _sidx_arrow")
        con.unregister("_sidx_arrow")
        con.register("_variants_arrow", variants)
        con.execute("CREATE TABLE _variants AS SELECT * FROM _variants_arrow")
        con.unregister("_variants_arrow")
        cols = ", ".join(CORE_TABLES["variants"])
        con.execute(f"CREATE VIEW variants AS SELECT {cols} FROM _variants")
        for name in store.manifest.clinical:
            con.register("_clin_arrow", pq.read_table(store.clinical_path(name)))
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _clin_arrow')
            con.unregister("_clin_arrow")
        self.con = con
        from .analysis import load_derived

        self.derived: list[str] = []
        self.analysis_cache: dict[tuple[str, str], Any] = {}  # samples/variants of recent analysis rounds
        for name, table in load_derived(store.path).items():
            if name not in CORE_TABLES and name not in store.manifest.clinical:
                self._register_derived(name, table)
        self._digest = hashlib.sha256("\n".join(variants.column("variant_id").to_pylist()).encode()).hexdigest()
        self._catalog = self._build_catalog()

    def _build_catalog(self) -> dict[str, Any]:
        tables: dict[str, dict[str, str]] = {}
        for t in ["samples", "variants", *self.store.manifest.clinical, *self.derived]:
            rows = self.con.execute(f'DESCRIBE "{t}"').fetchall()
            tables[t] = {r[0]: str(r[1]) for r in rows}
        tables["genotypes"] = dict(CORE_TABLES["genotypes"])
        return {"tables": tables, "variants_digest": self._digest}

    def catalog(self) -> dict[str, Any]:
        return self._catalog

    def _register_derived(self, name: str, table: pa.Table) -> None:
        with self._lock:
            self.con.register("_derived_arrow", table)
            self.con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _derived_arrow')
            self.con.unregister("_derived_arrow")
            if name not in self.derived:
                self.derived.append(name)

    def cache_analysis(self, key: tuple[str, str], value: Any) -> None:
        """Keep what an analysis round selected for its next rounds (a few entries)."""
        with self._lock:
            if len(self.analysis_cache) >= 16:
                self.analysis_cache.pop(next(iter(self.analysis_cache)))
            self.analysis_cache[key] = value

    def save_derived(self, name: str, table: pa.Table) -> None:
        """Keep a derived sample-level table (e.g. PCA scores) at this node, on disk and queryable."""
        from .analysis import write_derived

        if name in CORE_TABLES or name in self.store.manifest.clinical:
            raise FragmentError(f"cannot store results as {name!r}: a table of that name already exists; choose another name")
        write_derived(self.store.path, name, table)
        self._register_derived(name, table)
        self.analysis_cache.clear()
        self._catalog = self._build_catalog()

    # -- compile ---------------------------------------------------------------------------
    def compile(self, fragment: Fragment) -> str:
        sel = fragment.select.copy()

        def rewrite(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Anonymous) and node.name.lower() in _GENOMIC_SQL:
                d = node.expressions[0]
                p = exp.column("ploidy", table=d.table) if d.table else exp.column("ploidy")
                return _GENOMIC_SQL[node.name.lower()](d.copy(), p)
            return node

        sel = sel.transform(rewrite)
        n_expr: exp.Expression
        if fragment.sample_id is not None:
            n_expr = exp.Count(this=exp.Distinct(expressions=[fragment.sample_id.copy()]))
        else:
            n_expr = exp.cast(exp.Null(), "BIGINT")
        sel = sel.select(exp.alias_(n_expr, N_COLUMN), append=True)
        return sel.sql(DIALECT)

    # -- execute ---------------------------------------------------------------------------
    def execute(self, fragment: Fragment) -> pa.Table:
        from ..analysis import AnalysisFragment
        from .genokernel import try_kernel

        if isinstance(fragment, AnalysisFragment):
            from ...genomics.analyses import ANALYSES
            from .analysis import AnalysisData

            return ANALYSES[fragment.fn].node_round(fragment, AnalysisData(self, fragment))

        cur = self.con.cursor()
        try:
            if "genotypes" in fragment.tables:
                result = try_kernel(self, fragment)  # its sample and variant selections run in DuckDB too
                if result is not None:
                    return result
            sql = self.compile(fragment)
            if "genotypes" in fragment.tables:
                self._genotype_rows(fragment, cur, ", or use genomic aggregates grouped by sample and variant columns")
                limits.check()
            cap = limits.row_cap()
            if cap is not None:  # one group past the cap is enough to refuse; never materialise more
                sql = f"SELECT * FROM ({sql}) AS _capped LIMIT {cap + 1}"
            with limits.watch(cur):
                out = cur.sql(sql).to_arrow_table()
            limits.check_rows(out.num_rows)
            return out
        except duckdb.Error as e:  # never DuckDB's message: it quotes the operands (people's values)
            raise translate_duckdb(e, "run the fragment", fragment.select) from None
        finally:
            cur.close()

    def influence(self, fragment: Any) -> pa.Table | None:
        """Who can change each released value (disclosure rule 2): per group, for every partial
        ``SUM(x)`` / ``COUNT(x)``, the number of people whose contribution is non-null and
        non-zero (``_ni<j>``), the largest person's absolute contribution (``_mi<j>``) and the sum
        of people's absolute contributions (``_si<j>``), with the group's keys. A person's
        contribution is their own total over all their rows (joins cannot split one person into
        many small ones). None when the fragment has no such partial or reads no sample data."""
        from ..analysis import AnalysisFragment

        if isinstance(fragment, AnalysisFragment) or fragment.sample_id is None:
            return None
        sql = influence_sql(fragment)
        if sql is None:
            return None
        return self._side_query(fragment, sql)

    def key_branches(self, fragment: Any) -> list[int]:
        """The number of people taking each branch of a CASE, IF or comparison used as a group key
        (0 included): a key that splits off fewer than min_count people singles them out, by the
        group's existence or by its complement's size."""
        from ..analysis import AnalysisFragment

        if isinstance(fragment, AnalysisFragment) or fragment.sample_id is None or not fragment.keys:
            return []
        conds = [c for p in fragment.select.expressions if p.alias_or_name in fragment.keys for c in branch_conditions(p.unalias())]
        if not conds:
            return []
        q = fragment.select.copy()
        q.set("expressions", [exp.alias_(exp.Count(this=exp.Distinct(expressions=[exp.Case(ifs=[exp.If(
            this=c, true=fragment.sample_id.copy())])])), f"_kb{i}") for i, c in enumerate(conds)])
        q.set("group", None)
        t = self._side_query(fragment, q.sql(DIALECT))
        return [int(t.column(i)[0].as_py() or 0) for i in range(t.num_columns)] if t.num_rows else [0] * len(conds)

    def _side_query(self, fragment: Any, sql: str) -> pa.Table:
        """A disclosure-control query over the fragment's own rows (genotype rows registered as
        for the fragment), under the same limits."""
        cur = self.con.cursor()
        try:
            if "genotypes" in fragment.tables:
                self._genotype_rows(fragment, cur)
            with limits.watch(cur):
                return cur.sql(sql).to_arrow_table()
        except duckdb.Error as e:  # never DuckDB's message: it quotes the operands (people's values)
            raise translate_duckdb(e, "run the fragment", fragment.select) from None
        finally:
            cur.close()

    def _genotype_rows(self, fragment: Any, cur: duckdb.DuckDBPyConnection, hint: str = "") -> None:
        """Register the genotype rows of the variants a fragment selects as the ``genotypes``
        view on ``cur``, within the node's row-wise limit, scan limit and memory reservation."""
        vidx = self.variant_selection(fragment, cur)
        cells = len(vidx) * self.store.manifest.n_samples
        if cells > self.max_genotype_cells:
            raise FragmentError(
                f"the query would read {cells:,} genotypes row by row (this node's limit is "
                f"{self.max_genotype_cells:,}); restrict the variants with a WHERE on chrom, pos or variant_id{hint}")
        limits.check_scan(cells)
        limits.reserve(cells * ROW_BYTES, f"reading {cells:,} genotypes row by row")
        cur.register("_g", genotype_rows(self.store.planes, vidx, self.store.manifest.n_samples))
        cur.execute(GENOTYPES_VIEW)

    def result_schema(self, fragment: Fragment) -> pa.Schema:
        """The Arrow schema of a fragment's partials (the federated dialect's typing), computed
        over no genotype rows: other backends return their results in this schema."""
        sql = f"SELECT * FROM ({self.compile(fragment)}) AS _r LIMIT 0"
        cur = self.con.cursor()
        try:
            if "genotypes" in fragment.tables:
                cur.register("_g", genotype_rows(self.store.planes, np.zeros(0, np.int64), self.store.manifest.n_samples))
                cur.execute(GENOTYPES_VIEW)
            return cur.sql(sql).to_arrow_table().schema
        except duckdb.Error as e:
            raise translate_duckdb(e, "type the fragment", fragment.select) from None
        finally:
            cur.close()

    def sample_sets(self, fragment: Any) -> SampleSets | None:
        """The samples behind each sample-level group of a fragment (see
        :mod:`genofed.engine.samplesets`), or None when it reads no sample data."""
        from ..analysis import AnalysisFragment
        from ..samplesets import plan_sample_sets

        if isinstance(fragment, AnalysisFragment):
            if fragment.sample_sql is None:
                return None
            from .analysis import AnalysisData

            sidx = AnalysisData(self, fragment).samples.sidx
            a = fragment.args
            # the conditions that select an analysis's samples: its filter, and a value for the
            # phenotype and every covariate (missing values drop the sample)
            base = [f"samples => {a['samples']}"] if a.get("samples") else []
            base += [f"{e} IS NOT NULL" for e in [a.get("phenotype"), *(a.get("covariates") or [])] if e]
            return SampleSets([], [()], [np.asarray(sidx, np.int64)], sorted(set(base)))
        plan = plan_sample_sets(fragment.select, list(fragment.keys), fragment.sample_id)
        if plan is None:
            return None
        sql = (f"SELECT _t.*, _sidx.sidx AS _sidx FROM ({plan.select.sql(DIALECT)}) AS _t "
               "JOIN _sidx ON _t._sid = _sidx.sample_id")
        cur = self.con.cursor()
        try:
            if "genotypes" in fragment.tables:
                vidx = self.variant_selection(fragment, cur)
                if not plan.genotype_values:
                    vidx = vidx[:1]  # who is counted does not depend on which variant
                elif len(vidx) * self.store.manifest.n_samples > self.max_genotype_cells:
                    raise FragmentError("the query's sample set depends on genotype values over more variants than this node's "
                                        "row-wise limit; restrict the variants with a WHERE on chrom, pos or variant_id")
                cur.register("_g", genotype_rows(self.store.planes, vidx, self.store.manifest.n_samples))
                cur.execute(GENOTYPES_VIEW)
            with limits.watch(cur):
                t = cur.sql(sql).to_arrow_table()
        except duckdb.Error as e:
            raise translate_duckdb(e, "compute the query's sample set", fragment.select) from None
        finally:
            cur.close()
        sidx_all = t.column("_sidx").to_numpy().astype(np.int64)
        if not plan.keys:
            return SampleSets([], [()], [np.unique(sidx_all)], plan.base)
        grouped, rows = group_rows(t, plan.keys)
        cells = list(zip(*[grouped.column(k).to_pylist() for k in plan.keys], strict=True))
        members = [np.unique(sidx_all[r]) for r in rows]
        return SampleSets(plan.keys, cells, members, plan.base, plan.key_sql)

    def variant_selection(self, fragment: Fragment, cur: duckdb.DuckDBPyConnection | None = None) -> np.ndarray:
        """Variant rows (vidx) the fragment's genotype references can touch, from its WHERE clauses."""
        conds = variant_conditions(fragment.select)
        n = self.store.manifest.n_variants
        if conds is None:
            return np.arange(n, dtype=np.int64)
        where = exp.or_(*conds) if len(conds) > 1 else conds[0]
        q = exp.select("vidx").from_(exp.to_table("_variants").as_("_v")).where(where).order_by("vidx")
        con = cur or self.con.cursor()
        try:
            tbl = con.sql(q.sql(DIALECT)).to_arrow_table()
        except duckdb.Error as e:
            raise translate_duckdb(e, "select the fragment's variants", fragment.select) from None
        finally:
            if cur is None:
                con.close()
        return tbl.column("vidx").to_numpy().astype(np.int64)

    def close(self) -> None:
        self.con.close()
        self.store.close()


def _out_of_memory() -> limits.ResourceLimitError:
    return limits.ResourceLimitError(
        "the fragment needed more memory than this node allows (DuckDB's memory limit); narrow the query (fewer "
        "variants or groups) or ask the data steward to raise [limits] memory_mb", "memory_limit")


def _first_line(e: Exception) -> str:
    """A value-free description of an engine error (its kind and class), never its message: DuckDB
    quotes the operands. Prefer :func:`.engine_errors.translate_duckdb`, which also names the
    construct and the columns."""
    return describe(e)


def variant_conditions(select: exp.Select) -> list[exp.Expression] | None:
    """For each reference to ``genotypes``, the conjunction of its variant-only WHERE conditions
    (qualified by ``_v``); None when some reference is unrestricted."""
    conds: list[exp.Expression] = []
    for table in select.find_all(exp.Table):
        if table.name != "genotypes":
            continue
        sel = table.find_ancestor(exp.Select)
        if sel is None:
            return None
        aliases = {table.alias_or_name}
        for j in sel.args.get("joins") or []:
            if isinstance(j.this, exp.Table) and j.this.name == "variants" and (j.args.get("kind") or "") == "":
                aliases.add(j.this.alias_or_name)
        frm = sel.args.get("from_") or sel.args.get("from")
        if frm is not None and isinstance(frm.this, exp.Table) and frm.this.name == "variants":
            aliases.add(frm.this.alias_or_name)
        where = sel.args.get("where")
        picked = []
        if where is not None:
            for c in _conjuncts(where.this):
                if _variant_only(c, aliases):
                    picked.append(_requalify(c))
        if not picked:
            return None
        conds.append(exp.and_(*picked) if len(picked) > 1 else picked[0])
    return conds or None


def _variant_only(e: exp.Expression, aliases: set[str]) -> bool:
    if any(isinstance(n, (exp.Select, exp.Subquery)) for n in e.walk()):
        return False
    cols = list(e.find_all(exp.Column))
    return bool(cols) and all(c.table in aliases and c.name in GENOTYPE_VARIANT_COLUMNS for c in cols)


def _requalify(e: exp.Expression) -> exp.Expression:
    e = e.copy()
    for c in e.find_all(exp.Column):
        c.set("table", exp.to_identifier("_v"))
    return e


__all__ = ["DuckDBBackend", "GenofedError"]


def influence_partials(fragment: Fragment) -> dict[str, exp.Expression]:
    """The partials whose value people can weigh: ``SUM(x)`` and ``COUNT(x)`` (not ``COUNT(*)``,
    ``COUNT(DISTINCT sample_id)``, MIN/MAX), by output name. An argument that reads genotype
    values and nothing else (``SUM(dosage)``, ``COUNT(CASE WHEN dosage = 1 THEN 1 END)``) is an
    allele or genotype count, whatever its spelling: like ``allele_count(dosage)`` it falls under
    the per-variant rules (the membership gate), not this one."""
    out: dict[str, exp.Expression] = {}
    for p in fragment.select.expressions:
        body = p.unalias()
        if p.alias_or_name not in fragment.partials:
            continue
        if isinstance(body, exp.Sum) or (isinstance(body, exp.Count) and not isinstance(body.this, (exp.Star, exp.Distinct))
                                         and body.this is not None):
            cols = list(body.find_all(exp.Column))
            if cols and all(c.name in ("dosage", "ploidy", "phased") for c in cols):
                continue
            out[p.alias_or_name] = body
    return out


def genotype_valued(body: exp.Expression) -> bool:
    """Whether an aggregate's values (outside its CASE/IF conditions) are genotype values only:
    ``SUM(CASE WHEN p.t2d = 1 THEN g.dosage END)`` is an allele count among cases, like
    ``allele_count(dosage) ... WHERE t2d = 1``. Its branches are groups of people (counted), its
    carriers are the per-variant rules' business (the membership gate), not a weighted sum's."""
    conds: set[int] = set()
    for node in body.find_all(exp.If):
        conds |= {id(n) for n in node.this.walk()}
    values = [c for c in body.find_all(exp.Column) if id(c) not in conds]
    return bool(values) and all(c.name in ("dosage", "ploidy", "phased") for c in values)


def branch_conditions(body: exp.Expression) -> list[exp.Expression]:
    """The branches an aggregate's argument weighs people by: each WHEN of a CASE (and its ELSE
    when it has one), both outcomes of an IF, and both outcomes of a comparison used as a value
    (``CAST(age = 34 AS INT)``). The people taking each branch are counted like a group: one
    person alone in a branch of ``CASE WHEN <who> THEN outcome ELSE 1 END`` is singled out
    however the other branches pad the sum. NULL tests (``x IS NOT NULL``, which the planner
    uses to pair columns) do not weigh anyone."""
    false = exp.false()

    def cond(c: exp.Expression) -> exp.Expression:
        return exp.Coalesce(this=c.copy(), expressions=[false.copy()])

    def null_test(c: exp.Expression) -> bool:
        return all(isinstance(n, (exp.Is, exp.Not, exp.And, exp.Or, exp.Paren, exp.Column, exp.Null))
                   for n in c.walk()) and any(isinstance(n, exp.Is) for n in c.walk())

    out: list[exp.Expression] = []
    inside: set[int] = set()
    for case in body.find_all(exp.Case):
        prev: list[exp.Expression] = []
        for f in case.args.get("ifs") or []:
            for n in f.this.walk():
                inside.add(id(n))
            if null_test(f.this):
                continue
            c = cond(f.this)
            out.append(exp.and_(*(exp.Not(this=p.copy()) for p in prev), c) if prev else c)
            prev.append(c)
        if case.args.get("default") is not None and prev:
            out.append(exp.Not(this=exp.or_(*(p.copy() for p in prev))))
    for f in body.find_all(exp.If):
        if isinstance(f.parent, exp.Case):
            continue
        for n in f.this.walk():
            inside.add(id(n))
        if not null_test(f.this):
            out += [cond(f.this), exp.Not(this=cond(f.this))]
    for p in body.find_all(exp.Predicate):
        if id(p) in inside or null_test(p) or isinstance(p.parent, exp.Predicate):
            continue
        out += [cond(p), exp.Not(this=cond(p))]
    return out


def influence_sql(fragment: Fragment) -> str | None:
    """The per-person two-level query of :meth:`DuckDBBackend.influence` (built from the
    fragment's own FROM/WHERE/GROUP BY as sqlglot expressions), or None when not needed."""
    targets = influence_partials(fragment)
    if not targets or fragment.sample_id is None:
        return None
    inner = fragment.select.copy()
    keys = [p for p in inner.expressions if p.alias_or_name in fragment.keys]
    group = list(inner.args["group"].expressions) if inner.args.get("group") else []
    projections = [k.copy() for k in keys] + [exp.alias_(fragment.sample_id.copy(), "_sid")]
    projections += [exp.alias_(body.copy(), f"_c{i}") for i, body in enumerate(targets.values())]
    branches = {name: branch_conditions(body) for name, body in targets.items()}
    for i, conds in enumerate(branches.values()):
        projections += [exp.alias_(exp.func("BOOL_OR", c), f"_b{i}_{m}") for m, c in enumerate(conds)]
    inner.set("expressions", projections)
    inner.set("group", exp.Group(expressions=[*(g.copy() for g in group), fragment.sample_id.copy()]))
    outer_cols: list[exp.Expression] = [exp.column(k) for k in fragment.keys]
    for i, (name, body) in enumerate(targets.items()):
        c = exp.column(f"_c{i}")
        present = exp.Not(this=exp.Is(this=c.copy(), expression=exp.Null()))
        j = name[2:]
        if genotype_valued(body):  # people with a call in the branch; no weighing, no dominance
            outer_cols += [exp.alias_(exp.CountIf(this=present), f"_ni{j}"),
                           exp.alias_(exp.cast(exp.Null(), "DOUBLE"), f"_mi{j}"),
                           exp.alias_(exp.cast(exp.Null(), "DOUBLE"), f"_si{j}")]
        else:
            nonzero = exp.and_(present, exp.NEQ(this=c.copy(), expression=exp.Literal.number(0)))
            outer_cols += [
                exp.alias_(exp.CountIf(this=nonzero), f"_ni{j}"),
                exp.alias_(exp.Max(this=exp.Abs(this=exp.cast(c.copy(), "DOUBLE"))), f"_mi{j}"),
                exp.alias_(exp.Sum(this=exp.Abs(this=exp.cast(c.copy(), "DOUBLE"))), f"_si{j}"),
            ]
        outer_cols += [exp.alias_(exp.CountIf(this=exp.column(f"_b{i}_{m}")), f"_ni{j}_{m + 1}")
                       for m in range(len(branches[name]))]
    outer = exp.select(*outer_cols).from_(exp.alias_(exp.Subquery(this=inner), "_per_person", table=True))
    if fragment.keys:
        outer = outer.group_by(*(exp.column(k) for k in fragment.keys))
    return outer.sql(DIALECT)
