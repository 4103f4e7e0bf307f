"""Compiled (numba) per-variant kernels for regression statistics over bit-packed genotype planes.

They read the ALT1/ALT2/CALLED planes of :mod:`genofed.genomics.store` directly (no dosage
matrix is built): bit ``s`` of byte ``s >> 3`` is sample row ``s`` of the store; ``sidx`` lists
the analysis samples (store rows, ascending) and ``row_of`` maps a store row to its analysis row
(or -1). Dosage is ``alt1 + alt2`` (``alt2`` implies ``alt1``). Variants run in parallel.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, nogil=True)
def linear_sums(alt1, alt2, row_of, z):  # pragma: no cover - compiled
    """Per variant: ``Σ_i g_i z_i`` [nv, m] and ``Σ_i g_i²`` [nv] over the analysis samples,
    visiting only samples that carry an ALT allele (missing calls have no ALT bit)."""
    nv, width = alt1.shape
    m = z.shape[1]
    gz = np.zeros((nv, m))
    gg = np.zeros(nv)
    for v in nb.prange(nv):
        acc = np.zeros(m)
        s2 = 0.0
        for byte in range(width):
            a = alt1[v, byte]
            if a == 0:
                continue
            b = alt2[v, byte]
            for bit in range(8):
                if (a >> bit) & 1:
                    r = row_of[byte * 8 + bit]
                    if r >= 0:
                        f = 2.0 if (b >> bit) & 1 else 1.0
                        s2 += f * f
                        for k in range(m):
                            acc[k] += f * z[r, k]
        for k in range(m):
            gz[v, k] = acc[k]
        gg[v] = s2
    return gz, gg


@nb.njit(parallel=True, cache=True, nogil=True)
def missing_sums(called, sidx, w):  # pragma: no cover - compiled
    """Per variant: ``Σ w_i`` over analysis samples whose call is missing [nv, m], and how many."""
    nv = called.shape[0]
    n, m = w.shape
    out = np.zeros((nv, m))
    cnt = np.zeros(nv)
    for v in nb.prange(nv):
        acc = np.zeros(m)
        c = 0.0
        for i in range(n):
            s = sidx[i]
            if not (called[v, s >> 3] >> (s & 7)) & 1:
                c += 1.0
                for k in range(m):
                    acc[k] += w[i, k]
        for k in range(m):
            out[v, k] = acc[k]
        cnt[v] = c
    return out, cnt


@nb.njit(parallel=True, cache=True, nogil=True, fastmath=False)
def logistic_sums(alt1, alt2, called, has_called, sidx, c, y, prods, beta):  # pragma: no cover - compiled
    """One Newton evaluation per variant of the model logit P(y) = b_g g + b_c·c at ``beta``
    [nv, 1 + q]: gradient [nv, 1 + q], the Hessian's genotype row [nv, 1 + q] and covariate
    block [nv, q(q+1)/2] (as ``prods``), log-likelihood, and the counts n, cases, ALT copies in
    cases and in controls; missing calls are skipped."""
    nv = alt1.shape[0]
    n, q = c.shape
    t_n = prods.shape[1]
    grad = np.zeros((nv, q + 1))
    hg = np.zeros((nv, q + 1))
    hcc = np.zeros((nv, t_n))
    ll = np.zeros(nv)
    counts = np.zeros((nv, 4))
    for v in nb.prange(nv):
        gr = np.zeros(q + 1)
        hr = np.zeros(q + 1)
        hc = np.zeros(t_n)
        lsum = 0.0
        prodm = 1.0  # product of 1/(1+exp(-|eta|)) in [0.5, 1]: one log per 256 samples
        seen = 0
        nn = 0.0
        ncase = 0.0
        ac1 = 0.0
        ac0 = 0.0
        bg = beta[v, 0]
        for i in range(n):
            s = sidx[i]
            byte = s >> 3
            bit = s & 7
            if has_called and not (called[v, byte] >> bit) & 1:
                continue
            g = float(((alt1[v, byte] >> bit) & 1) + ((alt2[v, byte] >> bit) & 1))
            eta = bg * g
            for k in range(q):
                eta += beta[v, k + 1] * c[i, k]
            # log(1 + exp(eta)) = max(eta, 0) - log(mm), mm = 1 / (1 + exp(-|eta|))
            if eta >= 0:
                mm = 1.0 / (1.0 + np.exp(-eta))
                p = mm
                lsum += (y[i] - 1.0) * eta
            else:
                e = np.exp(eta)
                mm = 1.0 / (1.0 + e)
                p = e * mm
                lsum += y[i] * eta
            prodm *= mm
            seen += 1
            if seen == 256:
                lsum += np.log(prodm)
                prodm = 1.0
                seen = 0
            w = p * (1.0 - p)
            yi = y[i]
            r = yi - p
            gr[0] += r * g
            hr[0] += w * g * g
            for k in range(q):
                gr[k + 1] += r * c[i, k]
                hr[k + 1] += w * g * c[i, k]
            for t in range(t_n):
                hc[t] += w * prods[i, t]
            nn += 1.0
            ncase += yi
            ac1 += g * yi
            ac0 += g * (1.0 - yi)
        for k in range(q + 1):
            grad[v, k] = gr[k]
            hg[v, k] = hr[k]
        for t in range(t_n):
            hcc[v, t] = hc[t]
        ll[v] = lsum + np.log(prodm)
        counts[v, 0] = nn
        counts[v, 1] = ncase
        counts[v, 2] = ac1
        counts[v, 3] = ac0
    return grad, hg, hcc, ll, counts


def row_map(sidx: np.ndarray, width: int) -> np.ndarray:
    """Store row -> analysis row (or -1), padded to the plane width in bits."""
    out = np.full(width * 8, -1, np.int64)
    out[np.asarray(sidx, np.int64)] = np.arange(len(sidx), dtype=np.int64)
    return out


def warm() -> None:
    """Compile (or load from numba's cache) every kernel on tiny inputs, so a node's first
    analysis does not pay for it."""
    one = np.zeros((1, 8), np.uint8)
    sidx = np.zeros(1, np.int64)
    c = np.ones((1, 1))
    linear_sums(one, one, row_map(sidx, 8), np.ones((1, 2)))
    missing_sums(one, sidx, np.ones((1, 2)))
    logistic_sums(one, one, one, False, sidx, c, np.zeros(1), np.ones((1, 1)), np.zeros((1, 2)))
