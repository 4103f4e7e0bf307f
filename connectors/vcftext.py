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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from genofed.engine.errors import IngestError

_SEP = re.compile(rb"[/|]")

try:  # what a corrupt or truncated gzip stream raises, depending on the decompressor
    from isal.isal_zlib import error as _IsalError

    CORRUPT_STREAM: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, _IsalError)  # type: ignore[assignment]
except ImportError:  # pragma: no cover - isal is a dependency
    CORRUPT_STREAM = (EOFError, OSError, zlib.error)


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
    try:
        fh = _open(path)
    except OSError as e:
        raise IngestError(f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions") from None
    try:
        with fh:
            for line in fh:
                n += 1
                if line.startswith(b"#CHROM"):
                    cols = line.rstrip(b"\r\n").decode().split("\t")
                    return cols[9:], n
                if not line.startswith(b"#"):
                    break
    except UnicodeDecodeError:
        raise IngestError(f"{path}:{n}: the #CHROM line is not UTF-8 text; fix the sample names in the header") from None
    except CORRUPT_STREAM as e:
        raise IngestError(
            f"{path}: compressed data is truncated or corrupt in the header, after line {n} ({e}); copy the file again"
        ) from None
    raise IngestError(f"{path}: no #CHROM header line; give a VCF file")


Record = tuple[str, int, str | None, str, list[str], float | None, str | None, np.ndarray, np.ndarray]


Meta = tuple[str, int, str | None, str, list[str], float | None, str | None]
Batch = tuple[list[Meta], np.ndarray]  # record metadata, planes [variant rows, N_PLANES, width]

# cells of three bytes read as two little-endian uint16 halves: (allele | sep << 8), (allele | tab << 8)
_ALT, _MISS, _PH, _INVALID = 1, 2, 4, 128
_LUT_FIRST = np.full(1 << 16, _INVALID, dtype=np.uint8)
_LUT_SECOND = np.full(1 << 16, _INVALID, dtype=np.uint8)
for _ch, _flag in ((ord("0"), 0), (ord("1"), _ALT), (ord("."), _MISS)):
    _LUT_FIRST[_ch | ord("/") << 8] = _flag
    _LUT_FIRST[_ch | ord("|") << 8] = _flag | _PH
    _LUT_SECOND[_ch | 9 << 8] = _flag


def iter_batches(path: Path, keep: np.ndarray | None, width: int, batch: int = 512) -> Iterator[Batch]:
    """Yield batches of (record metadata, bit planes of their variant rows) in file order.

    Bi-allelic records whose calls are all three-byte ``a|b`` cells are encoded straight from
    the bytes (two lookup-table gathers and bitwise operations); other records are decoded to
    alleles first and encoded with
    :func:`genofed.genomics.encoding.encode_planes`. ``keep`` selects sample columns.
    """
    samples, _ = read_header(path)
    with _open(path) as fh:
        yield from batches_from_lines(fh, path, len(samples), keep, width, batch)


def batches_from_lines(
    lines, path: Path, n_all: int, keep: np.ndarray | None, width: int, batch: int = 512, first_line: int = 1,
    where_prefix: str | None = None,
) -> Iterator[Batch]:
    """:func:`iter_batches` over any iterable of raw lines (bytes, newline included or not)."""
    from genofed.genomics.encoding import encode_planes, pack_planes
    from genofed.genomics.store import N_PLANES

    row_bytes = 4 * n_all
    mat = np.empty((batch, max(row_bytes, 4)), dtype=np.uint8)
    metas: list[Meta] = []
    kinds: list[tuple] = []  # ("fast", row) | ("slow", alleles, phased) per record
    n_fast = 0
    lineno = first_line - 1

    def drain() -> Iterator[Batch]:
        nonlocal n_fast
        fast_planes = None
        bad_rows: set[int] = set()
        if n_fast:
            u = mat[:n_fast].view("<u2").reshape(n_fast, n_all, 2)
            first = np.take(_LUT_FIRST, u[..., 0])
            second = np.take(_LUT_SECOND, u[..., 1])
            if keep is not None:
                first, second = first[:, keep], second[:, keep]
            either, both = first | second, first & second
            bad = np.flatnonzero(either.max(axis=1, initial=0) >= _INVALID) if first.size else np.zeros(0, np.intp)
            bad_rows = set(bad.tolist())
            dip = (either & _MISS) == 0
            fast_planes = pack_planes(
                (either & _ALT, both & _ALT, (both & _MISS) == 0, dip, ((first & _PH) != 0) & dip, first & _ALT), width,
                N_PLANES,
            )
        out_planes = []
        for meta, kind in zip(metas, kinds):
            n_alt = len(meta[4])
            if kind[0] == "fast" and kind[1] not in bad_rows:
                out_planes.append(fast_planes[kind[1] : kind[1] + 1])  # type: ignore[index]
                continue
            if kind[0] == "fast":  # not in the fast shape after all: decode it exactly (or raise)
                blob = bytes(mat[kind[1], : row_bytes - 1])
                a, ph = _genotypes_slow(b"GT", blob, n_all, n_alt, kind[2])
                if keep is not None:
                    a, ph = a[keep], ph[keep]
            else:
                a, ph = kind[1], kind[2]
            if n_alt:
                out_planes.append(encode_planes(a[None], ph[None], np.zeros(n_alt, np.intp), np.arange(1, n_alt + 1), width))
        planes = np.concatenate(out_planes) if out_planes else np.zeros((0, N_PLANES, width), np.uint8)
        yield list(metas), planes
        metas.clear()
        kinds.clear()
        n_fast = 0

    try:
        for line in lines:
            lineno += 1
            if line.startswith(b"#"):
                continue
            end = len(line)
            while end and line[end - 1] in (10, 13):
                end -= 1
            if not end:
                continue
            where = f"{where_prefix or path}:{lineno}"
            meta, fmt, start = _parse_fixed(line, end, where)
            n_alt = len(meta[4])
            if not n_all:
                kinds.append(("slow", np.empty((0, 2), np.int8), np.empty(0, bool)))
            elif start < 0:
                raise IngestError(f"{where}: {-start} columns, expected {9 + n_all} (9 + {n_all} samples)")
            elif n_alt == 1 and fmt == b"GT" and end - start == row_bytes - 1:
                row = mat[n_fast]
                row[: row_bytes - 1] = np.frombuffer(line, np.uint8, count=end - start, offset=start)
                row[row_bytes - 1] = 9
                kinds.append(("fast", n_fast, where))
                n_fast += 1
            else:
                a, ph = _genotypes(fmt, line[start:end], n_all, n_alt, where)
                if keep is not None:
                    a, ph = a[keep], ph[keep]
                kinds.append(("slow", a, ph))
            metas.append(meta)
            if len(metas) >= batch:
                yield from drain()
        if metas:
            yield from drain()
    except CORRUPT_STREAM as e:
        raise IngestError(
            f"{path}: compressed data is truncated or corrupt after line {lineno} ({e}); copy the file again"
        ) from None


def _parse_fixed(line: bytes, end: int, where: str) -> tuple[Meta, bytes, int]:
    """The eight fixed columns, FORMAT, and the offset of the first sample column.

    The offset is negative (minus the column count) when the record has no sample columns.
    """
    tabs = []
    pos = -1
    for _ in range(9):
        pos = line.find(b"\t", pos + 1, end)
        if pos < 0:
            break
        tabs.append(pos)
    if len(tabs) < 7:
        raise IngestError(f"{where}: record has {len(tabs) + 1} tab-separated columns, a VCF record needs at least 8 (column {len(tabs) + 2} missing; is the line truncated?)")
    head = line[: tabs[6] if len(tabs) == 7 else tabs[7]].split(b"\t")
    chrom, pos_b, rid, ref, alt_b, qual_b, filt_b = head[:7]
    for col, value in ((0, chrom), (3, ref), (4, alt_b)):
        if not value:
            raise IngestError(f"{where}, column {col + 1} ({_FIXED[col]}): empty; a VCF record needs it (use '.' for no ALT allele)")
    if not pos_b.isdigit():
        raise IngestError(f"{where}, column 2 (POS): {pos_b[:40].decode(errors='replace')!r} is not a positive integer")
    try:
        qual = None if qual_b == b"." else float(qual_b)
    except ValueError:
        raise IngestError(f"{where}, column 6 (QUAL): {qual_b[:20].decode(errors='replace')!r} is not a number or '.'") from None
    try:
        alts = [] if alt_b == b"." else alt_b.decode().split(",")
        meta = (chrom.decode(), int(pos_b), None if rid == b"." else rid.decode(), ref.decode(), alts,
                qual, None if filt_b == b"." else filt_b.decode())
        if "" in alts:
            raise IngestError(f"{where}, column 5 (ALT): {alt_b[:40].decode()!r} has an empty allele; separate ALT alleles by single commas")
    except UnicodeDecodeError:
        col = next(i for i, b in enumerate((chrom, pos_b, rid, ref, alt_b, qual_b, filt_b)) if not _is_utf8(b))
        raise IngestError(f"{where}, column {col + 1} ({_FIXED[col]}): not UTF-8 text; is the file corrupt?") from None
    if len(tabs) < 9:
        return meta, b"", -(len(tabs) + 1)
    return meta, line[tabs[7] + 1 : tabs[8]], tabs[8] + 1


_FIXED = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER")


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


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
    if fmt == b"GT" and size == 4 * n - 1:
        a, ph, ok = _decode_batch(np.frombuffer(blob + b"\t", np.uint8)[None, :], n)
        if ok[0] and a.max(initial=-1) <= n_alt:
            return a[0], ph[0]
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
