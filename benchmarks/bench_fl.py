"""Federated learning on real Flower processes: wall time per round, SecAgg+ vs plain, genofed's
poll settings vs Flower's own, against scikit-learn on the pooled data in the same run.

    .venv/bin/python benchmarks/bench_fl.py [--samples 3000] [--rounds 3] [--out benchmarks/fl.json]

Simulates the demo cohort (3 nodes), starts a SuperLink and three SuperNodes on loopback per
configuration, and trains (a) the exact federated logistic regression and (b) FedAvg logistic
regression, with the t2d feature query plus the four planted variants. Reports per-round wall
times (median, by stage), the whole run, and the pooled scikit-learn fit's time and coefficient
difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def pooled(cohort: Path, causal: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from test_fl import _dosages  # the tests' independent oracle (cyvcf2)

    with open(cohort / "phenotypes.csv") as f:
        rows = [r for r in csv.DictReader(f) if all(r[c] not in ("", "NA") for c in ("age", "bmi", "sex", "t2d"))]
    X = np.array([[float(r["age"]), float(r["bmi"]), float(r["sex"])] for r in rows])
    with open(cohort / "split.tsv") as f:
        node_of = {r["sample"]: r["node"] for r in csv.DictReader(f, delimiter="\t")}
    G = _dosages(cohort / "cohort.vcf.gz", causal, [r["sample_id"] for r in rows], node_of)
    return np.hstack([X, G]), np.array([float(r["t2d"]) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/fl.json"))
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    from genofed.connectors.federation import FederationConfig, init_federation
    from genofed.federated.apps import RunSettings
    from genofed.federated.runner import FlowerDeployment
    from genofed.genomics.simulate import simulate_cohort

    tmp = Path(tempfile.mkdtemp(prefix="bench-fl-"))
    paths = simulate_cohort(tmp / "cohort", n_samples=args.samples, seed=1)
    truth = json.loads(paths.truth.read_text())
    causal = [c["variant_id"] for c in truth["t2d"]["causal"]]
    init_federation(tmp / "fed", paths.vcf, paths.samples, paths.split, clinical={"phenotypes": paths.phenotypes},
                    min_count=5, allow_plain=True, combine="plain")
    cfg = FederationConfig.load(tmp / "fed")
    X, y = pooled(tmp / "cohort", causal)
    t0 = time.perf_counter()
    ref = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(X, y)
    sk_seconds = time.perf_counter() - t0
    sql = "SELECT sample_id, t2d, age, bmi, sex FROM phenotypes"
    rows = []
    for poll, label in ((0.1, "genofed poll 0.1 s"), (0.0, "Flower defaults (3 s / 1 s / 3 s)")):
        dep = FlowerDeployment([tmp / "fed" / n.config for n in cfg.nodes], workdir=tmp / f"flower-{poll}", poll_interval=poll)
        t0 = time.perf_counter()
        dep.start()
        start_s = time.perf_counter() - t0
        try:
            runs = [("exact", True), ("fedavg", True), ("fedavg", False)] if poll > 0 else [("fedavg", True)]
            for strategy, secagg in runs:
                s = RunSettings(sql=sql, label="t2d", variants=causal, strategy=strategy, rounds=args.rounds, local_epochs=20,
                                secagg=secagg, nodes=len(cfg.nodes))
                t0 = time.perf_counter()
                res = dep.train(s, cfg.nodes[0].token, tmp / f"out-{poll}-{strategy}-{secagg}")
                total = time.perf_counter() - t0
                by_stage: dict[str, list[float]] = {}
                for t in res["timings"]:
                    by_stage.setdefault(t["stage"], []).append(t["seconds"])
                row = {"config": label, "strategy": strategy, "aggregation": "SecAgg+" if secagg else "plain",
                       "rounds": len(res["timings"]), "run_seconds": round(total, 1), "deployment_start_s": round(start_s, 1),
                       "median_round_s": {k: round(statistics.median(v), 2) for k, v in by_stage.items()},
                       "auc": round(res["metrics"]["auc"], 4)}
                if strategy == "exact":
                    coef = res["coefficients"]
                    got = np.array([coef[k] for k in ["age", "bmi", "sex", *causal]])
                    row["max_coef_diff_vs_sklearn"] = float(np.abs(got - ref.coef_[0]).max())
                    row["sklearn_pooled_fit_s"] = round(sk_seconds, 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            dep.stop()
    args.out.write_text(json.dumps({"samples": args.samples, "nodes": len(cfg.nodes), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
