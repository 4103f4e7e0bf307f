"""Node-side data access for analysis fragments: the analysis samples (phenotype, covariates) from
DuckDB, the analysis variants, and genotype dosages streamed from bit-packed planes in chunks.

Dosage chunks are dense float64 [variants, samples] blocks of bounded size (a few MB), so memory
stays bounded however many variants an analysis reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...genomics.store import ALT1, ALT2, CALLED, DIPLOID, HAP1, PHASED
from .. import limits
from ..errors import FragmentError

if TYPE_CHECKING:
    from ..analysis import AnalysisFragment
    from .duckdb import DuckDBBackend

CHUNK_BYTES = 16 << 20  # dense dosage per chunk


@dataclass
class Samples:
    sidx: np.ndarray  # store sample rows, ascending
    sample_id: pa.Array
    y: np.ndarray | None
    covariates: np.ndarray  # [n, k] float64
    extra: dict[str, pa.Array]


class AnalysisData:
    """What an analysis reads at one node."""

    def __init__(self, backend: DuckDBBackend, fragment: AnalysisFragment):
        self.backend = backend
        self.fragment = fragment
        self.store = backend.store
        self._samples: Samples | None = None
        self._variants: pa.Table | None = None

    def _sql(self, sql: str) -> pa.Table:
        cur = self.backend.con.cursor()
        try:
            return cur.sql(sql).to_arrow_table()
        except duckdb.Error as e:  # never DuckDB's message: it quotes the operands (people's values)
            from .engine_errors import parse_for_columns, translate_duckdb

            raise translate_duckdb(e, "select the analysis data (phenotype, covariates, samples or variants filter)",
                                   parse_for_columns(sql)) from None
        finally:
            cur.close()

    @property
    def samples(self) -> Samples:
        if self._samples is None and self.fragment.sample_sql is not None:
            # the samples of an analysis are the same in every round: cached by the backend
            # (cleared when a derived table changes)
            self._samples = self.backend.analysis_cache.get(("samples", self.fragment.sample_sql))
        if self._samples is None:
            f = self.fragment
            if f.sample_sql is None:
                raise FragmentError("this analysis round reads no samples")
            t = self._sql(f"SELECT _q.*, _sidx.sidx AS _sidx FROM ({f.sample_sql}) AS _q JOIN _sidx USING (sample_id) ORDER BY _sidx")
            sidx = t.column("_sidx").to_numpy().astype(np.int64)
            if len(sidx) and (np.diff(sidx) == 0).any():
                raise FragmentError("a clinical table has several rows for one sample; an analysis needs one row per sample")
            y = t.column("y").to_numpy(zero_copy_only=False).astype(np.float64) if "y" in t.column_names else None
            ks = sorted((c for c in t.column_names if c.startswith("c") and c[1:].isdigit()), key=lambda c: int(c[1:]))
            cov = (np.column_stack([t.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ks])
                   if ks else np.zeros((len(sidx), 0)))
            for arr, what in ((y, "phenotype"), (cov, "covariate")):
                if arr is not None and arr.size and not np.isfinite(arr).all():
                    raise FragmentError(f"a {what} value is not finite (NaN or infinity); filter it out with the samples argument")
            extra = {c: t.column(c).combine_chunks() for c in t.column_names if c.startswith("x") and c[1:].isdigit()}
            self._samples = Samples(sidx, t.column("sample_id").combine_chunks(), y, cov, extra)
            self.backend.cache_analysis(("samples", f.sample_sql), self._samples)
        return self._samples

    @property
    def variants(self) -> pa.Table:
        """Analysis variants in store order: vidx, variant_id, chrom, pos, ref, alt."""
        if self._variants is None:
            self._variants = self.backend.analysis_cache.get(("variants", self.fragment.variant_sql))
        if self._variants is None:
            t = self._sql(
                f"SELECT _v.vidx, _q.* FROM ({self.fragment.variant_sql}) AS _q "
                "JOIN _variants AS _v USING (variant_id) ORDER BY _v.vidx"
            )
            self._variants = t
            self.backend.cache_analysis(("variants", self.fragment.variant_sql), t)
        return self._variants

    def restrict(self, ids: list[str]) -> tuple[pa.Table, np.ndarray]:
        """The analysis variants among ``ids`` (a round's active set) and, for each, its position
        in ``ids``."""
        import pyarrow.compute as pc

        v = self.variants
        pos = pc.index_in(v.column("variant_id"), value_set=pa.array(ids, pa.string()))
        keep = pc.is_valid(pos)
        return v.filter(keep), pc.drop_null(pos).to_numpy(zero_copy_only=False).astype(np.int64)

    def dosage_chunks(self, vidx: np.ndarray, sidx: np.ndarray | None = None, max_rows: int | None = None
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield ``(offset, dosage, called)`` for consecutive chunks of ``vidx``: dosage float64
        [chunk, samples] (0 where missing), called bool [chunk, samples] or None when every call
        in the chunk is present."""
        n = self.store.manifest.n_samples
        sidx = self.samples.sidx if sidx is None else sidx
        all_samples = len(sidx) == n
        rows = max(1, CHUNK_BYTES // (8 * max(1, len(sidx))))
        if max_rows:
            rows = min(rows, max_rows)
        for start, alt1, alt2, called in self.plane_chunks(vidx, rows):
            bits = np.unpackbits(np.stack([alt1, alt2] if called is None else [alt1, alt2, called]), axis=2, bitorder="little", count=n)
            if not all_samples:
                bits = bits[:, :, sidx]
            g = bits[0].astype(np.float64)
            g += bits[1]
            yield start, g, (None if called is None else bits[2].astype(bool))

    def plane_chunks(self, vidx: np.ndarray, rows: int = 4096) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """Yield ``(offset, alt1, alt2, called)`` packed planes (uint8 [chunk, width]) for
        consecutive chunks of ``vidx``; ``called`` is None when every call in the chunk is present."""
        complete = self.store.complete
        planes = self.store.planes
        vidx = np.asarray(vidx, np.int64)
        for start in range(0, len(vidx), rows):
            limits.check()  # the node's deadline for this fragment
            sel = vidx[start:start + rows]
            full = complete is not None and bool(np.all(complete[sel]))
            want = [ALT1, ALT2] if full else [ALT1, ALT2, CALLED]
            raw = _read_rows(planes, sel, want)
            yield start, raw[0], raw[1], (None if full else raw[2])

    def haplotype_chunks(self, vidx: np.ndarray, sidx: np.ndarray | None = None, phase_seed: int = 0,
                         max_rows: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(offset, Haplotypes)`` for consecutive chunks of ``vidx`` (any order): alleles
        uint8 [chunk, 2·samples] (every sample's first haplotype, then every second one) and
        called bool. A phased call keeps its VCF order; an unphased heterozygous call is phased
        at random (seeded by ``phase_seed``); a haploid call has its second haplotype uncalled."""
        from ...genomics.synth import Haplotypes

        n = self.store.manifest.n_samples
        sidx = self.samples.sidx if sidx is None else np.asarray(sidx, np.int64)
        vidx = np.asarray(vidx, np.int64)
        rows = max(1, (CHUNK_BYTES // 4) // max(1, 2 * len(sidx)))
        if max_rows:
            rows = min(rows, max_rows)
        rng = np.random.default_rng(phase_seed)
        planes = self.store.planes
        for start in range(0, len(vidx), rows):
            limits.check()
            sel = vidx[start:start + rows]
            order = np.argsort(sel, kind="stable")
            raw = _read_rows(planes, sel[order], [ALT1, ALT2, CALLED, DIPLOID, PHASED, HAP1])
            bits = np.unpackbits(raw, axis=2, bitorder="little", count=n)[:, :, sidx].astype(bool)
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            ge1, eq2, called, dip, phased, h1 = (bits[i][inv] for i in range(6))
            het_unphased = ge1 & ~eq2 & dip & ~phased
            if het_unphased.any():
                flip = rng.random(het_unphased.shape) < 0.5
                h1 = np.where(het_unphased, flip, h1)
            h2 = (ge1 ^ h1) | eq2
            c2 = dip  # the second haplotype exists for diploid calls only
            c1 = called
            yield start, Haplotypes(np.concatenate([h1, h2], axis=1).astype(np.uint8), np.concatenate([c1, c2], axis=1))

    def save_table(self, name: str, table: pa.Table) -> None:
        """Keep a sample-level derived table (e.g. principal component scores) at this node,
        queryable as ``name`` like a clinical table; it never leaves the node."""
        self.backend.save_derived(name, table)


def _read_rows(planes: Any, sel: np.ndarray, want: list[int]) -> np.ndarray:
    """Planes of the (sorted) rows ``sel``: one read of their span when it is dense enough,
    else one read per run of consecutive rows."""
    span = int(sel[-1]) - int(sel[0]) + 1
    if span == len(sel):
        return planes.read_planes(int(sel[0]), int(sel[-1]) + 1, want)
    if span <= 4 * len(sel):
        block = planes.read_planes(int(sel[0]), int(sel[-1]) + 1, want)
        return np.ascontiguousarray(block[:, sel - sel[0]])
    return planes.read_planes_rows(sel, want)


def derived_dir(store_root: Path) -> Path:
    return Path(store_root) / "derived"


def write_derived(root: Path, name: str, table: pa.Table) -> Path:
    """Write a derived per-sample table (owner-only, like the rest of the store)."""
    from ..privatefs import open_private, private_dir

    d = private_dir(derived_dir(root))
    tmp = d / f".{name}.parquet.tmp"
    with open_private(tmp, "wb") as f:
        pq.write_table(table, f)
    final = d / f"{name}.parquet"
    tmp.replace(final)
    return final


def load_derived(root: Path) -> dict[str, Any]:
    d = derived_dir(root)
    if not d.is_dir():
        return {}
    return {p.stem: pq.read_table(p) for p in sorted(d.glob("*.parquet"))}
