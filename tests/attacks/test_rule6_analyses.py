"""Attack: table functions with an expression as phenotype or covariate, or with a phenotype
class of a few people (disclosure rule 6, "analyses take declared variables"; issue 18,
finding 3).

``gwas_linear(phenotype => 'CAST(samples.sample_id = ''HG00096'' AS DOUBLE)')`` gave that
person's genotype at every variant (beta, se and n invert to the dosage), and
``assoc_case_control`` revealed the case status of every carrier of a singleton. The researcher
here tries, for ``gwas_linear``, ``gwas_logistic`` and ``assoc_case_control``:

* expression phenotypes: an identifier comparison; ``phenotypes.bmi * CAST(phenotypes.age = 33
  AS DOUBLE)``; a ``CASE`` or boolean on the age and BMI that single one person out; the same as
  an offset on a real phenotype (``ldl + 1000 * CAST(<person> AS DOUBLE)``); ``IF(bmi > 40, 1,
  0)``; a declared identifier column as phenotype;
* expression covariates (an indicator of one person);
* declared variables over a sample filter that leaves a class of a few people: a binary
  phenotype with 1-4 smokers at a node, a single person, the oldest people;
* the one-class trick: ``samples => 'status = 1 OR <one person>'`` with ``status`` as the
  phenotype, for a control and for a case: refusing one and answering the other tells which.

Each under plain, mpc and he (the first ones also with an epsilon): refused with rule
``declared_variable``, ``identifier`` or ``phenotype_classes``, or answered identically whatever
the person's value. Ordinary analyses with declared variables are answered: ``gwas_linear``
with covariates (equal to least squares on the pooled genotypes), on a sub-cohort,
``gwas_logistic`` and ``assoc_case_control`` (their counts equal to the pooled data's).

History gates are off (``gates=False``): rule 6 is decided per request, and this module runs
many analyses over the same region that the membership-risk gate would (rightly) stop.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LocalFederation, clone_federation, set_node_section
from gwas_ref import ols, rel
from rule5_ref import rule5_withheld

from genofed.engine.errors import DisclosureError

pytestmark = pytest.mark.realdata

K = 5
SECURE = ["plain", "mpc", "he"]
REGION = "chrom => '22', stop => 17500000"
WHERE = "chrom = '22' AND pos <= 17500000"


@pytest.fixture(scope="module")
def fed(fed_dir_1126, tmp_path_factory):
    # gates=False: rule 6 is not a history gate (see the module docstring)
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_rule6"), min_count=K, allow_plain=True, gates=False,
                            identifiers=["samples.family_id"])
    set_node_section(root, "dp", {"budget_epsilon": 1000.0, "max_epsilon": 1.0})
    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()


@pytest.fixture(scope="module")
def people(pooled_chr22) -> list[dict]:
    """People at biobank_A singled out by age and BMI in the pooled cohort."""
    return pooled_chr22.sql(
        "WITH u AS (SELECT age, bmi FROM phenotypes WHERE bmi IS NOT NULL GROUP BY ALL HAVING count(*) = 1) "
        "SELECT p.sample_id, p.age, p.bmi, s.status, p.smoker FROM phenotypes p JOIN u USING (age, bmi) JOIN samples s USING (sample_id) "
        "JOIN split USING (sample_id) WHERE split.node = 'biobank_A' ORDER BY p.sample_id").to_arrow_table().to_pylist()


def _who(t: dict) -> str:
    return f"phenotypes.age = {t['age']} AND phenotypes.bmi = {t['bmi']!r}"


def _q(fn: str, phenotype: str, covariates: list[str] | None = None, samples: str | None = None) -> str:
    def s(x: str) -> str:
        return "'" + x.replace("'", "''") + "'"
    args = [f"phenotype => {s(phenotype)}"]
    if covariates:
        args.append("covariates => [" + ", ".join(s(c) for c in covariates) + "]")
    if samples:
        args.append(f"samples => {s(samples)}")
    return f"SELECT * FROM {fn}({', '.join(args)}, {REGION})"


def ask(f, sql: str, combine: str, epsilon: float | None = None) -> tuple:
    try:
        res = f.sql(sql, combine=combine, epsilon=epsilon)
    except DisclosureError as e:
        return ("refused", e.rule)
    t = res.to_arrow()
    return ("answered", t.num_rows, res.provenance.suppressed, str(t.to_pylist()))


# -- expressions as phenotypes and covariates -------------------------------------------------------

def _expression_attacks(t: dict) -> list[tuple[str, str, str]]:
    who = _who(t)
    return [
        ("linear_identifier", _q("gwas_linear", "CAST(samples.sample_id = 'HG00096' AS DOUBLE)"), "identifier"),
        ("linear_weighted_bmi", _q("gwas_linear", "phenotypes.bmi * CAST(phenotypes.age = 33 AS DOUBLE)"), "declared_variable"),
        ("linear_case_person", _q("gwas_linear", f"CASE WHEN {who} THEN 1.0 ELSE 0.0 END"), "declared_variable"),
        ("linear_offset_person", _q("gwas_linear", f"phenotypes.ldl + 1000 * CAST({who} AS DOUBLE)"), "declared_variable"),
        ("linear_covariate_person", _q("gwas_linear", "phenotypes.ldl", covariates=["phenotypes.age", f"CAST({who} AS DOUBLE)"]), "declared_variable"),
        ("linear_declared_identifier", _q("gwas_linear", "samples.family_id"), "identifier"),
        ("logistic_boolean_person", _q("gwas_logistic", who), "declared_variable"),
        ("logistic_identifier", _q("gwas_logistic", "CAST(samples.sample_id = 'HG00096' AS INT)"), "identifier"),
        ("logistic_covariate_person", _q("gwas_logistic", "samples.status", covariates=[f"CAST({who} AS DOUBLE)"]), "declared_variable"),
        ("assoc_boolean_person", _q("assoc_case_control", who), "declared_variable"),
        ("assoc_status_and_person", _q("assoc_case_control", f"samples.status = 1 AND phenotypes.age = {t['age']}"), "declared_variable"),
        ("assoc_rare_threshold", _q("assoc_case_control", "IF(phenotypes.bmi > 40, 1, 0)"), "declared_variable"),
    ]


EXPRESSION_IDS = [a[0] for a in _expression_attacks({"age": 0, "bmi": 0.0})]


@pytest.mark.parametrize("combine, epsilon", [("plain", None), ("mpc", None), ("he", None), ("plain", 1.0)],
                         ids=["plain", "mpc", "he", "plain-dp"])
@pytest.mark.parametrize("case", EXPRESSION_IDS)
def test_expressions_as_analysis_variables_are_refused(fed, people, case, combine, epsilon):
    _, sql, rule = next(a for a in _expression_attacks(people[0]) if a[0] == case)
    seen = ask(fed, sql, combine, epsilon)
    assert seen == ("refused", rule), f"{case} ({combine}, epsilon={epsilon}): {seen[:3]}; query: {sql}"


# -- declared variables over a class of a few people ------------------------------------------------

@pytest.fixture(scope="module")
def smallest_class(pooled_chr22) -> dict[str, int]:
    """Per analysis below, the smallest phenotype class at any node (from the pooled data)."""
    def smallest(pheno: str, where: str) -> int:
        return int(pooled_chr22.sql(f"SELECT min(c) FROM (SELECT split.node, {pheno} AS y, count(*) AS c FROM samples s "
                                    f"JOIN phenotypes p USING (sample_id) JOIN split USING (sample_id) WHERE {where} GROUP BY ALL)").fetchall()[0][0])
    return {"smoker_age_34": smallest("p.smoker", "p.age = 34"), "status_age_79": smallest("s.status", "p.age >= 79")}


@pytest.mark.parametrize("combine", SECURE)
def test_a_binary_class_of_a_few_people_is_refused(fed, smallest_class, combine):
    assert 0 < smallest_class["smoker_age_34"] < K
    sql = _q("assoc_case_control", "phenotypes.smoker", samples="phenotypes.age = 34")
    assert ask(fed, sql, combine) == ("refused", "phenotype_classes"), sql


@pytest.mark.parametrize("combine", SECURE)
def test_a_logistic_phenotype_of_a_few_cases_is_refused(fed, smallest_class, combine):
    assert 0 < smallest_class["status_age_79"] < K
    sql = _q("gwas_logistic", "samples.status", samples="phenotypes.age >= 79")
    assert ask(fed, sql, combine) == ("refused", "phenotype_classes"), sql


@pytest.mark.parametrize("combine", SECURE)
def test_a_continuous_phenotype_of_one_person_is_refused(fed, people, combine):
    sql = _q("gwas_linear", "phenotypes.ldl", samples=_who(people[0]))
    seen = ask(fed, sql, combine)
    assert seen[0] == "refused" and seen[1] in ("phenotype_classes", "glm_params", "min_count"), (seen, sql)


ONE_CLASS = [
    ("assoc_case_control", "samples.status"),
    ("gwas_linear", "samples.status"),
    ("gwas_logistic", "samples.status"),
]


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("fn, pheno", ONE_CLASS, ids=[o[0] for o in ONE_CLASS])
def test_one_class_plus_one_person_does_not_reveal_their_status(fed, people, fn, pheno, combine):
    """Everyone with status 1, plus one person singled out by age and BMI: if that person is a
    control their class has one member (refused), if a case the phenotype has one class at
    their node. The two must look the same."""
    control = next(t for t in people if t["status"] == 0)
    case = next(t for t in people if t["status"] == 1)
    a = ask(fed, _q(fn, pheno, samples=f"samples.status = 1 OR ({_who(control)})"), combine)
    b = ask(fed, _q(fn, pheno, samples=f"samples.status = 1 OR ({_who(case)})"), combine)
    assert a == b, (f"LEAK ({combine}): {fn} over 'status = 1 OR <person>' gives {a[:3]} for a control ({control['sample_id']}), "
                    f"{b[:3]} for a case ({case['sample_id']}): the answer tells the person's status")


# -- ordinary analyses are answered -----------------------------------------------------------------

@pytest.fixture(scope="module")
def region(pooled_chr22) -> dict:
    """Dosages [variants x samples] of the region, the phenotypes, in one sample order."""
    ids = [r[0] for r in pooled_chr22.sql(f"SELECT variant_id FROM variants WHERE {WHERE} ORDER BY pos, variant_id").fetchall()]
    samples = [r[0] for r in pooled_chr22.sql("SELECT sample_id FROM samples ORDER BY sample_id").fetchall()]
    col = {s: i for i, s in enumerate(samples)}
    row = {v: i for i, v in enumerate(ids)}
    g = np.full((len(ids), len(samples)), np.nan)
    for v, s, d in pooled_chr22.sql(f"SELECT variant_id, sample_id, dosage FROM genotypes WHERE {WHERE}").fetchall():
        if d is not None:
            g[row[v], col[s]] = d
    ph = {r[0]: r[1:] for r in pooled_chr22.sql(
        "SELECT s.sample_id, p.ldl, p.age, p.bmi, s.status, s.population, split.node FROM samples s JOIN phenotypes p USING (sample_id) "
        "JOIN split USING (sample_id)").fetchall()}
    arr = np.array([[np.nan if x is None else float(x) for x in ph[s][:4]] for s in samples])
    pop = np.array([ph[s][4] for s in samples])
    return {"ids": ids, "g": g, "ldl": arr[:, 0], "age": arr[:, 1], "bmi": arr[:, 2], "status": arr[:, 3], "pop": pop,
            "node": np.array([ph[s][5] for s in samples])}


def released_ids(region: dict, y: np.ndarray, analysed: np.ndarray, combine: str) -> list[str]:
    """The region's variants rule 5 releases (computed from the pooled genotypes; the rest are
    withheld: tests/attacks/test_rule5_min_mac.py). Asserts the rule leaves some of each."""
    withheld = rule5_withheld(region["g"], y, analysed, region["node"], combine)
    assert withheld.any() and (~withheld).any()
    return [v for v, w in zip(region["ids"], withheld) if not w]


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("subset", [None, "GBR"], ids=["cohort", "gbr"])
def test_gwas_linear_with_declared_covariates_equals_pooled_least_squares(fed, region, subset, combine):
    sql = _q("gwas_linear", "phenotypes.ldl", covariates=["phenotypes.age", "phenotypes.bmi"],
             samples=f"samples.population = '{subset}'" if subset else None)
    try:
        got = fed.sql(sql, combine=combine).to_pandas().set_index("variant_id")
    except DisclosureError as e:
        pytest.fail(f"WRONGFUL REFUSAL ({combine}) by rule {e.rule!r}: {sql}: {e}")
    y, c = region["ldl"], np.column_stack([region["age"], region["bmi"]])
    keep = ~np.isnan(y) & ~np.isnan(c).any(axis=1)
    if subset:
        keep &= region["pop"] == subset
    ref = ols(region["g"][:, keep], y[keep], c[keep])
    # rule 5: the variants with fewer than K carriers of an allele in a cell are withheld, exactly those
    assert sorted(got.index) == sorted(released_ids(region, y, keep, combine))
    assert (got["n"] == keep.sum()).all()
    ok = [i for i, v in enumerate(region["ids"]) if v in got.index and not np.isnan(ref["beta"][i])
          and got.loc[v, "beta"] == got.loc[v, "beta"] and got.loc[v, "beta"] is not None]
    assert len(ok) >= min(5, len(got))  # a GBR-only GWAS at k=5 per node keeps a couple of this region's variants in plain mode
    for k in ("beta", "se"):
        assert rel(got.loc[[region["ids"][i] for i in ok], k].to_numpy(float), ref[k][ok]) < 1e-6, k


@pytest.mark.parametrize("combine", SECURE)
def test_gwas_logistic_and_assoc_case_control_are_answered(fed, region, combine):
    logit = _q("gwas_logistic", "samples.status", covariates=["phenotypes.age", "phenotypes.bmi"])
    assoc = _q("assoc_case_control", "samples.status")
    try:
        lg = fed.sql(logit, combine=combine).to_pandas()
        ac = fed.sql(assoc, combine=combine).to_pandas().set_index("variant_id")
    except DisclosureError as e:
        pytest.fail(f"WRONGFUL REFUSAL ({combine}) by rule {e.rule!r}: {e}")
    keep = ~np.isnan(region["age"]) & ~np.isnan(region["bmi"])
    # rule 5: exactly the variants with at least K carriers of each allele among cases and controls
    assert sorted(lg["variant_id"]) == sorted(released_ids(region, region["status"], keep, combine))
    assert (lg["n"] == keep.sum()).all() and (lg["n_case"] == int(region["status"][keep].sum())).all()
    everyone = ~np.isnan(region["status"])
    assert sorted(ac.index) == sorted(released_ids(region, region["status"], everyone, combine))
    n_case = int(region["status"].sum())
    assert (ac["n_case"] == n_case).all() and (ac["n_control"] == len(region["status"]) - n_case).all()
    cases = region["status"] == 1
    for i, v in enumerate(region["ids"]):
        if v not in ac.index:
            continue
        want = np.nansum(region["g"][i, cases]) / (2 * np.sum(~np.isnan(region["g"][i, cases])))
        assert ac.loc[v, "alt_freq_case"] == pytest.approx(want, abs=1e-12), v
