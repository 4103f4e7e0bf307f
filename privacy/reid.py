"""Genomic re-identification (membership inference) risk scoring.

Pure functions (numpy/scipy, no I/O, no node state) that measure how well an attacker who holds a
person's genotypes can tell whether that person is in a cohort, from two kinds of release:

* **Released allele frequencies** of a pool (e.g. a GWAS summary or an ``AF`` column): the
  likelihood-ratio test of Homer et al. (2008, *PLoS Genet* 4:e1000167) in the form analysed by
  Sankararaman, Obozinski, Jordan & Halperin (2009, "Genomic privacy and limits of individual
  detection in a pool", *Nat Genet* 41:965-967). :func:`lr_statistic`,
  :func:`membership_power`, :func:`analytic_power`, :func:`max_variants`.
* **A beacon** ("is this allele present in the cohort?"): the likelihood-ratio test of
  Shringarpure & Bustamante (2015, "Privacy risks from genomic data-sharing beacons",
  *Am J Hum Genet* 97:631-646). :func:`beacon_lrt`, :func:`beacon_threshold`,
  :func:`beacon_power`, :func:`beacon_power_curve`; and a per-researcher risk budget in the
  spirit of Raisaro et al. (2017, "Addressing Beacon re-identification attacks: quantification
  and mitigation of privacy risks", *J Am Med Inform Assoc* 24:799-805): :class:`BeaconBudget`.

Conventions: genotype matrices are individuals x variants alternate-allele dosages (0/1/2,
``NaN`` = missing); frequencies are alternate-allele frequencies. Thresholds at a false-positive
rate ``fpr`` are order statistics of the non-member scores chosen so that *at most* a fraction
``fpr`` of non-members is (strictly) beyond the threshold; with ties (beacon scores have atoms)
the realised false-positive rate is <= ``fpr``. See ``docs/reid-risk.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BeaconBudget",
    "RiskEstimate",
    "allele_frequencies",
    "analytic_power",
    "beacon_log_terms",
    "beacon_lrt",
    "beacon_power",
    "beacon_power_curve",
    "beacon_threshold",
    "conservative_frequencies",
    "lr_statistic",
    "max_variants",
    "membership_power",
]

#: Elements (individuals x variants) processed at once when scoring or simulating genotypes.
CHUNK_ELEMENTS = 1 << 22
#: Default sequencing-error rate of Shringarpure & Bustamante (probability that a carrier's
#: allele is missed).
DEFAULT_DELTA = 1e-6


def _stats():  # noqa: ANN202 - scipy.stats takes 0.75 s to import; most node processes never call it
    from scipy import stats

    return stats


@dataclass(frozen=True)
class RiskEstimate:
    """Measured (or simulated) power of a membership-inference attack.

    ``power``: fraction of members the attack flags at the false-positive rate ``fpr``;
    ``threshold``: the score beyond which the attack says "member"; ``n_members``: members
    attacked; ``n_variants``: variants released (Homer) or queries per target (beacon);
    ``method``: where the null distribution came from (``heldout``/``simulated``) and how the
    threshold was taken (``empirical`` order statistic, ``normal`` fit); ``n_non_members``: size
    of the null sample.
    """

    power: float
    threshold: float
    n_members: int
    n_variants: int
    method: str
    fpr: float = float("nan")
    n_non_members: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# helpers


def allele_frequencies(dosages: np.ndarray) -> np.ndarray:
    """Alternate-allele frequency per variant (column) of a dosage matrix, ignoring ``NaN``.

    Columns with no called genotype give ``NaN``.
    """
    x = np.asarray(dosages, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("dosages must be a 2-D (individuals x variants) matrix")
    called = np.isfinite(x)
    n = called.sum(axis=0)
    s = np.where(called, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / (2.0 * n), np.nan)


def conservative_frequencies(
    allele_count: np.ndarray, allele_number: np.ndarray | int, level: float = 0.95
) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound of an allele frequency.

    ``allele_count`` alternate alleles among ``allele_number`` called alleles of a reference
    panel; 0 where the count is 0. Used by :class:`BeaconBudget` so that the cost of a "yes" is
    not understated for alleles the reference saw only a few times.
    """
    ac = np.asarray(allele_count, dtype=np.float64)
    an = np.broadcast_to(np.asarray(allele_number, dtype=np.float64), ac.shape)
    with np.errstate(invalid="ignore"):
        lo = _stats().beta.ppf(1.0 - level, np.maximum(ac, 1.0), np.maximum(an - ac + 1.0, 1.0))
    return np.where(ac > 0, lo, 0.0)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _upper_threshold(null: np.ndarray, fpr: float) -> float:
    """Smallest order statistic t with #(null > t) <= fpr * len(null)."""
    s = np.sort(np.asarray(null, dtype=np.float64))
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[len(s) - 1 - k])


def _lower_threshold(null: np.ndarray, fpr: float) -> float:
    """Largest order statistic t with #(null < t) <= fpr * len(null)."""
    s = np.sort(np.asarray(null, dtype=np.float64))
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[min(k, len(s) - 1)])


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")


# --------------------------------------------------------------------------------------------
# Homer et al. 2008 / Sankararaman et al. 2009: released pool frequencies


def _lr_weights(
    p_pool: np.ndarray, p_ref: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p_hat = np.asarray(p_pool, dtype=np.float64)
    p = np.asarray(p_ref, dtype=np.float64)
    if p_hat.shape != p.shape or p_hat.ndim != 1:
        raise ValueError("p_pool and p_ref must be 1-D arrays of the same length")
    keep = np.isfinite(p_hat) & np.isfinite(p)
    ph = np.clip(p_hat, eps, 1.0 - eps)
    pr = np.clip(p, eps, 1.0 - eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(keep, np.log(ph) - np.log(pr), 0.0)  # carried allele
        b = np.where(keep, np.log1p(-ph) - np.log1p(-pr), 0.0)  # other allele
    return a, b, keep


def _default_eps(n_pool: int | None) -> float:
    return 1.0 / (4.0 * n_pool) if n_pool else 1e-3


def lr_statistic(
    dosages: np.ndarray,
    p_pool: np.ndarray,
    p_ref: np.ndarray,
    *,
    n_pool: int | None = None,
    eps: float | None = None,
) -> np.ndarray:
    """Homer/Sankararaman likelihood-ratio statistic of each individual (row) of ``dosages``.

    ``Λ(x) = Σ_j [x_j log(p̂_j / p_j) + (2 - x_j) log((1 - p̂_j) / (1 - p_j))]``

    with ``p̂`` the released pool frequencies and ``p`` the reference frequencies: the log
    likelihood ratio of "x was drawn from the pool's frequencies" against "from the reference
    population's" (Sankararaman et al. 2009, eq. 1, for diploid dosages). Large values point to
    membership. Frequencies are clipped to ``[eps, 1 - eps]``, ``eps = 1/(4 n_pool)`` when the
    pool size is given (half an allele copy), else ``1e-3``; variants whose ``p̂`` or ``p`` is
    ``NaN`` and missing genotypes (``NaN``) are skipped (contribute 0).
    """
    e = _default_eps(n_pool) if eps is None else float(eps)
    a, b, _ = _lr_weights(p_pool, p_ref, e)
    x = np.asarray(dosages)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[1] != a.shape[0]:
        raise ValueError(f"dosages have {x.shape[1]} variants, frequencies {a.shape[0]}")
    out = np.empty(x.shape[0], dtype=np.float64)
    w = a - b
    for sl in _row_chunks(x.shape[0], x.shape[1]):
        xc = np.asarray(x[sl], dtype=np.float64)
        obs = np.isfinite(xc)
        out[sl] = np.where(obs, xc, 0.0) @ w + 2.0 * (obs @ b)
    return out


def _simulated_lr(
    p_pool: np.ndarray,
    p_ref: np.ndarray,
    n: int,
    rng: np.random.Generator,
    eps: float,
) -> np.ndarray:
    """Λ of ``n`` non-members simulated from ``p_ref`` (binomial(2, p_ref) per variant)."""
    a, b, keep = _lr_weights(p_pool, p_ref, eps)
    idx = np.flatnonzero(keep)
    w = (a - b)[idx].astype(np.float32)
    const = 2.0 * float(b[idx].sum())
    p = np.asarray(p_ref, dtype=np.float64)[idx]
    # one uniform per genotype: x = [u < p^2] + [u < 1 - (1-p)^2] is binomial(2, p)
    q2 = (p * p).astype(np.float32)
    q1 = (-np.expm1(2.0 * np.log1p(-p))).astype(np.float32)
    out = np.empty(n, dtype=np.float64)
    for sl in _row_chunks(n, len(idx)):
        u = rng.random((sl.stop - sl.start, len(idx)), dtype=np.float32)
        x = (u < q2).astype(np.float32)
        x += u < q1
        out[sl] = x @ w + const
    return out


def membership_power(
    members: np.ndarray,
    p_pool: np.ndarray,
    p_ref: np.ndarray,
    non_members: np.ndarray | None = None,
    fpr: float = 0.001,
    rng: np.random.Generator | int | None = None,
    *,
    n_pool: int | None = None,
    n_simulated: int | None = None,
    threshold: str = "auto",
) -> RiskEstimate:
    """Empirical power of the Homer/Sankararaman pool-membership test at false-positive ``fpr``.

    ``members``: genotypes (individuals x M) of people in the pool whose frequencies ``p_pool``
    were released; ``p_ref``: the attacker's reference frequencies. The attacker flags x when
    ``Λ(x) > t`` (:func:`lr_statistic`); ``t`` is the ``(1 - fpr)`` quantile of Λ over
    non-members and the power is the fraction of members with ``Λ > t``.

    Non-members: the held-out genotypes ``non_members`` when given, otherwise ``n_simulated``
    individuals (default ``max(20/fpr, 2000)``) simulated from ``p_ref`` as independent
    binomial(2, p_ref) draws (vectorised, in chunks of about 4 M genotypes). Simulation ignores
    linkage disequilibrium, population structure and the reference's own sampling error, all of
    which widen or raise the real null distribution: the simulated power is an upper bound of
    the real one, which is the safe direction for a release decision.

    ``threshold``: ``"empirical"`` (order statistic), ``"normal"`` (mean + z_{1-fpr} sd of the
    non-member Λ, the Gaussian approximation of Sankararaman et al.), or ``"auto"``: empirical
    when at least 10 non-members are expected beyond the threshold (``n * fpr >= 10``), else
    normal (a few hundred held-out people cannot resolve a 0.1 % tail empirically).
    """
    _check_fpr(fpr)
    if threshold not in ("auto", "empirical", "normal"):
        raise ValueError(f"threshold must be auto, empirical or normal, not {threshold!r}")
    g = _rng(rng)
    eps = _default_eps(n_pool)
    x = np.asarray(members)
    if x.ndim == 1:
        x = x[None, :]
    lam_members = lr_statistic(x, p_pool, p_ref, eps=eps)
    if non_members is not None:
        null = lr_statistic(non_members, p_pool, p_ref, eps=eps)
        source = "heldout"
    else:
        n_sim = n_simulated or max(int(math.ceil(20.0 / fpr)), 2000)
        null = _simulated_lr(np.asarray(p_pool), np.asarray(p_ref), n_sim, g, eps)
        source = "simulated"
    if len(null) < 2:
        raise ValueError("need at least two non-members")
    kind = threshold
    if kind == "auto":
        kind = "empirical" if len(null) * fpr >= 10 else "normal"
    if kind == "empirical":
        t = _upper_threshold(null, fpr)
    else:
        t = float(np.mean(null) + _stats().norm.isf(fpr) * np.std(null, ddof=1))
    _, _, keep = _lr_weights(np.asarray(p_pool), np.asarray(p_ref), eps)
    return RiskEstimate(
        power=float(np.mean(lam_members > t)) if len(lam_members) else float("nan"),
        threshold=t,
        n_members=int(len(lam_members)),
        n_variants=int(keep.sum()),
        method=f"{source}-{kind}",
        fpr=float(fpr),
        n_non_members=int(len(null)),
    )


def analytic_power(
    n_variants: int, n_pool: int, n_ref: int | None = None, fpr: float = 0.001
) -> float:
    """Sankararaman et al. (2009) approximation of the power of the pool LR test.

    Derivation (independent variants, population frequency f_j; pool of N diploids, reference
    of m diploids, so ``Var p̂ = f(1-f)/(2N)`` and ``Var p = f(1-f)/(2m)``). To first order in
    ``d_j = p̂_j - p_j``,

        Λ(x) ≈ Σ_j d_j (x_j - 2 p_j) / (p_j (1 - p_j)).

    *Non-member* (x independent of the pool): ``E[Λ] ≈ M (1/(2m) - 1/(2N))`` and, since
    ``Var(x_j) = 2 f(1-f)`` and ``E d_j^2 = f(1-f)(1/(2N) + 1/(2m))``,
    ``Var Λ ≈ Σ_j 2f(1-f) · f(1-f)(1/(2N)+1/(2m)) / (f(1-f))^2 = M (1/N + 1/m)``.
    *Member*: x contributes 2 of the pool's 2N alleles, ``Cov(p̂_j, x_j) = Var(x_j)/(2N)``, which
    adds ``Σ_j Var(x_j)/(2N) / (f(1-f)) = M/N`` to the mean; the variance is the same to first
    order. So the members' scores are shifted by ``M/N`` with standard deviation
    ``sqrt(M (1/N + 1/m))`` on both sides, and at false-positive rate α

        power ≈ Φ( (M/N) / sqrt(M (1/N + 1/m)) - z_{1-α} ).

    ``n_ref=None`` means a perfectly known reference (m = ∞): ``power ≈ Φ(sqrt(M/N) - z_{1-α})``,
    Sankararaman's result that detection depends on M/N only; the worst case for the release.
    """
    _check_fpr(fpr)
    m, n = float(n_variants), float(n_pool)
    if n <= 0:
        raise ValueError("n_pool must be positive")
    if m <= 0:
        return float(fpr)
    inv = 1.0 / n + (0.0 if n_ref is None else 1.0 / float(n_ref))
    snr = (m / n) / math.sqrt(m * inv)
    return float(_stats().norm.cdf(snr - _stats().norm.isf(fpr)))


def max_variants(
    n_pool: int, cap: float = 0.10, fpr: float = 0.001, n_ref: int | None = None
) -> int:
    """Largest number of released independent variants M with ``analytic_power(M) <= cap``.

    From :func:`analytic_power`: ``power <= cap`` iff
    ``sqrt(M) / (N sqrt(1/N + 1/m)) <= c`` with ``c = z_{1-fpr} + Φ^{-1}(cap)``, i.e.
    ``M <= c^2 N (1 + N/m)`` (``M <= c^2 N`` for a perfectly known reference, ``n_ref=None``,
    the conservative default). Returns 0 when ``cap <= fpr`` (even M = 0 has power fpr).
    """
    _check_fpr(fpr)
    if cap <= fpr:
        return 0
    c = _stats().norm.isf(fpr) + _stats().norm.ppf(min(cap, 1.0 - 1e-12))
    n = float(n_pool)
    bound = c * c * n * (1.0 + (0.0 if n_ref is None else n / float(n_ref)))
    m = int(math.floor(bound + 1e-9))
    while m > 0 and analytic_power(m, n_pool, n_ref, fpr) > cap:
        m -= 1
    while analytic_power(m + 1, n_pool, n_ref, fpr) <= cap:
        m += 1
    return m


# --------------------------------------------------------------------------------------------
# Shringarpure & Bustamante 2015: beacons


def beacon_log_terms(
    freqs: np.ndarray | float,
    n_beacon: int,
    delta: float = DEFAULT_DELTA,
    min_freq: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query log-likelihood-ratio terms ``(yes_term, no_term)`` of the beacon LRT.

    For an allele of frequency f and a beacon of N genomes, ``D_N = (1 - f)^(2N)`` is the
    probability that none of the N genomes carries it. Querying one of the target's own
    alternate alleles:

    * null H0 (target not in the beacon): P(yes) = 1 - D_N, P(no) = D_N;
    * alternative H1 (target in the beacon): the answer is "no" only if the target's copy was
      missed (sequencing error δ) and none of the other N - 1 carries it:
      P(no) = δ D_{N-1}, P(yes) = 1 - δ D_{N-1}.

    ``yes_term = log((1 - D_N) / (1 - δ D_{N-1}))`` and ``no_term = log(D_N / (δ D_{N-1}))``
    are the contributions to ``Λ = log L(H0) / L(H1)`` (Shringarpure & Bustamante 2015, eq. 3 with
    per-site frequencies, their refinement of the beta-distributed allele frequency spectrum).
    ``f`` is clipped to ``[min_freq, 1 - min_freq]``; computed in log space.
    """
    f = np.clip(np.asarray(freqs, dtype=np.float64), min_freq, 1.0 - min_freq)
    n = int(n_beacon)
    if n < 1:
        raise ValueError("n_beacon must be >= 1")
    log1mf = np.log1p(-f)
    log_dn = 2.0 * n * log1mf
    log_dn1 = 2.0 * (n - 1) * log1mf
    log_1m_dn = np.log(-np.expm1(log_dn))
    log_1m_ddn1 = np.log1p(-delta * np.exp(log_dn1))
    yes = log_1m_dn - log_1m_ddn1
    no = log_dn - (math.log(delta) + log_dn1)
    return yes, no


def beacon_lrt(
    answers: np.ndarray,
    freqs: np.ndarray,
    n_beacon: int,
    delta: float = DEFAULT_DELTA,
    *,
    min_freq: float = 1e-6,
) -> np.ndarray | float:
    """Shringarpure-Bustamante LRT statistic of beacon answers about one target's alleles.

    ``Λ = Σ_i [x_i log((1 - D_N^i)/(1 - δ D_{N-1}^i)) + (1 - x_i) log(D_N^i / (δ D_{N-1}^i))]``

    over the queries i (the target's alternate alleles, frequency ``freqs[i]``), ``x_i = 1`` for
    "yes" (see :func:`beacon_log_terms`). Small values point to membership: the attacker rejects
    H0 ("not in the beacon") when ``Λ < t_α`` (:func:`beacon_threshold`). ``answers`` may be
    boolean or float with ``NaN`` for refused / unasked queries (skipped); a 2-D ``answers``
    (targets x queries) gives one statistic per row.
    """
    a = np.asarray(answers, dtype=np.float64)
    yes, no = beacon_log_terms(freqs, n_beacon, delta, min_freq)
    if a.shape[-1] != yes.shape[-1]:
        raise ValueError("answers and freqs must have the same number of queries")
    terms = np.where(np.isnan(a), 0.0, np.where(a > 0.5, yes, no))
    out = terms.sum(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def beacon_threshold(
    freqs: np.ndarray,
    n_beacon: int,
    fpr: float = 0.05,
    delta: float = DEFAULT_DELTA,
    *,
    n_simulated: int = 10_000,
    rng: np.random.Generator | int | None = None,
    min_freq: float = 1e-6,
) -> float:
    """Threshold t_α of the beacon LRT for one query set, by simulating the null.

    Under H0 the answers are independent Bernoulli(1 - D_N^i) (the paper's null model): ``Λ`` is
    simulated ``n_simulated`` times and ``t`` is the largest order statistic with at most a
    fraction ``fpr`` of null values strictly below it (reject H0 when ``Λ < t``).
    """
    _check_fpr(fpr)
    g = _rng(rng)
    yes, no = beacon_log_terms(freqs, n_beacon, delta, min_freq)
    p_yes = -np.expm1(2.0 * n_beacon * np.log1p(-np.clip(np.asarray(freqs, float), min_freq, 1 - min_freq)))
    out = np.empty(n_simulated)
    for sl in _row_chunks(n_simulated, len(yes)):
        ans = g.random((sl.stop - sl.start, len(yes))) < p_yes
        out[sl] = np.where(ans, yes, no).sum(axis=1)
    return _lower_threshold(out, fpr)


def _attack_scores(
    targets: np.ndarray,
    present: np.ndarray,
    freqs: np.ndarray,
    n_beacon: int,
    n_max: int,
    delta: float,
    min_freq: float,
    rng: np.random.Generator,
    budget: BeaconBudget | None,
    budget_freqs: np.ndarray | None = None,
) -> np.ndarray:
    """Cumulative Λ (targets x n_max) of the rarest-first attack against a beacon.

    Each target's alternate alleles (dosage >= 1) are queried in increasing ``freqs`` (ties in
    random order); the beacon answers ``present`` (with the per-researcher ``budget`` when
    given: each target is attacked from a fresh researcher account, the worst case). Column k is
    Λ after k + 1 queries; targets with fewer alleles keep their last value.
    """
    yes, no = beacon_log_terms(freqs, n_beacon, delta, min_freq)
    f = np.asarray(freqs, dtype=np.float64)
    fb = f if budget_freqs is None else np.asarray(budget_freqs, dtype=np.float64)
    # rarest first; equal frequencies in one random order (drawn once per call)
    rank = np.lexsort((rng.random(len(f)), np.nan_to_num(f, nan=np.inf)))
    out = np.zeros((targets.shape[0], n_max), dtype=np.float64)
    for i in range(targets.shape[0]):
        row = np.asarray(targets[i], dtype=np.float32)[rank]
        order = rank[np.flatnonzero(row > 0)[:n_max]]  # NaN > 0 is False: missing skipped
        ans = present[order]
        terms = np.where(ans, yes[order], no[order])
        if budget is not None:
            answered = budget.ask_many(f"target-{i}", fb[order], ans)
            terms = np.where(np.isnan(answered), 0.0, terms)
        c = np.cumsum(terms)
        k = len(c)
        if k:
            out[i, :k] = c
            out[i, k:] = c[-1]
    return out


def _beacon_present(cohort: np.ndarray) -> np.ndarray:
    c = np.asarray(cohort, dtype=np.float64)
    return np.asarray((np.nan_to_num(c, nan=0.0) > 0).any(axis=0), dtype=bool)


def beacon_power_curve(
    cohort_dosages: np.ndarray,
    freqs: np.ndarray,
    n_queries: Sequence[int],
    fpr: float = 0.05,
    *,
    non_members: np.ndarray | None = None,
    targets: np.ndarray | Sequence[int] | None = None,
    delta: float = DEFAULT_DELTA,
    budget: BeaconBudget | None = None,
    budget_freqs: np.ndarray | None = None,
    n_simulated: int | None = None,
    min_freq: float = 1e-6,
    rng: np.random.Generator | int | None = None,
) -> list[RiskEstimate]:
    """Power of the Shringarpure-Bustamante attack on a real beacon, per number of queries.

    The beacon holds ``cohort_dosages`` (N individuals x M variants) and answers "yes" for a
    variant when any cohort genotype carries the alternate allele. Members (the cohort rows
    ``targets``, default all) and non-members are attacked alike: the attacker queries the
    target's alternate alleles, rarest first by ``freqs`` (his reference frequencies, which the
    LRT also uses), and computes :func:`beacon_lrt` after n queries. Non-members are the
    held-out genotypes ``non_members`` or, when absent, ``n_simulated`` individuals (default
    ``max(20/fpr, 1000)``) with genotypes drawn from binomial(2, freqs), queried against the
    same real beacon. For each n the threshold is the lower ``fpr`` order statistic of the
    non-members' Λ (reject H0 when ``Λ < t``) and the power the fraction of members below it.

    ``budget``: a :class:`BeaconBudget` template; every target is attacked through a fresh copy
    of it (one researcher account per target), so the measured power is the defended power.
    """
    _check_fpr(fpr)
    g = _rng(rng)
    cohort = np.asarray(cohort_dosages)
    n_beacon = cohort.shape[0]
    present = _beacon_present(cohort)
    ns = sorted({int(n) for n in n_queries})
    if not ns or ns[0] < 1:
        raise ValueError("n_queries must be positive integers")
    n_max = ns[-1]
    rows = np.arange(n_beacon) if targets is None else np.asarray(targets, dtype=np.int64)
    f = np.asarray(freqs, dtype=np.float64)

    def fresh() -> BeaconBudget | None:
        return None if budget is None else BeaconBudget.from_dict(budget.to_dict())

    fb = None if budget_freqs is None else np.asarray(budget_freqs, dtype=np.float64)
    mem = _attack_scores(
        cohort[rows], present, f, n_beacon, n_max, delta, min_freq, g, fresh(), fb
    )
    if non_members is not None:
        null_g = np.asarray(non_members)
        source = "heldout"
    else:
        n_sim = n_simulated or max(int(math.ceil(20.0 / fpr)), 1000)
        p = np.clip(np.nan_to_num(f, nan=0.0), 0.0, 1.0)
        null_g = g.binomial(2, p, size=(n_sim, len(p))).astype(np.int8)
        source = "simulated"
    null = _attack_scores(null_g, present, f, n_beacon, n_max, delta, min_freq, g, fresh(), fb)
    out = []
    for n in ns:
        t = _lower_threshold(null[:, n - 1], fpr)
        out.append(
            RiskEstimate(
                power=float(np.mean(mem[:, n - 1] < t)),
                threshold=t,
                n_members=int(len(rows)),
                n_variants=n,
                method=f"{source}-empirical" + ("-budget" if budget is not None else ""),
                fpr=float(fpr),
                n_non_members=int(null.shape[0]),
            )
        )
    return out


def beacon_power(
    cohort_dosages: np.ndarray,
    freqs: np.ndarray,
    n_queries: int,
    fpr: float = 0.05,
    **kwargs: Any,
) -> RiskEstimate:
    """Power of the beacon attack after ``n_queries`` queries per target.

    Same arguments as :func:`beacon_power_curve` (``non_members``, ``targets``, ``delta``,
    ``budget``, ``n_simulated``, ``min_freq``, ``rng``).
    """
    return beacon_power_curve(cohort_dosages, freqs, [n_queries], fpr, **kwargs)[0]


# --------------------------------------------------------------------------------------------
# Raisaro et al. 2017: a per-researcher risk budget


class BeaconBudget:
    """Per-researcher risk budget for a beacon (after Raisaro et al. 2017, simple form).

    Rule. Every answer a researcher receives is charged the information it gives a membership
    attacker about a *hypothetical carrier* of the queried allele, independently of who that is
    (individual-agnostic), using the beacon LRT terms of :func:`beacon_log_terms`:

    cost = ``max(0, log P1(answer) / P0(answer))``: the increase of the LR in favour of
    membership that the answer would give for a carrier, i.e. ``-yes_term`` for a "yes"
    (``log((1 - δ D_{N-1}) / (1 - D_N))``) and ``max(0, -no_term)`` for a "no" (0 except for
    alleles so common that a "no" is odd under H0). (Charging the surprisal ``-log P0(answer)``
    instead is never cheaper, but its worst case is ``>= log 2`` for every allele, so with
    ``B = log(cap/α) = log 2`` it would refuse everything.)

    A query is answered only if its *worst-case* cost (the larger of the yes and no costs) fits
    in the researcher's remaining budget, else it is refused; after answering, the actual
    answer's cost is deducted. The refusal decision depends on the allele frequency and on
    answers the researcher already holds, never on the pending answer, so a refusal leaks
    nothing. Frequencies should come from a public reference panel (not from the cohort
    itself, or refusals would reveal cohort frequencies), and should be *conservative* (lower
    bounds, :func:`conservative_frequencies`): underestimating f overstates the cost. The
    guarantee below holds under the binomial model with the frequencies used; real rare alleles
    are more private than that model says (population-specific, familial), so a non-member's
    rare allele is answered "no" more often than predicted. On 1000 Genomes data (see
    ``tests/attacks/test_membership.py``) the budget with point frequencies from a 326-person
    reference let the attack reach a power of up to 0.20; with 95 % Clopper-Pearson lower bounds
    it stayed below 0.10.

    Budget. Whatever the researcher does (adaptive queries included), the likelihood ratio
    P1/P0 of everything answered about any target is at most ``exp(spent) <= exp(B)``, so by the
    Neyman-Pearson argument any test at false-positive rate α has power
    ``E0[LR · 1{reject}] <= α e^B``. Choosing ``B = log(cap / α)`` keeps the power of the
    Shringarpure-Bustamante attack (and of any other test on the answers) at or below ``cap``
    under the beacon's frequency model. Default: α = 0.05, cap = 0.10, B = log 2 ≈ 0.69 nats.

    State is a plain dict (:meth:`to_dict` / :meth:`from_dict`) so a node can persist it.
    """

    def __init__(
        self,
        n_beacon: int,
        budget: float | None = None,
        *,
        fpr: float = 0.05,
        cap: float = 0.10,
        delta: float = DEFAULT_DELTA,
        min_freq: float = 1e-6,
        spent: dict[str, float] | None = None,
    ):
        self.n_beacon = int(n_beacon)
        self.fpr = float(fpr)
        self.cap = float(cap)
        self.budget = float(budget) if budget is not None else self.budget_for(fpr, cap)
        self.delta = float(delta)
        self.min_freq = float(min_freq)
        self.spent: dict[str, float] = {str(k): float(v) for k, v in (spent or {}).items()}

    @staticmethod
    def budget_for(fpr: float, cap: float) -> float:
        """``B = log(cap / fpr)`` (0 when cap <= fpr): attack power <= fpr · e^B = cap."""
        _check_fpr(fpr)
        return max(0.0, math.log(cap / fpr))

    def costs(self, freqs: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Cost of a "yes" and of a "no" answer for alleles of frequency ``freqs``."""
        yes, no = beacon_log_terms(freqs, self.n_beacon, self.delta, self.min_freq)
        return np.maximum(0.0, -yes), np.maximum(0.0, -no)

    def worst_cost(self, freq: float) -> float:
        y, n = self.costs(freq)
        return float(max(y, n))

    def remaining(self, researcher: str) -> float:
        return self.budget - self.spent.get(researcher, 0.0)

    def allows(self, researcher: str, freq: float) -> bool:
        """Whether a query on an allele of frequency ``freq`` would be answered now."""
        return self.worst_cost(freq) <= self.remaining(researcher) + 1e-12

    def record(self, researcher: str, freq: float, answer: bool) -> float:
        """Charge an answered query; returns the cost deducted."""
        y, n = self.costs(freq)
        c = float(y if answer else n)
        self.spent[researcher] = self.spent.get(researcher, 0.0) + c
        return c

    def ask(self, researcher: str, freq: float, present: bool) -> bool | None:
        """Answer one query (``present``: the true answer) or refuse it (``None``)."""
        if not self.allows(researcher, freq):
            return None
        self.record(researcher, freq, bool(present))
        return bool(present)

    def ask_many(self, researcher: str, freqs: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Answer a sequence of queries in order: 1.0 yes, 0.0 no, ``NaN`` refused."""
        f = np.asarray(freqs, dtype=np.float64)
        pr = np.asarray(present, dtype=bool)
        cy, cn = self.costs(f)
        worst = np.maximum(cy, cn).tolist()
        cost = np.where(pr, cy, cn).tolist()
        out = np.full(len(f), np.nan)
        left = self.remaining(researcher)
        spent = 0.0
        answered = []
        for i in range(len(f)):
            if worst[i] <= left + 1e-12:
                left -= cost[i]
                spent += cost[i]
                answered.append(i)
        out[answered] = pr[answered]
        self.spent[researcher] = self.spent.get(researcher, 0.0) + spent
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_beacon": self.n_beacon,
            "budget": self.budget,
            "fpr": self.fpr,
            "cap": self.cap,
            "delta": self.delta,
            "min_freq": self.min_freq,
            "spent": dict(self.spent),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BeaconBudget:
        return cls(
            int(state["n_beacon"]),
            float(state["budget"]),
            fpr=float(state.get("fpr", 0.05)),
            cap=float(state.get("cap", 0.10)),
            delta=float(state.get("delta", DEFAULT_DELTA)),
            min_freq=float(state.get("min_freq", 1e-6)),
            spent=dict(state.get("spent", {})),
        )
