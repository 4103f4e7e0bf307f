"""sqlglot expressions to Hail expressions, one rule per expression type (``singledispatch``).

The fallback raises :class:`UnsupportedByBackend` naming the construct, so a fragment the Hail
backend cannot run fails clearly instead of running differently. SQL's NULL semantics are kept:
comparisons and arithmetic with NULL are NULL (Hail's missing), AND/OR are three-valued, ``x IN
(...)`` is NULL for a NULL ``x``, WHERE keeps only true rows, aggregates skip NULLs and SUM over
no value is NULL.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sqlglot import exp

from ..errors import FragmentError, UnsupportedError
from ..sqlcheck import DIALECT


class UnsupportedByBackend(UnsupportedError):
    """The fragment uses something this backend cannot run (the planner's ``has_operation`` says no)."""


@dataclass
class Ctx:
    """What an expression is compiled against.

    ``columns`` maps ``(table alias, column)`` to a Hail expression; ``subquery`` turns an
    ``IN (SELECT ...)`` body into the Python set of its values; ``aggregate`` is True inside an
    aggregation (where aggregate functions are allowed).
    """

    hl: ModuleType
    columns: dict[tuple[str, str], Any]
    subquery: Callable[[exp.Expression], tuple[set, bool]] | None = None
    aggregate: bool = False

    def agg(self) -> Ctx:
        return Ctx(self.hl, self.columns, self.subquery, True)


def unsupported(what: str) -> UnsupportedByBackend:
    return UnsupportedByBackend(f"the hail backend cannot run {what}; this node's steward can switch it to the duckdb backend, "
                                "or rewrite the query without it (docs/hail-backend.md lists what it runs)")


@functools.singledispatch
def hx(e: exp.Expression, ctx: Ctx) -> Any:
    raise unsupported(f"{type(e).__name__} ({e.sql(DIALECT)[:80]})")


@hx.register
def _column(e: exp.Column, ctx: Ctx) -> Any:
    key = (e.table, e.name)
    if key not in ctx.columns:
        raise FragmentError(f"the hail backend could not resolve column {e.sql(DIALECT)}")
    return ctx.columns[key]


@hx.register
def _paren(e: exp.Paren, ctx: Ctx) -> Any:
    return hx(e.this, ctx)


@hx.register
def _alias(e: exp.Alias, ctx: Ctx) -> Any:
    return hx(e.this, ctx)


@hx.register
def _literal(e: exp.Literal, ctx: Ctx) -> Any:
    hl = ctx.hl
    if e.is_string:
        return hl.str(e.this)
    txt = e.this
    if re.fullmatch(r"[+-]?\d+", txt):
        return hl.int64(int(txt))
    return hl.float64(float(txt))


@hx.register
def _boolean(e: exp.Boolean, ctx: Ctx) -> Any:
    return ctx.hl.bool(bool(e.this))


@hx.register
def _null(e: exp.Null, ctx: Ctx) -> Any:
    return ctx.hl.missing(ctx.hl.tfloat64)


def _unify(hl: ModuleType, a: Any, b: Any) -> tuple[Any, Any]:
    """Numeric operands of one type (SQL compares 1 with 1.0); a typed NULL takes the other's type."""
    ta, tb = a.dtype, b.dtype
    if ta == tb:
        return a, b
    num = (hl.tint32, hl.tint64, hl.tfloat32, hl.tfloat64)
    if ta in num and tb in num:
        if hl.tfloat64 in (ta, tb) or hl.tfloat32 in (ta, tb):
            return hl.float64(a), hl.float64(b)
        return hl.int64(a), hl.int64(b)
    return a, b


_CMP = {
    exp.EQ: lambda a, b: a == b, exp.NEQ: lambda a, b: a != b, exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b, exp.LT: lambda a, b: a < b, exp.LTE: lambda a, b: a <= b,
}


def _binary(e: exp.Binary, ctx: Ctx, op: Callable[[Any, Any], Any]) -> Any:
    a, b = _unify(ctx.hl, hx(e.this, ctx), hx(e.expression, ctx))
    return op(a, b)


for _cls, _op in _CMP.items():
    hx.register(_cls)(functools.partial(lambda e, ctx, op: _binary(e, ctx, op), op=_op))


@hx.register
def _and(e: exp.And, ctx: Ctx) -> Any:
    return hx(e.this, ctx) & hx(e.expression, ctx)


@hx.register
def _or(e: exp.Or, ctx: Ctx) -> Any:
    return hx(e.this, ctx) | hx(e.expression, ctx)


@hx.register
def _not(e: exp.Not, ctx: Ctx) -> Any:
    return ~hx(e.this, ctx)


@hx.register
def _add(e: exp.Add, ctx: Ctx) -> Any:
    return _binary(e, ctx, lambda a, b: a + b)


@hx.register
def _sub(e: exp.Sub, ctx: Ctx) -> Any:
    return _binary(e, ctx, lambda a, b: a - b)


@hx.register
def _mul(e: exp.Mul, ctx: Ctx) -> Any:
    return _binary(e, ctx, lambda a, b: a * b)


@hx.register
def _div(e: exp.Div, ctx: Ctx) -> Any:
    hl = ctx.hl
    return hl.float64(hx(e.this, ctx)) / hl.float64(hx(e.expression, ctx))  # IEEE: x / 0 is ±inf (or NaN), as in DuckDB


def _nonzero(hl: ModuleType, b: Any, value: Any, op: str) -> Any:
    return hl.case().when(b != 0, value).or_error(f"division by zero in {op} (the query divides by a zero value)")


@hx.register
def _intdiv(e: exp.IntDiv, ctx: Ctx) -> Any:
    hl = ctx.hl
    a, b = hx(e.this, ctx), hx(e.expression, ctx)
    return _nonzero(hl, b, hl.int64(hl.float64(a) / hl.float64(b)), "//")  # truncates toward zero, as SQL


@hx.register
def _mod(e: exp.Mod, ctx: Ctx) -> Any:
    hl = ctx.hl
    a, b = hx(e.this, ctx), hx(e.expression, ctx)
    return _nonzero(hl, b, a - b * hl.int64(hl.float64(a) / hl.float64(b)), "%")  # keeps the dividend's sign, as SQL


@hx.register
def _neg(e: exp.Neg, ctx: Ctx) -> Any:
    return -hx(e.this, ctx)


@hx.register
def _between(e: exp.Between, ctx: Ctx) -> Any:
    x = e.this
    return hx(exp.and_(exp.GTE(this=x.copy(), expression=e.args["low"].copy()),
                       exp.LTE(this=x.copy(), expression=e.args["high"].copy())), ctx)


@hx.register
def _is(e: exp.Is, ctx: Ctx) -> Any:
    if not isinstance(e.expression, exp.Null):
        raise unsupported(f"IS {e.expression.sql(DIALECT)}")
    return ctx.hl.is_missing(hx(e.this, ctx))


@hx.register
def _in(e: exp.In, ctx: Ctx) -> Any:
    hl = ctx.hl
    x = hx(e.this, ctx)
    query = e.args.get("query")
    if query is not None:
        if ctx.subquery is None:
            raise unsupported("IN (SELECT ...) here")
        values, has_null = ctx.subquery(query)
        members = hl.literal(values, dtype=hl.tset(x.dtype)) if values else hl.empty_set(x.dtype)
    else:
        has_null = any(isinstance(i, exp.Null) for i in e.expressions)
        items = [hx(i, ctx) for i in e.expressions if not isinstance(i, exp.Null)]
        if x.dtype == hl.tint32:
            x = hl.int64(x)
        if x.dtype in (hl.tint64, hl.tfloat64) and any(i.dtype != x.dtype for i in items):
            x = hl.float64(x)
            items = [hl.float64(i) for i in items]
        members = hl.set(items) if items else hl.empty_set(x.dtype)
    found = members.contains(x)
    if has_null:  # x IN (..., NULL) is NULL unless found
        found = hl.or_missing(found, found)
    return hl.or_missing(hl.is_defined(x), found)


def like_regex(pattern: str, escape: str | None = None) -> str:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return "^(?s:" + "".join(out) + ")$"


@hx.register
def _like(e: exp.Like, ctx: Ctx) -> Any:
    if not isinstance(e.expression, exp.Literal):
        raise unsupported("LIKE with a non-literal pattern")
    return hx(e.this, ctx).matches(like_regex(e.expression.this))


@hx.register
def _ilike(e: exp.ILike, ctx: Ctx) -> Any:
    if not isinstance(e.expression, exp.Literal):
        raise unsupported("ILIKE with a non-literal pattern")
    return hx(e.this, ctx).lower().matches(like_regex(e.expression.this.lower()))


@hx.register
def _case(e: exp.Case, ctx: Ctx) -> Any:
    hl = ctx.hl
    if e.this is not None:  # CASE x WHEN v THEN ...: rewrite as searched CASE
        ifs = [exp.If(this=exp.EQ(this=e.this.copy(), expression=i.this.copy()), true=i.args["true"].copy()) for i in e.args["ifs"]]
        return hx(exp.Case(ifs=ifs, default=e.args.get("default")), ctx)
    branches = [(hx(i.this, ctx), hx(i.args["true"], ctx)) for i in e.args["ifs"]]
    default = e.args.get("default")
    values = [v for _, v in branches] + ([hx(default, ctx)] if default is not None else [])
    target = _common_type(hl, values)
    c = hl.case()
    for cond, v in branches:
        c = c.when(hl.coalesce(cond, False), _to(hl, v, target))
    if default is not None:
        return c.default(_to(hl, values[-1], target))
    return c.or_missing()


@hx.register
def _if(e: exp.If, ctx: Ctx) -> Any:
    return hx(exp.Case(ifs=[exp.If(this=e.this.copy(), true=e.args["true"].copy())], default=e.args.get("false")), ctx)


def _common_type(hl: ModuleType, values: list[Any]) -> Any:
    types = {v.dtype for v in values}
    if len(types) == 1:
        return types.pop()
    if types <= {hl.tint32, hl.tint64, hl.tfloat64, hl.tfloat32}:
        return hl.tfloat64 if types & {hl.tfloat64, hl.tfloat32} else hl.tint64
    raise unsupported("a CASE whose branches have different types")


def _to(hl: ModuleType, v: Any, t: Any) -> Any:
    if v.dtype == t:
        return v
    return {hl.tfloat64: hl.float64, hl.tint64: hl.int64}[t](v)


@hx.register
def _coalesce(e: exp.Coalesce, ctx: Ctx) -> Any:
    hl = ctx.hl
    values = [hx(e.this, ctx), *(hx(x, ctx) for x in e.expressions)]
    t = _common_type(hl, values)
    return hl.coalesce(*[_to(hl, v, t) for v in values])


@hx.register
def _cast(e: exp.Cast, ctx: Ctx) -> Any:
    hl = ctx.hl
    x = hx(e.this, ctx)
    to = e.to.this
    T = exp.DataType.Type
    if to in (T.DOUBLE, T.FLOAT, T.DECIMAL):
        return hl.float64(x)
    if to in (T.BIGINT, T.INT, T.SMALLINT, T.TINYINT, T.INT128, T.UBIGINT, T.UINT):
        if x.dtype in (hl.tfloat64, hl.tfloat32):  # DOUBLE to integer rounds half to even, as DuckDB
            r = hl.floor(x)
            d = x - r
            return hl.int64(hl.case().when(d > 0.5, r + 1).when(d < 0.5, r)
                            .default(hl.if_else(hl.int64(r) % 2 == 0, r, r + 1)))
        if x.dtype == hl.tbool:
            return hl.int64(hl.int32(x))
        return hl.int64(x)
    if to in (T.VARCHAR, T.TEXT) and x.dtype in (hl.tstr, hl.tint64, hl.tint32):
        return hl.str(x)
    if to == T.BOOLEAN and x.dtype == hl.tbool:
        return x
    raise unsupported(f"CAST to {e.to.sql(DIALECT)} from {x.dtype}")


def _fn(name: str, f: Callable[..., Any]) -> None:
    def rule(e: exp.Expression, ctx: Ctx) -> Any:
        args = [hx(a, ctx) for a in [e.this, *e.expressions] if a is not None]
        return f(ctx.hl, *args)

    hx.register(getattr(exp, name))(rule)


_fn("Floor", lambda hl, x: hl.floor(hl.float64(x)))
_fn("Ceil", lambda hl, x: hl.ceil(hl.float64(x)))
_fn("Abs", lambda hl, x: hl.abs(x))
_fn("Sqrt", lambda hl, x: hl.or_missing(x >= 0, hl.sqrt(hl.float64(x))))
_fn("Ln", lambda hl, x: hl.or_missing(x > 0, hl.log(hl.float64(x))))
_fn("Exp", lambda hl, x: hl.exp(hl.float64(x)))
_fn("Length", lambda hl, x: hl.int64(hl.len(x)))
_fn("Lower", lambda hl, x: x.lower())
_fn("Upper", lambda hl, x: x.upper())
_fn("Greatest", lambda hl, *xs: hl.max(*xs))
_fn("Least", lambda hl, *xs: hl.min(*xs))


@hx.register
def _pow(e: exp.Pow, ctx: Ctx) -> Any:
    return ctx.hl.float64(hx(e.this, ctx)) ** ctx.hl.float64(hx(e.expression, ctx))


@hx.register
def _dpipe(e: exp.DPipe, ctx: Ctx) -> Any:
    return hx(e.this, ctx) + hx(e.expression, ctx)


@hx.register
def _round(e: exp.Round, ctx: Ctx) -> Any:
    hl = ctx.hl
    x = hl.float64(hx(e.this, ctx))
    d = e.args.get("decimals")
    scale = 10.0 ** (int(d.this) if isinstance(d, exp.Literal) else 0)
    return hl.sign(x) * hl.floor(hl.abs(x) * scale + 0.5) / scale


# -- aggregates (only inside an aggregation) -------------------------------------------------
def _need_agg(e: exp.Expression, ctx: Ctx) -> None:
    if not ctx.aggregate:
        raise FragmentError(f"aggregate {e.sql(DIALECT)} outside an aggregation")


@hx.register
def _count(e: exp.Count, ctx: Ctx) -> Any:
    _need_agg(e, ctx)
    hl = ctx.hl
    if isinstance(e.this, exp.Star):
        return hl.agg.count()
    if isinstance(e.this, exp.Distinct):
        (x,) = e.this.expressions
        v = hx(x, ctx)
        return hl.int64(hl.len(hl.agg.filter(hl.is_defined(v), hl.agg.collect_as_set(v))))
    return hl.agg.count_where(hl.is_defined(hx(e.this, ctx)))


@hx.register
def _sum(e: exp.Sum, ctx: Ctx) -> Any:
    _need_agg(e, ctx)
    hl = ctx.hl
    v = hx(e.this, ctx)
    if v.dtype == hl.tbool:
        v = hl.int64(hl.int32(v))
    elif v.dtype == hl.tint32:
        v = hl.int64(v)
    return hl.or_missing(hl.agg.count_where(hl.is_defined(v)) > 0, hl.agg.sum(v))


@hx.register
def _countif(e: exp.CountIf, ctx: Ctx) -> Any:
    _need_agg(e, ctx)
    return ctx.hl.agg.count_where(ctx.hl.coalesce(hx(e.this, ctx), False))


def _min_max(e: exp.Expression, ctx: Ctx, agg: str) -> Any:
    _need_agg(e, ctx)
    hl = ctx.hl
    v = hx(e.this, ctx)
    return getattr(hl.agg, agg)(v)


hx.register(exp.Min)(lambda e, ctx: _min_max(e, ctx, "min"))
hx.register(exp.Max)(lambda e, ctx: _min_max(e, ctx, "max"))


def genomic_aggregate(hl: ModuleType, name: str, d: Any, p: Any) -> Any:
    """The genomic partials over entries with dosage ``d`` and ploidy ``p`` (see the DuckDB
    backend's definitions: the two must agree)."""
    when = {
        "het_count": (p == 2) & (d == 1),
        "hom_ref_count": (p == 2) & (d == 0),
        "hom_alt_diploid_count": d == 2,
        "hom_alt_count": (d == p) & (d > 0),
    }
    if name == "allele_count":
        return hl.agg.sum(hl.int64(d))
    if name == "allele_number":
        return hl.agg.sum(hl.int64(p))
    if name in when:
        return hl.agg.count_where(hl.coalesce(when[name], False))
    raise unsupported(f"the genomic aggregate {name}()")


@hx.register
def _anonymous(e: exp.Anonymous, ctx: Ctx) -> Any:
    name = e.name.lower()
    if not ctx.aggregate:
        raise unsupported(f"the function {e.name}()")
    (arg,) = e.expressions
    if not (isinstance(arg, exp.Column) and arg.name == "dosage"):
        raise unsupported(f"{e.name}() over anything but a genotype dosage")
    if (arg.table, "ploidy") not in ctx.columns:
        raise unsupported(f"{e.name}() over a dosage without the ploidy of the same genotype")
    return genomic_aggregate(ctx.hl, name, hx(arg, ctx), ctx.columns[(arg.table, "ploidy")])
