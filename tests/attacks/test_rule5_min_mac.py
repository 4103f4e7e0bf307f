"""Attack: per-variant statistics over a variant carried by a few people single them out
(disclosure rule 5, "a minimum minor-allele count and at least k people in every released cell").

Found by the red team on the 1000 Genomes "1126" federation: ``assoc_case_control(phenotype =>
'samples.status')`` released the allele counts of a singleton in cases and in controls, so the
one carrier's case status (0 or 1 ALT copies among the cases); a GWAS over a variant carried by
1..k-1 analysed people gives their phenotype (beta, se and n invert to it). The researcher here
tries, under plain, mpc and he:

* ``assoc_case_control`` over chromosome 22's first sites (singletons, doubletons among them);
* ``gwas_logistic`` of the binary status over the same region;
* ``gwas_linear`` with the 0/1 status as a quantitative phenotype (gy = the carriers' status);
* a region made of rare variants only (``variants => 'pos IN (...)'``);
* variants whose REF allele is the rare one (ALT frequency near 1): the REF carriers are few.

The node counts, per released cell (cases and controls; for a linear GWAS the people whose
phenotype is not the node's lowest value and those for whom it is not the highest: cases and
controls again for a 0/1 phenotype), the people carrying each allele, and the allele counts. A
variant is released only when every cell has at least k carriers of both alleles (0 fails: "no
case carries it" tells every carrier is a control) and both allele counts reach ``min_mac``.
Plain mode checks each node's own cells at the node (its partials are themselves releases);
mpc and he test the federation-wide sums inside the secure combine.

Oracle: the pooled genotypes (the ``pooled_chr22`` fixture of ``tests/conftest.py``: scikit-allel read into DuckDB), with the
carrier counts computed here with numpy, per node (the suggested split) and federation-wide. Each
test asserts that no released variant has 1..k-1 carriers of an allele in a cell, and that the
variants withheld are exactly those the rule predicts (so the test cannot pass by releasing
nothing). Ordinary work is not refused: a GWAS over common variants returns every one of them,
equal to least squares on the pooled genotypes.

History gates are off (``gates=False``): the same region is analysed many times here, which the
membership-risk gate would (rightly) stop.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LocalFederation, clone_federation
from gwas_ref import ols, rel
from rule5_ref import lanes, rule5_withheld

from genofed.engine.errors import DisclosureError

pytestmark = pytest.mark.realdata

K = 5
MODES = ["plain", "mpc", "he"]
STOP = 17_500_000  # chromosome 22 up to here: singletons, doubletons and common variants
WHERE = f"chrom = '22' AND pos <= {STOP}"
REGION = f"chrom => '22', stop => {STOP}"


@pytest.fixture(scope="module")
def fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_rule5"), min_count=K, allow_plain=True, gates=False)
    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()


@pytest.fixture(scope="module")
def chr22(pooled_chr22) -> dict:
    """Dosages [variants x samples] of chromosome 22 (NaN: missing), status, LDL, node."""
    ids = [r[0] for r in pooled_chr22.sql("SELECT variant_id FROM variants WHERE chrom = '22' ORDER BY pos, variant_id").fetchall()]
    pos = {r[0]: r[1] for r in pooled_chr22.sql("SELECT variant_id, pos FROM variants WHERE chrom = '22'").fetchall()}
    samples = [r[0] for r in pooled_chr22.sql("SELECT sample_id FROM samples ORDER BY sample_id").fetchall()]
    col = {s: i for i, s in enumerate(samples)}
    row = {v: i for i, v in enumerate(ids)}
    g = np.full((len(ids), len(samples)), np.nan)
    for v, s, d in pooled_chr22.sql("SELECT variant_id, sample_id, dosage FROM genotypes g JOIN variants v USING (variant_id) "
                                    "WHERE v.chrom = '22'").fetchall():
        if d is not None:
            g[row[v], col[s]] = d
    ph = {r[0]: r[1:] for r in pooled_chr22.sql(
        "SELECT s.sample_id, s.status, p.ldl, p.age, p.bmi, split.node, s.population FROM samples s JOIN phenotypes p USING (sample_id) "
        "JOIN split USING (sample_id)").fetchall()}
    num = np.array([[np.nan if x is None else float(x) for x in ph[s][:4]] for s in samples])
    return {"ids": ids, "pos": np.array([pos[v] for v in ids]), "g": g, "status": num[:, 0], "ldl": num[:, 1],
            "age": num[:, 2], "bmi": num[:, 3], "node": np.array([ph[s][4] for s in samples]),
            "population": np.array([ph[s][5] for s in samples])}


def predicted_withheld(d: dict, rows: np.ndarray, analysed: np.ndarray, mode: str, y: np.ndarray | None = None) -> np.ndarray:
    """Rule 5's prediction: every lane at least K (0 fails), on the federation-wide sums of the
    nodes' counts under mpc/he, on every node's own counts in plain mode (a variant one node
    withholds is withheld everywhere)."""
    return rule5_withheld(d["g"][rows], d["status"] if y is None else y, analysed, d["node"], mode)


def few_carriers_anywhere(d: dict, rows: np.ndarray, analysed: np.ndarray, mode: str, y: np.ndarray | None = None) -> np.ndarray:
    """Variants with 1..K-1 carriers of an allele in a cell (federation-wide, and at one node in
    plain mode): what must never be released."""
    g = d["g"][rows]
    y = d["status"] if y is None else y
    per_node = [lanes(g, y, analysed, d["node"] == n)[:4] for n in np.unique(d["node"])]
    scopes = [[sum(ls) for ls in zip(*per_node)]] + (per_node if mode == "plain" else [])
    return np.any([(c >= 1) & (c < K) for sc in scopes for c in sc], axis=0)


def region_rows(d: dict, stop: int = STOP) -> np.ndarray:
    return np.flatnonzero(d["pos"] <= stop)


def run(f, sql: str, mode: str):
    try:
        return f.sql(sql, combine=mode)
    except DisclosureError as e:
        pytest.fail(f"refused ({mode}) by rule {e.rule!r}: {sql}: {e}")


def check_release(d: dict, rows: np.ndarray, analysed: np.ndarray, mode: str, res, what: str, y: np.ndarray | None = None) -> None:
    got = set(res.to_arrow().column("variant_id").to_pylist())
    ids = np.array(d["ids"])[rows]
    leak = few_carriers_anywhere(d, rows, analysed, mode, y)
    leaked = sorted(set(ids[leak]) & got)
    assert not leaked, f"LEAK ({mode}) {what}: released variants carried by 1..{K - 1} people in a cell: {leaked[:5]}"
    withheld = predicted_withheld(d, rows, analysed, mode, y)
    assert withheld.any() and (~withheld).any(), "the region needs variants the rule withholds and variants it releases"
    assert got == set(ids[~withheld]), (f"{what} ({mode}): released {len(got)} variants, rule 5 predicts {int((~withheld).sum())}; "
                                        f"unexpected {sorted(got - set(ids[~withheld]))[:5]}, missing {sorted(set(ids[~withheld]) - got)[:5]}")
    assert res.suppressed == int(withheld.sum()), (what, mode, res.suppressed, int(withheld.sum()))
    if mode == "plain":  # the nodes' own withholding, counted by rule (never which variants)
        assert res.provenance.withheld_by.get("min_minor_allele", 0) >= 1, res.provenance.withheld_by


# -- the singleton carrier's case status --------------------------------------------------------------

PHRASINGS = {
    "assoc_case_control": f"SELECT * FROM assoc_case_control(phenotype => 'samples.status', {REGION})",
    "gwas_logistic": f"SELECT * FROM gwas_logistic(phenotype => 'samples.status', {REGION})",
    "gwas_linear_01": f"SELECT * FROM gwas_linear(phenotype => 'samples.status', {REGION})",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phrasing", list(PHRASINGS))
def test_per_variant_statistics_never_rest_on_a_few_carriers(fed, chr22, phrasing, mode):
    rows = region_rows(chr22)
    analysed = ~np.isnan(chr22["status"])
    assert few_carriers_anywhere(chr22, rows, analysed, "mpc").any(), "the region needs variants with 1..4 carriers"
    res = run(fed, PHRASINGS[phrasing], mode)
    check_release(chr22, rows, analysed, mode, res, phrasing)


def test_singletons_are_withheld_and_their_carriers_status_is_not_in_the_answer(fed, chr22):
    """The red team's query, pointed at a singleton carried by a case and one carried by a
    control: both withheld, and the two answers look the same."""
    g = chr22["g"]
    alt = np.nansum(g >= 1, axis=1)
    singles = np.flatnonzero((alt == 1) & (np.nansum(g, axis=1) == 1))
    who = [int(np.flatnonzero(g[i] >= 1)[0]) for i in singles]
    case = next(i for i, w in zip(singles, who) if chr22["status"][w] == 1)
    ctrl = next(i for i, w in zip(singles, who) if chr22["status"][w] == 0)
    for mode in MODES:
        seen = []
        for i in (case, ctrl):
            res = run(fed, f"SELECT * FROM assoc_case_control(phenotype => 'samples.status', chrom => '22', "
                           f"start => {chr22['pos'][i]}, stop => {chr22['pos'][i]})", mode)
            t = res.to_arrow()
            assert chr22["ids"][i] not in t.column("variant_id").to_pylist(), f"LEAK ({mode}): singleton {chr22['ids'][i]} released"
            seen.append((t.num_rows, res.suppressed))
        assert seen[0] == seen[1], f"LEAK ({mode}): a case's singleton gives {seen[0]}, a control's {seen[1]}"


@pytest.mark.parametrize("mode", MODES)
def test_a_region_of_rare_variants_releases_nothing(fed, chr22, mode):
    g = chr22["g"]
    alt = np.nansum(g >= 1, axis=1)
    rare = np.flatnonzero((alt >= 1) & (alt < K))[:40]
    assert len(rare) >= 10
    pos = ", ".join(str(int(p)) for p in chr22["pos"][rare])
    res = run(fed, f"SELECT * FROM assoc_case_control(phenotype => 'samples.status', chrom => '22', variants => 'pos IN ({pos})')", mode)
    got = set(res.to_arrow().column("variant_id").to_pylist())
    assert not got & {chr22["ids"][i] for i in rare}, f"LEAK ({mode}): rare variants released: {sorted(got)[:5]}"
    assert res.suppressed >= len(rare) - len(got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fn", ["assoc_case_control", "gwas_logistic", "gwas_linear"])
def test_variants_whose_alt_allele_everyone_carries_are_withheld(fed, chr22, fn, mode):
    """ALT frequency 1: nobody carries the REF allele (a count of 0 fails like 1..4: it tells
    every analysed person's genotype)."""
    g = chr22["g"]
    ref = np.sum((g <= 1) & ~np.isnan(g), axis=1)
    fixed = np.flatnonzero(ref == 0)
    common = np.flatnonzero(np.abs(np.nanmean(g, axis=1) / 2 - 0.5) < 0.2)[:5]
    assert len(fixed)
    pos = chr22["pos"][np.concatenate([fixed, common])]
    res = run(fed, f"SELECT * FROM {fn}(phenotype => 'samples.status', chrom => '22', "
                   f"variants => 'pos IN ({', '.join(str(int(p)) for p in pos)})')", mode)
    got = set(res.to_arrow().column("variant_id").to_pylist())
    assert not got & {chr22["ids"][i] for i in fixed}, f"LEAK ({mode}): {fn} released a variant no one carries the REF allele of"
    check_release(chr22, np.flatnonzero(np.isin(chr22["pos"], pos)), ~np.isnan(chr22["status"]), mode, res, f"{fn} over ALT-fixed variants")


@pytest.mark.parametrize("mode", MODES)
def test_variants_whose_ref_allele_is_rare_in_a_sub_cohort_are_withheld(fed, chr22, mode):
    """ALT frequency near 1 in the LWK sample: the REF allele, the minor one, is carried by 1..4
    of them; a linear GWAS of LDL over LWK alone must not release those variants."""
    g = chr22["g"]
    analysed = (chr22["population"] == "LWK") & ~np.isnan(chr22["ldl"])
    x = g[:, analysed]
    ref = np.sum((x <= 1) & ~np.isnan(x), axis=1)
    hit = np.flatnonzero((ref >= 1) & (ref < K))
    common = np.flatnonzero(np.abs(np.nanmean(x, axis=1) / 2 - 0.5) < 0.2)[:5]
    assert len(hit) >= 2
    pos = chr22["pos"][np.concatenate([hit, common])]
    res = run(fed, "SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', samples => 'samples.population = ''LWK''', "
                   f"chrom => '22', variants => 'pos IN ({', '.join(str(int(p)) for p in pos)})')", mode)
    got = set(res.to_arrow().column("variant_id").to_pylist())
    assert not got & {chr22["ids"][i] for i in hit}, f"LEAK ({mode}): a variant with 1..{K - 1} REF carriers in LWK released"
    check_release(chr22, np.flatnonzero(np.isin(chr22["pos"], pos)), analysed, mode, res, "gwas_linear over LWK", y=chr22["ldl"])


# -- ordinary work is not refused --------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_gwas_over_common_variants_returns_all_equal_to_pooled_least_squares(fed, chr22, mode):
    g = chr22["g"]
    y, c = chr22["ldl"], np.column_stack([chr22["age"], chr22["bmi"]])
    keep = ~np.isnan(y) & ~np.isnan(c).any(axis=1)
    af = np.nanmean(g, axis=1) / 2
    common = (af > 0.2) & (af < 0.8)
    # positions whose every site is common (a rare second ALT at a multi-allelic site is withheld)
    ok = [p for p in np.unique(chr22["pos"][common]) if common[chr22["pos"] == p].all()][:60]
    rows = np.flatnonzero(np.isin(chr22["pos"], ok))
    assert len(rows) >= 50 and not predicted_withheld(chr22, rows, keep, mode, y).any()
    pos = ", ".join(str(int(p)) for p in ok)
    res = run(fed, f"SELECT * FROM gwas_linear(phenotype => 'phenotypes.ldl', covariates => ['phenotypes.age', 'phenotypes.bmi'], "
                   f"chrom => '22', variants => 'pos IN ({pos})')", mode)
    got = res.to_pandas().set_index("variant_id")
    ids = [chr22["ids"][i] for i in rows]
    assert sorted(got.index) == sorted(ids) and res.suppressed == 0, f"common variants withheld ({mode})"
    ref = ols(g[rows][:, keep], y[keep], c[keep])
    for k in ("beta", "se"):
        assert rel(got.loc[ids, k].to_numpy(float), ref[k]) < 1e-6, k
