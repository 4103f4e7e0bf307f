"""Load: many concurrent queries from several researchers against a 3-node federation.

A local federation over the real 1000 Genomes 1,126-sample set (the suggested 3-node split,
synthetic phenotypes from ``tests/fixtures_data.py``), minimum count 5, plain allowed, TLS on,
node servers as real processes (``federation up``), differencing defence and membership-risk
state on (the risk cap at 1.0: see ``tests/loadrun.py configure``), a DP budget of ε = 3 per
researcher at each node. ``--researchers`` researchers are added with ``add_researcher`` and
each queries through their own ``genofed.connect(..., token=)`` client; ``--queries`` queries
(``tests/loadrun.py make_mix``: about half plain and half mpc; small counts and averages, and
per-variant allele statistics over 3 chromosomes or one chromosome by population, 1k-14k
groups; DP counts at ε = 0.5 with identical repeats, and the first researcher asking distinct DP
counts past their budget) are queued at once on a pool of ``--concurrency`` threads, the
racing DP jobs first.

Afterwards the run fails loudly (exit status 1, RESULTS.md untouched) unless: there were no
errors other than budget refusals; every answer equals the pooled DuckDB oracle (DP answers
within a generous bound); at every node and for every researcher the ledger's spent = the sum of
its charges ≤ the budget, each charge is audited, each release key charged at most once, and
charges of failed queries belong to queries refused somewhere; every audit log verifies
(``genofed audit verify``) and records a release of every answered query; the membership-risk
state holds exactly the variants released per researcher and cohort.

Usage::

    .venv/bin/python benchmarks/bench_load.py                       # 100 queries, 5 researchers; updates RESULTS.md
    .venv/bin/python benchmarks/bench_load.py --queries 30 --researchers 3 --no-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
DATA = Path(os.environ.get("GENOFED_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve() / "1kg_phase3_subset_1126"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
OUT = ROOT / "benchmarks" / "load.json"
BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"
BUDGET = 3.0

sys.path.insert(0, str(ROOT / "tests"))


def log(msg: str) -> None:
    print(f"[bench_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base() -> tuple[Path, Path]:
    """The ingested federation (built once) and its phenotypes."""
    from fixtures_data import make_phenotypes_1126

    from genofed.connectors.federation import FEDERATION_FILE, init_federation

    w = WORK / "load_base"
    pheno = w / "phenotypes.csv"
    if not (w / "fed" / FEDERATION_FILE).exists():
        log("building a 3-node federation from the 1,126-sample set ...")
        w.mkdir(parents=True, exist_ok=True)
        make_phenotypes_1126(pheno, DATA / "samples_1126.tsv")
        init_federation(w / "fed", DATA / "1kg_phase3_subset_1126.vcf.gz", DATA / "samples_1126.tsv",
                        DATA / "suggested_3node_split.tsv", clinical={"phenotypes": pheno}, min_count=5, allow_plain=True, combine="mpc")
    return w / "fed", pheno


def oracle(pheno: Path):
    """The pooled DuckDB oracle (a database file, built once, opened read-only)."""
    import duckdb
    from oracle import build_pooled

    db = WORK / "load_base" / "pooled.duckdb"
    if not db.exists():
        log("building the pooled oracle ...")
        tmp = db.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        build_pooled(str(tmp), DATA / "1kg_phase3_subset_1126.vcf.gz", DATA / "samples_1126.tsv", {"phenotypes": pheno}).close()
        os.replace(tmp, db)
    return duckdb.connect(str(db), read_only=True)


class RSSWatch:
    """Samples the resident memory of every node server and of its children (the MPC parties)."""

    def __init__(self, pids: dict[str, int], every: float = 0.25):
        import psutil

        self.procs = {n: psutil.Process(p) for n, p in pids.items()}
        self.peak_tree = dict.fromkeys(pids, 0)
        self.every = every
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            for n, p in self.procs.items():
                try:
                    tree = [p, *p.children(recursive=True)]
                    total = 0
                    for q in tree:
                        try:
                            total += q.memory_info().rss
                        except psutil.Error:
                            continue
                    self.peak_tree[n] = max(self.peak_tree[n], total)
                except psutil.Error:
                    continue

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._t.join()
        out = {}
        for n, p in self.procs.items():
            hwm = 0
            try:  # the server's own peak (VmHWM), exact
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) * 1024
            except OSError:
                pass
            out[n] = {"server_peak_mb": hwm / 2**20, "with_mpc_parties_peak_mb": self.peak_tree[n] / 2**20}
        return out


def run(args: argparse.Namespace, concurrency: int) -> dict:
    import loadrun as L
    from click.testing import CliRunner
    from conftest import clone_federation

    from genofed.cli import main as cli
    from genofed.connectors.federation import FederationConfig, add_researcher, down, up

    load_before = list(os.getloadavg())
    src, pheno = base()
    root = WORK / "load_run"
    shutil.rmtree(root, ignore_errors=True)
    clone_federation(src, root, min_count=5)  # fresh privacy state, ledgers and audit logs; the same stores
    L.configure(root, budget_epsilon=BUDGET)
    researchers = [f"researcher_{i + 1}" for i in range(args.researchers)]
    tokens = {r: add_researcher(root, r) for r in researchers}
    jobs = L.make_mix(researchers, args.queries, seed=args.seed, dp_repeats=4)
    log(f"{len(jobs)} queries: {dict(Counter(j.cls for j in jobs))}; {dict(Counter(j.tag for j in jobs))}")
    t_up = time.perf_counter()
    up(root)
    t_up = time.perf_counter() - t_up
    fed = FederationConfig.load(root)
    pids = {n.name: int((root / n.name / "node.pid").read_text()) for n in fed.nodes}
    watch = RSSWatch(pids)
    try:
        log(f"firing {len(jobs)} queries on {concurrency} threads ...")
        outcomes, wall = L.run_load(root, tokens, jobs, concurrency)
    finally:
        rss = watch.stop()
        down(root)
    log(f"done in {wall:.1f} s; checking ...")
    errors = [o for o in outcomes if not o.ok and not o.budget_refused]
    refusals = [o for o in outcomes if o.budget_refused]
    rep = L.Report()
    for o in errors:
        rep.check(False, f"error: {o.job.researcher} {o.job.cls} {o.job.tag} {o.job.sql[:60]!r}: {o.error[:300]}")
    for o in refusals:
        rep.check(o.job.tag == "dp_greedy", f"budget refusal of a {o.job.tag} query of {o.job.researcher}: only the greedy researcher may run out")
    t_or = time.perf_counter()
    con = oracle(pheno)
    L.check_answers(rep, outcomes, L.Oracle(con))
    con.close()
    t_or = time.perf_counter() - t_or
    L.check_nodes(rep, root, outcomes, researchers)
    verified = {}
    for n in fed.nodes:  # the steward's own check, through the CLI
        r = CliRunner().invoke(cli, ["audit", "verify", str(root / n.config)])
        verified[n.name] = r.output.strip()
        rep.check(r.exit_code == 0, f"genofed audit verify {n.config}: {r.output.strip()}")
    greedy = researchers[0]
    answered_greedy = sum(1 for o in outcomes if o.ok and o.job.tag == "dp_greedy")
    rep.check(answered_greedy <= BUDGET / L.EPSILON, f"{greedy} got {answered_greedy} distinct DP answers, budget allows {BUDGET / L.EPSILON:g}")
    spent_greedy = {n: v[greedy]["spent"] for n, v in rep.facts["ledgers"].items()}
    attempts = sum(1 for j in jobs if j.tag == "dp_greedy")
    if attempts * L.EPSILON > BUDGET:  # pushed past it: every node spent it exactly, never more
        rep.check(all(abs(s - BUDGET) < 1e-9 for s in spent_greedy.values()), f"{greedy} spent {spent_greedy}, expected exactly {BUDGET} everywhere")
    answered = [o for o in outcomes if o.ok]
    return {
        "started": time.strftime("%Y-%m-%d %H:%M"), "load_before": load_before, "load_after": list(os.getloadavg()),
        "federation": {"nodes": [n.name for n in fed.nodes], "samples": 1126, "min_count": 5, "tls": True, "dp_budget_epsilon": BUDGET,
                       "dp_epsilon_per_query": L.EPSILON, "up_s": t_up},
        "queries": len(jobs), "researchers": len(researchers), "concurrency": concurrency,
        "mix": dict(Counter(j.cls for j in jobs)), "tags": dict(Counter(j.tag for j in jobs)),
        "answered": len(answered), "errors": len(errors), "budget_refusals": len(refusals),
        "busy_retries": sum(int(o.provenance.details.get("busy_retries", 0)) for o in answered if o.provenance is not None),
        "wall_s": wall, "throughput_qps": len(answered) / wall,
        "latency_s": L.latency_summary(outcomes),
        "rows": {"max": max((o.table.num_rows for o in answered if o.table is not None), default=0),
                 "total": sum(o.table.num_rows for o in answered if o.table is not None)},
        "node_rss": rss,
        "invariants": {"violations": rep.problems, **rep.facts, "audit_verify": verified, "oracle_s": t_or,
                       "greedy": {"researcher": greedy, "attempts": attempts, "answered": answered_greedy, "spent": spent_greedy}},
        "error_messages": [o.error[:300] for o in errors],
    }


def markdown(report: dict) -> str:
    runs = report["runs"]
    r = runs[0]
    m = report["machine"]
    L = [BEGIN, "## Load: concurrent queries from several researchers (same run)", ""]
    loads = ", ".join(f"{x['load_before'][0]:.1f}" for x in runs)
    L.append(f"Command: `{report['command']}` · started {report['started']} · {m['cpus']} cores, shared with other jobs "
             f"(load average before each run: {loads}) · Python {m['python']}")
    L.append("")
    L.append(f"{r['queries']} queries from {r['researchers']} researchers, each with their own token (`add_researcher`) and "
             f"client, all queued at once on a pool of N threads, against 3 node processes started by `federation up` (TLS; "
             f"1000 Genomes, 1,126 samples × 25,709 variants; minimum count 5; differencing defence and membership-risk state "
             f"on; DP budget ε = {r['federation']['dp_budget_epsilon']:g} per researcher at each node). Mix: "
             + ", ".join(f"{v} {k}" for k, v in sorted(r["mix"].items()))
             + f". Small: counts, averages, variances by population, sex or smoking. Large: per-variant allele "
             f"count/number/frequency over 3 chromosomes (~3.4k groups) or over one chromosome by population (~13.7k groups). "
             f"DP (ε = {r['federation']['dp_epsilon_per_query']:g}): {r['tags'].get('dp_repeat', 0)} identical repeats "
             f"(4 per researcher, fired together), {r['tags'].get('dp', 0)} other counts, and {r['tags'].get('dp_greedy', 0)} "
             f"distinct counts from the first researcher, racing past their budget. A fresh copy of the federation "
             f"(empty ledgers, audit logs, histories) for each N.")
    L.append("")
    L.append("| N threads | answered | errors | budget refusals | busy retries | wall | queries/s | p50 | p95 | p99 | max |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in runs:
        a = x["latency_s"]["all"]
        L.append(f"| {x['concurrency']} | {x['answered']} | {x['errors']} | {x['budget_refusals']} | {x.get('busy_retries', 0)} | "
                 f"{x['wall_s']:.1f} s | "
                 f"{x['throughput_qps']:.2f} | {a['p50']:.2f} s | {a['p95']:.2f} s | {a['p99']:.2f} s | {a['max']:.2f} s |")
    L.append("")
    L.append("Latency per class (end-to-end `Federation.sql`, queueing in the pool excluded):")
    L.append("")
    L.append("| N threads | class | answered | p50 | p95 | p99 | max |")
    L.append("|---|---|---|---|---|---|---|")
    for x in runs:
        for k, v in x["latency_s"].items():
            if k != "all":
                L.append(f"| {x['concurrency']} | {k} | {v['n']} | {v['p50']:.2f} s | {v['p95']:.2f} s | {v['p99']:.2f} s | {v['max']:.2f} s |")
    L.append("")
    L.append("Peak memory per node (server: its own VmHWM; with parties: the server and its MPC party processes, sampled "
             "every 0.25 s): " + "; ".join(
                 f"N = {x['concurrency']}: " + ", ".join(f"{v['server_peak_mb']:.0f} / {v['with_mpc_parties_peak_mb']:.0f} MB"
                                                         for v in x["node_rss"].values()) for x in runs) + ".")
    L.append("")
    g = [x["invariants"]["greedy"] for x in runs]
    dp = [x["invariants"]["dp_answers"] for x in runs]
    L.append("Invariants, checked after each run from the nodes' own files (the benchmark exits 1 and leaves this file alone "
             "if one fails): (a) every answer equals the pooled DuckDB oracle (`tests/oracle.py`; integers exactly, reals to "
             "1e-9; DP counts within 4 × the nodes' summed 95 % accuracy) and identical DP queries got identical noisy "
             "answers; (b) at every node and for every researcher, ledger spent = the sum of its charges ≤ the budget, every "
             "charge is audited as a release of its query, no release key is charged twice, every answered DP release was "
             "charged its ε there or served from the cache (" + ", ".join(
                 f"N = {x['concurrency']}: {d['node_releases_from_cache']} of {d['node_releases']} node releases from the cache"
                 for x, d in zip(runs, dp, strict=True))
             + "), and the greedy researcher stopped exactly at the budget at every node ("
             + ", ".join(f"N = {x['concurrency']}: {gg['answered']} of {gg['attempts']} answered, spent "
                         + "/".join(f"{v:g}" for v in gg["spent"].values()) for x, gg in zip(runs, g, strict=True))
             + "); (c) every audit log verifies (`genofed audit verify`) and holds one release (plain) or share (mpc, with "
             "`mpc_done`) record of every answered query; (d) the membership-risk state holds, per researcher and cohort, "
             "exactly the union of the variants released (" + ", ".join(
                 f"{sum(x['invariants']['membership_cohorts'].values())}" for x in runs) + " cohort records). "
             "Violations: " + ", ".join(str(len(x["invariants"]["violations"])) for x in runs) + ".")
    L.append("")
    L.append("Notes: on 2 cores the latency is mostly waiting for CPU. Every mpc query runs four MPyC party processes "
             "(the client's and one per node, each a Python process with MPyC loaded; a process keeps at most two warm), so "
             "with N = 100 about 50 mpc queries run up to some 200 party processes at once (the trees' peak memory above) and the "
             "plain queries wait for CPU with them; the node servers themselves stay under 500 MB. With 13-37 answers per "
             "class, p99 is the maximum. Each node executes at most `[limits] max_concurrent` (4) fragments at once; a fragment "
             "that waits longer than `queue_seconds` (30 s) for a slot is answered `busy` and the coordinator asks again with "
             "backoff (busy retries above; the retried query's nodes that had answered serve it from their release cache). "
             "Other jobs shared the machine (load averages above).")
    L.append("")
    L.append("Found while building this load, and fixed: racing identical DP queries were each charged for the one answer they all got (a release key charged twice at a node), now "
             "charged once (`privacy/ledger.py`); an mpc query's three `mpc_run` calls shared the client's 4-thread pool with "
             "its other queries and could wait behind them until the protocol timed out (`privacy/secure/mpc.py`).")
    L.append(END)
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--researchers", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[100],
                    help="threads firing queries (all are queued at once); several values: one run each, on a fresh federation")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--no-results", action="store_true", help="print; do not write load.json or RESULTS.md")
    args = ap.parse_args(argv)
    if args.researchers < 2:
        ap.error("--researchers must be at least 2 (the first one is the greedy one)")
    if not (DATA / "1kg_phase3_subset_1126.vcf.gz").exists():
        log(f"missing real data in {DATA}")
        return 2
    report: dict[str, Any] = {"command": " ".join(["python", "benchmarks/bench_load.py", *(argv if argv is not None else sys.argv[1:])]),
              "started": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "runs": []}
    for n in args.concurrency:
        report["runs"].append(run(args, n))
    text = markdown(report)
    print(text)
    if not args.no_results:
        OUT.write_text(json.dumps(report, indent=1, default=str) + "\n")
    bad = [(x["concurrency"], x["invariants"]["violations"]) for x in report["runs"] if x["invariants"]["violations"]]
    if bad:
        log("FAILED:\n  " + "\n  ".join(f"N = {n}: {v}" for n, vs in bad for v in vs[:40]))
        return 1
    if not args.no_results:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(new)
        log(f"wrote {OUT.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
