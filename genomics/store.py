"""The node store: how one biobank's data sits on disk.

Layout of a store directory ``DIR``::

    DIR/current -> v-<stamp>/       (a symlink, swapped atomically by ingest)
    DIR/v-<stamp>/manifest.json     (format version, counts, plane width, table list)
    DIR/v-<stamp>/samples.parquet   (sample_id + sample-sheet columns; row i = genotype column i)
    DIR/v-<stamp>/variants.parquet  (vidx + the federated `variants` columns)
    DIR/v-<stamp>/plane-<name>.bin  (uint8 [n_variants, width] per plane: bit-packed, one file each)
    DIR/v-<stamp>/complete.npy      (bool [n_variants]: no missing call, every call diploid)
    DIR/v-<stamp>/clinical/<name>.parquet

Genotypes are stored as bit planes, one bit per sample, little bit order, padded to a multiple
of 64 samples so planes can be viewed as uint64 and counted with ``np.bitwise_count``. Each plane
is its own file, so a kernel reads only the planes it needs, as one contiguous range.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from genofed.engine.errors import IngestError
from genofed.engine.privatefs import open_private, private_dir, private_tree, write_private

FORMAT_VERSION = 3  # 3: the hap1_alt plane (phase kept: which haplotype carries the ALT)

# plane order (index into N_PLANES) and file names
ALT1, ALT2, CALLED, DIPLOID, PHASED, HAP1 = range(6)
N_PLANES = 6
PLANE_NAMES = ("alt_ge1", "alt_eq2", "called", "diploid", "phased", "hap1_alt")


def plane_width(n_samples: int) -> int:
    """Bytes per plane: samples rounded up to a multiple of 64 bits."""
    return ((n_samples + 63) // 64) * 8


def pack_rows(bits: np.ndarray, width: int) -> np.ndarray:
    """Pack a boolean [rows, n_samples] array into uint8 [rows, width] (little bit order)."""
    packed = np.packbits(bits, axis=1, bitorder="little")
    if packed.shape[1] == width:
        return packed
    out = np.zeros((bits.shape[0], width), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


def pack_mask(indices: np.ndarray, n_samples: int) -> np.ndarray:
    """A sample mask (uint64 words) with the given sample indices set."""
    bits = np.zeros((1, n_samples), dtype=bool)
    bits[0, indices] = True
    return pack_rows(bits, plane_width(n_samples)).view(np.uint64)[0]


@dataclass
class StoreManifest:
    n_samples: int
    n_variants: int
    width: int
    clinical: list[str] = field(default_factory=list)
    source: str = ""
    created: float = 0.0
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


class NodeStore:
    """Read access to a node store (the version ``DIR/current`` points at).

    Parameters
    ----------
    root
        The store directory given to ``genofed ingest --store``.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        cur = self.root / "current"
        if not cur.exists():
            raise IngestError(
                f"{self.root} is not a genofed node store (no 'current' version). "
                "Create one with: genofed ingest --store DIR --vcf FILE"
            )
        self.path = cur.resolve()
        try:
            meta = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise IngestError(f"store {self.root}: unreadable manifest.json ({e}); re-run ingest") from e
        if not isinstance(meta, dict):
            raise IngestError(f"store {self.root}: manifest.json is not a JSON object; the store is damaged: re-run ingest")
        if meta.get("version") != FORMAT_VERSION:
            raise IngestError(
                f"store {self.root} has format version {str(meta.get('version'))[:20]}, this genofed reads "
                f"{FORMAT_VERSION}; re-run ingest"
            )
        try:
            self.manifest = StoreManifest(**meta)
        except TypeError as e:
            raise IngestError(f"store {self.root}: manifest.json has unexpected fields ({e}); the store is damaged: re-run ingest") from None
        self._planes: PlaneReader | None = None

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.parquet"

    @property
    def variants_path(self) -> Path:
        return self.path / "variants.parquet"

    def clinical_path(self, name: str) -> Path:
        return self.path / "clinical" / f"{name}.parquet"

    @property
    def complete(self) -> np.ndarray | None:
        """Per variant row: every sample called with two alleles (None for stores without it)."""
        f = self.path / "complete.npy"
        if not hasattr(self, "_complete"):
            self._complete = np.load(f, mmap_mode="r") if f.exists() else None
        return self._complete

    @property
    def planes(self) -> PlaneReader:
        """The genotype planes, uint8 [n_variants, N_PLANES, width], read on demand."""
        if self._planes is None:
            m = self.manifest
            self._planes = PlaneReader(self.path, m.n_variants, m.width)
        return self._planes

    def close(self) -> None:
        if self._planes is not None:
            self._planes.close()
            self._planes = None


def plane_file(directory: Path, plane: int) -> Path:
    return directory / f"plane-{PLANE_NAMES[plane]}.bin"


class PlaneReader:
    """Variant rows of the plane files read with ``pread`` into fresh arrays.

    Unlike a memory map, pages read stay in the page cache and are not charged to the node's
    resident memory, so a scan over all variants runs in flat memory. Indexing takes a slice
    (step 1) or an array of row numbers and returns uint8 [rows, N_PLANES, width];
    :meth:`read_planes` reads only some planes; ``np.asarray(reader)`` reads everything.
    """

    def __init__(self, directory: Path, n_variants: int, width: int):
        self.shape = (n_variants, N_PLANES, width)
        self._width = width
        self._fds = [os.open(plane_file(directory, i), os.O_RDONLY) for i in range(N_PLANES)] if n_variants else []

    def __len__(self) -> int:
        return self.shape[0]

    def _read_plane(self, plane: int, start: int, stop: int, out: np.ndarray) -> None:
        view = memoryview(out.data).cast("B")
        done, offset = 0, start * self._width
        while done < len(view):
            got = os.preadv(self._fds[plane], [view[done:]], offset + done)
            if got <= 0:
                raise IngestError("a plane file is shorter than the store manifest says; the store is damaged: re-run ingest")
            done += got

    def read_planes(self, start: int, stop: int, planes: list[int]) -> np.ndarray:
        """uint8 [len(planes), stop - start, width]: the given planes for a range of variant rows."""
        out = np.empty((len(planes), max(0, stop - start), self._width), dtype=np.uint8)
        for j, p in enumerate(planes):
            if out.shape[1]:
                self._read_plane(p, start, stop, out[j])
        return out

    def _runs(self, rows: np.ndarray) -> list[np.ndarray]:
        srt = np.sort(rows)
        return np.split(srt, np.flatnonzero(np.diff(srt) > 1) + 1)

    def read_planes_rows(self, rows: np.ndarray, planes: list[int]) -> np.ndarray:
        """uint8 [len(planes), len(rows), width] for arbitrary (sorted, unique) variant rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            return self.read_planes(int(rows[0]), int(rows[-1]) + 1, planes)
        parts = [self.read_planes(int(r[0]), int(r[-1]) + 1, planes) for r in self._runs(rows)] if len(rows) else []
        return np.concatenate(parts, axis=1) if parts else np.empty((len(planes), 0, self._width), np.uint8)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.shape[0])
            if step != 1:
                raise ValueError("PlaneReader slices must have step 1")
            return self.read_planes(start, stop, list(range(N_PLANES))).transpose(1, 0, 2)
        rows = np.asarray(idx, dtype=np.int64).reshape(-1)
        if not len(rows):
            return np.empty((0, *self.shape[1:]), dtype=np.uint8)
        if (rows < 0).any() or (rows >= self.shape[0]).any():
            raise IndexError("variant row out of range")
        uniq = np.unique(rows)
        block = self.read_planes_rows(uniq, list(range(N_PLANES))).transpose(1, 0, 2)
        return block[np.searchsorted(uniq, rows)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.ascontiguousarray(self[0 : self.shape[0]])
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _remove_orphans(root: Path) -> None:
    """Remove half-written versions whose writer process is gone (killed mid-ingest)."""
    for d in root.glob(".tmp-v-*"):
        try:
            pid = int(d.name.split("-")[3])  # .tmp-v-<stamp>-<pid>-<ns>
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # still being written
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            continue


class StoreWriter:
    """Writes a new store version beside the current one and swaps it in atomically.

    Until :meth:`commit`, the previous version stays the one readers see; :meth:`abort` (or an
    exception inside the ``with`` block) removes the half-written version.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = private_dir(root)  # people's genotypes and clinical values: the owner's only
        stamp = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.version_dir = self.root / f".tmp-{stamp}"
        self.final_dir = self.root / stamp
        _remove_orphans(self.root)
        self.version_dir.mkdir(mode=0o700)
        private_dir(self.version_dir, parents=False)  # mkdir's mode is masked by the umask
        private_dir(self.version_dir / "clinical", parents=False)
        self._files = [open_private(plane_file(self.version_dir, i), "wb") for i in range(N_PLANES)]
        self._complete: list[np.ndarray] = []

    @property
    def dir(self) -> Path:
        return self.version_dir

    def write_planes(self, planes: np.ndarray, complete: npt.ArrayLike | None = None) -> None:
        for i, f in enumerate(self._files):
            f.write(np.ascontiguousarray(planes[:, i], dtype=np.uint8).tobytes())
        if complete is not None:
            self._complete.append(np.asarray(complete, dtype=bool))

    def append_plane_files(self, files: list[str], complete: np.ndarray) -> None:
        """Append plane part files (one per plane, as :meth:`write_planes` would have written)."""
        for f, part in zip(self._files, files):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            os.unlink(part)
        self._complete.append(np.asarray(complete, dtype=bool))

    def commit(self, manifest: StoreManifest) -> Path:
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if self._complete:
            with open_private(self.version_dir / "complete.npy", "wb") as f:
                np.save(f, np.concatenate(self._complete))
        manifest.created = time.time()
        write_private(self.version_dir / "manifest.json", manifest.to_json())
        private_tree(self.version_dir)  # what ingest wrote into it (Parquet tables) too
        os.replace(self.version_dir, self.final_dir)
        link_tmp = self.root / f".current-{os.getpid()}"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        link_tmp.symlink_to(self.final_dir.name)
        old = (self.root / "current").resolve() if (self.root / "current").exists() else None
        os.replace(link_tmp, self.root / "current")  # atomic swap
        if old is not None and old != self.final_dir.resolve():
            shutil.rmtree(old, ignore_errors=True)
        return self.final_dir

    def abort(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:  # e.g. the disk is full: flushing the buffer fails too; the version goes anyway
                pass
        shutil.rmtree(self.version_dir, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
