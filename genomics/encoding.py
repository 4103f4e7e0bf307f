"""Genotype calls to bit planes (numpy only, so ingest worker processes import little)."""

from __future__ import annotations

import numpy as np

from .store import N_PLANES


def encode_planes(alleles: np.ndarray, phased: np.ndarray, src: np.ndarray, alt: np.ndarray, width: int) -> np.ndarray:
    """Bit planes for variant rows from decoded calls.

    Parameters
    ----------
    alleles
        int8 [records, n, 2]: allele indices, ``-1`` missing, ``-2`` no second allele.
    phased
        bool [records, n].
    src, alt
        per variant row: its record (index into ``alleles``) and its ALT number (1-based).
    """
    a1, a2, ph = alleles[src, :, 0], alleles[src, :, 1], phased[src]
    alt_col = np.asarray(alt, dtype=np.int8)[:, None]
    e1, e2 = a1 == alt_col, a2 == alt_col
    c1, c2 = a1 >= 0, a2 >= 0
    dip = c1 & c2
    return pack_planes((e1 | e2, e1 & e2, c1 | c2, dip, ph & dip, e1), width, N_PLANES)


def pack_planes(bits: tuple[np.ndarray, ...], width: int, n_planes: int) -> np.ndarray:
    """Pack boolean (or 0/nonzero) [rows, n] arrays into uint8 [rows, n_planes, width]."""
    rows = bits[0].shape[0]
    nb = (bits[0].shape[1] + 7) // 8
    out = np.zeros((rows, n_planes, width), dtype=np.uint8)
    for i, b in enumerate(bits):
        out[:, i, :nb] = np.packbits(b, axis=1, bitorder="little")
    return out
