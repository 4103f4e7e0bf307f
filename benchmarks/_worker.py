"""Measured tasks for ``benchmarks/run_all.py``, each run in its own fresh Python process.

Running every genofed measurement in a subprocess gives each one a clean peak-RSS reading
(``VmHWM`` of this process, plus private/file-backed peaks sampled from /proc/self/status) and
keeps caches from one measurement out of the next.

Usage: ``python benchmarks/_worker.py TASK JSON_ARGS``. The last stdout line is
``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

T_START = time.perf_counter()

SQL_AF = (
    "SELECT g.variant_id, s.super_pop, allele_freq(g.dosage) "
    "FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL"
)


def peak_rss_mb() -> float:
    """Peak RSS of this process since exec (VmHWM). Not ``ru_maxrss``: on Linux that also counts
    the parent's RSS at fork time, inherited across exec (measured: a child of a 300 MB parent
    reports 300 MB for ``true``)."""
    hwm = vm_hwm_mb(os.getpid())
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cur_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of another live process, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler:
    """Samples /proc/self/status every few ms in a thread: peak VmRSS, peak RssAnon (private
    memory) and peak RssFile (file-backed pages, e.g. the memory-mapped genotype store, which
    the kernel can drop under pressure). VmHWM only gives the first."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval = interval
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    k = line.split(":", 1)[0]
                    if k in self.peak:
                        self.peak[k] = max(self.peak[k], int(line.split()[1]))
        except OSError:
            pass

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

    def mb(self) -> dict:
        return {f"sampled_peak_{k}_mb": v / 1024.0 for k, v in self.peak.items()}


class _Profiler:
    """cProfile around a block when ``path`` is given; no-op otherwise."""

    def __init__(self, path: str | None):
        self.path = path
        self.prof = None

    def __enter__(self):
        if self.path:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()
        return self

    def __exit__(self, *exc):
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(self.path)


# -- tasks ----------------------------------------------------------------------------------


def task_ingest(a: dict) -> dict:
    import shutil

    t0 = time.perf_counter()
    from genofed.connectors.ingest import ingest

    t_import = time.perf_counter() - t0
    shutil.rmtree(a["store"], ignore_errors=True)
    rss0 = cur_rss_mb()
    t1 = time.perf_counter()
    with RssSampler() as mem, _Profiler(a.get("profile")):
        rep = ingest(a["store"], a["vcf"], a["samples"], workers=a.get("workers"))
    t_ingest = time.perf_counter() - t1
    return {
        "ingest_s": t_ingest,
        "import_s": t_import,
        "process_s": time.perf_counter() - T_START,
        "n_samples": rep.n_samples,
        "n_variants": rep.n_variants,
        "rss_before_mb": rss0,
        "peak_rss_mb": peak_rss_mb(),
        # ingest worker processes (bgzipped VCFs use one per core): the largest one's peak, an
        # upper bound (forked children also count pages shared with this process)
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        **mem.mb(),
    }


def task_reader_floor(a: dict) -> dict:
    """Floors of VCF reading, measured on the file: decompression alone (ISA-L, as genofed's text
    reader uses, when installed), genofed's text reader iterated alone (when present), and
    cyvcf2 iterate + ``genotype.array()``. Each is what ingest would cost if everything after
    that step were free."""
    out: dict = {}
    t0 = time.perf_counter()
    import pyarrow as pa

    t1 = time.perf_counter()
    pa.array([1])
    out["pyarrow_import_s"] = t1 - t0
    out["first_pa_array_s"] = time.perf_counter() - t1
    out["first_pa_array_imported_pandas"] = "pandas" in sys.modules
    try:
        from isal import igzip_threaded

        t0 = time.perf_counter()
        with igzip_threaded.open(a["vcf"], "rb", threads=1) as fh:
            while fh.read(1 << 22):
                pass
        out["isal_decompress_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with igzip_threaded.open(a["vcf"], "rb", threads=1) as fh:
            n = sum(1 for line in fh if not line.startswith(b"#"))
        out["isal_lines_s"] = time.perf_counter() - t0
    except ImportError:
        pass
    try:  # genofed's own VCF text reader, whichever entry point this version has
        from pathlib import Path

        from genofed.connectors import vcftext

        p = Path(a["vcf"])
        t0 = time.perf_counter()
        if hasattr(vcftext, "iter_batches"):
            from genofed.genomics.store import plane_width

            samples, _ = vcftext.read_header(p)
            it = vcftext.iter_batches(p, None, plane_width(len(samples)))
            out["text_reader"] = "connectors.vcftext.iter_batches (parse + pack to bit planes)"
        else:
            it = vcftext.iter_records(p)
            out["text_reader"] = "connectors.vcftext.iter_records (parse)"
        for _ in it:
            pass
        out["text_reader_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - internal API in flux; report, don't fail the benchmark
        out["text_reader_error"] = f"{type(e).__name__}: {e}"[:200]
    from cyvcf2 import VCF

    t0 = time.perf_counter()
    r = VCF(a["vcf"], gts012=False, lazy=True, threads=1)
    n = 0
    for rec in r:
        rec.genotype.array()
        n += 1
    r.close()
    out["cyvcf2_genotype_array_s"] = time.perf_counter() - t0
    out["records"] = n
    return out


def task_node_breakdown(a: dict) -> dict:
    """What one node of the federation spends on a fragment, step by step, in-process (no
    Flight): validate, execute, minimum-count rule, Arrow IPC serialisation."""
    import pyarrow as pa

    from genofed.connectors.config import NodeConfig
    from genofed.connectors.node import make_backend
    from genofed.engine.fragment import validate_fragment
    from genofed.engine.planner import plan_query
    from genofed.engine.schema import Catalog
    from genofed.engine.sqlcheck import parse
    from genofed.privacy.disclosure import apply_min_count

    cfg = NodeConfig.load(a["config"])
    t0 = time.perf_counter()
    backend = make_backend(cfg)
    t_init = time.perf_counter() - t0
    catalog = Catalog.merge({cfg.name: backend.catalog()})
    frag_sql = plan_query(parse(a.get("sql", SQL_AF)), catalog).fragment_sql
    steps: dict[str, list[float]] = {"validate_s": [], "execute_s": [], "min_count_s": [], "ipc_s": []}
    rows = 0
    for i in range(int(a.get("reps", 5)) + 1):
        t = [time.perf_counter()]
        frag = validate_fragment(frag_sql, catalog, allow_min_max=cfg.allow_min_max)
        t.append(time.perf_counter())
        table = backend.execute(frag)
        t.append(time.perf_counter())
        table, _ = apply_min_count(table, cfg.min_count, frag.partials)
        t.append(time.perf_counter())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        nbytes = sink.getvalue().size
        t.append(time.perf_counter())
        rows = table.num_rows
        if i == 0:
            continue  # warm-up
        for k, (x, y) in zip(steps, zip(t, t[1:])):
            steps[k].append(y - x)
    med = {k: statistics.median(v) for k, v in steps.items()}
    return {"node": cfg.name, "backend_init_s": t_init, **med, "total_s": sum(med.values()),
            "rows": rows, "ipc_bytes": nbytes, "n_samples": backend.store.manifest.n_samples}


def _plan_fragment(backend, sql: str):
    from genofed.engine.fragment import validate_fragment
    from genofed.engine.planner import plan_query
    from genofed.engine.schema import Catalog
    from genofed.engine.sqlcheck import parse

    catalog = Catalog.merge({"node": backend.catalog()})
    plan = plan_query(parse(sql), catalog)
    return plan, validate_fragment(plan.fragment_sql, catalog)


def task_local(a: dict) -> dict:
    """Node-local: one DuckDBBackend over the whole cohort's store; warm-up, then reps."""
    t0 = time.perf_counter()
    from genofed.engine.backends.duckdb import DuckDBBackend
    from genofed.genomics.store import NodeStore

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    backend = DuckDBBackend(NodeStore(a["store"]))
    t_init = time.perf_counter() - t1
    rss_init = cur_rss_mb()
    peak_init = peak_rss_mb()
    init_mem = RssSampler()
    init_mem.sample()
    t2 = time.perf_counter()
    plan, frag = _plan_fragment(backend, a.get("sql", SQL_AF))
    t_plan = time.perf_counter() - t2
    t3 = time.perf_counter()
    with RssSampler() as mem:
        out = backend.execute(frag)  # warm-up
    t_warm = time.perf_counter() - t3
    times = []
    with RssSampler() as mem2, _Profiler(a.get("profile")):
        for _ in range(int(a.get("reps", 5))):
            t = time.perf_counter()
            out = backend.execute(frag)
            times.append(time.perf_counter() - t)
    traced = {}
    if a.get("tracemalloc"):
        # one more execution with tracemalloc: the peak of Python/numpy allocations (Arrow and
        # DuckDB buffers are not traced), to tell them apart from native memory
        import tracemalloc

        tracemalloc.start()
        backend.execute(frag)
        traced = {"tracemalloc_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}
        tracemalloc.stop()
    if a.get("out"):
        import pyarrow.parquet as pq

        pq.write_table(out, a["out"])
    return {
        **traced,
        "times_s": times,
        "median_s": statistics.median(times),
        "warmup_s": t_warm,
        "import_s": t_import,
        "backend_init_s": t_init,
        "plan_validate_s": t_plan,
        "fragment_sql": plan.fragment_sql,
        "rows": out.num_rows,
        "rss_after_init_mb": rss_init,
        "peak_rss_after_init_mb": peak_init,
        "peak_rss_mb": peak_rss_mb(),
        "anon_after_init_mb": init_mem.peak["RssAnon"] / 1024.0,
        "file_after_init_mb": init_mem.peak["RssFile"] / 1024.0,
        **{k: max(v, mem2.mb()[k]) for k, v in mem.mb().items()},
    }


def task_fed_init(a: dict) -> dict:
    import shutil

    from genofed.connectors.federation import init_federation

    shutil.rmtree(a["root"], ignore_errors=True)
    t0 = time.perf_counter()
    init_federation(a["root"], a["vcf"], a["samples"], n_nodes=3, min_count=1)
    return {"init_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def task_fed_query(a: dict) -> dict:
    """Federated end to end: nodes up on loopback, plain combine, warm-up, reps, nodes down."""
    from pathlib import Path

    import genofed
    from genofed.connectors.federation import down, up

    root = a["root"]
    t0 = time.perf_counter()
    up(root)
    t_up = time.perf_counter() - t0
    try:
        fed = genofed.connect(root)
        try:
            t1 = time.perf_counter()
            res = fed.sql(a.get("sql", SQL_AF))  # warm-up (also fetches the catalog)
            t_warm = time.perf_counter() - t1
            times, timings = [], []
            with _Profiler(a.get("profile")):
                for _ in range(int(a.get("reps", 5))):
                    t = time.perf_counter()
                    res = fed.sql(a.get("sql", SQL_AF))
                    times.append(time.perf_counter() - t)
                    timings.append(dict(res.provenance.timings))
            table = res.to_arrow()
            if a.get("out"):
                import pyarrow.parquet as pq

                pq.write_table(table, a["out"])
            node_peak = {}
            for n in fed.nodes:
                pidf = Path(root) / n / "node.pid"
                if pidf.exists():
                    node_peak[n] = vm_hwm_mb(int(pidf.read_text().strip() or 0))
        finally:
            fed.close()
    finally:
        down(root)
    med = {k: statistics.median(t[k] for t in timings) for k in timings[0]} if timings else {}
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "warmup_s": t_warm,
        "up_s": t_up,
        "coordinator_timings_median": med,
        "rows": table.num_rows,
        "suppressed": res.suppressed,
        "nodes": res.provenance.nodes,
        "node_peak_rss_mb": node_peak,
        "coordinator_peak_rss_mb": peak_rss_mb(),
    }


def task_pooled(a: dict) -> dict:
    """DuckDB over pooled data: a long (vidx, sidx, dosage) table, built once (untimed) from the
    node store, then the frequency GROUP BY timed warm."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genofed.genomics.kernels import genotype_rows
    from genofed.genomics.store import NodeStore

    store = NodeStore(a["store"])
    n_s, n_v = store.manifest.n_samples, store.manifest.n_variants
    con = duckdb.connect(":memory:")
    samples = pq.read_table(store.samples_path)
    con.register("_s", pa.table({"sidx": pa.array(np.arange(n_s, dtype=np.int16)), "super_pop": samples.column("super_pop")}))
    con.execute("CREATE TABLE samples AS SELECT * FROM _s")
    con.execute("CREATE TABLE geno (vidx INTEGER, sidx SMALLINT, dosage TINYINT)")
    t0 = time.perf_counter()
    step = max(1, 10_000_000 // max(n_s, 1))
    for start in range(0, n_v, step):
        rows = genotype_rows(store.planes, np.arange(start, min(n_v, start + step)), n_s)
        chunk = pa.table({
            "vidx": rows.column("vidx"),
            "sidx": rows.column("sidx").cast(pa.int16()),
            "dosage": rows.column("dosage"),
        })
        con.register("_chunk", chunk)
        con.execute("INSERT INTO geno SELECT * FROM _chunk")
        con.unregister("_chunk")
    t_build = time.perf_counter() - t0
    n_rows = con.execute("SELECT count(*) FROM geno").fetchall()[0][0]
    sql = (
        "SELECT g.vidx, s.super_pop, sum(g.dosage) / (2 * count(g.dosage)) AS af "
        "FROM geno g JOIN samples s USING (sidx) GROUP BY ALL"
    )
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.sql(sql).to_arrow_table()  # warm-up
    times = []
    for _ in range(int(a.get("reps", 5))):
        t = time.perf_counter()
        out = con.sql(sql).to_arrow_table()
        times.append(time.perf_counter() - t)
    if a.get("out"):
        pq.write_table(out, a["out"])
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "build_s": t_build,
        "rows_long": n_rows,
        "sql": sql,
        "threads": threads,
        "peak_rss_mb": peak_rss_mb(),
    }


def task_decimal_probe(a: dict) -> dict:
    """DuckDB returns SUM(BIGINT) as HUGEINT, i.e. Arrow decimal128(38, 0). Time converting such a
    column to int64 numpy via ``to_numpy(zero_copy_only=False).astype`` (Python Decimal objects)
    vs ``pc.cast`` first. ``rows`` groups, 3 node partials each."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = int(a.get("rows", 310_000))
    t = pa.table({"k": pa.array(np.tile(np.arange(rows), 3)), "_n": pa.array(np.ones(3 * rows, dtype=np.int64))})
    con = duckdb.connect()
    con.register("t", t)
    c = con.sql("SELECT k, sum(_n) AS _n FROM t GROUP BY k").to_arrow_table()
    t0 = time.perf_counter()
    pc.fill_null(c.column("_n"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    t1 = time.perf_counter()
    pc.cast(pc.fill_null(c.column("_n"), 0), pa.int64()).to_numpy()
    t2 = time.perf_counter()
    return {"rows": rows, "sum_type": str(c.schema.field("_n").type), "to_numpy_astype_s": t1 - t0, "cast_first_s": t2 - t1}


TASKS = {
    "decimal_probe": task_decimal_probe,
    "ingest": task_ingest,
    "reader_floor": task_reader_floor,
    "local": task_local,
    "fed_init": task_fed_init,
    "node_breakdown": task_node_breakdown,
    "fed_query": task_fed_query,
    "pooled": task_pooled,
}

if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = TASKS[task](args)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip slow interpreter teardown (DuckDB, memmaps); results are flushed
