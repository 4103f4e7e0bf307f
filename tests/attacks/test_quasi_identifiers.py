"""Attack: learning one person's value by grouping on quasi-identifiers (the Massachusetts
case: ZIP + birth date + sex single out most people; here population + sex + age + smoker).

With the minimum count switched off (min_count = 1) the attack works: groups of one sample
release that sample's outcome. With the default policy (5) every released group has at least 5
samples at the federation level, so results grouped by quasi-identifiers are k-anonymous with
k = min_count, and the singled-out values are withheld."""

from __future__ import annotations

import pytest
from conftest import LocalFederation, clone_federation

QUERY = ("SELECT s.population, s.sex, p.age, p.smoker, count(*) AS n, avg(s.outcome) AS outcome "
         "FROM samples s JOIN phenotypes p USING (sample_id) GROUP BY ALL")


@pytest.fixture(scope="module", params=[1, 5], ids=["defence_off", "default_policy"])
def fed(request, fed_dir_1126, tmp_path_factory):
    k = request.param
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp(f"fed_qi_{k}"), min_count=k, combine="plain")
    lf = LocalFederation(root)
    try:
        yield k, lf.fed
    finally:
        lf.close()


def test_grouping_by_quasi_identifiers(fed, pooled1126):
    k, f = fed
    res = f.sql(QUERY)
    got = res.to_pandas()
    # the truth, from the pooled data: how many people are unique on these quasi-identifiers
    pooled = pooled1126.sql(QUERY.replace("avg(s.outcome)", "any_value(s.outcome)")).df()
    unique = pooled[pooled["n"] == 1]
    assert len(unique) > 100  # most combinations single someone out
    if k == 1:
        # defence off: every unique person's outcome is released exactly
        singles = got[got["n"] == 1]
        assert len(singles) == len(unique)
        merged = singles.merge(unique, on=["population", "sex", "age", "smoker"], suffixes=("", "_true"))
        assert len(merged) == len(unique) and (merged["outcome"] == merged["outcome_true"]).all()
    else:
        # default policy: k-anonymous release; the singled-out groups are withheld, and the
        # provenance counts them without naming them (rule 3: not even their keys leave)
        assert got.empty or (got["n"] >= k).all()
        assert res.suppressed >= len(unique)
        assert isinstance(res.provenance.suppressed, int)
