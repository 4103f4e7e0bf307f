"""Differencing attacks, and the node's defence: the linear audit of person sets per statistic
(privacy/setaudit.py).

Each attack is run twice on the same 3-node federation (1000 Genomes subset, min count 5): with
the defence switched off (``differencing = false``) it recovers a protected value, checked against
the pooled data; with the default policy the node refuses the query that would complete it, with
rule ``differencing``. Every test uses its own population so earlier tests' history does not
decide the outcome.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import LocalFederation, clone_federation

from genofed.engine.errors import GenofedError

K = 5


@pytest.fixture(scope="module", params=[False, True], ids=["defence_off", "default_policy"])
def fed(request, fed_dir_1126, tmp_path_factory):
    on = request.param
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp(f"fed_diff_{on}"), min_count=K, combine="plain", differencing=on)
    lf = LocalFederation(root)
    try:
        yield on, lf.fed
    finally:
        lf.close()


def _refused(f, sql: str, rules: tuple[str, ...] = ("differencing", "linear_audit")) -> bool:
    try:
        f.sql(sql)
    except GenofedError as e:
        assert getattr(e, "rule", None) in rules, str(e)
        return True
    return False


def _one(f, sql: str):
    return f.sql(sql).to_pandas().iloc[0]


def _population(pooled, rank: int) -> str:
    """A population with at least 20 samples (rank-th largest), so each test has its own."""
    pops = pooled.sql("SELECT population, count(*) n FROM samples GROUP BY 1 HAVING n >= 20 ORDER BY n DESC, 1").df()
    return str(pops["population"].iloc[rank])


def test_with_and_without_one_person(fed, pooled1126):
    on, f = fed
    pop = _population(pooled1126, 0)
    target = pooled1126.sql(f"SELECT sample_id, outcome FROM samples WHERE population = '{pop}' ORDER BY sample_id LIMIT 1").df().iloc[0]
    q_all = f"SELECT count(*) AS n, sum(s.outcome) AS total FROM samples s WHERE s.population = '{pop}'"
    # naming the person is refused whatever the history (rule 1: identifiers are join keys only)
    assert _refused(f, q_all + f" AND s.sample_id <> '{target['sample_id']}'", ("identifier",))
    # leaving them out by a value only they have is the same question: the audit refuses it
    q_without = q_all + f" AND s.outcome <> {float(target['outcome'])!r}"
    a = _one(f, q_all)
    if not on:
        b = _one(f, q_without)
        assert a["n"] - b["n"] == 1
        assert a["total"] - b["total"] == pytest.approx(target["outcome"], abs=1e-9)  # the person's outcome
    else:
        assert _refused(f, q_without)


def test_a_and_b_from_counts(fed, pooled1126):
    """COUNT(A) − COUNT(A ∧ ¬B) recovers A ∧ B: here one person, singled out by age."""
    on, f = fed
    pop = _population(pooled1126, 1)
    ages = pooled1126.sql(f"SELECT p.age, count(*) n, any_value(s.outcome) o FROM samples s JOIN phenotypes p USING (sample_id) "
                          f"WHERE s.population = '{pop}' GROUP BY 1 HAVING n = 1 ORDER BY 1").df()
    age, outcome = int(ages["age"].iloc[0]), float(ages["o"].iloc[0])
    base = f"SELECT count(*) AS n, sum(s.outcome) AS total FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = '{pop}'"
    a = _one(f, base)
    if not on:
        b = _one(f, base + f" AND NOT (p.age = {age})")
        assert a["n"] - b["n"] == 1 and a["total"] - b["total"] == pytest.approx(outcome, abs=1e-9)
    else:
        assert _refused(f, base + f" AND NOT (p.age = {age})")


def test_near_duplicate_predicates(fed, pooled1126):
    """age > 40.01 drops the one person aged 40 from age >= 40: the difference is that person.
    age > 39.99 selects the same people as age >= 40 (ages are whole years): it reveals nothing new
    and is answered (under differential privacy it gets the same cached noisy answer, see
    test_dp_federated.py)."""
    on, f = fed
    pop = _population(pooled1126, 2)
    ages = pooled1126.sql(f"SELECT p.age, count(*) n, any_value(s.outcome) o FROM samples s JOIN phenotypes p USING (sample_id) "
                          f"WHERE s.population = '{pop}' GROUP BY 1 HAVING n = 1 ORDER BY 1").df()
    age, outcome = int(ages["age"].iloc[0]), float(ages["o"].iloc[0])
    base = f"SELECT count(*) AS n, sum(s.outcome) AS total FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = '{pop}' AND "
    a = _one(f, base + f"p.age >= {age}")
    same = _one(f, base + f"p.age > {age - 0.01}")
    assert same["n"] == a["n"] and same["total"] == pytest.approx(a["total"])
    if not on:
        b = _one(f, base + f"p.age > {age + 0.01}")
        assert a["n"] - b["n"] == 1 and a["total"] - b["total"] == pytest.approx(outcome, abs=1e-9)
    else:
        assert _refused(f, base + f"p.age > {age + 0.01}")
        assert not _refused(f, base + f"p.age >= {age}")  # the same question again is answered


def test_totals_minus_margins(fed, pooled1126, data_1126):
    """A total, then the same people grouped: the total minus the released cells is the
    suppressed cell."""
    on, f = fed
    used = {_population(pooled1126, r) for r in (0, 1, 2, 4, 5)}
    split = pd.read_csv(data_1126["split"], sep="\t").rename(columns={"sample.id": "sample_id"})[["sample_id", "node"]]
    pooled1126.register("_split", split)
    per_node = pooled1126.sql("SELECT s.population, s.sex, p.smoker, n.node, count(*) n FROM samples s JOIN phenotypes p USING (sample_id) "
                              "JOIN _split n USING (sample_id) GROUP BY ALL").df()
    # plain mode suppresses a cell federation-wide when any node holds 1..K-1 of its people
    per_node["small"] = per_node["n"] < K
    hidden_cells = per_node.groupby(["population", "sex", "smoker"])["small"].any().reset_index()
    n_hidden = hidden_cells.groupby("population")["small"].sum()
    pop = sorted(p for p in n_hidden[n_hidden == 1].index if p not in used)[0]  # exactly one hidden cell
    cells = pooled1126.sql(f"SELECT s.sex, p.smoker, count(*) n, sum(s.outcome) t FROM samples s JOIN phenotypes p USING (sample_id) "
                           f"WHERE s.population = '{pop}' GROUP BY ALL").df()
    hide = hidden_cells[(hidden_cells["population"] == pop) & hidden_cells["small"]].iloc[0]
    hidden = cells[(cells["sex"] == hide["sex"]) & (cells["smoker"] == hide["smoker"])].iloc[0]
    total = _one(f, f"SELECT count(*) AS n, sum(s.outcome) AS total FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = '{pop}'")
    grouped = (f"SELECT s.sex, p.smoker, count(*) AS n, sum(s.outcome) AS total FROM samples s JOIN phenotypes p USING (sample_id) "
               f"WHERE s.population = '{pop}' GROUP BY ALL")
    if not on:
        got = f.sql(grouped).to_pandas()
        assert len(got) == len(cells) - 1  # the hidden cell is suppressed...
        assert total["n"] - got["n"].sum() == hidden["n"]  # ...and recovered from the margin
        assert total["total"] - got["total"].sum() == pytest.approx(hidden["t"], abs=1e-9)
    else:
        assert _refused(f, grouped)


def test_counts_of_zero_or_everyone(fed, pooled1126):
    """A group, then the same group with a condition that keeps everyone (or nobody): the same
    people (or none) say nothing about any one person, and are answered; a threshold that leaves
    out exactly one person is refused (DESIGN.md rule 4: decisions on person sets, not spelling)."""
    on, f = fed
    pop = _population(pooled1126, 4)
    lows = [r[0] for r in pooled1126.sql(f"SELECT outcome FROM samples WHERE population = '{pop}' ORDER BY outcome LIMIT 2").fetchall()]
    hi = pooled1126.sql(f"SELECT max(outcome) FROM samples WHERE population = '{pop}'").fetchall()[0][0]
    base = f"SELECT count(*) AS n FROM samples s WHERE s.population = '{pop}'"
    n = _one(f, base)["n"]
    assert _one(f, base + f" AND s.outcome > {lows[0] - 1e-6}")["n"] == n  # everyone: the same set
    assert _one(f, base + f" AND s.outcome > {hi + 1e-6}")["n"] == 0  # nobody
    without_lowest = base + f" AND s.outcome > {(lows[0] + lows[1]) / 2}"
    if not on:
        assert _one(f, without_lowest)["n"] == n - 1
    else:
        assert _refused(f, without_lowest)


def test_ordinary_work_is_not_refused(fed, pooled1126):
    """Different views of large groups pass: regrouping, other aggregates of the same people, a
    population split in two halves of many people each."""
    on, f = fed
    pop = _population(pooled1126, 5)
    q = f"FROM samples s JOIN phenotypes p USING (sample_id) WHERE s.population = '{pop}'"
    f.sql(f"SELECT count(*) AS n {q}")
    f.sql(f"SELECT avg(p.bmi) AS bmi, avg(p.age) AS age {q}")
    f.sql(f"SELECT s.sex, count(*) AS n {q} GROUP BY 1")
    f.sql(f"SELECT count(*) AS n {q} AND p.age < 50")
    f.sql(f"SELECT count(*) AS n {q} AND p.age >= 50")
