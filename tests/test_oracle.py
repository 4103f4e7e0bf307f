"""Checks of the test oracle itself (tests/oracle.py) -- not of genofed.

* a hand-written VCF with every genotype edge case, against hand-computed expectations;
* ``to_pooled_sql`` rewrites;
* on the real 1000 Genomes 1126 set (chromosomes 16, 22, X: multi-allelic sites, symbolic ALTs,
  chrX half-calls and PAR): the oracle against ``bcftools +fill-tags``, per-genotype
  ``bcftools query`` and ``plink2 --freq counts``;
* (slow) the full 1126 build and the query corpus on it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from oracle import build_pooled, to_pooled_sql
from reftools import (
    bcftools_fill_tags,
    bcftools_genotypes,
    plink2_freq,
    require_shared_data,
    require_tool,
)

# ------------------------------------------------------------------------------------------
# hand-written VCF
# ------------------------------------------------------------------------------------------

_VCF = """\
##fileformat=VCFv4.2
##contig=<ID=1>
##contig=<ID=X>
##FILTER=<ID=q10,Description="q10">
##FILTER=<ID=lowDP,Description="lowDP">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM	POS	ID	REF	ALT	QUAL	FILTER	INFO	FORMAT	S1	S2	S3	S4	S5
1	100	rs1	A	C,G	50	PASS	.	GT	0|1	1/2	./.	2|2	0|0
1	200	.	A	T	.	.	.	GT	0	1	.	0/.	1|1
1	250	.	A	.	30	PASS	.	GT	0/0	0/0	0/0	0/0	0/0
1	300	rs9;rs10	G	T	29.7	lowDP;q10	.	GT	0/1/1	0/0	./.	1/.	0|0
1	400	.	C	T	0	undeclaredF	.	GT	0|0	0|0	0|0	0|0	0|0
X	300	rs3	G	<CN0>	10.5	q10;lowDP	.	GT	.|1	1/.	0|0	./0	0|1
"""

# sample sheet: S5 is in the VCF but not the sheet, S6 is in the sheet but not the VCF
_SHEET = (
    "ID\tSex\tPopulation.Description\tBMI (kg/m2)\nS1\tM\tA b\t20.5\nS2\tF\tA b\t21\n"
    "S3\tF\tC\t22\nS4\tM\tC\t23\nS6\tF\tC\t24\n"
)

# (variant_id, sample_id) -> (dosage, ploidy, phased)
_EXPECTED_GT: dict[tuple[str, str], tuple[int | None, int, bool]] = {
    ("1:100:A:C", "S1"): (1, 2, True),
    ("1:100:A:C", "S2"): (1, 2, False),
    ("1:100:A:C", "S3"): (None, 0, False),
    ("1:100:A:C", "S4"): (0, 2, True),
    ("1:100:A:G", "S1"): (0, 2, True),
    ("1:100:A:G", "S2"): (1, 2, False),
    ("1:100:A:G", "S3"): (None, 0, False),
    ("1:100:A:G", "S4"): (2, 2, True),
    ("1:200:A:T", "S1"): (0, 1, False),
    ("1:200:A:T", "S2"): (1, 1, False),
    ("1:200:A:T", "S3"): (None, 0, False),
    ("1:200:A:T", "S4"): (0, 1, False),
    ("1:300:G:T", "S1"): (2, 3, False),
    ("1:300:G:T", "S2"): (0, 2, False),
    ("1:300:G:T", "S3"): (None, 0, False),
    ("1:300:G:T", "S4"): (1, 1, False),
    ("1:400:C:T", "S1"): (0, 2, True),
    ("1:400:C:T", "S2"): (0, 2, True),
    ("1:400:C:T", "S3"): (0, 2, True),
    ("1:400:C:T", "S4"): (0, 2, True),
    ("X:300:G:<CN0>", "S1"): (1, 1, True),
    ("X:300:G:<CN0>", "S2"): (1, 1, False),
    ("X:300:G:<CN0>", "S3"): (0, 2, True),
    ("X:300:G:<CN0>", "S4"): (0, 1, False),
}

# variant_id -> (ac, an, af, het, hom, call_rate)
_EXPECTED_AGG: dict[str, tuple[int, int, float | None, int, int, float]] = {
    "1:100:A:C": (2, 6, 2 / 6, 2, 0, 0.75),
    "1:100:A:G": (3, 6, 3 / 6, 1, 1, 0.75),
    "1:200:A:T": (1, 3, 1 / 3, 0, 1, 0.75),
    "1:300:G:T": (3, 6, 3 / 6, 0, 1, 0.75),
    "1:400:C:T": (0, 8, 0.0, 0, 0, 1.0),
    "X:300:G:<CN0>": (2, 5, 2 / 5, 0, 2, 1.0),
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    d = tmp_path_factory.mktemp("oracle_small")
    (d / "t.vcf").write_text(_VCF)
    (d / "sheet.tsv").write_text(_SHEET)
    (d / "labs.csv").write_text("Age,Sample,LDL-c\n40,S1,3.1\n50,S2,\n60,S7,2.0\n")
    (d / "noid.csv").write_text("participant,Score\nS3,1\nS4,2\nS9,3\n")
    duckdb.execute(
        f"COPY (SELECT * FROM (VALUES (1.5, 'S2', 'a'), (2.5, 'S5', 'b')) t(x, IID, \"Y.z\")) "
        f"TO '{d / 'extra.parquet'}' (FORMAT parquet)"
    )
    con = build_pooled(
        None,
        d / "t.vcf",
        d / "sheet.tsv",
        {"labs": d / "labs.csv", "extra": d / "extra.parquet", "noid": d / "noid.csv"},
    )
    yield con
    con.close()


def test_samples_and_clinical_tables(small: duckdb.DuckDBPyConnection) -> None:
    cols = [r[0] for r in small.execute("DESCRIBE samples").fetchall()]
    assert cols == ["sample_id", "sex", "population_description", "bmi_kg_m2_"]
    assert small.execute("SELECT list(sample_id ORDER BY sample_id) FROM samples").fetchone() == (
        ["S1", "S2", "S3", "S4", "S6"],
    )
    assert small.execute("SELECT * FROM labs ORDER BY sample_id").fetchall() == [
        ("S1", 40, 3.1),
        ("S2", 50, None),
    ]
    assert [r[0] for r in small.execute("DESCRIBE labs").fetchall()] == [
        "sample_id",
        "age",
        "ldl_c",
    ]
    assert small.execute("SELECT * FROM extra").fetchall() == [("S2", 1.5, "a")]
    assert [r[0] for r in small.execute("DESCRIBE extra").fetchall()] == ["sample_id", "x", "y_z"]
    assert small.execute("SELECT * FROM noid ORDER BY sample_id").fetchall() == [
        ("S3", 1),
        ("S4", 2),
    ]


def test_variants_table(small: duckdb.DuckDBPyConnection) -> None:
    rows = small.execute("SELECT * FROM variants").fetchall()
    assert rows == [
        ("1:100:A:C", "1", 100, "A", "C", "rs1", 50.0, "PASS"),
        ("1:100:A:G", "1", 100, "A", "G", "rs1", 50.0, "PASS"),
        ("1:200:A:T", "1", 200, "A", "T", None, None, None),
        ("1:300:G:T", "1", 300, "G", "T", "rs9;rs10", 29.7, "lowDP;q10"),
        ("1:400:C:T", "1", 400, "C", "T", None, 0.0, "undeclaredF"),
        ("X:300:G:<CN0>", "X", 300, "G", "<CN0>", "rs3", 10.5, "q10;lowDP"),
    ]
    types = dict(
        small.execute("SELECT column_name, column_type FROM (DESCRIBE variants)").fetchall()
    )
    assert types == {
        "variant_id": "VARCHAR",
        "chrom": "VARCHAR",
        "pos": "BIGINT",
        "ref": "VARCHAR",
        "alt": "VARCHAR",
        "rsid": "VARCHAR",
        "qual": "DOUBLE",
        "filter": "VARCHAR",
    }


def test_genotypes_table(small: duckdb.DuckDBPyConnection) -> None:
    types = dict(
        small.execute("SELECT column_name, column_type FROM (DESCRIBE genotypes)").fetchall()
    )
    assert types == {
        "sample_id": "VARCHAR",
        "variant_id": "VARCHAR",
        "chrom": "VARCHAR",
        "pos": "BIGINT",
        "ref": "VARCHAR",
        "alt": "VARCHAR",
        "dosage": "TINYINT",
        "phased": "BOOLEAN",
        "ploidy": "TINYINT",
    }
    got = {
        (v, s): (d, p, ph)
        for v, s, d, p, ph in small.execute(
            "SELECT variant_id, sample_id, dosage, ploidy, phased FROM genotypes"
        ).fetchall()
    }
    assert got == _EXPECTED_GT
    # the denormalised columns agree with variants
    assert small.execute(
        "SELECT count(*) FROM genotypes g JOIN variants v USING (variant_id) "
        "WHERE g.chrom <> v.chrom OR g.pos <> v.pos OR g.ref <> v.ref OR g.alt <> v.alt"
    ).fetchone() == (0,)


def test_genomic_aggregates_rewrite(small: duckdb.DuckDBPyConnection) -> None:
    sql = to_pooled_sql(
        "SELECT variant_id, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
        "allele_freq(dosage) AS af, het_count(dosage) AS het, hom_alt_count(dosage) AS hom, "
        "call_rate(dosage) AS cr FROM genotypes GROUP BY variant_id ORDER BY variant_id"
    )
    got = {r[0]: r[1:] for r in small.execute(sql).fetchall()}
    assert got.keys() == _EXPECTED_AGG.keys()
    for vid, exp_row in _EXPECTED_AGG.items():
        assert got[vid][:2] == exp_row[:2], vid
        assert got[vid][2] == pytest.approx(exp_row[2]), vid
        assert got[vid][3:5] == exp_row[3:5], vid
        assert got[vid][5] == pytest.approx(exp_row[5]), vid


def test_rewrite_qualifier_filter_and_empty(small: duckdb.DuckDBPyConnection) -> None:
    sql = to_pooled_sql("SELECT allele_number(g.dosage) FROM genotypes g")
    assert "SUM(g.ploidy)" in sql
    assert '"allele_number(g.dosage)"' in sql
    # expression argument: ploidy follows the same CASE
    sql = to_pooled_sql(
        "SELECT allele_freq(CASE WHEN s.sex = 'M' THEN g.dosage END) AS af "
        "FROM genotypes g JOIN samples s USING (sample_id) WHERE g.chrom = 'X'"
    )
    assert "THEN g.ploidy END" in sql
    # males S1, S4 at X:300: dosage 1 + 0 over ploidy 1 + 1
    assert small.execute(sql).fetchone() == (0.5,)
    # FILTER clause is pushed onto every inner aggregate
    sql = to_pooled_sql(
        "SELECT call_rate(dosage) FILTER (WHERE chrom = '1') AS cr, "
        "allele_count(dosage) FILTER (WHERE pos = 100) AS ac FROM genotypes"
    )
    cr, ac = small.execute(sql).fetchone()  # type: ignore[misc]
    assert cr == pytest.approx(16 / 20) and ac == 5
    # empty selection: AC = AN = 0, AF and call rate NULL
    sql = to_pooled_sql(
        "SELECT allele_count(dosage), allele_number(dosage), allele_freq(dosage), "
        "het_count(dosage), call_rate(dosage) FROM genotypes WHERE chrom = 'Y'"
    )
    assert small.execute(sql).fetchone() == (0, 0, None, 0, None)
    # non-genomic SQL untouched (modulo formatting)
    assert to_pooled_sql("SELECT sum(dosage) AS s FROM genotypes") == (
        "SELECT SUM(dosage) AS s FROM genotypes"
    )


# ------------------------------------------------------------------------------------------
# real data: 1126 set, chromosomes 16, 22, X
# ------------------------------------------------------------------------------------------

_REGIONS = "16,22,X"
# multi-allelic (22), symbolic multi-allelic <CN2>,<CN3> (16), chrX PAR1 and non-PAR
_SPOT_POSITIONS = [
    ("22", 22085620),
    ("22", 48980315),
    ("16", 16742149),
    ("16", 254375),
    ("X", 430365),
    ("X", 100064504),
]


@dataclass(frozen=True)
class _Real:
    con: duckdb.DuckDBPyConnection
    vcf: Path
    dir: Path
    split: Path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Real]:
    base = require_shared_data("1kg_phase3_subset_1126")
    require_tool("bcftools", "bcftools+fill-tags")
    d = tmp_path_factory.mktemp("oracle_1126")
    vcf = d / "subset.vcf.gz"
    subprocess.run(
        [
            "bcftools",
            "view",
            "-r",
            _REGIONS,
            "-Oz",
            "-o",
            str(vcf),
            str(base / "1kg_phase3_subset_1126.vcf.gz"),
        ],
        check=True,
    )
    subprocess.run(["bcftools", "index", "-t", str(vcf)], check=True)
    sheet = base / "samples_1126.tsv"
    con = build_pooled(d / "pooled.duckdb", vcf, sheet)
    yield _Real(con=con, vcf=vcf, dir=d, split=base / "suggested_3node_split.tsv")
    con.close()


def _oracle_counts(con: duckdb.DuckDBPyConnection, where: str = "TRUE") -> pd.DataFrame:
    sql = to_pooled_sql(
        "SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
        "allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) "
        f"WHERE {where} GROUP BY g.variant_id"
    )
    return con.execute(sql).df().set_index("variant_id")


@pytest.mark.realdata
@pytest.mark.reftool
def test_oracle_matches_bcftools_fill_tags(real: _Real) -> None:
    con = real.con
    ref = bcftools_fill_tags(real.vcf)
    got = _oracle_counts(con)
    assert len(ref) > 3000 and ref.index.is_unique
    assert set(ref.index) == set(got.index)
    j = ref.join(got)
    assert (j["AC"] == j["ac"]).all()
    assert (j["AN"] == j["an"]).all()  # half-calls 0/. count 1 in both
    np.testing.assert_allclose(j["AF"], j["af"], rtol=1e-5, atol=1e-6)
    # chrX: males count 1 allele outside the PAR, 2 inside
    n_f, n_m = con.execute(
        "SELECT count(*) FILTER (WHERE sex = 'F'), count(*) FILTER (WHERE sex = 'M') FROM samples"
    ).fetchone()  # type: ignore[misc]
    assert j.loc["X:100064504:T:C", "AN"] == 2 * n_f + n_m
    assert j.loc["X:430365:G:A", "AN"] == 2 * (n_f + n_m)


@pytest.mark.realdata
@pytest.mark.reftool
def test_oracle_matches_bcftools_on_one_node(real: _Real) -> None:
    con = real.con
    split = pd.read_csv(real.split, sep="\t", dtype=str)
    node_a = split.loc[split["node"] == "biobank_A", "sample.id"].tolist()
    ref = bcftools_fill_tags(real.vcf, node_a)
    ids = ", ".join(f"'{s}'" for s in node_a)
    got = _oracle_counts(con, f"g.sample_id IN ({ids})")
    j = ref.join(got, how="outer")
    assert not j.isna()[["AC", "AN", "ac", "an"]].any().any()
    assert (j["AC"] == j["ac"]).all() and (j["AN"] == j["an"]).all()


@pytest.mark.realdata
@pytest.mark.reftool
def test_oracle_genotypes_match_bcftools_query(real: _Real) -> None:
    con = real.con
    regions = ",".join(f"{c}:{p}-{p}" for c, p in _SPOT_POSITIONS)
    ref = bcftools_genotypes(real.vcf, regions=regions)
    vids = sorted(set(ref["variant_id"]))
    assert len(vids) >= 10  # split multi-allelics
    in_list = ", ".join(f"'{v}'" for v in vids)
    got = con.execute(
        "SELECT variant_id, sample_id, dosage, ploidy, phased FROM genotypes "
        f"WHERE variant_id IN ({in_list})"
    ).df()
    m = ref.merge(
        got, on=["variant_id", "sample_id"], how="outer", suffixes=("_ref", ""), indicator=True
    )
    assert (m["_merge"] == "both").all()
    assert (m["ploidy_ref"].astype(int) == m["ploidy"].astype(int)).all()
    assert (m["dosage_ref"].astype("Int64") == m["dosage"].astype("Int64")).all()
    assert (m["phased_ref"] == m["phased"]).all()
    # the half-calls are really there
    assert (m["gt"] == "0/.").any() and (m["ploidy"] == 1).any()


@pytest.mark.realdata
@pytest.mark.reftool
def test_oracle_matches_plink2_freq(real: _Real) -> None:
    require_tool("plink2")
    con = real.con
    d = real.dir
    sex = con.execute(
        "SELECT sample_id AS \"#IID\", CASE sex WHEN 'M' THEN 1 WHEN 'F' THEN 2 END AS SEX "
        "FROM samples"
    ).df()
    sex.to_csv(d / "sex.tsv", sep="\t", index=False)
    got = _oracle_counts(con)
    got["par"] = got.index.str.startswith("X:") & (
        got.index.str.split(":").str[1].astype(int).map(lambda p: p < 2699520 or p > 154931043)
    )

    # with sex and PAR split, plink2 agrees everywhere (0/. on male chrX = haploid)
    ref = plink2_freq(real.vcf, sex_file=d / "sex.tsv", split_par="b37")
    j = ref.join(got, how="inner")
    assert len(j) == len(got) == len(ref)
    assert (j["ALT_CTS"] == j["ac"]).all() and (j["OBS_CT"] == j["an"]).all()

    # documented discrepancy: without sex, plink2 counts chrX half-calls of males twice
    n_m = con.execute("SELECT count(*) FROM samples WHERE sex = 'M'").fetchone()[0]  # type: ignore[index]
    ref = plink2_freq(real.vcf, regions="X")
    j = ref.join(got, how="inner")
    nonpar = j[~j["par"]]
    assert ((nonpar["OBS_CT"] - nonpar["an"]) == n_m).all()
    assert (j.loc[j["par"], "OBS_CT"] == j.loc[j["par"], "an"]).all()


@pytest.mark.realdata
@pytest.mark.reftool
def test_oracle_matches_plink2_loop_cats(real: _Real) -> None:
    require_tool("plink2")
    con = real.con
    d = real.dir
    pops = con.execute('SELECT sample_id AS "#IID", population FROM samples').df()
    pops.to_csv(d / "pops.tsv", sep="\t", index=False)
    ref = plink2_freq(
        real.vcf,
        loop_cats_file=d / "pops.tsv",
        loop_cats_column="population",
        regions="22",
    )
    got = (
        con.execute(
            to_pooled_sql(
                "SELECT s.population AS category, g.variant_id, allele_count(g.dosage) AS ac, "
                "allele_number(g.dosage) AS an FROM genotypes g JOIN samples s USING (sample_id) "
                "WHERE g.chrom = '22' GROUP BY s.population, g.variant_id"
            )
        )
        .df()
        .set_index(["category", "variant_id"])
    )
    j = ref.join(got, how="outer")
    assert len(j) == len(got) and not j[["ALT_CTS", "ac"]].isna().any().any()
    assert (j["ALT_CTS"] == j["ac"]).all() and (j["OBS_CT"] == j["an"]).all()


# ------------------------------------------------------------------------------------------
# slow: full 1126 build and the query corpus
# ------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
def test_corpus_runs_on_full_pooled_oracle(tmp_path: Path) -> None:
    from corpus import CORPUS, check_corpus
    from fixtures_data import make_phenotypes_1126

    base = require_shared_data("1kg_phase3_subset_1126")
    pheno = make_phenotypes_1126(tmp_path / "phenotypes.csv", base / "samples_1126.tsv")
    con = build_pooled(
        tmp_path / "pooled.duckdb",
        base / "1kg_phase3_subset_1126.vcf.gz",
        base / "samples_1126.tsv",
        {"phenotypes": pheno},
    )
    assert con.execute("SELECT count(*) FROM genotypes").fetchone() == (1126 * 26250,)
    assert con.execute("SELECT count(*), count(ldl) > 1000 FROM phenotypes").fetchone() == (
        1126,
        True,
    )
    counts = check_corpus(con)
    assert len(counts) == len(CORPUS) >= 45
