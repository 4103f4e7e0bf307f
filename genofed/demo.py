"""``make demo``: simulate a cohort, split it over three nodes, query it, stop the nodes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_demo(directory: str | Path, n_samples: int = 3000, keep_running: bool = False, seed: int = 1) -> None:
    """Run the demo end to end; see the README's quick start."""
    from genofed.api import connect
    from genofed.connectors.federation import down, history_gates_off, init_federation, up
    from genofed.genomics.simulate import simulate_cohort
    from genofed.named import list_queries

    console = Console()
    root = Path(directory)
    cohort_dir = root / "cohort"
    t0 = time.perf_counter()
    console.rule("[bold]genofed demo")
    console.print(f"simulating {n_samples:,} samples (stdpopsim OutOfAfrica_3G09, msprime) into {cohort_dir}")
    paths = simulate_cohort(cohort_dir, n_samples=n_samples, seed=seed)
    t1 = time.perf_counter()
    console.print(f"  done in {t1 - t0:.1f} s")
    console.print("splitting over three biobank nodes and ingesting (one store per node)")
    init_federation(root, paths.vcf, paths.samples, paths.split, clinical={"phenotypes": paths.phenotypes}, min_count=5)
    # the demo runs whole-genome analyses of one simulated cohort many times as one researcher:
    # the history-based gates (differencing, membership risk) would rightly refuse most of them
    history_gates_off(root)
    console.print("  sandbox policy: differencing and membership-risk gates off (see docs/privacy-attacks.md)")
    t2 = time.perf_counter()
    console.print(f"  done in {t2 - t1:.1f} s")
    ports = up(root)
    t3 = time.perf_counter()
    console.print("  nodes up: " + ", ".join(f"{n} (127.0.0.1:{p})" for n, p in ports.items()) + f" in {t3 - t2:.1f} s")
    truth = json.loads(paths.truth.read_text())
    try:
        with connect(root) as fed:
            for q in list_queries().values():
                params: dict[str, object] = {}
                causal = _first_causal(truth)
                if any(p.name == "variant_id" for p in q.params) and causal:
                    params["variant_id"] = causal
                t2d = [c["variant_id"] for c in truth.get("t2d", {}).get("causal", []) if isinstance(c, dict)]
                if q.name == "gwas_t2d_logistic" and t2d:
                    # logistic regression iterates (one secure combine per Newton round): the demo
                    # scans 400 kb around a planted t2d locus; drop start/stop for the whole region
                    pos = int(t2d[0].split(":")[1])
                    params.update(start=pos - 200_000, stop=pos + 200_000)
                if q.name == "pca_ancestry":
                    params.update(k=2)  # three populations: two components carry the structure
                if q.name == "ldl_assoc_region" and causal:
                    # a 200 kb window around a planted LDL locus: the scan runs row-wise (a
                    # dosage x phenotype regression per variant), so keep the demo's window small
                    pos = int(causal.split(":")[1])
                    params.update(start=pos - 100_000, stop=pos + 100_000)
                s = time.perf_counter()
                res = fed.named(q.name, **params)
                dt = time.perf_counter() - s
                _show(console, q.title, res, dt)
    finally:
        if not keep_running:
            down(root)
            console.print("nodes stopped")
    console.print(f"[bold]demo finished in {time.perf_counter() - t0:.1f} s[/] · federation kept in {root} "
                  f"(try: genofed federation up {root} && genofed query --federation {root} \"SELECT ...\")")


def _first_causal(truth: dict) -> str | None:
    for key in ("ldl", "causal_ldl", "ldl_causal"):
        v = truth.get(key)
        if isinstance(v, list) and v:
            item = v[0]
            return item.get("variant_id") if isinstance(item, dict) else str(item)
        if isinstance(v, dict) and v:
            inner = v.get("variants") or v.get("causal") or list(v)
            if isinstance(inner, list) and inner:
                item = inner[0]
                return item.get("variant_id") if isinstance(item, dict) else str(item)
    return None


def _show(console: Console, title: str, res, seconds: float, max_rows: int = 8) -> None:
    table = res.to_arrow()
    t = Table(title=f"{title}  [dim]({seconds * 1000:.0f} ms, {table.num_rows} rows, combine {res.provenance.combine})", title_justify="left")
    for c in table.column_names:
        t.add_column(c)
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*[("NULL" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()])
    console.print(t)
    if table.num_rows > max_rows:
        console.print(f"  … {table.num_rows - max_rows} more rows")
    if res.suppressed:
        console.print(f"  [yellow]{res.suppressed} group(s) withheld by the disclosure rules")
