"""Measured tasks for ``benchmarks/bench_backends.py``, each run in its own fresh Python process.

Usage: ``python benchmarks/_backend_worker.py TASK JSON_ARGS``; the last stdout line is
``RESULT {json}``. Run with the Hail environment (``.venv-hail``).

Tasks:

* ``convert``: start Hail, convert a node store to Hail's native format (``hail_store.convert``,
  forced), with its steps timed, the size on disk and peak memory of Python and of the JVM.
* ``query``: one backend (``duckdb`` or ``hail``), one query: open the store, (Hail: start the
  JVM and load the converted tables), plan + validate the fragment, execute it cold once, then
  warm ``reps`` times; peak RSS of this process and, for Hail, of the JVM child.
* ``diag``: where the Hail backend's time goes for one fragment (plan building vs Spark job), and
  what the same aggregate costs written directly in Hail.

Peak memory: ``VmHWM`` from ``/proc/PID/status`` of this process and of the JVM (a child process
started by pyspark), read before Hail is stopped; a psutil sampler (every 50 ms) gives the peak of
their sum. ``RUSAGE_CHILDREN`` after ``hl.stop()`` and the gateway's exit is a cross-check (on
Linux a child's ``ru_maxrss`` starts from the parent's RSS at fork, so it is an upper bound).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

T_START = time.perf_counter()


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def jvm_pids() -> list[int]:
    import psutil

    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if c.name() == "java" or "java" in (c.exe() or ""):
                out.append(c.pid)
        except psutil.Error:
            pass
    return out


class Sampler:
    """Peak RSS of this process, of the JVM child(ren) and of their sum, sampled every 50 ms."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_py = self.peak_jvm = self.peak_sum = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._jvm: list[int] = []
        self._last_scan = 0.0

    def sample(self) -> None:
        now = time.perf_counter()
        if not self._jvm or now - self._last_scan > 2.0:
            try:
                self._jvm = jvm_pids()
            except Exception:  # noqa: BLE001 - psutil races with exiting processes
                pass
            self._last_scan = now
        py = rss_mb() or 0.0
        jvm = sum(rss_mb(p) or 0.0 for p in self._jvm)
        self.peak_py, self.peak_jvm, self.peak_sum = max(self.peak_py, py), max(self.peak_jvm, jvm), max(self.peak_sum, py + jvm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()


def settings(a: dict):
    from genofed.engine.backends.hail_session import HailSettings

    conf = tuple(sorted((str(k), str(v)) for k, v in (a.get("spark_conf") or {}).items()))
    return HailSettings(master=a.get("master", "local[2]"), driver_memory=a.get("driver_memory", "8g"),
                        tmp_dir=a.get("tmp_dir", ""), spark_conf=conf)


def stop_hail() -> dict:
    """Peak RSS of the JVM (VmHWM, read while it lives), then ``hl.stop()`` and end the JVM.

    The JVM is ended with SIGTERM, not with py4j's ``gateway.shutdown()``: after that, a py4j
    object finalised by Python's garbage collector sends a command on a connection the JVM no
    longer reads, and the worker blocks for ever (seen once in 30 workers)."""
    import gc

    out: dict = {}
    pids = jvm_pids()
    out["jvm_pids"] = pids
    out["jvm_vmhwm_mb"] = max((vm_hwm_mb(p) or 0.0 for p in pids), default=None)
    gc.disable()
    err: list[str] = []

    def _stop() -> None:
        try:
            import hail as hl

            hl.stop()
        except Exception as e:  # noqa: BLE001 - report, the numbers above are what matter
            err.append(f"{type(e).__name__}: {e}"[:200])

    t = threading.Thread(target=_stop, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        err.append("hl.stop() did not return within 60 s")
    try:
        from pyspark import SparkContext

        proc = getattr(SparkContext._gateway, "proc", None) if SparkContext._gateway is not None else None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                proc.kill()
                proc.wait()
    except Exception as e:  # noqa: BLE001
        err.append(f"{type(e).__name__}: {e}"[:200])
    if err:
        out["stop_error"] = "; ".join(err)
    # the JVM is a child: once reaped, its peak is in RUSAGE_CHILDREN (an upper bound, see above)
    out["children_ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return out


def du_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- tasks ----------------------------------------------------------------------------------------


def task_convert(a: dict) -> dict:
    """Start Hail and convert the store (forced), each step of ``convert`` timed."""
    from genofed.engine.backends import hail_store
    from genofed.engine.backends.hail_session import ensure_session
    from genofed.genomics.store import NodeStore

    store = NodeStore(a["store"])
    steps: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def timed(name, fn, size_arg=None):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
                if size_arg is not None:
                    p = args[size_arg]
                    if os.path.exists(p):
                        sizes[name] = os.path.getsize(p)
        return wrapper

    # time the conversion's steps from outside (the module is not edited)
    hail_store._write_vcf = timed("write_vcf_text", hail_store._write_vcf, 2)
    hail_store._write_codes = timed("write_codes_text", hail_store._write_codes, 2)
    hail_store._import_table = timed("small_tables", hail_store._import_table)
    orig_genotypes = hail_store._genotypes
    hail_store._genotypes = timed("genotypes_plan (incl. text write)", orig_genotypes)
    with Sampler() as mem:
        t0 = time.perf_counter()
        hl = ensure_session(settings(a))
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        uri = hail_store.convert(hl, store, force=True)
        t_convert = time.perf_counter() - t1
    jvm = stop_hail()
    rest = t_convert - steps.get("small_tables", 0.0) - steps.get("genotypes_plan (incl. text write)", 0.0)
    steps["genotypes_mt_write (import + write, Hail)"] = rest
    return {
        "hail_start_s": t_start,
        "convert_s": t_convert,
        "steps_s": steps,
        "text_bytes": sizes,
        "cache_uri": uri,
        "hail_bytes": du_bytes(uri),
        "store_bytes": du_bytes(str(store.path)) - du_bytes(uri),
        "genotypes_mt_bytes": du_bytes(f"{uri}/genotypes.mt"),
        "n_samples": store.manifest.n_samples,
        "n_variants": store.manifest.n_variants,
        "py_peak_rss_mb": vm_hwm_mb(),
        "sampled_peak_py_mb": mem.peak_py,
        "sampled_peak_jvm_mb": mem.peak_jvm,
        "sampled_peak_sum_mb": mem.peak_sum,
        **jvm,
    }


def _plan(backend, sql: str):
    from genofed.engine.fragment import validate_fragment
    from genofed.engine.planner import plan_query
    from genofed.engine.schema import Catalog
    from genofed.engine.sqlcheck import parse

    catalog = Catalog.merge({"n": backend.catalog()})
    plan = plan_query(parse(sql), catalog)
    return plan, validate_fragment(plan.fragment_sql, catalog)


def task_query(a: dict) -> dict:
    """One backend, one query: open, (start), plan, cold execution, warm repetitions."""
    kind = a["backend"]
    out: dict = {"backend": kind}
    with Sampler() as mem:
        t0 = time.perf_counter()
        from genofed.genomics.store import NodeStore

        if kind == "duckdb":
            from genofed.engine.backends.duckdb import DuckDBBackend
        else:
            from genofed.engine.backends.hail_session import hail
            from genofed.engine.backends.hailbackend import HailBackend

            hail()  # import hail (timed with the imports)
        out["import_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        store = NodeStore(a["store"])
        backend = DuckDBBackend(store) if kind == "duckdb" else HailBackend(store, settings(a))
        out["open_s"] = time.perf_counter() - t1
        if kind == "hail":
            t2 = time.perf_counter()
            backend.start()
            out["start_s"] = time.perf_counter() - t2
            out["hail_timings"] = dict(backend.timings)  # hail_start_s = JVM + hl.init; convert_s = cache check
        out["rss_after_open_mb"] = rss_mb()
        t3 = time.perf_counter()
        plan, frag = _plan(backend, a["sql"])
        out["plan_validate_s"] = time.perf_counter() - t3
        out["fragment_sql"] = plan.fragment_sql
        t5 = time.perf_counter()
        table = backend.execute(frag)
        out["cold_s"] = time.perf_counter() - t5
        reps = int(a.get("reps", 5))
        budget = float(a.get("budget_s", 1e9))
        if out["cold_s"] * reps > budget:
            reps = max(int(a.get("min_reps", 1)), int(budget // max(out["cold_s"], 1e-9)))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            table = backend.execute(frag)
            times.append(time.perf_counter() - t)
        out["times_s"] = times
        out["warm_median_s"] = statistics.median(times) if times else None
        out["warm_min_s"] = min(times) if times else None
        if kind == "hail":  # the plan alone (Python + the small Spark jobs of broadcast joins), warm
            t4 = time.perf_counter()
            hplan = backend.compile(frag)
            out["plan_build_s"] = time.perf_counter() - t4
            out["hail_plan_kind"] = hplan.kind
        out["rows"] = table.num_rows
        out["schema"] = str(table.schema)
        if a.get("out"):
            import pyarrow.parquet as pq

            pq.write_table(table, a["out"])
    out["py_peak_rss_mb"] = vm_hwm_mb()
    out["sampled_peak_py_mb"] = mem.peak_py
    out["sampled_peak_jvm_mb"] = mem.peak_jvm
    out["sampled_peak_sum_mb"] = mem.peak_sum
    out["n_samples"] = store.manifest.n_samples
    out["n_variants"] = store.manifest.n_variants
    if kind == "hail":
        out.update(stop_hail())
    return out


def task_diag(a: dict) -> dict:
    """The Hail backend on one fragment, step by step (plan building, which runs small Spark jobs
    for the sample side; the Spark job; the Arrow conversion), whether reusing the compiler's
    field names (so Hail's code cache can hit) changes warm times, and the same aggregate written
    directly in Hail (``annotate_rows`` + ``hl.agg.group_by`` per variant: no shuffle)."""
    from genofed.engine.backends.hailbackend import HailBackend, _to_arrow
    from genofed.genomics.store import NodeStore

    out: dict = {}
    store = NodeStore(a["store"])
    backend = HailBackend(store, settings(a))
    comp = backend.start()
    hl = comp.hl
    plan, frag = _plan(backend, a["sql"])
    reps = int(a.get("reps", 3))
    rows = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        p = backend.compile(frag)
        t1 = time.perf_counter()
        res = [dict(r) for r in p.table.collect()] if p.struct is None else [dict(hl.eval(p.struct))]
        t2 = time.perf_counter()
        _to_arrow(res, backend.meta.result_schema(frag), p.decode)
        t3 = time.perf_counter()
        rows.append({"compile_s": t1 - t0, "collect_s": t2 - t1, "to_arrow_s": t3 - t2})
    out["steps"] = rows
    same = []
    for _ in range(reps):
        comp._n = 0  # same field names every time: identical IR
        t0 = time.perf_counter()
        backend.execute(frag)
        same.append(time.perf_counter() - t0)
    out["same_names_s"] = same
    if a.get("direct_af"):
        mt = hl.read_matrix_table(f"{store.path}/hail/genotypes.mt")
        sam = hl.read_table(f"{store.path}/hail/samples.ht")
        mt = mt.annotate_cols(sp=sam[mt.sample_id].super_pop)
        direct = []
        for _ in range(reps):
            t0 = time.perf_counter()
            m2 = mt.annotate_rows(g=hl.agg.group_by(mt.sp, hl.struct(ac=hl.agg.sum(mt.dosage), an=hl.agg.sum(mt.ploidy * hl.int32(hl.is_defined(mt.dosage))))))
            m2.rows().select("variant_id", "g").collect()
            direct.append(time.perf_counter() - t0)
        out["direct_af_s"] = direct
        t0 = time.perf_counter()
        n = mt.aggregate_entries(hl.agg.count_where(hl.is_defined(mt.dosage)))
        out["direct_count_entries_s"] = time.perf_counter() - t0
        out["direct_count_entries"] = n
    out.update(stop_hail())
    return out


TASKS = {"convert": task_convert, "query": task_query, "diag": task_diag}

if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = TASKS[task](args)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result, default=str), flush=True)
    os._exit(0)
