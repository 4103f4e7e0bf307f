"""The Hail (Spark) backend: the same fragments as the DuckDB backend, executed by Hail.

For a biobank that has outgrown one machine. Select it in ``node.toml``::

    [node]
    backend = "hail"

    [hail]
    master = "spark://spark-master:7077"   # default local[*]
    tmp_dir = "hdfs:///tmp/genofed"        # visible to every executor
    driver_memory = "8g"

The node store stays the source of truth. The first query converts it to Hail's native format
(:mod:`.hail_store`, cached beside the store version and redone only after a new ingest); Hail
starts lazily then, not when the node starts. Fragments are compiled to Hail plans
(:mod:`.hail_plan`), executed, and returned with exactly the Arrow schema the DuckDB backend
gives the same fragment, so mixed federations combine (MPC and HE compare partial layouts).

The node's policy work that does not compute released values (the catalog, the samples behind
each group for the differencing defence, the variants a query selects for the membership gate,
DP sensitivity bounds) runs on the store's index through :class:`.duckdb.DuckDBBackend`, which
this backend keeps as ``meta``; genotype partials are only ever computed by Hail.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pyarrow as pa

from ...genomics.store import NodeStore
from ..errors import ExecutionError
from ..fragment import Fragment
from .base import Backend
from .duckdb import DuckDBBackend
from .engine_errors import translate_engine
from .hail_exprs import UnsupportedByBackend
from .hail_session import HailSettings, ensure_session


class HailBackend(Backend):
    """Hail/Spark execution over a :class:`NodeStore`.

    Parameters
    ----------
    store
        The node store.
    settings
        Spark master and resources (:class:`~.hail_session.HailSettings`).
    """

    name = "hail"
    _run_lock = threading.Lock()  # one Hail session per process, driven by one thread at a time

    def __init__(self, store: NodeStore, settings: HailSettings | None = None, max_genotype_cells: int = 200_000_000):
        self.settings = settings or HailSettings()
        self.meta = DuckDBBackend(store, max_genotype_cells=max_genotype_cells)
        self.store = store
        self._lock = threading.Lock()
        self._compiler: Any = None
        self.timings: dict[str, float] = {}

    # the node's index (policy work) ------------------------------------------------------
    @property
    def con(self) -> Any:
        return self.meta.con

    def catalog(self) -> dict[str, Any]:
        return self.meta.catalog()

    def sample_sets(self, fragment: Any) -> Any:
        return self.meta.sample_sets(fragment)

    def variant_selection(self, fragment: Fragment, cur: Any = None) -> Any:
        return self.meta.variant_selection(fragment, cur)

    # Hail -----------------------------------------------------------------------------------
    def start(self) -> Any:
        """Start Hail and load (converting once if needed) this store's Hail tables."""
        with self._lock:
            if self._compiler is not None:
                return self._compiler
            from .hail_plan import Compiler, HailTables
            from .hail_store import convert

            t0 = time.perf_counter()
            hl = ensure_session(self.settings)
            t1 = time.perf_counter()
            d = convert(hl, self.store, self.settings.data_dir)
            t2 = time.perf_counter()
            tables = {"samples": hl.read_table(f"{d}/samples.ht"), "variants": hl.read_table(f"{d}/variants.ht")}
            for name in self.store.manifest.clinical:
                tables[name] = hl.read_table(f"{d}/clinical/{name}.ht")
            self._compiler = Compiler(hl, HailTables(hl.read_matrix_table(f"{d}/genotypes.mt"), tables))
            self.timings = {"hail_start_s": t1 - t0, "convert_s": t2 - t1}
            return self._compiler

    # the embedded analyses keep their state (selected samples, saved scores) in ``meta``
    @property
    def analysis_cache(self) -> dict[tuple[str, str], Any]:
        return self.meta.analysis_cache

    def cache_analysis(self, key: tuple[str, str], value: Any) -> None:
        self.meta.cache_analysis(key, value)

    def save_derived(self, name: str, table: pa.Table) -> None:
        self.meta.save_derived(name, table)

    def compile(self, fragment: Fragment) -> Any:
        from ..analysis import AnalysisFragment

        if isinstance(fragment, AnalysisFragment):
            if self.settings.analyses == "embedded":
                return None  # run by the embedded kernels (execute)
            raise UnsupportedByBackend(f"the hail backend does not run {fragment.fn}() on Spark; its steward can set "
                                       "[hail] analyses = \"embedded\" (run it on the node machine) or use the duckdb "
                                       "backend (docs/hail-backend.md)")
        compiler = self.start()
        for name in fragment.tables & set(self.meta.derived):  # per-sample tables an analysis saved here (PCA scores)
            compiler.data.tables[name] = self._derived(compiler.hl, name)
        return compiler.fragment(fragment)

    def _derived(self, hl: Any, name: str) -> Any:
        """A derived table (small: one row per sample) as a Hail Table, read afresh (it may have
        been replaced by a later analysis)."""
        return hl.Table.from_pandas(self.meta.con.table(name).to_arrow_table().to_pandas())

    def has_operation(self, fragment: Fragment) -> bool:
        try:
            with self._run_lock:
                self.compile(fragment)
        except UnsupportedByBackend:
            return False
        return True

    def execute(self, fragment: Fragment) -> pa.Table:
        with self._run_lock:
            return self._execute(fragment)

    def _execute(self, fragment: Fragment) -> pa.Table:
        plan = self.compile(fragment)
        if plan is None:
            return self.meta.execute(fragment)
        schema = self.meta.result_schema(fragment)
        hl = self._compiler.hl
        try:
            if plan.struct is not None:
                rows = [dict(hl.eval(plan.struct))]
            else:
                rows = [dict(r) for r in plan.table.collect()]
        except UnsupportedByBackend:
            raise
        except Exception as e:  # noqa: BLE001 - Hail/Spark raise many types; their messages quote values
            raise translate_engine(e, "Hail", "run the fragment", fragment.select) from None
        return _to_arrow(rows, schema, plan.decode)

    def close(self) -> None:
        self.meta.close()


def _to_arrow(rows: list[dict[str, Any]], schema: pa.Schema, decode: dict[str, Any]) -> pa.Table:
    cols = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if f.name in decode:
            values = [decode[f.name](v) for v in values]
        cols[f.name] = _array(values, f.type)
    return pa.table(cols, schema=schema)


def _array(values: list[Any], t: pa.DataType) -> pa.Array:
    if pa.types.is_decimal(t):
        return pa.array([None if v is None else Decimal(int(v)) if t.scale == 0 else Decimal(str(v)) for v in values], t)
    if pa.types.is_integer(t):
        return pa.array([None if v is None else int(v) for v in values], t)
    if pa.types.is_floating(t):
        return pa.array([None if v is None else float(v) for v in values], t)
    try:
        return pa.array(values, t)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # Arrow's message quotes the value
        raise ExecutionError(f"the node could not run the fragment: the hail backend produced a value that does not fit "
                             f"{t} ({type(e).__name__}); CAST the expression to a wider type", "overflow") from None
