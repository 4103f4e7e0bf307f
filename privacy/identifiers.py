"""Rule 1 of the disclosure model: identifiers are join keys only.

``sample_id`` (in every table) and the columns a steward declares as identifiers may appear in a
fragment only where they link rows of the same person:

* an equality between two identifier columns in a ``JOIN ... ON`` / ``USING`` or a ``WHERE``
  conjunct (``s.sample_id = c.sample_id``, a correlated ``EXISTS``);
* ``x IN (SELECT sample_id ...)`` / ``NOT IN`` in a ``WHERE`` conjunct, both sides identifiers;
* passed through unchanged by a CTE or subquery (``SELECT sample_id AS sid ...``), and as a
  ``GROUP BY`` key of a CTE or subquery (a per-person aggregate that stays at the node);
* ``COUNT(DISTINCT sample_id)``.

Anywhere else (compared with a value, in CASE, LIKE, arithmetic, a function argument, a group key
of the released query, an analysis parameter), however deeply nested, the fragment is refused.
The check follows values through CTEs and subqueries: a column is an identifier when it is one at
its source, whatever it is called on the way.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from genofed.engine.errors import DisclosureError
from genofed.engine.schema import SAMPLE_ID

RULE = "identifier"

_REMEDY = ("identifiers (sample_id and the columns this node declares as identifiers) may only join tables "
           "(an equality with another identifier, IN (SELECT sample_id ...)) or be counted as COUNT(DISTINCT sample_id)")


def _refuse(col: exp.Column, where: str) -> DisclosureError:
    return DisclosureError(f"identifier column {col.name!r} used {where}; {_REMEDY}", rule=RULE)


def check_identifiers(select: exp.Select, identifiers: Iterable[str] = ()) -> None:
    """Refuse (:class:`DisclosureError`, rule ``identifier``) a qualified fragment that uses an
    identifier other than as a join key. ``identifiers``: declared ``table.column`` names (lower
    case), besides ``sample_id`` in every table."""
    declared = {i.lower() for i in identifiers}
    tainted_out: dict[int, set[str]] = {}  # id(scope.expression) -> output names carrying an identifier
    scopes = list(traverse_scope(select))
    for scope in scopes:
        # a correlated column is listed by both scopes: check it where it is written
        tainted = [c for c in scope.columns if c.find_ancestor(exp.Select) is scope.expression
                   and _is_identifier(c, scope, declared, tainted_out)]
        outer = scope.expression is select
        for col in tainted:
            _check_position(col, scope, outer, declared, tainted_out)
        body = scope.expression
        if isinstance(body, exp.Select):
            names = set()
            for proj in body.expressions:
                if any(_is_identifier(c, scope, declared, tainted_out) for c in proj.find_all(exp.Column)):
                    names.add(proj.alias_or_name)
            tainted_out[id(body)] = names


def check_expression(e: exp.Expression, what: str, identifiers: Iterable[str] = ()) -> None:
    """Refuse an analysis parameter (phenotype, covariate, sample filter) that reads an identifier."""
    declared = {i.lower() for i in identifiers}
    for col in e.find_all(exp.Column):
        if col.name.lower() == SAMPLE_ID or f"{col.table}.{col.name}".lower() in declared or (
                not col.table and any(d.endswith("." + col.name.lower()) for d in declared)):
            raise DisclosureError(f"identifier column {col.name!r} used in the {what}; {_REMEDY}", rule=RULE)


def column_source(col: exp.Column, scope: Scope | None) -> object:
    """The table or scope a column reads, looking outwards for correlated references."""
    while scope is not None:
        src = scope.sources.get(col.table)
        if src is not None:
            return src
        scope = scope.parent
    return None


def _is_identifier(col: exp.Column, scope: Scope, declared: set[str], tainted_out: dict[int, set[str]]) -> bool:
    src = column_source(col, scope)
    if isinstance(src, exp.Table):
        return col.name.lower() == SAMPLE_ID or f"{src.name}.{col.name}".lower() in declared
    if isinstance(src, Scope):
        return col.name in tainted_out.get(id(src.expression), set())
    return False


def _bare_identifier(e: exp.Expression | None, scope: Scope, declared: set[str], tainted_out: dict[int, set[str]]) -> bool:
    return isinstance(e, exp.Column) and _is_identifier(e, scope, declared, tainted_out)


def _in_conjunct(node: exp.Expression, scope: Scope) -> bool:
    """Whether ``node`` is a top-level conjunct of this scope's WHERE or of a JOIN's ON."""
    parent = node.parent
    while isinstance(parent, (exp.And, exp.Paren)):
        parent = parent.parent
    if isinstance(parent, exp.Where):
        return parent.parent is scope.expression
    if isinstance(parent, exp.Join):
        return parent.parent is scope.expression and node is not parent.this
    return False


def _check_position(col: exp.Column, scope: Scope, outer: bool, declared: set[str], tainted_out: dict[int, set[str]]) -> None:
    parent = col.parent
    # a projection passing the identifier through a CTE or subquery, unchanged
    proj = parent if isinstance(parent, exp.Alias) else col
    if proj.parent is scope.expression and proj.arg_key == "expressions":
        if outer:
            raise DisclosureError(
                "the query would release identifiers (per-person rows or group keys made of sample_id); "
                f"{_REMEDY}", rule=RULE)
        return
    # GROUP BY sample_id inside a CTE or subquery: a per-person aggregate kept at the node
    if isinstance(parent, exp.Group) and parent.parent is scope.expression and not outer:
        return
    # COUNT(DISTINCT sample_id)
    if isinstance(parent, exp.Distinct) and isinstance(parent.parent, exp.Count) and len(parent.expressions) == 1:
        return
    # an equality join between two identifiers
    if isinstance(parent, exp.EQ) and _in_conjunct(parent, scope):
        other = parent.expression if parent.this is col else parent.this
        if _bare_identifier(other, scope, declared, tainted_out):
            return
    # sample_id IN (SELECT sample_id ...), possibly negated
    if isinstance(parent, exp.In) and parent.this is col:
        node: exp.Expression = parent.parent if isinstance(parent.parent, exp.Not) else parent
        query = parent.args.get("query")
        sub = query.this if isinstance(query, exp.Subquery) else query
        if isinstance(sub, exp.Select) and len(sub.expressions) == 1 and _in_conjunct(node, scope):
            inner = sub.expressions[0].unalias()
            if isinstance(inner, exp.Column) and id(sub) in tainted_out and sub.expressions[0].alias_or_name in tainted_out[id(sub)]:
                return
            if isinstance(inner, exp.Column) and inner.name.lower() == SAMPLE_ID:
                return
    raise _refuse(col, _describe(col))


def _describe(col: exp.Column) -> str:
    """Where an identifier was found, by construct (never the values around it)."""
    node = col.parent
    while node is not None:
        if isinstance(node, (exp.Case, exp.If)):
            return "in a CASE/IF expression"
        if isinstance(node, (exp.Like, exp.ILike, exp.RegexpLike, exp.SimilarTo)):
            return "in a pattern match (LIKE)"
        if isinstance(node, exp.AggFunc):
            return f"inside the aggregate {node.key.upper()}"
        if isinstance(node, exp.Group):
            return "as a group key"
        if isinstance(node, exp.Order):
            return "in ORDER BY"
        if isinstance(node, (exp.Predicate, exp.Binary)):
            return "in a comparison or arithmetic with a value"
        if isinstance(node, exp.Func):
            return f"as an argument of {node.key.upper()}"
        if isinstance(node, exp.Select):
            break
        node = node.parent
    return "outside an equality join"
