"""Ingest a VCF, a sample sheet and clinical tables into a node store.

Streaming: records are read with cyvcf2 and converted in chunks, so memory is bounded by the
chunk size, not the file. The new store version is swapped in only when complete (see
:class:`genofed.genomics.store.StoreWriter`): a failed ingest leaves the previous store untouched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genofed.connectors.parallel import default_workers, parallel_batches
from genofed.connectors.vcftext import batches_from_lines, iter_batches, read_header
from genofed.engine.errors import IngestError
from genofed.genomics.encoding import encode_planes
from genofed.genomics.store import (
    DIPLOID,
    NodeStore,
    StoreManifest,
    StoreWriter,
    plane_width,
)

CHUNK_RECORDS = 4096
SAMPLE_ID_NAMES = ("sample_id", "sample", "sample.id", "iid", "id")
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def normalise_name(name: str) -> str:
    """Column names as the federated schema has them: lower case, runs of other chars to ``_``."""
    out = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    if not out:
        out = "col"
    if out[0].isdigit():
        out = "c_" + out
    return out


@dataclass
class IngestReport:
    """What an ingest wrote."""

    store: Path
    n_samples: int
    n_records: int
    n_variants: int
    clinical: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read_table(path: Path, what: str) -> pa.Table:
    if not path.exists():
        raise IngestError(f"{what} {path} does not exist")
    con = duckdb.connect()
    try:
        if path.suffix.lower() == ".parquet":
            rel = con.read_parquet(str(path))
        else:
            rel = con.read_csv(str(path), header=True, all_varchar=False)
        table = rel.to_arrow_table()
    except duckdb.Error as e:
        raise IngestError(f"{what} {path} could not be read: {e}. Give a CSV/TSV with a header row or a Parquet file") from e
    finally:
        con.close()
    if table.num_columns < 1 or table.num_rows == 0:
        raise IngestError(f"{what} {path} has no rows; give a file with a header and one row per sample")
    return table


def _normalise_columns(table: pa.Table, id_col: int, what: str, path: Path) -> pa.Table:
    names = [normalise_name(n) for n in table.column_names]
    names[id_col] = "sample_id"
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise IngestError(f"{what} {path}: two columns normalise to {n!r}; rename one")
        seen.add(n)
    table = table.rename_columns(names)
    ids = table.column("sample_id").cast(pa.string())
    table = table.set_column(id_col, "sample_id", ids)
    if id_col != 0:
        order = ["sample_id"] + [n for n in names if n != "sample_id"]
        table = table.select(order)
    if ids.null_count:
        raise IngestError(f"{what} {path}: {ids.null_count} rows have an empty sample id")
    return table


def read_sample_sheet(path: str | os.PathLike[str]) -> pa.Table:
    """Read a sample sheet: TSV/CSV whose first column is the sample id."""
    p = Path(path)
    table = _normalise_columns(_read_table(p, "sample sheet", ), 0, "sample sheet", p)
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise IngestError(f"sample sheet {p}: sample ids are not unique; each sample must appear once")
    return table


def read_clinical(path: str | os.PathLike[str]) -> pa.Table:
    """Read a clinical table (CSV or Parquet) with a sample id column."""
    p = Path(path)
    table = _read_table(p, "clinical table")
    lowered = [n.lower() for n in table.column_names]
    id_col = next((lowered.index(n) for n in SAMPLE_ID_NAMES if n in lowered), 0)
    return _normalise_columns(table, id_col, "clinical table", p)


def _check_bgzf(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] != b"\x1f\x8b":
                return  # plain text VCF
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 28))
            tail = f.read(28)
    except OSError as e:
        raise IngestError(f"VCF {path} cannot be read ({e.strerror or e}); give a VCF file you can read") from None
    if head[3:4] == b"\x04" and tail != BGZF_EOF:
        raise IngestError(
            f"{path}: truncated BGZF file (the end-of-file marker is missing, {size} bytes). "
            "The copy is incomplete: copy or download the file again, or re-compress it with bgzip"
        )


def _exact_error(path: Path, record_index: int) -> str:
    """htslib only says that a record failed: re-read the file with the text reader, whose
    checks name the line, column and sample; fall back to the record number."""
    try:
        samples, _ = read_header(path)
        width = plane_width(max(1, len(samples)))
        for _ in iter_batches(path, None, width):
            pass
    except IngestError as e:
        return str(e)
    return f"{path}: record {record_index + 1} could not be parsed by htslib (malformed VCF record)"


def _vcf_reader(vcf: Path, samples: list[str] | None):
    from cyvcf2 import VCF

    try:
        reader = VCF(str(vcf), samples=samples, gts012=False, lazy=True, threads=1)
    except (OSError, Exception) as e:  # cyvcf2 raises plain Exception
        raise IngestError(f"{vcf}: not a readable VCF ({e}); give a VCF or bgzipped VCF with a #CHROM header") from e
    return reader


def _samples(reader, vcf: Path) -> list[str]:
    try:
        return list(reader.samples)
    except UnicodeDecodeError:
        raise IngestError(f"{vcf}: the sample names in the #CHROM header line are not UTF-8 text; fix the header") from None


def ingest(
    store: str | os.PathLike[str],
    vcf: str | os.PathLike[str],
    samples: str | os.PathLike[str] | pa.Table | None = None,
    clinical: Mapping[str, str | os.PathLike[str] | pa.Table] | None = None,
    *,
    chunk_records: int = CHUNK_RECORDS,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    reader: str = "auto",
    workers: int | None = None,
) -> IngestReport:
    """Ingest a VCF (and optionally a sample sheet and clinical tables) into a node store.

    Parameters
    ----------
    store
        Store directory; created if missing. An existing store is replaced atomically only when
        the new one is complete.
    vcf
        VCF or bgzipped VCF. Multi-allelic records are split into one row per ALT.
    samples
        Sample sheet (first column the sample id) or an Arrow table. When given, the node's
        cohort is exactly these samples; every one must be in the VCF.
    clinical
        ``{name: CSV/Parquet path or Arrow table}``; each needs a sample id column. Rows for
        samples outside the cohort are dropped.
    reader
        ``auto`` (the numpy text reader; cyvcf2 for BCF), ``text`` or ``cyvcf2``.
    workers
        processes for a bgzipped VCF with the text reader (default: one per core; 1 reads
        sequentially). Output is identical either way.

    Examples
    --------
    >>> ingest("node_a", "cohort.vcf.gz", samples="samples.tsv",
    ...        clinical={"phenotypes": "pheno.csv"})  # doctest: +SKIP
    """
    vcf = Path(vcf)
    if not vcf.exists():
        raise IngestError(f"VCF {vcf} does not exist")
    _check_bgzf(vcf)
    sheet = samples if isinstance(samples, pa.Table) or samples is None else read_sample_sheet(samples)

    if vcf.suffix.lower() == ".bcf" or reader == "cyvcf2":
        header_reader = _vcf_reader(vcf, None)
        try:
            vcf_samples = _samples(header_reader, vcf)
        finally:
            header_reader.close()
    else:
        vcf_samples = read_header(vcf)[0]
    if len(set(vcf_samples)) != len(vcf_samples):
        raise IngestError(f"{vcf}: the header has duplicate sample ids; each sample must appear once")
    notes: list[str] = []
    if sheet is not None:
        wanted = sheet.column("sample_id").to_pylist()
        in_vcf = set(vcf_samples)
        missing = [s for s in wanted if s not in in_vcf]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise IngestError(
                f"sample sheet: {len(missing)} of {len(wanted)} sample ids are not in the VCF "
                f"{vcf.name} (first: {shown}). Fix the sheet or give the VCF these samples belong to"
            )
        keep = set(wanted)
        chosen = [s for s in vcf_samples if s in keep]
        if len(chosen) < len(vcf_samples):
            notes.append(f"{len(vcf_samples) - len(chosen)} VCF samples not in the sample sheet were not ingested")
        order = {s: i for i, s in enumerate(wanted)}
        idx = pa.array([order[s] for s in chosen], type=pa.int64())
        sample_table = sheet.take(idx)
    else:
        chosen = vcf_samples
        sample_table = pa.table({"sample_id": pa.array(chosen, type=pa.string())})
    if not chosen:
        raise IngestError(f"{vcf}: no samples to ingest; the VCF has no genotype columns or none match the sheet")

    n = len(chosen)
    width = plane_width(n)
    if reader == "auto":
        reader = "cyvcf2" if vcf.suffix.lower() == ".bcf" else "text"
    subset = chosen if len(chosen) < len(vcf_samples) else None
    if reader == "text":
        columns: np.ndarray | None = None
        if subset is not None:
            pos_of = {s: i for i, s in enumerate(vcf_samples)}
            columns = np.array([pos_of[s] for s in chosen], dtype=np.intp)
        batches = iter_batches(vcf, columns, width, batch=chunk_records)
    elif reader == "cyvcf2":
        if vcf.suffix.lower() != ".bcf":
            # htslib crashes the process (SIGSEGV) on a malformed GT in a record whose contig the
            # header does not declare: the text reader checks every record first (and names the line)
            for _ in iter_batches(vcf, None, plane_width(max(1, len(vcf_samples))), batch=chunk_records):
                pass
        batches = _batched(_cyvcf2_records(vcf, subset, chosen), n, width, chunk_records)
    else:
        raise IngestError(f"unknown VCF reader {reader!r}; use auto, text or cyvcf2")

    writer = StoreWriter(store)
    cols: dict[str, list] = {k: [] for k in ("variant_id", "chrom", "pos", "ref", "alt", "rsid", "qual", "filter")}
    n_records = 0
    n_rows = 0

    def add_metas(metas: list) -> None:
        nonlocal n_records
        for chrom, pos, rid, ref, alts, qual, filt in metas:
            if len(alts) > 126:
                raise IngestError(f"{vcf}: record {chrom}:{pos} has {len(alts)} ALT alleles; at most 126 are supported")
            for a in alts:
                cols["variant_id"].append(f"{chrom}:{pos}:{ref}:{a}")
                cols["chrom"].append(chrom)
                cols["pos"].append(pos)
                cols["ref"].append(ref)
                cols["alt"].append(a)
                cols["rsid"].append(rid)
                cols["qual"].append(qual)
                cols["filter"].append(filt)
        n_records += len(metas)

    def write_batch(metas: list, planes: np.ndarray) -> None:
        nonlocal n_rows
        add_metas(metas)
        if len(planes):
            dip = np.unpackbits(planes[:, DIPLOID], axis=1, count=n, bitorder="little")
            writer.write_planes(planes, dip.all(axis=1))
        n_rows += len(planes)

    bar = _progress(progress, vcf)
    try:
        parts = None
        if reader == "text" and workers != 1:
            parts = _run_parallel(vcf, len(vcf_samples), columns, width, n, writer.dir, workers or default_workers())
        if parts is not None:
            for i, part in enumerate(parts):
                if i > 0:  # the line that straddles the boundary between two ranges
                    line = parts[i - 1]["tail"] + part["head"]
                    for metas, planes in batches_from_lines([line], vcf, len(vcf_samples), columns, width):
                        write_batch(metas, planes)
                add_metas(part["metas"])
                writer.append_plane_files(part["files"], part["complete"])
                n_rows += part["rows"]
                if on_chunk is not None:
                    on_chunk(n_records)
            batches = iter(())
        for metas, planes in batches:
            write_batch(metas, planes)
            if bar is not None:
                bar[0].update(bar[1], completed=n_records)
            if on_chunk is not None:
                on_chunk(n_records)
        variants = pa.table(
            {
                "vidx": pa.array(np.arange(n_rows, dtype=np.int64)),
                "variant_id": pa.array(cols["variant_id"], pa.string()),
                "chrom": pa.array(cols["chrom"], pa.string()),
                "pos": pa.array(cols["pos"], pa.int64()),
                "ref": pa.array(cols["ref"], pa.string()),
                "alt": pa.array(cols["alt"], pa.string()),
                "rsid": pa.array(cols["rsid"], pa.string()),
                "qual": pa.array(cols["qual"], pa.float64()),
                "filter": pa.array(cols["filter"], pa.string()),
            }
        )
        pq.write_table(variants, writer.dir / "variants.parquet")
        pq.write_table(sample_table, writer.dir / "samples.parquet")
        clin_counts: dict[str, int] = {}
        cohort = pa.array(chosen, pa.string())
        for name, src_path in (clinical or {}).items():
            tname = normalise_name(name)
            if tname in ("samples", "variants", "genotypes"):
                raise IngestError(f"clinical table name {name!r} clashes with a core table; choose another name")
            t = src_path if isinstance(src_path, pa.Table) else read_clinical(src_path)
            mask = pa.compute.is_in(t.column("sample_id"), value_set=cohort)
            kept = t.filter(mask)
            dropped = t.num_rows - kept.num_rows
            if dropped:
                notes.append(f"clinical {tname}: {dropped} rows for samples outside this node's cohort dropped")
            pq.write_table(kept, writer.dir / "clinical" / f"{tname}.parquet")
            clin_counts[tname] = kept.num_rows
        manifest = StoreManifest(
            n_samples=n, n_variants=n_rows, width=width, clinical=sorted(clin_counts), source=str(vcf)
        )
        final = writer.commit(manifest)
    except OSError as e:
        writer.abort()
        raise IngestError(_os_problem(e, Path(store))) from None
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar[0].stop()
    return IngestReport(final, n, n_records, n_rows, clin_counts, notes)


def _os_problem(e: OSError, store: Path) -> str:
    """A clear message for an I/O failure during ingest (the previous store is still current)."""
    import errno

    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"writing the store {store} failed: {os.strerror(e.errno)}{where}. Free disk space (or raise the quota / "
                "file size limit) and ingest again; the previous store is unchanged and still served")
    return (f"ingest into {store} failed: {e.strerror or e}{where}. Nothing was changed: the previous store (if any) "
            "is still the current one")


def _run_parallel(vcf: Path, n_all: int, columns, width: int, n: int, workdir: Path, workers: int):
    """Worker results in file order, or None to read sequentially (small file, not BGZF, or any
    worker error: the sequential reader then reports the exact line and column)."""
    try:
        return parallel_batches(vcf, n_all, columns, width, n, workdir, workers)
    except Exception:
        for leftover in workdir.glob("part*-*.bin"):
            leftover.unlink()
        return None


def _batched(records, n: int, width: int, size: int):
    """Group decoded records into (metadata, planes) batches."""
    alleles = np.empty((size, n, 2), dtype=np.int8)
    phased = np.empty((size, n), dtype=bool)
    metas: list = []
    src: list[int] = []
    alt: list[int] = []
    for chrom, pos, rid, ref, alts, qual, filt, g, ph in records:
        k = len(metas)
        alleles[k] = g
        phased[k] = ph
        metas.append((chrom, pos, rid, ref, alts, qual, filt))
        src.extend([k] * len(alts))
        alt.extend(range(1, len(alts) + 1))
        if len(metas) == size:
            yield metas, encode_planes(alleles, phased, np.asarray(src, np.intp), np.asarray(alt), width)
            metas, src, alt = [], [], []
    if metas:
        yield metas, encode_planes(alleles, phased, np.asarray(src, np.intp), np.asarray(alt), width)


def _cyvcf2_records(vcf: Path, subset: list[str] | None, chosen: list[str]):
    """Records through cyvcf2/htslib (BCF input, and a cross-check of the text reader)."""
    reader = _vcf_reader(vcf, subset)
    if _samples(reader, vcf) != chosen:
        raise IngestError(f"{vcf}: sample subsetting failed; check for duplicate sample ids in the VCF header")
    n = len(chosen)
    it = iter(reader)
    index = 0
    try:
        while True:
            try:
                rec = next(it)
                g = rec.genotype.array()
                alts = rec.ALT or []
                filt = rec.FILTER
                filt = "PASS" if filt is None and rec.FILTERS == ["PASS"] else filt
                fixed = (rec.CHROM, rec.POS, rec.ID, rec.REF, alts, rec.QUAL, filt)
            except StopIteration:
                break
            except Exception as e:  # cyvcf2 raises bare Exception on htslib parse errors, UnicodeDecodeError on non-UTF-8 text
                raise IngestError(_exact_error(vcf, index)) from e
            if g.shape[1] < 3:
                g = np.concatenate([g[:, :1], np.full((n, 1), -2, np.int16), g[:, 1:]], axis=1)
            if g.shape[0] and int(g[:, :2].max()) > len(alts):
                raise IngestError(_exact_error(vcf, index))
            index += 1
            yield (*fixed, g[:, :2], g[:, 2] == 1)
    finally:
        reader.close()


def _progress(enabled: bool, vcf: Path):
    if not enabled:
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    p = Progress(
        SpinnerColumn(),
        TextColumn("ingest {task.description}"),
        TextColumn("{task.completed:,} records"),
        TimeElapsedColumn(),
        transient=True,
    )
    p.start()
    task = p.add_task(vcf.name, total=None)
    return p, task


__all__ = ["IngestReport", "ingest", "normalise_name", "read_clinical", "read_sample_sheet", "NodeStore"]
