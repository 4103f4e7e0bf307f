"""Synthetic-data metrics against answers computed another way: plink2 (KING-robust kinship,
allele frequencies) on a VCF cut from the real 1000 Genomes data, scikit-allel's Rogers-Huff r,
scipy's cityblock distances, scikit-learn's ROC AUC, brute-force loops and numeric integration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import need, need_tool, shared_data
from scipy import integrate
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

from genofed.genomics.synth_metrics import (
    aats,
    af_correlation,
    allele_freq,
    auc,
    auc_from_histograms,
    canary_exposure,
    curve_error,
    dcr_histogram,
    exact_copies,
    gaussian_overlap,
    king_robust,
    l1_distances,
    ld_curve,
    ld_decay,
    mia_dcr,
    nearest,
    pack_dosage,
    pca_moments,
)

BINS = [0, 10_000, 50_000, 100_000, 250_000, 500_000]


def _vcf() -> Path:
    return need(shared_data() / "1kg_phase3_subset_1126" / "1kg_phase3_subset_1126.vcf.gz")


def _load(region: str, samples: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Biallelic autosomal SNPs of the real data as (dosage int8 [n, V], chrom, pos, sample ids)."""
    bcftools = need_tool("bcftools")
    vcf = _vcf()
    view = [bcftools, "view", "-v", "snps", "-m2", "-M2", "-r", region, "-Ou", str(vcf)]
    if samples is not None:
        view[2:2] = ["-s", ",".join(samples)]
    cut = subprocess.run(view, check=True, capture_output=True).stdout
    query = [bcftools, "query", "-f", "%CHROM\t%POS\t[%GT]\n", "-"]
    text = subprocess.run(query, input=cut, check=True, capture_output=True).stdout.decode()
    names = subprocess.run([bcftools, "query", "-l", "-"], input=cut, check=True, capture_output=True).stdout.decode().split()
    chrom, pos, rows = [], [], []
    for line in text.splitlines():
        c, p, gts = line.split("\t")
        codes = np.frombuffer(gts.encode(), dtype=np.uint8).reshape(-1, 3)  # "0|1" per sample
        dose = (codes[:, 0] == ord("1")).astype(np.int8) + (codes[:, 2] == ord("1"))
        dose[codes[:, 0] == ord(".")] = -1
        chrom.append(c)
        pos.append(int(p))
        rows.append(dose)
    return np.array(rows, dtype=np.int8).T.copy(), np.array(chrom), np.array(pos), names


def _write_vcf(path: Path, g: np.ndarray, chrom: np.ndarray, pos: np.ndarray, names: list[str]) -> None:
    gt = np.array(["0/0", "0/1", "1/1", "./."])
    lines = ["##fileformat=VCFv4.2", '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    for c in np.unique(chrom):
        lines.append(f"##contig=<ID={c}>")
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *names]))
    for v in range(g.shape[1]):
        calls = gt[np.where(g[:, v] < 0, 3, g[:, v])]
        lines.append("\t".join([str(chrom[v]), str(pos[v]), f"v{v}", "A", "C", ".", "PASS", ".", "GT", *calls]))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def kg40() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """40 real samples, biallelic SNPs on chromosomes 20-22 (about 3,000)."""
    names = subprocess.run([need_tool("bcftools"), "query", "-l", str(_vcf())], check=True, capture_output=True).stdout.decode().split()
    picked = [names[i] for i in np.random.default_rng(7).choice(len(names), 40, replace=False)]
    return _load("20,21,22", sorted(picked, key=names.index))


def _with_missing(g: np.ndarray, rate: float, seed: int) -> np.ndarray:
    out = g.copy()
    out[np.random.default_rng(seed).random(g.shape) < rate] = -1
    return out


def _brute_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    both = (a64[:, None, :] >= 0) & (b64[None, :, :] >= 0)
    return (np.abs(a64[:, None, :] - b64[None, :, :]) * both).sum(axis=2)


def _random(shape: tuple[int, int], seed: int, missing: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.02, 0.6, shape[1])
    g = (rng.random(shape) < f).astype(np.int8) + (rng.random(shape) < f)
    return _with_missing(g.astype(np.int8), missing, seed + 1) if missing else g.astype(np.int8)


# --- packing and distances ---------------------------------------------------------------------


def test_packed_popcount_l1_equals_distances_and_cdist():
    a = _random((23, 300), 1, missing=0.1)
    b = _random((17, 300), 2, missing=0.05)
    ge1_a, eq2_a, called_a = pack_dosage(a)
    ge1_b, eq2_b, called_b = pack_dosage(b)
    assert ge1_a.dtype == np.uint64 and ge1_a.shape == (23, 5)
    # bit j % 64 of word j // 64, padding zero
    bits = np.unpackbits(called_a.view(np.uint8), axis=1, bitorder="little")
    assert np.array_equal(bits[:, :300], a >= 0) and not bits[:, 300:].any()
    both = called_a[:, None, :] & called_b[None, :, :]
    popcount = np.bitwise_count((ge1_a[:, None, :] ^ ge1_b[None, :, :]) & both).sum(axis=2) + np.bitwise_count((eq2_a[:, None, :] ^ eq2_b[None, :, :]) & both).sum(axis=2)
    d = l1_distances(a, b)
    assert d.dtype == np.int32
    assert np.array_equal(d, popcount)
    assert np.array_equal(d, _brute_l1(a, b))
    full_a, full_b = _random((31, 2500), 3), _random((12, 2500), 4)  # no missing: the fast path
    assert np.array_equal(l1_distances(full_a, full_b), cdist(full_a, full_b, "cityblock").astype(np.int32))


@pytest.mark.parametrize("missing", [0.0, 0.08])
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_nearest_matches_brute_force_with_lowest_index_ties(missing, chunk):
    a = _random((41, 40), 5, missing)  # few variants: many ties
    b = _random((29, 40), 6, missing)
    ref = _brute_l1(a, b)
    dist, idx = nearest(a, b, chunk=chunk)
    assert dist.dtype == np.int32 and idx.dtype == np.int64
    assert np.array_equal(dist, ref.min(axis=1)) and np.array_equal(idx, ref.argmin(axis=1))
    self_ref = _brute_l1(a, a).astype(float)
    np.fill_diagonal(self_ref, np.inf)
    dist, idx = nearest(a, a, exclude_self=True, chunk=chunk)
    assert np.array_equal(dist, self_ref.min(axis=1)) and np.array_equal(idx, self_ref.argmin(axis=1))


def test_nearest_errors_name_the_fix():
    a = _random((5, 10), 1)
    with pytest.raises(ValueError, match="same rows as a"):
        nearest(a, _random((5, 10), 2), exclude_self=True)
    with pytest.raises(ValueError, match="align them on the same variants"):
        nearest(a, _random((5, 11), 2))
    with pytest.raises(ValueError, match="recode other missing codes to -1"):
        l1_distances(np.full((2, 3), 9), a[:, :3])


# --- KING-robust against plink2 ----------------------------------------------------------------


def _plink_king(tmp_path: Path, g: np.ndarray, chrom, pos, names) -> np.ndarray:
    plink2 = need_tool("plink2")
    vcf = tmp_path / "x.vcf"
    _write_vcf(vcf, g, chrom, pos, names)
    subprocess.run([plink2, "--vcf", str(vcf), "--make-king", "square", "bin", "--out", str(tmp_path / "k")], check=True, capture_output=True)
    return np.fromfile(tmp_path / "k.king.bin", dtype=np.float64).reshape(len(names), len(names))


@pytest.mark.parametrize("missing", [0.0, 0.05])
def test_king_robust_matches_plink2_make_king(tmp_path, kg40, missing):
    g, chrom, pos, names = kg40
    assert g.shape[0] == 40 and g.shape[1] > 2000
    g = _with_missing(g, missing, 11) if missing else g
    ref = _plink_king(tmp_path, g, chrom, pos, names)
    got = king_robust(g, g)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.diag(got), 0.5)
    # a rectangular block equals the matching slice of the square matrix
    np.testing.assert_allclose(king_robust(g[:7], g[10:]), ref[:7, 10:], atol=1e-6, rtol=0)


def test_king_robust_golden_vectors():
    # unequal heterozygosity, no IBS0: 1/2 - 3 / (4 * 2) = 1/8 (the min-het denominator)
    g = np.array([[1, 1, 1, 1, 1, 0, 2, 0, 2, 0], [1, 1, 0, 2, 0, 0, 2, 0, 2, 0]], dtype=np.int8)
    assert king_robust(g[:1], g[1:])[0, 0] == pytest.approx(1 / 8)
    # missing calls are dropped pairwise; no het left for the second sample: NaN
    g = np.array([[1, 1, 0, -1], [2, 0, 0, 1]], dtype=np.int8)
    assert np.isnan(king_robust(g[:1], g[1:])[0, 0])


# --- adversarial accuracy and copies -------------------------------------------------------------


def _brute_aats(real: np.ndarray, synth: np.ndarray) -> dict[str, float]:
    tt = cdist(real, real, "cityblock")
    ss = cdist(synth, synth, "cityblock")
    np.fill_diagonal(tt, np.inf)
    np.fill_diagonal(ss, np.inf)
    ts = cdist(real, synth, "cityblock")
    d_tt, d_ts = tt.min(axis=1), ts.min(axis=1)
    d_ss, d_st = ss.min(axis=1), ts.min(axis=0)
    truth = np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(d_ts, d_tt)])
    syn = np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(d_st, d_ss)])
    return {"aats": (truth + syn) / 2, "aa_truth": truth, "aa_syn": syn}


@pytest.mark.parametrize("n_variants", [12, 400])  # 12: ties everywhere
def test_aats_matches_brute_force(n_variants):
    real = _random((60, n_variants), 21)
    synth = np.vstack([real[:10], _random((45, n_variants), 22)])
    got = aats(real, synth, chunk=16)
    ref = _brute_aats(real, synth)
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.fixture(scope="module")
def real_freqs() -> np.ndarray:
    g = _load("1,2,3,4,5,6,7,8,9,10")[0]
    f = allele_freq(g)
    return f[(f > 0.01) & (f < 0.99)][:2000]


def test_aats_copies_near_zero_and_independent_draws_near_half(real_freqs):
    rng = np.random.default_rng(3)
    f = real_freqs
    assert len(f) == 2000

    def draw(n: int) -> np.ndarray:
        return ((rng.random((n, len(f))) < f).astype(np.int8) + (rng.random((n, len(f))) < f)).astype(np.int8)

    real = draw(300)
    copies = aats(real, real[rng.permutation(300)])
    assert copies["aats"] <= 0.05
    fresh = aats(real, draw(300))
    assert abs(fresh["aats"] - 0.5) <= 0.05
    assert abs(fresh["aa_truth"] - 0.5) <= 0.1 and abs(fresh["aa_syn"] - 0.5) <= 0.1


def test_exact_copies_counts_identical_rows_missing_equal_missing():
    real = _random((50, 80), 31, missing=0.1)
    synth = _random((40, 80), 32, missing=0.1)
    synth[[0, 5, 9]] = real[[3, 3, 17]]
    synth[11] = real[20]
    near = real[30].copy()
    near[np.flatnonzero(near >= 0)[0]] = -1  # one call made missing: not a copy
    synth[12] = near
    brute = sum(any(np.array_equal(s, r) for r in real) for s in synth)
    assert brute == 4
    assert exact_copies(real, synth) == 4


# --- AUC, histograms, membership inference, canaries ----------------------------------------------


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(41)
    pos = rng.integers(0, 12, 300).astype(float)
    neg = rng.integers(0, 10, 500).astype(float)
    y = np.r_[np.ones(300), np.zeros(500)]
    assert auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    cont = rng.normal(size=200), rng.normal(0.3, size=150)
    assert auc(*cont) == pytest.approx(roc_auc_score(np.r_[np.ones(200), np.zeros(150)], np.r_[cont]), abs=1e-12)


def test_auc_from_histograms_equals_auc_on_expanded_scores_and_sums_across_nodes():
    rng = np.random.default_rng(42)
    pos_hist = rng.integers(0, 20, 15)
    neg_hist = rng.integers(0, 20, 15)
    bins = np.arange(15, dtype=float)
    expanded = auc(np.repeat(bins, pos_hist), np.repeat(bins, neg_hist))
    assert auc_from_histograms(pos_hist, neg_hist) == pytest.approx(expanded, abs=1e-12)
    # DCR histograms of two nodes summed = one histogram of the pooled distances
    d1, d2 = rng.integers(0, 40, 100), rng.integers(0, 40, 70)
    h = dcr_histogram(d1, 30) + dcr_histogram(d2, 30)
    assert h.dtype == np.int64 and len(h) == 31
    assert np.array_equal(h, dcr_histogram(np.r_[d1, d2], 30))
    assert h[30] == np.sum(np.r_[d1, d2] >= 30) and h[:30].sum() == np.sum(np.r_[d1, d2] < 30)
    # score = -DCR: reversing the bins gives the AUC of members being closer
    m, n = dcr_histogram(d1, 30), dcr_histogram(d2, 30)
    score_auc = auc(-np.minimum(d1, 30), -np.minimum(d2, 30))
    assert auc_from_histograms(m[::-1], n[::-1]) == pytest.approx(score_auc, abs=1e-12)


def test_mia_dcr_detects_memorised_members_and_not_fresh_ones():
    rng = np.random.default_rng(51)
    members = _random((80, 500), 52)
    nonmembers = _random((80, 500), 53)
    noisy = members.copy()
    flip = rng.random(noisy.shape) < 0.02
    noisy[flip] = rng.integers(0, 3, flip.sum())
    leaky = mia_dcr(members, nonmembers, noisy)
    d_mem = cdist(members, noisy, "cityblock").min(axis=1)
    d_non = cdist(nonmembers, noisy, "cityblock").min(axis=1)
    y = np.r_[np.ones(80), np.zeros(80)]
    assert leaky["auc"] == pytest.approx(roc_auc_score(y, -np.r_[d_mem, d_non]), abs=1e-12)
    assert leaky["auc"] > 0.95
    assert leaky["median_dcr_members"] == np.median(d_mem) and leaky["median_dcr_nonmembers"] == np.median(d_non)
    fresh = mia_dcr(members, nonmembers, _random((80, 500), 54))
    assert abs(fresh["auc"] - 0.5) < 0.15


def test_canary_exposure_by_hand():
    control = np.array([10.0, 12, 14, 16, 18])  # mean 14, sd sqrt(10)
    out = canary_exposure([2.0, 12.0, 20.0], control)
    np.testing.assert_allclose(out["z"], (np.array([2.0, 12, 20]) - 14) / np.sqrt(10))
    np.testing.assert_allclose(out["rank_p"], [1 / 6, 3 / 6, 6 / 6])
    assert out["detected"]  # 2 is below every control and z = -3.79
    assert not canary_exposure([9.0], control)["detected"]  # below every control but z = -1.58
    assert not canary_exposure([-100.0], [-200.0, 0, 0, 0, 0, 1])["detected"]  # z low, a control closer
    with pytest.raises(ValueError, match="at least two control canaries"):
        canary_exposure([1.0], [2.0])


# --- allele frequencies --------------------------------------------------------------------------


def test_allele_freq_matches_plink2_freq(tmp_path, kg40):
    plink2 = need_tool("plink2")
    g, chrom, pos, names = kg40
    g = _with_missing(g, 0.05, 61)
    g[:, 0] = -1  # nobody called: NaN
    _write_vcf(tmp_path / "x.vcf", g, chrom, pos, names)
    subprocess.run([plink2, "--vcf", str(tmp_path / "x.vcf"), "--freq", "--out", str(tmp_path / "f")], check=True, capture_output=True)
    table = np.genfromtxt(tmp_path / "f.afreq", dtype=None, names=True, comments=None, encoding=None, deletechars="")
    ref = np.asarray(table["ALT_FREQS"], dtype=float)
    got = allele_freq(g)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-5, atol=1e-9)


def test_af_correlation_filters_then_pearson():
    rng = np.random.default_rng(71)
    x = rng.random(200)
    y = x + rng.normal(0, 0.1, 200)
    x[:20] = 0
    y[:10] = 0  # both zero: dropped
    x[50] = np.nan
    keep = np.ones(200, bool)
    keep[:10] = False
    keep[50] = False
    assert af_correlation(x, y) == pytest.approx(np.corrcoef(x[keep], y[keep])[0, 1], abs=1e-12)
    assert np.isnan(af_correlation([0.0, 0.0], [0.0, 0.0]))


# --- LD decay ------------------------------------------------------------------------------------


def _brute_ld(g, chrom, pos, bins):
    n_bins = len(bins) - 1
    s, n = np.zeros(n_bins), np.zeros(n_bins, dtype=np.int64)
    for i in range(g.shape[1]):
        for j in range(g.shape[1]):
            d = pos[j] - pos[i]
            if chrom[i] != chrom[j] or not (d > 0 or (d == 0 and j > i)) or d >= bins[-1]:
                continue
            both = (g[:, i] >= 0) & (g[:, j] >= 0)
            x, y = g[both, i].astype(float), g[both, j].astype(float)
            if x.std() == 0 or y.std() == 0 or np.unique(g[g[:, i] >= 0, i]).size < 2 or np.unique(g[g[:, j] >= 0, j]).size < 2:
                continue
            k = np.searchsorted(bins, d, side="right") - 1
            s[k] += np.corrcoef(x, y)[0, 1] ** 2
            n[k] += 1
    return s, n


@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_ld_decay_matches_brute_force_loop(missing):
    rng = np.random.default_rng(81)
    n_var = 60
    g = _random((70, n_var), 82, missing)
    g[:, 5] = 1  # constant dosage: skipped
    g[:, 9] = g[:, 8]  # perfect LD
    chrom = np.where(np.arange(n_var) < 35, "1", "2")
    pos = rng.integers(0, 300_000, n_var)
    pos[9] = pos[8]  # distance 0 counts in the first bin
    pos[20] = pos[8] + 10_000  # on an edge: the upper bin
    pos[41] = pos[40] + 500_000  # at the last edge: not counted
    got = ld_decay(g, chrom, pos, BINS, block=7)
    s, n = _brute_ld(g, chrom, pos, BINS)
    assert np.array_equal(got["pairs"], n)
    np.testing.assert_allclose(got["sum_r2"], s, rtol=1e-9, atol=1e-12)


def test_ld_decay_matches_scikit_allel_on_real_data():
    allel = pytest.importorskip("allel")
    from scipy.spatial.distance import squareform

    g, chrom, pos, _ = _load("22:16000000-30000000")
    g = _with_missing(g[:300], 0.02, 91)  # 300 real samples
    assert g.shape[1] > 200
    got = ld_decay(g, chrom, pos, BINS, block=64)
    gn = g.T.copy()
    poly = np.array([np.unique(row[row >= 0]).size > 1 for row in gn])
    r = squareform(allel.rogers_huff_r(gn[poly]).astype(np.float64), checks=False)
    p = pos[poly]
    iu = np.triu_indices(len(p), 1)
    d = np.abs(p[iu[1]] - p[iu[0]])
    r2 = r[iu] ** 2
    ok = (d < BINS[-1]) & np.isfinite(r2)
    k = np.searchsorted(BINS, d[ok], side="right") - 1
    assert np.array_equal(got["pairs"], np.bincount(k, minlength=len(BINS) - 1))
    np.testing.assert_allclose(got["sum_r2"], np.bincount(k, weights=r2[ok], minlength=len(BINS) - 1), rtol=1e-4)
    curve = ld_curve(got)
    assert np.all(curve[np.isfinite(curve)] <= 1) and curve[0] > curve[-1]  # LD decays


def test_ld_curve_and_curve_error():
    curve = ld_curve({"sum_r2": np.array([2.0, 0.0, 0.5]), "pairs": np.array([4, 0, 5])})
    np.testing.assert_allclose(curve, [0.5, np.nan, 0.1])
    assert curve_error(curve, np.array([0.3, 0.2, np.nan])) == pytest.approx(0.2)
    assert np.isnan(curve_error(curve, np.full(3, np.nan)))


# --- PCA moments and Gaussian overlap -------------------------------------------------------------


def test_pca_moments_give_means_and_covariances():
    rng = np.random.default_rng(101)
    x = rng.normal(size=(90, 3))
    labels = np.array(["EUR", "AFR", "EAS"])[rng.integers(0, 3, 90)]
    moments = pca_moments(x, labels)
    assert set(moments) == {"EUR", "AFR", "EAS"}
    for lab, (n, s, so) in moments.items():
        sel = x[labels == lab]
        assert n == len(sel)
        np.testing.assert_allclose(s / n, sel.mean(axis=0))
        np.testing.assert_allclose((so - np.outer(s, s) / n) / (n - 1), np.cov(sel.T))


def test_gaussian_overlap_matches_numeric_integration():
    def pdf1(t, m, v):
        return np.exp(-((t - m) ** 2) / (2 * v)) / np.sqrt(2 * np.pi * v)

    ref, _ = integrate.quad(lambda t: np.sqrt(pdf1(t, 0.3, 1.2) * pdf1(t, 1.9, 0.5)), -20, 20)
    assert gaussian_overlap(0.3, 1.2, 1.9, 0.5) == pytest.approx(ref, rel=1e-8)
    assert gaussian_overlap([1.0, 2.0], np.eye(2), [1.0, 2.0], np.eye(2)) == pytest.approx(1.0)

    mu1, mu2 = np.array([0.0, 0.5]), np.array([1.0, -0.5])
    c1 = np.array([[1.0, 0.4], [0.4, 0.8]])
    c2 = np.array([[0.6, -0.2], [-0.2, 1.5]])
    t = np.linspace(-9, 9, 721)
    xx, yy = np.meshgrid(t, t, indexing="ij")
    pts = np.stack([xx, yy], axis=-1)

    def pdf2(m, c):
        diff = pts - m
        q = np.einsum("...i,ij,...j->...", diff, np.linalg.inv(c), diff)
        return np.exp(-q / 2) / (2 * np.pi * np.sqrt(np.linalg.det(c)))

    step = t[1] - t[0]
    ref2 = np.sqrt(pdf2(mu1, c1) * pdf2(mu2, c2)).sum() * step * step
    got = gaussian_overlap(mu1, c1, mu2, c2)
    assert got == pytest.approx(ref2, rel=1e-6)
    assert 0 < got < 1


def test_canary_allowance_is_the_binomial_tail_at_one_percent():
    """The synthetic-release gate's allowance for canaries detected by chance: with ``n`` planted,
    a generator that memorised nothing shows Binomial(n, 1/50) detections at most, and the gate
    refuses at the first count whose upper tail is at most 1 % (oracle: scipy's binomial)."""
    from scipy.stats import binom

    from genofed.genomics.synth_audit import CANARY_ALPHA, N_CONTROLS, canary_allowance

    p = 1 / (1 + N_CONTROLS)
    assert canary_allowance(0) == 0 and canary_allowance(6) == 1 and canary_allowance(18) == 2
    for n in (1, 2, 6, 18, 60, 200):
        a = canary_allowance(n)
        assert binom.sf(a, n, p) <= CANARY_ALPHA  # refusing at a + 1 or more: a false refusal at most 1 %
        assert a == 0 or binom.sf(a - 1, n, p) > CANARY_ALPHA  # and not at a
