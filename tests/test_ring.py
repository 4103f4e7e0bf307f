"""The MPC protocol's numpy arithmetic (privacy/secure/ring.py) against exact Python integers:
additive shares over Z_2^(32k) with pairwise AES-CTR masks, fixed-point encoding, and Shamir
shares over F_p with BGW multiplication, simulated for three and five parties in one process."""

from __future__ import annotations

import os

import numpy as np
import pytest

from genofed.privacy.secure import ring as R


@pytest.mark.parametrize("m", [3, 5])
def test_additive_shares_sum_to_the_total_and_look_random(m):
    rng = np.random.default_rng(m)
    vals = [rng.integers(-2**62, 2**62, size=1000) for _ in range(m)]
    seeds = {(i, j): os.urandom(32) for i in range(m) for j in range(m) if i != j}
    shares = [R.mask(R.int_digits(vals[i], 4), [seeds[(i, j)] for j in range(m) if j != i],
                     [seeds[(j, i)] for j in range(m) if j != i]) for i in range(m)]
    total = R.to_ints(R.open_sum(shares))
    assert total == [sum(int(v[n]) for v in vals) for n in range(1000)]
    # one share alone: canonical digits, no visible relation to the party's values (uniform digits)
    s0 = shares[0]
    assert s0.min() >= 0 and s0.max() < 2**32
    assert abs(s0[:, 0].mean() / 2**32 - 0.5) < 0.05
    assert not np.array_equal(R.to_ints(s0), [int(v) for v in vals[0]])


def test_fixed_point_is_exact_and_signed():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1e6, 500), rng.normal(0, 1e-3, 100), [0.0, -0.0, 1.5, -1.5, 2.0**60, -(2.0**60), 123456789.123]])
    d = R.fixed_digits(x, 32)
    got = R.to_ints(R.normalize(d))
    assert got == [round(float(v) * 2**32) for v in x]
    back = R.to_fixed(R.normalize(d), 32)
    assert np.allclose(back, x, rtol=0, atol=2**-33)


def test_big_digits_and_int64_round_trip():
    vals = [0, 1, -1, 2**63 - 1, -(2**63), 2**100, -(2**100) + 7]
    d = R.big_digits(vals, 6)
    assert R.to_ints(d) == vals
    assert R.to_int64(R.big_digits(vals[:5], 4)).tolist() == vals[:5]
    assert R.to_int64(d) is None


@pytest.mark.parametrize("m", [3, 4, 5])
def test_shamir_multiplication_by_resharing(m):
    t = (m - 1) // 2
    rng = np.random.default_rng(m)
    a = rng.integers(0, 2000, 300)
    b = rng.integers(0, 2000, 300)
    sa, sb = R.shamir_split(a, t, m), R.shamir_split(b, t, m)
    # each party multiplies locally (degree 2t) and reshares; each recombines at 0
    lam = R.lagrange_at_zero(list(range(1, m + 1)))
    resh = [R.shamir_split(sa[i] * sb[i] % R.P, t, m) for i in range(m)]
    prod = [R.combine([resh[i][j] for i in range(m)], lam) for j in range(m)]
    lam_t = R.lagrange_at_zero(list(range(1, t + 2)))
    assert R.combine(prod[: t + 1], lam_t).tolist() == (a * b % R.P).tolist()
    # any t shares are uniform: a single share tells nothing (spot check: not the secret)
    assert not np.array_equal(sa[0], a)
