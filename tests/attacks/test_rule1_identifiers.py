"""Attack: identifiers used as anything but join keys (disclosure rule 1; issue 18, findings 1
and 3).

A determined researcher who knows a person's sample ID (here ``HG00096``, a GBR man at
biobank_A) tries to single them out by comparing ``sample_id`` (and the declared identifier
``samples.family_id``) with values, in every phrasing the planner accepts: ``=``/``<>``/ranges,
``IN`` lists of literals, ``LIKE``/``ILIKE``, ``SUBSTRING``/``STARTS_WITH``/``LENGTH``/``UPPER``,
concatenation and ``COALESCE``, ``CASE``/``IF``/``CAST(bool AS INT)`` inside aggregates, a
literal in a ``JOIN ... ON``, an ``OR`` beside the equality join, renamed through one and two CTE
levels and subqueries (``SELECT *``, aliases, expressions), correlated ``EXISTS`` and ``IN``
subqueries carrying a literal, a CTE whose ``sample_id`` is a literal, group keys made of
identifiers (also as hand-made fragments sent straight to a node, bypassing the planner), and
identifiers in table-function arguments (phenotype, covariates, samples filter, ``population``
of ``fst``/``heterozygosity``) of ``gwas_linear``, ``gwas_logistic``, ``assoc_case_control``,
``pca``, ``ld_r2``.

Each is asked under combine plain, mpc and he, and with an epsilon: each must be refused by the
node with rule ``identifier`` (``row_level`` for the group keys the planner already refuses),
and the refusal carries no identifier value. Constructs the planner does not support at all
(regular expressions, ``hash``, ``VALUES``, window functions, lists) are refused before any node
is asked, and the same constructs hand-made reach no data at a node either.

Ordinary use of identifiers is not refused: joins on ``sample_id`` (ON/USING), ``COUNT(DISTINCT
sample_id)``, ``IN``/``NOT IN`` subqueries, correlated ``EXISTS``, CTEs and subqueries passing
``sample_id`` through, per-person CTEs grouped by ``sample_id`` over genotypes: under all three
modes, with the results of the pooled oracle (DuckDB over all samples, ``tests/oracle.py``).

The federation: the 1126 cohort on three nodes, minimum count 5, the default history gates
(differencing, membership risk) on, ``identifiers = ["samples.family_id"]``, DP available. The
attacks run as one researcher (``mallory``): rule 1 is decided on the request alone, before any
history gate. Each ordinary query runs as a fresh researcher of its own, so that no earlier
release in this module's federation decides a history gate's outcome for it.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from conftest import LocalFederation, clone_federation, set_node_section
from rule5_ref import predict_pooled

import genofed
from genofed.api import Federation
from genofed.connectors.client import FlightTransport
from genofed.connectors.federation import FederationConfig, add_researcher
from genofed.engine.errors import DisclosureError, GenofedError, NodeError

pytestmark = pytest.mark.realdata

TARGET = "HG00096"  # a GBR man at biobank_A (suggested_3node_split.tsv)
J = "FROM samples s JOIN phenotypes p USING (sample_id) "
NS = "SELECT count(*) AS n, avg(s.outcome) AS y FROM samples s "
MODES = [("plain", None), ("mpc", None), ("he", None), ("plain", 1.0), ("mpc", 1.0)]
MODE_IDS = [f"{c}{'-dp' if e else ''}" for c, e in MODES]
SECURE = ["plain", "mpc", "he"]
#: the region the oracle holds genotypes for (all of chromosome 22)
CHROM = "22"

# -- attacks through the coordinator: refused by the node, rule "identifier" ------------------------

ATTACKS = [
    ("eq_literal", NS + f"WHERE s.sample_id = '{TARGET}'"),
    ("eq_literal_reversed", NS + f"WHERE '{TARGET}' = s.sample_id"),
    ("not_not_equal", NS + f"WHERE NOT s.sample_id <> '{TARGET}'"),
    ("in_literal_list", NS + f"WHERE s.sample_id IN ('{TARGET}', 'HG00097')"),
    ("between", NS + f"WHERE s.sample_id BETWEEN '{TARGET}' AND '{TARGET}'"),
    ("range", NS + "WHERE s.sample_id > 'HG00095' AND s.sample_id < 'HG00097'"),
    ("like", NS + "WHERE s.sample_id LIKE 'HG0009%'"),
    ("like_one_char", "SELECT count(CASE WHEN s.sample_id LIKE '__0%' THEN 1 END) AS n FROM samples s"),
    ("ilike_cast", NS + "WHERE CAST(s.sample_id AS VARCHAR) ILIKE 'hg00096'"),
    ("substring", NS + "WHERE substring(s.sample_id, 3, 3) = '000'"),
    ("starts_with", NS + "WHERE starts_with(s.sample_id, 'HG0009')"),
    ("length_arithmetic", NS + "WHERE length(s.sample_id) + 1 = 8"),
    ("upper", NS + f"WHERE upper(s.sample_id) = '{TARGET}'"),
    ("concat", NS + f"WHERE s.sample_id || '' = '{TARGET}'"),
    ("coalesce", NS + f"WHERE coalesce(s.sample_id, 'x') = '{TARGET}'"),
    ("row_value", NS + f"WHERE (s.sample_id, 1) = ('{TARGET}', 1)"),
    ("compared_with_a_column", "SELECT count(*) AS n FROM samples s WHERE s.sample_id = s.population"),
    ("case_in_sum", f"SELECT count(*) AS n, sum(CASE WHEN s.sample_id = '{TARGET}' THEN s.outcome ELSE 0 END) AS y FROM samples s"),
    ("if_in_sum", f"SELECT count(*) AS n, sum(IF(s.sample_id = '{TARGET}', s.outcome, 0)) AS y FROM samples s"),
    ("cast_bool_weight", f"SELECT count(*) AS n, sum(s.outcome * CAST(s.sample_id = '{TARGET}' AS INT)) AS y FROM samples s"),
    ("case_in_avg", f"SELECT count(*) AS n, avg(CASE WHEN s.sample_id = '{TARGET}' THEN p.bmi END) AS y " + J),
    ("join_on_literal", f"SELECT count(*) AS n, avg(p.age) AS a FROM samples s JOIN phenotypes p ON s.sample_id = p.sample_id AND p.sample_id = '{TARGET}'"),
    ("or_beside_equality", f"SELECT count(*) AS n, avg(p.age) AS a {J}WHERE p.sample_id = s.sample_id OR s.sample_id = '{TARGET}'"),
    ("cte_alias", f"WITH t AS (SELECT sample_id, sample_id AS sid, outcome FROM samples) SELECT count(*) AS n, avg(t.outcome) AS y FROM t WHERE t.sid = '{TARGET}'"),
    ("cte_two_levels", "WITH a AS (SELECT sample_id, sample_id AS id1, outcome FROM samples), b AS (SELECT sample_id, id1 AS id2, outcome FROM a) "
                       "SELECT count(*) AS n, avg(b.outcome) AS y FROM b WHERE b.id2 LIKE 'NA%'"),
    ("cte_flag_as_key", f"WITH t AS (SELECT sample_id, sample_id = '{TARGET}' AS me, outcome FROM samples) "
                        "SELECT t.me, count(*) AS n, sum(t.outcome) AS y FROM t GROUP BY t.me"),
    ("cte_expression", f"WITH t AS (SELECT sample_id, upper(sample_id) AS u, outcome FROM samples) SELECT count(*) AS n, avg(t.outcome) AS y FROM t WHERE t.u = '{TARGET}'"),
    ("subquery_star", f"SELECT count(*) AS n, avg(x.outcome) AS y FROM (SELECT * FROM samples) x WHERE x.sample_id = '{TARGET}'"),
    ("subquery_alias", f"SELECT count(*) AS n, avg(q.outcome) AS y FROM (SELECT sample_id, sample_id AS who, outcome FROM samples) q WHERE q.who = '{TARGET}'"),
    ("exists_with_literal", NS + f"WHERE EXISTS (SELECT 1 FROM phenotypes p WHERE p.sample_id = s.sample_id AND p.sample_id = '{TARGET}')"),
    ("exists_with_like", NS + "WHERE EXISTS (SELECT 1 FROM phenotypes p WHERE p.sample_id = s.sample_id AND p.sample_id LIKE 'HG0009%')"),
    ("in_select_literal", NS + f"WHERE s.sample_id IN (SELECT '{TARGET}')"),
    ("in_subquery_filtered", NS + f"WHERE s.sample_id IN (SELECT p.sample_id FROM phenotypes p WHERE p.sample_id = '{TARGET}')"),
    ("in_subquery_expression", NS + "WHERE s.sample_id IN (SELECT upper(p.sample_id) FROM phenotypes p)"),
    ("cte_literal_named_sample_id", f"WITH t AS (SELECT '{TARGET}' AS sample_id) SELECT count(*) AS n, avg(s.outcome) AS y FROM samples s JOIN t ON s.sample_id = t.sample_id"),
    ("per_person_cte_filtered", "WITH per AS (SELECT g.sample_id, sum(g.dosage) AS alt FROM genotypes g WHERE g.chrom = '22' GROUP BY g.sample_id) "
                                f"SELECT count(*) AS n, avg(per.alt) AS alt FROM per WHERE per.sample_id = '{TARGET}'"),
    ("declared_identifier_eq", NS + f"WHERE s.family_id = '{TARGET}'"),
    ("declared_identifier_like", NS + "WHERE s.family_id LIKE 'NA1%'"),
    ("declared_identifier_group_key", "SELECT s.family_id, count(*) AS n, avg(s.outcome) AS y FROM samples s GROUP BY 1"),
    ("declared_identifier_renamed", f"WITH f AS (SELECT sample_id, family_id AS fam, outcome FROM samples) SELECT count(*) AS n, avg(f.outcome) AS y FROM f WHERE f.fam = '{TARGET}'"),
    ("declared_identifier_in_case", f"SELECT count(*) AS n, sum(CASE WHEN s.family_id = '{TARGET}' THEN s.outcome ELSE 0 END) AS y FROM samples s"),
]

# group keys made of identifiers: the planner refuses them (row_level); hand-made, the node does
KEY_ATTACKS = [
    ("sample_id", "SELECT s.sample_id, s.population, count(*) AS n FROM samples s GROUP BY ALL"),
    ("prefix", "SELECT substring(s.sample_id, 1, 5) AS pre, count(*) AS n, avg(s.outcome) AS y FROM samples s GROUP BY 1"),
    ("like_flag", "SELECT s.sample_id LIKE 'HG0009%' AS hit, count(*) AS n, avg(s.outcome) AS y FROM samples s GROUP BY 1"),
    ("case_who", f"SELECT CASE WHEN s.sample_id = '{TARGET}' THEN 0 ELSE 1 END AS who, s.population, p.age, count(*) AS n {J}GROUP BY ALL"),
    ("length", "SELECT length(s.sample_id) AS l, count(*) AS n FROM samples s GROUP BY 1"),
    ("per_person_cte", "WITH per AS (SELECT g.sample_id, sum(g.dosage) AS d FROM genotypes g WHERE g.chrom = '22' GROUP BY g.sample_id) "
                       "SELECT per.sample_id, count(*) AS n FROM per GROUP BY 1"),
]

# identifiers in table-function arguments
TF_ATTACKS = [
    ("gwas_linear_samples_in_list", "SELECT * FROM gwas_linear('phenotypes.ldl', samples => 'sample_id IN (''HG00096'', ''HG00097'', ''HG00099'')', chrom => '22', stop => 17500000)"),
    ("gwas_linear_samples_like", "SELECT * FROM gwas_linear('phenotypes.ldl', samples => 'samples.sample_id LIKE ''HG0%''', chrom => '22', stop => 17500000)"),
    ("gwas_linear_covariate_sample_id", "SELECT * FROM gwas_linear('phenotypes.ldl', covariates => ['samples.sample_id'], chrom => '22', stop => 17500000)"),
    ("gwas_linear_phenotype_sample_id", "SELECT * FROM gwas_linear(phenotype => 'CAST(samples.sample_id = ''HG00096'' AS DOUBLE)', chrom => '22', stop => 17500000)"),
    ("gwas_linear_covariate_declared", "SELECT * FROM gwas_linear('phenotypes.ldl', covariates => ['samples.family_id'], chrom => '22', stop => 17500000)"),
    ("gwas_logistic_samples_declared", "SELECT * FROM gwas_logistic('samples.status', samples => 'family_id = ''HG00096'' OR population = ''GBR''', chrom => '22', stop => 17500000)"),
    ("assoc_phenotype_sample_id", "SELECT * FROM assoc_case_control(phenotype => 'sample_id = ''HG00096''', chrom => '22', stop => 17500000)"),
    ("pca_samples", "SELECT * FROM pca(k => 2, samples => 'sample_id LIKE ''NA%''', chrom => '22')"),
    ("ld_r2_samples", "SELECT * FROM ld_r2(samples => 'sample_id = ''HG00096''', chrom => '22', stop => 17500000)"),
    ("fst_population_case", "SELECT * FROM fst(population => 'CASE WHEN sample_id = ''HG00096'' THEN ''me'' ELSE ''rest'' END', "
                            "pop1 => 'me', pop2 => 'rest', chrom => '22', stop => 17500000)"),
    ("heterozygosity_population_sample_id", "SELECT * FROM heterozygosity(population => 'sample_id', chrom => '22', stop => 17500000)"),
    ("heterozygosity_population_declared", "SELECT * FROM heterozygosity(population => 'family_id', chrom => '22', stop => 17500000)"),
]

# constructs outside the supported subset: refused before a node is asked
UNSUPPORTED = [
    ("regexp", NS + "WHERE regexp_matches(s.sample_id, '^HG0009[0-6]$')"),
    ("hash_bucket", "SELECT hash(s.sample_id) % 2 AS b, count(*) AS n FROM samples s GROUP BY 1"),
    ("values_join", f"SELECT count(*) AS n, avg(s.outcome) AS y FROM samples s JOIN (VALUES ('{TARGET}')) v(sample_id) USING (sample_id)"),
    ("unnest_join", f"SELECT count(*) AS n, avg(s.outcome) AS y FROM samples s JOIN unnest(['{TARGET}']) u(sample_id) USING (sample_id)"),
    ("list_contains", NS + f"WHERE list_contains(['{TARGET}'], s.sample_id)"),
    ("any_list", NS + f"WHERE s.sample_id = ANY(['{TARGET}'])"),
    ("window_rank", "WITH r AS (SELECT sample_id, outcome, row_number() OVER (ORDER BY sample_id) AS rn FROM samples) SELECT count(*) AS n, sum(r.outcome) AS y FROM r WHERE r.rn = 1"),
    ("string_agg", "SELECT string_agg(s.sample_id, ',') AS ids FROM samples s"),
    ("min_id", "SELECT min(s.sample_id) AS first FROM samples s"),
    ("inequality_self_join", "SELECT s.population, count(*) AS n FROM samples s JOIN samples t ON t.sample_id < s.sample_id GROUP BY 1"),
]

# the same ideas as hand-made fragments sent straight to a node (no planner in the way)
DIRECT = [
    ("key_like", "SELECT samples.sample_id LIKE 'HG0009%' AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.sample_id LIKE 'HG0009%'"),
    ("key_case", f"SELECT CASE WHEN samples.sample_id = '{TARGET}' THEN 0 ELSE 1 END AS _k0, COUNT(*) AS _p0, SUM(samples.outcome) AS _p1 "
                 f"FROM samples GROUP BY CASE WHEN samples.sample_id = '{TARGET}' THEN 0 ELSE 1 END"),
    ("key_length", "SELECT LENGTH(samples.sample_id) AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY LENGTH(samples.sample_id)"),
    ("key_declared", "SELECT samples.family_id AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.family_id"),
    ("case_in_sum", f"SELECT COUNT(*) AS _p0, SUM(CASE WHEN samples.sample_id = '{TARGET}' THEN samples.outcome ELSE 0 END) AS _p1 FROM samples"),
    ("where_in_list", f"SELECT COUNT(*) AS _p0, SUM(samples.outcome) AS _p1 FROM samples WHERE samples.sample_id IN ('{TARGET}')"),
    ("regexp", "SELECT COUNT(*) AS _p0, SUM(samples.outcome) AS _p1 FROM samples WHERE regexp_matches(samples.sample_id, '^HG00096$')"),
    ("hash", "SELECT hash(samples.sample_id) % 2 AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY hash(samples.sample_id) % 2"),
]

# ordinary analysis with identifiers as join keys: never refused, equal to the pooled oracle
ORDINARY = [
    ("join_on", "SELECT s.sex, count(*) AS n, avg(p.bmi) AS bmi FROM samples s JOIN phenotypes p ON p.sample_id = s.sample_id GROUP BY s.sex"),
    ("count_distinct", "SELECT s.population, count(DISTINCT s.sample_id) AS people, count(*) AS n, avg(p.age) AS age " + J + "GROUP BY s.population"),
    ("in_subquery", "SELECT s.sex, count(*) AS n, avg(s.outcome) AS outcome FROM samples s "
                    "WHERE s.sample_id IN (SELECT p.sample_id FROM phenotypes p WHERE p.smoker = 1) GROUP BY s.sex"),
    ("not_in_subquery", "SELECT s.sex, count(*) AS n FROM samples s WHERE s.sample_id NOT IN (SELECT p.sample_id FROM phenotypes p WHERE p.age < 30) GROUP BY s.sex"),
    ("exists_correlated", "SELECT s.sex, count(*) AS n FROM samples s WHERE EXISTS (SELECT 1 FROM phenotypes p WHERE p.sample_id = s.sample_id AND p.bmi > 30) GROUP BY s.sex"),
    ("cte_pass_through", "WITH older AS (SELECT p.sample_id, p.age FROM phenotypes p WHERE p.age >= 50) "
                         "SELECT s.sex, count(*) AS n, avg(o.age) AS age FROM samples s JOIN older o ON o.sample_id = s.sample_id GROUP BY s.sex"),
    ("subquery_alias", "SELECT q.sex, count(*) AS n FROM (SELECT sample_id, sex FROM samples) q GROUP BY q.sex"),
    # a per-person score over common variants (rule 5 withholds a value that rests on a variant with
    # fewer than 5 copies of an allele among its cell's people: a region's rare variants)
    ("per_person_cte", "WITH per AS (SELECT g.sample_id, sum(g.dosage) AS alt FROM genotypes g WHERE g.chrom = '22' AND {COMMON} "
                       "GROUP BY g.sample_id) SELECT s.sex, count(*) AS n, avg(per.alt) AS alt FROM per JOIN samples s USING (sample_id) GROUP BY s.sex"),
]


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed(fed_dir_1126, tmp_path_factory):
    """``(root, connect)``: ``connect(name)`` is a connection as researcher ``name`` (registered
    at every node before the nodes start)."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_rule1"), min_count=5, allow_plain=True,
                            identifiers=["samples.family_id"])
    set_node_section(root, "dp", {"budget_epsilon": 1000.0, "max_epsilon": 1.0})
    names = ["mallory", *(f"r_{q}" for q, _ in ORDINARY), *(f"r_gwas_{m}" for m in SECURE)]
    tokens = {name: add_researcher(root, name) for name in names}
    lf = LocalFederation(root)
    conns: dict[str, Federation] = {}

    def connect(name: str) -> Federation:
        if name not in conns:
            conns[name] = genofed.connect(root, timeout=60, token=tokens[name])
        return conns[name]

    try:
        yield root, connect
    finally:
        for c in conns.values():
            c.close()
        lf.close()


@pytest.fixture(scope="module")
def mallory(fed):
    return fed[1]("mallory")


# -- helpers ----------------------------------------------------------------------------------------

def refused(f, sql: str, combine: str, epsilon: float | None = None, rules: tuple[str, ...] = ("identifier",)) -> DisclosureError:
    """Ask; the node must refuse with one of ``rules`` and say nothing about the target."""
    try:
        res = f.sql(sql, combine=combine, epsilon=epsilon)
    except DisclosureError as e:
        assert e.rule in rules, f"refused by rule {e.rule!r}, expected {rules}: {e}"
        assert TARGET not in str(e), f"the refusal echoes the identifier: {e}"
        return e
    pytest.fail(f"answered ({combine}, epsilon={epsilon}): {res.to_arrow().to_pylist()[:5]} "
                f"(withheld {res.provenance.suppressed}, by {res.provenance.withheld_by})")


def same_rows(got: pa.Table, want: list[dict], keys: list[str]) -> None:
    """Federated rows equal the oracle's (integers exactly, reals to 1e-6 relative: MPC and HE
    carry reals in fixed point)."""
    g = sorted(got.to_pylist(), key=lambda r: tuple(str(r[k]) for k in keys))
    w = sorted(want, key=lambda r: tuple(str(r[k]) for k in keys))
    assert len(g) == len(w), f"{len(g)} rows, the oracle has {len(w)}"
    for a, b in zip(g, w):
        assert set(a) == set(b), (a, b)
        for k in a:
            x, y = a[k], b[k]
            if isinstance(y, float) or isinstance(x, float):
                assert math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-9), (k, a, b)
            else:
                assert x == y, (k, a, b)


def oracle_rows(pooled, sql: str) -> list[dict]:
    return pooled.sql(sql).to_arrow_table().to_pylist()


# -- attacks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("combine, epsilon", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case, sql", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_identifier_compared_with_values_is_refused(mallory, case, sql, combine, epsilon):
    refused(mallory, sql, combine, epsilon)


@pytest.mark.parametrize("combine, epsilon", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case, sql", KEY_ATTACKS, ids=[a[0] for a in KEY_ATTACKS])
def test_identifier_group_keys_are_refused(mallory, case, sql, combine, epsilon):
    refused(mallory, sql, combine, epsilon, rules=("identifier", "row_level"))


@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("case, sql", TF_ATTACKS, ids=[a[0] for a in TF_ATTACKS])
def test_identifiers_in_table_function_arguments_are_refused(mallory, case, sql, combine):
    refused(mallory, sql, combine, rules=("identifier", "row_level"))


@pytest.mark.parametrize("case, sql", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_constructs_never_reach_the_data(mallory, case, sql):
    with pytest.raises(GenofedError) as e:
        mallory.sql(sql, combine="plain")
    assert not isinstance(e.value, NodeError) or e.value.node_code != "timeout"


@pytest.fixture(scope="module")
def node_a(fed):
    """A transport straight to biobank_A, as mallory (no coordinator, no planner)."""
    root, connect = fed
    cfg = FederationConfig.load(root)
    n = cfg.nodes[0]
    t = FlightTransport(n.name, n.location(root), connect("mallory").config.nodes[0].token, tls=cfg.client_tls())
    yield t
    t.close()


@pytest.mark.parametrize("case, sql", DIRECT, ids=[d[0] for d in DIRECT])
def test_hand_made_fragments_are_refused_at_the_node(node_a, case, sql):
    """The node itself decides rule 1: a fragment sent without the planner (plain, and as the
    first step of an MPC session) is refused before any data is read."""
    with pytest.raises((DisclosureError, NodeError)) as e:
        node_a.run_fragment(sql, f"direct-{case}", timeout=20)
    if isinstance(e.value, DisclosureError):
        assert e.value.rule in ("identifier", "row_level"), str(e.value)
    else:  # outside the supported subset: refused by the node's validation
        assert e.value.node_code == "fragment", str(e.value)
    assert TARGET not in str(e.value)
    try:
        answer = node_a.action("mpc_prepare", {"sql": sql, "query_id": f"direct-mpc-{case}"}, 20)
    except (DisclosureError, NodeError) as e2:
        assert not isinstance(e2, DisclosureError) or e2.rule in ("identifier", "row_level"), str(e2)
        return
    node_a.action("mpc_abort", {"query_id": f"direct-mpc-{case}"}, 10)
    pytest.fail(f"the node prepared an MPC session for {case}: {answer}")


# -- ordinary work is not refused -------------------------------------------------------------------

@pytest.mark.parametrize("combine", SECURE)
@pytest.mark.parametrize("case, sql", ORDINARY, ids=[o[0] for o in ORDINARY])
def test_identifiers_as_join_keys_are_answered_exactly(fed, pooled_chr22, case, sql, combine):
    # a fresh researcher per query (the same one for its three modes: the same release again)
    f = fed[1](f"r_{case}")
    if "{COMMON}" in sql:
        common = [r[0] for r in pooled_chr22.sql("SELECT variant_id FROM genotypes WHERE chrom = '22' GROUP BY 1 "
                                                 "HAVING avg(dosage) BETWEEN 0.7 AND 1.3 ORDER BY 1 LIMIT 40").fetchall()]
        sql = sql.replace("{COMMON}", "g.variant_id IN (" + ", ".join(f"'{v}'" for v in common) + ")")
    try:
        got = f.sql(sql, combine=combine)
    except DisclosureError as e:
        pytest.fail(f"WRONGFUL REFUSAL ({combine}, a fresh researcher's first question) by rule {e.rule!r}: {sql}: {e}")
    want = oracle_rows(pooled_chr22, sql)
    assert got.provenance.suppressed == 0, got.provenance.withheld_by
    same_rows(got.to_arrow(), want, [c for c in want[0] if isinstance(want[0][c], str)])


@pytest.mark.parametrize("combine", SECURE)
def test_analyses_with_declared_variables_pass_the_default_gates(fed, pooled_chr22, combine):
    """gwas_linear with declared covariates over a region, under the default gates, as a fresh
    researcher per mode: answered, with every complete case counted (exactness against pooled
    least squares: test_rule6_analyses.py)."""
    f = fed[1](f"r_gwas_{combine}")
    sql = ("SELECT * FROM gwas_linear('phenotypes.ldl', covariates => ['phenotypes.age', 'phenotypes.bmi'], "
           "chrom => '22', stop => 17500000)")
    try:
        got = f.sql(sql, combine=combine).to_pandas()
    except DisclosureError as e:
        pytest.fail(f"WRONGFUL REFUSAL ({combine}) by rule {e.rule!r}: {sql}: {e}")
    n = pooled_chr22.sql("SELECT count(*) FROM phenotypes WHERE ldl IS NOT NULL AND age IS NOT NULL AND bmi IS NOT NULL").fetchall()[0][0]
    # rule 5: exactly the variants with at least 5 carriers of each allele per cell (tests/rule5_ref.py)
    withheld = predict_pooled(pooled_chr22, "chrom = '22' AND pos <= 17500000", "ldl", ["age", "bmi"], combine)
    assert sorted(got["variant_id"]) == sorted(v for v, w in withheld.items() if not w)
    assert len(got) >= 5 and (got["n"] == n).all()
