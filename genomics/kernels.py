"""Genotype kernels over bit-packed planes (see :mod:`genofed.genomics.store`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..engine.limits import check as check_limits
from .store import ALT1, ALT2, CALLED, DIPLOID, PHASED


def genotype_rows(planes, vidx: np.ndarray, n_samples: int) -> pa.Table:
    """Unpack the selected variant rows into a long Arrow table (vidx, sidx, dosage, ploidy, phased).

    Rows are ordered variant-major. Used only for queries the count kernels cannot answer, on a
    variant set the node has already bounded.
    """
    vidx = np.asarray(vidx, dtype=np.int64)
    nv = len(vidx)
    if nv == 0:
        return pa.table({
            "vidx": pa.array([], pa.int32()), "sidx": pa.array([], pa.int32()),
            "dosage": pa.array([], pa.int8()), "ploidy": pa.array([], pa.int8()),
            "phased": pa.array([], pa.bool_()),
        })
    block = np.asarray(planes[vidx])
    bits = np.unpackbits(block, axis=2, bitorder="little")[:, :, :n_samples]
    called = bits[:, CALLED].astype(bool).ravel()
    dosage = (bits[:, ALT1] + bits[:, ALT2]).astype(np.int8).ravel()
    ploidy = (bits[:, CALLED] + bits[:, DIPLOID]).astype(np.int8).ravel()
    phased = bits[:, PHASED].astype(bool).ravel()
    return pa.table({
        "vidx": pa.array(np.repeat(vidx.astype(np.int32), n_samples)),
        "sidx": pa.array(np.tile(np.arange(n_samples, dtype=np.int32), nv)),
        "dosage": pa.array(dosage, mask=~called),
        "ploidy": pa.array(ploidy),
        "phased": pa.array(phased),
    })


# counts the kernel can produce per (variant, sample group)
COUNTS = ("alt1", "alt2", "called", "diploid", "het", "hap_alt")
_BASE = {"alt1": ALT1, "alt2": ALT2, "called": CALLED, "diploid": DIPLOID}


def group_counts(
    planes,
    vidx: np.ndarray,
    masks: np.ndarray,
    needed: tuple[str, ...] = COUNTS,
    chunk: int | None = None,
    complete: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-variant, per-sample-group call counts.

    Parameters
    ----------
    planes
        uint8 [n_variants, N_PLANES, width]: an array or a :class:`~genofed.genomics.store.PlaneReader`.
    vidx
        sorted variant rows to count.
    masks
        uint64 [n_groups, width // 8] sample masks.
    needed
        which counts to compute, among :data:`COUNTS`.
    chunk
        variants per step (default: about 1 MiB of planes, measured fastest here).
    complete
        optional per-variant flags (every sample called, diploid): for a step of complete
        variants, ``called`` and ``diploid`` are the group sizes and their planes are not read.

    Returns
    -------
    dict of int64 arrays [len(vidx), n_groups]: ``alt1`` (calls with ≥1 ALT copy), ``alt2``
    (2 copies), ``called`` (≥1 allele called), ``diploid`` (2 alleles called), ``het`` (diploid,
    one copy), ``hap_alt`` (one allele called and it is ALT).
    """
    vidx = np.asarray(vidx, dtype=np.int64)
    ng = masks.shape[0]
    base: list[str] = [k for k in ("alt1", "alt2", "called", "diploid") if k in needed]
    derived: list[str] = [k for k in ("het", "hap_alt") if k in needed]
    out: dict[str, np.ndarray] = {k: np.zeros((len(vidx), ng), dtype=np.int64) for k in base + derived}
    if not len(vidx) or not (base or derived):
        return out
    base_idx = [_BASE[k] for k in base]
    lean = [k for k in base if k not in ("called", "diploid")]
    lean_idx = [_BASE[k] for k in lean]
    sizes = np.bitwise_count(masks).sum(axis=1, dtype=np.int64)
    shortcut = complete is not None and len(lean) < len(base)
    if chunk is None:  # about 1 MiB of planes per step: the working set stays in cache
        chunk = max(64, (1 << 20) // max(1, planes.shape[2] * (len(base) + len(derived))))
    contiguous = vidx[-1] - vidx[0] + 1 == len(vidx)
    for start in range(0, len(vidx), chunk):
        check_limits()  # the node's deadline for this fragment (no-op outside a node)
        sel = vidx[start : start + chunk]
        stop = start + len(sel)
        names, idx = base, base_idx
        if shortcut and bool(np.all(complete[sel])):  # type: ignore[index]
            names, idx = lean, lean_idx
            for k in ("called", "diploid"):
                if k in out:
                    out[k][start:stop] = sizes[None, :]
        want = sorted(set(idx) | ({ALT1, ALT2, DIPLOID} if derived else set()))
        got = _read(planes, sel, contiguous, want)  # [len(want), nv, words]
        plane = {p: got[j] for j, p in enumerate(want)}
        extra = []
        if "het" in derived:
            extra.append(plane[ALT1] & ~plane[ALT2] & plane[DIPLOID])
        if "hap_alt" in derived:
            extra.append(plane[ALT1] & ~plane[DIPLOID])
        for gi in range(ng):
            m = masks[gi]
            for k, p in zip(names, idx):
                out[k][start:stop, gi] = np.bitwise_count(plane[p] & m).sum(axis=1, dtype=np.int64)
            for name, arr in zip(derived, extra):
                out[name][start:stop, gi] = np.bitwise_count(arr & m).sum(axis=1, dtype=np.int64)
    return out


def _read(planes, sel: np.ndarray, contiguous: bool, want: list[int]) -> np.ndarray:
    """uint64 [len(want), len(sel), words] from a PlaneReader (only those planes) or an array."""
    if hasattr(planes, "read_planes"):
        raw = (planes.read_planes(int(sel[0]), int(sel[-1]) + 1, want) if contiguous
               else planes.read_planes_rows(sel, want))
        return raw.view(np.uint64)
    block = np.asarray(planes[int(sel[0]) : int(sel[-1]) + 1] if contiguous else planes[sel])
    return np.ascontiguousarray(block[:, want].transpose(1, 0, 2)).view(np.uint64)

