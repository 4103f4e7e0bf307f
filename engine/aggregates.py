"""The aggregate decomposition registry.

For every aggregate: the partials each node computes, how partials combine across nodes
(``sum``, ``min`` or ``max``), and the finalize expression that turns combined partials into the
answer. Every combine here is a sum except MIN/MAX, so the secure combiners (MPC, HE) can add
partials without seeing them. A missing entry is an error naming the aggregate.

Numerics: integer arguments are summed as HUGEINT (exact); variance, covariance and regression
numerators are computed from exact integer sums where the inputs are integers. Real-valued
arguments use the textbook sums (n, Σx, Σx², Σxy), whose relative error is about
1e-16 · mean²/variance.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import sqlglot
from sqlglot import exp

from .errors import UnsupportedError
from .schema import GENOMIC_AGGREGATES, SAMPLE_ID
from .sqlcheck import AGGREGATES_DOC, DIALECT, STANDARD_AGGREGATES, clip

# add_partial(partial aggregate expression, combine op) -> column of the combined partial
AddPartial = Callable[[exp.Expression, str], exp.Expression]
Decomposer = Callable[[exp.Expression, AddPartial], exp.Expression]

REGISTRY: dict[str, Decomposer] = {}

# genomic partial aggregates a node computes natively (all combine by sum)
GENOMIC_PARTIALS = ("allele_count", "allele_number", "het_count", "hom_alt_count", "hom_ref_count", "hom_alt_diploid_count")


def register(*names: str) -> Callable[[Decomposer], Decomposer]:
    def deco(fn: Decomposer) -> Decomposer:
        for n in names:
            REGISTRY[n] = fn
        return fn

    return deco


@cache
def _template(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, dialect=DIALECT)


def tmpl(sql: str, **cols: exp.Expression) -> exp.Expression:
    """Instantiate a constant SQL template whose ``:name`` placeholders are expressions."""
    return exp.replace_placeholders(_template(sql).copy(), **{k: v.copy() for k, v in cols.items()})


def aggregate_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return STANDARD_AGGREGATES[type(node)]


def decompose(node: exp.Expression, add: AddPartial) -> exp.Expression:
    """Partials and the finalize expression for one aggregate call."""
    name = aggregate_name(node)
    fn = REGISTRY.get(name)
    if fn is None:
        raise UnsupportedError(f"aggregate {name.upper()} has no federated decomposition; supported: {AGGREGATES_DOC}")
    for inner in node.find_all(exp.AggFunc, exp.Anonymous):
        if inner is not node and (isinstance(inner, exp.AggFunc) or inner.name.lower() in GENOMIC_AGGREGATES):
            raise UnsupportedError(f"nested aggregates are not supported: {clip(node.sql(DIALECT))!r}")
    return fn(node, add)


def _is_integer(e: exp.Expression) -> bool:
    t = e.type
    return t is not None and t.is_type(*exp.DataType.INTEGER_TYPES, exp.DataType.Type.BOOLEAN)


def _num(e: exp.Expression, integer: bool) -> exp.Expression:
    return exp.cast(e.copy(), "HUGEINT" if integer else "DOUBLE")


def _args(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    out = [node.this]
    if node.args.get("expression") is not None:
        out.append(node.args["expression"])
    return out


@register("count")
def _count(node: exp.Expression, add: AddPartial) -> exp.Expression:
    arg = node.this
    if arg is None:  # e.g. COUNT() or COUNT(+)
        raise UnsupportedError("COUNT needs an argument: COUNT(*), COUNT(column) or COUNT(DISTINCT sample_id)")
    if isinstance(arg, exp.Star):
        return add(exp.Count(this=exp.Star()), "sum")
    if isinstance(arg, exp.Distinct):
        cols = arg.expressions
        if len(cols) == 1 and isinstance(cols[0], exp.Column) and cols[0].name == SAMPLE_ID:
            return add(node.copy(), "sum")
        raise UnsupportedError(
            "COUNT(DISTINCT ...) is supported only on sample_id (samples are disjoint across nodes); "
            "distinct counts of other columns cannot be combined without revealing values"
        )
    return add(exp.Count(this=arg.copy()), "sum")


@register("sum")
def _sum(node: exp.Expression, add: AddPartial) -> exp.Expression:
    x = node.this
    return add(exp.Sum(this=_num(x, _is_integer(x)) if _is_integer(x) else x.copy()), "sum")


def _moments(x: exp.Expression, add: AddPartial) -> tuple[exp.Expression, ...]:
    integer = _is_integer(x)
    xc = _num(x, integer)
    n = add(exp.Count(this=x.copy()), "sum")
    s = add(exp.Sum(this=xc), "sum")
    ss = add(exp.Sum(this=exp.Mul(this=xc.copy(), expression=xc.copy())), "sum")
    return n, s, ss


@register("avg")
def _avg(node: exp.Expression, add: AddPartial) -> exp.Expression:
    x = node.this
    n = add(exp.Count(this=x.copy()), "sum")
    s = add(exp.Sum(this=_num(x, _is_integer(x))), "sum")
    return tmpl("CAST(:s AS DOUBLE) / NULLIF(:n, 0)", s=s, n=n)


_VAR_NUM = "(CAST(:n AS HUGEINT) * CAST(:ss AS HUGEINT) - CAST(:s AS HUGEINT) * CAST(:s AS HUGEINT))"
_VAR_NUM_F = "(CAST(:ss AS DOUBLE) - CAST(:s AS DOUBLE) * CAST(:s AS DOUBLE) / :n)"


@register("var_samp", "var_pop", "stddev_samp", "stddev_pop")
def _variance(node: exp.Expression, add: AddPartial) -> exp.Expression:
    name = aggregate_name(node)
    x = node.this
    n, s, ss = _moments(x, add)
    if _is_integer(x):
        num = _VAR_NUM
        den = "CAST(:n AS DOUBLE) * (:n - 1)" if name.endswith("samp") else "CAST(:n AS DOUBLE) * :n"
    else:
        num = _VAR_NUM_F
        den = "(:n - 1)" if name.endswith("samp") else ":n"
    cond = ":n > 1" if name.endswith("samp") else ":n > 0"
    var = f"CASE WHEN {cond} THEN GREATEST(CAST({num} AS DOUBLE) / ({den}), 0) END"
    if name.startswith("stddev"):
        var = f"SQRT({var})"
    return tmpl(var, n=n, s=s, ss=ss)


@register("covar_pop", "covar_samp", "corr", "regr_slope", "regr_intercept", "regr_r2")
def _bivariate(node: exp.Expression, add: AddPartial) -> exp.Expression:
    name = aggregate_name(node)
    y, x = node.this, node.expression
    integer = _is_integer(x) and _is_integer(y)
    both = exp.and_(exp.Not(this=exp.Is(this=x.copy(), expression=exp.Null())),
                    exp.Not(this=exp.Is(this=y.copy(), expression=exp.Null())))
    xp = exp.Case(ifs=[exp.If(this=both.copy(), true=_num(x, integer))])
    yp = exp.Case(ifs=[exp.If(this=both.copy(), true=_num(y, integer))])
    n = add(exp.Count(this=xp.copy()), "sum")
    sx = add(exp.Sum(this=xp.copy()), "sum")
    sy = add(exp.Sum(this=yp.copy()), "sum")
    sxy = add(exp.Sum(this=exp.Mul(this=xp.copy(), expression=yp.copy())), "sum")
    c = {"n": n, "sx": sx, "sy": sy, "sxy": sxy}
    t = "HUGEINT" if integer else "DOUBLE"
    cxy = f"(CAST(CAST(:n AS {t}) * CAST(:sxy AS {t}) - CAST(:sx AS {t}) * CAST(:sy AS {t}) AS DOUBLE))"
    if name == "covar_pop":
        return tmpl(f"CASE WHEN :n > 0 THEN {cxy} / (CAST(:n AS DOUBLE) * :n) END", **c)
    if name == "covar_samp":
        return tmpl(f"CASE WHEN :n > 1 THEN {cxy} / (CAST(:n AS DOUBLE) * (:n - 1)) END", **c)
    sxx = add(exp.Sum(this=exp.Mul(this=xp.copy(), expression=xp.copy())), "sum")
    c["sxx"] = sxx
    cxx = f"(CAST(CAST(:n AS {t}) * CAST(:sxx AS {t}) - CAST(:sx AS {t}) * CAST(:sx AS {t}) AS DOUBLE))"
    if name == "regr_slope":
        return tmpl(f"CASE WHEN :n > 0 THEN (CASE WHEN {cxx} <> 0 THEN {cxy} / {cxx} ELSE CAST('NaN' AS DOUBLE) END) END", **c)
    if name == "regr_intercept":
        return tmpl(
            f"CASE WHEN :n > 0 AND {cxx} <> 0 THEN (CAST(:sy AS DOUBLE) - {cxy} / {cxx} * CAST(:sx AS DOUBLE)) / :n END",
            **c,
        )
    syy = add(exp.Sum(this=exp.Mul(this=yp.copy(), expression=yp.copy())), "sum")
    c["syy"] = syy
    cyy = f"(CAST(CAST(:n AS {t}) * CAST(:syy AS {t}) - CAST(:sy AS {t}) * CAST(:sy AS {t}) AS DOUBLE))"
    if name == "corr":
        # DuckDB: NaN when either variance is zero, NULL without rows
        return tmpl(
            f"CASE WHEN :n > 0 THEN (CASE WHEN {cxx} > 0 AND {cyy} > 0 THEN {cxy} / SQRT({cxx} * {cyy}) "
            "ELSE CAST('NaN' AS DOUBLE) END) END",
            **c,
        )
    # regr_r2: NULL if var_pop(x) = 0, 1 if var_pop(y) = 0, else corr^2 (DuckDB's definition)
    return tmpl(
        f"CASE WHEN :n = 0 OR {cxx} = 0 THEN NULL WHEN {cyy} = 0 THEN 1.0 "
        f"ELSE {cxy} * {cxy} / ({cxx} * {cyy}) END",
        **c,
    )


@register("min", "max")
def _minmax(node: exp.Expression, add: AddPartial) -> exp.Expression:
    return add(node.copy(), aggregate_name(node))


def _genomic_arg(node: exp.Expression) -> exp.Column:
    args = _args(node)
    if len(args) != 1 or not isinstance(args[0], exp.Column) or args[0].name != "dosage":
        raise UnsupportedError(
            f"{node.name.upper()} takes the genotypes dosage column, e.g. {node.name.lower()}(g.dosage)"
        )
    return args[0]


def _genomic(name: str, d: exp.Column) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=[d.copy()])


@register(*GENOMIC_PARTIALS)
def _genomic_sum(node: exp.Expression, add: AddPartial) -> exp.Expression:
    return add(_genomic(node.name.lower(), _genomic_arg(node)), "sum")


@register("allele_freq")
def _allele_freq(node: exp.Expression, add: AddPartial) -> exp.Expression:
    d = _genomic_arg(node)
    ac = add(_genomic("allele_count", d), "sum")
    an = add(_genomic("allele_number", d), "sum")
    return tmpl("CAST(:ac AS DOUBLE) / NULLIF(:an, 0)", ac=ac, an=an)


@register("hwe_p")
def _hwe_p(node: exp.Expression, add: AddPartial) -> exp.Expression:
    """Exact HWE test on the combined diploid genotype counts (the test itself runs at the
    coordinator, on sums: see :func:`genofed.genomics.stats.hwe_exact`)."""
    d = _genomic_arg(node)
    het = add(_genomic("het_count", d), "sum")
    hom_ref = add(_genomic("hom_ref_count", d), "sum")
    hom_alt = add(_genomic("hom_alt_diploid_count", d), "sum")
    # no diploid call (no rows, or haploid calls only): NULL, without asking the test (it has no p)
    return tmpl("CASE WHEN :h + :r + :a > 0 THEN genofed_hwe_p(CAST(:h AS BIGINT), CAST(:r AS BIGINT), CAST(:a AS BIGINT)) END",
                h=het, r=hom_ref, a=hom_alt)


@register("call_rate")
def _call_rate(node: exp.Expression, add: AddPartial) -> exp.Expression:
    d = _genomic_arg(node)
    called = add(exp.Count(this=d.copy()), "sum")
    total = add(exp.Count(this=exp.Star()), "sum")
    return tmpl("CAST(:c AS DOUBLE) / NULLIF(:t, 0)", c=called, t=total)


def is_partial_aggregate(node: exp.Expression) -> bool:
    """The aggregates a node computes in a fragment (before combine)."""
    if isinstance(node, (exp.Count, exp.Sum, exp.Min, exp.Max)):
        return True
    return isinstance(node, exp.Anonymous) and node.name.lower() in GENOMIC_PARTIALS
