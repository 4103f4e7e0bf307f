"""Ordinary work under the default production policy is not refused (issue 18, acceptance).

A federation made the way ``genofed federation init`` makes a production one (min count 5,
differencing defence on, membership gate and beacon budget on, combine ``mpc``, plain combine not
allowed) over the 1000 Genomes 1126 set on three nodes, with the ``phenotypes`` table. One
researcher runs an ordinary analysis sequence; a second researcher runs it again in reverse
order. None of these steps singles anyone out, so none may be refused:

1. counts by population, by sex, and by both;
2. allele frequencies by super-population over a region (the sample sheet has ``population``
   only, so the super-population is a CASE over it);
3. ``assoc_case_control``;
4. ``gwas_linear`` with covariates;
5. ``gwas_logistic`` with covariates;
6. ``pca`` and the PCA plot (``Federation.pca_cells`` drawn with ``Result.plot("pca")``);
7. ``ld_r2``;
8. ``fst``;
9. a differentially private count.

The per-variant steps read one region of chromosome 22 (22:16,000,000-18,999,999, 63 variants):
the node's membership gate rightly limits how many variants of a cohort one researcher gets
(about 107 for the smallest cohort here, 33 CEU at a node), and analyses of one region stay
within it whatever they compute. The PCA uses the whole chromosome (about 170 variants with a
minor allele frequency of 5 %, of cohorts of about 375 people per node), enough for the
populations to separate. Each answer is checked against the pooled data: counts and allele
counts and frequencies exactly, the analyses against exact pooled computations
(``tests/gwas_ref.py``, scikit-allel, scipy), the DP count against its announced accuracy.

A refused step does not stop the sequence (a researcher would go on with the next one); the test
fails at the end with the first refusal, and lists every refused step with the node's rule and
message.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import allel
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from gwas_ref import logistic, ols, rel
from oracle import to_pooled_sql
from rule5_ref import cells_withheld, rule5_withheld
from scipy import stats as sps

import genofed
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import (
    FederationConfig,
    add_researcher,
    down,
    init_federation,
    up,
)
from genofed.engine.errors import DisclosureError
from genofed.privacy.membership import RiskPolicy

pytestmark = [pytest.mark.realdata]

CHROM, START, STOP = "22", 16_000_000, 18_999_999
REGION = f"chrom => '{CHROM}', start => {START}, stop => {STOP}"
SUPER_POP = ("CASE WHEN s.population IN ('ACB', 'ASW', 'LWK', 'YRI') THEN 'AFR' "
             "WHEN s.population IN ('CLM', 'MXL', 'PUR') THEN 'AMR' "
             "WHEN s.population IN ('CHB', 'JPT') THEN 'EAS' "
             "WHEN s.population IN ('CEU', 'GBR') THEN 'EUR' "
             "WHEN s.population = 'GIH' THEN 'SAS' END")
COVARIATES = ["phenotypes.age", "phenotypes.bmi", "phenotypes.smoker"]
COVS_SQL = "[" + ", ".join(f"'{c}'" for c in COVARIATES) + "]"

Q_COUNTS = [  # by population, by sex, and the two-way table
    "SELECT population, count(*) AS n FROM samples GROUP BY population ORDER BY population",
    "SELECT sex, count(*) AS n FROM samples GROUP BY sex ORDER BY sex",
    "SELECT population, sex, count(*) AS n FROM samples GROUP BY ALL ORDER BY population, sex",
]
Q_AF = (f"SELECT {SUPER_POP} AS super_pop, g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
        "allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) "
        f"WHERE g.chrom = '{CHROM}' AND g.pos BETWEEN {START} AND {STOP} GROUP BY ALL ORDER BY g.variant_id, super_pop")
Q_ASSOC = f"SELECT * FROM assoc_case_control(phenotype => 'phenotypes.status', {REGION})"
Q_LINEAR = f"SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', covariates => {COVS_SQL}, {REGION})"
Q_LOGISTIC = f"SELECT * FROM gwas_logistic(phenotype => 'phenotypes.status', covariates => {COVS_SQL}, {REGION})"
Q_LD = f"SELECT * FROM ld_r2({REGION}, window_kb => 250)"
Q_FST = f"SELECT * FROM fst(population => 'population', pop1 => 'YRI', pop2 => 'CEU', {REGION})"
Q_DP = "SELECT count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) WHERE p.smoker = 1"


# -- the federation and the pooled oracle -----------------------------------------------------------

@pytest.fixture(scope="module")
def production(tmp_path_factory, data_1126, phenotypes_1126):
    """A production federation as ``federation init`` writes it (every default), with a second
    researcher ``bob``; yields the root and the two researchers' connections."""
    root = tmp_path_factory.mktemp("fed_ordinary")
    init_federation(root, data_1126["vcf"], data_1126["samples"], data_1126["split"], clinical={"phenotypes": phenotypes_1126})
    fed = FederationConfig.load(root)
    assert fed.combine == "mpc" and fed.min_count == 5
    for n in fed.nodes:  # the gates are on: nothing here is history_gates_off()
        cfg = NodeConfig.load(root / n.config)
        assert cfg.min_count == 5 and cfg.differencing and not cfg.allow_plain
        assert cfg.risk == RiskPolicy() and cfg.risk.max_membership_power == 0.10 and cfg.risk.beacon_cap == 0.10
    bob_token = add_researcher(root, "bob")
    alice = bob = None
    try:
        up(root)
        alice = genofed.connect(root, timeout=120)
        bob = genofed.connect(root, timeout=120, token=bob_token)
        yield root, alice, bob
    finally:
        for f in (alice, bob):
            if f is not None:
                f.close()
        down(root)


@pytest.fixture(scope="module")
def pooled(pooled1126, data_1126):
    """The pooled data: sample-level phenotypes (with each sample's node, from the split), and
    dosage matrices [variant, sample] of chromosome 22 and the region."""
    con = pooled1126
    people = con.sql("SELECT s.sample_id, s.population, p.age, p.bmi, p.ldl, p.smoker, p.status "
                     "FROM samples s JOIN phenotypes p USING (sample_id) ORDER BY s.sample_id").df().set_index("sample_id")
    split = pd.read_csv(data_1126["split"], sep="\t", index_col=0)["node"]
    people["node"] = split.reindex(people.index).to_numpy()
    assert people["node"].notna().all()
    g = con.sql(f"SELECT variant_id, pos, sample_id, dosage FROM genotypes WHERE chrom = '{CHROM}'").df()
    chrom = g.pivot(index="variant_id", columns="sample_id", values="dosage").reindex(columns=people.index).astype(np.float64)
    pos = g.groupby("variant_id")["pos"].first()
    chrom = chrom.loc[sorted(chrom.index, key=lambda v: (pos[v], v))]
    region = chrom.loc[[v for v in chrom.index if START <= pos[v] <= STOP]]
    assert 50 <= len(region) <= 100  # a region within the membership gate's budget for the smallest cohort
    return {"con": con, "people": people, "dosage": region, "chrom": chrom}


# -- the steps ----------------------------------------------------------------------------------

def _by_variant(res) -> pd.DataFrame:
    return res.to_pandas().set_index("variant_id")


def _released_variants(got: pd.DataFrame, res, pooled, phenotype: str, covariates: list[str]) -> list[str]:
    """Rule 5 (mpc): the region's variants whose cells all have at least 5 carriers of each allele
    federation-wide, predicted from the pooled genotypes (``tests/rule5_ref.py``); the federation
    releases exactly those, and counts the others as withheld. Returns them (in region order)."""
    people = pooled["people"]
    analysed = people[[phenotype, *covariates]].notna().all(axis=1).to_numpy()
    y = people[phenotype].to_numpy(np.float64)
    withheld = rule5_withheld(pooled["dosage"].to_numpy(), y, analysed, people["node"].to_numpy(), "mpc")
    assert (~withheld).sum() >= 10, "the region keeps variants the rule releases"
    released = [v for v, w in zip(pooled["dosage"].index, withheld, strict=True) if not w]
    assert sorted(got.index) == sorted(released)
    assert res.suppressed == int(withheld.sum())
    return released


def step_counts(fed, pooled, ctx) -> None:
    for q in Q_COUNTS:
        res = fed.sql(q)
        assert res.provenance.combine == "mpc" and res.suppressed == 0
        got = [tuple(r.values()) for r in res.to_arrow().to_pylist()]
        assert got == [tuple(r) for r in pooled["con"].sql(q).fetchall()]  # exact
        assert sum(r[-1] for r in got) == 1126


def step_allele_frequencies(fed, pooled, ctx) -> None:
    """Exact on every released cell; the cells withheld are those rule 5 predicts (an allele
    count below the minimum, 0 included, federation-wide), computed from the pooled genotypes."""
    res = fed.sql(Q_AF)
    got = res.to_pandas()
    ref = pooled["con"].sql(to_pooled_sql(Q_AF)).df()
    assert len(ref) == 5 * len(pooled["dosage"])
    people = pooled["people"]
    con = pooled["con"]
    con.register("_r5_node", people[["node"]].reset_index())
    per_node = con.sql(f"SELECT {SUPER_POP} AS super_pop, g.variant_id, n.node, sum(g.dosage) AS ac, 2 * count(g.dosage) AS an "
                       "FROM genotypes g JOIN samples s USING (sample_id) JOIN _r5_node n USING (sample_id) "
                       f"WHERE g.chrom = '{CHROM}' AND g.pos BETWEEN {START} AND {STOP} GROUP BY ALL").df()
    withheld = cells_withheld(per_node, ["super_pop", "variant_id"], "mpc")
    assert 0 < len(withheld) < len(ref) and res.suppressed == len(withheld)
    keep = [(a, b) not in withheld for a, b in zip(ref["super_pop"], ref["variant_id"], strict=True)]
    ref = ref[keep].reset_index(drop=True)
    assert len(got) == len(ref)
    assert list(got["super_pop"]) == list(ref["super_pop"]) and list(got["variant_id"]) == list(ref["variant_id"])
    assert (got["ac"].to_numpy() == ref["ac"].to_numpy()).all() and (got["an"].to_numpy() == ref["an"].to_numpy()).all()
    assert (got["af"].to_numpy() == ref["af"].to_numpy()).all()  # exact: the same Σac / Σan


def step_assoc_case_control(fed, pooled, ctx) -> None:
    res = fed.sql(Q_ASSOC)
    got = _by_variant(res)
    _released_variants(got, res, pooled, "status", [])
    status = pooled["people"]["status"].to_numpy()
    d = pooled["dosage"]
    checked = 0
    for vid, row in got.iterrows():
        g = d.loc[vid].to_numpy()
        case, ctrl = g[status == 1], g[status == 0]
        a, c = np.nansum(case), np.nansum(ctrl)
        an1, an2 = 2 * np.isfinite(case).sum(), 2 * np.isfinite(ctrl).sum()
        assert (row["n_case"], row["n_control"]) == ((status == 1).sum(), (status == 0).sum())
        assert row["alt_freq_case"] == pytest.approx(a / an1, rel=1e-12) and row["alt_freq_control"] == pytest.approx(c / an2, rel=1e-12)
        table = np.array([[a, an1 - a], [c, an2 - c]])
        if (table.sum(axis=0) > 0).all():
            chi2, p, *_ = sps.chi2_contingency(table, correction=False)
            assert row["chi2"] == pytest.approx(chi2, rel=1e-9, abs=1e-12) and row["p"] == pytest.approx(p, rel=1e-9)
            checked += 1
        assert row["p_fisher"] == pytest.approx(sps.fisher_exact(table).pvalue, rel=1e-9)
    assert checked >= 10


def _design(pooled, phenotype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Complete cases (phenotype and covariates non-NULL): y, covariates, dosage [variant, sample]."""
    people = pooled["people"]
    cols = [phenotype, *[c.split(".")[1] for c in COVARIATES]]
    keep = people[cols].notna().all(axis=1).to_numpy()
    y = people[phenotype].to_numpy(np.float64)[keep]
    c = people[cols[1:]].to_numpy(np.float64)[keep]
    return y, c, pooled["dosage"].to_numpy()[:, keep]


def step_gwas_linear(fed, pooled, ctx) -> None:
    res = fed.sql(Q_LINEAR)
    got = _by_variant(res)
    released = _released_variants(got, res, pooled, "ldl", [c.split(".")[1] for c in COVARIATES])
    y, c, g = _design(pooled, "ldl")
    keep = pooled["dosage"].index.isin(released)
    g = g[keep]
    got = got.loc[released]
    assert (got["n"] == len(y)).all()
    exact = ols(g, y, c)
    ok = np.isfinite(exact["beta"])
    assert ok.sum() >= 10 and np.array_equal(ok, got["beta"].notna().to_numpy())
    for k in ("beta", "se", "p"):
        assert rel(got[k].to_numpy()[ok], exact[k][ok]) < 1e-8, k


def step_gwas_logistic(fed, pooled, ctx) -> None:
    res = fed.sql(Q_LOGISTIC)
    got = _by_variant(res)
    released = _released_variants(got, res, pooled, "status", [c.split(".")[1] for c in COVARIATES])
    y, c, g = _design(pooled, "status")
    g = g[pooled["dosage"].index.isin(released)]
    got = got.loc[released]
    assert (got["n"] == len(y)).all() and (got["n_case"] == int(y.sum())).all()
    ok = (got["status"] == "ok").to_numpy() & got["converged"].to_numpy(bool)
    assert ok.sum() >= 10  # the variants rule 5 releases have carriers among cases and controls
    exact = logistic(g[ok], y, c)
    for k in ("beta", "se", "p"):
        assert rel(got[k].to_numpy()[ok], exact[k]) < 1e-6, k


def step_pca_and_plot(fed, pooled, ctx) -> None:
    name = f"pcs_{ctx['who']}"
    res = fed.sql(f"SELECT * FROM pca(k => 2, min_maf => 0.05, name => '{name}', chrom => '{CHROM}')")
    load = _by_variant(res)
    assert res.provenance.details["scores_table"] == name and len(load) > 100
    # the pooled PCA on exactly the variants the federation used
    ref, model = allel.pca(pooled["chrom"].loc[load.index].to_numpy(), n_components=2, scaler="patterson")
    np.testing.assert_allclose(res.provenance.details["explained_variance_ratio"], model.explained_variance_ratio_, rtol=1e-3)
    # the scores stay at the nodes: read them as each node's steward would
    files = sorted({p.resolve() for p in ctx["root"].glob(f"*/store/*/derived/{name}.parquet")})
    assert len(files) == 3
    scores = pd.concat([pq.read_table(p).to_pandas() for p in files]).set_index("sample_id").reindex(pooled["people"].index)
    assert scores.notna().all().all()
    for j in range(2):
        assert abs(np.corrcoef(scores[f"pc{j + 1}"], ref[:, j])[0, 1]) > 0.99, j
    # the plot: binned scores per population, cells below the minimum count withheld federation-wide
    bins = 30
    cells = fed.pca_cells(name, group="population", bins=bins)
    table = cells.to_pandas()
    assert len(table) > 0 and (table["n"] >= 5).all()
    # the same cells from the node-local scores, pooled
    sc = scores.join(pooled["people"]["population"])
    centre = {}
    for axis in ("pc1", "pc2"):
        m, sd = sc[axis].mean(), sc[axis].std(ddof=1)
        w, lo = 8 * sd / bins, m - 4 * sd
        centre[axis] = lo + w * (np.floor((sc[axis] - lo) / w) + 0.5)
    ref_cells = pd.DataFrame({"group": sc["population"], "pc1": centre["pc1"], "pc2": centre["pc2"]}).value_counts()
    ref_cells = ref_cells[ref_cells >= 5]
    assert len(table) == len(ref_cells)
    for _, row in table.iterrows():
        hit = [n for (grp, x, y), n in ref_cells.items() if grp == row["group"] and abs(x - row["pc1"]) < 1e-6 and abs(y - row["pc2"]) < 1e-6]
        assert hit == [row["n"]], row.to_dict()
    fig = cells.plot("pca", group="group", count="n")
    out = ctx["root"] / f"pca_{ctx['who']}.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000


def step_ld_r2(fed, pooled, ctx) -> None:
    got = fed.sql(Q_LD).to_pandas()
    d = pooled["dosage"]
    n_pairs = sum(1 for i, a in enumerate(d.index) for b in d.index[i + 1:] if int(b.split(":")[1]) - int(a.split(":")[1]) <= 250_000)
    assert len(got) == n_pairs > 100
    assert (got["n"] == 1126).all()
    for _, row in got.iterrows():
        a, b = d.loc[row["variant_id_a"]].to_numpy(), d.loc[row["variant_id_b"]].to_numpy()
        if np.std(a) == 0 or np.std(b) == 0:
            assert np.isnan(row["r2"])
        else:
            assert abs(row["r2"] - np.corrcoef(a, b)[0, 1] ** 2) < 1e-10


def step_fst(fed, pooled, ctx) -> None:
    """Hudson's Fst equals scikit-allel's on the variants whose YRI and CEU allele counts both pass
    rule 5 (each allele at least 5 copies in each population, federation-wide; 0 fails), and only
    on those."""
    res = fed.sql(Q_FST)
    got = _by_variant(res)
    pop = pooled["people"]["population"].to_numpy()
    region = pooled["dosage"]
    ok = np.ones(len(region), bool)
    for p in ("YRI", "CEU"):
        x = region.to_numpy()[:, pop == p]
        alt = np.nansum(x, axis=1)
        ok &= (alt >= 5) & (2 * (~np.isnan(x)).sum(axis=1) - alt >= 5)
    assert 0 < ok.sum() < len(region)
    assert sorted(got.index) == sorted(region.index[ok])
    d = region.loc[got.index].to_numpy()
    gt = allel.GenotypeArray(np.stack([d >= 1, d >= 2], axis=2).astype(int))
    num, den = allel.hudson_fst(gt.count_alleles(subpop=np.flatnonzero(pop == "YRI")), gt.count_alleles(subpop=np.flatnonzero(pop == "CEU")))
    np.testing.assert_allclose(got["num"], num, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["den"], den, rtol=1e-12, atol=1e-15)


def step_dp_count(fed, pooled, ctx) -> None:
    res = fed.sql(Q_DP, epsilon=1.0)
    truth = int((pooled["people"]["smoker"] == 1).sum())
    nodes = res.provenance.details["dp"]["nodes"]
    assert len(nodes) == 3
    acc = sum(p["accuracy"] for p in nodes.values())  # each node's 95 % half-width
    assert abs(int(res.to_pandas()["n"].iloc[0]) - truth) <= 2 * acc


STEPS = [
    ("counts by population and sex", step_counts),
    ("allele frequencies by super-population", step_allele_frequencies),
    ("assoc_case_control", step_assoc_case_control),
    ("gwas_linear", step_gwas_linear),
    ("gwas_logistic", step_gwas_logistic),
    ("pca and the PCA plot", step_pca_and_plot),
    ("ld_r2", step_ld_r2),
    ("fst", step_fst),
    ("DP count", step_dp_count),
]


def _work(fed, pooled, ctx: dict[str, Any], steps) -> None:
    """Run the steps in order; a refused step does not stop the others. Fails with the first
    refusal (a :class:`DisclosureError`), noting every refused step, its rule and message."""
    refused: list[tuple[str, DisclosureError]] = []
    log = []
    for name, step in steps:
        t0 = time.monotonic()
        try:
            step(fed, pooled, ctx)
            log.append(f"  {name}: answered ({time.monotonic() - t0:.1f} s)")
        except DisclosureError as e:
            refused.append((name, e))
            log.append(f"  {name}: REFUSED, rule {e.rule!r}: {e}")
    print(f"ordinary work of {ctx['who']}:\n" + "\n".join(log))
    if refused:
        first = refused[0][1]
        first.add_note(f"issue 18: {len(refused)} ordinary step(s) refused for {ctx['who']}:\n" + "\n".join(log))
        raise first


def test_ordinary_work_in_order(production, pooled):
    root, alice, _ = production
    _work(alice, pooled, {"who": "researcher", "root": Path(root)}, STEPS)


def test_ordinary_work_in_reverse_order_second_researcher(production, pooled):
    root, _, bob = production
    _work(bob, pooled, {"who": "bob", "root": Path(root)}, STEPS[::-1])
