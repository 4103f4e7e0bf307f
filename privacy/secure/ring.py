"""Vectorised arithmetic for genofed's MPC protocol (numpy; no MPyC import).

Two kinds of shares, each for what it does best:

- **Additive shares of values** over the ring Z_{2^(32k)} (k 32-bit digits per value; a count
  needs 2 digits, an integer or fixed-point real 4, a 128-bit decimal 6). Every pair of parties
  agrees on fresh random seeds; each party masks its values with the AES-CTR streams of the seeds
  it sent (subtracted) and received (added). The masks cancel in the sum over all parties, so a
  party's share alone is uniformly random, and a value is learned only when every party's share
  of it is opened. Sums cost one addition per party and no communication beyond the seeds.
- **Shamir shares of counts** over the prime field F_p, p = 2^31 - 1 (products of two elements fit
  int64), threshold t = (m-1)//2 with m parties at points 1..m: what the minimum-count test needs,
  since it multiplies. Multiplication is the BGW/GRR protocol: each party multiplies its shares
  (degree 2t), reshares the product with a fresh degree-t polynomial, and recombines the
  received shares with the Lagrange coefficients for 0. Honest majority (m >= 2t+1).

The network lives elsewhere (:mod:`genofed.privacy.secure._mpc_party` runs MPyC's authenticated,
TLS-protected links and calls these functions); this module only computes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

P = (1 << 31) - 1  # Mersenne prime: a product of two field elements fits int64
DIGIT = 32
BASE = 1 << DIGIT
MASK = BASE - 1


# -- randomness ---------------------------------------------------------------------------------

def random_field(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of F_p (int64): 64 random bits reduced mod p (bias below 2^-32)."""
    n = int(np.prod(shape)) if shape else 1
    r = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) % np.uint64(P)
    return r.astype(np.int64).reshape(shape)


def stream(seed: bytes, n: int) -> np.ndarray:
    """``n`` uniform 32-bit digits (int64) from AES-256-CTR keyed by ``seed`` (32 bytes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * n)), dtype=np.uint32).astype(np.int64)


# -- additive shares over Z_{2^(32k)} -----------------------------------------------------------------

def normalize(d: np.ndarray) -> np.ndarray:
    """Digits (int64, shape (..., k), least significant first, any magnitude below 2^62) to
    canonical digits in [0, 2^32) of the value mod 2^(32k)."""
    d = d.copy()
    k = d.shape[-1]
    for i in range(k - 1):
        carry = d[..., i] >> DIGIT  # floor division: negative digits borrow
        d[..., i] &= MASK
        d[..., i + 1] += carry
    d[..., k - 1] &= MASK
    return d


def mask(values: np.ndarray, sent: Sequence[bytes], received: Sequence[bytes]) -> np.ndarray:
    """This party's additive share: its digits minus the streams of the seeds it sent plus the
    streams of the seeds it received (canonical digits: uniformly random on their own)."""
    out = values.astype(np.int64, copy=True)
    n = out.size
    for s in sent:
        out -= stream(s, n).reshape(out.shape)
    for s in received:
        out += stream(s, n).reshape(out.shape)
    return normalize(out)


def open_sum(shares: Sequence[np.ndarray]) -> np.ndarray:
    """The value digits from every party's share (canonical digits, mod 2^(32k))."""
    acc = np.zeros_like(shares[0], dtype=np.int64)
    for s in shares:
        acc += s
    return normalize(acc)


def int_digits(v: np.ndarray, k: int) -> np.ndarray:
    """int64 values as k two's-complement 32-bit digits (k >= 2)."""
    v = np.asarray(v, np.int64)
    out = np.empty((*v.shape, k), np.int64)
    out[..., 0] = v & MASK
    out[..., 1] = (v >> DIGIT) & MASK  # arithmetic shift: the sign spreads into the high digits
    fill = np.where(v < 0, MASK, 0)
    for i in range(2, k):
        out[..., i] = fill
    return out


def fixed_digits(x: np.ndarray, frac_bits: int, k: int = 4) -> np.ndarray:
    """round(x * 2^frac_bits) for finite doubles, as k two's-complement 32-bit digits, exactly
    (|x| * 2^frac_bits < 2^(32k - 1) is the caller's check)."""
    y = np.ldexp(np.asarray(x, np.float64), frac_bits)  # exact: a power-of-two scaling
    y = np.rint(y)
    out = np.zeros((*y.shape, k), np.int64)
    neg = y < 0
    a = np.abs(y)
    for i in range(k):  # |y| in base 2^32, exactly: every step is an exact float operation
        q = np.floor(np.ldexp(a, -DIGIT))
        out[..., i] = (a - np.ldexp(q, DIGIT)).astype(np.int64)
        a = q
    if neg.any():  # two's complement: invert and add one
        inv = MASK - out[neg]
        inv[..., 0] += 1
        out[neg] = normalize(inv)
    return out


def big_digits(values: Sequence[int], k: int) -> np.ndarray:
    """Python ints (any sign, |v| < 2^(32k-1)) as k two's-complement digits."""
    mod = 1 << (DIGIT * k)
    out = np.empty((len(values), k), np.int64)
    for j, v in enumerate(values):
        u = int(v) % mod
        for i in range(k):
            out[j, i] = (u >> (DIGIT * i)) & MASK
    return out


def to_ints(d: np.ndarray) -> list[int]:
    """Canonical digits (rows) as signed Python ints (two's complement of 32k bits)."""
    k = d.shape[-1]
    half = 1 << (DIGIT * k - 1)
    out = []
    for row in d.reshape(-1, k).tolist():
        u = 0
        for i in reversed(range(k)):
            u = (u << DIGIT) | int(row[i])
        out.append(u - (half << 1) if u >= half else u)
    return out


def to_int64(d: np.ndarray) -> np.ndarray | None:
    """Canonical digits as int64 when every value fits, else None."""
    if d.shape[-1] > 2:
        ext = np.where((d[..., 1] >> (DIGIT - 1)) == 1, MASK, 0)
        if not np.all(d[..., 2:] == ext[..., None]):
            return None
    u = (d[..., 1].astype(np.uint64) << np.uint64(DIGIT)) | d[..., 0].astype(np.uint64)
    return u.view(np.int64)


def to_fixed(d: np.ndarray, frac_bits: int) -> np.ndarray:
    """Canonical digits of round(x * 2^frac_bits) back to doubles (x * 2^-frac_bits)."""
    k = d.shape[-1]
    neg = d[..., k - 1] >= (1 << (DIGIT - 1))
    mag = d.copy()
    if neg.any():
        inv = MASK - mag[neg]
        inv[..., 0] += 1
        mag[neg] = normalize(inv)
    acc = np.zeros(d.shape[:-1], np.float64)
    for i in reversed(range(k)):
        acc = np.ldexp(acc, DIGIT) + mag[..., i]
    acc = np.ldexp(acc, -frac_bits)
    return np.where(neg, -acc, acc)


# -- Shamir shares over F_p -------------------------------------------------------------------------

def shamir_split(x: np.ndarray, t: int, m: int) -> np.ndarray:
    """Shares of every element of ``x`` (int64 in [0, p)) for parties 1..m: shape (m, *x.shape)."""
    coeffs = [random_field(x.shape) for _ in range(t)]
    out = np.empty((m, *x.shape), np.int64)
    for i in range(1, m + 1):  # Horner: every intermediate stays below 2^62
        acc = np.zeros(x.shape, np.int64)
        for c in reversed(coeffs):
            acc = (acc + c) * i % P
        out[i - 1] = (acc + x) % P
    return out


def lagrange_at_zero(points: Sequence[int]) -> list[int]:
    """Coefficients λ_i with f(0) = Σ λ_i f(x_i) mod p."""
    out = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * (-xj) % P
                den = den * (xi - xj) % P
        out.append(num * pow(den, P - 2, P) % P)
    return out


def combine(shares: Sequence[np.ndarray], coeffs: Sequence[int]) -> np.ndarray:
    acc = np.zeros_like(shares[0], dtype=np.int64)
    for s, c in zip(shares, coeffs, strict=True):
        acc = (acc + s * c) % P
    return acc
