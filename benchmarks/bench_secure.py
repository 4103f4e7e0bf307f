"""Secure combine cost: ``mpc`` and ``he`` against ``plain`` and against plink2, in the same run.

Data: the real 1000 Genomes 2,504-sample peddy VCF (23,770 SNVs) with the phase 3 panel, dealt
round-robin over a local federation of three loopback nodes (``benchmarks/work/secure_fed``,
built by ``init_federation`` with its defaults: minimum count 5, differencing defence and the
membership-risk gate on, TLS; plus ``allow_plain``), with a deterministic phenotype table
``phenotypes(sample_id, c1, c2, y)`` (the recipe of ``bench_disclosure.py``: seeded numpy, c1
age-like integer 20-79, c2 sex 0/1 from the panel, y = 0.02 (c1 - 50) + 0.3 c2 + N(0, 1)). The
only change to the default node policy: ``[risk] max_membership_power = 1.0`` at every node. The
membership-inference gate refuses the genome-wide queries below at the default cap (23,770
variants over per-node super-population cohorts put the analytic attack power at 1.0); at cap 1.0
it still runs in full (cohorts, power, its SQLite state, the score in provenance) but cannot refuse.

Workloads, each in plain, mpc and he, all in one process against the same running federation:

1. AF by super_pop over all variants (118,850 groups)::

       SELECT s.super_pop, g.variant_id, allele_freq(g.dosage) AS af
       FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL

   and plink2 ``--freq --loop-cats super_pop`` on the pooled data.
2. ``SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates => ['phenotypes.c1',
   'phenotypes.c2'])`` and plink2 ``--glm hide-covar`` (linear, same phenotype and covariates).
3. Size series: allele count, allele number and frequency by super_pop (1M: by population; the
   2,504-sample set has too few variants to reach 1M values with five super-populations) over
   position ranges, about 1k, 100k and 1M partial values (groups, released or withheld, x
   partial columns). 1M only without ``--quick``, with one repetition.

plink2 works on a pgen made once from the pooled VCF (``--make-pgen``, outside the timing, in
``benchmarks/work/secure_plink``); its commands are timed as processes with the nodes up and idle.

Timing: per workload, one warm-up of each mode (and of the plink2 command), then ``--reps``
rounds in which every mode runs once in turn (plain, mpc, he, plink2, plain, ...), so that all
see the same load on this shared machine; reported is the median. Wall: end-to-end
``Federation.sql`` (parse, plan, dispatch, the nodes' work and disclosure pipeline, transfer,
secure combine, the coordinator's checks). Wire: bytes each node sent for the query
(``provenance.wire_bytes``, mean over nodes: partial tables in plain, MPyC messages in mpc,
ciphertexts in he).

Correctness: every mpc and he answer is compared with plain's on plain's released rows (joined on
the group keys): integers and strings exactly, reals to 1e-9 relative, gwas beta/se/t/p to 1e-6
relative. A row plain released that a secure mode lacks is a mismatch; the secure modes test the
minimum count on federation-wide counts and may release groups that plain withholds (counted and
reported). The script exits 1 on any mismatch or failed query (and then does not write
RESULTS.md), 2 when the data is missing.

Usage::

    .venv/bin/python benchmarks/bench_secure.py            # updates the section in benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_secure.py --quick    # no 1M row, --reps 1; prints, writes nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
FED = WORK / "secure_fed"
PLINK_DIR = WORK / "secure_plink"
PHENO_CSV = WORK / "secure_phenotypes.csv"
STAMP = "bench_secure.stamp.json"
DATA = Path(os.environ.get("GENOFED_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
VCF = DATA / "1kg_2504_peddy" / "peddy_1kg_2504x23770.vcf.gz"
PANEL = DATA / "panel" / "1kg_phase3_2504_panel.tsv"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- secure-combine:begin -->", "<!-- secure-combine:end -->"

N_NODES = 3
SEED = 20261123  # bench_disclosure.py's phenotype seed
RISK_CAP = 1.0
MODES = ("plain", "mpc", "he")
SECURE = ("mpc", "he")
THREADS = os.cpu_count() or 1

SQL_AF = ("SELECT s.super_pop, g.variant_id, allele_freq(g.dosage) AS af "
          "FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL")
SQL_GWAS = "SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates => ['phenotypes.c1', 'phenotypes.c2'])"
GWAS_TOL = 1e-6  # beta, se, t, p
REAL_TOL = 1e-9  # every other real

# targets: secure / plain (or / plink2)
TARGET_AF = 3.0
TARGET_GWAS = 2.0
TARGET_PLINK = 5.0
TARGET_1M = 4.0

sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[bench_secure {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- inputs and federation ---------------------------------------------------------------------


def make_phenotypes() -> str:
    """The phenotype table of bench_disclosure.py (same recipe and seed); returns its sha256."""
    import numpy as np
    import pandas as pd

    WORK.mkdir(parents=True, exist_ok=True)
    panel = pd.read_csv(PANEL, sep="\t", dtype=str)
    rng = np.random.default_rng(SEED)
    n = len(panel)
    c1 = rng.integers(20, 80, n)
    c2 = (panel["sex"].str.lower() == "female").to_numpy(np.int64)
    y = np.round(0.02 * (c1 - 50) + 0.3 * c2 + rng.normal(size=n), 6)
    text = pd.DataFrame({"sample_id": panel["sample"], "c1": c1, "c2": c2, "y": y}).to_csv(index=False, float_format="%.6f")
    if not PHENO_CSV.exists() or PHENO_CSV.read_text() != text:
        PHENO_CSV.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _stale(root: Path, key: str) -> str | None:
    """Why the cached federation must be rebuilt (None: it is current)."""
    import tomllib

    from genofed.connectors.federation import FEDERATION_FILE, FederationConfig

    if not (root / FEDERATION_FILE).exists():
        return "no federation"
    stamp = root / STAMP
    if not stamp.exists() or json.loads(stamp.read_text()).get("key") != key:
        return "inputs changed"
    try:
        fed = FederationConfig.load(root)
    except Exception as e:  # written by older code
        return f"federation.toml unreadable ({type(e).__name__})"
    if len(fed.nodes) != N_NODES:
        return f"{len(fed.nodes)} nodes"
    for n in fed.nodes:
        if not (root / n.name / "store" / "current" / "clinical" / "phenotypes.parquet").exists():
            return f"{n.name} has no phenotype table"
        node = tomllib.loads((root / n.config).read_text())
        if not node.get("federation", {}).get("members"):
            return f"{n.name}/node.toml has no [[federation.members]]"
    return None


def federation(pheno_sha: str) -> Path:
    """The 3-node federation with the phenotype table, the membership-risk cap set to 1.0."""
    import tomllib

    import tomli_w

    from genofed.connectors.federation import FederationConfig, down, init_federation

    st = VCF.stat()
    key = hashlib.sha256(json.dumps([str(VCF), st.st_size, st.st_mtime, str(PANEL), PANEL.stat().st_mtime,
                                     pheno_sha, N_NODES]).encode()).hexdigest()[:16]
    why = _stale(FED, key)
    if why is not None:
        if FED.exists():
            try:
                down(FED)
            except Exception:
                pass
            shutil.rmtree(FED)
        log(f"building a {N_NODES}-node federation from {VCF.name} with phenotypes ({why}) ...")
        t0 = time.perf_counter()
        init_federation(FED, VCF, PANEL, None, n_nodes=N_NODES, clinical={"phenotypes": PHENO_CSV},
                        allow_plain=True, combine="mpc")
        (FED / STAMP).write_text(json.dumps({"key": key}))
        log(f"built in {time.perf_counter() - t0:.0f} s")
    for n in FederationConfig.load(FED).nodes:
        p = FED / n.config
        data = tomllib.loads(p.read_text())
        if data.get("risk", {}).get("max_membership_power") != RISK_CAP:
            data["risk"] = {**data.get("risk", {}), "max_membership_power": RISK_CAP}
            p.write_text(tomli_w.dumps(data))  # an existing file: its private mode stays
    return FED


def positions(root: Path) -> list[int]:
    import pyarrow.parquet as pq

    store = root / "node_1" / "store" / "current"
    return sorted(pq.read_table(store / "variants.parquet", columns=["pos"]).column("pos").to_pylist())


def size_query(group: str, lo: int, hi: int) -> str:
    return (f"SELECT g.variant_id, s.{group}, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
            f"allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) "
            f"WHERE g.pos BETWEEN {lo} AND {hi} GROUP BY 1, 2")


# -- plink2 ------------------------------------------------------------------------------------


def plink_inputs() -> dict[str, Path]:
    """The pooled pgen (made once, untimed) and plink2's phenotype/covariate files."""
    import pandas as pd

    PLINK_DIR.mkdir(parents=True, exist_ok=True)
    pf = PLINK_DIR / "pooled"
    if not (all(Path(f"{pf}.{e}").exists() for e in ("pgen", "pvar", "psam"))
            and Path(f"{pf}.pgen").stat().st_mtime >= VCF.stat().st_mtime):
        log("plink2 --make-pgen (once, untimed) ...")
        subprocess.run(["plink2", "--vcf", str(VCF), "--set-all-var-ids", "@:#:$r:$a", "--new-id-max-allele-len", "1000",
                        "--make-pgen", "--threads", str(THREADS), "--out", str(pf)], check=True, capture_output=True)
    panel = pd.read_csv(PANEL, sep="\t", dtype=str)
    cats = PLINK_DIR / "super_pop.tsv"
    panel[["sample", "super_pop"]].rename(columns={"sample": "#IID"}).to_csv(cats, sep="\t", index=False)
    ph = pd.read_csv(PHENO_CSV, dtype={"sample_id": str}).rename(columns={"sample_id": "#IID"})
    pheno, covar = PLINK_DIR / "pheno.tsv", PLINK_DIR / "covar.tsv"
    ph[["#IID", "y"]].to_csv(pheno, sep="\t", index=False)
    ph[["#IID", "c1", "c2"]].to_csv(covar, sep="\t", index=False)
    return {"pfile": pf, "cats": cats, "pheno": pheno, "covar": covar}


def plink_freq_cmd(p: dict[str, Path]) -> list[str]:
    return ["plink2", "--pfile", str(p["pfile"]), "--freq", "--loop-cats", "super_pop", "--pheno", str(p["cats"]),
            "--threads", str(THREADS), "--out", str(PLINK_DIR / "freq")]


def plink_glm_cmd(p: dict[str, Path]) -> list[str]:
    return ["plink2", "--pfile", str(p["pfile"]), "--pheno", str(p["pheno"]), "--pheno-name", "y", "--covar", str(p["covar"]),
            "--covar-name", "c1,c2", "--covar-variance-standardize", "--glm", "hide-covar", "--threads", str(THREADS),
            "--out", str(PLINK_DIR / "glm")]


def show_cmd(cmd: list[str]) -> str:
    return shlex.join([Path(a).relative_to(ROOT).as_posix() if a.startswith(str(ROOT)) else a for a in cmd])


def run_plink(cmd: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{show_cmd(cmd)} exited {r.returncode}: {(r.stderr or r.stdout)[-500:]}")
    return r


def plink_af_diff(res) -> float | None:
    """Max |AF genofed plain - plink2 ALT_FREQS| over the groups both report (a sanity check)."""
    import pandas as pd

    t = res.to_pandas()
    frames = []
    for sp in sorted(t["super_pop"].dropna().unique()):
        f = PLINK_DIR / f"freq.{sp}.afreq"
        if not f.exists():
            return None
        d = pd.read_csv(f, sep="\t", usecols=["ID", "ALT_FREQS"])
        d["super_pop"] = sp
        frames.append(d.rename(columns={"ID": "variant_id"}))
    m = t.merge(pd.concat(frames), on=["super_pop", "variant_id"])
    return float((m["af"] - m["ALT_FREQS"]).abs().max()) if len(m) else None


def plink_beta_diff(res) -> dict | None:
    """Max relative difference of beta and p, genofed plain vs plink2 (effect oriented to ALT)."""
    import numpy as np
    import pandas as pd

    files = sorted(PLINK_DIR.glob("glm.y.glm.linear"))
    if not files:
        return None
    k = pd.read_csv(files[0], sep="\t", na_values=["NA"])
    k = k[(k["TEST"] == "ADD") & k["P"].notna()]
    sign = np.where(k["A1"] == k["ALT"], 1.0, -1.0)
    k = k.assign(beta_k=k["BETA"] * sign).rename(columns={"ID": "variant_id"})
    m = res.to_pandas().merge(k[["variant_id", "beta_k", "P"]], on="variant_id").dropna(subset=["beta", "p"])
    if not len(m):
        return None
    rb = (m["beta"] - m["beta_k"]).abs() / m["beta_k"].abs().clip(lower=1e-12)
    rp = (m["p"] - m["P"]).abs() / m["P"].abs().clip(lower=1e-300)
    return {"n": len(m), "beta": float(rb.max()), "p": float(rp.max())}


# -- measurement and checks --------------------------------------------------------------------


def measure(jobs: dict[str, Callable[[], Any]], reps: int, label: str) -> dict[str, dict]:
    """One warm-up of each job, then ``reps`` rounds of every job in turn; median wall per job.
    A job that raises is recorded with its error and dropped from the later rounds."""
    out: dict[str, dict] = {k: {"times": [], "wire": [], "last": None, "error": None} for k in jobs}

    def once(k: str, timed: bool) -> None:
        t0 = time.perf_counter()
        try:
            r = jobs[k]()
        except Exception as e:
            out[k]["error"] = f"{type(e).__name__}: {e}"
            log(f"{label} {k}: FAILED {out[k]['error'][:400]}")
            return
        dt = time.perf_counter() - t0
        out[k]["last"] = r
        prov = getattr(r, "provenance", None)
        if timed:
            out[k]["times"].append(dt)
            if prov is not None and prov.wire_bytes:
                out[k]["wire"].append(statistics.mean(prov.wire_bytes.values()))
        log(f"{label} {k}: {dt:.2f} s{'' if timed else ' (warm-up)'}")

    for k in jobs:
        once(k, False)
    for _ in range(reps):
        for k in jobs:
            if out[k]["error"] is None:
                once(k, True)
    for r in out.values():
        r["wall_s"] = statistics.median(r["times"]) if r["times"] and r["error"] is None else None
        r["wire_per_node"] = statistics.median(r["wire"]) if r["wire"] else None
        res = r["last"]
        if hasattr(res, "provenance"):
            r["rows"] = res.num_rows
            r["suppressed"] = res.suppressed
    return out


def _same(a: Any, b: Any, tol: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if tol is None:
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tol * max(abs(a), abs(b))


def compare(plain, other, keys: list[str], tols: dict[str, float], mode: str) -> dict:
    """``other`` against ``plain`` on plain's released rows; see the module docstring."""
    import pyarrow as pa

    ta, tb = plain.to_arrow(), other.to_arrow()
    problems: list[str] = []
    if ta.column_names != tb.column_names:
        problems.append(f"columns {tb.column_names} vs plain {ta.column_names}")
        return {"ok": False, "problems": problems}
    vals = [c for c in ta.column_names if c not in keys]
    kind = {}
    for c in vals:
        t = ta.schema.field(c).type
        kind[c] = tols.get(c, REAL_TOL) if pa.types.is_floating(t) else None

    def rows(t) -> tuple[dict, int]:
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        out, anon = {}, 0
        for i in range(t.num_rows):
            k = tuple(cols[c][i] for c in keys)
            if any(x is None for x in k):
                anon += 1  # a withheld group returned without its key
                continue
            if k in out:
                problems.append(f"duplicate key {k}")
            out[k] = {c: cols[c][i] for c in vals}
        return out, anon

    ra, anon_a = rows(ta)
    rb, anon_b = rows(tb)
    missing = [k for k in ra if k not in rb]
    if missing:
        problems.append(f"{len(missing)} rows released by plain are missing, e.g. {missing[0]}")
    bad: dict[str, int] = {}
    max_rel: dict[str, float] = {c: 0.0 for c, tol in kind.items() if tol is not None}
    for k, va in ra.items():
        vb = rb.get(k)
        if vb is None:
            continue
        for c in vals:
            x, y = va[c], vb[c]
            if not _same(x, y, kind[c]):
                bad[c] = bad.get(c, 0) + 1
                if bad[c] == 1:
                    problems.append(f"column {c} differs at {k}: plain {x!r}, {mode} {y!r}")
            elif kind[c] is not None and x is not None and y is not None and x != y and not math.isnan(x):
                max_rel[c] = max(max_rel[c], abs(x - y) / max(abs(x), abs(y)))
    for c, n in bad.items():
        problems.append(f"column {c}: {n} rows differ")
    extra = sum(1 for k in rb if k not in ra)
    return {"ok": not problems, "problems": problems, "common": len(ra) - len(missing), "extra": extra,
            "anon_plain": anon_a, "anon_other": anon_b, "max_rel": max_rel}


def check(r: dict[str, dict], keys: list[str], tols: dict[str, float], label: str) -> list[str]:
    """Compare mpc and he with plain in ``r`` (in place: r[mode]['check']); returns the failures."""
    fails = []
    if r["plain"]["error"]:
        return [f"{label}: plain failed: {r['plain']['error']}"]
    for m in SECURE:
        if r[m]["error"]:
            fails.append(f"{label} {m}: {r[m]['error']}")
            continue
        c = compare(r["plain"]["last"], r[m]["last"], keys, tols, m)
        r[m]["check"] = c
        if c["ok"]:
            rel = ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel"].items() if v)
            log(f"{label} {m}: equals plain on {c['common']:,} rows (+{c['extra']:,} released only by {m})"
                + (f"; max rel diff {rel}" if rel else "; reals identical"))
        else:
            fails.extend(f"{label} {m}: {p}" for p in c["problems"][:10])
    return fails


# -- report ------------------------------------------------------------------------------------


def human(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(x: float | None, target: float) -> str:
    if x is None:
        return "not measured (NOT met)"
    return f"{x:.2f}× ({'met' if x <= target else 'NOT met'})"


def workload_table(r: dict[str, dict], plink_key: str, plink_label: str) -> list[str]:
    L = ["| run | wall | × plain | × plink2 | wire/node | rows released | withheld | check vs plain |",
         "|---|---|---|---|---|---|---|---|"]
    pk = r[plink_key]["wall_s"]
    for m in MODES:
        x = r[m]
        if x["error"]:
            L.append(f"| {m} | error: {x['error'][:200]} | | | | | | |")
            continue
        c = x.get("check")
        chk = "–" if m == "plain" else ("equal" + (f" (+{c['extra']:,} rows plain withholds)" if c["extra"] else "")
                                        if c and c["ok"] else "**MISMATCH**")
        rp, rk = ratio(x["wall_s"], r["plain"]["wall_s"]), ratio(x["wall_s"], pk)
        L.append(f"| {m} | {secs(x['wall_s'])} | {'–' if rp is None else f'{rp:.2f}×'} | "
                 f"{'–' if rk is None else f'{rk:.2f}×'} | {human(x['wire_per_node'])} | {x.get('rows', 0):,} | "
                 f"{x.get('suppressed', 0):,} | {chk} |")
    x = r[plink_key]
    kp = ratio(pk, r["plain"]["wall_s"])
    L.append(f"| {plink_label} | {secs(x['wall_s']) if not x['error'] else 'error: ' + x['error'][:200]} | "
             f"{'–' if kp is None else f'{kp:.2f}×'} | 1× | – | – | – | – |")
    return L


def report(R: dict, command: str, started: str, elapsed: float, failures: list[str]) -> str:
    af, gw, sizes = R["af"], R["gwas"], R["sizes"]
    L = [BEGIN, "## Secure combine: mpc and he vs plain and plink2 (same run)", ""]
    L.append(f"Command: `{command}` · started {started} · {elapsed:.0f} s · {os.cpu_count()} CPUs · "
             f"Python {platform.python_version()} · {R['plink2']} · load before {R['load'][0]:.2f}, after "
             f"{os.getloadavg()[0]:.2f} · {R['reps']} reps")
    L.append("")
    L.append("Real 1000 Genomes 2,504 samples (peddy sites, 23,770 SNVs) dealt round-robin over three loopback nodes "
             "(TLS), default node policy (minimum count 5, differencing defence, membership-risk gate) except "
             f"`[risk] max_membership_power = {RISK_CAP}` at every node (the gate refuses these genome-wide queries at "
             "the default cap; at 1.0 it still runs in full but cannot refuse). Wall: end-to-end `Federation.sql`, "
             "median after one warm-up per mode, the modes (and plink2) taking turns run by run. Wire: bytes each node "
             "sent for the query (mean over nodes). plink2: wall time of the process on the pooled pgen "
             f"(`--threads {THREADS}`; the pgen made once beforehand, untimed), with the nodes up and idle. Check: each "
             "secure answer against plain on the rows plain released (integers exactly, reals to 1e-9 relative, "
             "gwas beta/se/t/p to 1e-6 relative); the secure modes test the minimum count on federation-wide counts, "
             "so they may release groups that plain withholds.")
    L.append("")
    L.append("### AF by super_pop, all variants (118,850 groups)")
    L.append("")
    L.append(f"`{SQL_AF}` vs `{R['cmd_freq']}`")
    L.append("")
    L.extend(workload_table(af, "plink2", "plink2 `--freq --loop-cats super_pop`"))
    if R.get("af_vs_plink") is not None:
        L.append("")
        L.append(f"plain AF vs plink2 `ALT_FREQS`: max absolute difference {R['af_vs_plink']:.1e} (plink2 prints 6 significant digits).")
    L.append("")
    L.append("### gwas_linear, 2 covariates, all variants")
    L.append("")
    L.append(f"`{SQL_GWAS}` vs `{R['cmd_glm']}`")
    L.append("")
    L.extend(workload_table(gw, "plink2", "plink2 `--glm hide-covar`"))
    if R.get("gwas_vs_plink"):
        d = R["gwas_vs_plink"]
        L.append("")
        L.append(f"plain vs plink2 over {d['n']:,} variants: max relative difference beta {d['beta']:.1e}, p {d['p']:.1e} "
                 "(plink2 prints 6 significant digits).")
    L.append("")
    L.append("### Size series: AF with ac/an/af over position ranges")
    L.append("")
    L.append("`SELECT g.variant_id, s.super_pop, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
             "allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) WHERE g.pos BETWEEN :lo "
             "AND :hi GROUP BY 1, 2` (1M: by `pop`, one repetition).")
    L.append("")
    L.append("| partial values | groups (plain released) | plain wall | mpc wall (× plain) | he wall (× plain) | plain wire/node | "
             "mpc wire/node (×) | he wire/node (×) | check |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for label, values, r in sizes:
        p = r["plain"]
        cells = []
        for m in SECURE:
            rr = ratio(r[m]["wall_s"], p["wall_s"])
            cells.append("error" if r[m]["error"] else f"{secs(r[m]['wall_s'])} ({rr:.1f}×)")
        wires = []
        for m in SECURE:
            wr = ratio(r[m]["wire_per_node"], p["wire_per_node"])
            wires.append(f"{human(r[m]['wire_per_node'])}" + (f" ({wr:.0f}×)" if wr else ""))
        ok = all(r[m].get("check", {}).get("ok") for m in SECURE)
        groups = p.get("rows", 0) + p.get("suppressed", 0)
        L.append(f"| {label} ({values:,}) | {groups:,} ({p.get('rows', 0):,}) | {secs(p['wall_s'])} | {cells[0]} | {cells[1]} | "
                 f"{human(p['wire_per_node'])} | {wires[0]} | {wires[1]} | {'equal' if ok else '**MISMATCH**'} |")
    L.append("")
    L.append("### Targets")
    L.append("")
    for line in R["targets"]:
        L.append(f"- {line}")
    if failures:
        L.append("")
        L.append("**Failures:** " + "; ".join(failures[:20]))
    L.append(END)
    return "\n".join(L)


def targets(R: dict) -> list[str]:
    af, gw = R["af"], R["gwas"]
    T = []
    for m in SECURE:
        T.append(f"AF by super_pop, all variants: {m} ≤ {TARGET_AF:g}× plain: "
                 f"{verdict(ratio(af[m]['wall_s'], af['plain']['wall_s']), TARGET_AF)}")
    for m in SECURE:
        T.append(f"gwas_linear: {m} ≤ {TARGET_GWAS:g}× plain: "
                 f"{verdict(ratio(gw[m]['wall_s'], gw['plain']['wall_s']), TARGET_GWAS)}")
    T.append(f"AF by super_pop, all variants: mpc (default mode) ≤ {TARGET_PLINK:g}× plink2 `--freq --loop-cats`: "
             f"{verdict(ratio(af['mpc']['wall_s'], af['plink2']['wall_s']), TARGET_PLINK)}")
    big = [r for label, _, r in R["sizes"] if label == "1M"]
    for m in SECURE:
        if big:
            T.append(f"1M values: {m} ≤ {TARGET_1M:g}× plain: "
                     f"{verdict(ratio(big[0][m]['wall_s'], big[0]['plain']['wall_s']), TARGET_1M)}")
        else:
            T.append(f"1M values: {m} ≤ {TARGET_1M:g}× plain: not run (--quick)")
    return T


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="no 1M row, --reps 1 unless given; print, do not write RESULTS.md")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds per workload (default 5, --quick 1)")
    args = ap.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    started = time.strftime("%Y-%m-%d %H:%M")
    t_start = time.monotonic()
    if not VCF.exists() or not PANEL.exists():
        log(f"missing real data: {VCF} / {PANEL}")
        return 2
    if shutil.which("plink2") is None:
        log("plink2 not found on PATH")
        return 2
    import genofed
    from genofed.connectors.federation import down, up

    R: dict[str, Any] = {"reps": reps, "load": os.getloadavg()}
    R["plink2"] = subprocess.run(["plink2", "--version"], capture_output=True, text=True).stdout.strip()
    root = federation(make_phenotypes())
    pinputs = plink_inputs()
    freq_cmd, glm_cmd = plink_freq_cmd(pinputs), plink_glm_cmd(pinputs)
    R["cmd_freq"], R["cmd_glm"] = show_cmd(freq_cmd), show_cmd(glm_cmd)
    pos = positions(root)
    failures: list[str] = []
    up(root)
    try:
        fed = genofed.connect(root, timeout=1800)

        def q(sql: str, mode: str) -> Callable[[], Any]:
            return lambda: fed.sql(sql, combine=mode)

        # 1. AF by super_pop over all variants, and plink2 --freq --loop-cats
        log(f"AF by super_pop, all variants: warm-up + {reps} rounds of plain, mpc, he, plink2 ...")
        R["af"] = measure({**{m: q(SQL_AF, m) for m in MODES}, "plink2": lambda: run_plink(freq_cmd)}, reps, "af")
        failures += check(R["af"], ["super_pop", "variant_id"], {}, "af")
        if R["af"]["plink2"]["error"]:
            failures.append(f"plink2 --freq: {R['af']['plink2']['error']}")
        if not R["af"]["plain"]["error"]:
            try:
                R["af_vs_plink"] = plink_af_diff(R["af"]["plain"]["last"])
            except Exception as e:
                log(f"plink2 AF comparison skipped: {type(e).__name__}: {e}")

        # 2. gwas_linear and plink2 --glm
        log(f"gwas_linear: warm-up + {reps} rounds of plain, mpc, he, plink2 ...")
        R["gwas"] = measure({**{m: q(SQL_GWAS, m) for m in MODES}, "plink2": lambda: run_plink(glm_cmd)}, reps, "gwas")
        failures += check(R["gwas"], ["variant_id"], dict.fromkeys(("beta", "se", "t", "p"), GWAS_TOL), "gwas")
        if R["gwas"]["plink2"]["error"]:
            failures.append(f"plink2 --glm: {R['gwas']['plink2']['error']}")
        if not R["gwas"]["plain"]["error"]:
            try:
                R["gwas_vs_plink"] = plink_beta_diff(R["gwas"]["plain"]["last"])
            except Exception as e:
                log(f"plink2 GWAS comparison skipped: {type(e).__name__}: {e}")

        # 3. size series
        R["sizes"] = []
        sizes = [("1k", "super_pop", 100), ("100k", "super_pop", 10_000)]
        if not args.quick:
            sizes.append(("1M", "pop", 19_300))
        for label, group, n_var in sizes:
            n_var = min(n_var, len(pos))
            sql = size_query(group, pos[0], pos[n_var - 1])
            n_partials = len(fed._coord.plan(sql).partials)
            n = reps if label != "1M" else 1
            log(f"{label}: {n_var} variants by {group} ({n_partials} partials), warm-up + {n} rounds ...")
            r = measure({m: q(sql, m) for m in MODES}, n, label)
            failures += check(r, ["variant_id", group], {}, label)
            groups = (r["plain"].get("rows") or 0) + (r["plain"].get("suppressed") or 0)  # released + withheld
            values = groups * n_partials
            R["sizes"].append((label, values, r))
        fed.close()
    finally:
        down(root)
    R["targets"] = targets(R)
    command = ".venv/bin/python benchmarks/bench_secure.py" + (" " + shlex.join(argv) if argv else "")
    text = report(R, command, started, time.monotonic() - t_start, failures)
    print(text)
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures[:30]))
        log("RESULTS.md not written")
        return 1
    if not args.quick:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(new)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
