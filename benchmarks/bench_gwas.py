"""Federated GWAS (``gwas_linear``, ``gwas_logistic``) vs plink2 ``--glm`` on the pooled data, same run.

Data: the simulated 5,000-sample x ~103,000-variant cohort of ``run_all.py``
(``benchmarks/work/sim5000/``), split round-robin over three loopback nodes
(``benchmarks/work/gwas_fed/``, built once and reused), with a phenotype table
``benchmarks/work/gwas_pheno.csv`` generated here deterministically (seeded numpy):
c1 age-like integer, c2 sex 0/1 (from the panel), c3 standard normal, y quantitative with planted
genotype effects, case 0/1 (~30%) from a logistic model with planted effects.

Measured (wall time, this machine, one run of this script):

- genofed end to end (``genofed.connect(root).sql(query)``, 3 node processes on loopback):
  ``gwas_linear`` in plain (median of 3 after a warm-up), in mpc and in he (one run each, after a
  small warm-up query in that mode; a run estimated over ~5 minutes is restricted to a documented
  subset of variants), ``gwas_logistic`` in plain (median of 3; after a warm-up when a run takes
  < 20 s).
- plink2 on the pooled pgen (``--threads 2``): ``--glm hide-covar`` linear, and logistic with
  ``no-firth`` (what genofed computes; compared) and with the default firth-fallback (timed only).
  plink2's and genofed's runs of the same analysis alternate, so both see the same load.
- Correctness: genofed vs plink2 joined on variant_id, plink2's effect oriented to ALT, over the
  variants plink2 fitted (P not NA; logistic: and genofed converged): max relative difference of
  beta, se, p. plink2 prints 6 significant digits, so ~1e-5 is the floor.
- Node side: one node's round computed in-process (``DuckDBBackend`` + ``node_round``), node peak
  RSS (VmHWM of the node processes), and a cProfile of each analysis run in-process through the
  real coordinator with in-process transports.

Writes the section between ``<!-- gwas:begin -->`` and ``<!-- gwas:end -->`` of
``benchmarks/RESULTS.md`` (raw numbers: ``benchmarks/work/gwas_results.json``).

Usage::

    .venv/bin/python benchmarks/bench_gwas.py              # full run (~6 min on 2 cores)
    .venv/bin/python benchmarks/bench_gwas.py --no-profile # skip the in-process cProfile runs
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import run_all as RA  # benchmarks/ is sys.path[0] when this file runs as a script

ROOT = RA.ROOT
WORK = RA.WORK
RESULTS = RA.BENCH / "RESULTS.md"
FED = WORK / "gwas_fed"
PLINK_DIR = WORK / "gwas_plink"
PHENO_CSV = WORK / "gwas_pheno.csv"
PROFILES = WORK / "gwas_profiles"  # run_all.py clears work/profiles
BEGIN, END = "<!-- gwas:begin -->", "<!-- gwas:end -->"

SEED = 20261123
MIN_COUNT = 5
THREADS = 2
SLOW_S = 20.0  # a run slower than this is measured once
SECURE_BUDGET_S = 300.0  # a secure run estimated above this is restricted to a subset
TARGET_LINEAR = 2.0  # genofed / plink2, plain
TARGET_LOGISTIC = 1.0  # genofed faster than plink2

COVS = ["phenotypes.c1", "phenotypes.c2", "phenotypes.c3"]


def _cov_sql() -> str:
    return "[" + ", ".join(f"'{c}'" for c in COVS) + "]"


def q_linear(extra: str = "") -> str:
    return f"SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates => {_cov_sql()}{extra})"


def q_logistic(extra: str = "") -> str:
    return f"SELECT * FROM gwas_logistic(phenotype => 'phenotypes.case', covariates => {_cov_sql()}{extra})"


log = RA.log


# -- phenotypes ------------------------------------------------------------------------------


def _causal_variants(vcf: Path, chrom: str, starts: list[int], n_samples_order: list[str]) -> list[tuple[str, np.ndarray]]:
    """For each start position, the first biallelic variant at or after it with ALT frequency in
    [0.1, 0.5]: (variant_id, dosage in ``n_samples_order``)."""
    from cyvcf2 import VCF

    v = VCF(str(vcf), gts012=False, lazy=True, threads=1)
    col = {s: i for i, s in enumerate(v.samples)}
    order = np.array([col[s] for s in n_samples_order], np.int64)
    out = []
    for start in starts:
        for rec in v(f"{chrom}:{start}-{start + 500_000}"):
            if len(rec.ALT) != 1:
                continue
            gt = rec.genotype.array()[:, :2]
            d = (gt > 0).sum(axis=1).astype(np.float64)[order]
            f = d.mean() / 2
            if 0.1 <= f <= 0.5:
                out.append((f"{rec.CHROM}:{rec.POS}:{rec.REF}:{rec.ALT[0]}", d))
                break
    v.close()
    return out


def make_phenotypes(vcf: Path, panel: Path, out: Path) -> dict:
    """Deterministic phenotype table ``sample_id,c1,c2,c3,y,case``; returns its description."""
    from cyvcf2 import VCF

    rng = np.random.default_rng(SEED)
    sheet = pd.read_csv(panel, sep="\t")
    ids = sheet["sample"].astype(str).tolist()
    n = len(ids)
    c1 = rng.integers(20, 80, n).astype(np.float64)  # age-like
    c2 = (sheet["sex"].astype(str).str.lower() == "female").to_numpy(np.float64)  # sex 0/1
    c3 = np.round(rng.normal(size=n), 6)  # e.g. a lab value / PC
    first = next(iter(VCF(str(vcf), lazy=True)))
    chrom, lo = first.CHROM, first.POS
    span = 8_000_000
    starts = [lo + int(span * f) for f in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8)]
    causal = _causal_variants(vcf, chrom, starts, ids)
    beta_lin = [0.25, -0.20, 0.15, 0.10, 0.0, 0.0][: len(causal)]
    beta_log = [0.40, 0.0, -0.30, 0.0, 0.25, 0.0][: len(causal)]
    G = np.column_stack([d for _, d in causal])
    y = 0.02 * (c1 - 50) + 0.3 * c2 + 0.5 * c3 + G @ np.array(beta_lin) + rng.normal(size=n)
    y = np.round(y, 6)
    lin = 0.02 * (c1 - 50) + 0.3 * c2 + 0.2 * c3 + G @ np.array(beta_log)

    def frac(a: float) -> float:
        return float(np.mean(1 / (1 + np.exp(-(a + lin)))))

    lo_a, hi_a = -10.0, 10.0
    for _ in range(60):  # intercept for ~30% cases
        mid = (lo_a + hi_a) / 2
        lo_a, hi_a = (mid, hi_a) if frac(mid) < 0.30 else (lo_a, mid)
    case = (rng.random(n) < 1 / (1 + np.exp(-(lo_a + lin)))).astype(np.int64)
    df = pd.DataFrame({"sample_id": ids, "c1": c1.astype(np.int64), "c2": c2.astype(np.int64), "c3": c3, "y": y, "case": case})
    text = df.to_csv(index=False, float_format="%.6f")
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return {
        "n": n, "cases": int(case.sum()), "case_fraction": float(case.mean()),
        "causal": [{"variant_id": vid, "alt_freq": float(d.mean() / 2), "beta_y": b1, "log_or_case": b2}
                   for (vid, d), b1, b2 in zip(causal, beta_lin, beta_log)],
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def plink_pheno_files(csv: Path, d: Path) -> tuple[Path, Path]:
    df = pd.read_csv(csv, dtype={"sample_id": str})
    pheno, covar = d / "pheno.tsv", d / "covar.tsv"
    p = pd.DataFrame({"#IID": df["sample_id"], "y": df["y"].map(lambda x: f"{x:.6f}"), "case": df["case"] + 1})  # 1/2
    p.to_csv(pheno, sep="\t", index=False)
    c = pd.DataFrame({"#IID": df["sample_id"], "c1": df["c1"], "c2": df["c2"], "c3": df["c3"].map(lambda x: f"{x:.6f}")})
    c.to_csv(covar, sep="\t", index=False)
    return pheno, covar


# -- federation -------------------------------------------------------------------------------


def ensure_federation(vcf: Path, panel: Path, pheno_sha: str) -> dict:
    """The 3-node federation with the phenotype table; rebuilt when the inputs changed."""
    from genofed.connectors.federation import FEDERATION_FILE, init_federation

    stamp = FED / "bench_gwas.stamp"
    want = json.dumps({"vcf": str(vcf), "vcf_mtime": vcf.stat().st_mtime, "pheno": pheno_sha, "min_count": MIN_COUNT,
                       "split": "round-robin x3"}, sort_keys=True)
    if (FED / FEDERATION_FILE).exists() and stamp.exists() and stamp.read_text() == want:
        log(f"reusing federation {FED.relative_to(ROOT)}")
        return {"reused": True, "init_s": json.loads((FED / "bench_gwas.init.json").read_text()).get("init_s")}
    import shutil

    shutil.rmtree(FED, ignore_errors=True)
    log(f"building federation {FED.relative_to(ROOT)} (3 nodes, round-robin, min_count={MIN_COUNT}) ...")
    t0 = time.perf_counter()
    init_federation(FED, vcf, panel, None, n_nodes=3, clinical={"phenotypes": PHENO_CSV}, min_count=MIN_COUNT,
                    allow_plain=True, combine="plain")
    init_s = time.perf_counter() - t0
    (FED / "bench_gwas.init.json").write_text(json.dumps({"init_s": init_s}))
    stamp.write_text(want)
    log(f"federation built in {init_s:.1f} s")
    return {"reused": False, "init_s": init_s}


def node_pids() -> dict[str, int]:
    out = {}
    for d in sorted(FED.glob("node_*")):
        f = d / "node.pid"
        if f.exists() and f.read_text().strip():
            out[d.name] = int(f.read_text().strip())
    return out


def vm_status(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k = line.split(":", 1)[0]
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def node_hwm() -> dict[str, float]:
    return {n: vm_status(p).get("VmHWM", float("nan")) for n, p in node_pids().items()}


# -- plink2 -----------------------------------------------------------------------------------


def ensure_pgen(vcf: Path) -> tuple[Path, float | None]:
    PLINK_DIR.mkdir(parents=True, exist_ok=True)
    pf = PLINK_DIR / "sim5000"
    if all(Path(f"{pf}.{e}").exists() for e in ("pgen", "pvar", "psam")) and Path(f"{pf}.pgen").stat().st_mtime >= vcf.stat().st_mtime:
        return pf, None
    log("plink2 --make-pgen (variant ids chrom:pos:ref:alt) ...")
    r = RA.run_measured(["plink2", "--vcf", str(vcf), "--set-all-var-ids", "@:#:$r:$a", "--new-id-max-allele-len", "10000",
                         "--make-pgen", "--threads", str(THREADS), "--out", str(pf)])
    return pf, r.wall_s


def plink_glm_cmd(pf: Path, pheno: Path, covar: Path, name: str, modifiers: list[str], out: Path) -> list[str]:
    return ["plink2", "--pfile", str(pf), "--pheno", str(pheno), "--pheno-name", name, "--covar", str(covar),
            "--covar-name", "c1,c2,c3", "--covar-variance-standardize", "--glm", "hide-covar", *modifiers,
            "--threads", str(THREADS), "--out", str(out)]


def timed_reps(fn, label: str, reps: int = 3) -> dict:
    """One run; when it took < SLOW_S it was a warm-up and ``reps`` more are timed (median)."""
    load = RA.loadavg()
    t0 = time.perf_counter()
    first = fn()
    t_first = time.perf_counter() - t0
    if t_first >= SLOW_S:
        log(f"{label}: {t_first:.2f} s (single run)")
        return {"times_s": [t_first], "median_s": t_first, "warmup_s": None, "last": first, "load_before": load, "load_after": RA.loadavg()}
    times, last = [], first
    for _ in range(reps):
        t = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t)
    log(f"{label}: median {statistics.median(times):.3f} s ({', '.join(f'{x:.3f}' for x in times)}; warm-up {t_first:.3f})")
    return {"times_s": times, "median_s": statistics.median(times), "warmup_s": t_first, "last": last, "load_before": load,
            "load_after": RA.loadavg()}


PLINK_RUNS = {
    "linear": ("y", [], "linear"),
    "logistic_nofirth": ("case", ["no-firth"], "logistic"),
    "logistic_firth_fallback": ("case", [], "logistic.hybrid"),
}


def plink_job(pf: Path, pheno: Path, covar: Path, key: str):
    """``(run, finish)``: ``run()`` runs plink2 once; ``finish(res)`` adds the command, peak RSS and output file."""
    name, mods, ext = PLINK_RUNS[key]
    cmd = plink_glm_cmd(pf, pheno, covar, name, mods, PLINK_DIR / key)

    def run():
        return RA.run_measured(cmd, rss=True)

    def finish(res: dict) -> dict:
        res["peak_rss_mb"] = res.pop("last").maxrss_mb
        res["cmd"] = shlex.join(["plink2", *[Path(a).name if a.startswith(str(ROOT)) else a for a in cmd[1:]]])
        files = sorted(PLINK_DIR.glob(f"{key}.{name}.glm.*"))
        res["file"] = str(next((f for f in files if f.name.endswith(ext)), files[0]))
        return res

    return run, finish


def interleaved(jobs: dict[str, Any], label: str, reps: int = 3, slow_reps: int = 1) -> dict[str, dict]:
    """Each job once, in turn; a job whose first run took < SLOW_S gets ``reps`` more timed runs
    (the first was its warm-up), a slower one ``slow_reps - 1`` more (the first counts); the jobs
    alternate run by run so that they see the same load on this shared machine."""
    first: dict[str, tuple[float, Any]] = {}
    load = RA.loadavg()
    for k, fn in jobs.items():
        t = time.perf_counter()
        r = fn()
        first[k] = (time.perf_counter() - t, r)
    fast = {k: first[k][0] < SLOW_S for k in jobs}
    need = {k: reps if fast[k] else slow_reps - 1 for k in jobs}
    times: dict[str, list[float]] = {k: [] if fast[k] else [first[k][0]] for k in jobs}
    last = {k: first[k][1] for k in jobs}
    for i in range(max(need.values())):
        for k, fn in jobs.items():
            if i < need[k]:
                t = time.perf_counter()
                last[k] = fn()
                times[k].append(time.perf_counter() - t)
    out = {}
    for k in jobs:
        out[k] = {"times_s": times[k], "median_s": statistics.median(times[k]), "warmup_s": first[k][0] if fast[k] else None,
                  "last": last[k], "load_before": load, "load_after": RA.loadavg()}
        log(f"{label} {k}: median {out[k]['median_s']:.3f} s ({', '.join(f'{x:.3f}' for x in times[k])}"
            + (f"; warm-up {first[k][0]:.3f})" if fast[k] else "; no warm-up)"))
    return out


def read_plink(path: str, logistic: bool) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", na_values=["NA"], dtype={"#CHROM": str, "ID": str, "REF": str, "ALT": str, "A1": str})
    df = df[df["TEST"] == "ADD"].set_index("ID")
    flip = df["A1"] != df["ALT"]
    if logistic:
        df.loc[flip, "OR"] = 1 / df.loc[flip, "OR"]
        df["BETA"] = np.log(df["OR"])  # from a 6-digit OR: ~5e-6 absolute near OR = 1
        df["STAT"] = df["Z_STAT"].where(~flip, -df["Z_STAT"])
        df["SE"] = df["LOG(OR)_SE"]
    else:
        df.loc[flip, "BETA"] = -df.loc[flip, "BETA"]
        df["STAT"] = df["T_STAT"].where(~flip, -df["T_STAT"])
    df["flipped"] = flip
    return df


def compare(g: pd.DataFrame, ref: pd.DataFrame, logistic: bool) -> dict:
    """Max relative difference of beta, se, p (and the test statistic) over the variants plink2
    fitted (and, for logistic, genofed converged)."""
    g = g.set_index("variant_id")
    fitted = ref[ref["P"].notna()]
    stat = "z" if logistic else "t"
    j = fitted.join(g[["beta", "se", "p", stat, *(["odds_ratio", "converged", "status"] if logistic else [])]], how="inner")
    out: dict = {"plink_rows": len(ref), "plink_fitted": len(fitted), "genofed_rows": len(g),
                 "plink_fitted_missing_in_genofed": int(len(fitted) - len(j)),
                 "genofed_only": int(len(g.index.difference(ref.index)))}
    if logistic:
        out["genofed_converged"] = int(g["converged"].sum())
        out["genofed_status"] = {str(k): int(v) for k, v in g["status"].value_counts().items()}
        out["fitted_not_converged"] = {str(k): int(v) for k, v in j.loc[~j["converged"].astype(bool), "status"].value_counts().items()}
        j = j[j["converged"].astype(bool)]
        out["plink_na_genofed_converged"] = int(g.loc[g["converged"].astype(bool)].index.isin(ref.index[ref["P"].isna()]).sum())
    else:
        out["genofed_finite"] = int(np.isfinite(g["beta"]).sum())
        out["plink_na_genofed_finite"] = int(g.loc[np.isfinite(g["beta"])].index.isin(ref.index[ref["P"].isna()]).sum())
        j = j[np.isfinite(j["beta"])]
    out["compared"] = len(j)
    out["effect_key"] = "odds_ratio" if logistic else "beta"
    pairs = [("beta", "BETA"), ("se", "SE"), ("p", "P"), (stat, "STAT")]
    if logistic:
        pairs.insert(0, ("odds_ratio", "OR"))
    for ours, theirs in pairs:
        a, b = j[ours].to_numpy(np.float64), j[theirs].to_numpy(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(a - b) / np.abs(b)
        rel = np.where(b == 0, np.where(a == 0, 0.0, np.inf), rel)
        i = int(np.nanargmax(rel)) if len(rel) else 0
        out[ours] = {"max_rel": float(np.nanmax(rel)) if len(rel) else float("nan"),
                     "p99_9_rel": float(np.nanquantile(rel, 0.999)) if len(rel) else float("nan"),
                     "n_rel_gt_1e-4": int((rel > 1e-4).sum()),
                     "max_abs": float(np.nanmax(np.abs(a - b))) if len(rel) else float("nan"),
                     "worst": {"variant_id": str(j.index[i]), "genofed": float(a[i]), "plink2": float(b[i])} if len(rel) else {}}
    top = j.nsmallest(1, "P") if len(j) else j
    if len(top):
        out["top_hit"] = {"variant_id": str(top.index[0]), "genofed_p": float(top["p"].iloc[0]), "plink2_p": float(top["P"].iloc[0])}
    return out, j


def exact_logistic(vcf: Path, j: pd.DataFrame, n_worst: int = 20, n_random: int = 20) -> dict:
    """Who is closer to the exact MLE where genofed and plink2 differ most? A pooled per-variant
    Newton fit in float64 to |step| < 1e-12 for the ``n_worst`` variants with the largest relative
    p difference and ``n_random`` random compared variants; max relative difference of OR, se, p
    of genofed and of plink2 against it."""
    from cyvcf2 import VCF
    from scipy import stats as sps

    with np.errstate(divide="ignore", invalid="ignore"):
        prel = (np.abs(j["p"] - j["P"]) / j["P"]).to_numpy()
    worst = list(j.index[np.argsort(-np.nan_to_num(prel))[:n_worst]])
    rng = np.random.default_rng(SEED)
    rand = [v for v in rng.choice(np.asarray(j.index), size=min(n_random, len(j)), replace=False) if v not in worst]
    ph = pd.read_csv(PHENO_CSV, dtype={"sample_id": str})
    y = ph["case"].to_numpy(np.float64)
    C = np.column_stack([np.ones(len(ph)), ph[["c1", "c2", "c3"]].to_numpy(np.float64)])
    v = VCF(str(vcf), lazy=True, threads=1)
    col = {x: i for i, x in enumerate(v.samples)}
    order = np.array([col[x] for x in ph["sample_id"]], np.int64)
    rows = []
    for vid in [*worst, *rand]:
        chrom, pos, ref, alt = vid.split(":")
        d = None
        for rec in v(f"{chrom}:{pos}-{pos}"):
            if f"{rec.CHROM}:{rec.POS}:{rec.REF}:{','.join(rec.ALT)}" == vid:
                d = (rec.genotype.array()[:, :2] > 0).sum(axis=1).astype(np.float64)[order]
        if d is None:
            continue
        X = np.column_stack([d, C])
        b = np.zeros(X.shape[1])
        b[1] = np.log(y.mean() / (1 - y.mean()))
        for _ in range(100):
            eta = X @ b
            pr = 1 / (1 + np.exp(-eta))
            H = X.T @ (X * (pr * (1 - pr))[:, None])
            step = np.linalg.solve(H, X.T @ (y - pr))
            b += step
            if np.max(np.abs(step)) < 1e-12:
                break
        pr = 1 / (1 + np.exp(-(X @ b)))
        se = float(np.sqrt(np.linalg.inv(X.T @ (X * (pr * (1 - pr))[:, None]))[0, 0]))
        p = float(2 * sps.norm.sf(abs(b[0] / se)))
        r = j.loc[vid]
        rows.append({"variant_id": vid, "or": float(np.exp(b[0])), "se": se, "p": p, "g_or": r["odds_ratio"], "g_se": r["se"],
                     "g_p": r["p"], "k_or": r["OR"], "k_se": r["SE"], "k_p": r["P"], "worst": vid in worst})
    v.close()
    e = pd.DataFrame(rows)
    out: dict = {"n_worst": int(e["worst"].sum()), "n_random": int((~e["worst"]).sum())}
    for who, pre in (("genofed", "g_"), ("plink2", "k_")):
        for k in ("or", "se", "p"):
            out[f"{who}_{k}"] = float(np.max(np.abs(e[pre + k] - e[k]) / np.abs(e[k])))
    return out


def compare_modes(plain: pd.DataFrame, other: pd.DataFrame) -> dict:
    """A secure-mode result against plain over the same variants: max relative diff of beta, se, p."""
    j = plain.set_index("variant_id")[["beta", "se", "p"]].join(other.set_index("variant_id")[["beta", "se", "p"]], how="inner", rsuffix="_s")
    j = j[np.isfinite(j["beta"])]
    out = {"rows": len(other), "matched": len(j)}
    for c in ("beta", "se", "p"):
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(j[c] - j[c + "_s"]) / np.abs(j[c])
        out[c] = float(np.nanmax(rel)) if len(rel) else float("nan")
    return out


# -- genofed ----------------------------------------------------------------------------------


def bench_genofed(n_variants: int, pos_sorted: np.ndarray, chrom: str, skip_secure: bool, plink: dict[str, Any]
                  ) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame]:
    """genofed in the federation, each plain analysis interleaved with its plink2 run
    (``plink``: key -> (run, finish)); then gwas_linear in mpc and he."""
    import genofed
    from genofed.connectors.federation import down, up

    R: dict = {}
    PL: dict = {}
    t0 = time.perf_counter()
    up(FED)
    R["up_s"] = time.perf_counter() - t0
    R["node_pids"] = node_pids()
    log(f"nodes up in {R['up_s']:.1f} s: {R['node_pids']}")
    R["node_hwm_mb"] = {"after_up": node_hwm()}
    try:
        fed = genofed.connect(FED, timeout=600)
        try:
            # plain linear, interleaved with plink2 --glm linear
            run, finish = plink["linear"]
            both = interleaved({"plink2": run, "genofed": lambda: fed.sql(q_linear(), combine="plain")}, "linear:")
            PL["linear"] = finish(both["plink2"])
            res = both["genofed"]
            r = res.pop("last")
            R["linear_plain"] = {**res, "timings": r.provenance.timings, "details": r.provenance.details,
                                 "wire_bytes": r.provenance.wire_bytes, "rows": r.num_rows, "suppressed": r.suppressed}
            lin_plain = r.to_pandas()
            R["node_hwm_mb"]["after_linear_plain"] = node_hwm()

            # plain logistic, interleaved with plink2 --glm no-firth
            run, finish = plink["logistic_nofirth"]
            both = interleaved({"plink2": run, "genofed": lambda: fed.sql(q_logistic(), combine="plain")}, "logistic:", slow_reps=3)
            PL["logistic_nofirth"] = finish(both["plink2"])
            res = both["genofed"]
            r = res.pop("last")
            R["logistic_plain"] = {**res, "timings": r.provenance.timings, "details": r.provenance.details,
                                   "wire_bytes": r.provenance.wire_bytes, "rows": r.num_rows, "suppressed": r.suppressed}
            log_plain = r.to_pandas()
            R["node_hwm_mb"]["after_logistic_plain"] = node_hwm()

            # secure linear: a 10% subset first (warm-up + estimate), the whole cohort when it fits the budget
            if not skip_secure:
                k10 = max(1, n_variants // 10)
                stop10 = int(pos_sorted[k10 - 1])
                for mode in ("mpc", "he"):
                    S: dict = {}
                    try:
                        tw = time.perf_counter()
                        fed.sql(q_linear(f", chrom => '{chrom}', stop => {int(pos_sorted[99])}"), combine=mode)  # warm-up, 100 variants
                        S["warmup_100_s"] = time.perf_counter() - tw
                        t = time.perf_counter()
                        r10 = fed.sql(q_linear(f", chrom => '{chrom}', stop => {stop10}"), combine=mode)
                        S["subset10"] = {"wall_s": time.perf_counter() - t, "variants": k10, "stop": stop10, "rows": r10.num_rows,
                                         "timings": r10.provenance.timings, "wire_bytes": r10.provenance.wire_bytes,
                                         "vs_plain": compare_modes(lin_plain, r10.to_pandas())}
                        est = S["subset10"]["wall_s"] * n_variants / k10
                        S["estimate_full_s"] = est
                        log(f"genofed gwas_linear {mode}: 10% subset ({k10:,} variants) {S['subset10']['wall_s']:.1f} s -> full est. {est:.0f} s")
                        if est <= SECURE_BUDGET_S:
                            t = time.perf_counter()
                            rf = fed.sql(q_linear(), combine=mode)
                            S["full"] = {"wall_s": time.perf_counter() - t, "rows": rf.num_rows, "timings": rf.provenance.timings,
                                         "wire_bytes": rf.provenance.wire_bytes, "vs_plain": compare_modes(lin_plain, rf.to_pandas())}
                            log(f"genofed gwas_linear {mode}: full {S['full']['wall_s']:.1f} s")
                        else:
                            log(f"genofed gwas_linear {mode}: full run skipped (estimate {est:.0f} s > {SECURE_BUDGET_S:.0f} s)")
                    except Exception as e:  # noqa: BLE001 - record and go on
                        S["error"] = f"{type(e).__name__}: {e}"[:2000]
                        log(f"genofed gwas_linear {mode} FAILED: {S['error']}")
                    R[f"linear_{mode}"] = S
                    R["node_hwm_mb"][f"after_linear_{mode}"] = node_hwm()
        finally:
            fed.close()
    finally:
        down(FED)
    return R, PL, lin_plain, log_plain


# -- node side, in process ------------------------------------------------------------------------


class LocalNode:
    """A node's backend in this process, behind the coordinator's Transport interface (plain only):
    validate, execute, minimum-count rule, as the Flight server does."""

    def __init__(self, config: Path):
        from genofed.connectors.config import NodeConfig
        from genofed.connectors.node import make_backend
        from genofed.engine.schema import Catalog

        self.cfg = NodeConfig.load(config)
        self.name = self.cfg.name
        self.backend = make_backend(self.cfg)
        self.cat = Catalog.merge({self.name: self.backend.catalog()})
        self.prof_dir: Path | None = None
        self.prof_paths: list[Path] = []
        self.busy_s = 0.0
        self.calls = 0
        self.rounds: list[dict] = []

    def catalog(self, timeout: float = 10.0) -> dict[str, Any]:
        body = dict(self.backend.catalog())
        body.update(node=self.name, min_count=self.cfg.min_count, allow_plain=self.cfg.allow_plain, model_policy=self.cfg.model_policy())
        return body

    def validate(self, sql: str):
        from genofed.engine.analysis import is_analysis, validate_analysis
        from genofed.engine.fragment import validate_fragment

        if is_analysis(sql):
            return validate_analysis(sql, self.cat, self.cfg)
        return validate_fragment(sql, self.cat, allow_min_max=self.cfg.allow_min_max)

    def run_fragment(self, sql: str, query_id: str, timeout: float, user_sql: str | None = None):
        from genofed.engine.combine import narrow_integers
        from genofed.privacy.disclosure import apply_min_count

        pr = None
        if self.prof_dir is not None:  # a profile per call, in the calling (pool) thread
            pr = cProfile.Profile()
            pr.enable()
        t0 = time.perf_counter()
        try:
            frag = self.validate(sql)
            table = self.backend.execute(frag)
            table, _ = apply_min_count(narrow_integers(table), self.cfg.min_count, frag.partials)
        finally:
            dt = time.perf_counter() - t0
            self.busy_s += dt
            self.calls += 1
            self.rounds.append({"request_bytes": len(sql.encode()), "s": dt, "rows": table.num_rows if "table" in locals() else None})
            if pr is not None:
                pr.disable()
                path = self.prof_dir / f"{self.name}_{self.calls:03d}.prof"
                pr.dump_stats(str(path))
                self.prof_paths.append(path)
        return table

    def action(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise NotImplementedError("in-process profiling node: plain combine only")


def node_side(n_variants: int, profile: bool) -> dict:
    """One node's rounds timed in-process; optionally each analysis profiled through the coordinator."""
    from genofed.engine.analysis import encode, pack_array
    from genofed.engine.coordinator import Coordinator
    from genofed.genomics.analyses import ANALYSES

    out: dict = {}
    nodes = [LocalNode(FED / f"node_{i}" / "node.toml") for i in (1, 2, 3)]
    nd = nodes[0]
    out["node"] = nd.name
    out["node_samples"] = nd.backend.store.manifest.n_samples
    lin = ANALYSES["gwas_linear"]
    lg = ANALYSES["gwas_logistic"]
    args_lin = lin.parse_args({"phenotype": "phenotypes.y", "covariates": COVS})
    args_log = lg.parse_args({"phenotype": "phenotypes.case", "covariates": COVS})
    q = 1 + len(COVS)

    def round_time(fn: str, args: dict, rnd: str, state: dict, reps: int) -> dict:
        sql = encode(fn, args, rnd, state)
        ts, tv = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            frag = nd.validate(sql)
            t1 = time.perf_counter()
            tab = nd.backend.execute(frag)
            ts.append(time.perf_counter() - t1)
            tv.append(t1 - t0)
        return {"execute_s": statistics.median(ts), "validate_s": statistics.median(tv), "runs": ts, "rows": tab.num_rows,
                "request_bytes": len(sql.encode())}

    log("node side: one node's rounds in-process")
    out["linear_stats"] = round_time("gwas_linear", args_lin, "stats", {}, 3)
    start = np.zeros(q + 1)
    out["logistic_fit_first"] = round_time("gwas_logistic", args_log, "fit", {"start": pack_array(start)}, 1)
    import pyarrow.parquet as pq

    ids = pq.read_table(nd.backend.store.variants_path, columns=["variant_id"]).column("variant_id").to_pylist()
    state = {"ids": ids, "beta": pack_array(np.tile(start, (len(ids), 1)))}
    out["logistic_fit_ids_all"] = round_time("gwas_logistic", args_log, "fit", state, 1)
    log("node side: linear stats round {:.2f} s; logistic fit round {:.2f} s (start state), {:.2f} s (ids state, all active; "
        "validate {:.2f} s, request {:.1f} MB)".format(out["linear_stats"]["execute_s"], out["logistic_fit_first"]["execute_s"],
                                                       out["logistic_fit_ids_all"]["execute_s"], out["logistic_fit_ids_all"]["validate_s"],
                                                       out["logistic_fit_ids_all"]["request_bytes"] / 1e6))
    if profile:
        import concurrent.futures as cf
        import pstats
        import shutil

        shutil.rmtree(PROFILES, ignore_errors=True)
        PROFILES.mkdir(parents=True)
        coord = Coordinator(nodes, min_count=MIN_COUNT, timeout=600, combine="plain")
        coord._pool.shutdown()
        coord._pool = cf.ThreadPoolExecutor(max_workers=1)  # nodes one after another: clean per-node times and profiles
        coord.catalog()
        for name, sql in (("linear", q_linear()), ("logistic", q_logistic())):
            log(f"profile: gwas_{name} in-process (real coordinator, 3 in-process nodes run one after another) under cProfile")
            for nd_ in nodes:
                nd_.prof_dir, nd_.prof_paths, nd_.busy_s, nd_.calls, nd_.rounds = PROFILES / name, [], 0.0, 0, []
            (PROFILES / name).mkdir()
            prof = PROFILES / f"gwas_{name}_coordinator.prof"
            pr = cProfile.Profile()
            t0 = time.perf_counter()
            pr.enable()
            res = coord.query(sql, combine="plain")
            pr.disable()
            wall = time.perf_counter() - t0
            pr.dump_stats(str(prof))
            paths = [str(x) for nd_ in nodes for x in nd_.prof_paths]
            st = pstats.Stats(paths[0])
            if len(paths) > 1:
                st.add(*paths[1:])
            node_prof = PROFILES / f"gwas_{name}_nodes.prof"
            st.dump_stats(str(node_prof))
            busy = {nd_.name: nd_.busy_s for nd_ in nodes}
            out[f"profile_{name}"] = {
                "wall_s": wall, "details": res.provenance.details, "timings": res.provenance.timings,
                "node_busy_s": busy, "node_calls": nodes[0].calls, "coordinator_s": wall - sum(busy.values()),
                "node1_rounds": nodes[0].rounds,
                "coordinator_breakdown": RA.callee_breakdown(prof, "genomics/analyses", "drive", descend=1.1),
                "coordinator_tottime": RA.format_profile(prof, "tottime", 12),
                "coordinator_detail": "\n\n".join(
                    RA.callee_breakdown(prof, fp, fn, descend=1.1, limit=5)
                    for fp, fn in ((("genomics/analyses", "_finish"), ("genomics/stats", "ols_from_stats")) if name == "linear"
                                   else (("genomics/stats", "sym_solve"), ("genomics/analyses", "_finish")))),
                "node_breakdown": RA.callee_breakdown(node_prof, "genomics/analyses", "node_round", descend=1.1, limit=15),
                "node_tottime": RA.format_profile(node_prof, "tottime", 20),
            }
            log(f"profile {name}: {wall:.1f} s under cProfile; node work {', '.join(f'{k} {v:.1f} s' for k, v in busy.items())} "
                f"({nodes[0].calls} rounds); coordinator {wall - sum(busy.values()):.1f} s")
        for nd_ in nodes:
            nd_.prof_dir = None
        coord.close()
    for n in nodes:
        n.backend.close()
    return out


# -- report ---------------------------------------------------------------------------------------


def fmt_s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def fmt_e(x: float) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.1e}"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def runs(r: dict) -> str:
    s = ", ".join(f"{t:.2f}" for t in r["times_s"])
    s += f" (warm-up {r['warmup_s']:.2f})" if r.get("warmup_s") is not None else (" (single run)" if len(r["times_s"]) == 1 else " (no warm-up)")
    if r.get("load_before"):
        s += f" [load {r['load_before']}" + (f" → {r['load_after']}" if r.get("load_after") else "") + "]"
    return s


def report(R: dict) -> str:
    info, P, G, C, N = R["machine"], R["plink"], R["genofed"], R["correctness"], R.get("node_side", {})
    L: list[str] = [BEGIN, "## GWAS: federated `gwas_linear` / `gwas_logistic` vs plink2 `--glm` (same run)", ""]
    a = L.append
    changed = R["code"]["start"]["sha256"] != R["code"]["end"]["sha256"]
    a(f"Produced by `{R['command']}` (from the repository root), started {R['started']}, took {R['elapsed_s'] / 60:.1f} min. "
      f"Machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM; load average (1/5/15 min) "
      f"at start {R['load'][0]}, at end {R['load'][1]} (the machine is shared: other jobs may run concurrently). "
      f"{info.get('plink2')}; genofed {info.get('genofed')}, duckdb {info.get('duckdb')}, numpy {info.get('numpy')}. "
      f"Code: source hash `{R['code']['start']['sha256']}`"
      + (f" (**changed during the run**, end `{R['code']['end']['sha256']}`: rerun)" if changed else "") + ".")
    a("")
    ph = R["phenotypes"]
    a(f"Data: the simulated cohort of `run_all.py` ({R['n_samples']:,} samples × {R['n_variants']:,} variants, one chr22 window, "
      f"no missing calls), split round-robin over 3 loopback nodes ({N.get('node_samples', R['n_samples'] // 3):,}-ish samples each; "
      f"minimum count {MIN_COUNT}; federation `benchmarks/work/gwas_fed/` built once in {fmt_s(R['federation'].get('init_s'))}, "
      f"reused). Phenotypes (`benchmarks/work/gwas_pheno.csv`, generated deterministically, seed {SEED}): c1 age-like integer "
      f"20–79, c2 sex 0/1, c3 N(0,1), y = covariate effects + {sum(1 for c in ph['causal'] if c['beta_y'])} planted genotype "
      f"effects + N(0,1); case 0/1 ({ph['cases']:,} cases, {ph['case_fraction']:.1%}) from a logistic model with "
      f"{sum(1 for c in ph['causal'] if c['log_or_case'])} planted effects.")
    a("")
    a("genofed: end-to-end wall time of `genofed.connect(root).sql(query, combine=...)` (coordinator in the benchmark process, "
      "3 node server processes sharing the 2 cores): `SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates => "
      "['phenotypes.c1', 'phenotypes.c2', 'phenotypes.c3'])` and `gwas_logistic(phenotype => 'phenotypes.case', covariates => [same])`. "
      f"plink2: wall time of the process on the pooled pgen, `--threads {THREADS}`, pgen conversion excluded. A measurement whose "
      f"first run took < {SLOW_S:g} s: that run is a warm-up, then median of 3; slower: median of 3 runs without a warm-up for "
      "genofed's logistic (the nodes are warm from the linear runs), one run for plink2's firth-fallback. The plink2 and genofed runs "
      "of an analysis alternate (plink2, genofed, plink2, ...) with the nodes up and idle during plink2's runs, so both see "
      "the same load.")
    a("")
    a("| analysis | genofed | plink2 | ratio genofed/plink2 (best-of-runs ratio) | target | verdict |")
    a("|---|---|---|---|---|---|")
    lp, pl = G["linear_plain"]["median_s"], P["linear"]["median_s"]
    gl, plo, plf = G["logistic_plain"]["median_s"], P["logistic_nofirth"]["median_s"], P["logistic_firth_fallback"]["median_s"]

    def best(g: dict, p: dict) -> str:
        return f"{min(g['times_s']) / min(p['times_s']):.2f}×"

    a(f"| linear, plain | {fmt_s(lp)} | {fmt_s(pl)} | {lp / pl:.2f}× ({best(G['linear_plain'], P['linear'])}) | ≤ {TARGET_LINEAR:g}× | "
      f"{'**met**' if lp / pl <= TARGET_LINEAR else '**NOT met**'} |")
    a(f"| logistic, plain, vs plink2 `no-firth` (same model; compared below) | {fmt_s(gl)} | {fmt_s(plo)} | {gl / plo:.2f}× "
      f"({best(G['logistic_plain'], P['logistic_nofirth'])}) | < 1× (faster) | {'**met**' if gl / plo < TARGET_LOGISTIC else '**NOT met**'} |")
    a(f"| logistic, plain, vs plink2 default (firth-fallback) | {fmt_s(gl)} | {fmt_s(plf)} | {gl / plf:.2f}× "
      f"({best(G['logistic_plain'], P['logistic_firth_fallback'])}) | < 1× (faster) | {'**met**' if gl / plf < TARGET_LOGISTIC else '**NOT met**'} |")
    for mode in ("mpc", "he"):
        S = G.get(f"linear_{mode}")
        if not S:
            continue
        if "full" in S:
            w = S["full"]["wall_s"]
            a(f"| linear, {mode} (one run, all variants) | {fmt_s(w)} | {fmt_s(pl)} | {w / pl:.1f}× | – | {w / lp:.1f}× genofed plain |")
        elif "subset10" in S:
            w = S["subset10"]["wall_s"]
            a(f"| linear, {mode} (one run, **first 10% of variants only**: {S['subset10']['variants']:,}, pos ≤ {S['subset10']['stop']:,}) | "
              f"{fmt_s(w)} | – | – | – | full run estimated {S['estimate_full_s']:.0f} s > {SECURE_BUDGET_S:g} s budget: not run |")
        if "error" in S:
            a(f"| linear, {mode} | **failed**: `{S['error'][:300]}` | | | | |")
    a("")
    a("The logistic comparison that matters is against `no-firth`: it fits the same model genofed fits. plink2's default "
      "(firth-fallback) refits with Firth's penalised likelihood every variant whose plain fit fails or is too rare, which is what "
      "makes it slow here (most of this window's variants are rare); genofed reports those as `separation` with no estimate.")
    a("")
    a("Individual runs (s), with the load average before → after each block: " + "; ".join([
        f"genofed linear plain {runs(G['linear_plain'])}", f"plink2 linear {runs(P['linear'])}",
        f"genofed logistic plain {runs(G['logistic_plain'])}", f"plink2 logistic no-firth {runs(P['logistic_nofirth'])}",
        f"plink2 logistic firth-fallback {runs(P['logistic_firth_fallback'])}"]) + ".")
    a("")
    a("plink2 commands (in `benchmarks/work/gwas_plink/`): `" + P["linear"]["cmd"] + "`; logistic: `--pheno-name case` (coded 1/2) with "
      "`--glm hide-covar no-firth` and `--glm hide-covar`. Pgen made once with "
      "`plink2 --vcf X --set-all-var-ids @:#:$r:$a --new-id-max-allele-len 10000 --make-pgen`.")
    a("")
    sec = [(m, G.get(f"linear_{m}")) for m in ("mpc", "he") if G.get(f"linear_{m}")]
    if sec:
        a("Secure combine for `gwas_linear` (one run each after a 100-variant warm-up query in that mode; the first 10% of "
          "variants is run first to estimate the full run, which runs when the estimate is ≤ "
          f"{SECURE_BUDGET_S:g} s):")
        a("")
        a("| mode | 100-variant warm-up | 10% subset | all variants | wire per node (mean) | max rel. diff vs plain (beta / se / p) |")
        a("|---|---|---|---|---|---|")
        lw = statistics.mean(G["linear_plain"]["wire_bytes"].values()) if G["linear_plain"]["wire_bytes"] else float("nan")
        a(f"| plain | – | – | {fmt_s(lp)} | {human(lw)} | – |")
        for m, S in sec:
            if "subset10" not in S:
                a(f"| {m} | failed: `{S.get('error', '?')[:200]}` | | | | |")
                continue
            full = S.get("full")
            src = full or S["subset10"]
            vp = src["vs_plain"]
            wire = statistics.mean(src["wire_bytes"].values()) if src["wire_bytes"] else float("nan")
            full_txt = (f"{fmt_s(full['wall_s'])} ({full['wall_s'] / lp:.1f}× plain)" if full
                        else f"not run (estimate {S['estimate_full_s']:.0f} s)")
            a(f"| {m} | {fmt_s(S.get('warmup_100_s'))} | {fmt_s(S['subset10']['wall_s'])} ({S['subset10']['variants']:,} variants) | "
              f"{full_txt} | {human(wire)}{'' if full else ' (subset)'} | {fmt_e(vp['beta'])} / {fmt_e(vp['se'])} / {fmt_e(vp['p'])} |")
        a("")

    # correctness
    a("### Correctness vs plink2 (same run)")
    a("")
    a("Joined on variant_id (plink2 IDs set to chrom:pos:ref:alt), plink2's effect oriented to ALT (BETA and T/Z sign flipped, "
      "OR inverted where A1 ≠ ALT), over the variants plink2 fitted (P not NA); logistic: and genofed converged. Relative "
      "difference |genofed − plink2| / |plink2|; plink2 prints 6 significant digits, so ~5e-6 is the floor. The logistic effect "
      "is compared as the odds ratio plink2 prints (its log loses digits near OR = 1); t/z as the absolute difference.")
    a("")
    a("| analysis | plink2 rows / fitted | genofed rows | compared | max rel. diff beta (linear) / OR (logistic) | se | p | max abs. diff t or z | 99.9th pct rel. diff effect / se / p | rel. diff > 1e-4 (effect / se / p) |")
    a("|---|---|---|---|---|---|---|---|---|---|")
    for key, label, stat in (("linear", "linear", "t"), ("logistic", "logistic (vs no-firth)", "z")):
        c = C[key]
        e = c["effect_key"]
        a(f"| {label} | {c['plink_rows']:,} / {c['plink_fitted']:,} | {c['genofed_rows']:,} | {c['compared']:,} | {fmt_e(c[e]['max_rel'])} | "
          f"{fmt_e(c['se']['max_rel'])} | {fmt_e(c['p']['max_rel'])} | {fmt_e(c[stat]['max_abs'])} | "
          f"{fmt_e(c[e]['p99_9_rel'])} / {fmt_e(c['se']['p99_9_rel'])} / {fmt_e(c['p']['p99_9_rel'])} | "
          f"{c[e]['n_rel_gt_1e-4']} / {c['se']['n_rel_gt_1e-4']} / {c['p']['n_rel_gt_1e-4']} |")
    a("")
    cl, cg = C["linear"], C["logistic"]
    notes = [f"linear: every variant plink2 fitted has a genofed estimate ({cl['plink_fitted_missing_in_genofed']} missing), "
             f"and genofed has none where plink2 has NA ({cl['plink_na_genofed_finite']})"]
    notes.append(f"logistic: genofed status {', '.join(f'{k} {v:,}' for k, v in cg['genofed_status'].items())}; variants plink2 fitted "
                 f"that genofed did not converge: {', '.join(f'{k} {v}' for k, v in cg['fitted_not_converged'].items()) or 'none'}; "
                 f"genofed converged where plink2 has NA: {cg['plink_na_genofed_converged']}; logistic beta (= log OR) max abs. diff "
                 f"{fmt_e(cg['beta']['max_abs'])}")
    for key in ("linear", "logistic"):
        th = C[key].get("top_hit")
        if th:
            notes.append(f"{key} top hit {th['variant_id']}: p genofed {th['genofed_p']:.5g}, plink2 {th['plink2_p']:.5g}")
    a("Notes: " + "; ".join(notes) + ".")
    a("")
    x = C.get("logistic_exact")
    if x:
        a(f"Logistic p differs from plink2's by more than its print precision for some variants. Against an exact pooled fit "
          f"(numpy Newton in float64 to |step| < 1e-12, on the {x['n_worst']} variants with the largest p difference and "
          f"{x['n_random']} random ones), max rel. diff OR / se / p: **genofed {fmt_e(x['genofed_or'])} / {fmt_e(x['genofed_se'])} / "
          f"{fmt_e(x['genofed_p'])}**, plink2 {fmt_e(x['plink2_or'])} / {fmt_e(x['plink2_se'])} / {fmt_e(x['plink2_p'])}: the "
          "difference is plink2's (it stops its iterations earlier), not genofed's.")
        a("")

    # where the time goes
    a("### Where the time goes")
    a("")
    tl, tg = G["linear_plain"]["timings"], G["logistic_plain"]["timings"]
    dl = G["logistic_plain"]["details"]
    a(f"Coordinator timings (last timed run): linear plan {tl.get('plan_s', float('nan')):.3f} s, analysis (rounds at the nodes, "
      f"transfer, combine and the coordinator's per-variant fit) {tl.get('nodes_combine_s', float('nan')):.2f} s, finalize "
      f"{tl.get('finalize_s', float('nan')):.2f} s; logistic analysis {tg.get('nodes_combine_s', float('nan')):.2f} s in "
      f"{dl.get('rounds')} rounds ({dl.get('null_model_iterations')} null-model + {dl.get('newton_rounds')} all-variant Newton rounds). "
      f"Bytes each node sent: linear {human(statistics.mean(G['linear_plain']['wire_bytes'].values()))}, logistic "
      f"{human(statistics.mean(G['logistic_plain']['wire_bytes'].values()))} (all rounds).")
    a("")
    if N:
        ls, lf, li = N["linear_stats"], N["logistic_fit_first"], N["logistic_fit_ids_all"]
        a(f"One node's round in-process ({N['node']}, {N['node_samples']:,} samples, all {R['n_variants']:,} variants, "
          f"`backend.execute`): linear `stats` {ls['execute_s']:.2f} s (median of 3); logistic `fit` {lf['execute_s']:.2f} s with the "
          f"first round's start state, {li['execute_s']:.2f} s with a later round's per-variant state (all variants active; "
          f"validating that {li['request_bytes'] / 1e6:.1f} MB JSON request {li['validate_s']:.2f} s).")
        a("")
    hw = G.get("node_hwm_mb", {})
    if hw:
        a("Node peak RSS (VmHWM of the 3 node processes, MB, cumulative through the run): " + "; ".join(
            f"{k.replace('_', ' ')}: " + ", ".join(f"{v:.0f}" for v in d.values()) for k, d in hw.items()) + ".")
        a("")
    for name in ("linear", "logistic"):
        pr = N.get(f"profile_{name}")
        if not pr:
            continue
        busy = pr["node_busy_s"]
        a(f"**`gwas_{name}` profiled in-process** (the real coordinator with 3 in-process nodes run one after another, plain; "
          f"{pr['wall_s']:.1f} s under cProfile: node work {', '.join(f'{v:.2f}' for v in busy.values())} s over "
          f"{pr['node_calls']} round(s) each, coordinator {pr['coordinator_s']:.2f} s). Coordinator side, the analysis driver's "
          "direct callees (the round's time includes the nodes'):")
        a("")
        a("```")
        a(pr["coordinator_breakdown"])
        a("")
        a(pr.get("coordinator_detail", ""))
        a("```")
        a("")
        nr = pr.get("node1_rounds") or []
        if len(nr) > 1:
            a(f"Rounds at {N['node']} (under cProfile): " + ", ".join(
                f"{x['rows']:,} rows {x['s']:.2f} s" + (f" ({x['request_bytes'] / 1e6:.1f} MB request)" if x["request_bytes"] > 1e5 else "")
                for x in nr if x["rows"] is not None) + ".")
            a("")
        a("Node side (the 3 nodes' rounds together), direct callees of `node_round`, then top 20 by own time:")
        a("")
        a("```")
        a(pr["node_breakdown"])
        a("```")
        a("")
        a("```")
        a(pr["node_tottime"])
        a("```")
        a("")
    if R.get("node_side_error"):
        a(f"Node-side measurement failed: `{R['node_side_error']}`.")
        a("")
    a("Raw numbers: `benchmarks/work/gwas_results.json`; profiles: `benchmarks/work/gwas_profiles/` (gitignored).")
    L.append(END)
    return "\n".join(L)


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(new)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-profile", action="store_true", help="skip the in-process cProfile runs")
    ap.add_argument("--no-secure", action="store_true", help="skip gwas_linear in mpc and he")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0 = RA.loadavg()
    exe = os.path.relpath(RA.PY, ROOT) if RA.PY.startswith(str(ROOT)) else RA.PY
    command = shlex.join([exe, "benchmarks/bench_gwas.py", *(argv if argv is not None else sys.argv[1:])])
    info = RA.machine_info()
    code0 = RA.code_fingerprint()
    log(f"code {code0['sha256']}; {info['nproc']} CPUs; {info['plink2']}; load {load0}")
    WORK.mkdir(parents=True, exist_ok=True)
    vcf, panel = RA.ensure_sim()
    R: dict = {"command": command, "started": started, "machine": info}
    R["phenotypes"] = make_phenotypes(vcf, panel, PHENO_CSV)
    log(f"phenotypes: {R['phenotypes']['n']} samples, {R['phenotypes']['cases']} cases; causal "
        + ", ".join(c["variant_id"] for c in R["phenotypes"]["causal"]))
    R["federation"] = ensure_federation(vcf, panel, R["phenotypes"]["sha256"])

    pf, make_s = ensure_pgen(vcf)
    R["plink_make_pgen_s"] = make_s
    pheno, covar = plink_pheno_files(PHENO_CSV, PLINK_DIR)
    with open(f"{pf}.pvar") as fh:
        skip = sum(1 for line in iter(fh.readline, "") if line.startswith("##"))
    pvar = pd.read_csv(f"{pf}.pvar", sep="\t", skiprows=skip, dtype={"#CHROM": str}, usecols=["#CHROM", "POS"])
    R["n_variants"], R["n_samples"] = len(pvar), R["phenotypes"]["n"]
    chrom = str(pvar["#CHROM"].iloc[0])
    pos_sorted = np.sort(pvar["POS"].to_numpy())

    RA.warm_page_cache(Path(f"{pf}.pgen"))
    jobs = {k: plink_job(pf, pheno, covar, k) for k in PLINK_RUNS}
    R["genofed"], R["plink"], lin, lgt = bench_genofed(R["n_variants"], pos_sorted, chrom, args.no_secure, jobs)
    run, finish = jobs["logistic_firth_fallback"]  # plink2's default logistic: timed, not compared
    R["plink"]["logistic_firth_fallback"] = finish(timed_reps(run, "plink2 logistic firth-fallback"))
    lin.to_parquet(WORK / "gwas_linear_genofed.parquet")
    lgt.to_parquet(WORK / "gwas_logistic_genofed.parquet")
    log("correctness vs plink2")
    c_lin, _ = compare(lin, read_plink(R["plink"]["linear"]["file"], False), False)
    c_log, j_log = compare(lgt, read_plink(R["plink"]["logistic_nofirth"]["file"], True), True)
    R["correctness"] = {"linear": c_lin, "logistic": c_log}
    for k, c in R["correctness"].items():
        e = c["effect_key"]
        log(f"  {k}: compared {c['compared']:,}; max rel diff {e} {c[e]['max_rel']:.2e}, se {c['se']['max_rel']:.2e}, p {c['p']['max_rel']:.2e}")
    if len(j_log):
        R["correctness"]["logistic_exact"] = exact_logistic(vcf, j_log)
        x = R["correctness"]["logistic_exact"]
        log("  logistic vs an exact pooled fit (largest p differences + random): genofed OR/se/p "
            f"{x['genofed_or']:.1e}/{x['genofed_se']:.1e}/{x['genofed_p']:.1e}; plink2 {x['plink2_or']:.1e}/{x['plink2_se']:.1e}/{x['plink2_p']:.1e}")
    try:
        R["node_side"] = node_side(R["n_variants"], not args.no_profile)
    except Exception as e:  # noqa: BLE001 - internal API; report, don't lose the run
        R["node_side"] = {}
        R["node_side_error"] = f"{type(e).__name__}: {e}"
        log(f"node-side measurement failed: {R['node_side_error']}")
    R["elapsed_s"] = time.perf_counter() - t_start
    R["load"] = (load0, RA.loadavg())
    R["code"] = {"start": code0, "end": RA.code_fingerprint()}
    (WORK / "gwas_results.json").write_text(json.dumps(R, indent=1, default=str))
    text = report(R)
    print(text)
    if not args.no_write:
        write_section(text)
        log(f"wrote the gwas section of {RESULTS.relative_to(ROOT)} ({R['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
