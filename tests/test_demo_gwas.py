"""The demo cohort (simulated, with planted effects recorded in truth.json) on three nodes: the
federated GWAS finds every planted effect at genome-wide significance, the named analyses run,
and `genofed plot` writes the figures people expect."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LocalFederation

from genofed.cli import main
from genofed.named import list_queries

GWS = 5e-8


@pytest.fixture(scope="module")
def demo(demo_dir):
    root, truth = demo_dir
    lf = LocalFederation(root / "fed")
    try:
        yield lf.fed, truth, root
    finally:
        lf.close()


def _ids(xs):
    return "(" + ", ".join(f"'{x}'" for x in xs) + ")"


def test_planted_ldl_effects_found_by_linear_gwas(demo):
    fed, truth, _ = demo
    causal = {c["variant_id"]: c["beta"] for c in truth["ldl"]["causal"]}
    res = fed.sql("SELECT variant_id, beta, se, p FROM gwas_linear('phenotypes.ldl', covariates => ['phenotypes.age', 'phenotypes.sex']) "
                  f"WHERE variant_id IN {_ids(causal)}").to_pandas().set_index("variant_id")
    assert set(res.index) == set(causal)
    assert (res["p"] < GWS).all(), res
    for vid, beta in causal.items():  # the estimate is within 4 SE of the planted effect
        assert abs(res.loc[vid, "beta"] - beta) < 4 * res.loc[vid, "se"], vid


def test_planted_t2d_effects_found_by_logistic_gwas(demo):
    fed, truth, _ = demo
    causal = {c["variant_id"]: c["beta"] for c in truth["t2d"]["causal"]}
    res = fed.sql("SELECT * FROM gwas_logistic('phenotypes.t2d', covariates => ['phenotypes.age', 'phenotypes.bmi'])")
    df = res.to_pandas().set_index("variant_id")
    hits = df.loc[list(causal)]
    assert hits["converged"].all() and (hits["p"] < GWS).all(), hits
    for vid, beta in causal.items():
        assert np.sign(hits.loc[vid, "beta"]) == np.sign(beta)
    assert res.provenance.details["newton_rounds"] <= 12
    # the genome-wide hits are the planted loci and their LD neighbours, not noise: each hit is
    # within 200 kb of a planted variant
    pos = np.array([int(v.split(":")[1]) for v in causal])
    for vid in df.index[df["p"] < GWS]:
        assert np.abs(pos - int(vid.split(":")[1])).min() < 200_000, vid


def test_named_analyses_run_on_the_demo_cohort(demo):
    fed, truth, _ = demo
    names = ["gwas_ldl_linear", "t2d_assoc_case_control", "hwe_departures", "ld_region", "fst_super_pops", "heterozygosity_by_super_pop"]
    assert set(names) <= set(list_queries())
    for name in names:
        res = fed.named(name)
        assert res.num_rows > 0, name
    fst = fed.named("fst_super_pops").to_pandas()
    assert 0.05 < fst["fst_hudson"][0] < 0.5
    top = fed.named("gwas_ldl_linear").to_pandas()
    assert set(c["variant_id"] for c in truth["ldl"]["causal"]) <= set(top["variant_id"])


def test_plot_command_writes_figures(demo, tmp_path):
    fed, _, root = demo
    fed_dir = str(root / "fed")
    runner = CliRunner()
    gwas = "SELECT * FROM gwas_linear('phenotypes.ldl', covariates => ['phenotypes.age'])"
    out = runner.invoke(main, ["plot", "manhattan", gwas, "--federation", fed_dir, "-o", str(tmp_path / "m.png")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a saved result, plotted later
    res = runner.invoke(main, ["query", gwas, "--federation", fed_dir, "--format", "csv", "-o", str(tmp_path / "g.csv")])
    assert res.exit_code == 0, res.output
    out = runner.invoke(main, ["plot", "qq", "--input", str(tmp_path / "g.csv"), "-o", str(tmp_path / "q.svg")])
    assert out.exit_code == 0, out.output
    assert "<svg" in (tmp_path / "q.svg").read_text()[:2000]
    out = runner.invoke(main, ["plot", "ld-decay", "--name", "ld_region", "--federation", fed_dir, "-o", str(tmp_path / "ld.png")])
    assert out.exit_code == 0, out.output
    # PCA scatter from node-local scores: only binned, suppressed counts leave the nodes
    fed.sql("SELECT * FROM pca(k => 2, min_maf => 0.05, name => 'pcs')")
    cells = fed.pca_cells("pcs", group="super_pop").to_pandas()
    assert set(cells["group"]) == {"AFR", "EUR", "EAS"} and (cells["n"] >= 5).all()
    out = runner.invoke(main, ["plot", "pca", "--federation", fed_dir, "--scores", "pcs", "--group", "super_pop", "-o", str(tmp_path / "pca.png")])
    assert out.exit_code == 0, out.output
    bad = runner.invoke(main, ["plot", "qq", "--input", str(tmp_path / "g.csv"), "-o", str(tmp_path / "q.txt")])
    assert bad.exit_code != 0 and not (tmp_path / "q.txt").exists()


def test_demo_cohort_with_missing_calls_equals_plink2(demo, tmp_path):
    """The demo cohort has ~0.5% missing calls and ~1% missing LDL: per-variant sample sets
    differ, and the linear GWAS and HWE still equal plink2 on the pooled VCF."""
    import pandas as pd
    from gwas_ref import make_pgen, plink2_glm, plink2_hardy, rel, write_table
    from reftools import require_tool

    require_tool("plink2")
    fed, _, root = demo
    prefix = make_pgen(root / "cohort" / "cohort.vcf.gz", tmp_path / "demo")
    ph = pd.read_csv(root / "cohort" / "phenotypes.csv").set_index("sample_id")
    pheno = write_table(ph[["ldl"]], tmp_path / "pheno.tsv")
    covar = write_table(ph[["age", "sex"]], tmp_path / "covar.tsv")
    ref = plink2_glm(prefix, pheno, "ldl", covar, ["age", "sex"], tmp_path / "lin")
    res = fed.sql("SELECT * FROM gwas_linear('phenotypes.ldl', covariates => ['phenotypes.age', 'phenotypes.sex'])")
    got = res.to_pandas().set_index("variant_id")
    # rule 5 (plain, min_count 5): exactly the variants with at least 5 carriers of each allele in
    # every cell at every node are released (predicted from the VCF with numpy)
    withheld = _rule5_withheld_demo(root / "cohort", ph, ["ldl", "age", "sex"], "ldl")
    assert sorted(got.index) == sorted(v for v, w in withheld.items() if not w)
    assert res.suppressed == sum(withheld.values()) > 0
    ok = ref.index[ref["P"].notna() & ref.index.isin(got.index)]
    j = got.loc[ok].join(ref)
    assert len(j) > 5_000
    assert (j["n"] != j["n"].max()).sum() > 1000  # missing calls: per-variant sample counts differ
    assert (j["n"] == j["OBS_CT"]).all()
    for a, b in (("beta", "BETA"), ("se", "SE"), ("p", "P")):
        assert rel(j[a], j[b]) < 1e-5, a
    hardy = plink2_hardy(prefix, tmp_path / "hardy")
    hw = fed.sql("SELECT variant_id, hwe_p(dosage) AS p FROM genotypes GROUP BY variant_id")
    mac = _mac_withheld_demo(root / "cohort")  # rule 5 in SQL: a minimum minor-allele count per cell
    h = hw.to_pandas().set_index("variant_id")
    assert sorted(h.index) == sorted(v for v, w in mac.items() if not w) and hw.suppressed == sum(mac.values()) > 0
    h = h.join(hardy, how="inner")
    assert len(h) > 5_000 and rel(h["p"], h["P"]) < 1e-5


def _demo_chunks(cohort):
    """The VCF's samples, then ``(variant ids, dosages [variants x samples], NaN missing)`` chunks
    of the demo cohort."""
    from cyvcf2 import VCF

    vcf = VCF(str(cohort / "cohort.vcf.gz"), gts012=True)
    yield list(vcf.samples)
    ids: list[str] = []
    rows: list[np.ndarray] = []

    def chunk():
        g = np.stack(rows).astype(np.float64)
        g[g == 3] = np.nan  # cyvcf2 gts012: 3 is a missing call
        return list(ids), g

    for rec in vcf:
        for a in rec.ALT:  # biallelic in the demo cohort
            ids.append(f"{rec.CHROM}:{rec.POS}:{rec.REF}:{a}")
            rows.append(rec.gt_types.copy())
        if len(rows) >= 2000:
            yield chunk()
            ids.clear()
            rows.clear()
    if rows:
        yield chunk()


def _demo_nodes(cohort, samples: list[str]) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(cohort / "split.tsv", sep="\t", index_col=0)["node"].reindex(samples).to_numpy()


def _rule5_withheld_demo(cohort, ph, columns: list[str], phenotype: str) -> dict[str, bool]:
    """Rule 5's prediction for the demo cohort in plain mode: {variant_id: withheld}."""
    from rule5_ref import rule5_withheld

    chunks = _demo_chunks(cohort)
    samples = next(chunks)
    node = _demo_nodes(cohort, samples)
    people = ph.reindex(samples)
    analysed = people[columns].notna().all(axis=1).to_numpy()
    y = people[phenotype].to_numpy(np.float64)
    out: dict[str, bool] = {}
    for ids, g in chunks:
        out.update(zip(ids, (bool(w) for w in rule5_withheld(g, y, analysed, node, "plain")), strict=True))
    return out


def _mac_withheld_demo(cohort, k: int = 5) -> dict[str, bool]:
    """Rule 5's minimum minor-allele count for a SQL release per variant over everyone, plain
    mode: {variant_id: withheld}, withheld when some node has fewer than ``k`` copies of the ALT
    or of the REF allele (0 included)."""
    chunks = _demo_chunks(cohort)
    node = _demo_nodes(cohort, next(chunks))
    out: dict[str, bool] = {}
    for ids, g in chunks:
        bad = np.zeros(len(ids), bool)
        for n in np.unique(node):
            x = g[:, node == n]
            alt = np.nansum(x, axis=1)
            bad |= (alt < k) | (2 * (~np.isnan(x)).sum(axis=1) - alt < k)
        out.update(zip(ids, (bool(b) for b in bad), strict=True))
    return out
