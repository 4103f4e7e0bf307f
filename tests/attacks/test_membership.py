"""Attack: membership inference from released allele frequencies and from a beacon.

Real 1000 Genomes genotypes, real attacks (genofed.privacy.reid):

* Homer et al. 2008 / Sankararaman et al. 2009: the pool's allele frequencies are released; the
  attacker holds a target's genotypes and reference frequencies and runs the LR test. Releasing
  all ~23k common SNVs of a 100-person pool identifies every member at FPR 0.001; releasing only
  ``max_variants(100)`` of them keeps the power near the 0.10 cap.
* Shringarpure & Bustamante 2015: a beacon answers "is this allele in the cohort?"; querying a
  target's rarest alleles identifies members within a handful of queries. A per-researcher
  budget (Raisaro et al. 2017, simple form; ``BeaconBudget``) keeps the power <= 0.10.

Both attacks are first shown to succeed without the defence, so the defended assertions can fail.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import need, shared_data

from genofed.privacy import reid

pytestmark = pytest.mark.realdata

N_POOL = 100
FPR_POOL = 0.001
FPR_BEACON = 0.05  # the paper's
CAP = 0.10


def _read_dosages(path, samples=None, *, biallelic_autosomal_snvs=False) -> np.ndarray:
    """Individuals x variants dosages (float32, NaN missing) read with cyvcf2."""
    from cyvcf2 import VCF

    vcf = VCF(str(path), gts012=True, samples=samples)
    rows = []
    for rec in vcf:
        if biallelic_autosomal_snvs and (
            len(rec.ALT) != 1 or not rec.is_snp or rec.CHROM in ("X", "Y")
        ):
            continue
        rows.append(rec.gt_types.astype(np.int8))  # copy: cyvcf2 reuses the buffer
    vcf.close()
    g = np.array(rows).T.astype(np.float32)
    g[g == 3] = np.nan  # gts012: 3 = unknown
    return g


# ------------------------------------------------------------------------------------------
# Homer / Sankararaman: released pool frequencies


@pytest.fixture(scope="module")
def eur_peddy():
    """The 503 EUR samples of the 2504 x 23,770 peddy site matrix (common SNVs genome-wide)."""
    d = shared_data()
    vcf = need(d / "1kg_2504_peddy" / "peddy_1kg_2504x23770.vcf.gz")
    panel = need(d / "panel" / "1kg_phase3_2504_panel.tsv")
    with open(panel, newline="") as fh:
        eur = [r["sample"] for r in csv.DictReader(fh, delimiter="\t") if r["super_pop"] == "EUR"]
    g = _read_dosages(vcf, eur)
    assert g.shape == (503, 23770)
    return g


@pytest.fixture(scope="module")
def pool_split(eur_peddy):
    g = eur_peddy
    perm = np.random.default_rng(2008).permutation(g.shape[0])
    pool, held_out, ref = perm[:N_POOL], perm[N_POOL : N_POOL + 150], perm[N_POOL + 150 :]
    return {
        "members": g[pool],
        "non_members": g[held_out],  # EUR, in neither the pool nor the reference
        "p_pool": reid.allele_frequencies(g[pool]),  # the release
        "p_ref": reid.allele_frequencies(g[ref]),  # the attacker's reference: other EUR
        "n_ref": len(ref),
    }


def test_pool_frequencies_identify_members(pool_split):
    s = pool_split
    est = reid.membership_power(
        s["members"], s["p_pool"], s["p_ref"], s["non_members"], FPR_POOL, n_pool=N_POOL
    )
    # threshold: normal fit of the 150 held-out non-members (too few for a 0.1 % tail)
    assert est.method == "heldout-normal" and est.n_variants == 23770
    # releasing everything: every member is identified (measured: 1.00)
    assert est.power > 0.95
    assert reid.analytic_power(est.n_variants, N_POOL, s["n_ref"], FPR_POOL) > 0.99
    # and the non-members are not (held-out FPR at the threshold)
    lam = reid.lr_statistic(s["non_members"], s["p_pool"], s["p_ref"], n_pool=N_POOL)
    assert np.mean(lam > est.threshold) <= 0.02


def test_analytic_power_matches_measured(pool_split):
    """Sankararaman's approximation against the measured power where it is informative.

    M chosen so the analytic power (with the real reference size m) is 0.2-0.95; the measured
    power is averaged over 5 random variant subsets (measured at M = 1000, 1500, 2500:
    0.28, 0.48, 0.81 against 0.34, 0.57, 0.87; slightly lower, as LD between the SNVs widens
    the real null distribution)."""
    s = pool_split
    rng = np.random.default_rng(9)
    m_all = s["p_pool"].shape[0]
    for m in (1000, 1500, 2500):
        pw = []
        for _ in range(5):
            sel = rng.choice(m_all, m, replace=False)
            pw.append(
                reid.membership_power(
                    s["members"][:, sel], s["p_pool"][sel], s["p_ref"][sel],
                    s["non_members"][:, sel], FPR_POOL, n_pool=N_POOL,
                ).power
            )
        analytic = reid.analytic_power(m, N_POOL, s["n_ref"], FPR_POOL)
        assert abs(np.mean(pw) - analytic) < 0.15, (m, pw, analytic)
    # m = infinity (the attacker knows the population frequencies) is the worst case
    assert reid.analytic_power(1500, N_POOL, None, FPR_POOL) > reid.analytic_power(
        1500, N_POOL, s["n_ref"], FPR_POOL
    )


def test_max_variants_release_keeps_power_under_cap(pool_split):
    s = pool_split
    m = reid.max_variants(N_POOL, cap=CAP, fpr=FPR_POOL)
    assert m == 327  # c^2 N with c = z_0.999 + z_0.10 = 1.809
    assert reid.analytic_power(m, N_POOL, fpr=FPR_POOL) <= CAP < reid.analytic_power(
        m + 1, N_POOL, fpr=FPR_POOL
    )
    rng = np.random.default_rng(10)
    powers = []
    for _ in range(5):
        sel = rng.choice(s["p_pool"].shape[0], m, replace=False)
        est = reid.membership_power(
            s["members"][:, sel], s["p_pool"][sel], s["p_ref"][sel],
            s["non_members"][:, sel], FPR_POOL, n_pool=N_POOL,
        )
        powers.append(est.power)
        # binomial sampling tolerance over 100 members (~3 sd of p = 0.10)
        assert est.power <= CAP + 0.09, powers
    assert np.mean(powers) <= CAP, powers  # measured 0.032 (0.01-0.05)
    # the same subset scored against non-members simulated from p_ref: the simulation has no
    # reference sampling error, LD or structure, so it overstates the risk (safe direction;
    # measured 0.18 here against 0.03 with real non-members)
    sim = reid.membership_power(
        s["members"][:, sel], s["p_pool"][sel], s["p_ref"][sel], None, FPR_POOL,
        rng=11, n_pool=N_POOL,
    )
    assert sim.method == "simulated-empirical" and sim.n_non_members == 20_000
    assert sim.power >= est.power - 0.05


# ------------------------------------------------------------------------------------------
# Shringarpure & Bustamante: a beacon


@pytest.fixture(scope="module")
def beacon_split():
    """1000 Genomes phase-3 subset (1126 samples, 22,220 biallelic autosomal SNVs).

    This set, not peddy: its sites are a random sample of phase 3, so most are rare (about
    8,300 singletons), which is what the beacon attack queries; peddy has common SNVs only.

    Split: a public reference panel (326 people; the attacker's frequencies and the budget's),
    held-out non-members (150) and the beacon (650). The reference must not contain the targets:
    with frequencies that include the target, a non-member's private allele looks as common as a
    member's, and the null model is wrong from the start (so the beacon is 650, not 1000).
    """
    d = shared_data() / "1kg_phase3_subset_1126"
    g = _read_dosages(need(d / "1kg_phase3_subset_1126.vcf.gz"), biallelic_autosomal_snvs=True)
    assert g.shape[0] == 1126 and g.shape[1] > 20_000
    perm = np.random.default_rng(2015).permutation(g.shape[0])
    ref, held_out, beacon = perm[:326], perm[326:476], perm[476:]
    ac = np.nansum(g[ref], axis=0)
    an = 2 * len(ref)
    return {
        "beacon": g[beacon],
        "non_members": g[held_out],
        "freqs": ac / an,
        "freqs_low": reid.conservative_frequencies(ac, an, 0.95),
    }


N_QUERIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_beacon_identifies_members(beacon_split):
    s = beacon_split
    curve = reid.beacon_power_curve(
        s["beacon"], s["freqs"], N_QUERIES, FPR_BEACON, non_members=s["non_members"], rng=1
    )
    power = {e.n_variants: e.power for e in curve}
    # one or two queries cannot separate (members and >= 5 % of non-members tie on all "yes");
    # from 5 rarest-first queries on, essentially every member is identified (measured 1.00)
    assert power[1] <= 0.05 and power[2] <= 0.05
    assert all(power[n] > 0.95 for n in N_QUERIES if n >= 5), power
    # the LRT itself: a member's answers are all "yes", a single "no" is strong evidence against
    yes, no = reid.beacon_log_terms(np.array([1e-3]), 650)
    assert yes[0] < 0 < no[0]
    assert reid.beacon_lrt(np.array([1.0, 0.0]), np.array([1e-3, 1e-3]), 650) == pytest.approx(
        yes[0] + no[0]
    )


def test_beacon_budget_keeps_power_under_cap(beacon_split):
    s = beacon_split
    budget = reid.BeaconBudget(len(s["beacon"]), fpr=FPR_BEACON, cap=CAP)
    assert budget.budget == pytest.approx(np.log(2))  # log(cap / fpr)
    curve = reid.beacon_power_curve(
        s["beacon"], s["freqs"], N_QUERIES, FPR_BEACON, non_members=s["non_members"], rng=1,
        budget=budget, budget_freqs=s["freqs_low"],
    )
    power = {e.n_variants: e.power for e in curve}
    # measured at most 0.07 (seeds 1, 2: <= 0.06, <= 0.09); 0.02 for the threshold's noise
    assert max(power.values()) <= CAP + 0.02, power
    assert all(e.method == "heldout-empirical-budget" for e in curve)
    # the template is copied per target: its own state is untouched, and state round-trips
    assert budget.spent == {}
    b = reid.BeaconBudget.from_dict(budget.to_dict())
    f = s["freqs_low"]
    common = int(np.argmax(f))
    rare = int(np.flatnonzero((f > 0) & (f < 1e-4))[0])
    assert b.ask("r1", float(f[rare]), True) is None  # too costly: refused, whatever the answer
    assert b.ask("r1", float(f[common]), True) is True
    state = b.to_dict()
    assert reid.BeaconBudget.from_dict(state).remaining("r1") == pytest.approx(b.remaining("r1"))
    assert b.remaining("r2") == pytest.approx(b.budget)
