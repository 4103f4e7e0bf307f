"""Rule 2 under MPC and HE: the people who make a sum non-zero are counted federation-wide, as
secret count lanes tested with the group's own count, so a weighted aggregate and the grouping it
means get the same decision (DESIGN.md: "two queries that mean the same get the same
decision"), and no node's local count decides alone.

Oracle: DuckDB over the pooled data (which groups have 1..4 smokers in the whole federation).
"""

from __future__ import annotations

import pytest
from conftest import LocalFederation, clone_federation

pytestmark = pytest.mark.realdata

K = 5
COND = "p.smoker = 1 AND p.age >= 60"
WEIGHTED = (f"SELECT s.population, count(CASE WHEN {COND} THEN 1 END) AS smokers "
            "FROM samples s JOIN phenotypes p USING (sample_id) GROUP BY 1")
GROUPED = ("SELECT s.population, count(*) AS smokers FROM samples s JOIN phenotypes p USING (sample_id) "
           f"WHERE {COND} GROUP BY 1")


@pytest.fixture(scope="module")
def fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("rule2_lanes"), min_count=K, gates=False)
    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_weighted_count_and_its_grouping_get_the_same_decision(fed, pooled1126, mode):
    truth = dict(pooled1126.sql(f"SELECT s.population, count(*) FILTER (WHERE {COND}) FROM samples s "
                                "JOIN phenotypes p USING (sample_id) GROUP BY 1").fetchall())
    small = {pop for pop, n in truth.items() if 0 < n < K}
    assert small and any(n >= K for n in truth.values()), "populations with 1-4 and with 5+ older smokers are needed"
    weighted = {r["population"]: r["smokers"] for r in fed.sql(WEIGHTED, combine=mode).to_arrow().to_pylist()}
    grouped = {r["population"]: r["smokers"] for r in fed.sql(GROUPED, combine=mode).to_arrow().to_pylist()}
    # the same populations released, with the pooled values; the small ones withheld by both
    assert {p for p, n in weighted.items() if n} == set(grouped) == {p for p, n in truth.items() if n >= K}
    assert all(truth[p] == n for p, n in weighted.items())
    assert not small & set(weighted)


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_one_person_weighted_inside_a_sum_is_withheld_not_released(fed, pooled1126, mode):
    age, bmi = pooled1126.sql("SELECT p.age, p.bmi FROM phenotypes p WHERE p.bmi IS NOT NULL AND p.ldl IS NOT NULL "
                              "GROUP BY 1, 2 HAVING count(*) = 1 ORDER BY 1, 2").fetchall()[0]
    res = fed.sql(f"SELECT count(*) AS n, sum(p.ldl * CAST(p.age = {age} AND p.bmi = {bmi} AS INT)) AS x FROM phenotypes p",
                  combine=mode)
    assert res.num_rows == 0 and res.suppressed == 1  # withheld federation-wide, nothing about it released


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_ordinary_sums_are_released_exactly(fed, pooled1126, mode):
    truth = dict(pooled1126.sql("SELECT s.sex, sum(p.age) FROM samples s JOIN phenotypes p USING (sample_id) GROUP BY 1").fetchall())
    got = {r["sex"]: r["a"] for r in fed.sql("SELECT s.sex, sum(p.age) AS a FROM samples s JOIN phenotypes p USING (sample_id) "
                                             "GROUP BY 1", combine=mode).to_arrow().to_pylist()}
    assert got == truth
