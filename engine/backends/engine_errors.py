"""Engine errors translated at the node (disclosure rule 7: errors carry no values).

DuckDB's messages quote the operands: ``Overflow in multiplication of INT64 (55 * 10^18)``,
``Could not convert string 'HG00096' to INT32``, a date that does not parse. A node must never
forward them. :func:`translate_duckdb` builds our own message from the exception's class, the
fixed template prefix of its message (read only up to where DuckDB starts quoting data, so no
value can steer it) and the fragment's own constructs and column names::

    the node could not run the fragment: numeric overflow in a multiplication over
    phenotypes.age (a result does not fit BIGINT); CAST the operands to DOUBLE ...

Engines whose messages have no stable template (Hail/Spark, NumPy) get :func:`translate_engine`:
the exception class and the columns only. The engine's own message goes to the node's log (the
steward's), never to the researcher.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlglot import exp

from .. import limits
from ..errors import ExecutionError, GenofedError

log = logging.getLogger("genofed.node")

_NUM = r"(?:U?INT(?:8|16|32|64|128)|U?HUGEINT|DOUBLE|FLOAT|DECIMAL\(\d+,\s*\d+\))"
_TYPE = r"(\w+(?:\(\d+(?:,\s*\d+)?\))?)"

# Anchored at the start of the message, each up to the point where DuckDB starts quoting data
# (or, where a value is matched, only a value of a numeric source type, printed as a number).
_ARITH = re.compile(r"Out of Range Error: Overflow in (multiplication|addition|subtraction|division|negation) of (" + _NUM + r")\b")
_ABS = re.compile(r"Out of Range Error: Overflow on abs\(")
_CAST_RANGE = re.compile(r"(?:Conversion|Invalid Input) Error: Type (" + _NUM + r") with value \S+ can't be cast because the value "
                         r"is out of range for the destination type " + _TYPE)
_CAST_RANGE_QUOTED = re.compile(r'Conversion Error: Casting value "[-+0-9.eE]+" to type ' + _TYPE + " failed: value is out of range")
_CAST_DECIMAL = re.compile(r"Conversion Error: Could not cast value [-+0-9.eE]+ to (DECIMAL\(\d+,\s*\d+\))")
_DATE_RANGE = re.compile(r"Conversion Error: (?:Date out of range|Date and time not in timestamp range|Timestamp out of range)")
_UNIMPLEMENTED_CAST = re.compile(r"Conversion Error: Unimplemented type for cast \((\w+(?:\[\])?) -> (\w+(?:\[\])?)\)")
_DIV0 = re.compile(r"Invalid Input Error: Division by zero\b")
_PARSE = re.compile(r"Invalid Input Error: Could not parse string\b")

# DuckDB's internal type names as SQL names
_SQL_TYPE = {"INT8": "TINYINT", "INT16": "SMALLINT", "INT32": "INTEGER", "INT64": "BIGINT", "INT128": "HUGEINT",
             "UINT8": "UTINYINT", "UINT16": "USMALLINT", "UINT32": "UINTEGER", "UINT64": "UBIGINT", "UINT128": "UHUGEINT",
             "BOOL": "BOOLEAN"}

_OPS: dict[str, tuple[tuple[type[exp.Expression], ...], str]] = {
    "multiplication": ((exp.Mul,), "a multiplication"),
    "addition": ((exp.Add, exp.Sum), "an addition or SUM"),
    "subtraction": ((exp.Sub,), "a subtraction"),
    "division": ((exp.Div, exp.IntDiv), "a division"),
    "negation": ((exp.Neg,), "a negation"),
    "abs": ((exp.Abs,), "ABS"),
}
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg, exp.Abs, exp.Pow, exp.Sum)
_DIVISIONS = (exp.Div, exp.IntDiv, exp.Mod)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between, exp.NullSafeEQ, exp.NullSafeNEQ)
MAX_COLUMNS = 6


def _sql_type(t: str | None) -> str | None:
    return None if t is None else _SQL_TYPE.get(t, t)


def classify_duckdb(e: BaseException) -> tuple[str, dict[str, str]]:
    """``(kind, details)`` of a DuckDB exception, from its class and its message's fixed template
    prefix; details hold operator and type names only (never a value)."""
    import duckdb

    first = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, duckdb.OutOfRangeException):
        if m := _ARITH.match(first):
            return "overflow", {"op": m.group(1), "type": _sql_type(m.group(2)) or ""}
        if _ABS.match(first):
            return "overflow", {"op": "abs"}
        return "out_of_range", {}
    if isinstance(e, duckdb.ConversionException | duckdb.InvalidInputException):
        if m := _CAST_RANGE.match(first):
            return "overflow", {"op": "cast", "type": _sql_type(m.group(2)) or ""}
        for rx in (_CAST_RANGE_QUOTED, _CAST_DECIMAL):
            if m := rx.match(first):
                return "overflow", {"op": "cast", "type": _sql_type(m.group(1)) or ""}
        if _DATE_RANGE.match(first):
            return "out_of_range", {"what": "date"}
        if m := _UNIMPLEMENTED_CAST.match(first):
            return "unsupported_cast", {"from": _sql_type(m.group(1)) or "", "to": _sql_type(m.group(2)) or ""}
        if _DIV0.match(first):
            return "division_by_zero", {}
        if _PARSE.match(first):
            return "conversion", {"op": "parse"}
        return ("conversion", {}) if isinstance(e, duckdb.ConversionException) else ("invalid_input", {})
    if isinstance(e, duckdb.BinderException | duckdb.ParserException | duckdb.CatalogException | duckdb.NotImplementedException):
        return "type", {}
    if isinstance(e, duckdb.InterruptException):
        return "interrupted", {}
    return "engine", {}


def _tables(select: exp.Expression) -> dict[str, str]:
    return {t.alias_or_name: t.name for t in select.find_all(exp.Table)}


def _column_names(nodes: list[exp.Expr], tables: dict[str, str]) -> tuple[str, ...]:
    out: set[str] = set()
    for n in nodes:
        for c in n.find_all(exp.Column):
            if not c.name or c.name == "*" or c.name.startswith("_"):  # a star, the node's own helper columns
                continue
            t = tables.get(c.table, c.table)
            out.add(f"{t}.{c.name}" if t and not t.startswith("_") else c.name)
    return tuple(sorted(out))


def _constructs(kind: str, details: dict[str, str], select: exp.Expression | None) -> tuple[str, tuple[str, ...]]:
    """The construct to name and the columns inside it, from the fragment (never the data)."""
    op = details.get("op")
    types: tuple[type[exp.Expr], ...]
    if kind == "overflow":
        if op == "cast":
            label, types = f"a CAST to {details['type']}" if details.get("type") else "a CAST", (exp.Cast,)
        else:
            types, label = _OPS.get(op or "", (_ARITHMETIC, "arithmetic"))
    elif kind == "division_by_zero":
        label, types = "a division or modulo", _DIVISIONS
    elif kind == "conversion" and op == "parse":
        label, types = "parsing text as a date or time", (exp.Func,)
    elif kind in ("conversion", "unsupported_cast"):
        label, types = "a CAST", (exp.Cast,)
    elif kind in ("out_of_range", "invalid_input"):
        label, types = ("a date or time computation" if details.get("what") == "date" else "a function or operator"), (exp.Func, *_ARITHMETIC)
    else:
        label, types = "an expression", ()
    if select is None:
        return label, ()
    tables = _tables(select)
    nodes: list[exp.Expr] = [n for n in select.find_all(*types) if not isinstance(n, exp.TryCast)] if types else []
    if kind == "division_by_zero":
        nodes = [n.expression for n in nodes if n.expression is not None]  # the divisors
    elif kind == "conversion" and op != "parse" and not nodes:  # no CAST: text compared with a number
        label, nodes = "an implicit conversion (text compared with a number or date)", list(select.find_all(*_COMPARISONS))
    cols = _column_names(nodes, tables) if nodes else ()
    if not cols:
        cols = _column_names([select], tables)
    return label, cols


def _remedy(kind: str, details: dict[str, str]) -> str:
    op, t = details.get("op"), details.get("type")
    if kind == "overflow" and op == "cast":
        return (f"some value does not fit {t or 'the target type'}; CAST to a wider type, or use TRY_CAST "
                "(NULL where a value does not fit)")
    if kind == "overflow":
        return (f"a result does not fit {t or 'its type'}; CAST the operands to DOUBLE or a wider integer type "
                "first, or use smaller constants")
    return {
        "division_by_zero": "the divisor is 0 for some row; guard it with NULLIF(divisor, 0)",
        "conversion": "some value is not valid input for the target type; use TRY_CAST (NULL where a value does not "
                      "convert), or compare text with text and numbers with numbers",
        "unsupported_cast": f"DuckDB cannot CAST {details.get('from') or 'that type'} to {details.get('to') or 'the target type'}",
        "out_of_range": "an argument is outside the range the function supports; narrow it",
        "invalid_input": "a function got an argument it cannot use; check the functions' arguments",
        "type": "a function or operator got arguments of types it does not take (e.g. text compared with a number: "
                "add a CAST); check the types of the columns in the catalog",
        "interrupted": "the engine was interrupted; retry",
    }.get(kind, "the node's steward can read the engine's own message in the node log")


_WHAT = {
    "overflow": "numeric overflow",
    "division_by_zero": "division by zero",
    "conversion": "conversion failed",
    "unsupported_cast": "unsupported conversion",
    "out_of_range": "a value out of range",
    "invalid_input": "invalid input",
    "type": "a type error",
    "interrupted": "interrupted",
}


def _message(doing: str, what: str, label: str, cols: tuple[str, ...], remedy: str) -> str:
    shown = ", ".join(cols[:MAX_COLUMNS]) + (f" and {len(cols) - MAX_COLUMNS} more" if len(cols) > MAX_COLUMNS else "")
    over = f" over {shown}" if shown else ""
    return f"the node could not {doing}: {what} in {label}{over}; {remedy}"


def _steward_log(engine: str, doing: str, kind: str, e: BaseException) -> None:
    # the node log is the steward's: the engine's own message (it may quote values) stays there
    log.info("%s could not %s (%s): %s", engine, doing, kind, (str(e).strip().splitlines() or [type(e).__name__])[0][:500])


def translate_duckdb(e: BaseException, doing: str, select: exp.Expression | None = None) -> GenofedError:
    """Our error for a DuckDB exception raised while the node ``doing`` something over
    ``select`` (the fragment, or the analysis's sample query): :class:`ExecutionError` naming the
    kind of failure, the construct and the columns; out of memory is the node's memory limit."""
    import duckdb

    if isinstance(e, duckdb.OutOfMemoryException):
        return limits.ResourceLimitError(
            "the fragment needed more memory than this node allows (DuckDB's memory limit); narrow the query (fewer "
            "variants or groups) or ask the data steward to raise [limits] memory_mb", "memory_limit")
    kind, details = classify_duckdb(e)
    _steward_log("DuckDB", doing, kind, e)
    label, cols = _constructs(kind, details, select)
    what = _WHAT.get(kind, f"the DuckDB engine failed ({type(e).__name__})")
    return ExecutionError(_message(doing, what, label, cols, _remedy(kind, details)), kind, label, cols)


def translate_engine(e: BaseException, engine: str, doing: str, select: exp.Expression | None = None) -> ExecutionError:
    """Our error for an exception of an engine without stable message templates (Hail/Spark,
    NumPy, Arrow): its class name and the fragment's columns only."""
    _steward_log(engine, doing, "engine", e)
    cols = _column_names([select], _tables(select)) if select is not None else ()
    what = f"the {engine} engine failed ({type(e).__name__}, e.g. an overflow, a conversion or a division by zero)"
    return ExecutionError(_message(doing, what, "an expression", cols, _remedy("engine", {})), "engine", None, cols)


def describe(e: BaseException) -> str:
    """A value-free one-line description of an engine exception: its kind and class."""
    try:
        import duckdb

        if isinstance(e, duckdb.Error):
            kind, _ = classify_duckdb(e)
            return f"{_WHAT.get(kind, 'engine error')} ({type(e).__name__})"
    except ImportError:  # pragma: no cover - duckdb is a core dependency
        pass
    return f"engine error ({type(e).__name__})"


def parse_for_columns(sql: str | None) -> Any:
    """The parsed form of SQL the node runs (for naming columns in an error), or None."""
    if not sql:
        return None
    try:
        import sqlglot

        from ..sqlcheck import DIALECT

        return sqlglot.parse_one(sql, read=DIALECT)
    except Exception:  # noqa: BLE001 - naming columns is best effort
        return None


__all__ = ["classify_duckdb", "describe", "parse_for_columns", "translate_duckdb", "translate_engine"]
