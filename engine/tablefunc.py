"""Table functions in SQL: ``SELECT ... FROM gwas_linear(phenotype => 'phenotypes.ldl', ...)``.

The coordinator recognises a query whose FROM is one registered analysis call, runs the
analysis's rounds (each one combine of per-variant sums in the query's combine mode, with the
usual disclosure control), and then evaluates the rest of the query (projection, WHERE, ORDER
BY, LIMIT, even aggregates) over the released result table with DuckDB.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from . import analysis as A
from .errors import GenofedError, PlanningError
from .planner import PartialSpec
from .sqlcheck import DIALECT, clip

if TYPE_CHECKING:
    from .coordinator import Coordinator

RESULT = "_result"


def table_function(select: exp.Expression) -> tuple[str, dict[str, Any]] | None:
    """``(name, named arguments)`` when the query reads a registered table function, else None."""
    from genofed.genomics.analyses import ANALYSES

    if not isinstance(select, exp.Select):
        return None
    frm = select.args.get("from_") or select.args.get("from")
    call = None
    if frm is not None and isinstance(frm.this, exp.Table) and isinstance(frm.this.this, exp.Anonymous):
        call = frm.this.this
    if call is None:
        for t in select.find_all(exp.Table):
            if isinstance(t.this, exp.Anonymous) and t.this.name.lower() in ANALYSES:
                raise PlanningError(f"{t.this.name}() must be the only source of the query (FROM {t.this.name}(...)), without joins or subqueries")
        return None
    name = call.name.lower()
    if name not in ANALYSES:
        raise PlanningError(f"unknown table function {clip(call.name)}(); available: {', '.join(sorted(ANALYSES))}")
    if select.args.get("joins") or select.args.get("with"):
        raise PlanningError(f"{name}() must be the only source of the query: no joins or CTEs")
    analysis = ANALYSES[name]
    args: dict[str, Any] = {}
    positional = [p for p in analysis.params if analysis.params[p].required]
    for i, a in enumerate(call.expressions):
        if isinstance(a, (exp.Kwarg, exp.EQ, exp.PropertyEQ)):
            key = clip(a.this.name.lower())
            if key in args:
                raise PlanningError(f"{name}(): argument {key} given twice")
            args[key] = _literal(name, key, a.expression)
        else:
            if i >= len(positional) or args:
                raise PlanningError(f"{name}(): pass arguments by name (arg => value) after the first; positional: {', '.join(positional) or 'none'}")
            args[positional[i]] = _literal(name, positional[i], a)
    return name, args


def _literal(fn: str, key: str, e: exp.Expression) -> Any:
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this
        txt = e.this
        try:
            return float(txt) if any(ch in txt for ch in ".eE") else int(txt)
        except ValueError:
            raise PlanningError(f"{fn}(): argument {key} is not a valid number: {clip(txt)!r}") from None
    if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal) and not e.this.is_string:
        v = _literal(fn, key, e.this)
        return -v
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Null):
        return None
    if isinstance(e, exp.Array):
        return [_literal(fn, key, x) for x in e.expressions]
    raise PlanningError(f"{fn}(): argument {key} must be a literal (string, number, true/false or ['a', 'b']), got {clip(e.sql(DIALECT))!r}")


@dataclass
class _RoundSpec:
    """What :meth:`Coordinator._combine` needs of a plan."""

    fragment_sql: str
    keys: list[str]
    partials: list[PartialSpec]
    key_labels: list[str]
    variants_only: bool = False


@dataclass
class AnalysisRun:
    """Drives one analysis through a coordinator (the :class:`RoundRunner` of the analyses)."""

    coordinator: Coordinator
    mode: str
    query_id: str
    nodes: list[str] = field(default_factory=list)
    rounds: int = 0
    wire: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0  # the most groups (variants) any round withheld: how many, never which
    withheld_by: dict[str, int] = field(default_factory=dict)  # plain: per rule, the most any round's nodes withheld
    details: dict[str, Any] = field(default_factory=dict)
    dp: dict[str, Any] | None = None  # differential privacy request for every round (analyses that support it)
    user_sql: str | None = None  # the researcher's query as written, sent with every round (their release history)

    def round(self, fn: str, args: dict[str, Any], round_: str, state: dict[str, Any], keys: list[str],
              layout: list[tuple[str, str]]) -> pa.Table:
        c = self.coordinator
        spec = _RoundSpec(A.encode(fn, args, round_, state), keys, [PartialSpec(n, "sum") for n, _ in layout], list(keys))
        self.rounds += 1
        wire: dict[str, int] = {}
        notes: dict[str, Any] = {}
        combined = c._combine(self.mode, spec, f"{self.query_id}r{self.rounds}", c.transports, wire, self.dp, notes,
                              user_sql=self.user_sql)
        by_rule: dict[str, int] = {}
        for n in notes.values():
            for rule, count in (n.get("withheld") or {}).items() if isinstance(n, dict) else ():
                by_rule[rule] = by_rule.get(rule, 0) + int(count)
        for rule, count in by_rule.items():
            self.withheld_by[rule] = max(self.withheld_by.get(rule, 0), count)
        dp_nodes = {node: n["dp"] for node, n in notes.items() if n.get("dp")}
        if dp_nodes:
            self.details.setdefault("dp_nodes", {}).update(dp_nodes)
        for k, v in wire.items():
            self.wire[k] = self.wire.get(k, 0) + v
        released, suppressed = c._disclosure(combined, spec)
        suppressed += int(notes.pop("", {}).get("withheld_nowhere_released", 0))
        self.suppressed = max(self.suppressed, suppressed)
        return released

    def sql(self, query: str) -> pa.Table:
        res = self.coordinator.run_round(query, combine=self.mode, user_sql=self.user_sql)
        self.rounds += 1
        for k, v in res.provenance.wire_bytes.items():
            self.wire[k] = self.wire.get(k, 0) + v
        self.suppressed = max(self.suppressed, res.provenance.suppressed)
        return res.table

    def model_policy(self) -> dict[str, float]:
        return self.coordinator.catalog().model_policy()

    def note(self, key: str, value: Any) -> None:
        self.details[key] = value


def run_table_function(coordinator: Coordinator, select: exp.Select, name: str, given: dict[str, Any], mode: str,
                       user_sql: str | None = None):
    """Run a table-function query; returns a :class:`~genofed.engine.coordinator.QueryResult`.
    ``user_sql``: the query as the researcher wrote it, sent with every round."""
    from genofed.genomics.analyses import ANALYSES

    from .coordinator import Provenance, QueryResult, finalize_sql

    t0 = time.perf_counter()
    analysis = ANALYSES[name]
    args = analysis.parse_args(given)
    catalog = coordinator.catalog()
    # the coordinator checks the arguments against the federated catalog before any node sees them
    if analysis.reads_samples:
        A.sample_query(args.get("phenotype") if analysis.phenotype else None,
                       list(args.get("covariates") or []) if analysis.covariates else [], args.get("samples"), catalog)
    A.variant_query(args.get("variants"), catalog)
    run = AnalysisRun(coordinator, mode, uuid.uuid4().hex[:16], user_sql=user_sql)
    t1 = time.perf_counter()
    table = analysis.drive(args, run)
    if name == "pca":
        coordinator.catalog(refresh=True)  # the scores table now exists at every node
    t2 = time.perf_counter()
    outer = select.copy()
    outer.set("from_", exp.From(this=exp.to_table(RESULT)))
    try:
        out = finalize_sql(outer.sql(DIALECT), {RESULT: table})
    except GenofedError:
        raise
    except duckdb.Error as e:
        raise PlanningError(f"the query over {name}()'s result failed: {str(e).strip().splitlines()[0]}; "
                            f"its columns are {', '.join(table.column_names)}") from None
    t3 = time.perf_counter()
    meta = {b"genofed.analysis": name.encode()}
    out = out.replace_schema_metadata(meta)
    prov = Provenance(
        query_id=run.query_id, nodes=[t.name for t in coordinator.transports], combine=mode, min_count=coordinator.min_count,
        suppressed=run.suppressed,
        withheld_by=dict(run.withheld_by),
        suppression_rule=(f"variants with 1 to {coordinator.min_count - 1} samples in the federation, or below a node's own "
                          "minimum count, are withheld, and variants whose cells have fewer than the minimum count of carriers of an allele or "
                          "whose minor allele count is below a node's min_mac (rule 5)") if run.suppressed else "",
        timings={"plan_s": t1 - t0, "nodes_combine_s": t2 - t1, "finalize_s": t3 - t2},
        fragment_sql=f"{name}({', '.join(f'{k} => {v!r}' for k, v in given.items())})",
        wire_bytes=run.wire,
    )
    prov.details = {"analysis": name, "rounds": run.rounds, **run.details}
    return QueryResult(out, prov)
