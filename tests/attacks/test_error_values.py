"""Attack: reading people's values out of error messages (security review, issue 18, finding 5).

DuckDB's messages quote the operands of the expression that failed: an overflow provoked in a
WHERE clause (``age * 10^18``, ``CAST(age * 2 AS TINYINT)``) printed a person's age, a failed
string-to-number or date cast printed a population, family or sample ID, and a division by zero
printed the expression. Those messages reached the researcher before any disclosure rule ran, in
every combine mode and with an epsilon (the DP path computes the sample sets first).

Disclosure rule 7: a node translates engine errors into its own, naming the kind of failure, the
construct and the column, never a value. Oracle: the actual values of the targeted columns, read
with DuckDB from the node stores; none may appear in the message a researcher receives, nor in
the audit records of the refusals.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
from conftest import LocalFederation, clone_federation, set_node_section

from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.engine.errors import ConfigError, NodeError

J = "FROM samples s JOIN phenotypes p USING (sample_id) "

# (id, query, what the message must name, the columns whose values it must not carry)
CASES = [
    ("overflow_multiplication", "SELECT count(*) AS n " + J + "WHERE p.age * 1000000000000000000 <> p.smoker",
     ["numeric overflow", "multiplication", "phenotypes.age"], ["age"]),
    ("overflow_narrowing_cast", "SELECT count(*) AS n " + J + "WHERE CAST(p.age * 2 AS TINYINT) > 0",
     ["numeric overflow", "CAST to TINYINT", "phenotypes.age"], ["age", "age2"]),
    ("overflow_in_group_key", "SELECT p.smoker + p.age * 1000000000000000000 AS k, count(*) AS n " + J + "GROUP BY 1",
     ["numeric overflow", "phenotypes.age"], ["age"]),
    ("division_by_zero", "SELECT count(*) AS n " + J + "WHERE 1 // (p.age - 50) > 0",
     ["division by zero", "phenotypes.age", "NULLIF"], ["age"]),
    ("modulo_by_zero", "SELECT count(*) AS n " + J + "WHERE p.smoker % (p.age - 61) = 0",
     ["division by zero", "phenotypes.age"], ["age"]),
    ("text_to_number", "SELECT count(*) AS n FROM samples s WHERE CAST(s.population AS INT) > 0",
     ["conversion failed", "CAST", "samples.population"], ["population"]),
    ("id_like_text_to_number", "SELECT count(*) AS n FROM samples s WHERE CAST(s.family_id AS BIGINT) > 0",
     ["conversion failed", "samples.family_id"], ["family_id", "sample_id"]),
    ("text_to_date", "SELECT count(*) AS n FROM samples s WHERE CAST(s.population_description AS DATE) > DATE '2000-01-01'",
     ["conversion failed", "samples.population_description"], ["population_description"]),
    ("implicit_conversion", "SELECT count(*) AS n FROM samples s WHERE s.population = 1",
     ["conversion failed", "samples.population"], ["population"]),
    ("conversion_in_aggregate", "SELECT s.sex, count(CAST(s.population AS INT)) AS n FROM samples s GROUP BY s.sex",
     ["conversion failed", "samples.population"], ["population"]),
    ("analysis_sample_filter", "SELECT count(*) AS n FROM gwas_linear(phenotype => 'phenotypes.ldl', "
     "samples => 'CAST(samples.population AS INT) > 0', variants => 'chrom = ''22''')",
     ["conversion failed", "samples.population"], ["population"]),
]

MODES = [("plain", None), ("mpc", None), ("he", None), ("plain", 1.0), ("mpc", 1.0)]


@pytest.fixture(scope="module")
def fed(fed_dir_1126, tmp_path_factory):
    """The 1126 cohort on three nodes with the default minimum count, the history gates on,
    and DP available (a generous budget: every query here fails before it is charged)."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_error_values"), min_count=5, combine="plain")
    set_node_section(root, "dp", {"budget_epsilon": 1000.0, "max_epsilon": 1.0})
    lf = LocalFederation(root)
    try:
        yield root, lf.fed
    finally:
        lf.close()


@pytest.fixture(scope="module")
def values(fed_dir_1126) -> dict[str, set[str]]:
    """Every value of the attacked columns at every node, as text (read from the node stores)."""
    stores = sorted(Path(fed_dir_1126).glob("*/store/current"))
    assert len(stores) == 3
    con = duckdb.connect()
    samples = [str(s / "samples.parquet") for s in stores]
    pheno = [str(s / "clinical" / "phenotypes.parquet") for s in stores]
    out: dict[str, set[str]] = {}
    for col in ("sample_id", "family_id", "population", "population_description"):
        out[col] = {r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM read_parquet(?) WHERE {col} IS NOT NULL", [samples]).fetchall()}
    out["age"] = {str(r[0]) for r in con.execute("SELECT DISTINCT age FROM read_parquet(?) WHERE age IS NOT NULL", [pheno]).fetchall()}
    out["age2"] = {str(int(a) * 2) for a in out["age"]}
    assert len(out["sample_id"]) == 1126 and len(out["population"]) >= 10 and len(out["age"]) >= 50
    return out


def _leaks(text: str, vals: set[str]) -> list[str]:
    """The values that occur in ``text`` as a token (a number not part of a longer number or word)."""
    found = []
    for v in vals:
        if re.search(r"(?<![0-9A-Za-z_.])" + re.escape(v) + r"(?![0-9A-Za-z_])", text):
            found.append(v)
    return sorted(found)


def _check_message(msg: str, names: list[str], columns: list[str], values: dict[str, set[str]]) -> None:
    for col in columns:
        assert not _leaks(msg, values[col]), f"the error carries values of {col}: {_leaks(msg, values[col])[:5]} in {msg!r}"
    for name in names:
        assert name in msg, f"the error should name {name!r}: {msg!r}"
    # DuckDB's own message text is not forwarded either
    assert not re.search(r"(Conversion|Out of Range|Invalid Input|Binder) Error", msg), msg


@pytest.mark.parametrize("combine, epsilon", MODES, ids=[f"{c}{'-dp' if e else ''}" for c, e in MODES])
@pytest.mark.parametrize("case, sql, names, columns", CASES, ids=[c[0] for c in CASES])
def test_engine_errors_carry_no_values(fed, values, combine, epsilon, case, sql, names, columns):
    _, f = fed
    with pytest.raises(NodeError) as e:
        f.sql(sql, combine=combine, epsilon=epsilon)
    _check_message(str(e.value), names, columns, values)
    assert e.value.node_code == "fragment"


def _audit_records(root: Path) -> dict[str, list[dict]]:
    out = {}
    for n in FederationConfig.load(root).nodes:
        p = root / n.name / "audit.log"
        out[n.name] = [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    return out


@pytest.mark.parametrize("combine, epsilon", [("plain", None), ("mpc", 1.0)], ids=["plain", "mpc-dp"])
def test_refusals_are_audited_without_values(fed, values, combine, epsilon):
    """The node audits each refusal; the record names the rule and the fragment's digest only."""
    root, f = fed
    before = {k: len(v) for k, v in _audit_records(root).items()}
    picked = [c for c in CASES if c[0] in ("overflow_multiplication", "division_by_zero", "text_to_number", "id_like_text_to_number")]
    for _, sql, _, _ in picked:
        with pytest.raises(NodeError):
            f.sql(sql, combine=combine, epsilon=epsilon)
    after = _audit_records(root)
    new = [r for name, recs in after.items() for r in recs[before[name]:]]
    refused = [r for r in new if r.get("decision") in ("refused", "error")]
    assert len(refused) >= len(picked), new  # at least one node refused each query, and audited it
    hex_fields = {"hash", "prev", "fragment_sha256", "query_id", "time", "seq"}
    for r in new:
        text = json.dumps({k: v for k, v in r.items() if k not in hex_fields})
        for col in ("age", "population", "family_id", "sample_id"):
            assert not _leaks(text, values[col]), f"audit record carries values of {col}: {r}"


def test_feature_query_errors_carry_no_values(fed, values):
    """The same at a node evaluating a federated-learning feature query (its errors reach the
    researcher through Flower)."""
    from genofed.federated.features import FeatureSpec, load_features

    root, _ = fed
    n = FederationConfig.load(root).nodes[0]
    config = NodeConfig.load(root / n.config)
    for sql, names, col in [
        ("SELECT sample_id, CAST(population AS INT) AS y FROM samples", ["conversion failed", "population"], "population"),
        ("SELECT s.sample_id, CAST(p.age * 2 AS TINYINT) AS y FROM samples s JOIN phenotypes p USING (sample_id)",
         ["numeric overflow", "phenotypes.age"], "age2"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_features(config, FeatureSpec(sql, "y"), "researcher", run_id="error-values")
        _check_message(str(e.value), names, [col], values)


@pytest.mark.parametrize("value, sql, kind", [
    ("Out of Range Error: Overflow in multiplication of INT64", "SELECT CAST(s AS INT) FROM t", "conversion"),
    ("Conversion Error: Type INT64 with value 5 can't be cast because the value is out of range for the destination type INT8",
     "SELECT CAST(s AS INT) FROM t", "conversion"),
    ("Invalid Input Error: Division by zero", "SELECT CAST(s AS DATE) FROM t", "conversion"),
    ("Invalid Input Error: Division by zero", "SELECT strptime(s, '%Y') FROM t", "conversion"),
])
def test_translation_is_not_steered_by_values(value, sql, kind):
    """The kind of failure is read from the exception class and the fixed start of DuckDB's
    message, never from the part that quotes data: a value shaped like another message does not
    change what the researcher is told (nor appear in it)."""
    from sqlglot import parse_one

    from genofed.engine.backends.engine_errors import translate_duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t (s VARCHAR)")
    con.execute("INSERT INTO t VALUES (?)", [value])
    with pytest.raises(duckdb.Error) as raw:
        con.execute(sql).fetchall()
    assert value in str(raw.value)  # DuckDB itself quotes it
    err = translate_duckdb(raw.value, "run the fragment", parse_one(sql, read="duckdb"))
    assert err.kind == kind and err.columns == ("s",)
    assert value not in str(err)
