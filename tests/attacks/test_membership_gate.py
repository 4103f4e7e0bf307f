"""The node's re-identification gate against the membership attacks, end to end.

Frequencies: a researcher releases per-variant allele frequencies of a cohort (the GBR samples)
and runs the Homer/Sankararaman LR test with the genotypes of people they hold (members: GBR;
non-members: held-out CEU) against a public reference (the other CEU samples). With the gate off
the attack detects members at FPR 0.001; with the default cap (power 0.10) the node refuses the
release, answers a small one with the score in provenance, and counts variants cumulatively.

Beacon: presence questions on rare alleles are what the Shringarpure-Bustamante attack needs;
with the budget off they are answered, with the default budget the rare one is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LocalFederation, clone_federation

from genofed.engine.errors import GenofedError
from genofed.privacy.reid import analytic_power, max_variants, membership_power

FREQ = ("SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an FROM genotypes g "
        "JOIN samples s USING (sample_id) WHERE s.population = 'GBR' AND g.chrom = '{chrom}' {extra} GROUP BY 1")


@pytest.fixture(scope="module", params=[False, True], ids=["gate_off", "default_policy"])
def fed(request, fed_dir_1126, tmp_path_factory):
    on = request.param
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp(f"fed_gate_{on}"), min_count=5, combine="plain")
    if not on:
        import tomllib

        import tomli_w

        from genofed.connectors.federation import FederationConfig

        for n in FederationConfig.load(root).nodes:
            p = root / n.config
            node = tomllib.loads(p.read_text())
            node["risk"] = {"max_membership_power": 1.0, "beacon_cap": 1.0}
            p.write_text(tomli_w.dumps(node))
    lf = LocalFederation(root)
    try:
        yield on, lf.fed
    finally:
        lf.close()


def _dosages(pooled, pops: list[str], variants: list[str]) -> np.ndarray:
    pooled.register("_v", __import__("pandas").DataFrame({"variant_id": variants, "j": range(len(variants))}))
    df = pooled.sql("SELECT g.sample_id, v.j, g.dosage FROM genotypes g JOIN _v v USING (variant_id) JOIN samples s USING (sample_id) "
                    f"WHERE s.population IN ({', '.join(repr(p) for p in pops)}) ORDER BY 1").df()
    ids = {s: i for i, s in enumerate(df["sample_id"].unique())}
    out = np.full((len(ids), len(variants)), np.nan)
    out[df["sample_id"].map(ids).to_numpy(dtype=np.int64), df["j"].to_numpy(dtype=np.int64)] = df["dosage"].to_numpy(dtype=float, na_value=np.nan)
    return out


def test_frequency_release(fed, pooled1126):
    on, f = fed
    big = FREQ.format(chrom="22", extra="").replace("g.chrom = '22'", "g.chrom <> 'X'")  # every autosome
    if not on:
        res = f.sql(big).to_pandas()
        res = res[(res["an"] > 0)]
        variants = res["variant_id"].tolist()
        p_pool = (res["ac"] / res["an"]).to_numpy()
        members = _dosages(pooled1126, ["GBR"], variants)
        ceu = _dosages(pooled1126, ["CEU"], variants)  # the subset's other Europeans: a public reference and held-out people
        reference, non_members = ceu[:60], ceu[60:]
        p_ref = np.nanmean(reference, axis=0) / 2
        keep = ~(((p_ref == 0) & (p_pool == 0)) | ((p_ref == 1) & (p_pool == 1)))  # informative sites
        est = membership_power(members[:, keep], p_pool[keep], p_ref[keep], non_members=non_members[:, keep], fpr=0.001,
                               n_pool=len(members))
        assert est.power > 0.5, est  # the attack detects most GBR members from their frequencies
    else:
        with pytest.raises(GenofedError, match="membership") as e:
            f.sql(big)
        assert getattr(e.value, "rule", "membership_risk") == "membership_risk"
        assert "GBR" not in str(e.value)
        # a small release passes, and carries its score; each node's cohort is its own GBR samples
        n_local = min(int(pooled1126.sql("SELECT count(*) FROM samples WHERE population = 'GBR'").fetchall()[0][0] / 3) - 8, 20)
        m_ok = max_variants(n_local) // 2
        pos = pooled1126.sql(f"SELECT pos FROM variants WHERE chrom = '21' ORDER BY pos LIMIT 1 OFFSET {m_ok}").fetchall()[0][0]
        small = f.sql(FREQ.format(chrom="21", extra=f"AND g.pos < {pos}"))
        scores = small.provenance.details["membership_risk"]
        assert set(scores) == {"biobank_A", "biobank_B", "biobank_C"}
        assert all(s["power"] <= 0.10 and s["variants"] <= m_ok for s in scores.values())
        assert all(s["power"] == pytest.approx(analytic_power(s["variants"], 30, None, 0.001), abs=0.2) for s in scores.values())
        # asking for more variants of the same cohort, a slice at a time, is counted cumulatively
        with pytest.raises(GenofedError, match="membership"):
            for offset in range(1, 40):
                lo = pooled1126.sql(f"SELECT pos FROM variants WHERE chrom = '21' ORDER BY pos LIMIT 1 OFFSET {m_ok * offset}").fetchall()[0][0]
                hi = pooled1126.sql(f"SELECT pos FROM variants WHERE chrom = '21' ORDER BY pos LIMIT 1 OFFSET {m_ok * (offset + 1)}").fetchall()[0][0]
                f.sql(FREQ.format(chrom="21", extra=f"AND g.pos >= {lo} AND g.pos < {hi}"))


def test_beacon_presence(fed, pooled1126):
    on, f = fed
    rare = pooled1126.sql("SELECT variant_id FROM genotypes WHERE chrom = '20' GROUP BY 1 HAVING sum(dosage) = 1 ORDER BY 1 LIMIT 3").df()
    common = pooled1126.sql("SELECT variant_id FROM genotypes WHERE chrom = '20' GROUP BY 1 "
                            "HAVING avg(dosage) BETWEEN 0.8 AND 1.2 ORDER BY 1 LIMIT 1").df()["variant_id"].iloc[0]
    q = "SELECT count(*) AS carriers FROM genotypes g WHERE g.variant_id = '{v}' AND g.dosage > 0"
    assert f.sql(q.format(v=common)).num_rows == 1  # a common allele: little information, answered
    if not on:
        for v in rare["variant_id"]:  # answered (as suppressed or zero): presence leaks through either
            f.sql(q.format(v=v))
    else:
        with pytest.raises(GenofedError, match="risk budget") as e:
            for v in rare["variant_id"]:
                f.sql(q.format(v=v))
        assert getattr(e.value, "rule", "beacon_risk") == "beacon_risk"
