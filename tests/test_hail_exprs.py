"""Every SQL expression rule of the Hail compiler against DuckDB on the same rows, NULLs included
(three-valued logic, NULL in IN lists, CASE without ELSE, integer division and remainder signs,
casts that round, LIKE wildcards). Collected only where Hail is installed."""

from __future__ import annotations

import math

import duckdb
import pytest
from sqlglot import exp

from genofed.engine.backends.hail_exprs import UnsupportedByBackend
from genofed.engine.backends.hail_plan import Compiler, HailTables
from genofed.engine.backends.hail_session import HailSettings, ensure_session
from genofed.engine.sqlcheck import parse

ROWS = [
    {"i": 7, "j": 2, "x": 2.5, "s": "GBR", "b": True},
    {"i": -7, "j": 2, "x": -2.5, "s": "YRI", "b": False},
    {"i": 0, "j": -3, "x": 0.0, "s": "a_b%c", "b": None},
    {"i": None, "j": 5, "x": None, "s": None, "b": True},
    {"i": 12, "j": None, "x": 1e9, "s": "CHB", "b": None},
    {"i": 3, "j": 3, "x": -0.49, "s": "", "b": False},
]

EXPRESSIONS = [
    "i + j", "i - j * 2", "i / j", "x / 0", "-x", "i // j", "i % j", "i IS NULL", "NOT (i > 0)",
    "i > 0 AND b", "i > 0 OR b", "NOT b", "i BETWEEN -1 AND 7", "i IN (7, 0, NULL)", "i IN (7, 0)",
    "s IN ('GBR', 'CHB')", "s NOT IN ('GBR')", "s LIKE 'a\\_%' ", "s LIKE '%B%'", "s LIKE '_BR'", "s ILIKE 'gbr'",
    "CASE WHEN i > 0 THEN 'pos' WHEN i < 0 THEN 'neg' END", "CASE WHEN b THEN i ELSE x END",
    "CASE s WHEN 'GBR' THEN 1 WHEN 'YRI' THEN 2 ELSE 0 END", "COALESCE(i, j, 0)", "COALESCE(x, 1)",
    "CAST(x AS BIGINT)", "CAST(x * 3 AS BIGINT)", "CAST(x + 1 AS INT)", "CAST(i AS DOUBLE) / 4", "CAST(b AS INT)", "floor(x)", "ceil(x)", "abs(i)", "sqrt(abs(x))",
    "ln(abs(x) + 1)", "length(s)", "lower(s)", "upper(s)", "s || '!'", "greatest(i, j)", "least(i, j)", "round(x)",
    "x * x >= 6.25", "i = 7.0",
]


@pytest.fixture(scope="module")
def engines():
    hl = ensure_session(HailSettings(master="local[2]", driver_memory="3g"))
    ht = hl.Table.parallelize(ROWS, hl.tstruct(i=hl.tint64, j=hl.tint64, x=hl.tfloat64, s=hl.tstr, b=hl.tbool))
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i BIGINT, j BIGINT, x DOUBLE, s VARCHAR, b BOOLEAN)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [tuple(r.values()) for r in ROWS])
    return hl, Compiler(hl, HailTables(None, {"t": ht})), con


def _order(row):
    v = row[0]
    return (0, 0.0, "") if v is None else (1, float(v) + 0.0, "") if isinstance(v, (int, float)) else (2, 0.0, str(v))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if a is None or b is None:
            return a is b
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_expression_equals_duckdb(engines, expr):
    hl, compiler, con = engines
    sql = f"SELECT {expr} AS _k0, COUNT(*) AS _p0 FROM t AS t GROUP BY {expr}"
    # the compiler receives qualified fragments: qualify the columns as the node would
    q = parse(sql)
    for c in q.find_all(exp.Column):
        c.set("table", exp.to_identifier("t"))
    want = sorted(con.execute(sql).fetchall(), key=_order)
    plan = compiler.select(q, {}, top=True)
    got = sorted([(r["_k0"], r["_p0"]) for r in plan.table.collect()], key=_order)
    assert len(got) == len(want), (expr, got, want)
    for g, w in zip(got, want, strict=True):
        assert _same(g[0], w[0]) and g[1] == w[1], (expr, got, want)


def test_division_by_zero_in_integer_division_is_an_error(engines):
    hl, compiler, con = engines
    with pytest.raises(duckdb.Error):
        con.execute("SELECT sum(i // (j - j)) FROM t").fetchall()
    q = parse("SELECT SUM(t.i // (t.j - t.j)) AS _p0 FROM t AS t")
    plan = compiler.select(q, {}, top=True)
    with pytest.raises(Exception, match="division by zero"):
        hl.eval(plan.struct)


def test_an_unsupported_expression_names_itself(engines):
    hl, compiler, con = engines
    q = parse("SELECT t.s SIMILAR TO 'G.*' AS _k0, COUNT(*) AS _p0 FROM t AS t GROUP BY t.s SIMILAR TO 'G.*'")
    with pytest.raises(UnsupportedByBackend, match="the hail backend cannot run SimilarTo"):
        compiler.select(q, {}, top=True)
