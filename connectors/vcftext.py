"""A fast VCF text reader for GT: ISA-L decompression plus numpy over fixed-width calls.

Most genotype VCFs write every call as three bytes (``0|1``, ``0/.``) or one (haploid ``1``),
separated by tabs, so a record's sample columns are a fixed-stride byte array that numpy can
decode without a Python loop. Records in other shapes (FORMAT fields beyond GT, multi-digit
alleles, mixed ploidy) fall back to a per-cell parse. Every record yields the same tuple as the
cyvcf2 reader in :mod:`genofed.connectors.ingest`, and both are tested to write identical stores.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from genofed.engine.errors import IngestError

_SEP = re.compile(rb"[/|]")


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        return open(path, "rb")  # noqa: SIM115
    try:
        from isal import igzip_threaded

        return igzip_threaded.open(path, "rb", threads=1)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - isal is a dependency; gzip is the fallback
        return gzip.open(path, "rb")  # type: ignore[return-value]


def read_header(path: Path) -> tuple[list[str], int]:
    """Sample names and the number of header lines."""
    n = 0
    with _open(path) as fh:
        for line in fh:
            n += 1
            if line.startswith(b"#CHROM"):
                cols = line.rstrip(b"\r\n").decode().split("\t")
                return cols[9:], n
            if not line.startswith(b"#"):
                break
    raise IngestError(f"{path}: no #CHROM header line; give a VCF file")


Record = tuple[str, int, str | None, str, list[str], float | None, str | None, np.ndarray, np.ndarray]


def iter_records(path: Path, keep: np.ndarray | None = None, batch: int = 512) -> Iterator[Record]:
    """Yield ``(chrom, pos, id, ref, alts, qual, filter, alleles[n, 2] int16, phased[n] bool)``.

    Alleles use cyvcf2's codes: ``-1`` missing, ``-2`` no second allele (haploid). ``keep``
    selects sample columns (indices into the header's samples). Records whose calls are all
    three-byte ``a|b`` cells are decoded ``batch`` at a time in one numpy pass.
    """
    samples, _ = read_header(path)
    n_all = len(samples)
    width = 4 * n_all
    mat = np.empty((batch, max(width, 4)), dtype=np.uint8)
    pending: list[tuple] = []  # (meta, where, row-in-mat or None, decoded or None)
    n_fast = 0
    lineno = 0

    def drain() -> Iterator[Record]:
        nonlocal n_fast
        decoded = _decode_batch(mat[:n_fast], n_all) if n_fast else None
        for meta, where, row, dec, blob, n_alt in pending:
            if row is not None:
                a, ph, ok = decoded[0][row], decoded[1][row], decoded[2][row]  # type: ignore[index]
                if not ok or (a.max(initial=-1) > n_alt):
                    a, ph = _genotypes_slow(b"GT", blob, n_all, n_alt, where)
            else:
                a, ph = dec
            if keep is not None:
                a, ph = a[keep], ph[keep]
            yield (*meta, a, ph)
        pending.clear()
        n_fast = 0

    try:
        with _open(path) as fh:
            for line in fh:
                lineno += 1
                if line.startswith(b"#"):
                    continue
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                parts = line.split(b"\t", 9)
                where = f"{path}:{lineno}"
                if len(parts) < 8:
                    raise IngestError(f"{where}: record has {len(parts)} tab-separated columns, a VCF record needs at least 8 (column {len(parts) + 1} missing; is the line truncated?)")
                chrom, pos_b, rid, ref, alt_b, qual_b, filt_b = parts[:7]
                if not pos_b.isdigit():
                    raise IngestError(f"{where}, column 2 (POS): {pos_b[:40].decode(errors='replace')!r} is not a positive integer")
                alts = [] if alt_b == b"." else alt_b.decode().split(",")
                try:
                    qual = None if qual_b == b"." else float(qual_b)
                except ValueError:
                    raise IngestError(f"{where}, column 6 (QUAL): {qual_b[:20].decode(errors='replace')!r} is not a number or '.'") from None
                meta = (chrom.decode(), int(pos_b), None if rid == b"." else rid.decode(), ref.decode(), alts,
                        qual, None if filt_b == b"." else filt_b.decode())
                if not n_all:
                    pending.append((meta, where, None, (np.empty((0, 2), np.int16), np.empty(0, bool)), b"", len(alts)))
                elif len(parts) < 10:
                    raise IngestError(f"{where}: {len(parts)} columns, expected {9 + n_all} (9 + {n_all} samples)")
                elif parts[8] == b"GT" and len(parts[9]) == width - 1:
                    blob = parts[9]
                    row = mat[n_fast]
                    row[: width - 1] = np.frombuffer(blob, np.uint8)
                    row[width - 1] = 9
                    pending.append((meta, where, n_fast, None, blob, len(alts)))
                    n_fast += 1
                else:
                    pending.append((meta, where, None, _genotypes(parts[8], parts[9], n_all, len(alts), where), b"", len(alts)))
                if len(pending) >= batch:
                    yield from drain()
            yield from drain()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise IngestError(
            f"{path}: compressed data is truncated or corrupt after line {lineno} ({e}); copy the file again"
        ) from None


_BAD = np.int8(-128)
_ALLELE = np.full(256, _BAD, dtype=np.int8)
_ALLELE[48:58] = np.arange(10, dtype=np.int8)
_ALLELE[46] = -1  # '.'


def _decode_batch(m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode rows of three-byte calls: alleles [rows, n, 2] int8, phased [rows, n], row ok [rows]."""
    cells = m.reshape(m.shape[0], n, 4)
    a = np.empty((m.shape[0], n, 2), np.int8)
    np.take(_ALLELE, cells[..., 0], out=a[..., 0])
    np.take(_ALLELE, cells[..., 2], out=a[..., 1])
    sep = cells[..., 1]
    phased = sep == 124
    ok = (a.min(axis=(1, 2)) > _BAD) & ((sep == 47) | phased).all(axis=1) & (cells[..., 3] == 9).all(axis=1)
    return a, phased, ok


def _genotypes(fmt: bytes, blob: bytes, n: int, n_alt: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One record outside the batched three-byte shape: all-haploid fast path, else per cell."""
    size = len(blob)
    if fmt == b"GT" and size == 2 * n - 1:
        cells = np.frombuffer(blob + b"\t", np.uint8).reshape(n, 2)
        a = np.full((n, 2), -2, np.int8)
        np.take(_ALLELE, cells[:, 0], out=a[:, 0])
        if (cells[:, 1] == 9).all() and a[:, 0].min() > _BAD and a[:, 0].max() <= n_alt:
            return a, np.zeros(n, bool)
    return _genotypes_slow(fmt, blob, n, n_alt, where)


def _genotypes_slow(fmt: bytes, blob: bytes, n: int, n_alt: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    keys = fmt.split(b":")
    cells = blob.split(b"\t")
    if len(cells) != n:
        raise IngestError(f"{where}: {9 + len(cells)} columns, expected {9 + n} (9 + {n} samples)")
    a = np.full((n, 2), -1, np.int8)
    ph = np.zeros(n, bool)
    if b"GT" not in keys:
        return a, ph
    k = keys.index(b"GT")
    for j, cell in enumerate(cells):
        fields = cell.split(b":")
        gt = fields[k] if k < len(fields) else b"."
        alleles = _SEP.split(gt)
        if len(alleles) > 2:
            raise IngestError(f"{where}, column {10 + j} (sample {j + 1}): genotype {gt[:20].decode(errors='replace')!r} has more than two alleles (polyploid calls are not supported)")
        for i, al in enumerate(alleles):
            if al == b".":
                continue
            if not al.isdigit() or int(al) > n_alt:
                raise IngestError(
                    f"{where}, column {10 + j} (sample {j + 1}): genotype {gt[:20].decode(errors='replace')!r} is not valid "
                    f"(alleles must be '.' or 0..{n_alt})"
                )
            a[j, i] = int(al)
        if len(alleles) == 1:
            a[j, 1] = -2
        else:
            ph[j] = b"|" in gt
    return a, ph
