"""Pooled reference ("oracle") database for genofed's federated schema.

The oracle builds, in one plain DuckDB database, the tables that the federation exposes
logically -- ``samples``, ``variants``, ``genotypes`` and clinical tables -- for ALL samples
pooled together.  A federated query must return the same answer as the same SQL run here
(after :func:`to_pooled_sql` has rewritten genofed's genomic aggregates into plain SQL).

It is written independently of genofed's ingest (which uses cyvcf2): genotypes are read with
scikit-allel (``allel.read_vcf``) and turned into a table with numpy -> Arrow -> DuckDB, never
row by row in Python.

Schema semantics implemented here (the contract in ``/work/shared/DESIGN.md`` made precise):

``samples``
    The sample sheet (TSV/CSV read by DuckDB ``read_csv`` with type auto-detection).  Its first
    column is the sample id, renamed ``sample_id`` (cast to VARCHAR); the other column names are
    lower-cased and every run of characters outside ``[0-9a-z]`` is replaced by ``_``.
    Only sheet samples are in the cohort.

``variants``
    One row per ALT allele (multi-allelic records split as ``bcftools norm -m-``);
    ``variant_id = chrom:pos:ref:alt``; ``rsid`` NULL when ID is ``.``; ``qual`` NULL when ``.``
    (parsed from the text as a double); ``filter`` is ``PASS`` or the filters as written in the
    record (``;``-joined, record order), NULL when ``.``.  A record whose ALT is ``.`` has no ALT
    allele and therefore contributes no row.

``genotypes``
    One row per (sheet sample present in the VCF) x (variants row).  ``ploidy`` is the number of
    CALLED alleles in the genotype (``0/1`` -> 2, haploid ``1`` or half-call ``0/.`` -> 1, ``./.``
    or ``.`` -> 0); ``dosage`` is the number of called alleles equal to this row's ALT (NULL iff
    ploidy = 0); ``phased`` is true iff the call has exactly two allele slots written with ``|``
    (so ``.|1`` is phased, haploid calls are not).

The genomic aggregates are defined over those columns (see :data:`GENOMIC_AGGREGATES`).

Why some columns do not come from scikit-allel: ``read_vcf`` silently drops FILTER names that
are not declared in the header, loses the order of multiple filters, and only reads QUAL as
float32; so QUAL and FILTER are taken from a light pass over the fixed VCF columns (and CHROM,
POS, REF, ALT of that pass are asserted equal to scikit-allel's).  scikit-allel reads GT as
int8 allele indices with -1 for both "missing" and "no such slot", which is exactly what the
ploidy definition needs (``./.`` -> [-1,-1], ``0`` and ``0/.`` -> [0,-1]); ``phased`` is read
from a second pass of GT as raw strings.
"""

from __future__ import annotations

import gzip
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import sqlglot
from sqlglot import exp

__all__ = [
    "GENOMIC_AGGREGATES",
    "VcfSites",
    "build_pooled",
    "normalise_column_name",
    "read_vcf_sites",
    "to_pooled_sql",
]

StrPath = str | PathLike[str]

#: Names accepted (case-insensitively, in this priority order) as a clinical table's sample id
#: column; if none is present the first column is used.
CLINICAL_ID_NAMES: tuple[str, ...] = ("sample_id", "sample", "sample.id", "iid")

#: Genotype rows are produced and inserted this many variant rows at a time (bounds memory).
_CHUNK_VARIANT_ROWS = 2048

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------


def normalise_column_name(name: str) -> str:
    """Lower-case ``name`` and replace every run of characters outside ``[0-9a-z]`` by ``_``.

    >>> normalise_column_name("Population.Description")
    'population_description'
    >>> normalise_column_name("family.id")
    'family_id'
    """
    return _NON_ALNUM.sub("_", name.lower())


def _q(name: str) -> str:
    """Quote an SQL identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    """Quote an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what}: column name {n!r} occurs twice after normalisation")
        seen.add(n)


# --------------------------------------------------------------------------------------------
# VCF reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VcfSites:
    """Per-record fixed columns, exactly as written in the VCF text."""

    chrom: list[str]
    pos: np.ndarray  # int64
    rsid: list[str | None]
    ref: list[str]
    alts: list[list[str]]  # [] when ALT is '.'
    qual: np.ndarray  # float64, NaN when '.'
    filter: list[str | None]


def _open_text(path: Path) -> Any:
    """Open a plain or (b)gzipped VCF in binary mode."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_vcf_sites(vcf: StrPath) -> VcfSites:
    """Read CHROM, POS, ID, REF, ALT, QUAL, FILTER of every record (no genotypes parsed)."""
    chrom: list[str] = []
    pos: list[int] = []
    rsid: list[str | None] = []
    ref: list[str] = []
    alts: list[list[str]] = []
    qual: list[float] = []
    filt: list[str | None] = []
    with _open_text(Path(vcf)) as fh:
        for raw in fh:
            if raw.startswith(b"#"):
                continue
            f = raw.split(b"\t", 8)
            if len(f) < 8:
                continue
            c, p, i, r, a, q, fl = (x.decode() for x in f[:7])
            chrom.append(c)
            pos.append(int(p))
            rsid.append(None if i == "." else i)
            ref.append(r)
            alts.append([] if a == "." else a.split(","))
            qual.append(float("nan") if q == "." else float(q))
            filt.append(None if fl == "." else fl)
    return VcfSites(
        chrom=chrom,
        pos=np.asarray(pos, dtype=np.int64),
        rsid=rsid,
        ref=ref,
        alts=alts,
        qual=np.asarray(qual, dtype=np.float64),
        filter=filt,
    )


@dataclass(frozen=True)
class _Calls:
    samples: list[str]  # in the order of the arrays' sample axis
    gt: np.ndarray  # (records, samples, max_ploidy) int8, -1 = missing / no slot
    phased: np.ndarray  # (records, samples) bool


_GT_STR_WIDTH = 12


def _read_calls(vcf: StrPath, keep: Sequence[str]) -> _Calls:
    """Read GT for the samples in ``keep`` (VCF order) with scikit-allel.

    Reads GT twice: as raw strings (for phasing and the maximum ploidy) and as int8 allele
    indices with enough slots for the largest ploidy in the file.
    """
    import allel  # local import: heavy

    if not keep:
        raise ValueError("no sample of the sheet is in the VCF")
    raw = allel.read_vcf(
        str(vcf),
        fields=["calldata/GT", "samples"],
        samples=list(keep),
        types={"calldata/GT": f"S{_GT_STR_WIDTH}"},
        numbers={"calldata/GT": 1},
    )
    if raw is None:  # no records
        return _Calls(
            list(keep), np.zeros((0, len(keep), 2), np.int8), np.zeros((0, len(keep)), bool)
        )
    samples = [str(s) for s in raw["samples"]]
    strings = raw["calldata/GT"]
    del raw
    phased = np.zeros(strings.shape, dtype=bool)
    max_ploidy = 2
    step = 1024  # records per block: bounds the temporary (block, samples, width) arrays
    for lo in range(0, strings.shape[0], step):
        blk = strings[lo : lo + step]
        b = blk.view(np.uint8).reshape(blk.shape + (_GT_STR_WIDTH,))
        pipe = b == ord("|")
        n_sep = pipe.sum(-1, dtype=np.int16) + (b == ord("/")).sum(-1, dtype=np.int16)
        max_ploidy = max(max_ploidy, int(n_sep.max(initial=0)) + 1)
        phased[lo : lo + step] = (n_sep == 1) & pipe.any(-1)
    del strings

    d = allel.read_vcf(
        str(vcf),
        fields=["calldata/GT", "samples"],
        samples=list(keep),
        numbers={"calldata/GT": max_ploidy},
    )
    assert d is not None
    if [str(s) for s in d["samples"]] != samples:
        raise AssertionError("scikit-allel returned samples in different orders")
    gt = np.asarray(d["calldata/GT"], dtype=np.int8)
    if gt.ndim == 2:  # ploidy 1 squeezed
        gt = gt[:, :, None]
    return _Calls(samples=samples, gt=gt, phased=phased)


def _vcf_samples(vcf: StrPath) -> list[str]:
    import allel

    return [str(s) for s in allel.read_vcf_headers(str(vcf)).samples]


def _check_sites_against_allel(vcf: StrPath, sites: VcfSites) -> None:
    """Cross-check the text pass against scikit-allel's CHROM/POS/REF/numalt."""
    import allel

    d = allel.read_vcf(
        str(vcf),
        fields=["variants/CHROM", "variants/POS", "variants/REF", "variants/numalt"],
        alt_number=1,
    )
    n = 0 if d is None else len(d["variants/POS"])
    if n != len(sites.chrom):
        raise AssertionError(f"record count: text pass {len(sites.chrom)}, scikit-allel {n}")
    if n == 0 or d is None:
        return
    if list(d["variants/CHROM"]) != sites.chrom:
        raise AssertionError("CHROM differs between text pass and scikit-allel")
    if not np.array_equal(np.asarray(d["variants/POS"], np.int64), sites.pos):
        raise AssertionError("POS differs between text pass and scikit-allel")
    if list(d["variants/REF"]) != sites.ref:
        raise AssertionError("REF differs between text pass and scikit-allel")
    if not np.array_equal(np.asarray(d["variants/numalt"]), [len(a) for a in sites.alts]):
        raise AssertionError("number of ALT alleles differs between text pass and scikit-allel")


# --------------------------------------------------------------------------------------------
# building the pooled database
# --------------------------------------------------------------------------------------------

_GENOTYPES_DDL = """
CREATE TABLE genotypes (
    sample_id VARCHAR, variant_id VARCHAR, chrom VARCHAR, pos BIGINT, ref VARCHAR, alt VARCHAR,
    dosage TINYINT, phased BOOLEAN, ploidy TINYINT
)"""


def _connect(con_or_path: duckdb.DuckDBPyConnection | StrPath | None) -> duckdb.DuckDBPyConnection:
    if isinstance(con_or_path, duckdb.DuckDBPyConnection):
        return con_or_path
    if con_or_path is None:
        return duckdb.connect(":memory:")
    return duckdb.connect(str(con_or_path))


def _read_table_sql(path: Path) -> str:
    """DuckDB table function reading a CSV/TSV/Parquet file with auto-detection."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        return f"read_parquet({_sql_str(str(path))})"
    return f"read_csv({_sql_str(str(path))}, header = true)"


def _create_samples(con: duckdb.DuckDBPyConnection, sheet: Path) -> list[str]:
    src = _read_table_sql(sheet)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    if not cols:
        raise ValueError(f"{sheet}: no columns")
    out = ["sample_id"] + [normalise_column_name(c) for c in cols[1:]]
    _unique(out, str(sheet))
    select = [f"CAST({_q(cols[0])} AS VARCHAR) AS sample_id"] + [
        f"{_q(c)} AS {_q(n)}" for c, n in zip(cols[1:], out[1:], strict=True)
    ]
    con.execute(f"CREATE TABLE samples AS SELECT {', '.join(select)} FROM {src}")
    dup = con.execute(
        "SELECT sample_id FROM samples GROUP BY sample_id HAVING count(*) > 1 LIMIT 1"
    ).fetchall()
    if dup:
        raise ValueError(f"{sheet}: sample id {dup[0][0]!r} occurs more than once")
    return [r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()]


def _create_clinical(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    src = _read_table_sql(path)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    lower = {c.lower(): c for c in reversed(cols)}  # first occurrence wins
    id_col = next((lower[n] for n in CLINICAL_ID_NAMES if n in lower), cols[0])
    others = [c for c in cols if c != id_col]
    out = ["sample_id"] + [normalise_column_name(c) for c in others]
    _unique(out, f"clinical table {name}")
    select = [f"CAST({_q(id_col)} AS VARCHAR) AS sample_id"] + [
        f"{_q(c)} AS {_q(n)}" for c, n in zip(others, out[1:], strict=True)
    ]
    con.execute(
        f"CREATE TABLE {_q(name)} AS SELECT {', '.join(select)} FROM {src} "
        f"WHERE CAST({_q(id_col)} AS VARCHAR) IN (SELECT sample_id FROM samples)"
    )


def _variant_rows(sites: VcfSites) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Split records into one row per ALT: (record index, ALT index 1..n, variants table)."""
    n_alt = np.asarray([len(a) for a in sites.alts], dtype=np.int64)
    rec = np.repeat(np.arange(len(n_alt), dtype=np.int64), n_alt)
    starts = np.cumsum(n_alt) - n_alt
    alt_idx = (np.arange(len(rec), dtype=np.int64) - np.repeat(starts, n_alt) + 1).astype(np.int8)
    chrom = [sites.chrom[r] for r in rec]
    ref = [sites.ref[r] for r in rec]
    alt = [a for alts in sites.alts for a in alts]
    pos = sites.pos[rec]
    vid = [f"{c}:{p}:{r}:{a}" for c, p, r, a in zip(chrom, pos.tolist(), ref, alt, strict=True)]
    qual = sites.qual[rec]
    table = pa.table(
        {
            "variant_id": pa.array(vid, pa.string()),
            "chrom": pa.array(chrom, pa.string()),
            "pos": pa.array(pos, pa.int64()),
            "ref": pa.array(ref, pa.string()),
            "alt": pa.array(alt, pa.string()),
            "rsid": pa.array([sites.rsid[r] for r in rec], pa.string()),
            "qual": pa.array(qual, pa.float64(), mask=np.isnan(qual)),
            "filter": pa.array([sites.filter[r] for r in rec], pa.string()),
        }
    )
    return rec, alt_idx, table


def _genotype_chunks(
    calls: _Calls, rec: np.ndarray, alt_idx: np.ndarray, variants: pa.Table
) -> Iterator[pa.Table]:
    """Yield Arrow tables of genotype rows, ``_CHUNK_VARIANT_ROWS`` variant rows at a time.

    Rows are in (variant row, sample) order; string columns are dictionary-encoded.
    """
    n_s = len(calls.samples)
    sample_dict = pa.array(calls.samples, pa.string())
    ploidy_rec = (calls.gt >= 0).sum(-1, dtype=np.int8)  # (records, samples)
    for lo in range(0, len(rec), _CHUNK_VARIANT_ROWS):
        hi = min(lo + _CHUNK_VARIANT_ROWS, len(rec))
        r = rec[lo:hi]
        k = hi - lo
        dosage = (calls.gt[r] == alt_idx[lo:hi, None, None]).sum(-1, dtype=np.int8)
        ploidy = ploidy_rec[r]
        phased = calls.phased[r]
        var_ix = np.repeat(np.arange(k, dtype=np.int32), n_s)
        smp_ix = np.tile(np.arange(n_s, dtype=np.int32), k)
        sl = variants.slice(lo, k)

        def dict_col(name: str, _sl: pa.Table = sl, _ix: np.ndarray = var_ix) -> pa.Array:
            return pa.DictionaryArray.from_arrays(pa.array(_ix), _sl.column(name).combine_chunks())

        yield pa.table(
            {
                "sample_id": pa.DictionaryArray.from_arrays(pa.array(smp_ix), sample_dict),
                "variant_id": dict_col("variant_id"),
                "chrom": dict_col("chrom"),
                "pos": pa.array(np.repeat(sl.column("pos").to_numpy(), n_s), pa.int64()),
                "ref": dict_col("ref"),
                "alt": dict_col("alt"),
                "dosage": pa.array(dosage.ravel(), pa.int8(), mask=(ploidy == 0).ravel()),
                "phased": pa.array(phased.ravel(), pa.bool_()),
                "ploidy": pa.array(ploidy.ravel(), pa.int8()),
            }
        )


def build_pooled(
    con_or_path: duckdb.DuckDBPyConnection | StrPath | None,
    vcf: StrPath,
    samples_sheet: StrPath,
    clinical: Mapping[str, StrPath] | None = None,
    *,
    check_sites: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Build the pooled oracle tables and return the DuckDB connection.

    Parameters
    ----------
    con_or_path:
        An open DuckDB connection, a database file path (created; an on-disk database keeps
        memory low thanks to DuckDB's compression), or ``None``/``":memory:"`` for in-memory.
    vcf:
        VCF (plain, gzip or BGZF) with a GT field.
    samples_sheet:
        Sample sheet; first column = sample id.  Only its samples form the cohort.
    clinical:
        ``{table_name: path}`` of CSV/TSV/Parquet clinical tables.
    check_sites:
        Cross-check the fixed columns against scikit-allel (costs ~1 s on 25k records).

    Tables created: ``samples``, ``variants``, ``genotypes`` and one per clinical entry.
    Sheet samples absent from the VCF stay in ``samples`` (with no genotype rows); VCF samples
    absent from the sheet are ignored.

    Cost on the 1126 x 25,709 set (29.6M genotype rows): ~17-21 s; peak RSS ~2.1 GiB
    in memory, ~0.9 GiB with a database file (compressed to ~120 MB), ~20-30 s.
    """
    con = _connect(con_or_path)
    sheet_ids = _create_samples(con, Path(samples_sheet))
    for name, path in (clinical or {}).items():
        _create_clinical(con, name, Path(path))

    sites = read_vcf_sites(vcf)
    if check_sites:
        _check_sites_against_allel(vcf, sites)
    rec, alt_idx, variants = _variant_rows(sites)
    con.register("_oracle_variants", variants)
    con.execute("CREATE TABLE variants AS SELECT * FROM _oracle_variants")
    con.unregister("_oracle_variants")

    in_sheet = set(sheet_ids)
    keep = [s for s in _vcf_samples(vcf) if s in in_sheet]
    con.execute(_GENOTYPES_DDL)
    if len(rec) == 0 or not keep:
        return con
    calls = _read_calls(vcf, keep)
    if calls.gt.shape[0] != len(sites.chrom):
        raise AssertionError("scikit-allel GT record count differs from the text pass")
    for chunk in _genotype_chunks(calls, rec, alt_idx, variants):
        con.register("_oracle_chunk", chunk)
        con.execute(
            "INSERT INTO genotypes SELECT sample_id::VARCHAR, variant_id::VARCHAR, chrom::VARCHAR,"
            " pos, ref::VARCHAR, alt::VARCHAR, dosage, phased, ploidy FROM _oracle_chunk"
        )
        con.unregister("_oracle_chunk")
    return con


# --------------------------------------------------------------------------------------------
# SQL rewrite: genomic aggregates -> plain DuckDB SQL
# --------------------------------------------------------------------------------------------


def _dosage_to_ploidy(arg: exp.Expression) -> exp.Expression:
    """Copy of ``arg`` with every column named ``dosage`` replaced by ``ploidy`` (same table)."""

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and node.name.lower() == "dosage":
            new = node.copy()
            new.set("this", exp.to_identifier("ploidy"))
            return new
        return node

    return arg.copy().transform(swap)


def _p(e: exp.Expression) -> exp.Expression:
    return exp.Paren(this=e)


def _cast_double(e: exp.Expression) -> exp.Expression:
    return exp.Cast(this=e, to=exp.DataType.build("DOUBLE"))


def _count_when(cond: exp.Expression | exp.Condition) -> exp.Expression:
    """``count(CASE WHEN cond THEN 1 END)``: BIGINT, 0 on no rows.

    (DuckDB's own ``count_if`` is a HUGEINT sum that is NULL on an empty input.)
    """
    case = exp.Case(ifs=[exp.If(this=cond, true=exp.Literal.number(1))])
    return exp.Count(this=case)


def _bigint(e: exp.Expression | exp.Func) -> exp.Expression:
    return exp.Cast(this=e, to=exp.DataType.build("BIGINT"))


def _ac(d: exp.Expression) -> exp.Expression:
    return _bigint(exp.func("coalesce", exp.Sum(this=d.copy()), exp.Literal.number(0)))


def _an(d: exp.Expression) -> exp.Expression:
    return _bigint(exp.func("coalesce", exp.Sum(this=_dosage_to_ploidy(d)), exp.Literal.number(0)))


def _af(d: exp.Expression) -> exp.Expression:
    return exp.Div(
        this=_cast_double(_ac(d)),
        expression=exp.func("nullif", _an(d), exp.Literal.number(0)),
    )


def _het(d: exp.Expression) -> exp.Expression:
    cond = exp.and_(
        exp.EQ(this=_p(_dosage_to_ploidy(d)), expression=exp.Literal.number(2)),
        exp.EQ(this=_p(d.copy()), expression=exp.Literal.number(1)),
    )
    return _count_when(cond)


def _hom_alt(d: exp.Expression) -> exp.Expression:
    cond = exp.and_(
        exp.EQ(this=_p(d.copy()), expression=_p(_dosage_to_ploidy(d))),
        exp.GT(this=_p(d.copy()), expression=exp.Literal.number(0)),
    )
    return _count_when(cond)


def _hom_ref(d: exp.Expression) -> exp.Expression:
    cond = exp.and_(
        exp.EQ(this=_p(_dosage_to_ploidy(d)), expression=exp.Literal.number(2)),
        exp.EQ(this=_p(d.copy()), expression=exp.Literal.number(0)),
    )
    return _count_when(cond)


def _hom_alt_diploid(d: exp.Expression) -> exp.Expression:
    return _count_when(exp.EQ(this=_p(d.copy()), expression=exp.Literal.number(2)))


def _call_rate(d: exp.Expression) -> exp.Expression:
    return exp.Div(
        this=_cast_double(exp.Count(this=d.copy())),
        expression=exp.func("nullif", exp.Count(this=exp.Star()), exp.Literal.number(0)),
    )


#: genofed's genomic aggregate -> function building its plain-SQL definition from the argument.
#: allele_count(d)  = coalesce(sum(d), 0)        (cast to BIGINT: DuckDB's sum gives HUGEINT)
#: allele_number(d) = coalesce(sum(ploidy), 0)   (BIGINT)
#: allele_freq(d)   = allele_count / allele_number, NULL if allele_number = 0
#: het_count(d)     = count_if(ploidy = 2 AND d = 1)    (as a BIGINT count: 0, not NULL, on no rows)
#: hom_alt_count(d) = count_if(d = ploidy AND d > 0)    (idem)
#: call_rate(d)     = count(d) / count(*)
#: When the argument is an expression (e.g. ``CASE WHEN ... THEN g.dosage END``), ``ploidy`` is
#: the same expression with each ``dosage`` column replaced by ``ploidy`` of the same table.
GENOMIC_AGGREGATES: dict[str, Callable[[exp.Expression], exp.Expression]] = {
    "allele_count": _ac,
    "allele_number": _an,
    "allele_freq": _af,
    "het_count": _het,
    "hom_alt_count": _hom_alt,
    "hom_ref_count": _hom_ref,
    "hom_alt_diploid_count": _hom_alt_diploid,
    "call_rate": _call_rate,
}


def _genomic_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous) and isinstance(node.this, str):
        name = node.this.lower()
        return name if name in GENOMIC_AGGREGATES else None
    return None


def _expand(node: exp.Anonymous) -> exp.Expression:
    name = _genomic_name(node)
    assert name is not None
    args = node.expressions
    if len(args) != 1:
        raise ValueError(f"{name}() takes exactly one argument, got {len(args)}")
    return _p(GENOMIC_AGGREGATES[name](args[0]))


def _attach_filter(tree: exp.Expression, where: exp.Expression) -> exp.Expression:
    """Give every aggregate inside ``tree`` the same ``FILTER (WHERE ...)`` clause."""

    def wrap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.AggFunc):
            return exp.Filter(this=node, expression=where.copy())
        return node

    return tree.transform(wrap, copy=False)


def to_pooled_sql(sql: str, dialect: str = "duckdb") -> str:
    """Rewrite genofed's genomic aggregates into plain DuckDB SQL over the pooled tables.

    Uses sqlglot AST transforms; e.g. ``allele_number(g.dosage)`` becomes
    ``(CAST(COALESCE(SUM(g.ploidy), 0) AS BIGINT))``.  ``agg(...) FILTER (WHERE c)`` is supported (the filter
    is attached to every inner aggregate).  An unaliased projection containing a genomic
    aggregate is aliased with its original text (e.g. ``"allele_count(dosage)"``).  Other SQL
    is passed through unchanged.
    """
    tree = sqlglot.parse_one(sql, read=dialect)

    # keep the output name of unaliased projections that contain a genomic aggregate
    for select in list(tree.find_all(exp.Select)):
        projections = []
        for e in select.expressions:
            if not isinstance(e, exp.Alias) and any(_genomic_name(n) is not None for n in e.walk()):
                name = e.sql(dialect=dialect, normalize_functions="lower")
                e = exp.alias_(e.copy(), name, quoted=True)
            projections.append(e)
        select.set("expressions", projections)

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Filter) and _genomic_name(node.this) is not None:
            assert isinstance(node.this, exp.Anonymous)
            return _attach_filter(_expand(node.this), node.expression)
        if _genomic_name(node) is not None and not isinstance(node.parent, exp.Filter):
            assert isinstance(node, exp.Anonymous)
            return _expand(node)
        return node

    return tree.transform(rewrite).sql(dialect=dialect)


# --------------------------------------------------------------------------------------------
# self-check
# --------------------------------------------------------------------------------------------


def _default_1126() -> tuple[Path, Path]:
    try:
        from reftools import shared_data_path  # type: ignore[import-not-found]
    except ImportError:  # tests/ imported as a package
        from .reftools import shared_data_path  # type: ignore[no-redef]

    d = shared_data_path() / "1kg_phase3_subset_1126"
    return d / "1kg_phase3_subset_1126.vcf.gz", d / "samples_1126.tsv"


def main(argv: Sequence[str] | None = None) -> int:
    """Build the pooled oracle for the 1126 set (or ``VCF SHEET [DB]``) and print counts."""
    import resource

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2:
        vcf, sheet = Path(args[0]), Path(args[1])
    else:
        vcf, sheet = _default_1126()
    db = args[2] if len(args) >= 3 else None
    t0 = time.perf_counter()
    con = build_pooled(db, vcf, sheet)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"built in {dt:.1f} s, peak RSS {rss:.0f} MiB")
    for t in ("samples", "variants", "genotypes"):
        print(t, con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
    q = to_pooled_sql(
        "SELECT chrom, count(DISTINCT variant_id) AS n_var, allele_count(dosage) AS ac,"
        " allele_number(dosage) AS an, round(allele_freq(dosage), 6) AS af,"
        " het_count(dosage) AS het, hom_alt_count(dosage) AS hom,"
        " call_rate(dosage) AS cr FROM genotypes WHERE chrom IN ('1', '22', 'X')"
        " GROUP BY chrom ORDER BY chrom"
    )
    print(q)
    print(con.execute(q).df().to_string(index=False))
    print(
        con.execute("SELECT ploidy, count(*) AS n FROM genotypes GROUP BY ploidy ORDER BY ploidy")
        .df()
        .to_string(index=False)
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
