"""The coordinator: plan, dispatch to every node concurrently, combine, check, finalize."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .combine import Round, check_mode, combiner, narrow_integers
from .errors import GenofedError, NodeError, PlanningError
from .planner import COMBINED, Plan, plan_query
from .protocol import (
    N_COLUMN,
    SUPPRESSED_COLUMN,
)
from .schema import Catalog
from .sqlcheck import parse


class Transport(Protocol):
    """How the coordinator reaches one node."""

    name: str

    def catalog(self, timeout: float = ...) -> dict[str, Any]: ...

    def run_fragment(self, sql: str, query_id: str, timeout: float, dp: dict[str, Any] | None = None,
                     user_sql: str | None = None) -> pa.Table: ...

    def action(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...


@dataclass
class Provenance:
    """What a result is made of: which nodes answered, how partials were combined, what was held back."""

    query_id: str
    nodes: list[str]
    combine: str
    min_count: int
    suppressed: int = 0  # groups withheld (how many, never which: DESIGN.md rule 3)
    suppression_rule: str = ""
    withheld_by: dict[str, int] = field(default_factory=dict)  # groups withheld at the nodes, by rule
    timings: dict[str, float] = field(default_factory=dict)
    fragment_sql: str = ""
    wire_bytes: dict[str, int] = field(default_factory=dict)  # bytes each node sent for this query
    details: dict[str, Any] = field(default_factory=dict)  # table functions: rounds, convergence, ...

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class QueryResult:
    table: pa.Table
    provenance: Provenance


class Coordinator:
    """Runs federated queries over a set of transports.

    Parameters
    ----------
    transports
        One per node.
    min_count
        Federation-wide minimum count: combined groups with 1..min_count-1 samples are suppressed.
    timeout
        Seconds each node has to answer a fragment.
    combine
        Default combine mode: ``mpc``, ``he`` or ``plain``.
    keyholder
        The key holder client (``combine='he'`` only).
    """

    def __init__(self, transports: list[Transport], min_count: int = 5, timeout: float = 60.0, combine: str = "mpc", keyholder: Any = None):
        if not transports:
            raise GenofedError("a federation needs at least one node")
        self.transports = transports
        self.min_count = min_count
        self.timeout = timeout
        self.default_combine = combine
        self.keyholder = keyholder  # a KeyHolderClient, for combine='he'
        self._catalog: Catalog | None = None
        self._pool = cf.ThreadPoolExecutor(max_workers=max(4, len(transports)))

    def catalog(self, refresh: bool = False) -> Catalog:
        if self._catalog is None or refresh:
            per_node = self._fan_out(lambda t: t.catalog(timeout=self.timeout))
            self._catalog = Catalog.merge(per_node)
        return self._catalog

    def plan(self, sql: str) -> Plan:
        select = parse(sql)
        from .tablefunc import table_function

        if table_function(select) is not None:
            raise PlanningError("table functions run in several rounds and have no single fragment to explain")
        return plan_query(select, self.catalog())

    def _fan_out(self, fn, transports: list[Transport] | None = None, grace: float = 2.0) -> dict[str, Any]:
        """``fn(transport)`` on every node at once; the first error (naming its node) is raised, and
        a node still silent ``timeout + grace`` seconds later fails the call with code ``timeout``
        (each transport call has its own deadline; this bounds a transport that would not)."""
        ts = transports or self.transports
        # one thread per node for this call alone: calls that wait for each other at the nodes
        # (MPC prepare, HE alignment at the key holder) must never queue behind another query's
        pool = cf.ThreadPoolExecutor(max_workers=len(ts), thread_name_prefix="genofed-fanout")
        futures = {pool.submit(fn, t): t for t in ts}
        results: dict[str, Any] = {}
        deadline = time.monotonic() + self.timeout + grace
        try:
            for fut in cf.as_completed(futures, timeout=max(0.1, deadline - time.monotonic())):
                t = futures[fut]
                results[t.name] = fut.result()  # raises the node's error, naming it
        except cf.TimeoutError:
            slow = [t.name for f, t in futures.items() if not f.done()]
            raise NodeError(slow[0], "timeout", f"did not answer within {self.timeout:g} s") from None
        finally:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=False)
        return {t.name: results[t.name] for t in ts}

    def run_round(self, sql: str, combine: str | None = None, dp: dict[str, Any] | None = None, user_sql: str | None = None) -> QueryResult:
        """The public round API for table functions and other multi-round drivers: one SQL query
        (never a table function), combined in ``combine``, with the same release checks as any
        query. ``user_sql``: the researcher's query the round serves, for their release history
        at each node."""
        return self.query(sql, combine=combine, _allow_table_functions=False, dp=dp, _user_sql=user_sql)

    def query(self, sql: str, combine: str | None = None, _allow_table_functions: bool = True, dp: dict[str, Any] | None = None,
              _user_sql: str | None = None) -> QueryResult:
        """Plan, dispatch, combine, apply disclosure control and finalize one query (or run a
        table function such as ``gwas_linear(...)``, see :mod:`genofed.engine.tablefunc`).
        ``dp`` (``{"epsilon": .., "mechanism": "laplace"|"gaussian", "delta": ..}``) asks every
        node to noise its partials under differential privacy before they leave it. Every node
        is sent ``sql`` as written (or ``_user_sql``: the query a table function runs for) for
        the researcher's release history there."""
        t0 = time.perf_counter()
        user_sql = sql if _user_sql is None else _user_sql
        mode = check_mode(combine or self.default_combine)
        select = parse(sql)
        from .tablefunc import run_table_function, table_function

        call = table_function(select)
        if call is not None:
            if not _allow_table_functions:
                raise PlanningError("table functions cannot be nested")
            return run_table_function(self, select, call[0], call[1], mode, user_sql=user_sql)
        plan = plan_query(select, self.catalog())
        delay, give_up, retries = 0.25, time.monotonic() + self.timeout, 0
        while True:  # a node answering "busy" (every execution slot taken) is asked again, with backoff
            try:
                result = self._query_plan(plan, mode, t0, dp, user_sql)
                if retries:
                    result.provenance.details["busy_retries"] = retries
                return result
            except NodeError as e:
                if e.node_code != "busy" or time.monotonic() + delay > give_up:
                    raise
            retries += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 4.0)

    def _query_plan(self, plan: Plan, mode: str, t0: float, dp: dict[str, Any] | None, user_sql: str | None = None) -> QueryResult:
        t1 = time.perf_counter()
        qid = uuid.uuid4().hex[:16]
        targets = self.transports
        if plan.variants_only:
            digests = set(self.catalog().variants_digest.values())
            if len(digests) > 1:
                raise PlanningError(
                    "queries over `variants` alone need the same variant list at every node, and these "
                    "nodes differ; join genotypes to count variants per node's data"
                )
            targets = self.transports[:1]
            # the public site list, from one node: no one's data, nothing for a secure combine to
            # protect (and no honest majority of one); nodes serve such fragments in plain
            mode = "plain"
        sql_frag = plan.fragment_sql
        wire: dict[str, int] = {}
        notes: dict[str, Any] = {}
        combined = self._combine(mode, plan, qid, targets, wire, dp, notes, user_sql=user_sql)
        dp_info = {node: n["dp"] for node, n in notes.items() if n.get("dp")}
        risk_info = {node: n["risk"] for node, n in notes.items() if n.get("risk")}
        withheld_by: dict[str, int] = {}
        for n in notes.values():
            for rule, count in (n.get("withheld") or {}).items():
                withheld_by[rule] = withheld_by.get(rule, 0) + int(count)
        t2 = time.perf_counter()
        released, suppressed = self._disclosure(combined, plan)
        suppressed += int(notes.pop("", {}).get("withheld_nowhere_released", 0))
        table = finalize(plan, released)
        t3 = time.perf_counter()
        prov = Provenance(
            query_id=qid,
            nodes=[t.name for t in targets],
            combine=mode,
            min_count=self.min_count,
            suppressed=suppressed,
            suppression_rule=(
                f"groups with 1 to {self.min_count - 1} people in the federation, or withheld by a node's disclosure "
                "rules (minimum count, influence, dominance, k-anonymity), are withheld; their keys are not released"
            ) if suppressed else "",
            withheld_by=withheld_by,
            timings={"plan_s": t1 - t0, "nodes_combine_s": t2 - t1, "finalize_s": t3 - t2},
            fragment_sql=sql_frag,
            wire_bytes=wire,
            details={**({"dp": {"requested": dp, "nodes": dp_info}} if dp or dp_info else {}),
                     **({"membership_risk": risk_info} if risk_info else {})},
        )
        return QueryResult(table, prov)

    def round(self, plan_or_sql: Plan | str, query_id: str, targets: list[Transport] | None = None, dp: dict[str, Any] | None = None,
              notes: dict[str, Any] | None = None, user_sql: str | None = None) -> Round:
        """The :class:`~genofed.engine.combine.Round` a combiner runs for one fragment: the nodes,
        this coordinator's fan-out and background pool, its key holder client."""
        if isinstance(plan_or_sql, str):
            sql, keys, partials = plan_or_sql, [], []
        else:
            sql, keys, partials = plan_or_sql.fragment_sql, list(plan_or_sql.keys), list(plan_or_sql.partials)
        return Round(sql, keys, partials, query_id, list(targets or self.transports), self.timeout, self.min_count,
                     fan_out=self._fan_out, submit=self._pool.submit, dp=dp, user_sql=user_sql, keyholder=self.keyholder,
                     notes=notes)

    def _combine(self, mode: str, plan: Plan, qid: str, targets: list[Transport], wire: dict[str, int],
                 dp: dict[str, Any] | None = None, notes: dict[str, Any] | None = None, user_sql: str | None = None) -> pa.Table:
        """Partials from every target node, combined by the ``mode`` plug-in: one row per group
        with keys, partials, ``_n`` and ``_suppressed``. ``notes`` collects each node's DP and
        re-identification notes (``{node: {"dp": .., "risk": ..}}``). ``user_sql``, the
        researcher's query as written, goes to every node with the fragment."""
        rnd = self.round(plan, qid, targets, dp=dp, notes=notes, user_sql=user_sql)
        out = combiner(mode).run(rnd)
        wire.update(rnd.wire)
        return out if mode == "plain" else narrow_integers(out)

    def _disclosure(self, combined: pa.Table, plan: Plan) -> tuple[pa.Table, int]:
        if combined.num_rows == 0:
            return combined, 0
        n = pc.cast(pc.fill_null(combined.column(N_COLUMN), 0), pa.int64()).to_numpy(zero_copy_only=False)
        flagged = pc.fill_null(combined.column(SUPPRESSED_COLUMN), False).to_numpy(zero_copy_only=False)
        if plan.variants_only:
            small = np.zeros(len(n), bool)
        else:
            small = (n > 0) & (n < self.min_count)
        drop = small | flagged.astype(bool)
        if not drop.any():
            return combined, 0
        return combined.filter(pa.array(~drop)), int(drop.sum())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def finalize(plan: Plan, combined: pa.Table) -> pa.Table:
    """Evaluate the plan's finalize SELECT over the combined partials."""
    return finalize_sql(plan.final_sql, {COMBINED: combined})


def finalize_sql(sql: str, tables: dict[str, pa.Table]) -> pa.Table:
    """Run coordinator-side SQL over released tables, with genofed's finalize functions
    (``genofed_hwe_p``) registered."""
    con = duckdb.connect()
    try:
        if "genofed_hwe_p" in sql.lower():
            _register_functions(con)
        for name, t in tables.items():
            con.register(name, t)
        out = con.sql(sql).to_arrow_table()
    except duckdb.Error as e:  # arithmetic over the released totals: overflow, division by zero, a narrowing CAST
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlanningError(f"the final step over the combined totals failed: {first[:300]}; change the expression "
                            "around the aggregates (a wider type, a guard against zero)") from None
    finally:
        con.close()
    return narrow_integers(out)


def _hwe_udf(het: pa.Array, hom_ref: pa.Array, hom_alt: pa.Array) -> pa.Array:
    from ..genomics.stats import hwe_exact

    cols = [np.asarray(pc.fill_null(c, 0).to_numpy(zero_copy_only=False), np.int64) for c in (het, hom_ref, hom_alt)]
    nulls = np.logical_or.reduce([np.asarray(c.is_null().to_numpy(zero_copy_only=False)) for c in (het, hom_ref, hom_alt)])
    p = hwe_exact(*cols)
    return pa.array(p, mask=nulls | np.isnan(p))


def _register_functions(con: duckdb.DuckDBPyConnection) -> None:
    con.create_function("genofed_hwe_p", _hwe_udf, ["bigint", "bigint", "bigint"], "double", type="arrow")  # type: ignore[call-overload]
