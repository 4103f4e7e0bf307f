"""Analysis fragments: what a node computes for one round of a table function (GWAS, LD, PCA...).

A SQL fragment is a partial-aggregate SELECT; an analysis fragment is a JSON request naming a
registered analysis, its arguments (phenotype and covariate expressions, sample and variant
predicates) and the round's public state (e.g. the current regression coefficients). Like a SQL
fragment it is re-validated at the node against the node's own catalog, runs in the node's
backend, and returns one partial table (keys, sums, ``_n``) that every combine mode adds up:
per-variant sums, never anything sample-sized.

The wire form is the string ``genofed-analysis:`` followed by the JSON, carried where a SQL
fragment would be, so tickets, MPC sessions and HE encryption treat both alike.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlglot
from sqlglot import exp

from .errors import FragmentError, GenofedError, PlanningError
from .schema import CORE_TABLES, SAMPLE_ID, Catalog
from .sqlcheck import DIALECT, TOO_DEEP, clip, is_aggregate, parse, qualify_query

PREFIX = "genofed-analysis:"
VERSION = 1
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def is_analysis(payload: str) -> bool:
    return payload.startswith(PREFIX)


def encode(fn: str, args: dict[str, Any], round_: str, state: dict[str, Any] | None = None) -> str:
    """The wire form of one analysis round."""
    body = {"v": VERSION, "fn": fn, "args": args, "round": round_, "state": state or {}}
    return PREFIX + json.dumps(body, separators=(",", ":"), sort_keys=True)


def pack_array(a: np.ndarray) -> dict[str, Any]:
    """A float64/int64 array as JSON: dtype, shape, base64 little-endian bytes."""
    a = np.ascontiguousarray(a)
    dt = "<f8" if a.dtype.kind == "f" else "<i8"
    return {"dtype": dt, "shape": list(a.shape), "b64": base64.b64encode(a.astype(dt).tobytes()).decode()}


def unpack_array(d: Any, name: str) -> np.ndarray:
    try:
        if d["dtype"] not in ("<f8", "<i8"):
            raise ValueError("dtype")
        raw = base64.b64decode(d["b64"], validate=True)
        a = np.frombuffer(raw, dtype=d["dtype"]).reshape([int(x) for x in d["shape"]])
    except (KeyError, TypeError, ValueError) as e:
        raise FragmentError(f"analysis state {name!r} is malformed ({e})") from None
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise FragmentError(f"analysis state {name!r} contains non-finite values")
    return a


@dataclass
class AnalysisFragment:
    """A validated analysis round, ready for a backend."""

    fn: str
    args: dict[str, Any]
    round: str
    state: dict[str, Any]
    keys: list[str]
    partials: list[str]
    counts: list[str]
    finite: list[str]
    sample_sql: str | None  # SELECT sample_id, y, c0.. FROM samples ... (qualified), or None
    variant_sql: str  # SELECT variant_id ... FROM variants WHERE ... (qualified)
    tables: set[str] = field(default_factory=set)
    policy: Any = None  # the node's policy (model-disclosure rules)

    @property
    def sql(self) -> str:
        return encode(self.fn, self.args, self.round, self.state)

    def array(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise FragmentError(f"analysis round {self.round!r} needs state {name!r}")
        return unpack_array(self.state[name], name)


# -- expressions over the sample side --------------------------------------------------------------

def parse_expression(text: str, what: str) -> exp.Expression:
    """A scalar SQL expression (phenotype, covariate or predicate) from an argument string."""
    if not isinstance(text, str) or not text.strip():
        raise PlanningError(f"{what} must be a non-empty SQL expression string")
    shown = clip(text)
    try:
        e = sqlglot.parse_one(text, dialect=DIALECT)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as err:
        raise PlanningError(f"{what} {shown!r} is not a valid SQL expression: {clip(str(err), 200)}") from None
    except RecursionError:
        raise PlanningError(f"{what} {shown!r}: {TOO_DEEP}") from None
    if isinstance(e, (exp.Select, exp.Query)) or any(isinstance(n, (exp.Select, exp.Subquery)) for n in e.walk()):
        raise PlanningError(f"{what} {shown!r} must be an expression over columns, without subqueries")
    if any(is_aggregate(n) for n in e.walk()):
        raise PlanningError(f"{what} {shown!r} must be a per-sample expression, not an aggregate")
    return e


def _resolve_tables(exprs: list[exp.Expression], catalog: Catalog, side: str) -> list[str]:
    """The tables an expression list reads: qualified columns name theirs; a bare column is
    looked up in samples, then in the one clinical table that has it."""
    sample_tables = sorted(t for t in catalog.sample_tables() if t != "genotypes") if side == "s" else ["variants"]
    used: list[str] = []
    for e in exprs:
        for c in e.find_all(exp.Column):
            if c.table:
                if c.table not in sample_tables:
                    allowed = ", ".join(sample_tables)
                    raise PlanningError(f"column {clip(c.sql(DIALECT))!r}: table {clip(c.table)!r} is not available here; use one of {allowed}")
                t = c.table
            else:
                having = [t for t in sample_tables if c.name in catalog.tables.get(t, {})]
                if "samples" in having:
                    having = ["samples"]
                if not having:
                    where = "the samples or clinical tables" if side == "s" else "variants"
                    raise PlanningError(f"unknown column {clip(c.name)!r}: not in {where}")
                if len(having) > 1:
                    raise PlanningError(f"column {c.name!r} is ambiguous ({', '.join(having)}); qualify it as table.column")
                t = having[0]
                c.set("table", exp.to_identifier(t))
            if t not in used:
                used.append(t)
    return used


def sample_query(phenotype: str | None, covariates: list[str], predicate: str | None, catalog: Catalog,
                 extra: list[str] | None = None) -> tuple[str, list[str]]:
    """Qualified SQL selecting the analysis samples: ``sample_id``, ``y`` (the phenotype, DOUBLE)
    and ``c0..`` (covariates, DOUBLE); samples with a NULL phenotype or covariate are excluded
    (as plink2 does). Returns the SQL and the tables it reads."""
    y = parse_expression(phenotype, "phenotype") if phenotype is not None else None
    cs = [parse_expression(c, "covariate") for c in covariates]
    pred = parse_expression(predicate, "samples filter") if predicate else None
    xs = [parse_expression(x, "expression") for x in (extra or [])]
    exprs = [e for e in [y, *cs, pred, *xs] if e is not None]
    tables = _resolve_tables(exprs, catalog, "s")
    sel = [exp.column(SAMPLE_ID, table="samples")]
    if y is not None:
        sel.append(exp.alias_(exp.cast(y, "DOUBLE"), "y"))
    sel += [exp.alias_(exp.cast(c, "DOUBLE"), f"c{i}") for i, c in enumerate(cs)]
    sel += [exp.alias_(x, f"x{i}") for i, x in enumerate(xs)]
    q = exp.select(*sel).from_("samples")
    for t in tables:
        if t != "samples":
            q = q.join(exp.to_table(t), using=[SAMPLE_ID])
    conds = [c for c in [pred] if c is not None]
    conds += [exp.Not(this=exp.Is(this=e.copy(), expression=exp.Null())) for e in [y, *cs] if e is not None]
    if conds:
        q = q.where(exp.and_(*conds))
    try:
        qualified = qualify_query(parse(q.sql(DIALECT)), catalog)
    except GenofedError as e:
        raise PlanningError(f"sample selection: {e}") from None
    except RecursionError:
        raise PlanningError(f"sample selection: {TOO_DEEP}") from None
    return qualified.sql(DIALECT), ["samples", *[t for t in tables if t != "samples"]]


def variant_query(predicate: str | None, catalog: Catalog, ids: bool = False) -> str:
    """Qualified SQL selecting the analysis variants from ``variants``."""
    pred = parse_expression(predicate, "variants filter") if predicate else None
    if pred is not None:
        for c in pred.find_all(exp.Column):
            if c.table and c.table != "variants":
                raise PlanningError(f"variants filter: column {clip(c.sql(DIALECT))!r} is not a column of variants")
            if c.name not in CORE_TABLES["variants"] and c.name not in catalog.tables.get("variants", {}):
                raise PlanningError(f"variants filter: unknown column {clip(c.name)!r}; variants has {', '.join(CORE_TABLES['variants'])}")
    cols = ["variant_id", "chrom", "pos", "ref", "alt"]
    q = exp.select(*cols).from_("variants")
    if pred is not None:
        q = q.where(pred)
    try:
        qualified = qualify_query(parse(q.sql(DIALECT)), catalog)
    except GenofedError as e:
        raise PlanningError(f"variants filter: {e}") from None
    except RecursionError:
        raise PlanningError(f"variants filter: {TOO_DEEP}") from None
    return qualified.sql(DIALECT)


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise PlanningError(f"{what} must be a lower-case identifier (letters, digits, _), got {clip(repr(name))}")
    return name


def validate_analysis(payload: str, catalog: Catalog, policy: Any = None) -> AnalysisFragment:
    """Parse and validate an analysis payload at a node, against the node's catalog and policy.

    Raises
    ------
    FragmentError
        malformed payload, unknown analysis, or arguments that do not fit this node's schema.
    DisclosureError
        the request breaks the node's model-disclosure policy.
    """
    from genofed.genomics.analyses import ANALYSES

    try:
        body = json.loads(payload[len(PREFIX):])
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise ValueError(f"expected an analysis request of version {VERSION}")
        fn, args, round_, state = body["fn"], body["args"], body["round"], body.get("state") or {}
        if not (isinstance(fn, str) and isinstance(args, dict) and isinstance(round_, str) and isinstance(state, dict)):
            raise ValueError("fn, args, round and state have the wrong types")
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise FragmentError(f"analysis request refused: malformed ({clip(str(e), 120)})") from None
    analysis = ANALYSES.get(fn)
    if analysis is None:
        raise FragmentError(f"analysis request refused: unknown analysis {clip(fn)!r}; available: {', '.join(sorted(ANALYSES))}")
    try:
        return analysis.node_fragment(args, round_, state, catalog, policy)
    except PlanningError as e:
        raise FragmentError(f"analysis request refused: {e}") from None
