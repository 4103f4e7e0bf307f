"""SQL front end shared by the coordinator and the nodes: parse, qualify, validate.

A node runs the same checks on every fragment it receives (it trusts no coordinator), so
everything here works from the SQL text and a catalog alone.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.errors import ParseError as SqlglotParseError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from .errors import ParseError, PlanningError, UnsupportedError
from .schema import GENOMIC_AGGREGATES, SAMPLE_ID, Catalog

DIALECT = "duckdb"

# standard aggregates the planner decomposes
STANDARD_AGGREGATES: dict[type[exp.Expression], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
    exp.Corr: "corr",
    exp.CovarSamp: "covar_samp",
    exp.CovarPop: "covar_pop",
    exp.RegrSlope: "regr_slope",
    exp.RegrIntercept: "regr_intercept",
    exp.RegrR2: "regr_r2",
    exp.Min: "min",
    exp.Max: "max",
}

SCALAR_NODES: tuple[type[exp.Expression], ...] = (
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg, exp.Paren, exp.DPipe,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Like,
    exp.ILike, exp.Not, exp.And, exp.Or, exp.NullSafeEQ, exp.NullSafeNEQ,
    exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Cast, exp.TryCast, exp.DataType,
    exp.DataTypeParam, exp.Abs, exp.Round, exp.Floor, exp.Ceil, exp.Ln, exp.Log, exp.Exp,
    exp.Sqrt, exp.Pow, exp.Sign, exp.Greatest, exp.Least, exp.Upper, exp.Lower, exp.Length,
    exp.Substring, exp.Concat, exp.Trim, exp.StartsWith, exp.Contains, exp.StrPosition,
    exp.Left, exp.Right, exp.SplitPart, exp.Literal, exp.Boolean, exp.Null, exp.Column,
    exp.Identifier, exp.Star, exp.Tuple, exp.Distinct, exp.Var,
)

STRUCTURE_NODES: tuple[type[exp.Expression], ...] = (
    exp.Select, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered,
    exp.Limit, exp.Offset, exp.With, exp.CTE, exp.Subquery, exp.TableAlias, exp.Table, exp.Alias,
    exp.Exists,
)

SCALAR_FUNCTIONS_DOC = (
    "arithmetic, comparisons, AND/OR/NOT, CASE, IF, COALESCE, NULLIF, CAST, ABS, ROUND, FLOOR, "
    "CEIL, LN, LOG, EXP, SQRT, POW, SIGN, GREATEST, LEAST, UPPER, LOWER, LENGTH, SUBSTRING, "
    "CONCAT, ||, TRIM, STARTS_WITH, CONTAINS, STRPOS, LEFT, RIGHT, SPLIT_PART, LIKE, IN, BETWEEN"
)
AGGREGATES_DOC = (
    "COUNT(*), COUNT(x), COUNT(DISTINCT sample_id), SUM, AVG, VAR_SAMP, VAR_POP, STDDEV_SAMP, "
    "STDDEV_POP, CORR, COVAR_SAMP, COVAR_POP, REGR_SLOPE, REGR_INTERCEPT, REGR_R2, MIN/MAX (where "
    "the node policy allows them), and the genomic aggregates " + ", ".join(GENOMIC_AGGREGATES)
)


# bounds on one query: a node parses and validates every fragment it receives, and parsing,
# qualifying (quadratic in subqueries and in nesting depth) and planning cost grows with them
MAX_SQL_CHARS = 1_000_000
MAX_SELECTS = 64
MAX_DEPTH = 1000

TOO_DEEP = (
    "the query nests expressions, subqueries or parentheses too deeply to be analysed; flatten it "
    "(IN (...) lists instead of long OR chains, CTEs instead of nested subqueries)"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clip(text: str, limit: int = 60) -> str:
    """``text`` shortened for an error message (names and SQL echoed back can be huge)."""
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse(sql: str) -> exp.Select:
    """Parse one SELECT statement (DuckDB dialect); errors keep sqlglot's line and column."""
    if not isinstance(sql, str):
        raise ParseError(f"expected the SQL text as a string, got {type(sql).__name__}")
    if len(sql) > MAX_SQL_CHARS:
        raise ParseError(f"the query is {len(sql):,} characters long; at most {MAX_SQL_CHARS:,} are supported: split it into smaller queries")
    sql = sql.removeprefix("\ufeff")  # a byte-order mark, from a file saved by some editors
    try:
        stmts = sqlglot.parse(sql, dialect=DIALECT)
    except SqlglotParseError as e:
        err = e.errors[0] if e.errors else {}
        line, col = err.get("line"), err.get("col")
        desc = clip(err.get("description") or str(e), 200)
        raise ParseError(f"SQL syntax error at line {line}, column {col}: {desc}", line, col) from None
    except sqlglot.errors.TokenError as e:
        raise ParseError(f"SQL syntax error: {clip(str(e), 200)}") from None
    except RecursionError:
        raise ParseError(f"SQL syntax error: {TOO_DEEP}") from None
    stmts = [s for s in stmts if s is not None]
    if len(stmts) != 1:
        raise ParseError(f"expected exactly one SQL statement, got {len(stmts)}")
    stmt = stmts[0]
    if not isinstance(stmt, exp.Select):
        kind = type(stmt).__name__.upper()
        raise UnsupportedError(f"only SELECT queries are supported, got {kind}")
    if _depth(stmt) > MAX_DEPTH:
        raise UnsupportedError(f"{TOO_DEEP} (at most {MAX_DEPTH} levels)")
    n_selects = sum(1 for _ in stmt.find_all(exp.Select))
    if n_selects > MAX_SELECTS:
        raise UnsupportedError(
            f"the query has {n_selects} SELECTs (subqueries and CTEs); at most {MAX_SELECTS} are supported: "
            "merge CTEs or run parts as separate queries"
        )
    return stmt


def _depth(tree: exp.Expression) -> int:
    """The nesting depth of a syntax tree (iteratively: the tree may be deeper than the stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in node.iter_expressions())
    return deepest


def is_aggregate(node: exp.Expression) -> bool:
    """True for an aggregate function call (standard or genomic)."""
    if isinstance(node, tuple(STANDARD_AGGREGATES)):
        return True
    return isinstance(node, exp.Anonymous) and node.name.lower() in GENOMIC_AGGREGATES


def qualify_query(select: exp.Select, catalog: Catalog) -> exp.Select:
    """Check table names, qualify every column and annotate types."""
    cte_names = {c.alias_or_name for c in select.find_all(exp.CTE)}
    for t in select.find_all(exp.Table):
        if not isinstance(t.this, exp.Identifier):
            raise UnsupportedError(
                f"table functions such as {clip(t.this.sql(DIALECT), 40)!r} are not supported; query the federated tables ({_tables(catalog)})"
            )
        if t.name in cte_names and not t.db:
            continue
        if t.db or t.catalog:
            raise PlanningError(f"table {clip(t.sql(DIALECT))!r}: only the federated tables can be queried ({_tables(catalog)})")
        if t.name not in catalog.tables:
            raise PlanningError(f"unknown table {clip(t.name)!r}; the federated tables are {_tables(catalog)}")
        if t.alias and t.alias != t.name and t.alias in catalog.tables:
            raise PlanningError(f"table alias {t.alias!r} for {t.name} is the name of another federated table; choose another alias")
    validate_nodes(select)
    schema = {t: dict(cols) for t, cols in catalog.tables.items()}
    try:
        q = qualify(
            select.copy(),
            schema=schema,
            dialect=DIALECT,
            validate_qualify_columns=True,
            quote_identifiers=False,
            identify=False,
        )
    except RecursionError:
        raise PlanningError(TOO_DEEP) from None
    except OptimizeError as e:
        msg = clip(str(e), 200)
        m = re.match(r"Column '([^']*)' could not be resolved\.", msg)
        having = _ambiguous(select, m.group(1), catalog) if m else []
        if m and len(having) > 1:
            raise PlanningError(
                f"column {m.group(1)!r} is ambiguous: it is in {' and '.join(having)}; qualify it as table.column "
                f"(e.g. {having[0]}.{m.group(1)})"
            ) from None
        if "could not be resolved" in msg or "Unknown column" in msg:
            raise PlanningError(f"unknown column: {msg}. Run .catalog() to list the tables and their columns") from None
        raise PlanningError(f"cannot resolve the query: {msg}") from None
    assert isinstance(q, exp.Select)
    try:
        annotate_types(q, schema=schema)
    except RecursionError:
        raise PlanningError(TOO_DEEP) from None
    return q


def _ambiguous(select: exp.Select, name: str, catalog: Catalog) -> list[str]:
    """The tables of one SELECT that all have a column ``name`` used unqualified there."""
    for sel in select.find_all(exp.Select):
        frm = sel.args.get("from_") or sel.args.get("from")
        sources = ([frm.this] if frm is not None else []) + [j.this for j in sel.args.get("joins") or []]
        having = sorted({t.name for t in sources if isinstance(t, exp.Table) and name in catalog.tables.get(t.name, {})})
        using = {u.name for j in sel.args.get("joins") or [] for u in j.args.get("using") or []}
        if len(having) > 1 and name not in using and any(isinstance(n, exp.Column) and not n.table and n.name == name for n in _own_nodes(sel)):
            return having
    return []


def _tables(catalog: Catalog) -> str:
    return ", ".join(sorted(catalog.tables))


def validate_nodes(tree: exp.Expression) -> None:
    """Refuse any construct outside the supported subset; the message says what is supported."""
    for node in tree.walk():
        if isinstance(node, SCALAR_NODES + STRUCTURE_NODES):
            continue
        if is_aggregate(node):
            continue
        if isinstance(node, exp.Window):
            raise UnsupportedError("window functions (OVER) are not supported in federated queries")
        if isinstance(node, (exp.Union, exp.Intersect, exp.Except)):
            raise UnsupportedError("UNION/INTERSECT/EXCEPT are not supported; run the queries separately")
        if isinstance(node, exp.Func):
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
            if isinstance(node, exp.AggFunc):
                raise UnsupportedError(f"unsupported aggregate function {name.upper()}; supported aggregates: {AGGREGATES_DOC}")
            raise UnsupportedError(f"unsupported function {name.upper()}; supported scalar functions: {SCALAR_FUNCTIONS_DOC}")
        raise UnsupportedError(f"unsupported SQL construct {type(node).__name__.upper()}: {clip(node.sql(DIALECT))!r}")


def check_joins(select: exp.Select) -> None:
    """Joins must be node-local: an equality on sample_id or variant_id."""
    for j in select.args.get("joins") or []:
        kind = (j.args.get("kind") or "").upper()
        if kind == "CROSS" or (j.args.get("on") is None and not j.args.get("using")):
            raise PlanningError(
                "joins must be on sample_id or variant_id (JOIN t USING (sample_id)); cross joins are not supported"
            )
        on = j.args.get("on")
        if on is not None:
            keys = [
                eq for eq in on.find_all(exp.EQ)
                if isinstance(eq.left, exp.Column) and isinstance(eq.right, exp.Column)
                and eq.left.name == eq.right.name and eq.left.name in (SAMPLE_ID, "variant_id")
            ]
            if not keys:
                raise PlanningError(
                    f"join condition {clip(on.sql(DIALECT))!r} is not node-local: join on sample_id or variant_id equality"
                )


def check_node_local(sub: exp.Select, where: str) -> None:
    """A CTE or subquery is node-local when it does not aggregate, or groups by sample_id."""
    aggregating = any(is_aggregate(n) for n in _own_nodes(sub)) or sub.args.get("group")
    if not aggregating:
        return
    group = sub.args.get("group")
    keys = group.expressions if group else []
    if any(isinstance(k, exp.Column) and k.name == SAMPLE_ID for k in keys):
        return
    raise PlanningError(
        f"{where} aggregates across samples of several nodes, which cannot be computed node-locally; "
        "group it by sample_id or move the aggregate into the outer query"
    )


def _own_nodes(select: exp.Select):
    """Nodes of a SELECT, not descending into nested SELECTs."""
    stack = [select]
    while stack:
        node = stack.pop()
        for child in node.iter_expressions():
            if isinstance(child, (exp.Select, exp.Subquery)) :
                continue
            yield child
            stack.append(child)


def reveals_sample_id(key: exp.Expression) -> bool:
    """True when a group key's value can carry a sample identifier.

    ``sample_id`` inside a comparison or predicate (``family_id = sample_id``) or under LENGTH
    yields no identifier; anywhere else (the column itself, SUBSTRING, CONCAT...) it might.
    """
    for col in key.find_all(exp.Column):
        if col.name != SAMPLE_ID:
            continue
        node: exp.Expression | None = col
        safe = False
        while node is not None and node is not key.parent:
            if isinstance(node, (exp.Predicate, exp.Length)):
                safe = True
                break
            if node is key:
                break
            node = node.parent
        if not safe:
            return True
    return False
