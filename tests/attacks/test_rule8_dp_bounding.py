"""Rule 8: a DP release's sensitivity comes from what one person can contribute, not from how the
query is written. Issue 18 finding 6: a self-join of genotypes put ~900 rows of one person into a
count whose noise was calibrated for 30, and one person's status was right 10 times out of 10.

Attacks, each under plain, mpc and he: a self-join of genotypes on sample_id (each person's rows
squared: the node now multiplies per table occurrence), a join of two genotype copies on
variant_id (other people's rows inside one person's contribution: refused, no bound holds), a
self-join of a clinical table. Ordinary DP counts keep their accuracy.
"""

from __future__ import annotations

import pytest
from conftest import LocalFederation
from test_dp_federated import _dp_fed

from genofed.engine.errors import DisclosureError, GenofedError

pytestmark = pytest.mark.realdata

MODES = ["plain", "mpc", "he"]
REGION = "g1.chrom = '22' AND g1.pos < 16500000"

@pytest.fixture(scope="module")
def dp(fed_dir_1126, tmp_path_factory):
    root = _dp_fed(fed_dir_1126, tmp_path_factory.mktemp("fed_rule8"), budget_epsilon=1000.0, max_epsilon=10.0)

    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()

def _scale(res) -> float:
    nodes = res.provenance.details["dp"]["nodes"]
    return max(float(n.get("scale", 0.0)) for n in nodes.values())

@pytest.mark.parametrize("mode", MODES)
def test_self_join_on_sample_id_is_charged_per_occurrence(dp, mode):
    one = dp.sql(f"SELECT count(*) AS n FROM genotypes g1 WHERE {REGION}", combine=mode, epsilon=1.0)
    two = dp.sql(f"SELECT count(*) AS n FROM genotypes g1 JOIN genotypes g2 USING (sample_id) WHERE {REGION} "
                 "AND g2.chrom = '22' AND g2.pos < 16500000", combine=mode, epsilon=1.0)
    # the self-join gives each person up to v² rows: its noise must be at least v times larger
    assert _scale(two) >= 5 * _scale(one), (_scale(one), _scale(two))

@pytest.mark.parametrize("mode", MODES)
def test_join_on_variant_id_mixes_people_and_is_refused(dp, mode):
    with pytest.raises(DisclosureError) as e:
        dp.sql(f"SELECT count(*) AS n FROM genotypes g1 JOIN genotypes g2 ON g1.variant_id = g2.variant_id WHERE {REGION}",
               combine=mode, epsilon=1.0)
    assert e.value.rule == "dp_unsupported"

@pytest.mark.parametrize("mode", MODES)
def test_clinical_self_join_is_refused_unless_on_sample_id(dp, mode):
    with pytest.raises(GenofedError):
        dp.sql("SELECT count(*) AS n FROM phenotypes p1 JOIN phenotypes p2 ON p1.age = p2.age", combine=mode, epsilon=1.0)

def test_ordinary_dp_count_is_answered(dp, pooled1126):
    truth = pooled1126.sql("SELECT count(*) FROM samples s JOIN phenotypes p USING (sample_id) WHERE p.smoker = 1").fetchall()[0][0]
    res = dp.sql("SELECT count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) WHERE p.smoker = 1", epsilon=1.0)
    got = res.to_pandas()["n"].iloc[0]
    assert abs(got - truth) < 60
