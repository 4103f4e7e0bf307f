"""Attack: weighting one person inside an aggregate (disclosure rule 2, "influence, not syntax";
issue 18, finding 2).

No identifier is needed: age and BMI single out 1015 of the 1126 people of the cohort, and a
voter list's ZIP code, birth date and sex single out most people of a registry (the
Massachusetts case). The researcher aims an aggregate over everyone at one person:

* ``SUM(CASE WHEN <person> THEN value ELSE 0 END)``, ``SUM(value * CAST(<person> AS INT))``,
  ``SUM(IF(...))``, ``AVG(CASE WHEN <person> THEN value END)``, and the same multiplied by a huge
  constant plus one (everyone contributes, one person dominates);
* ``COUNT(CASE WHEN <person> AND status = 1 THEN 1 END)`` and ``SUM(CASE WHEN <person> THEN
  status ELSE 0 END)``: a binary value, read from whether the answer is released as 0 or withheld;
* an offset instead of a zero (``ELSE 1``), or padding with a group of known size (``WHEN age <>
  a THEN 1000``, its size released by a COUNT in the same query): everyone is non-zero, nobody
  dominates, and the total minus the known part is the person's value;
* bit-packing: sixteen people's case status in one SUM, weighted by powers of two;
* a join with genotypes that repeats one person's row a thousand times while everyone else
  appears twice (``WHERE pos < p0 OR <person>``), read back by two sums of the same query;
* per variant, ``SUM(CASE WHEN <person> THEN dosage ELSE 0 END)`` (carrier or not) and ``ELSE
  1`` (the dosage itself), grouped by ``variant_id``;
* Massachusetts: ``COUNT(CASE WHEN zip = .. AND birth_date = .. AND sex = .. THEN 1 END)`` for a
  voter in the registry and for a combination nobody has (membership), and the same weighting
  of the diagnosis, with zip, birth date and sex declared quasi-identifiers.

Each is asked under plain, mpc and he (and the noisy ones with an epsilon). The oracle is the
pooled data (DuckDB, ``tests/oracle.py``; the registry's own truth): every answer is checked for
what the attacker would read from it (the person's value, status bit, genotype, membership), and
that must not be the truth. A test fails naming the query, the mode and what leaked.

Ordinary aggregates are not refused by the rule: averages, variances and correlations by
population, counts and sums by sex, prevalence by population, exactly as the pooled oracle.

The history gates are off in this federation (``gates=False``): rule 2 is decided on one
release alone, and the differencing audit must not be what refuses (or hides) an attack here.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
from conftest import LocalFederation, clone_federation, set_node_section
from test_massachusetts import QI, truth  # noqa: F401  (fixture: the registry and its truth)
from test_rule1_identifiers import oracle_rows, same_rows

from genofed.connectors.federation import init_federation
from genofed.engine.errors import DisclosureError

pytestmark = pytest.mark.realdata

K = 5
SECURE = ["plain", "mpc", "he"]
J = "FROM samples s JOIN phenotypes p USING (sample_id) "
DP = {"budget_epsilon": 1000.0, "max_epsilon": 1.0,
      "bounds": {"samples.outcome": [0.0, 20.0], "phenotypes.ldl": [0.0, 10.0], "phenotypes.bmi": [10.0, 60.0]}}


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed(tmp_path_factory, data_1126, phenotypes_1126, truth):  # noqa: F811
    """The 1126 cohort on three nodes with two clinical tables, ``phenotypes`` and the
    Massachusetts ``registry(sample_id, zip, birth_date, diagnosis)`` of
    tests/attacks/test_massachusetts.py; minimum count 5, zip, birth date and sex declared
    quasi-identifiers, DP bounds, history gates off (``gates=False``: rule 2 is not a history
    gate, see the module docstring). One federation for both tables keeps the module fast."""
    base = tmp_path_factory.mktemp("rule2_base")
    init_federation(base, data_1126["vcf"], data_1126["samples"], data_1126["split"],
                    clinical={"phenotypes": phenotypes_1126, "registry": truth["csv"]}, min_count=1, allow_plain=True, combine="plain")
    root = clone_federation(base, tmp_path_factory.mktemp("fed_rule2"), min_count=K, allow_plain=True, gates=False, quasi_identifiers=QI)
    set_node_section(root, "dp", DP)
    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()


@pytest.fixture(scope="module")
def people(pooled_chr22) -> list[dict]:
    """People at biobank_A that age and BMI single out in the pooled cohort (the attacker's
    auxiliary knowledge), with their true values."""
    rows = pooled_chr22.sql(
        "WITH u AS (SELECT age, bmi FROM phenotypes WHERE bmi IS NOT NULL GROUP BY ALL HAVING count(*) = 1) "
        "SELECT p.sample_id, p.age, p.bmi, p.ldl, s.status, s.outcome FROM phenotypes p JOIN u USING (age, bmi) "
        "JOIN samples s USING (sample_id) JOIN split USING (sample_id) "
        "WHERE split.node = 'biobank_A' AND p.ldl IS NOT NULL ORDER BY p.sample_id").to_arrow_table().to_pylist()
    assert len(rows) > 300
    return rows


def _who(t: dict) -> str:
    return f"p.age = {t['age']} AND p.bmi = {t['bmi']!r}"


@pytest.fixture(scope="module")
def t0(people) -> dict:
    return next(t for t in people if t["status"] == 0)


@pytest.fixture(scope="module")
def t1(people) -> dict:
    return next(t for t in people if t["status"] == 1)


def ask(f, sql: str, combine: str, epsilon: float | None = None) -> tuple[tuple, list[dict]]:
    """What the researcher observes: ``(("refused", rule) | ("answered", rows, withheld, by rule), rows)``."""
    try:
        res = f.sql(sql, combine=combine, epsilon=epsilon)
    except DisclosureError as e:
        return ("refused", e.rule), []
    rows = res.to_arrow().to_pylist()
    return ("answered", len(rows), res.provenance.suppressed, tuple(sorted(res.provenance.withheld_by.items()))), rows


def _value(rows: list[dict], col: str) -> float | None:
    return None if not rows or rows[0].get(col) is None else float(rows[0][col])


def not_revealed(decoded: float | None, true_value: float, what: str, sql: str, combine: str) -> None:
    """The attacker's reading of the answer is not the truth (to 0.01: HE's fixed point blurs
    the last digits of a sum, not the value)."""
    assert decoded is None or not math.isclose(decoded, true_value, rel_tol=0, abs_tol=0.01), (
        f"LEAK ({combine}): the answer gives {what} = {decoded!r} (true {true_value!r}) for: {sql}")


# -- one person's continuous value ------------------------------------------------------------------

WEIGHTINGS = [
    ("case_else_0", "sum(CASE WHEN {who} THEN s.outcome ELSE 0 END)", lambda y, n, m: y, "outcome"),
    ("cast_bool", "sum(s.outcome * CAST({who} AS INT))", lambda y, n, m: y, "outcome"),
    ("if", "sum(IF({who}, p.ldl, 0))", lambda y, n, m: y, "ldl"),
    ("avg_case_null", "avg(CASE WHEN {who} THEN s.outcome END)", lambda y, n, m: y, "outcome"),
    ("huge_constant_dominates", "sum(s.outcome * CAST({who} AS INT) * 1000000 + 1)", lambda y, n, m: (y - n) / 1e6, "outcome"),
    ("offset_else_1", "sum(CASE WHEN {who} THEN s.outcome ELSE 1 END)", lambda y, n, m: y - (n - 1), "outcome"),
    ("padding_known_group", "sum(CASE WHEN {who} THEN s.outcome WHEN p.age <> {age} THEN 1000 ELSE 0 END)",
     lambda y, n, m: y - 1000 * m, "outcome"),
]


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("case, agg, decode, col", WEIGHTINGS, ids=[w[0] for w in WEIGHTINGS])
def test_weighting_one_person_does_not_reveal_their_value(fed, t0, case, agg, decode, col, combine):
    sql = (f"SELECT count(*) AS n, count(CASE WHEN p.age <> {t0['age']} THEN 1 END) AS m, "
           f"{agg.format(who=_who(t0), age=t0['age'])} AS y " + J)
    seen, rows = ask(fed, sql, combine)
    y, n, m = _value(rows, "y"), _value(rows, "n"), _value(rows, "m")
    not_revealed(None if y is None else decode(y, n, m), t0[col], f"{t0['sample_id']}'s {col}", sql, combine)


@pytest.mark.parametrize("combine", ["plain", "mpc"])
@pytest.mark.parametrize("case", ["case_else_0", "offset_else_1"])
def test_weighting_with_epsilon_is_refused_or_noisy(fed, t0, case, combine):
    """With an epsilon rule 2 is skipped (the noise protects): the node refuses a SUM over an
    expression it cannot bound, and never returns the exact value."""
    agg, decode, col = next((a, d, c) for n, a, d, c in WEIGHTINGS if n == case)
    sql = f"SELECT count(*) AS n, count(*) AS m, {agg.format(who=_who(t0), age=t0['age'])} AS y " + J
    seen, rows = ask(fed, sql, combine, epsilon=1.0)
    y, n, m = _value(rows, "y"), _value(rows, "n"), _value(rows, "m")
    not_revealed(None if y is None else decode(y, n, m), t0[col], f"{t0['sample_id']}'s {col}", sql, combine)


# -- one person's binary value: released as 0 vs withheld -------------------------------------------

BINARY = [
    ("count_case", "count(CASE WHEN {who} AND s.status = 1 THEN 1 END)"),
    ("sum_case", "sum(CASE WHEN {who} THEN s.status ELSE 0 END)"),
    ("sum_cast", "sum(s.status * CAST({who} AS INT))"),
]


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("case, agg", BINARY, ids=[b[0] for b in BINARY])
def test_a_binary_value_is_not_read_from_the_decision(fed, t0, t1, case, agg, combine):
    """The same question about a control (status 0) and a case (status 1) must look the same:
    answering one with 0 and withholding (or refusing) the other tells which is which."""
    q = "SELECT count(*) AS n, {agg} AS y " + J
    a, ra = ask(fed, q.format(agg=agg.format(who=_who(t0))), combine)
    b, rb = ask(fed, q.format(agg=agg.format(who=_who(t1))), combine)
    assert (a, ra) == (b, rb), (
        f"LEAK ({combine}): {case} for a control ({t0['sample_id']}) gives {a} {ra}, for a case ({t1['sample_id']}) "
        f"{b} {rb}: the answer reveals the person's status; query: {q.format(agg=agg.format(who=_who(t1)))}")


@pytest.mark.parametrize("combine", ["plain", "mpc"])
def test_a_binary_value_with_epsilon_is_noised_for_both(fed, t0, t1, combine):
    """With an epsilon both questions are answered, each with noise (the rule skipped, DP holds)."""
    q = "SELECT count(*) AS n, count(CASE WHEN {who} AND s.status = 1 THEN 1 END) AS y " + J
    kinds = []
    for t in (t0, t1):
        res = fed.sql(q.format(who=_who(t)), combine=combine, epsilon=1.0)
        nodes = res.provenance.details["dp"]["nodes"]
        assert len(nodes) == 3 and all(v["scale"] > 0 for v in nodes.values()), nodes
        kinds.append((res.num_rows, res.provenance.suppressed))
    assert kinds[0] == kinds[1]


# -- many people at once: bit-packing ---------------------------------------------------------------

@pytest.mark.parametrize("combine", SECURE)
def test_bit_packed_statuses_are_not_released(fed, people, combine):
    """Sixteen people's case status in one SUM, weighted 1, 2, 4, ...: no single weight dominates
    enough for a 90 % rule (the largest set bit is more than half the total, not 90 %)."""
    group = people[:16]
    assert sum(t["status"] for t in group) >= K  # enough non-zero people for the influence rule
    whens = " ".join(f"WHEN {_who(t)} THEN s.status * {1 << i}" for i, t in enumerate(group))
    sql = f"SELECT count(*) AS n, sum(CASE {whens} ELSE 0 END) AS y " + J
    _, rows = ask(fed, sql, combine)
    y = _value(rows, "y")
    statuses = [t["status"] for t in group]
    decoded = None if y is None else [(int(y) >> i) & 1 for i in range(len(group))]
    assert decoded != statuses, f"LEAK ({combine}): the SUM decodes to the case status of all 16 people: {statuses}"


# -- repeated rows: a join with genotypes -----------------------------------------------------------

@pytest.mark.parametrize("combine", SECURE)
def test_rows_repeated_by_a_genotype_join_do_not_reveal_the_value(fed, t0, combine):
    """Everyone appears once per variant before 16.3 Mb (2 rows), the target once per variant of
    chromosome 22 (1145 rows): two sums of the same query isolate the target's outcome."""
    p0 = 16_300_000
    sql = (f"SELECT count(*) AS rows, sum(CAST(g.pos < {p0} AS INT)) AS r0, sum(s.outcome) AS y, "
           f"sum(s.outcome * CAST(g.pos < {p0} AS INT)) AS z {J}JOIN genotypes g USING (sample_id) "
           f"WHERE g.chrom = '22' AND (g.pos < {p0} OR ({_who(t0)}))")
    _, rows = ask(fed, sql, combine)
    r = rows[0] if rows else {}
    decoded = None if not rows or r.get("y") is None else (r["y"] - r["z"]) / (r["rows"] - r["r0"])
    not_revealed(decoded, t0["outcome"], f"{t0['sample_id']}'s outcome", sql, combine)


@pytest.mark.parametrize("combine", ["plain", "mpc"])
def test_rows_repeated_by_a_genotype_join_with_epsilon(fed, t0, combine):
    p0 = 16_300_000
    sql = (f"SELECT count(*) AS rows, sum(s.outcome) AS y {J}JOIN genotypes g USING (sample_id) "
           f"WHERE g.chrom = '22' AND (g.pos < {p0} OR ({_who(t0)}))")
    base = f"SELECT count(*) AS rows, sum(s.outcome) AS y {J}JOIN genotypes g USING (sample_id) WHERE g.chrom = '22' AND g.pos < {p0}"
    _, a = ask(fed, sql, combine, epsilon=1.0)
    _, b = ask(fed, base, combine, epsilon=1.0)
    decoded = None if not a or not b or a[0]["y"] is None else (a[0]["y"] - b[0]["y"]) / max(1, a[0]["rows"] - b[0]["rows"])
    not_revealed(decoded, t0["outcome"], f"{t0['sample_id']}'s outcome", sql, combine)


# -- per variant: a person's genotypes --------------------------------------------------------------

PER_VARIANT = ("SELECT g.variant_id, count(*) AS n, sum(CASE WHEN {who} THEN g.dosage ELSE {other} END) AS y "
               "FROM genotypes g JOIN phenotypes p USING (sample_id) WHERE g.chrom = '22' AND g.pos <= 17500000 GROUP BY 1")


@pytest.fixture(scope="module")
def genotype(pooled_chr22, t0) -> dict[str, int]:
    rows = pooled_chr22.sql(f"SELECT variant_id, dosage FROM genotypes WHERE sample_id = '{t0['sample_id']}' "
                            "AND chrom = '22' AND pos <= 17500000").fetchall()
    d = {v: int(x) for v, x in rows}
    assert 0 < sum(1 for x in d.values() if x) < len(d)  # a carrier of some, not all, alleles here
    return d


@pytest.mark.parametrize("combine", SECURE)
def test_carrier_status_per_variant_is_not_read_from_withholding(fed, t0, genotype, combine):
    """ELSE 0: a variant where the target carries no allele sums to 0 (released), one where they
    do has one non-zero person (withheld): the released/withheld pattern is their genotype."""
    sql = PER_VARIANT.format(who=_who(t0), other=0)
    seen, rows = ask(fed, sql, combine)
    if seen[0] == "refused":
        return
    released = {r["variant_id"] for r in rows}
    inferred = {v: (0 if v in released else 1) for v in genotype}
    carrier = {v: int(x > 0) for v, x in genotype.items()}
    assert inferred != carrier, (f"LEAK ({combine}): released-as-0 vs withheld gives {t0['sample_id']}'s carrier status at all "
                                 f"{len(carrier)} variants; query: {sql}")


@pytest.mark.parametrize("combine", SECURE)
def test_dosage_per_variant_is_not_revealed_by_an_offset(fed, t0, genotype, combine):
    """ELSE 1: everyone contributes 1, the target their dosage: y - (n - 1) is the dosage."""
    sql = PER_VARIANT.format(who=_who(t0), other=1)
    _, rows = ask(fed, sql, combine)
    decoded = {r["variant_id"]: r["y"] - (r["n"] - 1) for r in rows if r["y"] is not None}
    right = [v for v, d in decoded.items() if d == genotype.get(v)]
    assert len(right) < len(genotype), (f"LEAK ({combine}): the per-variant sums give {t0['sample_id']}'s dosage at "
                                        f"{len(right)} of {len(genotype)} variants; query: {sql}")


# -- Massachusetts: zip, birth date, sex ------------------------------------------------------------

MASS_WHO = "r.zip = '{zip}' AND r.birth_date = DATE '{birth_date}' AND s.sex = '{sex}'"
MASS = "SELECT count(*) AS n, {agg} AS y FROM samples s JOIN registry r USING (sample_id)"


def _mass_who(p: dict) -> str:
    return MASS_WHO.format(zip=p["zip"], birth_date=p["birth_date"].isoformat() if hasattr(p["birth_date"], "isoformat") else p["birth_date"],
                           sex=p["sex"])


NOBODY = {"zip": "02138", "birth_date": dt.date(1945, 7, 4), "sex": "F"}


@pytest.mark.parametrize("combine, epsilon", [("plain", None), ("mpc", None), ("he", None), ("plain", 1.0), ("mpc", 1.0)],
                         ids=["plain", "mpc", "he", "plain-dp", "mpc-dp"])
def test_linkage_count_does_not_reveal_membership(fed, truth, combine, epsilon):  # noqa: F811
    """A voter in the registry and a combination nobody has must get the same kind of answer."""
    assert (NOBODY["zip"], NOBODY["birth_date"], NOBODY["sex"]) not in truth["voters"]
    member = next(iter(truth["unique"].values()))
    agg = "count(CASE WHEN {who} THEN 1 END)"
    a, ra = ask(fed, MASS.format(agg=agg.format(who=_mass_who(member))), combine, epsilon)
    b, rb = ask(fed, MASS.format(agg=agg.format(who=_mass_who(NOBODY))), combine, epsilon)
    if epsilon is None:
        assert (a, ra) == (b, rb), (f"LEAK ({combine}): a member gets {a} {ra}, nobody gets {b} {rb}: membership is "
                                    f"revealed; query: {MASS.format(agg=agg.format(who=_mass_who(member)))}")
    else:
        assert a == b, (a, b)  # both noised (values differ by the noise, not by who is in the registry)


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("agg", ["sum(CASE WHEN {who} THEN r.diagnosis ELSE 0 END)", "count(CASE WHEN {who} AND r.diagnosis = 1 THEN 1 END)"],
                         ids=["sum_case", "count_case"])
def test_linkage_does_not_reveal_a_diagnosis(fed, truth, agg, combine):  # noqa: F811
    """Two voters singled out by zip, birth date and sex, one with the diagnosis, one without."""
    sick = next(p for p in truth["unique"].values() if p["diagnosis"] == 1)
    well = next(p for p in truth["unique"].values() if p["diagnosis"] == 0)
    a, ra = ask(fed, MASS.format(agg=agg.format(who=_mass_who(sick))), combine)
    b, rb = ask(fed, MASS.format(agg=agg.format(who=_mass_who(well))), combine)
    assert (a, ra) == (b, rb), (f"LEAK ({combine}): the voter with the diagnosis gets {a} {ra}, the one without {b} {rb}; "
                                f"query: {MASS.format(agg=agg.format(who=_mass_who(sick)))}")


@pytest.mark.parametrize("combine", SECURE)
def test_linkage_offset_does_not_reveal_a_diagnosis(fed, truth, combine):  # noqa: F811
    sick = next(p for p in truth["unique"].values() if p["diagnosis"] == 1)
    sql = MASS.format(agg=f"sum(CASE WHEN {_mass_who(sick)} THEN r.diagnosis ELSE 1 END)")
    _, rows = ask(fed, sql, combine)
    y, n = _value(rows, "y"), _value(rows, "n")
    not_revealed(None if y is None else y - (n - 1), 1.0, "the voter's diagnosis", sql, combine)


# -- ordinary aggregates are not refused ------------------------------------------------------------

ORDINARY = [
    ("moments_by_population", "SELECT s.population, count(*) AS n, avg(p.bmi) AS bmi, var_samp(p.ldl) AS ldl_var, "
                              "corr(p.age, p.ldl) AS r, stddev_pop(s.outcome) AS sd " + J + "GROUP BY s.population"),
    ("counts_by_sex", "SELECT s.sex, count(*) AS n FROM samples s GROUP BY s.sex"),
    ("sums_by_sex", "SELECT s.sex, count(*) AS n, sum(p.smoker) AS smokers, avg(p.ldl) AS ldl, sum(s.outcome) AS outcome " + J + "GROUP BY s.sex"),
    ("regression_by_sex", "SELECT s.sex, count(*) AS n, regr_slope(p.ldl, p.age) AS slope, regr_intercept(p.ldl, p.age) AS intercept, "
                          "covar_samp(p.bmi, p.ldl) AS cov " + J + "GROUP BY s.sex"),
    ("prevalence_by_population", "SELECT s.population, count(*) AS n, avg(s.status) AS prevalence FROM samples s GROUP BY s.population"),
    ("mean_with_missing_values_by_fine_groups", "SELECT s.population, p.smoker, p.age >= 50 AS older, count(*) AS n, avg(p.ldl) AS ldl "
                                                + J + "GROUP BY ALL"),
]
#: per group, how many people contribute to its values (rule 2: non-zero / non-null), where
#: that can be fewer than the group's people
CONTRIBUTORS = {
    "prevalence_by_population": "SELECT s.population, sum(s.status) AS c FROM samples s GROUP BY s.population",
    "mean_with_missing_values_by_fine_groups": "SELECT s.population, p.smoker, p.age >= 50 AS older, count(p.ldl) AS c " + J + "GROUP BY ALL",
}
KEYS = {"mean_with_missing_values_by_fine_groups": ["population", "smoker", "older"]}


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("case, sql", ORDINARY, ids=[o[0] for o in ORDINARY])
def test_ordinary_aggregates_are_answered_exactly(fed, pooled_chr22, case, sql, combine):
    """Released exactly as the pooled oracle, nothing refused. Where the people contributing to
    a group's values can be fewer than its members (cases of a prevalence, non-missing LDL),
    groups with fewer than 5 contributors in the federation are withheld (ASW has 4 cases), and
    in plain mode, where the coordinator sees every node's partials, also groups with fewer than
    5 at some node (as a count of 3 would be): there only the released groups are compared.
    Under mpc and he every group with at least 5 people and 5 contributors is released."""
    try:
        got = fed.sql(sql, combine=combine)
    except DisclosureError as e:
        pytest.fail(f"WRONGFUL REFUSAL ({combine}) by rule {e.rule!r}: {sql}: {e}")
    want = oracle_rows(pooled_chr22, sql)
    keys = KEYS.get(case) or [c for c in want[0] if isinstance(want[0][c], str)]
    got_rows = got.to_arrow().to_pylist()
    released = {tuple(r[k] for k in keys) for r in got_rows}
    assert all(r["n"] >= K for r in got_rows)
    if case in CONTRIBUTORS:
        contrib = {tuple(r[k] for k in keys): r["c"] for r in oracle_rows(pooled_chr22, CONTRIBUTORS[case])}
        must = [w for w in want if w["n"] >= K and contrib[tuple(w[k] for k in keys)] >= K]
        if combine == "plain":
            assert released and set(got.provenance.withheld_by) <= {"influence", "min_count"}, got.provenance.withheld_by
        else:
            missing = [w for w in must if tuple(w[k] for k in keys) not in released]
            assert not missing, (f"WRONGFUL WITHHOLDING ({combine}): {len(missing)} groups with at least {K} people and {K} "
                                 f"contributors withheld, e.g. {missing[:2]}: {sql}")
        want = [w for w in want if tuple(w[k] for k in keys) in released]
    else:
        assert got.provenance.suppressed == 0, (f"WRONGFUL WITHHOLDING ({combine}): {got.provenance.suppressed} of "
                                                f"{len(want)} groups withheld by {got.provenance.withheld_by}: {sql}")
    same_rows(got.to_arrow(), want, keys)
