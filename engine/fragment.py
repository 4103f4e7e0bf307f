"""Node-side validation of a fragment received from a coordinator.

A node trusts no coordinator: it re-parses the fragment SQL, qualifies it against its own
catalog, checks that it only reads the federated schema with supported operations, that every
output column is a group key (``_k<i>``) or a partial aggregate (``_p<i>``), and that CTEs,
subqueries and joins stay node-local. The node then appends its own sample count ``_n``
(distinct samples behind each group) for its minimum-count rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from .aggregates import is_partial_aggregate
from .errors import DisclosureError, FragmentError, GenofedError
from .planner import _check_structure
from .schema import SAMPLE_ID, Catalog
from .sqlcheck import DIALECT, TOO_DEEP, clip, is_aggregate, parse, qualify_query, reveals_sample_id

_KEY = re.compile(r"^_k\d+$")
_PARTIAL = re.compile(r"^_p\d+$")


@dataclass
class Fragment:
    """A validated fragment, ready for a backend."""

    select: exp.Select
    keys: list[str]
    partials: list[str]
    sample_id: exp.Column | None  # the column identifying samples in the outer query
    tables: set[str]

    @property
    def sql(self) -> str:
        return self.select.sql(DIALECT)


def validate_fragment(sql: str, catalog: Catalog, *, allow_min_max: bool = False) -> Fragment:
    """Parse and validate fragment SQL against the node's own catalog.

    Raises
    ------
    FragmentError
        the fragment is not a well-formed partial-aggregate query over the federated schema.
    DisclosureError
        the fragment asks for something the node's policy refuses (MIN/MAX).
    """
    try:
        return _validate(sql, catalog, allow_min_max)
    except RecursionError:
        raise FragmentError(f"fragment refused: {TOO_DEEP}") from None


def _validate(sql: str, catalog: Catalog, allow_min_max: bool) -> Fragment:
    try:
        q = qualify_query(parse(sql), catalog)
        _check_structure(q)
    except GenofedError as e:
        raise FragmentError(f"fragment refused: {e}") from None
    group = [g.sql(DIALECT) for g in (q.args["group"].expressions if q.args.get("group") else [])]
    for arg in ("having", "order", "limit", "offset", "distinct"):
        if q.args.get(arg) is not None:
            raise FragmentError(f"fragment refused: {arg.upper()} is applied by the coordinator, not in a fragment")
    keys, partials = [], []
    sources: dict[int, dict[str, exp.Expression]] = {}
    for p in q.expressions:
        name = p.alias_or_name
        body = p.unalias()
        if _KEY.match(name):
            if reveals_sample_id(body) or reveals_sample_id(_through_subqueries(body, q, sources)):
                raise DisclosureError("grouping by sample_id releases per-person rows; refused by the node", rule="row_level")
            if body.sql(DIALECT) not in group:
                raise FragmentError(f"fragment refused: key {name} is not a GROUP BY expression")
            keys.append(name)
        elif _PARTIAL.match(name):
            if not is_partial_aggregate(body):
                raise FragmentError(f"fragment refused: {name} must be a partial aggregate (COUNT, SUM, genomic counts)")
            if any(is_aggregate(n) for n in body.walk() if n is not body):
                raise FragmentError(f"fragment refused: nested aggregate in {name}")
            if isinstance(body, (exp.Min, exp.Max)) and not allow_min_max:
                raise DisclosureError(
                    "MIN/MAX reveal individual values and are not allowed by this node's policy",
                    rule="min_max",
                )
            if isinstance(body, exp.Count) and isinstance(body.this, exp.Distinct):
                cols = body.this.expressions
                if not (len(cols) == 1 and isinstance(cols[0], exp.Column) and cols[0].name == SAMPLE_ID):
                    raise FragmentError("fragment refused: COUNT(DISTINCT ...) only on sample_id")
            partials.append(name)
        else:
            raise FragmentError(f"fragment refused: output column {clip(name)!r} is neither a key (_k<i>) nor a partial (_p<i>)")
    if len(keys) != len(group):
        raise FragmentError("fragment refused: every GROUP BY expression must be output as a key")
    if not keys and not partials:
        raise FragmentError("fragment refused: it computes nothing")
    tables = {t.name for t in q.find_all(exp.Table)}
    sid = _sample_identity(q, catalog)
    if sid is None and tables & catalog.sample_tables():
        raise FragmentError(
            "fragment refused: the outer query reads sample data but none of its sources keeps "
            "sample_id, so the node cannot apply its minimum-count rule; keep sample_id in the CTE or subquery"
        )
    return Fragment(q, keys, partials, sid, tables)


def _sample_identity(q: exp.Select, catalog: Catalog) -> exp.Column | None:
    ctes = {c.alias_or_name: c.this for c in q.find_all(exp.CTE)}
    sources: list[exp.Expression] = []
    if q.args.get("from_") is not None:
        sources.append(q.args["from_"].this)
    elif q.args.get("from") is not None:
        sources.append(q.args["from"].this)
    sources += [j.this for j in q.args.get("joins") or []]
    sample_tables = catalog.sample_tables()
    for src in sources:
        alias = src.alias_or_name
        if isinstance(src, exp.Table):
            if src.name in ctes:
                body = ctes[src.name]
                if isinstance(body, exp.Select) and SAMPLE_ID in [p.alias_or_name for p in body.expressions]:
                    return exp.column(SAMPLE_ID, table=alias)
            elif src.name in sample_tables:
                return exp.column(SAMPLE_ID, table=alias)
        elif isinstance(src, exp.Subquery):
            body = src.this
            if isinstance(body, exp.Select) and SAMPLE_ID in [p.alias_or_name for p in body.expressions]:
                return exp.column(SAMPLE_ID, table=alias)
    return None


def _through_subqueries(e: exp.Expression, select: exp.Select, cache: dict[int, dict[str, exp.Expression]],
                        depth: int = 0) -> exp.Expression:
    """``e`` with every column that comes from a subquery or CTE replaced by the expression that
    defines it there (recursively), so ``t.sid`` from ``(SELECT sample_id AS sid ...) t`` is seen
    as ``sample_id``. ``cache`` keeps each SELECT's sources (one walk per SELECT, not per key)."""
    from .samplesets import _sources

    if depth > 8:
        return e
    if id(select) not in cache:
        cache[id(select)] = _sources(select)
    sources = cache[id(select)]
    e = e.copy()
    for col in list(e.find_all(exp.Column)):
        src = sources.get(col.table)
        body = src.this if isinstance(src, exp.Subquery) else None
        if not isinstance(body, exp.Select):
            continue
        proj = next((p for p in body.expressions if p.alias_or_name == col.name), None)
        if proj is None:
            continue
        inner = _through_subqueries(proj.unalias(), body, cache, depth + 1)
        if col is e:
            return inner
        col.replace(inner.copy())
    return e
