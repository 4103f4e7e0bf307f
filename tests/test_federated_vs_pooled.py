"""Federated == pooled: every corpus query over three real nodes equals DuckDB over the pooled data.

The pooled oracle is built independently of genofed's ingest (scikit-allel reads the VCF; see
tests/oracle.py). Counts must be exact; floats equal to 1e-9 relative.
"""

from __future__ import annotations

import math

import pytest
from corpus import CORPUS, CORPUS_REFUSED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import to_pooled_sql

import genofed
from genofed.engine import errors

REL = 1e-9


def _norm(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if hasattr(v, "is_integer") or isinstance(v, int):
        return float(v)
    try:
        return float(v)  # Decimal
    except (TypeError, ValueError):
        return v


def _key(row):
    return tuple((0, "") if v is None else (1, v) if isinstance(v, str) else (2, v) for v in row)


def assert_same(fed_rows, pooled_rows, ordered: bool, label: str, rel: float = REL, abs_tol: float = 1e-9):
    fed_rows = [tuple(_norm(v) for v in r) for r in fed_rows]
    pooled_rows = [tuple(_norm(v) for v in r) for r in pooled_rows]
    assert len(fed_rows) == len(pooled_rows), f"{label}: {len(fed_rows)} rows federated vs {len(pooled_rows)} pooled"
    if not ordered:
        fed_rows, pooled_rows = sorted(fed_rows, key=_key), sorted(pooled_rows, key=_key)
    for i, (a, b) in enumerate(zip(fed_rows, pooled_rows)):
        assert len(a) == len(b), label
        for x, y in zip(a, b):
            if isinstance(x, float) and isinstance(y, float):
                if math.isnan(x) or math.isnan(y):
                    assert math.isnan(x) and math.isnan(y), f"{label} row {i}: {x} vs {y}"
                else:
                    assert math.isclose(x, y, rel_tol=rel, abs_tol=abs_tol), f"{label} row {i}: {x!r} vs {y!r}"
            else:
                assert x == y, f"{label} row {i}: {x!r} vs {y!r}"


def run_both(fed, pooled, sql):
    got = fed.sql(sql).to_arrow()
    fed_rows = [tuple(r.values()) for r in got.to_pylist()]
    pooled_rows = pooled.sql(to_pooled_sql(sql)).fetchall()
    return fed_rows, pooled_rows


@pytest.mark.parametrize("qid, sql", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_federated_equals_pooled(fed1126, pooled1126, qid, sql):
    fed_rows, pooled_rows = run_both(fed1126, pooled1126, sql)
    assert_same(fed_rows, pooled_rows, "order by" in sql.lower(), qid)


@pytest.mark.parametrize("qid, sql, err", CORPUS_REFUSED, ids=[c[0] for c in CORPUS_REFUSED])
def test_corpus_refused(fed1126, qid, sql, err):
    with pytest.raises(getattr(errors, err)):
        fed1126.sql(sql)


def test_corpus_size():
    assert len(CORPUS) >= 40


# -- property-based: generated aggregate queries --------------------------------------------
NUMERIC = ["p.age", "p.bmi", "p.ldl", "s.outcome", "s.status", "p.smoker"]
AGGS = [
    "count(*)", "count({x})", "sum({x})", "avg({x})", "var_samp({x})", "var_pop({x})",
    "stddev_samp({x})", "stddev_pop({x})", "corr({x}, {y})", "covar_pop({x}, {y})",
    "covar_samp({x}, {y})", "regr_slope({x}, {y})", "regr_intercept({x}, {y})", "regr_r2({x}, {y})",
    "count(DISTINCT s.sample_id)", "avg({x}) * 2 + sum({y})",
]
KEYS = ["s.population", "s.sex", "s.status", "p.smoker", "CASE WHEN p.age >= 50 THEN 'old' ELSE 'young' END", "floor(s.outcome)"]
PREDICATES = ["p.age > 40", "s.sex = 'F'", "p.bmi IS NOT NULL", "s.population IN ('GBR', 'YRI', 'CHB', 'PEL')", "s.outcome BETWEEN 9 AND 11", "p.ldl < 150 OR p.smoker = 1"]


@st.composite
def aggregate_queries(draw):
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
    aggs = draw(st.lists(st.sampled_from(AGGS), min_size=1, max_size=3))
    cols = [a.format(x=draw(st.sampled_from(NUMERIC)), y=draw(st.sampled_from(NUMERIC))) for a in aggs]
    preds = draw(st.lists(st.sampled_from(PREDICATES), max_size=2, unique=True))
    sql = f"SELECT {', '.join(keys + cols)} FROM samples s JOIN phenotypes p USING (sample_id)"
    if preds:
        sql += " WHERE " + " AND ".join(preds)
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
        if draw(st.booleans()):
            sql += " HAVING count(*) >= 3"
    return sql


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=aggregate_queries())
def test_generated_queries_federated_equals_pooled(fed1126, pooled1126, sql):
    fed_rows, pooled_rows = run_both(fed1126, pooled1126, sql)
    assert_same(fed_rows, pooled_rows, False, sql)


GENO_KEYS = ["s.population", "s.sex", "g.variant_id", "floor(g.pos / 1e6)"]
GENO_AGGS = ["allele_count(g.dosage)", "allele_number(g.dosage)", "allele_freq(g.dosage)", "het_count(g.dosage)",
             "hom_alt_count(g.dosage)", "call_rate(g.dosage)", "count(*)", "avg(g.dosage)", "count(DISTINCT s.sample_id)"]
REGIONS = ["g.chrom = '22'", "g.chrom = 'X' AND g.pos < 60000000", "g.chrom = '1' AND g.pos BETWEEN 1000000 AND 50000000"]


@st.composite
def genotype_queries(draw):
    keys = draw(st.lists(st.sampled_from(GENO_KEYS), min_size=1, max_size=2, unique=True))
    aggs = draw(st.lists(st.sampled_from(GENO_AGGS), min_size=1, max_size=3, unique=True))
    where = [draw(st.sampled_from(REGIONS))]
    if draw(st.booleans()):
        where.append(draw(st.sampled_from(["s.sex = 'M'", "s.status = 1", "s.population LIKE 'C%'"])))
    return (f"SELECT {', '.join(keys + aggs)} FROM genotypes g JOIN samples s USING (sample_id) "
            f"WHERE {' AND '.join(where)} GROUP BY {', '.join(keys)}")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=genotype_queries())
def test_generated_genotype_queries_federated_equals_pooled(fed1126, pooled1126, sql):
    fed_rows, pooled_rows = run_both(fed1126, pooled1126, sql)
    assert_same(fed_rows, pooled_rows, False, sql)


def test_result_formats(fed1126):
    r = fed1126.sql("SELECT population, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")
    assert r.to_pandas()["n"].sum() == 1126
    assert r.to_polars()["n"].sum() == 1126
    assert r.provenance.nodes == ["biobank_A", "biobank_B", "biobank_C"]
    assert r.provenance.combine == "plain"
    assert isinstance(genofed.GenofedError, type)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT chrom, count(*) AS n, count(rsid) AS with_rsid FROM variants GROUP BY chrom ORDER BY chrom",
        "SELECT length(alt) > length(ref) AS insertion, count(*) FROM variants WHERE chrom = '22' GROUP BY 1 ORDER BY 1",
        "SELECT count(*) AS multiallelic_rows FROM variants v WHERE v.pos IN (22085620, 23016531, 38398934, 48980315)",
    ],
)
def test_variants_only_queries_count_each_site_once(fed1126, pooled1126, sql):
    """Every node holds the same site list (checked by digest), so the federation's `variants` is that list, once."""
    fed_rows, pooled_rows = run_both(fed1126, pooled1126, sql)
    assert_same(fed_rows, pooled_rows, True, sql)
    assert len(set(fed1126.catalog().variants_digest.values())) == 1
    for mode in ("mpc", "he"):  # one node answers; still through the secure combine
        secure = [tuple(r.values()) for r in fed1126.sql(sql, combine=mode).to_arrow().to_pylist()]
        assert_same(secure, pooled_rows, True, f"{sql} [{mode}]")
