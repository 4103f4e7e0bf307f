"""genofed vs reference tools, side by side, in one run; writes ``benchmarks/RESULTS.md``.

What is measured (see RESULTS.md for the numbers):

1. Ingest (VCF -> node store) vs ``plink2 --vcf X --make-pgen``. Target: <= 1.5x plink2.
2. Allele frequency by super_pop
   ``SELECT g.variant_id, s.super_pop, allele_freq(g.dosage) FROM genotypes g JOIN samples s
   USING (sample_id) GROUP BY ALL``
   (a) node-local warm: one DuckDBBackend over the whole cohort, fragment executed after one
       warm-up, median of 5. Target: <= 2x plink2.
   (b) federated end to end: 3 loopback nodes, plain combine, ``genofed.connect(root).sql``,
       median of 5 after a warm-up. Target: <= 3x plink2.
   vs ``plink2 --pfile X --freq --loop-cats super_pop --pheno P`` (median of 5 after a warm-up)
   and vs DuckDB over a pooled long table (built once, untimed; median of 5 warm).
   Correctness: every (variant, super_pop) frequency of genofed (node-local and federated) and
   of pooled DuckDB is compared with plink2's ``--freq counts`` (ALT_CTS / OBS_CT); tolerance 1e-6.
3. Peak RSS of ingest and of the node-local query, and whether it stays flat when the number of
   variants grows 10x (first 10% of the simulated cohort's variants vs all of them).

Every genofed measurement runs in a fresh subprocess (``benchmarks/_worker.py``); peak RSS comes
from ``VmHWM`` in the child; plink2 is timed as a subprocess, its peak RSS from GNU ``time -f %M``.

Usage::

    .venv/bin/python benchmarks/run_all.py            # full run (~3-4 min on 2 cores; +1 min the first time, to simulate)
    .venv/bin/python benchmarks/run_all.py --quick    # peddy only, writes benchmarks/work/RESULTS_quick.md

The simulated 5,000 x ~100,000 cohort is simulated once into ``benchmarks/work/`` (gitignored)
and reused when it exists.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import pstats
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
WORK = BENCH / "work"
WORKER = BENCH / "_worker.py"
DATA = Path(os.environ.get("GENOFED_DATA", ROOT.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")
PANEL_2504 = DATA / "panel" / "1kg_phase3_2504_panel.tsv"
PEDDY_VCF = DATA / "1kg_2504_peddy" / "peddy_1kg_2504x23770.vcf.gz"
SIM_SCRIPT = DATA / "scripts" / "simulate_stdpopsim.py"
SIM_N, SIM_LEFT, SIM_RIGHT, SIM_SEED = 5000, 20_000_000, 28_000_000, 42  # -> 103,396 biallelic sites

SQL_AF = (
    "SELECT g.variant_id, s.super_pop, allele_freq(g.dosage) "
    "FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL"
)
TOL = 1e-6
TARGETS = {"ingest": 1.5, "local": 2.0, "federated": 3.0, "memory_growth": 1.5}

PY = sys.executable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- process helpers --------------------------------------------------------------------------


@dataclass
class Run:
    wall_s: float
    rc: int
    maxrss_mb: float
    stdout: str
    stderr: str


GNU_TIME = shutil.which("time") and Path("/usr/bin/time").exists()


def run_measured(cmd: list[str], cwd: Path | None = None, check: bool = True, rss: bool = False) -> Run:
    """Run a command; wall time (perf_counter). With ``rss``, the command's own peak RSS from GNU
    time's %M (its wait4 on a 2 MB launcher). Not our own wait4 on the child: Linux's ru_maxrss
    keeps the parent's RSS at fork across exec, so a child of this (pandas-loaded) process would
    report at least this process's RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(suffix=".rss") as rf:
        full = ["/usr/bin/time", "-f", "%M", "-o", rf.name, *cmd] if rss and GNU_TIME else cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        p.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        maxrss = float("nan")
        if rss and GNU_TIME:
            try:
                maxrss = int(Path(rf.name).read_text().split()[-1]) / 1024.0
            except (ValueError, IndexError, OSError):
                pass
        r = Run(wall, p.returncode, maxrss, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and r.rc != 0:
        raise RuntimeError(f"command failed ({r.rc}): {shlex.join(cmd)}\n{r.stderr[-3000:]}\n{r.stdout[-2000:]}")
    return r


def worker(task: str, **args) -> dict:
    r = run_measured([PY, str(WORKER), task, json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in args.items()})], cwd=ROOT)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"worker {task} gave no result\n{r.stderr[-3000:]}")
    res = json.loads(line[-1][len("RESULT "):])
    res["wall_s"] = r.wall_s
    return res


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


# -- machine info ---------------------------------------------------------------------------


def machine_info() -> dict:
    info: dict = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        pass
    try:
        mem = Path("/proc/meminfo").read_text()
        info["ram_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    try:
        m = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        info["cpu"] = m.group(1).strip() if m else "?"
    except OSError:
        pass
    info["plink2"] = subprocess.run(["plink2", "--version"], capture_output=True, text=True).stdout.strip()
    info["bcftools"] = subprocess.run(["bcftools", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    vers = subprocess.run(
        [PY, "-c", "import duckdb, numpy, pyarrow, cyvcf2, genofed; print(duckdb.__version__, numpy.__version__, pyarrow.__version__, cyvcf2.__version__, genofed.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    info.update(dict(zip(["duckdb", "numpy", "pyarrow", "cyvcf2", "genofed"], vers)))
    return info


CODE_DIRS = ("genofed", "engine", "connectors", "genomics", "privacy")


def code_fingerprint() -> dict:
    """A hash of the engine's source files, to detect code edited while the benchmark runs."""
    import hashlib

    h = hashlib.sha256()
    newest, newest_path = 0.0, ""
    for d in CODE_DIRS:
        for f in sorted((ROOT / d).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
            m = f.stat().st_mtime
            if m > newest:
                newest, newest_path = m, str(f.relative_to(ROOT))
    return {"sha256": h.hexdigest()[:12], "newest": newest_path,
            "newest_mtime": _dt.datetime.fromtimestamp(newest).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- datasets ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    vcf: Path
    panel: Path
    label: str
    reps_ingest: int
    reps_make_pgen: int


def ensure_sim() -> tuple[Path, Path]:
    d = WORK / "sim5000"
    prefix = d / "sim5000"
    vcf, panel = Path(str(prefix) + ".vcf.gz"), Path(str(prefix) + ".panel.tsv")
    if vcf.exists() and Path(str(vcf) + ".tbi").exists() and panel.exists():
        log(f"reusing simulated cohort {vcf.relative_to(ROOT)}")
        return vcf, panel
    d.mkdir(parents=True, exist_ok=True)
    log(f"simulating {SIM_N} x chr22:{SIM_LEFT}-{SIM_RIGHT} (stdpopsim OutOfAfrica_3G09, seed {SIM_SEED}) ...")
    r = run_measured([PY, str(SIM_SCRIPT), str(SIM_N), str(SIM_LEFT), str(SIM_RIGHT), str(prefix), str(SIM_SEED)])
    log(r.stdout.strip().replace("\n", " | ") + f" ({r.wall_s:.0f} s)")
    return vcf, panel


def ensure_first_tenth(vcf: Path) -> Path:
    """The first 10% of the records of ``vcf`` (same samples), bgzipped and indexed."""
    out = vcf.parent / "sim5000_first10pct.vcf.gz"
    if out.exists() and Path(str(out) + ".tbi").exists() and out.stat().st_mtime >= vcf.stat().st_mtime:
        return out
    pos = subprocess.run(["bcftools", "query", "-f", "%CHROM\t%POS\n", str(vcf)], capture_output=True, text=True, check=True).stdout.split("\n")
    pos = [p for p in pos if p]
    chrom, last = pos[len(pos) // 10 - 1].split("\t")
    first_chrom = pos[0].split("\t")[0]
    assert chrom == first_chrom, "simulated cohort is expected to be one contig"
    subprocess.run(["bcftools", "view", "-r", f"{chrom}:1-{last}", "-Oz", "-o", str(out), str(vcf)], check=True)
    subprocess.run(["tabix", "-f", "-p", "vcf", str(out)], check=True)
    return out


def pheno_file(panel: Path, out: Path) -> Path:
    """plink2 --pheno file: #IID and super_pop (categorical)."""
    lines = panel.read_text().splitlines()
    head = lines[0].split("\t")
    i_sup = head.index("super_pop")
    with open(out, "w") as f:
        f.write("#IID\tsuper_pop\n")
        for ln in lines[1:]:
            if ln.strip():
                c = ln.split("\t")
                f.write(f"{c[0]}\t{c[i_sup]}\n")
    return out


def count_records(vcf: Path) -> int:
    r = subprocess.run(["bcftools", "index", "-n", str(vcf)], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip().isdigit():
        return int(r.stdout.strip())
    return sum(1 for _ in subprocess.run(["bcftools", "view", "-H", str(vcf)], capture_output=True, text=True).stdout.splitlines())


# -- plink2 ----------------------------------------------------------------------------------------


def plink_make_pgen(vcf: Path, out: Path, threads: int | None = None) -> Run:
    cmd = ["plink2", "--vcf", str(vcf), "--make-pgen", "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    return run_measured(cmd, rss=True)


def plink_freq(pfile: Path, pheno: Path, out: Path, counts: bool = False, threads: int | None = None) -> Run:
    freq = ["--freq", "counts", "cols=chrom,pos,ref,alt,altfreq,nobs"] if counts else ["--freq"]
    cmd = ["plink2", "--pfile", str(pfile), *freq, "--loop-cats", "super_pop", "--pheno", str(pheno), "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    return run_measured(cmd, rss=True)


# -- correctness ---------------------------------------------------------------------------------


def plink_counts_frame(prefix: Path, cats: list[str]):
    import pandas as pd

    frames = []
    for c in cats:
        f = Path(f"{prefix}.{c}.acount")
        df = pd.read_csv(f, sep="\t", dtype={"#CHROM": str, "REF": str, "ALT": str})
        df["variant_id"] = df["#CHROM"] + ":" + df["POS"].astype(str) + ":" + df["REF"] + ":" + df["ALT"]
        df["super_pop"] = c
        df["freq"] = df["ALT_CTS"] / df["OBS_CT"]
        frames.append(df[["variant_id", "super_pop", "freq"]])
    return pd.concat(frames, ignore_index=True)


def compare(ref, test, what: str) -> dict:
    import numpy as np

    dup_ref = int(ref.duplicated(["variant_id", "super_pop"]).sum())
    dup_test = int(test.duplicated(["variant_id", "super_pop"]).sum())
    m = ref.merge(test, on=["variant_id", "super_pop"], how="outer", suffixes=("_ref", "_test"), indicator=True)
    both = m[m["_merge"] == "both"]
    diff = np.abs(both["freq_ref"].astype(float) - both["freq_test"].astype(float))
    max_diff = float(diff.max()) if len(diff) else float("nan")
    n_bad = int((diff > TOL).sum())
    ok = (len(both) == len(ref) == len(test)) and n_bad == 0 and dup_ref == 0 and dup_test == 0 and len(both) > 0
    return {
        "what": what,
        "n_ref": len(ref),
        "n_test": len(test),
        "n_matched": len(both),
        "only_ref": int((m["_merge"] == "left_only").sum()),
        "only_test": int((m["_merge"] == "right_only").sum()),
        "max_abs_diff": max_diff,
        "n_over_tol": n_bad,
        "duplicates": dup_ref + dup_test,
        "ok": bool(ok),
    }


def local_frame(path: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pandas()
    return t.assign(variant_id=t["_k0"], super_pop=t["_k1"], freq=t["_p0"].astype(float) / t["_p1"].astype(float))[["variant_id", "super_pop", "freq"]]


def fed_frame(path: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pandas()
    t.columns = ["variant_id", "super_pop", "freq"]
    return t


def pooled_frame(path: Path, store: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pandas()
    v = pq.read_table(Path(store) / "current" / "variants.parquet", columns=["vidx", "variant_id"]).to_pandas()
    t = t.merge(v, on="vidx", how="left")
    return t.rename(columns={"af": "freq"})[["variant_id", "super_pop", "freq"]]


# -- profiles ------------------------------------------------------------------------------------------


def format_profile(path: Path, sort: str, limit: int = 18) -> str:
    s = io.StringIO()
    st = pstats.Stats(str(path), stream=s)
    st.sort_stats(sort).print_stats(limit)
    text = s.getvalue()
    text = text.replace(str(ROOT) + "/", "")
    text = re.sub(r"(\S*/)?lib/python3\.\d+/(site-packages/)?", "", text)
    lines = [ln.rstrip() for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(ln for ln in lines[start:] if ln.strip() and not ln.strip().startswith(("Ordered by", "List reduced")))


def imports_under(path: Path, file_part: str, func: str) -> float:
    """Cumulative time of module imports called directly from ``func``."""
    st = pstats.Stats(str(path)).stats
    keys = [k for k in st if k[2] == func and file_part in k[0]]
    if not keys:
        return 0.0
    key = max(keys, key=lambda k: st[k][3])
    return sum(v[4][key][3] for k, v in st.items() if k[2] in ("_find_and_load", "_handle_fromlist") and key in v[4])


def callee_breakdown(path: Path, file_part: str, func: str, descend: float = 0.9, limit: int = 12, expand_top: bool = False) -> str:
    """The direct callees of ``func`` (in a file whose path contains ``file_part``), by cumulative
    time and share of the parent, after descending through callees that hold >= ``descend`` of it.
    With ``expand_top``, also the callees of the largest callee when it is project code."""
    st = pstats.Stats(str(path))
    stats = st.stats  # {key: (cc, nc, tt, ct, callers)}; key = (file, line, name)
    cands = [k for k in stats if k[2] == func and file_part in k[0]]
    if not cands:
        return f"(no {func} in {file_part} in the profile)"
    key = max(cands, key=lambda k: stats[k][3])
    text = _breakdown(stats, key, descend, limit)
    if expand_top:
        kids = sorted(((v[4][key][3], k) for k, v in stats.items() if key in v[4]), reverse=True)
        if kids and kids[0][1][0].startswith(str(ROOT)) and ".venv" not in kids[0][1][0]:
            text += "\n\n" + _breakdown(stats, kids[0][1], 1.1, limit)
    return text


def _breakdown(stats: dict, key: tuple, descend: float, limit: int) -> str:
    def callees(parent):
        out = []
        for k, v in stats.items():
            if parent in v[4]:
                cc, nc, tt, ct = v[4][parent]
                out.append((ct, k, nc))
        return sorted(out, reverse=True)

    chain = [key]
    while True:
        cs = callees(chain[-1])
        if cs and cs[0][0] >= descend * stats[chain[-1]][3] and cs[0][1] not in chain:
            chain.append(cs[0][1])
        else:
            break

    def name(k):
        f = k[0].replace(str(ROOT) + "/", "")
        f = re.sub(r"(\S*/)?lib/python3\.\d+/(site-packages/)?", "", f)
        return f"{f}:{k[1]}({k[2]})" if k[1] else k[2]

    top = chain[-1]
    total = stats[top][3]
    lines = [" -> ".join(name(k) for k in chain), f"{'cum s':>8} {'share':>6} {'calls':>8}  callee"]
    for ct, k, nc in callees(top)[:limit]:
        lines.append(f"{ct:8.3f} {ct / total:6.1%} {nc:8d}  {name(k)}")
    own = stats[top][2]
    lines.append(f"{own:8.3f} {own / total:6.1%} {'':8}  (own time of {top[2]})")
    return "\n".join(lines)


# -- the benchmark ------------------------------------------------------------------------------------


def bench_dataset(ds: Dataset, reps: int, results: dict) -> dict:
    R: dict = {"name": ds.name, "label": ds.label, "load_start": loadavg(), "vcf": str(ds.vcf), "panel": str(ds.panel)}
    d = WORK / "runs" / ds.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    pheno = pheno_file(ds.panel, d / "super_pop.pheno")
    cats = sorted({ln.split("\t")[1] for ln in pheno.read_text().splitlines()[1:] if ln})
    R["records"] = count_records(ds.vcf)
    warm_page_cache(ds.vcf)

    # 1. ingest -------------------------------------------------------------------------------
    log(f"{ds.name}: plink2 --make-pgen x{ds.reps_make_pgen} (+1 with --threads 1)")
    pg = d / "plink" / "cohort"
    pg.parent.mkdir()
    runs = [plink_make_pgen(ds.vcf, pg) for _ in range(ds.reps_make_pgen)]
    r1 = plink_make_pgen(ds.vcf, d / "plink" / "cohort_t1", threads=1)
    R["plink_make_pgen"] = {"times_s": [r.wall_s for r in runs], "median_s": median([r.wall_s for r in runs]),
                            "threads1_s": r1.wall_s, "peak_rss_mb": max(r.maxrss_mb for r in runs)}
    log(f"{ds.name}: genofed ingest x{ds.reps_ingest}")
    store = d / "store"
    ing = [worker("ingest", store=store, vcf=ds.vcf, samples=ds.panel) for _ in range(ds.reps_ingest)]
    R["genofed_ingest"] = {
        "times_s": [x["ingest_s"] for x in ing], "median_s": median([x["ingest_s"] for x in ing]),
        "process_median_s": median([x["wall_s"] for x in ing]), "import_s": median([x["import_s"] for x in ing]),
        "peak_rss_mb": max(x["peak_rss_mb"] for x in ing),
        "workers_peak_rss_mb": max(x.get("workers_peak_rss_mb", 0) for x in ing),
        "rss_before_mb": ing[-1]["rss_before_mb"], "n_samples": ing[-1]["n_samples"], "n_variants": ing[-1]["n_variants"],
        "sampled_peak_RssAnon_mb": max(x.get("sampled_peak_RssAnon_mb", 0) for x in ing),
        "sampled_peak_RssFile_mb": max(x.get("sampled_peak_RssFile_mb", 0) for x in ing),
    }
    R["n_samples"], R["n_variants"] = ing[-1]["n_samples"], ing[-1]["n_variants"]

    # 2. allele frequency by super_pop ----------------------------------------------------------
    log(f"{ds.name}: plink2 --freq --loop-cats super_pop (warm-up + {reps}, and --threads 1)")
    fq = d / "plink" / "freq"
    plink_freq(pg, pheno, fq)  # warm-up
    fr = [plink_freq(pg, pheno, fq) for _ in range(reps)]
    fr1 = [plink_freq(pg, pheno, d / "plink" / "freq_t1", threads=1) for _ in range(reps)]
    R["plink_freq"] = {"times_s": [r.wall_s for r in fr], "median_s": median([r.wall_s for r in fr]),
                       "threads1_median_s": median([r.wall_s for r in fr1]), "peak_rss_mb": max(r.maxrss_mb for r in fr)}
    plink_freq(pg, pheno, d / "plink" / "counts", counts=True)
    ref = plink_counts_frame(d / "plink" / "counts", cats)

    log(f"{ds.name}: genofed node-local (warm-up + {reps})")
    loc = worker("local", store=store, sql=SQL_AF, reps=reps, out=d / "local.parquet", tracemalloc=True)
    R["genofed_local"] = loc

    log(f"{ds.name}: genofed federation init (3 nodes, min_count=1)")
    root = d / "federation"
    R["genofed_fed_init"] = worker("fed_init", root=root, vcf=ds.vcf, samples=ds.panel)
    log(f"{ds.name}: genofed federated query (warm-up + {reps})")
    R["genofed_fed"] = worker("fed_query", root=root, sql=SQL_AF, reps=reps, out=d / "fed.parquet")

    log(f"{ds.name}: DuckDB pooled long table (build untimed, warm-up + {reps})")
    R["duckdb_pooled"] = worker("pooled", store=store, reps=reps, out=d / "pooled.parquet")

    log(f"{ds.name}: correctness vs plink2 --freq counts")
    R["correctness"] = [
        compare(ref, local_frame(d / "local.parquet"), "genofed node-local"),
        compare(ref, fed_frame(d / "fed.parquet"), "genofed federated"),
        compare(ref, pooled_frame(d / "pooled.parquet", store), "DuckDB pooled"),
    ]
    for c in R["correctness"]:
        log(f"  {c['what']}: matched {c['n_matched']}/{c['n_ref']}, max |diff| {c['max_abs_diff']:.2e} -> {'OK' if c['ok'] else 'MISMATCH'}")
    R["store_bytes"] = sum(f.stat().st_size for f in (store / "current").rglob("*") if f.is_file())
    R["pgen_bytes"] = sum(Path(f"{pg}.{e}").stat().st_size for e in ("pgen", "pvar", "psam"))
    R["load_end"] = loadavg()
    results[ds.name] = R
    return R


def bench_memory(vcf100: Path, panel: Path, R100: dict, reps: int) -> dict:
    log("memory: first 10% of the simulated cohort's variants")
    vcf10 = ensure_first_tenth(vcf100)
    d = WORK / "runs" / "sim_10pct"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    warm_page_cache(vcf10)
    pl = plink_make_pgen(vcf10, d / "cohort")
    # one process (workers=1) at both sizes: the growth of the algorithm's own memory, like for like
    ing = worker("ingest", store=d / "store", vcf=vcf10, samples=panel, workers=1)
    loc = worker("local", store=d / "store", sql=SQL_AF, reps=max(2, reps // 2), tracemalloc=True)
    ing100 = worker("ingest", store=d / "store100", vcf=vcf100, samples=panel, workers=1)
    shutil.rmtree(d / "store100", ignore_errors=True)
    def pick(ing: dict, loc: dict, records: int, pl_rss: float) -> dict:
        return {
            "records": records, "n_variants": ing["n_variants"], "ingest_s": ing.get("ingest_s", ing.get("median_s")),
            "ingest_peak_rss_mb": ing["peak_rss_mb"], "ingest_rss_before_mb": ing["rss_before_mb"],
            "ingest_peak_anon_mb": ing.get("sampled_peak_RssAnon_mb"), "ingest_peak_file_mb": ing.get("sampled_peak_RssFile_mb"),
            "local_peak_rss_mb": loc["peak_rss_mb"], "local_rss_after_init_mb": loc["rss_after_init_mb"],
            "local_anon_after_init_mb": loc.get("anon_after_init_mb"), "local_file_after_init_mb": loc.get("file_after_init_mb"),
            "local_peak_anon_mb": loc.get("sampled_peak_RssAnon_mb"), "local_peak_file_mb": loc.get("sampled_peak_RssFile_mb"),
            "local_tracemalloc_peak_mb": loc.get("tracemalloc_peak_mb"), "local_median_s": loc["median_s"],
            "plink_make_pgen_peak_rss_mb": pl_rss,
        }

    g100 = dict(ing100)
    return {
        "10pct": pick(ing, loc, count_records(vcf10), pl.maxrss_mb),
        "100pct": pick(g100, R100["genofed_local"], R100["records"], R100["plink_make_pgen"]["peak_rss_mb"]),
    }


def bench_profiles(results: dict, quick: bool) -> dict:
    """Where the time goes, for the comparisons that miss their target (measured, cProfile)."""
    P: dict = {}
    d = WORK / "profiles"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    peddy = results["peddy"]
    big = results.get("sim100k", peddy)
    ing_ratio = max(r["genofed_ingest"]["median_s"] / r["plink_make_pgen"]["median_s"] for r in results["datasets"].values())
    if ing_ratio > TARGETS["ingest"]:
        log("profile: genofed ingest of peddy under cProfile; reader floors")
        prof = d / "ingest.prof"
        x = worker("ingest", store=d / "store", vcf=PEDDY_VCF, samples=PANEL_2504, profile=prof)
        floor = worker("reader_floor", vcf=PEDDY_VCF)
        bcf = run_measured(["bcftools", "view", "-Ou", "-o", "/dev/null", str(PEDDY_VCF)])
        zc = run_measured(["bash", "-c", f"zcat {shlex.quote(str(PEDDY_VCF))} > /dev/null"])
        P["ingest"] = {"dataset": "peddy", "ingest_s_under_profile": x["ingest_s"], "ingest_s": peddy["genofed_ingest"]["median_s"],
                       "plink_s": peddy["plink_make_pgen"]["median_s"], "plink_threads1_s": peddy["plink_make_pgen"]["threads1_s"],
                       "reader_floor": floor, "bcftools_parse_s": bcf.wall_s, "zcat_s": zc.wall_s,
                       "breakdown": callee_breakdown(prof, "ingest", "ingest", expand_top=True), "imports_s": imports_under(prof, "ingest", "ingest"),
                       "tottime": format_profile(prof, "tottime"), "cumulative": format_profile(prof, "cumulative", 14)}
        if "sim100k" in results["datasets"]:
            log("profile: genofed ingest of sim100k under cProfile")
            prof = d / "ingest_sim.prof"
            x = worker("ingest", store=d / "store_sim", vcf=results["sim100k"]["vcf"], samples=results["sim100k"]["panel"], profile=prof)
            shutil.rmtree(d / "store_sim", ignore_errors=True)
            P["ingest_sim"] = {"ingest_s_under_profile": x["ingest_s"], "breakdown": callee_breakdown(prof, "ingest", "ingest", expand_top=True)}
    local_ratio = max(r["genofed_local"]["median_s"] / r["plink_freq"]["median_s"] for r in results["datasets"].values())
    fed_ratio = max(r["genofed_fed"]["median_s"] / r["plink_freq"]["median_s"] for r in results["datasets"].values())
    if local_ratio > TARGETS["local"] or fed_ratio > TARGETS["federated"]:
        name = big["name"]
        log(f"profile: node-local query on {name} under cProfile")
        prof = d / "local.prof"
        worker("local", store=WORK / "runs" / name / "store", sql=SQL_AF, reps=3, profile=prof)
        P["local"] = {"dataset": name, "breakdown": callee_breakdown(prof, "backends", "execute"),
                      "tottime": format_profile(prof, "tottime"), "cumulative": format_profile(prof, "cumulative", 22)}
    if fed_ratio > TARGETS["federated"]:
        P["node_breakdown"] = {}
        for name in results["datasets"]:
            log(f"profile: one node's work on the fragment, step by step ({name})")
            P["node_breakdown"][name] = worker("node_breakdown", config=WORK / "runs" / name / "federation" / "node_1" / "node.toml",
                                               sql=SQL_AF, reps=3)
        name = big["name"]
        log(f"profile: federated query (coordinator side) on {name} under cProfile")
        prof = d / "fed.prof"
        worker("fed_query", root=WORK / "runs" / name / "federation", sql=SQL_AF, reps=3, profile=prof)
        P["decimal_probe"] = worker("decimal_probe", rows=int(results["datasets"][name]["genofed_local"]["rows"]))
        P["fed"] = {"dataset": name, "breakdown": callee_breakdown(prof, "coordinator", "query", descend=0.99, expand_top=False), "tottime": format_profile(prof, "tottime", 14), "cumulative": format_profile(prof, "cumulative", 18)}
    return P


# -- report ----------------------------------------------------------------------------------------------


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def verdict(ratio: float, limit: float) -> str:
    return f"**met** ({ratio:.2f}× ≤ {limit:g}×)" if ratio <= limit else f"**NOT met** ({ratio:.2f}× > {limit:g}×)"


SECURE_BEGIN, SECURE_END = "<!-- secure-combine:begin -->", "<!-- secure-combine:end -->"
GWAS_BEGIN, GWAS_END = "<!-- gwas:begin -->", "<!-- gwas:end -->"


def write_report(path: Path, results: dict, info: dict, command: str, started: str, elapsed: float, load: tuple[str, str]) -> None:
    ds = results["datasets"]
    L: list[str] = []
    a = L.append
    a("# genofed benchmarks vs reference tools")
    a("")
    a(f"Produced by `{command}` (from the repository root), started {started}, took {elapsed / 60:.1f} min.")
    a("")
    code = results.get("code", {})
    if code:
        c0, c1 = code["start"], code["end"]
        a(f"Code measured: source hash `{c0['sha256']}` of {', '.join(CODE_DIRS)} (newest file {c0['newest']}, modified {c0['newest_mtime']}).")
        if c0["sha256"] != c1["sha256"]:
            a("")
            a(f"**Warning: the source changed while this ran (hash at the end `{c1['sha256']}`, {c1['newest']} modified {c1['newest_mtime']}); "
              "numbers may mix two versions. Rerun.**")
        a("")
    a(f"Machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM, {info.get('platform')}; "
      f"load average at start {load[0]}, at end {load[1]} (the machine is shared: other jobs may run concurrently).  ")
    a(f"Versions: {info.get('plink2')}; duckdb {info.get('duckdb')}; numpy {info.get('numpy')}; pyarrow {info.get('pyarrow')}; "
      f"cyvcf2 {info.get('cyvcf2')}; {info.get('bcftools')}; Python {info.get('python')}; genofed {info.get('genofed')}.")
    a("")
    a("Datasets: " + "; ".join(f"**{r['name']}** = {r['label']} ({r['n_samples']:,} samples × {r['n_variants']:,} variants)" for r in ds.values()) + ".")
    a("")

    # summary
    a("## Targets")
    a("")
    a("| target | dataset | genofed | reference | ratio genofed/ref | verdict |")
    a("|---|---|---|---|---|---|")
    for r in ds.values():
        g, p = r["genofed_ingest"]["median_s"], r["plink_make_pgen"]["median_s"]
        a(f"| ingest ≤ 1.5× plink2 --make-pgen | {r['name']} | {fmt_s(g)} | {fmt_s(p)} | {g / p:.2f}× | {verdict(g / p, TARGETS['ingest'])} |")
    for r in ds.values():
        g, p = r["genofed_local"]["median_s"], r["plink_freq"]["median_s"]
        a(f"| AF by super_pop, node-local warm ≤ 2× plink2 | {r['name']} | {fmt_s(g)} | {fmt_s(p)} | {g / p:.2f}× | {verdict(g / p, TARGETS['local'])} |")
    for r in ds.values():
        g, p = r["genofed_fed"]["median_s"], r["plink_freq"]["median_s"]
        a(f"| AF by super_pop, federated (3 nodes) ≤ 3× plink2 | {r['name']} | {fmt_s(g)} | {fmt_s(p)} | {g / p:.2f}× | {verdict(g / p, TARGETS['federated'])} |")
    mem = results.get("memory")
    if mem:
        for k, label in (("ingest_peak_rss_mb", "ingest"), ("local_peak_rss_mb", "node-local query")):
            lo, hi = mem["10pct"][k], mem["100pct"][k]
            a(f"| peak RSS flat (≤ 1.5×) as variants grow 10×: {label} | sim 10% → 100% | {lo:.0f} → {hi:.0f} MB | – | {hi / lo:.2f}× | {verdict(hi / lo, TARGETS['memory_growth'])} |")
        for k, label in (("ingest_peak_anon_mb", "ingest"), ("local_peak_anon_mb", "node-local query")):
            lo, hi = mem["10pct"].get(k), mem["100pct"].get(k)
            if lo and hi:
                a(f"| (same, private memory only, without file-backed pages): {label} | sim 10% → 100% | {lo:.0f} → {hi:.0f} MB | – | {hi / lo:.2f}× | {verdict(hi / lo, TARGETS['memory_growth'])} |")
    ok_all = all(c["ok"] for r in ds.values() for c in r["correctness"])
    a(f"| correctness: every AF equals plink2's to 1e-6 | all | | | | {'**met**' if ok_all else '**NOT met** (see below)'} |")
    a("")

    # ingest detail
    a("## 1. Ingest: VCF → node store vs `plink2 --vcf X --make-pgen --out Y`")
    a("")
    a("genofed time = the `ingest()` call inside a fresh process (median of N runs); \"process\" adds Python start-up "
      "and imports, as the `genofed ingest` CLI would pay. plink2 = wall time of the process with its default threads "
      f"(all {info.get('nproc')} cores), and once with `--threads 1`. The VCF is in the page cache for both.")
    a("")
    a("| dataset | runs genofed / plink2 | genofed ingest() | genofed process | plink2 | plink2 --threads 1 | ratio | ratio (process) | ratio vs 1-thread plink2 | genofed peak RSS | plink2 peak RSS | store size | pgen size |")
    a("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in ds.values():
        g, p = r["genofed_ingest"], r["plink_make_pgen"]
        a(f"| {r['name']} | {len(g['times_s'])} / {len(p['times_s'])} | {fmt_s(g['median_s'])} | {fmt_s(g['process_median_s'])} | {fmt_s(p['median_s'])} | "
          f"{fmt_s(p['threads1_s'])} | {g['median_s'] / p['median_s']:.2f}× | {g['process_median_s'] / p['median_s']:.2f}× | "
          f"{g['median_s'] / p['threads1_s']:.2f}× | {g['peak_rss_mb']:.0f} MB (+ ≤ {g.get('workers_peak_rss_mb', 0):.0f} MB per worker process) | {p['peak_rss_mb']:.0f} MB | "
          f"{r['store_bytes'] / 2**20:.1f} MiB | {r['pgen_bytes'] / 2**20:.1f} MiB |")
    a("")

    # AF detail
    a("## 2. Allele frequency by super_pop")
    a("")
    a(f"Query: `{SQL_AF}`")
    a("")
    a("- **genofed node-local**: one `DuckDBBackend(NodeStore(store))` over the whole cohort; the planned fragment is validated "
      "(`validate_fragment`) once, executed once as warm-up, then timed `backend.execute(fragment)` ×5 (median).")
    a("- **genofed federated**: `init_federation(root, vcf, panel, n_nodes=3, min_count=1)`, `up(root)` (3 node servers on loopback), "
      "`genofed.connect(root).sql(query)` with plain combine; one warm-up then ×5 (median). Parse, plan, dispatch, node-side "
      "validation and execution, Arrow Flight transfer, combine, disclosure checks and finalize are all inside the timing.")
    a("- **plink2**: `plink2 --pfile X --freq --loop-cats super_pop --pheno P --out Y` (make-pgen excluded), process wall time, one "
      "warm-up then ×5 (median); default threads and `--threads 1`.")
    a("- **DuckDB pooled**: an in-memory long table `geno(vidx INTEGER, sidx SMALLINT, dosage TINYINT)` with one row per sample × "
      "variant (built once from the store, untimed), `samples(sidx, super_pop)`; timed warm ×5 (median): "
      "`SELECT g.vidx, s.super_pop, sum(g.dosage) / (2 * count(g.dosage)) FROM geno g JOIN samples s USING (sidx) GROUP BY ALL` "
      "(integer variant key: the cheapest form of the pooled query; variant_id strings are joined afterwards, outside the timing).")
    a("")
    a("| dataset | genofed node-local | genofed federated | plink2 | plink2 --threads 1 | DuckDB pooled | local/plink2 | fed/plink2 | local/DuckDB | fed/DuckDB | result rows | best-of-5 ratios local / fed vs plink2 |")
    a("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in ds.values():
        lo, fe, pl, du = r["genofed_local"]["median_s"], r["genofed_fed"]["median_s"], r["plink_freq"]["median_s"], r["duckdb_pooled"]["median_s"]
        a(f"| {r['name']} | {fmt_s(lo)} | {fmt_s(fe)} | {fmt_s(pl)} | {fmt_s(r['plink_freq']['threads1_median_s'])} | {fmt_s(du)} | "
          f"{lo / pl:.2f}× | {fe / pl:.2f}× | {lo / du:.2f}× | {fe / du:.2f}× | {r['genofed_local']['rows']:,} | "
          f"{min(r['genofed_local']['times_s']) / min(r['plink_freq']['times_s']):.2f}× / {min(r['genofed_fed']['times_s']) / min(r['plink_freq']['times_s']):.2f}× |")
    a("")
    a("Load average (1/5/15 min) during each dataset's block: " + "; ".join(f"{r['name']} {r['load_start']} → {r['load_end']}" for r in ds.values())
      + f" ({info.get('nproc')} CPUs). Short runs (plink2 --freq takes ~0.1-0.2 s) are sensitive to other jobs on the machine; "
      "the best-of-5 ratios in the last column are the least load-sensitive view.")
    a("")
    a("Individual runs (s):")
    a("")
    for r in ds.values():
        a(f"- {r['name']}: node-local {', '.join(f'{t:.3f}' for t in r['genofed_local']['times_s'])} (warm-up {r['genofed_local']['warmup_s']:.3f}); "
          f"federated {', '.join(f'{t:.3f}' for t in r['genofed_fed']['times_s'])} (warm-up {r['genofed_fed']['warmup_s']:.3f}); "
          f"plink2 {', '.join(f'{t:.3f}' for t in r['plink_freq']['times_s'])}; DuckDB pooled {', '.join(f'{t:.3f}' for t in r['duckdb_pooled']['times_s'])}")
    a("")
    a("Other costs (not part of the ratios):")
    a("")
    a("| dataset | node-local: backend init | plan + validate | federation init (3 node ingests) | federation up | coordinator timings (median): plan / nodes / combine+finalize | node peak RSS | DuckDB pooled: build, rows, threads |")
    a("|---|---|---|---|---|---|---|---|")
    for r in ds.values():
        lo, fe, fi, du = r["genofed_local"], r["genofed_fed"], r["genofed_fed_init"], r["duckdb_pooled"]
        ct = fe.get("coordinator_timings_median", {})
        tim = " / ".join(f"{ct.get(k, float('nan')):.3f}" for k in ("plan_s", "nodes_s", "combine_finalize_s"))
        nodes = ", ".join(f"{v:.0f}" for v in fe.get("node_peak_rss_mb", {}).values() if v)
        a(f"| {r['name']} | {lo['backend_init_s']:.3f} s | {lo['plan_validate_s'] * 1000:.0f} ms | {fi['init_s']:.1f} s | {fe['up_s']:.1f} s | "
          f"{tim} s | {nodes} MB | {du['build_s']:.1f} s, {du['rows_long']:,}, {du['threads']} |")
    a("")
    a("### Correctness (all (variant, super_pop) pairs, vs plink2 `--freq counts`: ALT_CTS / OBS_CT)")
    a("")
    a("| dataset | result | pairs (plink2) | pairs (result) | matched | only plink2 | only result | max abs diff | > 1e-6 | ok |")
    a("|---|---|---|---|---|---|---|---|---|---|")
    for r in ds.values():
        for c in r["correctness"]:
            a(f"| {r['name']} | {c['what']} | {c['n_ref']:,} | {c['n_test']:,} | {c['n_matched']:,} | {c['only_ref']} | {c['only_test']} | "
              f"{c['max_abs_diff']:.2e} | {c['n_over_tol']} | {'yes' if c['ok'] else '**NO**'} |")
    a("")

    # memory
    a("## 3. Peak memory")
    a("")
    a("genofed: peak RSS (`VmHWM`) of the fresh measuring process, so it includes the interpreter and imports (≈ the 'before' column). "
      "plink2: its own peak RSS from GNU `time -f %M`. (Not `ru_maxrss` from `os.wait4`/`RUSAGE_CHILDREN`: on Linux it keeps the "
      "parent's RSS at fork across exec, so every child of a 300 MB parent reports ≥ 300 MB.)")
    a("")
    a("| dataset | ingest peak RSS | ingest RSS before ingest() | node-local query peak RSS | node-local RSS after backend init | plink2 make-pgen peak RSS | plink2 --freq peak RSS | DuckDB pooled peak RSS |")
    a("|---|---|---|---|---|---|---|---|")
    for r in ds.values():
        a(f"| {r['name']} | {r['genofed_ingest']['peak_rss_mb']:.0f} MB | {r['genofed_ingest']['rss_before_mb']:.0f} MB | {r['genofed_local']['peak_rss_mb']:.0f} MB | "
          f"{r['genofed_local']['rss_after_init_mb']:.0f} MB | {r['plink_make_pgen']['peak_rss_mb']:.0f} MB | {r['plink_freq']['peak_rss_mb']:.0f} MB | {r['duckdb_pooled']['peak_rss_mb']:.0f} MB |")
    a("")
    if mem:
        a("### Memory as variants grow 10× (simulated 5,000-sample cohort: first 10% of its variants vs all)")
        a("")
        a("| | variants | ingest peak RSS | of which private (RssAnon) / file-backed | ingest peak − RSS before | ingest time | node-local peak RSS | of which private / file-backed | private after backend init | Python+numpy peak in one execution (tracemalloc) | node-local median | plink2 make-pgen peak RSS |")
        a("|---|---|---|---|---|---|---|---|---|---|---|---|")

        def f(x):
            return "?" if x is None else f"{x:.0f}"

        for k in ("10pct", "100pct"):
            m = mem[k]
            a(f"| {k.replace('pct', '%')} | {m['n_variants']:,} | {m['ingest_peak_rss_mb']:.0f} MB | {f(m['ingest_peak_anon_mb'])} / {f(m['ingest_peak_file_mb'])} MB | "
              f"{m['ingest_peak_rss_mb'] - m['ingest_rss_before_mb']:.0f} MB | {fmt_s(m['ingest_s'])} | "
              f"{m['local_peak_rss_mb']:.0f} MB | {f(m['local_peak_anon_mb'])} / {f(m['local_peak_file_mb'])} MB | {f(m['local_anon_after_init_mb'])} MB | "
              f"{f(m['local_tracemalloc_peak_mb'])} MB | {fmt_s(m['local_median_s'])} | {m['plink_make_pgen_peak_rss_mb']:.0f} MB |")
        lo, hi = mem["10pct"], mem["100pct"]
        a("")
        a(f"Growth 10% → 100% (variants ×{hi['n_variants'] / lo['n_variants']:.1f}): ingest peak RSS ×{hi['ingest_peak_rss_mb'] / lo['ingest_peak_rss_mb']:.2f}; "
          f"node-local query peak RSS ×{hi['local_peak_rss_mb'] / lo['local_peak_rss_mb']:.2f}"
          + (f", of which private memory ×{hi['local_peak_anon_mb'] / lo['local_peak_anon_mb']:.2f} "
             f"({lo['local_peak_anon_mb'] - lo['local_anon_after_init_mb']:.0f} → {hi['local_peak_anon_mb'] - hi['local_anon_after_init_mb']:.0f} MB above the backend's resting size) "
             f"and file-backed pages ×{hi['local_peak_file_mb'] / lo['local_peak_file_mb']:.2f} (the memory-mapped `genotypes.bin`, {lo['local_peak_file_mb'] - lo['local_file_after_init_mb']:.0f} → "
             f"{hi['local_peak_file_mb'] - hi['local_file_after_init_mb']:.0f} MB above the libraries' pages: page cache the kernel can drop, but counted in RSS)"
             if lo.get("local_peak_anon_mb") else "")
          + f". Criterion for \"flat\": ≤ ×{TARGETS['memory_growth']:g}. Private/file-backed peaks are sampled from /proc/self/status every 5 ms.")
        a("")

    # profiles
    P = results.get("profiles") or {}
    if P:
        a("## Where the time goes (targets not met; cProfile, measured)")
        a("")
        if "ingest" in P:
            pi = P["ingest"]
            fl = pi["reader_floor"]
            a(f"### Ingest ({pi['dataset']})")
            a("")
            a(f"- genofed `ingest()`: {pi['ingest_s']:.2f} s (under cProfile {pi['ingest_s_under_profile']:.2f} s); plink2 --make-pgen {pi['plink_s']:.2f} s "
              f"(--threads 1: {pi['plink_threads1_s']:.2f} s).")
            floors = []
            if "isal_decompress_s" in fl:
                floors.append(f"ISA-L decompression alone {fl['isal_decompress_s']:.2f} s, + splitting into lines {fl['isal_lines_s']:.2f} s")
            if "text_reader_s" in fl:
                floors.append(f"genofed's text reader alone (`{fl.get('text_reader', '?')}`) {fl['text_reader_s']:.2f} s")
            floors.append(f"cyvcf2 iterate + `genotype.array()` {fl['cyvcf2_genotype_array_s']:.2f} s")
            floors.append(f"htslib full parse (`bcftools view -Ou -o /dev/null`) {pi['bcftools_parse_s']:.2f} s")
            floors.append(f"`zcat` {pi['zcat_s']:.2f} s")
            a("- Floors, measured on the same file (the cost of that step alone, as if everything after it were free): " + "; ".join(floors) + ".")
            imp = pi.get("imports_s", 0.0)
            if imp > 0.05:
                a(f"- {imp:.2f} s of `ingest()` is importing modules on first use (cProfile: `_find_and_load` under `ingest`); "
                  f"measured separately, the first `pyarrow.array()` call in a fresh process takes {fl['first_pa_array_s']:.2f} s"
                  + (" because pyarrow then imports pandas" if fl.get("first_pa_array_imported_pandas") else "") + ".")
            if "text_reader_s" in fl:
                a(f"  The reader alone is {fl['text_reader_s'] / pi['plink_s']:.1f}× plink2's whole make-pgen; "
                  f"it is {fl['text_reader_s'] / pi['ingest_s']:.0%} of genofed's ingest time.")
            a("")
            a("cProfile (peddy), direct callees of `ingest()` (share of its time):")
            a("")
            a("```")
            a(pi["breakdown"])
            a("```")
            a("")
            if "ingest_sim" in P:
                a(f"Same for sim100k (`ingest()` {results['sim100k']['genofed_ingest']['median_s']:.1f} s, under cProfile {P['ingest_sim']['ingest_s_under_profile']:.1f} s; "
                  f"plink2 {results['sim100k']['plink_make_pgen']['median_s']:.1f} s):")
                a("")
                a("```")
                a(P["ingest_sim"]["breakdown"])
                a("```")
                a("")
            a("cProfile (peddy), by own time:")
            a("")
            a("```")
            a(pi["tottime"])
            a("```")
            a("")
            a("cProfile (peddy), by cumulative time:")
            a("")
            a("```")
            a(pi["cumulative"])
            a("```")
            a("")
        if "local" in P:
            a(f"### Node-local query ({P['local']['dataset']}, 3 executions; also each node's work in the federated query)")
            a("")
            a("Call chain and direct callees (share of the time):")
            a("")
            a("```")
            a(P["local"]["breakdown"])
            a("```")
            a("")
            a("By own time, then cumulative:")
            a("")
            a("```")
            a(P["local"]["tottime"])
            a("```")
            a("")
            a("```")
            a(P["local"]["cumulative"])
            a("```")
            a("")
        if "node_breakdown" in P:
            a("### Federated query: one node's share, in-process, step by step (median of 3 after a warm-up)")
            a("")
            a("| dataset | node | samples | validate | execute | min-count rule | Arrow IPC serialise | total | rows, bytes | coordinator 'nodes' time (end to end, 3 nodes in parallel on the shared cores) | coordinator combine+finalize |")
            a("|---|---|---|---|---|---|---|---|---|---|---|")
            for name, nb in P["node_breakdown"].items():
                ct = ds[name]["genofed_fed"].get("coordinator_timings_median", {})
                a(f"| {name} | {nb['node']} | {nb['n_samples']:,} | {nb['validate_s'] * 1000:.0f} ms | {nb['execute_s'] * 1000:.0f} ms | {nb['min_count_s'] * 1000:.0f} ms | "
                  f"{nb['ipc_s'] * 1000:.0f} ms | {nb['total_s'] * 1000:.0f} ms | {nb['rows']:,}, {nb['ipc_bytes'] / 2**20:.1f} MiB | "
                  f"{ct.get('nodes_s', float('nan')) * 1000:.0f} ms | {ct.get('combine_finalize_s', float('nan')) * 1000:.0f} ms |")
            a("")
        if "fed" in P:
            a(f"### Federated query, coordinator process ({P['fed']['dataset']}, 3 queries; node-side work shows up as waiting)")
            a("")
            dp = P.get("decimal_probe")
            if dp:
                a(f"Measured probe: DuckDB returns `SUM` of a BIGINT as `{dp['sum_type']}`; for {dp['rows']:,} groups × 3 nodes, "
                  f"`to_numpy(zero_copy_only=False).astype(int64)` on that column takes {dp['to_numpy_astype_s'] * 1000:.0f} ms "
                  f"(one Python `Decimal` per value) vs {dp['cast_first_s'] * 1000:.1f} ms with `pyarrow.compute.cast(..., int64)` first. "
                  "Compare with the own time of `_disclosure` below, which converts the combined `_n` column this way.")
                a("")
            a("```")
            a(P["fed"]["breakdown"])
            a("```")
            a("")
            a("```")
            a(P["fed"]["cumulative"])
            a("```")
            a("")
    a("## Notes")
    a("")
    a("- Times are medians; individual runs are listed above. plink2 runs as a separate process, so its times include process start "
      "and reading the .pgen from the page cache; genofed node-local times exclude Python start-up and backend initialisation "
      "(reported separately), as the brief defines \"warm\".")
    a("- plink2 uses all cores by default; genofed's ingest and node-local kernel run on one core (DuckDB uses its default threads). "
      "The `--threads 1` columns give the single-core comparison.")
    a("- The simulated cohort: `simulate_stdpopsim.py 5000 20000000 28000000 benchmarks/work/sim5000/sim5000 42` "
      "(stdpopsim HomSap OutOfAfrica_3G09, chr22 window, biallelic SNVs), simulated once and reused; its panel.tsv gives super_pop "
      "(AFR/EUR/EAS). The 10% subset is its first 10% of records (`bcftools view -r`).")
    a("- Raw numbers: `benchmarks/work/results.json` (gitignored).")
    a("")
    text = "\n".join(L)
    # keep the sections bench_secure.py and bench_gwas.py maintain in the same file
    old = path.read_text() if path.exists() else ""
    for begin, end in ((SECURE_BEGIN, SECURE_END), (GWAS_BEGIN, GWAS_END)):
        if begin in old and end in old:
            text += "\n\n" + old[old.index(begin) : old.index(end) + len(end)] + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="peddy only (about a minute); writes benchmarks/work/RESULTS_quick.md unless --out")
    ap.add_argument("--out", type=Path, help="report path (default benchmarks/RESULTS.md, or benchmarks/work/RESULTS_quick.md with --quick)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions for the queries (default 5)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile runs for targets that are not met")
    args = ap.parse_args(argv)
    for tool in ("plink2", "bcftools", "tabix", "bgzip"):
        if shutil.which(tool) is None:
            print(f"run_all: {tool} is not on PATH; the benchmark needs plink2, bcftools, tabix and bgzip", file=sys.stderr)
            return 2
    if not PEDDY_VCF.exists():
        print(f"run_all: {PEDDY_VCF} not found; set GENOFED_DATA to the shared data folder", file=sys.stderr)
        return 2
    out = args.out or (WORK / "RESULTS_quick.md" if args.quick else BENCH / "RESULTS.md")
    WORK.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0 = loadavg()
    exe = os.path.relpath(PY, ROOT) if PY.startswith(str(ROOT)) else PY
    command = shlex.join([exe, "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    info = machine_info()
    code0 = code_fingerprint()
    log(f"code {code0['sha256']} (newest: {code0['newest']} {code0['newest_mtime']})")
    log(f"{info['nproc']} CPUs, {info.get('ram_gib')} GiB, {info['plink2']}, duckdb {info['duckdb']}, numpy {info['numpy']}; load {load0}")

    datasets = [Dataset("peddy", PEDDY_VCF, PANEL_2504, "1000 Genomes phase 3, peddy common SNVs genome-wide (real)", reps_ingest=3, reps_make_pgen=5)]
    if not args.quick:
        vcf, panel = ensure_sim()
        datasets.append(Dataset("sim100k", vcf, panel, "stdpopsim OutOfAfrica_3G09 chr22 window (simulated)", reps_ingest=2, reps_make_pgen=3))
    results: dict = {"datasets": {}, "machine": info, "command": command}
    for ds in datasets:
        R = bench_dataset(ds, args.reps, results["datasets"])
        results[ds.name] = R
    if not args.quick:
        results["memory"] = bench_memory(datasets[1].vcf, datasets[1].panel, results["sim100k"], args.reps)
    if not args.no_profile:
        results["profiles"] = bench_profiles(results, args.quick)
    elapsed = time.perf_counter() - t_start
    code1 = code_fingerprint()
    results["code"] = {"start": code0, "end": code1}
    if code0["sha256"] != code1["sha256"]:
        log(f"WARNING: the engine's source changed during the run ({code0['sha256']} -> {code1['sha256']}, {code1['newest']}); rerun for consistent numbers")
    (WORK / ("results_quick.json" if args.quick else "results.json")).write_text(json.dumps(results, indent=1, default=str))
    write_report(out, results, info, command, started, elapsed, (load0, loadavg()))
    log(f"wrote {out} ({elapsed / 60:.1f} min)")
    print(out.read_text().split("## 1.")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
