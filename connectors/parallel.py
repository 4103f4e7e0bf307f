"""Parallel ingest of a bgzipped VCF: one process per core, each over a range of BGZF blocks.

BGZF files are a series of independent gzip blocks, so a file splits at block boundaries into
byte ranges that decompress on their own. Each worker decodes the complete lines of its range
into plane part files; the one line that straddles each boundary (the end of one range and the
start of the next) is decoded by the parent, which then concatenates everything in file order.
Any error in a worker makes the caller fall back to the sequential reader, which reports the
exact line and column.
"""

from __future__ import annotations

import io
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from genofed.engine.errors import IngestError

MIN_PARALLEL_BYTES = 4 << 20  # smaller files are not worth a process pool


def bgzf_block_offsets(path: Path) -> list[int] | None:
    """Compressed offsets of every BGZF block, or None if the file is not BGZF."""
    offsets = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(18)
            if len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
                return None
            (bsize,) = struct.unpack("<H", head[16:18])
            offsets.append(pos)
            pos += bsize + 1
    return offsets


def split_ranges(path: Path, parts: int) -> list[tuple[int, int]] | None:
    """``parts`` byte ranges of about equal size, each starting at a block boundary."""
    offsets = bgzf_block_offsets(path)
    if offsets is None or len(offsets) < 4 * parts:
        return None
    size = path.stat().st_size
    cuts = [0]
    for k in range(1, parts):
        target = size * k // parts
        cut = offsets[int(np.searchsorted(offsets, target))]
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(size)
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]


class _Range(io.RawIOBase):
    def __init__(self, path: Path, start: int, end: int):
        self._f = open(path, "rb")  # noqa: SIM115
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])
        self._left -= got or 0
        return got or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def _worker(args: tuple) -> dict[str, Any]:
    """Decode the complete lines of one byte range into plane part files."""
    from isal import igzip

    from genofed.connectors.vcftext import batches_from_lines
    from genofed.genomics.store import DIPLOID, N_PLANES, PLANE_NAMES

    path, start, end, index, last, n_all, keep, width, n, out_dir, batch = args
    raw = io.BufferedReader(_Range(Path(path), start, end), buffer_size=1 << 20)
    text = igzip.GzipFile(fileobj=raw, mode="rb")
    head = b""
    if index > 0:
        head = text.readline()
        if not head.endswith(b"\n"):
            raise IngestError("a block range holds no line end")
    pending = [b""]

    def lines():
        for line in text:
            if not line.endswith(b"\n") and not last:
                pending[0] = line  # the start of the line the next range completes
                return
            yield line

    files = [open(Path(out_dir) / f"part{index}-{PLANE_NAMES[p]}.bin", "wb") for p in range(N_PLANES)]  # noqa: SIM115
    metas: list = []
    complete: list[np.ndarray] = []
    rows = 0
    try:
        for batch_metas, planes in batches_from_lines(lines(), Path(path), n_all, keep, width, batch,
                                                      where_prefix=f"{path} (part {index})"):
            metas.extend(batch_metas)
            for p, f in enumerate(files):
                f.write(np.ascontiguousarray(planes[:, p]).tobytes())
            if len(planes):
                dip = np.unpackbits(planes[:, DIPLOID], axis=1, count=n, bitorder="little")
                complete.append(np.asarray(dip.all(axis=1)))
            rows += len(planes)
    finally:
        for f in files:
            f.close()
        text.close()
    return {
        "index": index, "head": head, "tail": pending[0], "metas": metas, "rows": rows,
        "complete": np.concatenate(complete) if complete else np.zeros(0, bool),
        "files": [str(Path(out_dir) / f"part{index}-{name}.bin") for name in PLANE_NAMES],
    }


def parallel_batches(path: Path, n_all: int, keep: np.ndarray | None, width: int, n: int,
                     workdir: Path, workers: int, batch: int = 512) -> list[dict[str, Any]] | None:
    """Run the workers; return their results in file order (with boundary lines), or None when
    the file is not worth splitting."""
    if workers < 2 or path.stat().st_size < MIN_PARALLEL_BYTES:
        return None
    ranges = split_ranges(path, workers)
    if ranges is None or len(ranges) < 2:
        return None
    jobs = [(str(path), s, e, i, i == len(ranges) - 1, n_all, keep, width, n, str(workdir), batch)
            for i, (s, e) in enumerate(ranges)]
    # fork: workers touch only numpy and ISA-L (never DuckDB or Arrow), and start in milliseconds
    # instead of re-importing everything; spawn where fork does not exist
    import multiprocessing

    # ... but only from a process without other Python threads: forking while they run (in-process
    # Flight servers, a coordinator's pool, Hail's gateway) copies their locks mid-use and can crash
    # the child; then workers come from a clean fork server that imported only this module
    import threading

    methods = multiprocessing.get_all_start_methods()
    ctx: Any
    if "fork" in methods and threading.active_count() == 1:
        ctx = get_context("fork")
    elif "forkserver" in methods:
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:
        ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
        return list(pool.map(_worker, jobs))


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
