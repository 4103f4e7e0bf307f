"""The node store in Hail's native format, converted once and cached next to the store version.

Layout (inside the store version directory the node serves, ``DIR/v-<stamp>/``)::

    hail/genotypes.mt       MatrixTable: rows keyed by ``vidx`` with the ``variants`` columns,
                            columns keyed by ``sample_id``, entries ``dosage`` (int32, missing
                            when not called), ``ploidy`` (int32), ``phased`` (bool)
    hail/samples.ht         the sample sheet; hail/clinical/<name>.ht each clinical table
    hail/variants.ht        the ``variants`` table, keyed by ``vidx``
    hail/DONE               written last: a conversion without it is ignored and redone

The conversion writes into ``hail.tmp-<pid>`` and renames it into place, so an interrupted
conversion never leaves a half-written cache that a later start would read. Genotypes go through
one text matrix of per-call codes (``called + 2*diploid + 4*phased + 8*alt>=1 + 16*alt==2``,
decoded by Hail), streamed from the bit planes in blocks; Hail's native ``import_matrix_table``
parses it in parallel.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
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


def cache_dir(store: NodeStore) -> Path:
    return store.path / CACHE


def is_converted(store: NodeStore) -> bool:
    return (cache_dir(store) / DONE).exists()


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


def _write_jsonl(table: pa.Table, path: Path) -> None:
    """One JSON object per row (robust to any text value, NULL as null)."""
    cols = table.column_names
    data = [table.column(c).to_pylist() for c in cols]
    with open(path, "w") as f:
        for row in zip(*data, strict=True):
            f.write(json.dumps(dict(zip(cols, row, strict=True)), allow_nan=False, default=float) + "\n")


def _import_table(hl: ModuleType, table: pa.Table, scratch: Path, name: str, key: str | None) -> Any:
    """An Arrow table as a Hail Table, through JSON lines (types from the Arrow schema)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
    src = scratch / f"{name}.jsonl"
    _write_jsonl(table, src)
    dtype = hl.tstruct(**{f.name: _hail_type(hl, f.type) for f in table.schema})
    ht = hl.import_table(str(src), no_header=True, delimiter="\x01", quote=None, types={"f0": hl.tstr}, min_partitions=1)
    ht = ht.select(**hl.parse_json(ht.f0, dtype))
    for f in table.schema:  # Hail's JSON parser reads integers as int64: keep int32 where Arrow had it
        if pa.types.is_integer(f.type) and f.type.bit_width <= 32:
            ht = ht.annotate(**{f.name: hl.int32(ht[f.name])})
    return ht.key_by(key) if key else ht


def _write_codes(store: NodeStore, path: Path, sample_ids: list[str]) -> None:
    """The call-code matrix as TSV: header ``vidx`` + sample ids, one row per variant."""
    n = store.manifest.n_samples
    planes = store.planes
    lut = np.array([list(f"{c:02d}\t".encode()) for c in range(32)], dtype=np.uint8)  # fixed width: 3 bytes a call
    with open(path, "wb") as f:
        f.write(("\t".join(["vidx", *sample_ids]) + "\n").encode())
        for start in range(0, store.manifest.n_variants, _BLOCK):
            stop = min(start + _BLOCK, store.manifest.n_variants)
            block = np.asarray(planes[np.arange(start, stop)])
            bits = np.unpackbits(block, axis=2, bitorder="little")[:, :, :n].astype(np.uint8)
            code = (bits[:, CALLED] + 2 * bits[:, DIPLOID] + 4 * bits[:, PHASED] + 8 * bits[:, ALT1] + 16 * bits[:, ALT2])
            text = lut[code]  # [rows, n, 3]
            text[:, -1, 2] = ord("\n")
            rows = text.reshape(stop - start, -1)
            f.write(b"".join(str(start + r).encode() + b"\t" + rows[r].tobytes() for r in range(stop - start)))


def convert(hl: ModuleType, store: NodeStore, *, force: bool = False) -> Path:
    """Convert the store version to Hail's native format once; returns the cache directory."""
    out = cache_dir(store)
    if is_converted(store) and not force:
        return out
    tmp = store.path / f"{CACHE}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    scratch = tmp / "_scratch"
    scratch.mkdir()
    t0 = time.time()
    try:
        samples = pq.read_table(store.samples_path)
        variants = pq.read_table(store.variants_path)
        _import_table(hl, samples, scratch, "samples", "sample_id").write(str(tmp / "samples.ht"))
        vht = _import_table(hl, variants, scratch, "variants", None)
        vht = vht.annotate(vidx=hl.int64(vht.vidx)).key_by("vidx")
        vht.write(str(tmp / "variants.ht"))
        (tmp / "clinical").mkdir()
        for name in store.manifest.clinical:
            _import_table(hl, pq.read_table(store.clinical_path(name)), scratch, name, None).write(str(tmp / "clinical" / f"{name}.ht"))
        codes = scratch / "codes.tsv"
        sample_ids = samples.column("sample_id").to_pylist()
        _write_codes(store, codes, sample_ids)
        mt = hl.import_matrix_table(str(codes), row_fields={"vidx": hl.tint64}, row_key="vidx", entry_type=hl.tint32,
                                    delimiter="\t")
        mt = mt.rename({"col_id": "sample_id"})
        x = mt.x
        called = (x % 2) == 1
        mt = mt.select_entries(
            dosage=hl.or_missing(called, hl.int32((x // 8) % 2 + (x // 16) % 2)),
            ploidy=hl.int32(x % 2 + (x // 2) % 2),
            phased=((x // 4) % 2) == 1,
        )
        vt = hl.read_table(str(tmp / "variants.ht"))
        mt = mt.annotate_rows(**vt[mt.vidx])
        mt.write(str(tmp / "genotypes.mt"))
        shutil.rmtree(scratch)
        (tmp / DONE).write_text(json.dumps({"seconds": round(time.time() - t0, 1), "hail": hl.version(),
                                            "samples": store.manifest.n_samples, "variants": store.manifest.n_variants}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
