"""Fixtures shared by the attack tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pooled_chr22(tmp_path_factory, data_1126, phenotypes_1126):
    """The pooled oracle (``tests/oracle.py``: DuckDB, genotypes read with scikit-allel) over all
    1126 samples, the ``phenotypes`` table and the genotypes of chromosome 22 (the region the
    attack tests query), plus ``split(sample_id, node)`` from the suggested three-node split.
    Built once per run (a couple of seconds); tests only read it."""
    from cyvcf2 import VCF
    from oracle import build_pooled

    path = tmp_path_factory.mktemp("chr22") / "chr22.vcf"
    vcf = VCF(str(data_1126["vcf"]))
    with open(path, "w") as f:
        f.write(vcf.raw_header)
        for rec in vcf("22"):
            f.write(str(rec))
    vcf.close()
    con = build_pooled(None, path, data_1126["samples"], {"phenotypes": phenotypes_1126})
    con.execute(f"CREATE TABLE split AS SELECT \"sample.id\" AS sample_id, node FROM read_csv('{data_1126['split']}', delim='\t', header=true)")
    return con
