"""Three nodes over the 1000 Genomes ancestry SNPs reproduce the official AC and per-super-population AF."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest
from conftest import LocalFederation, need, need_tool, shared_data

from genofed.connectors.federation import init_federation

POPS = ["EUR", "EAS", "AFR", "AMR", "SAS"]


@pytest.fixture(scope="module", params=["kidd", "seldin"])
def aisnp_fed(request, tmp_path_factory):
    vcf = need(shared_data() / "1kg_2504_aisnps" / f"{request.param}.aisnp.1kg.vcf.gz")
    panel = need(shared_data() / "panel" / "1kg_phase3_2504_panel.tsv")
    root = tmp_path_factory.mktemp(f"aisnp_{request.param}")
    init_federation(root, vcf, panel, None, n_nodes=3, min_count=1)
    lf = LocalFederation(root)
    yield vcf, lf.fed
    lf.close()


def official(vcf) -> pd.DataFrame:
    need_tool("bcftools")
    fmt = "%CHROM:%POS:%REF:%ALT\\t%INFO/AC\\t" + "\\t".join(f"%INFO/{p}_AF" for p in POPS) + "\\n"
    out = subprocess.run(
        f"bcftools norm -m- -Ou {vcf} | bcftools query -f '{fmt}' -",
        shell=True, check=True, capture_output=True, text=True,
    ).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()]
    df = pd.DataFrame(rows, columns=["variant_id", "AC", *POPS]).set_index("variant_id")
    df["AC"] = df["AC"].astype(int)
    for p in POPS:
        df[p] = df[p].astype(float)
    return df


def test_official_ac_and_super_pop_af(aisnp_fed):
    vcf, fed = aisnp_fed
    ref = official(vcf)
    assert len(fed.nodes) == 3
    ac = fed.sql(
        "SELECT g.variant_id, allele_count(g.dosage) AS ac FROM genotypes g GROUP BY g.variant_id"
    ).to_pandas().set_index("variant_id")
    assert set(ac.index) == set(ref.index)
    assert (ac.loc[ref.index, "ac"].to_numpy() == ref["AC"].to_numpy()).all()
    af = fed.sql(
        "SELECT g.variant_id, s.super_pop, allele_freq(g.dosage) AS af "
        "FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL"
    ).to_pandas().pivot(index="variant_id", columns="super_pop", values="af")
    for p in POPS:
        got = af.loc[ref.index, p].round(4).to_numpy()
        assert (abs(got - ref[p].to_numpy()) < 5e-5 + 1e-12).all(), p
