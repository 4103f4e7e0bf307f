"""The count kernel and the row-wise DuckDB path give identical partials (both are oracles of each other)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import P1126, need, shared_data

from genofed.connectors.ingest import ingest
from genofed.engine.backends import genokernel
from genofed.engine.backends.duckdb import DuckDBBackend
from genofed.engine.fragment import validate_fragment
from genofed.engine.planner import plan_query
from genofed.engine.schema import Catalog
from genofed.engine.sqlcheck import parse
from genofed.genomics.store import NodeStore

QUERIES = [
    "SELECT s.population, g.variant_id, allele_freq(g.dosage), count(DISTINCT s.sample_id), het_count(g.dosage), hom_alt_count(g.dosage), call_rate(g.dosage), sum(g.dosage), avg(g.dosage), var_samp(g.dosage) FROM genotypes g JOIN samples s USING (sample_id) WHERE g.chrom = 'X' GROUP BY 1, 2",
    "SELECT allele_count(g.dosage), het_count(g.dosage), hom_alt_count(g.dosage), count(*) FROM genotypes g WHERE g.chrom = 'nope'",
    "SELECT s.sex, floor(g.pos / 1e7), allele_count(g.dosage), count(*) FROM genotypes g JOIN samples s ON s.sample_id = g.sample_id WHERE g.chrom = '1' AND s.status = 1 GROUP BY 1, 2",
    "SELECT g.chrom, allele_freq(g.dosage), call_rate(g.dosage) FROM genotypes g GROUP BY 1",
    "SELECT v.filter, s.population, allele_number(g.dosage) FROM genotypes g JOIN variants v USING (variant_id) JOIN samples s USING (sample_id) WHERE v.chrom IN ('21', '22') AND s.sex = 'F' GROUP BY ALL",
    "SELECT allele_freq(g.dosage) FROM genotypes g JOIN samples s USING (sample_id) WHERE s.population = 'nowhere'",
    "SELECT g.variant_id, allele_count(g.dosage) FROM genotypes g JOIN samples s USING (sample_id) WHERE s.population = 'nowhere' GROUP BY 1",
    "SELECT s.population, allele_freq(g.dosage), het_count(g.dosage), hom_alt_count(g.dosage) FROM genotypes g JOIN samples s USING (sample_id) WHERE g.pos % 3 = 0 AND g.chrom IN ('2', 'X') GROUP BY 1",
]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    d = shared_data() / P1126
    store = tmp_path_factory.mktemp("kstore") / "st"
    ingest(store, need(d / f"{P1126}.vcf.gz"), need(d / "samples_1126.tsv"))
    b = DuckDBBackend(NodeStore(store))
    yield b
    b.close()


def _sorted(t: pa.Table) -> pa.Table:
    keys = [c for c in t.column_names if c.startswith("_k")]
    return t.sort_by([(k, "ascending") for k in keys]) if keys else t


@pytest.mark.parametrize("sql", QUERIES)
def test_kernel_equals_rowwise(backend, sql, monkeypatch):
    cat = Catalog.merge({"n": backend.catalog()})
    frag = validate_fragment(plan_query(parse(sql), cat).fragment_sql, cat)
    fast = genokernel.try_kernel(backend, frag)
    assert fast is not None, "this shape should use the kernel"
    monkeypatch.setattr(genokernel, "try_kernel", lambda *a: None)
    slow = backend.execute(frag)
    assert fast.column_names == slow.column_names
    assert fast.num_rows == slow.num_rows
    f, s = _sorted(fast), _sorted(slow)
    for c in slow.column_names:
        if c.startswith("_k"):
            assert f.column(c).to_pylist() == s.column(c).to_pylist(), c
        else:
            assert f.column(c).cast(pa.float64()).to_pylist() == s.column(c).cast(pa.float64()).to_pylist(), c


def test_non_kernel_shapes_fall_back(backend):
    cat = Catalog.merge({"n": backend.catalog()})
    for sql in [
        "SELECT g.dosage, count(*) FROM genotypes g WHERE g.chrom = '22' GROUP BY 1",
        "SELECT avg(s.outcome) FROM genotypes g JOIN samples s USING (sample_id) WHERE g.dosage = 2 AND g.chrom = '22'",
    ]:
        frag = validate_fragment(plan_query(parse(sql), cat).fragment_sql, cat)
        assert genokernel.try_kernel(backend, frag) is None


def test_plane_reader_rows_equal_full_read(backend):
    import numpy as np

    reader = backend.store.planes
    full = np.asarray(reader)
    rng = np.random.default_rng(3)
    rows = rng.choice(len(reader), size=500, replace=True)
    assert np.array_equal(reader[rows], full[rows])
    assert np.array_equal(reader[10:20], full[10:20])
    some = np.unique(rows)
    assert np.array_equal(reader.read_planes_rows(some, [0, 3]), full[some][:, [0, 3]].transpose(1, 0, 2))
