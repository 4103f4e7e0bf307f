"""Ingest: bad input gets a precise error and leaves the previous store intact."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import P1126, need, shared_data

from genofed import IngestError
from genofed.connectors.ingest import ingest
from genofed.genomics.store import NodeStore

HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=1>\n##contig=<ID=X>\n##FILTER=<ID=q10,Description=\"low\">\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3\n"
)
GOOD = (
    "1\t100\trs1\tA\tC\t50\tPASS\t.\tGT\t0|1\t1|1\t./.\n"
    "1\t200\t.\tG\tT,<CN2>\t.\t.\t.\tGT\t1/2\t0/2\t0/0\n"
    "X\t300\t.\tC\tCA\t.\tq10\t.\tGT\t0\t1\t0/.\n"
)


def write_vcf(path: Path, body: str) -> Path:
    path.write_text(HEADER + body)
    return path


def genotype_table(store: Path):
    from genofed.genomics.kernels import genotype_rows

    s = NodeStore(store)
    t = genotype_rows(s.planes, np.arange(s.manifest.n_variants), s.manifest.n_samples)
    return t.to_pydict()


def test_multiallelic_haploid_halfcalls(tmp_path):
    r = ingest(tmp_path / "st", write_vcf(tmp_path / "a.vcf", GOOD))
    assert (r.n_records, r.n_variants, r.n_samples) == (3, 4, 3)
    g = genotype_table(tmp_path / "st")
    # rows: variant-major; 4 variant rows x 3 samples
    assert g["dosage"] == [1, 2, None, 1, 0, 0, 1, 1, 0, 0, 1, 0]
    assert g["ploidy"] == [2, 2, 0, 2, 2, 2, 2, 2, 2, 1, 1, 1]
    assert g["phased"][:3] == [True, True, False]
    import pyarrow.parquet as pq

    v = pq.read_table(NodeStore(tmp_path / "st").variants_path).to_pydict()
    assert v["variant_id"] == ["1:100:A:C", "1:200:G:T", "1:200:G:<CN2>", "X:300:C:CA"]
    assert v["rsid"] == ["rs1", None, None, None]
    assert v["filter"][0] == "PASS" and v["filter"][3] == "q10"


@pytest.mark.parametrize(
    "body, match",
    [
        ("1\tABC\t.\tA\tC\t.\t.\t.\tGT\t0/1\t0/1\t0/1\n", r"a\.vcf:8, column 2 \(POS\): 'ABC' is not a positive integer"),
        ("1\t100\t.\tA\tC\t.\t.\t.\tGT\t0/1\t0/1\n", r"a\.vcf:8: 11 columns, expected 12"),
        ("1\t100\t.\tA\tC\t.\t.\t.\tGT\t0/1\t0/5\t0/1\n", r"a\.vcf:8, column 11 \(sample 2\): genotype '0/5' is not valid"),
        ("1\t100\t.\tA\n", r"a\.vcf:8: record has 4 tab-separated columns"),
    ],
)
@pytest.mark.parametrize("reader", ["text", "cyvcf2"])
def test_malformed_record_names_file_line_position(tmp_path, body, match, reader):
    with pytest.raises(IngestError, match=match):
        ingest(tmp_path / "st", write_vcf(tmp_path / "a.vcf", GOOD.splitlines(True)[0] + body), reader=reader)


def test_failed_ingest_leaves_previous_store(tmp_path):
    store = tmp_path / "st"
    ingest(store, write_vcf(tmp_path / "good.vcf", GOOD))
    before = NodeStore(store).manifest
    with pytest.raises(IngestError):
        ingest(store, write_vcf(tmp_path / "bad.vcf", GOOD + "1\tXYZ\t.\tA\tC\t.\t.\t.\tGT\t0\t0\t0\n"))
    after = NodeStore(store)
    assert after.manifest.n_variants == before.n_variants == 4
    assert [p.name for p in store.iterdir() if p.name.startswith(".tmp")] == []
    assert genotype_table(store)["dosage"][:2] == [1, 2]


def test_interrupted_ingest_leaves_previous_store(tmp_path):
    store = tmp_path / "st"
    ingest(store, write_vcf(tmp_path / "good.vcf", GOOD))
    big = tmp_path / "big.vcf"
    write_vcf(big, "".join(f"1\t{1000 + i}\t.\tA\tC\t.\t.\t.\tGT\t0|1\t0|0\t1|1\n" for i in range(50)))

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(store, big, chunk_records=10, on_chunk=interrupt)
    assert NodeStore(store).manifest.n_variants == 4
    assert [p.name for p in store.iterdir() if p.name.startswith(".tmp")] == []


def test_truncated_bgzf(tmp_path):
    src = need(shared_data() / P1126 / f"{P1126}.vcf.gz")
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(src.read_bytes()[:300_000])
    with pytest.raises(IngestError, match=r"cut\.vcf\.gz: truncated BGZF file \(the end-of-file marker is missing"):
        ingest(tmp_path / "st", cut)
    assert not (tmp_path / "st" / "current").exists()


def test_sample_sheet_ids_missing_from_vcf(tmp_path):
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample\tpop\ns1\tA\nnobody\tB\nghost\tC\n")
    with pytest.raises(IngestError, match=r"sample sheet: 2 of 3 sample ids are not in the VCF a\.vcf \(first: nobody, ghost\)"):
        ingest(tmp_path / "st", write_vcf(tmp_path / "a.vcf", GOOD), samples=sheet)


def test_sample_sheet_and_clinical(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("Sample.ID,Super Pop,Age\ns3,EUR,40\ns1,AFR,50\n")
    clin = tmp_path / "clin.csv"
    clin.write_text("IID,LDL\ns1,120.5\ns3,\ns2,99\nzz,1\n")
    r = ingest(tmp_path / "st", write_vcf(tmp_path / "a.vcf", GOOD), samples=sheet, clinical={"Pheno": clin})
    assert r.n_samples == 2 and r.clinical == {"pheno": 2}
    import pyarrow.parquet as pq

    s = NodeStore(tmp_path / "st")
    samples = pq.read_table(s.samples_path)
    assert samples.column_names == ["sample_id", "super_pop", "age"]
    assert samples.column("sample_id").to_pylist() == ["s1", "s3"]  # VCF order = genotype columns
    assert pq.read_table(s.clinical_path("pheno")).column_names == ["sample_id", "ldl"]


def test_missing_vcf(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "st", tmp_path / "nope.vcf.gz")


def test_1126_counts_match_bcftools(tmp_path):
    """AC/AN per split variant row equal bcftools +fill-tags (multi-allelic, chrX half-calls)."""
    from conftest import need_tool
    from reftools import bcftools_fill_tags

    need_tool("bcftools")
    vcf = need(shared_data() / P1126 / f"{P1126}.vcf.gz")
    ingest(tmp_path / "st", vcf)
    s = NodeStore(tmp_path / "st")
    import pyarrow.parquet as pq

    from genofed.genomics.kernels import group_counts
    from genofed.genomics.store import pack_mask

    vids = pq.read_table(s.variants_path).column("variant_id").to_pylist()
    c = group_counts(s.planes, np.arange(len(vids)), pack_mask(np.arange(s.manifest.n_samples), s.manifest.n_samples)[None, :])
    ac = (c["alt1"] + c["alt2"])[:, 0]
    an = (c["called"] + c["diploid"])[:, 0]
    ref = bcftools_fill_tags(vcf)
    assert len(ref) == len(vids)
    ref = ref.loc[vids]
    assert (ref["AC"].to_numpy() == ac).all()
    assert (ref["AN"].to_numpy() == an).all()
    shutil.rmtree(tmp_path / "st")


@pytest.mark.parametrize(
    "rel",
    [
        f"{P1126}/{P1126}.vcf.gz",
        "extras/va_chr22_5samples.vcf.gz",
        "extras/CEU_Exon.vcf.gz",
        "1kg_2504_aisnps/kidd.aisnp.1kg.vcf.gz",
    ],
)
def test_text_reader_equals_htslib_reader(tmp_path, rel):
    """The numpy text reader and cyvcf2/htslib write identical stores (planes and variants)."""
    import pyarrow.parquet as pq

    vcf = need(shared_data() / rel)
    ingest(tmp_path / "text", vcf, reader="text")
    ingest(tmp_path / "hts", vcf, reader="cyvcf2")
    a, b = NodeStore(tmp_path / "text"), NodeStore(tmp_path / "hts")
    assert a.manifest.n_variants == b.manifest.n_variants > 0
    assert np.array_equal(np.asarray(a.planes), np.asarray(b.planes))
    va, vb = pq.read_table(a.variants_path), pq.read_table(b.variants_path)
    for c in ["variant_id", "chrom", "pos", "ref", "alt", "rsid", "filter"]:
        assert va.column(c).to_pylist() == vb.column(c).to_pylist(), c
    qa, qb = va.column("qual").to_pylist(), vb.column("qual").to_pylist()
    assert all((x is None and y is None) or abs(x - y) < 1e-4 * max(1, abs(x)) for x, y in zip(qa, qb))


@pytest.mark.parametrize("rel", [f"{P1126}/{P1126}.vcf.gz", "1kg_2504_peddy/peddy_1kg_2504x23770.vcf.gz"])
def test_parallel_ingest_equals_sequential(tmp_path, rel, monkeypatch):
    """Worker processes over BGZF block ranges write the same store as one sequential pass."""
    import pyarrow.parquet as pq

    from genofed.connectors import parallel

    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    vcf = need(shared_data() / rel)
    ingest(tmp_path / "seq", vcf, workers=1)
    ingest(tmp_path / "par", vcf, workers=3)
    a, b = NodeStore(tmp_path / "seq"), NodeStore(tmp_path / "par")
    assert a.manifest.n_variants == b.manifest.n_variants
    assert np.array_equal(np.asarray(a.planes), np.asarray(b.planes))
    assert np.array_equal(a.complete, b.complete)
    assert pq.read_table(a.variants_path).equals(pq.read_table(b.variants_path))
    assert not list((tmp_path / "par").glob("*/part*"))


def test_parallel_ingest_error_falls_back_to_exact_message(tmp_path, monkeypatch):
    import subprocess

    from genofed.connectors import parallel

    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    src = need(shared_data() / P1126 / f"{P1126}.vcf.gz")
    with gzip.open(src, "rt") as fh:
        lines = fh.read().splitlines(True)
    bad_at = len(lines) - 3000
    fields = lines[bad_at].split("\t")
    fields[1] = "12x"
    lines[bad_at] = "\t".join(fields)
    plain = tmp_path / "bad.vcf"
    plain.write_text("".join(lines))
    subprocess.run(["bgzip", "-f", str(plain)], check=True)
    with pytest.raises(IngestError, match=rf"bad\.vcf\.gz:{bad_at + 1}, column 2 \(POS\): '12x' is not a positive integer"):
        ingest(tmp_path / "st", tmp_path / "bad.vcf.gz", workers=3)
    assert not (tmp_path / "st" / "current").exists()
