"""Exact secure sums of real vectors through Flower's SecAgg+.

SecAgg+ sums *quantised* vectors: each party scales its update by ``num_examples / max_weight``,
clips it to ``[-clipping_range, clipping_range]`` and rounds it stochastically onto
``quantization_range`` levels, so the sum the server unmasks is noisy (about 4e-6 with Flower's
defaults) and a weighted average depends on an upper bound of every node's size.

genofed never lets SecAgg+ quantise anything. Every contribution is a vector of real sums
(counts, moments, Newton blocks, weighted model parameters), encoded at the node as fixed-point
integers with ``FRACTION_BITS`` fractional bits, offset to be non-negative and cut into
``LIMBS`` limbs of ``LIMB_BITS`` bits. Each limb is an integer far below the clipping range, and
the workflow is configured so that its quantisation is the identity (``num_examples = 1``,
``max_weight = 1``, ``clipping_range = quantization_range / 2``): SecAgg+ then adds integers
exactly, the server learns only the limb-wise sums, and carries them back into the exact sum of
the fixed-point values. Plain FedAvg and SecAgg+ therefore give the same numbers (to 2^-28), and
the weighting by sample size happens inside the vectors (``n_i * w_i`` and ``n_i``), not in the
protocol.
"""

from __future__ import annotations

import numpy as np

FRACTION_BITS = 28  # resolution 3.7e-9
LIMB_BITS = 16
LIMBS = 4  # 64 bits: |value| < 2^(63 - FRACTION_BITS) = 3.4e10
OFFSET = 1 << 63
QUANTIZATION_RANGE = 1 << 26
MODULUS_RANGE = 1 << 32
CLIPPING_RANGE = QUANTIZATION_RANGE / 2
MAX_NODES = 32  # K * (limb + clipping_range) must stay below the modulus
MAX_ABS = float(1 << (63 - FRACTION_BITS)) * 0.999


class LaneError(ValueError):
    """A vector that cannot be encoded (non-finite, or too large for the fixed-point range)."""


def encode(values: np.ndarray) -> np.ndarray:
    """A float vector as ``LIMBS`` limbs per value (float64 integers in [0, 2^LIMB_BITS)),
    limb-major: ``[limb0 of every value, limb1 of every value, ...]``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise LaneError("a value to be summed is not finite (NaN or infinity); nothing was sent")
    if v.size and np.abs(v).max() >= MAX_ABS:
        raise LaneError(f"a value to be summed exceeds the secure-sum range (|x| < {MAX_ABS:.3g}); standardise the features")
    z = np.rint(v * float(1 << FRACTION_BITS)).astype(np.int64)
    u = z.view(np.uint64) ^ np.uint64(OFFSET)  # two's complement + 2^63 = offset binary
    mask = np.uint64((1 << LIMB_BITS) - 1)
    limbs = [((u >> np.uint64(LIMB_BITS * j)) & mask).astype(np.float64) for j in range(LIMBS)]
    return np.concatenate(limbs) if limbs else np.zeros(0)


def decode_sum(limb_sums: np.ndarray, parties: int) -> np.ndarray:
    """The exact sum over ``parties`` encoded vectors, from the limb-wise sums."""
    s = np.asarray(limb_sums, dtype=np.float64).reshape(-1)
    if s.size % LIMBS:
        raise LaneError(f"a summed vector of {s.size} lanes is not a whole number of {LIMBS}-limb values")
    ints = np.rint(s).astype(np.int64)
    if np.abs(s - ints).max(initial=0.0) > 1e-3 or (ints < 0).any():
        raise LaneError("the summed lanes are not non-negative integers: the secure aggregation was misconfigured or tampered with")
    n = s.size // LIMBS
    parts = ints.reshape(LIMBS, n).astype(object)
    total = np.zeros(n, dtype=object)
    for j in range(LIMBS):
        total = total + parts[j] * (1 << (LIMB_BITS * j))
    total = total - parties * OFFSET
    return np.array([float(t) / float(1 << FRACTION_BITS) for t in total], dtype=np.float64)


def decode_one(limbs: np.ndarray) -> np.ndarray:
    """One party's encoded vector back (tests, plain mode)."""
    return decode_sum(limbs, 1)
