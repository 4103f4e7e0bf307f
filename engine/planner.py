"""Plan a qualified query into a node fragment and a combine/finalize step.

The fragment computes mergeable partials per group (``_k0..`` key columns, ``_p0..`` partial
columns); the combine step merges them by key (sum/min/max); the finalize step is a SELECT over
the combined table ``_combined`` that turns partials into answers, applies HAVING, ORDER BY,
LIMIT/OFFSET. Nothing row-level is ever planned: an aggregate with no decomposition is a
planning error, never a pull of rows to the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from .aggregates import decompose
from .errors import DisclosureError, PlanningError, UnsupportedError
from .schema import Catalog
from .sqlcheck import (
    DIALECT,
    TOO_DEEP,
    check_joins,
    check_node_local,
    clip,
    is_aggregate,
    qualify_query,
    reveals_sample_id,
)

COMBINED = "_combined"


@dataclass
class PartialSpec:
    """One partial column: its name in the fragment output and how it combines across nodes."""

    name: str
    op: str  # "sum" | "min" | "max"


@dataclass
class Plan:
    """A planned query: what each node computes and how the coordinator finishes it."""

    fragment: exp.Select
    keys: list[str]
    partials: list[PartialSpec]
    final: exp.Select
    output_names: list[str]
    tables: set[str] = field(default_factory=set)
    uses_min_max: bool = False
    variants_only: bool = False
    key_labels: list[str] = field(default_factory=list)

    @property
    def fragment_sql(self) -> str:
        return self.fragment.sql(DIALECT)

    @property
    def final_sql(self) -> str:
        return self.final.sql(DIALECT)


def plan_query(select: exp.Select, catalog: Catalog) -> Plan:
    """Qualify ``select`` against ``catalog`` and plan it.

    Raises
    ------
    PlanningError, UnsupportedError
        unknown names, constructs outside the supported subset, non-node-local subqueries.
    DisclosureError
        the query would release row-level data.
    """
    try:
        plan = _plan(select, catalog)
        _ = plan.fragment_sql, plan.final_sql  # the SQL the coordinator ships must be writable
        return plan
    except RecursionError:
        raise PlanningError(TOO_DEEP) from None


def _plan(select: exp.Select, catalog: Catalog) -> Plan:
    output_names = _dedupe([_output_name(p) for p in select.expressions])
    if "" in output_names:
        raise PlanningError("a column alias is empty (AS \"\"); give every output column a name")
    group_all = select.args.get("group")
    if group_all is not None and group_all.args.get("all"):
        select = select.copy()
        keys_all = [p.unalias() for p in select.expressions if not any(is_aggregate(n) for n in p.walk())]
        select.set("group", exp.Group(expressions=[k.copy() for k in keys_all]) if keys_all else None)
    q = qualify_query(select, catalog)
    tables = {t.name for t in q.find_all(exp.Table)}
    _check_structure(q)

    distinct = q.args.get("distinct") is not None
    group = list(q.args["group"].expressions) if q.args.get("group") else []
    has_aggs = any(is_aggregate(n) for p in q.expressions for n in p.walk())
    having = q.args.get("having")
    if distinct and not group and not has_aggs:
        group = [p.unalias() for p in q.expressions]
        distinct = False
    if not group and not has_aggs and having is None:
        raise DisclosureError(
            "row-level results are refused: the query must aggregate (GROUP BY with aggregates such "
            "as COUNT(*), AVG(x), allele_freq(dosage)); row-level access needs a node policy that allows it",
            rule="row_level",
        )

    for g in group:
        if reveals_sample_id(g):
            raise DisclosureError(
                "grouping by sample_id releases one row per person (and their identifiers); "
                "group by sample attributes instead, or aggregate per sample in a CTE and summarise it",
                rule="row_level",
            )
    keys = [f"_k{i}" for i in range(len(group))]
    key_sql = {g.sql(DIALECT): k for g, k in zip(group, keys)}
    partial_exprs: list[exp.Expression] = []
    partials: list[PartialSpec] = []
    seen: dict[tuple[str, str], str] = {}
    uses_min_max = False

    def add(expr: exp.Expression, op: str) -> exp.Expression:
        nonlocal uses_min_max
        uses_min_max |= op in ("min", "max")
        sig = (expr.sql(DIALECT), op)
        if sig not in seen:
            name = f"_p{len(partials)}"
            seen[sig] = name
            partials.append(PartialSpec(name, op))
            partial_exprs.append(expr)
        return exp.column(seen[sig])

    finals: dict[str, exp.Expression] = {}

    def finalize(node: exp.Expression) -> exp.Expression:
        sql = node.sql(DIALECT)
        if sql in key_sql:
            return exp.column(key_sql[sql])
        if is_aggregate(node):
            if sql not in finals:
                finals[sql] = decompose(node, add)
            return exp.Paren(this=finals[sql].copy())
        if isinstance(node, exp.Column):
            raise PlanningError(
                f"column {clip(node.sql(DIALECT))!r} must appear in GROUP BY or be used in an aggregate function"
            )
        if isinstance(node, (exp.Subquery, exp.Select, exp.Exists)):
            raise PlanningError(
                "subqueries outside WHERE ... IN (...) are not supported: they would need the "
                "federation-wide answer inside a node; run them as separate queries"
            )
        new = node.copy()
        for k, v in list(new.args.items()):
            if isinstance(v, exp.Expression):
                new.set(k, finalize(node.args[k]))
            elif isinstance(v, list):
                new.set(k, [finalize(c) if isinstance(c, exp.Expression) else c for c in node.args[k]])
        return new

    out_aliases = [p.alias_or_name for p in q.expressions]
    projections = []
    for p, name in zip(q.expressions, output_names):
        projections.append(exp.alias_(finalize(p.unalias()), name, quoted=True))
    final = exp.select(*projections).from_(COMBINED)
    if distinct:
        final.set("distinct", exp.Distinct())
    if having is not None:
        final = final.where(finalize(having.this))
    order = q.args.get("order")
    if order is not None:
        alias_map = dict(zip(out_aliases, output_names))
        ordered = []
        for o in order.expressions:
            target = o.this
            if isinstance(target, exp.Column) and not target.table and target.name in alias_map:
                new_target: exp.Expression = exp.column(alias_map[target.name], quoted=True)
            else:
                new_target = finalize(target)
            ordered.append(exp.Ordered(this=new_target, desc=o.args.get("desc"), nulls_first=o.args.get("nulls_first")))
        final.set("order", exp.Order(expressions=ordered))
    for arg in ("limit", "offset"):
        if q.args.get(arg) is not None:
            _check_limit(q.args[arg], arg.upper())
            final.set(arg, q.args[arg].copy())

    fragment = q.copy()
    for arg in ("having", "order", "limit", "offset", "distinct"):
        fragment.set(arg, None)
    frag_cols = [exp.alias_(g.copy(), k) for g, k in zip(group, keys)]
    frag_cols += [exp.alias_(e, s.name) for e, s in zip(partial_exprs, partials)]
    if not frag_cols:
        raise PlanningError("the query computes nothing at the nodes")
    fragment.set("expressions", frag_cols)
    fragment.set("group", exp.Group(expressions=[g.copy() for g in group]) if group else None)

    labels = []
    for g in group:
        match = [n for p, n in zip(q.expressions, output_names) if p.unalias().sql(DIALECT) == g.sql(DIALECT)]
        labels.append(match[0] if match else g.sql(DIALECT))
    sample_tables = catalog.sample_tables()
    variants_only = not (tables & sample_tables)
    return Plan(fragment, keys, partials, final, output_names, tables, uses_min_max, variants_only, labels)


INT64_MAX = 2**63 - 1


def _check_limit(node: exp.Expression, what: str) -> None:
    """LIMIT/OFFSET: a whole number the coordinator's DuckDB accepts (or LIMIT ALL/NULL)."""
    e = node.args.get("expression")
    if isinstance(e, exp.Null) or (isinstance(e, exp.Var) and e.name.upper() == "ALL" and what == "LIMIT"):
        return
    if not (isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit() and int(e.this) <= INT64_MAX):
        shown = clip(e.sql(DIALECT)) if isinstance(e, exp.Expression) else "nothing"
        raise PlanningError(f"{what} must be a whole number from 0 to {INT64_MAX}{' (or ALL)' if what == 'LIMIT' else ''}, got {shown!r}")


def _dedupe(names: list[str]) -> list[str]:
    """Unique column names: a repeated name gets ``_1``, ``_2``... as DuckDB does."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        seen.setdefault(n, 0)
        out.append(n)
    return out


def _output_name(p: exp.Expression) -> str:
    if isinstance(p, exp.Alias):
        return p.alias
    if isinstance(p, exp.Column):
        return p.name
    return p.sql(DIALECT, normalize_functions="lower")


def _check_structure(q: exp.Select) -> None:
    """Node-locality of joins, CTEs and subqueries, for the outer query and every nested one."""
    for sel in q.find_all(exp.Select):
        check_joins(sel)
        for arg, where in (("where", "WHERE (conditions on aggregates go in HAVING)"), ("group", "GROUP BY")):
            clause = sel.args.get(arg)
            if clause is not None and any(is_aggregate(n) for n in _outside_subqueries(clause)):
                raise PlanningError(f"aggregate functions are not allowed in {where}")
        if sel is q:
            continue
        parent = sel.parent
        if isinstance(parent, exp.CTE):
            check_node_local(sel, f"CTE {clip(parent.alias_or_name)!r}")
        elif isinstance(parent, exp.Subquery) and isinstance(parent.parent, (exp.From, exp.Join)):
            check_node_local(sel, "subquery in FROM")
        elif isinstance(parent, exp.In) or (isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.In)):
            check_node_local(sel, "IN-subquery")
        elif isinstance(parent, exp.Exists) or (isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.Exists)):
            check_node_local(sel, "EXISTS subquery")
        else:
            raise PlanningError(
                "scalar subqueries are not supported: a value like (SELECT avg(x) FROM t) is a "
                "federation-wide answer a node cannot compute; run it as a separate query and use the value"
            )
    for node in q.walk():
        if isinstance(node, exp.Window):
            raise UnsupportedError("window functions (OVER) are not supported in federated queries")


def _outside_subqueries(tree: exp.Expression):
    """``tree`` and its descendants, not descending into nested SELECTs."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in node.iter_expressions() if not isinstance(c, (exp.Select, exp.Subquery)))
