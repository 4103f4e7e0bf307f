"""Genomic statistics and federated GWAS on three real nodes, against pooled references:
plink2 (--hardy, --glm linear and logistic) on the pooled VCF, exact numpy OLS, scipy's tests on
pooled counts, scikit-allel's PCA, Fst and heterozygosity on the pooled genotypes.

plink2 prints 6 significant digits, so comparisons with its files are at 1e-5 relative; the
exact pooled computations are compared at 1e-8.
"""

from __future__ import annotations

import allel
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import LocalFederation, clone_federation
from gwas_ref import (
    dosages,
    logistic,
    make_pgen,
    ols,
    plink2_glm,
    plink2_hardy,
    rel,
    split_vcf,
    write_table,
)
from reftools import require_tool
from scipy import stats as sps

from genofed.engine.errors import DisclosureError, GenofedError, NodeError, PlanningError

REGION = "20,21,22"
WHERE = "chrom IN ('20', '21', '22')"


@pytest.fixture(scope="module")
def pooled(tmp_path_factory, data_1126, phenotypes_1126):
    """The pooled data of the three nodes: split VCF, plink2 pgen, phenotype/covariate files."""
    require_tool("plink2", "bcftools", "tabix")
    d = tmp_path_factory.mktemp("pooled_gwas")
    split = split_vcf(data_1126["vcf"], d / "split.vcf.gz", REGION)
    prefix = make_pgen(split, d / "p")
    sheet = pd.read_csv(data_1126["samples"], sep="\t").set_index("sample.id")
    ph = pd.read_csv(phenotypes_1126).set_index("sample_id")
    pheno = pd.DataFrame({"outcome": sheet["outcome"], "status": sheet["status"] + 1}, index=sheet.index)
    covar = pd.DataFrame({"age": ph["age"], "bmi": ph["bmi"], "smoker": ph["smoker"]})
    ids, samples, dos = dosages(split)
    return {
        "dir": d, "split": split, "prefix": prefix, "sheet": sheet, "ph": ph,
        "pheno": write_table(pheno, d / "pheno.tsv"), "covar": write_table(covar, d / "covar.tsv"),
        "covar_df": covar.reindex(samples), "ids": ids, "samples": samples, "dosage": dos,
    }


# declared variables only (rule 6): an expression such as CAST(samples.sex = 'F' AS INT) is refused
COVS = ["phenotypes.age", "phenotypes.bmi", "phenotypes.smoker"]


def _df(result) -> pd.DataFrame:
    return result.to_pandas().set_index("variant_id")


# -- hwe_p -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "mpc"])
def test_hwe_p_equals_plink2_hardy(fed1126, pooled, mode):
    ref = plink2_hardy(pooled["prefix"], pooled["dir"] / f"hardy_{mode}")
    res = fed1126.sql(f"SELECT variant_id, hwe_p(dosage) AS p, het_count(dosage) AS het, hom_ref_count(dosage) AS hom_ref, "
                          f"hom_alt_diploid_count(dosage) AS hom_alt FROM genotypes WHERE {WHERE} GROUP BY variant_id", combine=mode)
    got = _df(res)
    j = got.join(ref, how="inner")
    assert len(j) == len(ref) > 3000
    # plink2's A1 is REF here: HOM_A1 = hom-ref, TWO_AX = hom-alt
    assert (j["A1"] == j.index.str.split(":").str[2]).all()
    assert (j["het"] == j["HET_A1_CT"]).all() and (j["hom_ref"] == j["HOM_A1_CT"]).all() and (j["hom_alt"] == j["TWO_AX_CT"]).all()
    assert rel(j["p"], j["P"]) < 1e-5
    assert (j["p"] < 1e-10).sum() > 10  # the region has real departures from HWE: a test that can fail


# -- gwas_linear -------------------------------------------------------------------------------------

def _linear(fed, mode="plain", covs=COVS):
    q = f"SELECT * FROM gwas_linear(phenotype => 'samples.outcome', covariates => {_arr(covs)}, variants => {_str(WHERE)})"
    return _df(fed.sql(q, combine=mode))


def _arr(xs):
    return "[" + ", ".join(_str(x) for x in xs) + "]"


def _str(x):
    return "'" + x.replace("'", "''") + "'"


def test_gwas_linear_equals_plink2_and_exact_pooled_ols(fed1126, pooled):
    got = _linear(fed1126)
    ref = plink2_glm(pooled["prefix"], pooled["pheno"], "outcome", pooled["covar"], ["age", "bmi", "smoker"], pooled["dir"] / "lin")
    ok = ref[ref["ERRCODE"].isna() | (ref["ERRCODE"] == ".")].index
    j = got.loc[ok].join(ref)
    assert len(j) > 2000
    assert (j["n"] == j["OBS_CT"]).all()  # samples with a NULL bmi are dropped, as plink2 does
    for a, b in (("beta", "BETA"), ("se", "SE"), ("t", "T_STAT"), ("p", "P")):
        assert rel(j[a], j[b]) < 1e-5, a  # plink2 prints 6 significant digits
    # exact: numpy least squares on the pooled dosage matrix
    sheet = pooled["sheet"].reindex(pooled["samples"])
    c = pooled["covar_df"].to_numpy(np.float64)
    y = sheet["outcome"].to_numpy(np.float64)
    keep = ~np.isnan(c).any(axis=1)
    pick = np.array([i for i, v in enumerate(pooled["ids"]) if v in set(ok[:300])])
    exact = ols(pooled["dosage"][pick][:, keep], y[keep], c[keep])
    mine = got.loc[[pooled["ids"][i] for i in pick]]
    for k in ("beta", "se", "p"):
        assert rel(mine[k], exact[k]) < 1e-8, k
    assert got["p"].min() < 1e-3 and got["p"].notna().sum() == len(got) - got["p"].isna().sum()


def test_gwas_linear_same_in_mpc_and_he(fed1126):
    plain = _linear(fed1126, "plain", COVS[:2])
    for mode in ("mpc", "he"):
        sec = _linear(fed1126, mode, COVS[:2])
        assert list(sec.index) == list(plain.index)
        ok = plain["p"].notna()
        assert (sec["n"] == plain["n"]).all()
        for k in ("beta", "se", "p"):
            assert rel(sec.loc[ok, k], plain.loc[ok, k]) < 1e-6, (mode, k)


# -- gwas_logistic -----------------------------------------------------------------------------------

def test_gwas_logistic_equals_plink2(fed1126, pooled):
    q = f"SELECT * FROM gwas_logistic(phenotype => 'samples.status', covariates => ['phenotypes.age', 'phenotypes.bmi'], variants => {_str(WHERE)})"
    res = fed1126.sql(q)
    got = _df(res)
    ref = plink2_glm(pooled["prefix"], pooled["pheno"], "status", pooled["covar"], ["age", "bmi"], pooled["dir"] / "log", logistic=True)
    okp = ref["P"].notna()
    # every variant plink2 fits (no separation) converges here too, and vice versa up to plink2's
    # extra covariate-correlation checks
    assert got.loc[ref.index[okp], "converged"].all()
    assert set(got.index[got["status"] == "separation"]) <= set(ref.index[ref["ERRCODE"].fillna("").str.contains("SEPARATION|CONST")])
    j = got.loc[ref.index[okp]].join(ref)
    assert len(j) > 1000
    assert rel(j["odds_ratio"], j["OR"]) < 1e-4
    assert rel(j["se"], j["LOG(OR)_SE"]) < 1e-4
    np.testing.assert_allclose(j["z"], j["Z_STAT"], rtol=1e-4, atol=1e-4)
    # plink2 stops Newton earlier than machine precision: its own p differs from the exact MLE's by
    # up to ~1.5e-4 relative (measured against the oracle below), ours by < 1e-7
    assert rel(j["p"], j["P"]) < 3e-4
    sheet = pooled["sheet"].reindex(pooled["samples"])
    c = pooled["covar_df"][["age", "bmi"]].to_numpy(np.float64)
    keep = ~np.isnan(c).any(axis=1)
    pos = {v: i for i, v in enumerate(pooled["ids"])}
    some = list(j.index[:150])
    exact = logistic(pooled["dosage"][[pos[v] for v in some]][:, keep], sheet["status"].to_numpy(np.float64)[keep], c[keep])
    for k in ("beta", "se", "p"):
        assert rel(got.loc[some, k], exact[k]) < 1e-6, k
    assert res.provenance.details["newton_rounds"] <= 12  # all variants per round: few rounds


def test_gwas_logistic_same_in_mpc(fed1126):
    q = "SELECT * FROM gwas_logistic('samples.status', covariates => ['phenotypes.age'], chrom => '22', stop => 30000000)"
    plain, sec = _df(fed1126.sql(q, combine="plain")), _df(fed1126.sql(q, combine="mpc"))
    assert list(plain.index) == list(sec.index) and (plain["status"] == sec["status"]).all()
    ok = plain["converged"]
    assert ok.sum() > 50
    for k in ("beta", "se", "p"):
        assert rel(sec.loc[ok, k], plain.loc[ok, k]) < 1e-6, k


# -- assoc_case_control ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "he"])
def test_assoc_case_control_equals_scipy_on_pooled_counts(fed1126, pooled, mode):
    got = _df(fed1126.sql(f"SELECT * FROM assoc_case_control(phenotype => 'status', variants => {_str(WHERE)})", combine=mode))
    status = pooled["sheet"].reindex(pooled["samples"])["status"].to_numpy()
    d = pooled["dosage"]
    idx = {v: i for i, v in enumerate(pooled["ids"])}
    checked = 0
    for vid in got.index[:400]:
        g = d[idx[vid]]
        a = np.nansum(g[status == 1])
        an1 = 2 * (~np.isnan(g[status == 1])).sum()
        c = np.nansum(g[status == 0])
        an2 = 2 * (~np.isnan(g[status == 0])).sum()
        table = np.array([[a, an1 - a], [c, an2 - c]])
        row = got.loc[vid]
        assert (row["n_case"], row["n_control"]) == ((status == 1).sum(), (status == 0).sum())
        if (table.sum(axis=0) > 0).all():
            chi2, p, *_ = sps.chi2_contingency(table, correction=False)
            assert abs(row["chi2"] - chi2) <= 1e-9 * max(1, chi2) and abs(row["p"] - p) <= 1e-9 * max(p, 1e-300)
            checked += 1
        assert abs(row["p_fisher"] - sps.fisher_exact(table).pvalue) <= 1e-9
    assert checked > 200


# -- PCA ---------------------------------------------------------------------------------------------

def test_pca_matches_scikit_allel_and_scores_stay_at_nodes(fed1126, fed_dir_1126, pooled):
    k = 4
    res = fed1126.sql(f"SELECT * FROM pca(k => {k}, min_maf => 0.05, name => 'pcs', variants => {_str(WHERE)}, "
                      "prune_r2 => 0.2, prune_window_kb => 500)")
    load = _df(res)
    assert res.provenance.details["scores_table"] == "pcs"
    # LD pruning dropped variants (correlated pairs within 500 kb), using federation-wide r²
    maf = np.minimum(load["alt_freq"], 1 - load["alt_freq"])
    assert (maf >= 0.05).all() and res.provenance.details["ld_pruned_variants"] == len(load)
    unpruned = fed1126.sql(f"SELECT count(*) AS n FROM pca(k => 1, min_maf => 0.05, name => 'pcs_tmp', variants => {_str(WHERE)})").to_pandas()
    assert len(load) < unpruned["n"][0]
    # the pooled reference on exactly the variants the federation used
    ids = list(load.index)
    pos = {v: i for i, v in enumerate(pooled["ids"])}
    gn = pooled["dosage"][[pos[v] for v in ids]]
    ref, model = allel.pca(gn, n_components=k, scaler="patterson")
    # node-local scores, read as each node's steward would
    files = sorted({p.resolve() for p in fed_dir_1126.glob("*/store/*/derived/pcs.parquet")})
    assert len(files) == 3
    scores = pd.concat([pq.read_table(p).to_pandas() for p in files])
    scores = scores.set_index("sample_id").reindex(pooled["samples"])
    assert scores.notna().all().all() and len(scores) == 1126
    for j in range(k):
        r = np.corrcoef(scores[f"pc{j + 1}"], ref[:, j])[0, 1]
        assert abs(r) > 0.99, (j, r)
    np.testing.assert_allclose(res.provenance.details["explained_variance_ratio"], model.explained_variance_ratio_, rtol=1e-3)
    # the scores are a table at every node: usable as covariates, and in aggregates
    lin = fed1126.sql("SELECT * FROM gwas_linear('samples.outcome', covariates => ['pcs.pc1', 'pcs.pc2'], chrom => '22')").to_pandas()
    assert lin["p"].notna().sum() > 500
    by_pop = fed1126.sql("SELECT population, avg(pc1) AS pc1, avg(pc2) AS pc2, count(*) AS n FROM samples JOIN pcs USING (sample_id) GROUP BY population").to_pandas()
    assert len(by_pop) >= 10
    # and no sample-level score ever reaches the coordinator
    with pytest.raises(DisclosureError):
        fed1126.sql("SELECT sample_id, pc1 FROM pcs")


# -- LD and population genetics ----------------------------------------------------------------------

def test_ld_r2_equals_pooled_correlation(fed1126, pooled):
    got = fed1126.sql("SELECT * FROM ld_r2(chrom => '22', stop => 25000000, window_kb => 200)").to_pandas()
    assert len(got) > 100 and (got["distance"] <= 200_000).all()
    pos = {v: i for i, v in enumerate(pooled["ids"])}
    d = pooled["dosage"]
    for _, row in got.sample(100, random_state=1).iterrows():
        a, b = d[pos[row["variant_id_a"]]], d[pos[row["variant_id_b"]]]
        if np.std(a) == 0 or np.std(b) == 0:
            assert np.isnan(row["r2"])
            continue
        assert abs(row["r2"] - np.corrcoef(a, b)[0, 1] ** 2) < 1e-10


def test_fst_and_heterozygosity_equal_scikit_allel_on_pooled(fed1126, pooled):
    sheet = pooled["sheet"].reindex(pooled["samples"])
    fst = _df(fed1126.sql("SELECT * FROM fst(population => 'population', pop1 => 'YRI', pop2 => 'CEU', chrom => '22')"))
    pos = {v: i for i, v in enumerate(pooled["ids"])}
    rows = [pos[v] for v in fst.index]
    g = allel.GenotypeArray(np.stack([pooled["dosage"][rows] >= 1, pooled["dosage"][rows] >= 2], axis=2).astype(int))
    pop = sheet["Population"].to_numpy()
    ac1 = g.count_alleles(subpop=np.flatnonzero(pop == "YRI"))
    ac2 = g.count_alleles(subpop=np.flatnonzero(pop == "CEU"))
    num, den = allel.hudson_fst(ac1, ac2)
    np.testing.assert_allclose(fst["num"], num, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fst["den"], den, rtol=1e-12, atol=1e-15)
    assert 0.05 < np.nansum(num) / np.nansum(den) < 0.3  # YRI vs CEU
    win = fed1126.sql("SELECT * FROM fst(population => 'population', pop1 => 'YRI', pop2 => 'CEU', chrom => '22', window_kb => 5000)").to_pandas()
    ref_fst, windows, counts = allel.windowed_hudson_fst(np.array([int(v.split(":")[1]) for v in fst.index]), ac1, ac2, size=5_000_000, start=1)
    keep = counts > 0
    np.testing.assert_allclose(win["fst"], ref_fst[keep], rtol=1e-10)
    assert list(win["n_variants"]) == list(counts[keep]) and list(win["start"]) == list(windows[keep][:, 0])
    het = _df(fed1126.sql("SELECT * FROM heterozygosity(chrom => '22')"))
    gd = pooled["dosage"][[pos[v] for v in het.index]]
    np.testing.assert_allclose(het["het_observed"], (gd == 1).mean(axis=1), rtol=1e-12)
    af = np.nanmean(gd, axis=1) / 2
    np.testing.assert_allclose(het["het_expected"], allel.heterozygosity_expected(np.column_stack([1 - af, af]), ploidy=2), rtol=1e-9)


# -- disclosure rules and errors ---------------------------------------------------------------------

def test_model_disclosure_rules(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_glm"), min_count=1, combine="plain",
                            min_cases=200, glm_max_param_ratio=0.33)
    lf = LocalFederation(root)
    try:
        # 108 cases < min_cases 200: every variant withheld, the count is not shown
        res = lf.fed.sql("SELECT * FROM assoc_case_control(phenotype => 'status', chrom => '22', stop => 20000000)")
        assert res.num_rows == 0 and res.provenance.details["withheld_min_cases_controls"] > 0
        # 12 parameters on ~15 samples at a node breaks nfilter.glm
        covs = ["phenotypes.age", "phenotypes.bmi", "phenotypes.ldl", "phenotypes.smoker", "samples.status"] * 2
        with pytest.raises((DisclosureError, NodeError)) as e:
            lf.fed.sql(f"SELECT * FROM gwas_linear('samples.outcome', covariates => {_arr(covs)}, samples => 'population = ''GBR''', chrom => '22')")
        assert "parameters" in str(e.value)
    finally:
        lf.close()


def test_table_function_errors(fed1126):
    fed = fed1126
    with pytest.raises(PlanningError, match="no argument 'phenotyp'"):
        fed.sql("SELECT * FROM gwas_linear(phenotyp => 'samples.outcome')")
    with pytest.raises(PlanningError, match="needs the argument phenotype"):
        fed.sql("SELECT * FROM gwas_linear(covariates => ['phenotypes.age'])")
    with pytest.raises(PlanningError, match="unknown column 'nope'"):
        fed.sql("SELECT * FROM gwas_linear('nope')")
    with pytest.raises(PlanningError, match="variants filter"):
        fed.sql("SELECT * FROM gwas_linear('samples.outcome', variants => 'sample_id = 1')")
    with pytest.raises(GenofedError, match="0/1"):
        fed.sql("SELECT * FROM assoc_case_control('samples.outcome', chrom => '22')")
    with pytest.raises(PlanningError, match="only source"):
        fed.sql("SELECT * FROM gwas_linear('samples.outcome') JOIN samples USING (sample_id)")
    # the outer query runs over the released result
    top = fed.sql("SELECT variant_id, p FROM gwas_linear('samples.outcome', chrom => '21') WHERE p < 0.05 ORDER BY p LIMIT 3").to_pandas()
    assert len(top) == 3 and top["p"].is_monotonic_increasing


def test_pca_and_ld_same_in_secure_modes(fed1126):
    q = "SELECT * FROM pca(k => 2, min_maf => 0.1, chrom => '22', name => 'pcs_secure')"
    plain = fed1126.sql(q, combine="plain")
    mpc = fed1126.sql(q, combine="mpc")
    a, b = plain.to_pandas(), mpc.to_pandas()
    assert list(a["variant_id"]) == list(b["variant_id"])
    for j in (1, 2):
        assert abs(np.corrcoef(a[f"pc{j}"], b[f"pc{j}"])[0, 1]) > 0.9999
    np.testing.assert_allclose(mpc.provenance.details["eigenvalues"], plain.provenance.details["eigenvalues"], rtol=1e-6)
    ld = "SELECT * FROM ld_r2(chrom => '22', stop => 18000000, window_kb => 100)"
    p, h = fed1126.sql(ld, combine="plain").to_pandas(), fed1126.sql(ld, combine="he").to_pandas()
    assert len(p) > 20 and p["n"].equals(h["n"])
    np.testing.assert_allclose(h["r2"].fillna(-1), p["r2"].fillna(-1), rtol=1e-12)
