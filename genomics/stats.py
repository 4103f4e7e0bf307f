"""Statistics on federation-wide sums: exact tests on genotype and allele counts, and regression
from sufficient statistics.

Everything here runs on combined (summed) quantities at the coordinator, vectorised over
variants. Nothing here sees a node's partials or a sample.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy import stats as sps

# relative tolerance when comparing probabilities of tables (as plink2 and scipy do): tables
# whose probability equals the observed one up to rounding count as "as extreme"
_REL_TOL = 1e-7


def _support_pvalue(logp: np.ndarray, valid: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Two-sided exact p: the total probability of support points no more likely than the
    observed one. ``logp`` [rows, support] unnormalised log-probabilities, ``valid`` the support
    mask, ``obs`` the observed point's column per row."""
    logp = np.where(valid, logp, -np.inf)
    top = logp.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    prob = np.exp(logp - top)
    p_obs = prob[np.arange(len(obs)), obs][:, None]
    total = prob.sum(axis=1)
    extreme = np.where(prob <= p_obs * (1 + _REL_TOL), prob, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.minimum(1.0, extreme / total)


def _chunks(order: np.ndarray, widths: np.ndarray, cells: int):
    """Split ``order`` (rows sorted by ascending support width) into runs of at most ``cells``
    support points (width of the run's widest row × rows)."""
    w = widths[order]
    start = 0
    while start < len(order):
        cost = w[start:] * np.arange(1, len(order) - start + 1)
        stop = start + max(1, int(np.searchsorted(cost, cells, side="right")))
        yield order[start:stop]
        start = stop


def hwe_exact(het: np.ndarray, hom1: np.ndarray, hom2: np.ndarray, *, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Exact Hardy–Weinberg test (Wigginton, Cutler & Abecasis 2005), two-sided, per variant.

    ``het``, ``hom1``, ``hom2``: diploid genotype counts (heterozygous, homozygous for either
    allele). Variants with no diploid call get NaN. The same p as ``plink2 --hardy``.
    """
    het, hom1, hom2 = (np.asarray(x, np.int64).ravel() for x in (het, hom1, hom2))
    out = np.full(len(het), np.nan)
    n = het + hom1 + hom2
    rare = het + 2 * np.minimum(hom1, hom2)
    ok = np.flatnonzero(n > 0)
    if not len(ok):
        return out
    order = ok[np.argsort(rare[ok], kind="stable")]
    for idx in _chunks(order, rare // 2 + 1, chunk_cells):
        width = int(rare[idx].max()) // 2 + 1
        nn, rr = n[idx][:, None], rare[idx][:, None]
        j = np.arange(width)[None, :]
        h = (rr % 2) + 2 * j  # heterozygote counts with the parity of the rare allele count
        homr = (rr - h) // 2
        homc = nn - h - homr
        valid = (h <= rr) & (homc >= 0)
        hs, hr, hc = (np.where(valid, x, 0).astype(np.float64) for x in (h, homr, homc))
        logp = h * np.log(2.0) - special.gammaln(hs + 1) - special.gammaln(hr + 1) - special.gammaln(hc + 1)
        obs = (het[idx] - rare[idx] % 2) // 2
        out[idx] = _support_pvalue(logp, valid, obs)
    return out


def fisher_exact_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, *, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Two-sided Fisher exact p per row for tables [[a, b], [c, d]], vectorised (the same p as
    ``scipy.stats.fisher_exact``)."""
    a, b, c, d = (np.asarray(x, np.int64).ravel() for x in (a, b, c, d))
    out = np.full(len(a), np.nan)
    r1, c1, n = a + b, a + c, a + b + c + d
    lo = np.maximum(0, r1 + c1 - n)
    hi = np.minimum(r1, c1)
    ok = np.flatnonzero(n > 0)
    order = ok[np.argsort((hi - lo)[ok], kind="stable")]
    for idx in _chunks(order, hi - lo + 1, chunk_cells):
        width = int((hi[idx] - lo[idx]).max()) + 1
        x = lo[idx][:, None] + np.arange(width)[None, :]
        valid = x <= hi[idx][:, None]
        xs = np.where(valid, x, lo[idx][:, None]).astype(np.float64)
        R1, C1, N = (v[idx][:, None].astype(np.float64) for v in (r1, c1, n))
        logp = -(special.gammaln(xs + 1) + special.gammaln(R1 - xs + 1) + special.gammaln(C1 - xs + 1) + special.gammaln(N - R1 - C1 + xs + 1))
        out[idx] = _support_pvalue(logp, valid, a[idx] - lo[idx])
    return out


def allelic_chi2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson chi-square (1 df, no continuity correction) and its p for 2×2 tables
    [[a, b], [c, d]]; NaN where a margin is zero."""
    a, b, c, d = (np.asarray(x, np.float64) for x in (a, b, c, d))
    n = a + b + c + d
    den = (a + b) * (c + d) * (a + c) * (b + d)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(den > 0, n * (a * d - b * c) ** 2 / den, np.nan)
    return chi2, sps.chi2.sf(chi2, 1)


def unpack_sym(tri: np.ndarray, q: int) -> np.ndarray:
    """[rows, q(q+1)/2] upper-triangle entries (row-major) to [rows, q, q] symmetric matrices."""
    iu = np.triu_indices(q)
    m = np.zeros((tri.shape[0], q, q))
    m[:, iu[0], iu[1]] = tri
    m[:, iu[1], iu[0]] = tri
    return m


def _safe_inverse(m: np.ndarray, max_cond: float = 1e12) -> tuple[np.ndarray, np.ndarray]:
    """Inverses of stacked symmetric matrices that are well conditioned (after scaling to unit
    diagonal, 1-norm condition number below ``max_cond``); NaN and False for the others
    (singular designs: a monomorphic variant, collinear covariates)."""
    rows, q, _ = m.shape
    inv = np.full(m.shape, np.nan)
    ok = np.zeros(rows, bool)
    if not rows:
        return inv, ok
    d = np.einsum("rii->ri", m)
    pos = (d > 0).all(axis=1) & np.isfinite(m).all(axis=(1, 2))
    scale = np.sqrt(np.where(d > 0, d, 1.0))
    norm = m / scale[:, :, None] / scale[:, None, :]
    with np.errstate(all="ignore"):
        det = np.where(pos, np.linalg.det(np.where(pos[:, None, None], norm, np.eye(q))), 0.0)
    cand = np.flatnonzero(pos & (det > 1.0 / max_cond))
    if len(cand):
        ni = np.linalg.inv(norm[cand])
        cond = np.abs(norm[cand]).sum(axis=1).max(axis=1) * np.abs(ni).sum(axis=1).max(axis=1)
        fine = cond < max_cond
        idx = cand[fine]
        inv[idx] = ni[fine] / scale[idx][:, :, None] / scale[idx][:, None, :]
        ok[idx] = True
    return inv, ok


def ols_from_stats(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray, n: np.ndarray, coef: int = 1) -> dict[str, np.ndarray]:
    """Per-row OLS from sufficient statistics.

    ``xtx`` [rows, q, q], ``xty`` [rows, q], ``yty`` [rows], ``n`` [rows]. Returns beta, se, t, p
    for column ``coef`` of the design and the residual degrees of freedom; rows whose design is
    singular (e.g. a monomorphic variant) get NaN.
    """
    rows, q, _ = xtx.shape
    out = {k: np.full(rows, np.nan) for k in ("beta", "se", "t", "p")}
    df = n.astype(np.float64) - q
    out["df"] = df
    inv, ok = _safe_inverse(xtx)
    good = np.flatnonzero(ok & (df > 0))
    if not len(good):
        return out
    b = xty[good]
    beta = np.einsum("rij,rj->ri", inv[good], b)
    rss = yty[good] - np.einsum("ri,ri->r", beta, b)
    sigma2 = np.maximum(rss, 0.0) / df[good]
    se = np.sqrt(sigma2 * inv[good, coef, coef])
    t = beta[:, coef] / se
    out["beta"][good] = beta[:, coef]
    out["se"][good] = se
    out["t"][good] = t
    out["p"][good] = 2 * sps.t.sf(np.abs(t), df[good])
    return out


def ols_genotype_effect(gg: np.ndarray, gc: np.ndarray, gy: np.ndarray, cc: np.ndarray, cy: np.ndarray,
                        yy: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray] | None:
    """The genotype coefficient of ``y ~ g + C`` per row by partialling out the covariates
    (Frisch–Waugh–Lovell): ``beta = g'My / g'Mg`` with ``M = I - C (C'C)^-1 C'``. Identical to
    the full OLS, but it inverts each distinct covariate block once instead of one
    (q+1)×(q+1) system per variant; the blocks differ only where calls are missing. Returns None
    when there are too many distinct blocks (the caller solves per variant instead)."""
    rows, q = gc.shape
    out = {k: np.full(rows, np.nan) for k in ("beta", "se", "t", "p")}
    if not rows:
        return out
    block = np.column_stack([cc.reshape(rows, -1), cy, yy])
    # usually every variant has the same block (no missing calls); group the others exactly
    same = (block == block[0]).all(axis=1)
    others = np.flatnonzero(~same)
    if len(others) > 4096:
        return None
    inverse = np.zeros(rows, np.int64)
    if len(others):
        u, inv_o = np.unique(block[others], axis=0, return_inverse=True)
        if len(u) > 64:
            return None
        uniq = np.vstack([block[:1], u])
        inverse[others] = inv_o.reshape(-1) + 1
    else:
        uniq = block[:1]
    inv, ok = _safe_inverse(uniq[:, : q * q].reshape(-1, q, q))
    df = n.astype(np.float64) - q - 1
    for k in np.flatnonzero(ok):
        idx = np.flatnonzero(inverse == k)
        a = inv[k]
        cyk = uniq[k, q * q : q * q + q]
        ymy = uniq[k, -1] - cyk @ a @ cyk
        u = gc[idx] @ a
        gmg = gg[idx] - np.einsum("ri,ri->r", u, gc[idx])
        gmy = gy[idx] - u @ cyk
        good = (gmg > 1e-10 * np.maximum(gg[idx], 1e-300)) & (df[idx] > 0)
        i = idx[good]
        beta = gmy[good] / gmg[good]
        rss = np.maximum(ymy - gmy[good] * beta, 0.0)
        se = np.sqrt(rss / df[i] / gmg[good])
        t = beta / se
        out["beta"][i], out["se"][i], out["t"][i] = beta, se, t
        out["p"][i] = 2 * sps.t.sf(np.abs(t), df[i])
    return out


def sym_solve(h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve h x = g for stacked symmetric matrices; also returns the inverses (for standard
    errors). Rows where h is singular get NaN and False."""
    inv, ok = _safe_inverse(h)
    x = np.full(g.shape, np.nan)
    x[ok] = np.einsum("rij,rj->ri", inv[ok], g[ok])
    return x, ok, inv
