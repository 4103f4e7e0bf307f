"""Bad-input fuzzing of the SQL front end: generated SQL never crashes the parser or planner.

Queries are built from the federated schema's grammar (tables, columns, aggregates, GROUP BY,
WHERE, joins, subqueries, CTEs, ORDER/LIMIT) with garbage tokens, unicode, long and deeply
nested inputs mixed in, plus byte-level mutations of the corpus. Every one either plans (and
the node accepts or refuses its fragment) or raises a :class:`GenofedError` whose message is
one readable line, never another exception.
"""

from __future__ import annotations

import functools
import re

import pytest
from corpus import CORPUS, CORPUS_REFUSED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genofed import GenofedError
from genofed.engine.fragment import validate_fragment
from genofed.engine.planner import plan_query
from genofed.engine.schema import CORE_TABLES, Catalog
from genofed.engine.sqlcheck import parse
from genofed.engine.tablefunc import table_function

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

SAMPLES = {"sample_id": "VARCHAR", "family_id": "VARCHAR", "population": "VARCHAR", "population_description": "VARCHAR",
           "sex": "VARCHAR", "outcome": "DOUBLE", "status": "BIGINT"}
PHENOTYPES = {"sample_id": "VARCHAR", "age": "BIGINT", "bmi": "DOUBLE", "ldl": "DOUBLE", "smoker": "BIGINT",
              "outcome": "DOUBLE", "status": "BIGINT"}
CATALOG = Catalog({**CORE_TABLES, "samples": SAMPLES, "phenotypes": PHENOTYPES})
TABLES = sorted(CATALOG.tables)

_ANSI = re.compile(r"\x1b\[")


def assert_clean(e: BaseException, sql: str) -> None:
    """A GenofedError with one readable line naming the problem."""
    msg = str(e)
    assert isinstance(e, GenofedError), f"{type(e).__name__}: {msg[:300]} for {sql[:300]!r}"
    assert msg.strip(), f"empty message from {type(e).__name__} for {sql[:300]!r}"
    assert "Traceback" not in msg and not _ANSI.search(msg), msg[:300]
    assert "\n" not in msg.strip(), f"multi-line message: {msg[:300]!r}"
    assert len(msg) < 2000, f"message of {len(msg)} characters for {sql[:100]!r}"


def front_end(sql: str) -> None:
    """What the coordinator does with a query (parse, table function or plan), then what a node
    does with the planned fragment; only GenofedError may escape."""
    try:
        select = parse(sql)
        call = table_function(select)
        if call is not None:
            table_function_args(*call)
            return
        plan = plan_query(select, CATALOG)
        frag_sql = plan.fragment_sql
        _ = plan.final_sql
    except GenofedError as e:
        assert_clean(e, sql)
        return
    for allow in (False, True):
        try:
            validate_fragment(frag_sql, CATALOG, allow_min_max=allow)
        except GenofedError as e:
            assert_clean(e, frag_sql)


def table_function_args(name: str, given: dict) -> None:
    """The coordinator's checks of a table function's arguments (before any node sees them)."""
    from genofed.engine import analysis as A
    from genofed.genomics.analyses import ANALYSES

    analysis = ANALYSES[name]
    args = analysis.parse_args(given)
    if analysis.reads_samples:
        A.sample_query(args.get("phenotype") if analysis.phenotype else None,
                       list(args.get("covariates") or []) if analysis.covariates else [], args.get("samples"), CATALOG)
    A.variant_query(args.get("variants"), CATALOG)


# -- the grammar -----------------------------------------------------------------------------

GARBAGE = ["(", ")", ",", ";", "'", '"', "--", "/*", "*/", "SELECT", "FROM", "WHERE", "GROUP", "BY", "JOIN", "ON",
           "USING", "AS", "NULL", "*", "::", "$1", "?", ":x", "@v", "[", "]", "{", "}", "=>", "->", "\\", "`", "ü",
           "样本", "\u202e", "\x00", "\t", "\n", "é", "🧬", "1e999", "-0", "0x1F", "INTERVAL", "OVER", "PIVOT", "UNION",
           "QUALIFY", "LATERAL", "UNNEST", "COLLATE", "ESCAPE", "FILTER", "WITHIN", "ARRAY", "STRUCT", "MAP", "LAMBDA"]
OPS = ["=", "<>", "!=", "<", "<=", ">", ">=", "==", "<=>", "IS DISTINCT FROM", "LIKE", "ILIKE", "GLOB", "SIMILAR TO", "~", "^@", "&&", "@>"]
ARITH = ["+", "-", "*", "/", "//", "%", "||", "&", "|", "<<", "**", "^"]
AGGS = ["count", "sum", "avg", "min", "max", "var_samp", "var_pop", "stddev_samp", "stddev_pop", "median", "mode",
        "allele_count", "allele_number", "allele_freq", "het_count", "hom_alt_count", "hom_ref_count",
        "hom_alt_diploid_count", "hwe_p", "call_rate", "list", "string_agg", "quantile_cont", "first", "any_value",
        "bit_and", "bool_or", "approx_count_distinct", "histogram", "arg_max"]
BIAGGS = ["corr", "covar_samp", "covar_pop", "regr_slope", "regr_intercept", "regr_r2"]
SCALARS = ["abs", "round", "floor", "ceil", "ln", "log", "exp", "sqrt", "pow", "sign", "upper", "lower", "length",
           "substring", "concat", "trim", "coalesce", "nullif", "greatest", "least", "starts_with", "contains", "strpos",
           "left", "right", "split_part", "if", "md5", "random", "now", "read_csv", "getenv", "current_setting",
           "regexp_matches", "typeof", "hash", "unnest", "range", "struct_pack", "list_value", "gwas_linear", "pca"]
TYPES = ["INT", "BIGINT", "DOUBLE", "VARCHAR", "BOOLEAN", "DECIMAL(10, 2)", "HUGEINT", "DATE", "BLOB", "INT[]", "STRUCT(a INT)", "UNKNOWNTYPE"]


@functools.cache
def ident(table: str | None = None) -> st.SearchStrategy[str]:
    cols = sorted({c for t in ([table] if table else TABLES) for c in CATALOG.tables[t]})
    return st.one_of(st.sampled_from(cols), st.sampled_from(cols).map(lambda c: f'"{c}"'),
                     st.sampled_from(["height", "x", "_k0", "_p0", "_n", "_suppressed", "rowid", "SAMPLE_ID", '"Sample_Id"']))


literals = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f) if f == f and abs(f) != float("inf") else f"'{f}'::DOUBLE"),
    st.text(max_size=12).map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.sampled_from(["NULL", "TRUE", "FALSE", "'22'", "'X'", "'CEU'", "1e308", "1e400", "-9223372036854775808", "0.0",
                     "DATE '2020-01-01'", "[1, 2]", "{'a': 1}", "x'00'", "E'\\n'", "$$dollar$$", "'\u00e9\u6837'"]),
)


@functools.cache
def scalar(depth: int = 2) -> st.SearchStrategy[str]:
    base = st.one_of(ident(), literals,
                     st.tuples(st.sampled_from(["s", "g", "p", "v", "samples", "genotypes", "t", "c", "zz"]), ident()).map(lambda t: f"{t[0]}.{t[1]}"))
    if depth <= 0:
        return base
    sub = scalar(depth - 1)
    return st.one_of(
        base,
        st.tuples(sub, st.sampled_from(ARITH), sub).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(SCALARS), st.lists(sub, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(sub, st.sampled_from(TYPES), st.sampled_from(["CAST", "TRY_CAST"])).map(lambda t: f"{t[2]}({t[0]} AS {t[1]})"),
        st.tuples(sub, st.sampled_from(TYPES)).map(lambda t: f"{t[0]}::{t[1]}"),
        st.tuples(predicate(depth - 1), sub, sub).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
        sub.map(lambda s: f"-({s})"),
        sub.map(lambda s: f"({s})"),
    )


@functools.cache
def predicate(depth: int = 2) -> st.SearchStrategy[str]:
    sub = scalar(max(depth - 1, 0))
    base = st.one_of(
        st.tuples(sub, st.sampled_from(OPS), sub).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(sub, st.lists(literals, max_size=4)).map(lambda t: f"{t[0]} IN ({', '.join(t[1])})"),
        st.tuples(sub, sub, sub).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
        sub.map(lambda s: f"{s} IS NULL"),
        sub.map(lambda s: f"{s} IS NOT NULL"),
        st.sampled_from(["sample_id IN (SELECT sample_id FROM phenotypes WHERE age > 40)",
                         "EXISTS (SELECT 1 FROM phenotypes p2 WHERE p2.sample_id = sample_id)",
                         "outcome > (SELECT avg(outcome) FROM samples)",
                         "sample_id IN (SELECT sample_id FROM phenotypes GROUP BY sample_id HAVING count(*) > 0)",
                         "sample_id IN (SELECT population FROM samples GROUP BY population)",
                         "sample_id NOT IN (SELECT sample_id FROM genotypes WHERE dosage = 2)",
                         "sample_id = ANY (SELECT sample_id FROM samples)", "outcome > ALL (SELECT 1)",
                         "chrom = '22' AND pos BETWEEN 16000000 AND 17000000", "dosage >= 1", "1", "NULL", "TRUE"]),
    )
    if depth <= 0:
        return base
    sub_p = predicate(depth - 1)
    return st.one_of(
        base,
        st.tuples(sub_p, st.sampled_from(["AND", "OR", "AND NOT", "XOR"]), sub_p).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        sub_p.map(lambda s: f"NOT ({s})"),
    )


@functools.cache
def aggregate() -> st.SearchStrategy[str]:
    arg = scalar(1)
    return st.one_of(
        st.just("count(*)"),
        st.sampled_from(["count(DISTINCT sample_id)", "count(DISTINCT population)", "allele_freq(g.dosage)", "allele_count(dosage)",
                         "hwe_p(dosage)", "call_rate(dosage)", "allele_freq()", "allele_count(dosage, 1)", "allele_freq(pos)",
                         "sum(*)", "count(*, 1)", "avg(DISTINCT outcome)", "count(*) FILTER (WHERE sex = 'F')",
                         "sum(outcome) OVER ()", "max(count(*))", "avg(sum(status))", "count(ALL sex)", "allele_freq(*)",
                         "corr(outcome)", "corr(outcome, age, bmi)", "sum(outcome ORDER BY age)", "arg_max(sample_id, outcome)",
                         "percentile_cont(0.5) WITHIN GROUP (ORDER BY outcome)", "count()", "sum()", "avg(1)", "sum(NULL)",
                         "sum(sample_id)", "avg('a')", "sum(outcome)::INT", "min(sample_id)", "max(dosage)"]),
        st.tuples(st.sampled_from(AGGS), arg).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(BIAGGS), arg, arg).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(st.sampled_from(AGGS), arg, st.sampled_from(ARITH), literals).map(lambda t: f"{t[0]}({t[1]}) {t[2]} {t[3]}"),
    )


FROMS = [
    "samples", "samples s", "phenotypes p", "genotypes g", "variants v", "genotypes", "patients", "samples AS s",
    "samples s JOIN phenotypes p USING (sample_id)",
    "samples s JOIN phenotypes p ON s.sample_id = p.sample_id",
    "samples s JOIN phenotypes p ON s.outcome = p.outcome",
    "samples s LEFT JOIN phenotypes p USING (sample_id)",
    "samples s FULL OUTER JOIN phenotypes p USING (sample_id)",
    "samples s CROSS JOIN phenotypes p",
    "samples s, phenotypes p",
    "samples s JOIN phenotypes p USING (population)",
    "samples s JOIN phenotypes p ON TRUE",
    "genotypes g JOIN samples s USING (sample_id)",
    "genotypes g JOIN variants v USING (variant_id)",
    "genotypes g JOIN variants v ON g.variant_id = v.variant_id JOIN samples s ON s.sample_id = g.sample_id",
    "samples s NATURAL JOIN phenotypes p",
    "samples s ASOF JOIN phenotypes p ON s.sample_id >= p.sample_id",
    "samples s POSITIONAL JOIN phenotypes p",
    "(SELECT sample_id, outcome FROM samples WHERE sex = 'F') t",
    "(SELECT sample_id, sum(dosage) AS burden FROM genotypes WHERE chrom = '22' GROUP BY sample_id) b",
    "(SELECT population, count(*) AS n FROM samples GROUP BY population) t",
    "(SELECT * FROM samples) t",
    "(SELECT 1 AS x) t",
    "(VALUES (1), (2)) t(x)",
    "read_parquet('/etc/passwd')",
    "read_csv_auto('x.csv') t",
    "gwas_linear(phenotype => 'phenotypes.ldl')",
    "gwas_linear(phenotype => 'phenotypes.ldl') JOIN samples USING (sample_id)",
    "pca(k => 2)",
    "pca('x', 'y', 'z')",
    "unknown_fn(1)",
    "main.samples",
    "other.db.samples",
    "samples TABLESAMPLE 10%",
    "samples s AT (VERSION => 1)",
    "generate_series(1, 10) t",
    "LATERAL (SELECT 1) t",
    "samples s JOIN LATERAL (SELECT 1 AS x) t ON TRUE",
    "'samples'",
    "samples.*",
    "(samples)",
    "((SELECT sample_id FROM samples)) t",
    "(SELECT sample_id FROM samples UNION SELECT sample_id FROM phenotypes) u",
]


@st.composite
def query(draw, depth: int = 2) -> str:
    parts = []
    if draw(st.booleans()) and depth > 0:
        cte_body = draw(st.one_of(query(depth - 1), st.sampled_from([
            "SELECT sample_id, outcome FROM samples", "SELECT sample_id, sum(dosage) AS b FROM genotypes GROUP BY sample_id",
            "SELECT population, avg(outcome) AS m FROM samples GROUP BY population", "SELECT 1 AS x", "SELECT * FROM c"])))
        name = draw(st.sampled_from(["c", "samples", "p", "genotypes", "x"]))
        rec = draw(st.sampled_from(["", "RECURSIVE "]))
        parts.append(f"WITH {rec}{name} AS ({cte_body})")
    items = draw(st.lists(st.one_of(aggregate(), scalar(1), st.sampled_from(["*", "s.*", "COLUMNS('.*')", "DISTINCT sex", "sample_id"])),
                          min_size=1, max_size=4))
    items = [f"{it} AS {draw(st.sampled_from(['n', 'x', '_k0', '_p0', 'sex', chr(0x6837), 'select', '_n']))}" if draw(st.booleans()) else it
             for it in items]
    distinct = draw(st.sampled_from(["", "", "DISTINCT ", "DISTINCT ON (sex) ", "ALL "]))
    parts.append(f"SELECT {distinct}{', '.join(items)}")
    frm = draw(st.one_of(st.sampled_from(FROMS), st.sampled_from(["c", "c t", "x"])))
    if depth > 0 and draw(st.integers(0, 9)) == 0:
        frm = f"({draw(query(depth - 1))}) sq"
    parts.append(f"FROM {frm}")
    if draw(st.booleans()):
        parts.append(f"WHERE {draw(predicate(2))}")
    if draw(st.booleans()):
        keys = draw(st.lists(st.one_of(ident(), st.integers(-2, 9).map(str), scalar(1), st.sampled_from(["ALL", "ROLLUP (sex, population)", "CUBE (sex)", "GROUPING SETS ((sex), ())", "()"])),
                             min_size=1, max_size=3))
        parts.append(f"GROUP BY {', '.join(keys)}")
    if draw(st.integers(0, 3)) == 0:
        parts.append(f"HAVING {draw(st.one_of(aggregate().map(lambda a: f'{a} > 5'), predicate(1)))}")
    if draw(st.integers(0, 3)) == 0:
        parts.append("QUALIFY row_number() OVER () = 1")
    if draw(st.booleans()):
        keys = draw(st.lists(st.one_of(ident(), st.integers(-2, 9).map(str), aggregate(), st.just("ALL")), min_size=1, max_size=3))
        dirs = [draw(st.sampled_from(["", " DESC", " ASC NULLS FIRST", " DESC NULLS LAST", " USING <"])) for _ in keys]
        parts.append("ORDER BY " + ", ".join(k + d for k, d in zip(keys, dirs)))
    if draw(st.booleans()):
        parts.append(f"LIMIT {draw(st.one_of(st.integers(-5, 2**65).map(str), st.sampled_from(['ALL', 'NULL', '10%', '1.5', chr(39) + 'x' + chr(39), '(SELECT 1)', 'count(*)', '-1'])))}")
        if draw(st.booleans()):
            parts.append(f"OFFSET {draw(st.one_of(st.integers(-5, 2**65).map(str), st.sampled_from(['x', '1.5'])))}")
    if draw(st.integers(0, 5)) == 0:
        parts.append(draw(st.sampled_from(["UNION SELECT count(*) FROM samples", "; SELECT 1", ";", "FOR UPDATE", "WINDOW w AS ()", "INTO t"])))
    return " ".join(parts)


# -- a schema-aware grammar: mostly valid queries, so planning and fragment validation run ---

NUMERIC = ("BIGINT", "DOUBLE", "TINYINT", "INTEGER")
# FROM clauses and the tables behind their aliases
SCOPES: list[tuple[str, dict[str, str]]] = [
    ("samples", {"samples": "samples"}),
    ("samples s", {"s": "samples"}),
    ("phenotypes p", {"p": "phenotypes"}),
    ("samples s JOIN phenotypes p USING (sample_id)", {"s": "samples", "p": "phenotypes"}),
    ("samples s JOIN phenotypes p ON s.sample_id = p.sample_id", {"s": "samples", "p": "phenotypes"}),
    ("samples s LEFT JOIN phenotypes p ON p.sample_id = s.sample_id", {"s": "samples", "p": "phenotypes"}),
    ("genotypes g", {"g": "genotypes"}),
    ("genotypes g JOIN samples s USING (sample_id)", {"g": "genotypes", "s": "samples"}),
    ("genotypes g JOIN phenotypes p ON g.sample_id = p.sample_id", {"g": "genotypes", "p": "phenotypes"}),
    ("genotypes g JOIN variants v USING (variant_id)", {"g": "genotypes", "v": "variants"}),
    ("variants v", {"v": "variants"}),
    ("(SELECT sample_id, population, outcome, sex FROM samples WHERE status = 1) t",
     {"t": "samples"}),
]
SCOPE_COLUMNS = {"t": ["sample_id", "population", "outcome", "sex"]}


def _columns(scope: dict[str, str]) -> list[tuple[str, str, str]]:
    """(alias, column, type) of every column in scope."""
    out = []
    for alias, table in scope.items():
        for col, typ in CATALOG.tables[table].items():
            if col in SCOPE_COLUMNS.get(alias, [col]):
                out.append((alias, col, typ))
    return out


@st.composite
def column(draw, scope: dict[str, str], kind: str | None = None) -> str:
    cols = [c for c in _columns(scope) if kind is None or (c[2] in NUMERIC) == (kind == "num")] or _columns(scope)
    alias, col, _ = draw(st.sampled_from(cols))
    return draw(st.sampled_from([f"{alias}.{col}", col] if len(scope) == 1 else [f"{alias}.{col}", f"{alias}.{col}", col]))


@st.composite
def num_expr(draw, scope: dict[str, str], depth: int = 1) -> str:
    choice = draw(st.integers(0, 9 if depth > 0 else 3))
    if choice <= 2:
        return draw(column(scope, "num"))
    if choice == 3:
        return draw(st.sampled_from(["1", "0", "2.5", "-3", "1e3", "NULL"]))
    a, b = draw(num_expr(scope, depth - 1)), draw(num_expr(scope, depth - 1))
    if choice <= 6:
        return f"{a} {draw(st.sampled_from(['+', '-', '*', '/', '%']))} {b}"
    if choice == 7:
        return f"{draw(st.sampled_from(['abs', 'round', 'floor', 'ceil', 'sqrt', 'ln', 'sign']))}({a})"
    if choice == 8:
        return f"CASE WHEN {draw(cond(scope, 0))} THEN {a} ELSE {b} END"
    return f"coalesce({a}, {b})"


@st.composite
def cond(draw, scope: dict[str, str], depth: int = 1) -> str:
    choice = draw(st.integers(0, 8 if depth > 0 else 5))
    if choice <= 1:
        return f"{draw(num_expr(scope, 0))} {draw(st.sampled_from(['=', '<>', '<', '<=', '>', '>=']))} {draw(st.integers(-2, 60))}"
    if choice == 2:
        c = draw(column(scope, "str"))
        vals = draw(st.lists(st.sampled_from(["'CEU'", "'YRI'", "'F'", "'M'", "'22'", "'X'", "''", "'é'"]), min_size=1, max_size=3))
        return f"{c} {draw(st.sampled_from(['IN', 'NOT IN']))} ({', '.join(vals)})"
    if choice == 3:
        return f"{draw(column(scope))} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    if choice == 4:
        return f"{draw(num_expr(scope, 0))} BETWEEN {draw(st.integers(0, 10))} AND {draw(st.integers(10, 10**8))}"
    if choice == 5:
        return f"{draw(column(scope, 'str'))} LIKE '{draw(st.sampled_from(['C%', '%', '_', 'a%b']))}'"
    if choice == 6:
        sub = draw(st.sampled_from(["SELECT sample_id FROM phenotypes WHERE age > 40", "SELECT sample_id FROM samples WHERE sex = 'F'",
                                    "SELECT sample_id FROM genotypes WHERE chrom = '22' AND dosage = 2",
                                    "SELECT sample_id FROM phenotypes GROUP BY sample_id HAVING avg(ldl) > 3",
                                    "SELECT population FROM samples GROUP BY population"]))
        sid = next((f"{a}.sample_id" for a, t in scope.items() if "sample_id" in CATALOG.tables[t]), "sample_id")
        return f"{sid} {draw(st.sampled_from(['IN', 'NOT IN']))} ({sub})"
    a, b = draw(cond(scope, depth - 1)), draw(cond(scope, depth - 1))
    if choice == 7:
        return f"({a}) {draw(st.sampled_from(['AND', 'OR']))} ({b})"
    return f"NOT ({a})"


@st.composite
def agg_call(draw, scope: dict[str, str]) -> str:
    has_g = "genotypes" in scope.values()
    choice = draw(st.integers(0, 9))
    x, y = draw(num_expr(scope, 1)), draw(num_expr(scope, 0))
    if choice == 0:
        return "count(*)"
    if choice == 1:
        sid = next((f"{a}.sample_id" for a, t in scope.items() if "sample_id" in CATALOG.tables[t]), "sample_id")
        return draw(st.sampled_from([f"count(DISTINCT {sid})", f"count({x})", f"count(DISTINCT {x})"]))
    if choice <= 4:
        return f"{draw(st.sampled_from(['sum', 'avg', 'var_samp', 'var_pop', 'stddev_samp', 'stddev_pop', 'min', 'max']))}({x})"
    if choice == 5:
        return f"{draw(st.sampled_from(BIAGGS))}({x}, {y})"
    if choice <= 7 and has_g:
        g = next(a for a, t in scope.items() if t == "genotypes")
        fn = draw(st.sampled_from(["allele_freq", "allele_count", "allele_number", "het_count", "hom_alt_count", "hom_ref_count",
                                   "hom_alt_diploid_count", "hwe_p", "call_rate"]))
        return f"{fn}({draw(st.sampled_from([f'{g}.dosage', 'dosage', f'{g}.pos', f'{g}.dosage + 1']))})"
    if choice == 8:
        return f"{draw(agg_call(scope))} {draw(st.sampled_from(['+', '/', '*']))} {draw(agg_call(scope))}"
    return f"round({draw(agg_call(scope))}, 2)"


@st.composite
def valid_query(draw) -> str:
    """An aggregate query over one of SCOPES, mostly plannable, with rare mistakes."""
    frm, scope = draw(st.sampled_from(SCOPES))
    ctes = ""
    if draw(st.integers(0, 5)) == 0:
        ctes = "WITH c AS (SELECT sample_id, sum(dosage) AS burden FROM genotypes WHERE chrom = '22' GROUP BY sample_id) "
        frm, scope = f"{frm} JOIN c USING (sample_id)" if "sample_id" in _columns_names(scope) else frm, scope
    keys = draw(st.lists(st.one_of(column(scope, "str"), column(scope),
                                   num_expr(scope, 1).map(lambda e: f"({e}) // 10"),
                                   cond(scope, 0).map(lambda c: f"CASE WHEN {c} THEN 'a' ELSE 'b' END")), max_size=2, unique=True))
    aggs = draw(st.lists(agg_call(scope), min_size=1 if not keys else 0, max_size=3))
    items = [f"{k} AS k{i}" if draw(st.booleans()) else k for i, k in enumerate(keys)]
    items += [f"{a} AS a{i}" if draw(st.integers(0, 3)) else a for i, a in enumerate(aggs)]
    if draw(st.integers(0, 15)) == 0:
        items.append(draw(column(scope)))  # neither grouped nor aggregated
    items = draw(st.permutations(items))
    sql = f"{ctes}SELECT {draw(st.sampled_from(['', '', '', 'DISTINCT ']))}{', '.join(items)} FROM {frm}"
    if "genotypes" in scope.values():
        g = next(a for a, t in scope.items() if t == "genotypes")
        sql += f" WHERE {g}.chrom = '22' AND {g}.pos < {draw(st.integers(16_000_000, 17_000_000))}"
        if draw(st.booleans()):
            sql += f" AND ({draw(cond(scope))})"
    elif draw(st.booleans()):
        sql += f" WHERE {draw(cond(scope))}"
    if keys:
        style = draw(st.integers(0, 5))
        if style <= 2:
            sql += " GROUP BY " + ", ".join(keys)
        elif style == 3:
            sql += " GROUP BY " + ", ".join(str(items.index(it) + 1) for it in items if any(it.startswith(k) for k in keys))
        elif style == 4:
            sql += " GROUP BY ALL"
        elif len(keys) > 1:
            sql += f" GROUP BY {keys[0]}"  # one key missing
    if aggs and draw(st.integers(0, 4)) == 0:
        sql += f" HAVING {draw(agg_call(scope))} > {draw(st.integers(0, 10))}"
    if draw(st.booleans()):
        targets = [str(i + 1) for i in range(len(items))] + list(keys) + [f"a{i}" for i in range(len(aggs))]
        sql += " ORDER BY " + ", ".join(f"{t}{draw(st.sampled_from(['', ' DESC', ' NULLS FIRST']))}"
                                        for t in draw(st.lists(st.sampled_from(targets), min_size=1, max_size=2)))
    if draw(st.booleans()):
        sql += f" LIMIT {draw(st.integers(0, 20))}"
        if draw(st.booleans()):
            sql += f" OFFSET {draw(st.integers(0, 5))}"
    return sql


def _columns_names(scope: dict[str, str]) -> set[str]:
    return {c for _, c, _ in _columns(scope)}


@st.composite
def garbled(draw) -> str:
    """A grammatical query with garbage tokens spliced in at token boundaries."""
    tokens = draw(query(1)).split(" ")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(tokens)))
        tokens.insert(i, draw(st.one_of(st.sampled_from(GARBAGE), st.text(min_size=1, max_size=6))))
    return " ".join(tokens)


# -- properties ------------------------------------------------------------------------------

@FUZZ
@given(valid_query())
def test_schema_queries(sql):
    front_end(sql)


@FUZZ
@given(query())
def test_generated_queries(sql):
    front_end(sql)


@FUZZ
@given(garbled())
def test_garbage_tokens(sql):
    front_end(sql)


CORPUS_SQL = [q for _, q in CORPUS] + [q for _, q, _ in CORPUS_REFUSED]


@st.composite
def mutated(draw) -> str:
    """Byte-level mutations of a valid corpus query: delete, insert, duplicate, flip, truncate."""
    b = bytearray(draw(st.sampled_from(CORPUS_SQL)).encode())
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "flip", "truncate", "swap"]))
        i = draw(st.integers(0, len(b)))
        j = draw(st.integers(i, min(len(b), i + 16)))
        if op == "delete":
            del b[i:j]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "duplicate":
            b[i:i] = b[i:j]
        elif op == "flip" and i < len(b):
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del b[i:]
        elif op == "swap" and j > i:
            k = draw(st.integers(0, len(b) - (j - i)))
            b[i:j], b[k:k + j - i] = b[k:k + j - i], b[i:j]
    return b.decode("utf-8", errors="replace")


@FUZZ
@given(mutated())
def test_mutated_corpus(sql):
    front_end(sql)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(sql):
    front_end(sql)


def _deep(kind: str, n: int) -> str:
    if kind == "parens":
        return "SELECT count(*) FROM samples WHERE " + "(" * n + "outcome > 1" + ")" * n
    if kind == "not":
        return "SELECT count(*) FROM samples WHERE " + "NOT " * n + "outcome > 1"
    if kind == "arith":
        return "SELECT sum(" + "+".join(["outcome"] * n) + ") FROM samples"
    if kind == "or":
        return "SELECT count(*) FROM samples WHERE " + " OR ".join(f"outcome > {i}" for i in range(n))
    if kind == "subquery":
        q = "SELECT sample_id FROM samples"
        for _ in range(n):
            q = f"SELECT sample_id FROM samples WHERE sample_id IN ({q})"
        return q.replace("SELECT sample_id FROM samples WHERE", "SELECT count(*) FROM samples WHERE", 1)
    if kind == "from":
        q = "SELECT sample_id, outcome FROM samples"
        for i in range(n):
            q = f"SELECT sample_id, outcome FROM ({q}) t{i}"
        return "SELECT avg(outcome) FROM (" + q + ") t"
    if kind == "cte":
        ctes = ["c0 AS (SELECT sample_id, outcome FROM samples)"] + [f"c{i} AS (SELECT sample_id, outcome FROM c{i - 1})" for i in range(1, n)]
        return f"WITH {', '.join(ctes)} SELECT avg(outcome) FROM c{n - 1}"
    if kind == "case":
        return "SELECT sum(" + "CASE WHEN outcome > 0 THEN " * n + "1" + " END" * n + ") FROM samples"
    if kind == "func":
        return "SELECT sum(" + "abs(" * n + "outcome" + ")" * n + ") FROM samples"
    if kind == "in_list":
        return "SELECT count(*) FROM samples WHERE population IN (" + ", ".join(f"'p{i}'" for i in range(n)) + ")"
    if kind == "columns":
        return "SELECT " + ", ".join(f"sum(outcome + {i}) AS c{i}" for i in range(n)) + " FROM samples"
    if kind == "group":
        return "SELECT count(*) FROM samples GROUP BY " + ", ".join(f"outcome + {i}" for i in range(n))
    if kind == "string":
        return "SELECT count(*) FROM samples WHERE population = '" + "x" * n * 100 + "'"
    if kind == "ident":
        return "SELECT count(*) FROM " + "s" * n * 100
    raise AssertionError(kind)


DEEP = ["parens", "not", "subquery", "from", "cte", "case", "func", "string", "ident"]  # recursion, or refused early
WIDE = ["arith", "or", "columns", "group", "in_list"]  # flat or left-deep: planned, cost grows with size


@pytest.mark.parametrize("kind, n", [(k, n) for k in DEEP for n in (40, 300, 3000)] + [(k, n) for k in WIDE for n in (40, 300)])
def test_deep_and_long(kind, n):
    front_end(_deep(kind, n))


def test_too_many_selects_named():
    from genofed import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"the query has 66 SELECTs \(subqueries and CTEs\); at most 64 are supported"):
        parse(_deep("cte", 65))


def test_too_deep_named():
    from genofed import ParseError

    with pytest.raises(ParseError, match="nests expressions, subqueries or parentheses too deeply to be analysed; flatten it"):
        parse(_deep("parens", 3000))


def test_long_names_are_clipped():
    from genofed import PlanningError

    with pytest.raises(PlanningError, match=r"unknown table 's{57}\.\.\.'; the federated tables are") as e:
        plan_query(parse(_deep("ident", 100)), CATALOG)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("sql", [
    "", " ", ";", ";;", "--", "/*", "'", '"', "\x00", "SELECT", "SELECT count(*) FROM samples; SELECT 1",
    "SELECT count(*) FROM samples;;", "\ufeffSELECT count(*) FROM samples", "SELECT count(*) FROM samples\x00",
    "SELECT count(*) FROM samples WHERE sex = '\udcff'", "SELECT count(*) FROM samples WHERE sex = 'é' || '样本'",
    "SELECT count(*) FROM 样本", 'SELECT count(*) FROM "samples\u0000"', "SELECT \u202ecount(*) FROM samples",
    "EXPLAIN SELECT count(*) FROM samples", "PRAGMA version", "COPY samples TO '/tmp/x'", "ATTACH '/tmp/x.db'",
    "INSTALL httpfs", "SET threads = 1", "CALL pragma_version()", "VALUES (1)", "FROM samples",
    "FROM samples SELECT count(*)", "SELECT count(*) FROM samples GROUP BY 0", "SELECT count(*) FROM samples GROUP BY 99",
    "SELECT sex, count(*) FROM samples GROUP BY 1, 2", "SELECT sex, count(*) FROM samples ORDER BY 5",
    "SELECT sex, count(*) FROM samples GROUP BY ALL ORDER BY ALL", "SELECT count(*) FROM samples GROUP BY ALL",
    "SELECT sex AS a, sex AS a, count(*) FROM samples GROUP BY 1", "SELECT count(*) AS n, count(*) AS n FROM samples",
    "SELECT count(*) FROM samples LIMIT -1", "SELECT count(*) FROM samples LIMIT 99999999999999999999999",
    "SELECT count(*) FROM samples OFFSET 'x'", "SELECT count(*) FROM samples LIMIT count(*)",
    "SELECT population FROM samples GROUP BY population HAVING count(*) > 5 ORDER BY count(*) DESC LIMIT 3",
    "SELECT count(*) FROM samples HAVING sex = 'F'", "SELECT 1 FROM samples HAVING 1 = 1", "SELECT 1",
    "SELECT count(*)", "SELECT count(*) WHERE 1 = 1", "SELECT count(*) FROM (SELECT 1)", "SELECT count(*) FROM (SELECT 1) t",
    "WITH c AS (SELECT 1 AS x) SELECT count(*) FROM c", "WITH c AS (SELECT sample_id FROM samples) SELECT count(*) FROM c, c",
    "WITH RECURSIVE c AS (SELECT 1 AS x UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "WITH samples AS (SELECT sample_id, outcome FROM samples) SELECT avg(outcome) FROM samples",
    "SELECT count(*) FROM samples s JOIN samples s USING (sample_id)", "SELECT count(*) FROM samples JOIN phenotypes USING ()",
    "SELECT count(*) FROM samples s JOIN phenotypes p ON s.sample_id = p.sample_id AND s.sample_id = p.sample_id OR TRUE",
    "SELECT s.count(*) FROM samples s", "SELECT samples.samples.sex, count(*) FROM samples GROUP BY 1",
    "SELECT count(*) FROM samples WHERE sample_id IN (SELECT sample_id, outcome FROM samples)",
    "SELECT count(*) FROM samples WHERE (sex, population) IN (SELECT sex, population FROM samples)",
    "SELECT count(*) FROM samples WHERE EXISTS (SELECT)", "SELECT count(*) FROM samples WHERE sample_id IN ()",
    "SELECT allele_freq(dosage) FROM samples", "SELECT allele_freq(g.dosage) FROM genotypes", "SELECT hwe_p(dosage, dosage) FROM genotypes",
    "SELECT count(*) FROM gwas_linear()", "SELECT * FROM gwas_linear(phenotype => 1, phenotype => 2)", "SELECT * FROM gwas_linear(x => [1, [2]])",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', covariates => {'a': 1})", "SELECT * FROM gwas_linear('a', 'b', 'c', 'd', 'e', 'f')",
    "SELECT * FROM gwas_linear(phenotype => -'x')", "SELECT * FROM gwas_linear(phenotype => 1e999)", "SELECT * FROM gwas_linear(1 => 2)",
    "SELECT * FROM gwas_linear(phenotype := 'x')", "SELECT * FROM gwas_linear(phenotype = 'x')", "SELECT * FROM gwas_linear(phenotype => 0x10)",
    "SELECT * FROM gwas_linear(phenotype => 1_000)", "SELECT * FROM gwas_linear(phenotype => .5e)", "SELECT * FROM gwas_linear(phenotype => -(-1))",
    "SELECT * FROM pca(), samples", "SELECT count(*) FROM samples WHERE sample_id IN (SELECT * FROM pca(k => 2))",
    "SELECT count(*) FROM samples GROUP BY ROLLUP (sex)", "SELECT sex, count(*) FROM samples GROUP BY sex WITH ROLLUP",
    "SELECT count(*) FILTER (WHERE sex = 'F') FROM samples", "SELECT count(*) FROM samples WINDOW w AS (PARTITION BY sex)",
    "SELECT sum(outcome) OVER w FROM samples WINDOW w AS (PARTITION BY sex)", "SELECT count(*) FROM samples QUALIFY TRUE",
    "SELECT count(*) FROM samples USING SAMPLE 10", "SELECT count(*) FROM samples TABLESAMPLE BERNOULLI (50)",
    "SELECT count(*) FROM samples PIVOT (count(*) FOR sex IN ('F', 'M'))", "SELECT count(*) FROM samples UNPIVOT (v FOR k IN (sex))",
    "SELECT {'a': count(*)} FROM samples", "SELECT [count(*)] FROM samples", "SELECT count(*)[1] FROM samples",
    "SELECT (count(*)).x FROM samples", "SELECT count(*) FROM samples WHERE outcome = $1", "SELECT count(*) FROM samples WHERE outcome = ?",
    "SELECT count(*) FROM samples WHERE outcome = :x", "SELECT count(*) FROM samples WHERE x -> 'a' = 1",
    "SELECT count(*) FROM samples WHERE lambda x: x", "SELECT count(*) FROM samples WHERE sex COLLATE nocase = 'f'",
    "SELECT count(*) FROM samples WHERE sex LIKE 'a' ESCAPE '\\'", "SELECT count(*) FROM samples WHERE sex SIMILAR TO 'a'",
    "SELECT count(*) FROM samples WHERE outcome::INT[] = [1]", "SELECT count(*) FROM samples WHERE CAST(outcome AS nosuchtype) = 1",
    "SELECT count(*) FROM samples WHERE outcome BETWEEN SYMMETRIC 1 AND 0", "SELECT count(*) FROM samples WHERE outcome IN (SELECT 1)",
    "SELECT count(*) AS \"\" FROM samples", "SELECT count(*) AS \"_k0\" FROM samples", "SELECT count(*) AS \"a\"\"b\" FROM samples",
    "SELECT count(*) \"\u0000\" FROM samples", "SELECT sex AS _p0, count(*) AS _k0 FROM samples GROUP BY sex",
    "SELECT count(*) FROM samples, samples", "SELECT count(*) FROM samples AS genotypes JOIN genotypes USING (sample_id)",
    "SELECT g.chrom, allele_freq(g.dosage) FROM genotypes g GROUP BY g.chrom ORDER BY allele_freq(g.dosage) DESC",
    "SELECT count(*) FROM samples ORDER BY sample_id", "SELECT count(*) FROM samples ORDER BY (SELECT 1)",
    "SELECT sex, count(*) FROM samples GROUP BY sex ORDER BY sum(outcome) / 0",
    "SELECT sex, count(*) FROM samples GROUP BY sex HAVING (SELECT 1) = 1",
    "SELECT sex, count(*) FROM samples GROUP BY sex HAVING outcome > 1",
    "SELECT count(*) FROM samples GROUP BY sample_id || ''", "SELECT length(sample_id), count(*) FROM samples GROUP BY 1",
    "SELECT count(*) FROM samples GROUP BY (SELECT 1)", "SELECT count(*) FROM samples GROUP BY count(*)",
    "SELECT count(*) FROM samples GROUP BY sex HAVING count(*) > (SELECT 1)",
    "SELECT count(*) FROM samples WHERE count(*) > 1", "SELECT count(*) FROM samples WHERE sum(outcome) OVER () > 1",
])
def test_edge_cases(sql):
    front_end(sql)


# -- end to end: a real federation (three node servers on loopback, in this process) --------

@pytest.fixture(scope="module")
def live_fed(fed_dir_1126, tmp_path_factory):
    from conftest import clone_federation
    from inproc import serve_in_process

    import genofed

    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fuzz_sql_fed"), min_count=1, gates=False,
                            rate_limit_per_minute=0)
    with serve_in_process(root):
        fed = genofed.connect(root, timeout=30)
        yield fed
        fed.close()


@st.composite
def e2e_query(draw) -> str:
    """Mostly plannable queries (bounded genotype scans), some garbled or mutated."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return draw(valid_query())
    if kind <= 7:
        tokens = draw(valid_query()).split(" ")
        i = draw(st.integers(0, len(tokens)))
        tokens.insert(i, draw(st.sampled_from(GARBAGE)))
        return " ".join(tokens)
    return draw(mutated().filter(lambda q: "genotypes" not in q or "chrom = '22'" in q))


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
@given(sql=e2e_query())
def test_federation_only_raises_genofed_errors(live_fed, sql):
    try:
        live_fed.sql(sql).to_arrow()
    except GenofedError as e:
        assert_clean(e, sql)
        assert "internal error" not in str(e), f"a node failed internally on {sql!r}: {e}"




@pytest.mark.parametrize("sql", [
    "SELECT sum(status) * 9223372036854775807 AS x FROM samples",
    "SELECT sum(status * 9223372036854775807) AS x FROM samples",
    "SELECT sum(CAST(outcome AS INT) * 4611686018427387904) FROM samples",
    "SELECT CAST(sum(outcome) AS TINYINT) FROM samples",
    "SELECT sum(outcome) / 0 FROM samples",
    "SELECT sum(status) // 0 FROM samples",
    "SELECT sum(status % 0) FROM samples",
    "SELECT sum(ln(outcome - 1000)) FROM samples",
    "SELECT sum(sqrt(-outcome)) FROM samples",
    "SELECT sum(CAST(sex AS INT)) FROM samples",
    "SELECT count(*) FROM samples WHERE CAST(population AS DOUBLE) > 1",
    "SELECT sum(pow(outcome, 1000)) FROM samples",
    "SELECT avg(1e308 * outcome) FROM samples",
    "SELECT sex, count(*) FROM samples GROUP BY sex ORDER BY 1 LIMIT 9223372036854775807",
    "SELECT sex, count(*) FROM samples GROUP BY sex LIMIT 99999999999999999999999",
    "SELECT sex, count(*) FROM samples GROUP BY sex LIMIT -1",
    "SELECT sex, count(*) FROM samples GROUP BY sex OFFSET -5",
    "SELECT substring(sex, -5, -1), count(*) FROM samples GROUP BY 1",
    "SELECT left(population, -1), count(*) FROM samples GROUP BY 1",
    "SELECT split_part(population, '', 0), count(*) FROM samples GROUP BY 1",
    "SELECT round(outcome, 1000), count(*) FROM samples GROUP BY 1",
    "SELECT sum(round(outcome, -1000)) FROM samples",
    "SELECT count(*) FROM samples WHERE sex LIKE 'a' ESCAPE 'xx'",
    "SELECT count(*) FROM samples WHERE population = 'é样本\U0001F9EC'",
    "SELECT count(*) FROM samples WHERE CAST('x' AS DATE) IS NULL",
    "SELECT allele_freq(g.dosage) FROM genotypes g WHERE g.chrom = '22' AND g.pos < 16100000",
    "SELECT hwe_p(g.dosage), count(*) FROM genotypes g WHERE g.chrom = 'nochrom'",
    "SELECT g.variant_id, hwe_p(g.dosage) AS p FROM genotypes g JOIN samples s USING (sample_id) "
    "WHERE g.chrom = 'X' AND s.sex = 'M' AND g.pos > 3000000 GROUP BY 1 ORDER BY 1 LIMIT 3",
    "SELECT g.pos // 0, count(*) FROM genotypes g WHERE g.chrom = '22' AND g.pos < 16100000 GROUP BY 1",
    "SELECT greatest(sex, 1), count(*) FROM samples GROUP BY 1",
    "SELECT sum(outcome) FROM samples WHERE sample_id IN (SELECT sample_id FROM phenotypes WHERE CAST(bmi AS INT) / 0 > 1)",
    "SELECT corr(outcome, outcome), regr_slope(status, status), var_samp(1) FROM samples WHERE sex = 'nobody'",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.nosuch')",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', covariates => ['1/0'], chrom => '22', start => 1, stop => 2)",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', samples => 'sex = 1', chrom => '22', start => 1, stop => 2)",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', variants => 'pos / 0 > 1', chrom => '22', start => 1, stop => 2)",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', chrom => 22, start => -1, stop => 1e300)",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', chrom => '22', start => 'a')",
    "SELECT nosuch FROM gwas_linear(phenotype => 'phenotypes.ldl', chrom => '22', start => 1, stop => 2)",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', covariates => ['" + "(" * 500 + "age" + ")" * 500 + "'])",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', samples => 'x; DROP TABLE samples', chrom => '22')",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', variants => 'pos > (SELECT 1)', chrom => '22')",
    "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', variants => '''unterminated', chrom => '22')",
    "SELECT * FROM gwas_linear(phenotype => '" + "x" * 5000 + "')",
    "SELECT count(*) FROM samples GROUP BY 0",
    "SELECT count(*) FROM samples WHERE EXISTS (SELECT)",
    "SELECT count(*) FROM samples WHERE CAST(outcome AS nosuchtype) = 1",
    "SELECT count(*) FROM samples WHERE sample_id IN ()",
    "SELECT count(*) FROM samples WHERE (sex, population) IN (SELECT sex, population FROM samples)",
    "SELECT count(*) FROM samples WHERE sample_id IN (SELECT sample_id, outcome FROM samples)",
    "SELECT count(*) FROM (SELECT 1) t",
    'SELECT count(*) AS "" FROM samples',
    'SELECT count(*) "\x00" FROM samples',
    "SELECT count(*) FROM samples AS genotypes JOIN genotypes USING (sample_id)",
    "WITH samples AS (SELECT sample_id, outcome FROM samples) SELECT avg(outcome) FROM samples",
    "\ufeffSELECT count(*) FROM samples",
])
def test_federation_edge_cases(live_fed, sql):
    """Queries that plan but may fail where they run (a node's DuckDB, the coordinator's finalize)."""
    try:
        live_fed.sql(sql).to_arrow()
    except GenofedError as e:
        assert_clean(e, sql)
        assert "internal error" not in str(e), f"a node failed internally on {sql!r}: {e}"


def test_no_table_is_answered_once(live_fed):
    """A query over no federated table is computed at one node, not summed over the nodes."""
    assert live_fed.sql("SELECT count(*) AS n").to_arrow().column("n").to_pylist() == [1]
