"""The node store in Hail's native format, converted once and cached per store version.

The cache is ``DIR/v-<stamp>/hail/`` next to the store version the node serves, or, on a cluster,
``<[hail] data_dir>/<v-stamp>-<store hash>/`` on a filesystem every executor reads (HDFS, GCS,
S3, or a shared mount): every file is written through Hail's filesystem layer. Layout::

    genotypes.mt       MatrixTable: rows keyed by ``vidx`` with the ``variants`` columns,
                            columns keyed by ``sample_id``, entries ``dosage`` (int32, missing
                            when not called), ``ploidy`` (int32), ``phased`` (bool)
    samples.ht              the sample sheet; clinical/<name>.ht each clinical table
    variants.ht             the ``variants`` table, keyed by ``vidx``
    DONE                    written last: a cache without it is never read, and is rewritten

so an interrupted conversion never leaves a half-written cache that a later start would read
(a new ingest makes a new store version, hence a new cache). Genotypes go through
one text matrix of per-call codes (``called + 2*diploid + 4*phased + 8*alt>=1 + 16*alt==2``,
decoded by Hail), streamed from the bit planes in blocks; Hail's native ``import_matrix_table``
parses it in parallel.
"""

from __future__ import annotations

import hashlib
import json
import time
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...genomics.store import ALT1, ALT2, CALLED, DIPLOID, PHASED, NodeStore
from ..errors import GenofedError

CACHE = "hail"
DONE = "DONE"
_BLOCK = 2048  # variant rows per block when writing the call-code matrix


def cache_uri(store: NodeStore, data_dir: str = "") -> str:
    """Where this store version's Hail tables live."""
    if not data_dir:
        return str(store.path / CACHE)
    tag = hashlib.sha256(str(store.path).encode()).hexdigest()[:10]
    return f"{data_dir.rstrip('/')}/{store.path.name}-{tag}"


def _fs() -> Any:
    import hailtop.fs as hfs  # Hail's filesystem layer: local, hdfs://, gs://, s3a:// ...

    return hfs


def is_converted(hl: ModuleType, uri: str) -> bool:  # noqa: ARG001
    return bool(_fs().exists(f"{uri}/{DONE}"))


def _rmtree(hl: ModuleType, uri: str) -> None:  # noqa: ARG001
    try:
        _fs().rmtree(uri)
    except Exception:  # noqa: BLE001 - a missing tree, or a filesystem without rmtree: nothing to clean
        pass


def _hail_type(hl: ModuleType, t: pa.DataType) -> Any:
    if pa.types.is_boolean(t):
        return hl.tbool
    if pa.types.is_integer(t):
        return hl.tint64
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return hl.tfloat64
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return hl.tstr
    raise GenofedError(f"the hail backend cannot store a column of type {t}; convert it to a number or text at ingest")


def _write_jsonl(hl: ModuleType, table: pa.Table, path: str) -> None:
    """One JSON object per row (robust to any text value, NULL as null)."""
    cols = table.column_names
    data = [table.column(c).to_pylist() for c in cols]
    with _fs().open(path, "w") as f:
        for row in zip(*data, strict=True):
            f.write(json.dumps(dict(zip(cols, row, strict=True)), allow_nan=False, default=float) + "\n")


def _import_table(hl: ModuleType, table: pa.Table, scratch: str, name: str, key: str | None) -> Any:
    """An Arrow table as a Hail Table, through JSON lines (types from the Arrow schema)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
    src = f"{scratch}/{name}.jsonl"
    _write_jsonl(hl, table, src)
    dtype = hl.tstruct(**{f.name: _hail_type(hl, f.type) for f in table.schema})
    ht = hl.import_table(src, no_header=True, delimiter="\x01", quote=None, types={"f0": hl.tstr}, min_partitions=1)
    ht = ht.select(**hl.parse_json(ht.f0, dtype))
    for f in table.schema:  # Hail's JSON parser reads integers as int64: keep int32 where Arrow had it
        if pa.types.is_integer(f.type) and f.type.bit_width <= 32:
            ht = ht.annotate(**{f.name: hl.int32(ht[f.name])})
    return ht.key_by(key) if key else ht


# call code (called + 2*diploid + 4*phased + 8*alt>=1 + 16*alt==2) -> VCF GT; other codes do not
# occur in stores made by ingest, and make the conversion fall back to the exact code matrix
_GT = {0: b".", 1: b"0", 9: b"1", 3: b"0/0", 11: b"0/1", 27: b"1/1", 7: b"0|0", 15: b"0|1", 31: b"1|1"}


class _Unrepresentable(Exception):
    pass


def _codes(store: NodeStore):
    """Blocks of (first variant row, call codes uint8 [rows, n_samples])."""
    n = store.manifest.n_samples
    for start in range(0, store.manifest.n_variants, _BLOCK):
        stop = min(start + _BLOCK, store.manifest.n_variants)
        bits = np.unpackbits(np.asarray(store.planes[np.arange(start, stop)]), axis=2, bitorder="little")[:, :, :n]
        yield start, (bits[:, CALLED] + 2 * bits[:, DIPLOID] + 4 * bits[:, PHASED] + 8 * bits[:, ALT1]
                      + 16 * bits[:, ALT2]).astype(np.uint8)


def _write_vcf(hl: ModuleType, store: NodeStore, path: str) -> None:
    """The genotypes as a GT-only VCF (CHROM 1, POS = row + 1, ID = row), written with numpy:
    each call is looked up as up to four bytes ("0|1\t") and the padding dropped."""
    lut = np.zeros((32, 4), np.uint8)
    lens = np.zeros(32, np.int64)
    for c, g in _GT.items():
        lut[c, : len(g) + 1] = list(g + b"\t")
        lens[c] = len(g) + 1
    ok = np.zeros(32, bool)
    ok[list(_GT)] = True
    n = store.manifest.n_samples
    with _fs().open(path, "wb") as f:
        f.write(b"##fileformat=VCFv4.2\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"Genotype\">\n##contig=<ID=1>\n")
        f.write(("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"s{i}" for i in range(n)) + "\n").encode())
        for start, code in _codes(store):
            if not ok[code].all():
                raise _Unrepresentable
            text = lut[code].reshape(-1)
            text = text[text != 0]
            ends = np.cumsum(lens[code].sum(axis=1))
            begins = np.concatenate([[0], ends[:-1]])
            f.write(b"".join(f"1\t{start + r + 1}\t{start + r}\tA\tC\t.\t.\t.\tGT\t".encode() + text[b:e - 1].tobytes() + b"\n"
                             for r, (b, e) in enumerate(zip(begins.tolist(), ends.tolist(), strict=True))))


def _write_codes(hl: ModuleType, store: NodeStore, path: str) -> None:
    """The exact call-code matrix as TSV (header ``vidx`` + sample placeholders), for any code."""
    n = store.manifest.n_samples
    lut = np.array([list(f"{c:02d}\t".encode()) for c in range(32)], dtype=np.uint8)  # fixed width: 3 bytes a call
    with _fs().open(path, "wb") as f:
        f.write(("\t".join(["vidx", *(f"s{i}" for i in range(n))]) + "\n").encode())
        for start, code in _codes(store):
            text = lut[code]
            text[:, -1, 2] = ord("\n")
            rows = text.reshape(code.shape[0], -1)
            f.write(b"".join(str(start + r).encode() + b"\t" + rows[r].tobytes() for r in range(code.shape[0])))


def _genotypes(hl: ModuleType, store: NodeStore, scratch: str, variants: Any, sample_ids: list[str]) -> Any:
    """The genotypes MatrixTable: rows in store order with the variant columns, columns keyed by
    ``sample_id``, entries dosage/ploidy/phased exactly as the store has them."""
    try:
        vcf = f"{scratch}/genotypes.vcf"
        _write_vcf(hl, store, vcf)
        mt = hl.import_vcf(vcf, reference_genome=None, array_elements_required=False)
        gt = mt.GT
        mt = mt.select_entries(dosage=hl.int32(gt.n_alt_alleles()), ploidy=hl.int32(hl.or_else(gt.ploidy, 0)),
                               phased=hl.or_else(gt.phased, False))
        mt = mt.select_rows()
        vt = variants.key_by(locus=hl.struct(contig="1", position=hl.int32(variants.vidx + 1)))
        mt = mt.annotate_rows(**vt[mt.locus])
    except _Unrepresentable:
        codes = f"{scratch}/codes.tsv"
        _write_codes(hl, store, codes)
        mt = hl.import_matrix_table(codes, row_fields={"vidx": hl.tint64}, row_key="vidx", entry_type=hl.tint32, delimiter="\t")
        mt = mt.rename({"col_id": "s"})
        x = mt.x
        mt = mt.select_entries(
            dosage=hl.or_missing((x % 2) == 1, hl.int32((x // 8) % 2 + (x // 16) % 2)),
            ploidy=hl.int32(x % 2 + (x // 2) % 2),
            phased=((x // 4) % 2) == 1,
        )
        mt = mt.annotate_rows(**variants[mt.vidx])
    mt = mt.annotate_cols(sample_id=hl.literal(sample_ids)[hl.int32(mt.s[1:])])
    return mt.key_cols_by("sample_id").drop("s")


def convert(hl: ModuleType, store: NodeStore, data_dir: str = "", *, force: bool = False) -> str:
    """Convert the store version to Hail's native format once; returns the cache URI."""
    out = cache_uri(store, data_dir)
    if is_converted(hl, out) and not force:
        return out
    _rmtree(hl, out)  # a conversion that never finished
    scratch = f"{out}/_scratch"
    t0 = time.time()
    samples = pq.read_table(store.samples_path)
    variants = pq.read_table(store.variants_path)
    _import_table(hl, samples, scratch, "samples", "sample_id").write(f"{out}/samples.ht", overwrite=True)
    vht = _import_table(hl, variants, scratch, "variants", None)
    vht = vht.annotate(vidx=hl.int64(vht.vidx)).key_by("vidx")
    vht.write(f"{out}/variants.ht", overwrite=True)
    for name in store.manifest.clinical:
        _import_table(hl, pq.read_table(store.clinical_path(name)), scratch, name, None) \
            .write(f"{out}/clinical/{name}.ht", overwrite=True)
    vt = hl.read_table(f"{out}/variants.ht")
    mt = _genotypes(hl, store, scratch, vt, samples.column("sample_id").to_pylist())
    mt.write(f"{out}/genotypes.mt", overwrite=True)
    _rmtree(hl, scratch)
    with _fs().open(f"{out}/{DONE}", "w") as f:
        f.write(json.dumps({"seconds": round(time.time() - t0, 1), "hail": hl.version(), "store": str(store.path),
                            "samples": store.manifest.n_samples, "variants": store.manifest.n_variants}))
    return out
