"""Rules 1 and 6 for federated training: a feature query is read at the node by the Flower
ClientApp (:func:`genofed.federated.features.load_features`) under the same policy object as
query fragments.

The attack: a feature that is non-zero for one person (an indicator computed from their ID, or
from a rare combination of values) gets a model weight that fits that person's label, and the
model is released. Each phrasing must be refused at the node before any training; ordinary
feature queries (declared columns, coarse indicators such as sex) are read as before.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from conftest import clone_federation

from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.federated.features import FeatureSpec, TrainingRefused, load_features

JOIN = "FROM samples s JOIN phenotypes p USING (sample_id)"


@pytest.fixture(scope="module")
def node(fed_dir_1126, tmp_path_factory):
    """The first node of the 1126 federation (minimum count 5, family_id declared an identifier)."""
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_training_features"), min_count=5)
    n = FederationConfig.load(root).nodes[0]
    path = root / n.config
    text = path.read_text()
    if "identifiers" not in text:
        text = text.replace("[policy]\n", '[policy]\nidentifiers = ["samples.family_id"]\n', 1)
        path.write_text(text)
    config = NodeConfig.load(path)
    assert "samples.family_id" in config.identifiers
    return config


@pytest.fixture(scope="module")
def someone(node) -> dict:
    """One member of the node's cohort: the attacker's target (their ID and exact age/BMI)."""
    con = duckdb.connect()
    store = Path(node.store)
    cur = next(p for p in [store / "current", store] if (p / "samples.parquet").exists())
    row = con.execute(f"SELECT s.sample_id, s.family_id, p.age, p.bmi FROM read_parquet('{cur}/samples.parquet') s "
                      f"JOIN read_parquet('{cur}/clinical/phenotypes.parquet') p USING (sample_id) "
                      "WHERE p.bmi IS NOT NULL ORDER BY s.sample_id LIMIT 1").fetchone()
    assert row is not None
    return dict(zip(("sample_id", "family_id", "age", "bmi"), row, strict=True))


def _load(node, sql: str):
    return load_features(node, FeatureSpec(sql, "y"), "researcher", run_id="attack")


ATTACKS = {
    "id_indicator": "SELECT s.sample_id, s.status AS y, CAST(s.sample_id = '{sample_id}' AS INT) AS who " + JOIN,
    "id_case": "SELECT s.sample_id, s.status AS y, CASE WHEN s.sample_id = '{sample_id}' THEN 1.0 ELSE 0.0 END AS who " + JOIN,
    "id_in_cte": ("WITH t AS (SELECT sample_id, sample_id LIKE '{sample_id}' AS w FROM samples) "
                  "SELECT s.sample_id, s.status AS y, CAST(t.w AS INT) AS who FROM samples s JOIN t USING (sample_id)"),
    "declared_identifier": "SELECT s.sample_id, s.status AS y, CAST(s.family_id = '{family_id}' AS INT) AS who " + JOIN,
    "rare_values": "SELECT s.sample_id, s.status AS y, CAST(p.age = {age} AND p.bmi = {bmi} AS INT) AS who " + JOIN,
    "weighted_value": "SELECT s.sample_id, s.status AS y, p.bmi * CAST(p.age = {age} AND p.bmi = {bmi} AS INT) AS who " + JOIN,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_feature_that_singles_someone_out_is_refused(node, someone, name):
    sql = ATTACKS[name].format(**someone)
    with pytest.raises(TrainingRefused) as e:
        _load(node, sql)
    msg = str(e.value)
    assert any(w in msg for w in ("identifier", "fewer than 5 people")), msg
    for v in someone.values():  # the refusal names the rule, never the target's values
        assert str(v) not in msg


@pytest.mark.parametrize("sql", [
    "SELECT s.sample_id, s.status AS y, p.age, p.bmi, s.sex = 'female' AS female, p.smoker " + JOIN,
    "SELECT sample_id, status AS y, outcome FROM samples WHERE sample_id IN (SELECT sample_id FROM phenotypes)",
    "SELECT s.sample_id, s.status AS y, CAST(p.age >= 50 AS INT) AS older " + JOIN,
], ids=["declared_columns", "in_subquery", "coarse_indicator"])
def test_ordinary_feature_queries_are_read(node, sql):
    f = _load(node, sql)
    assert len(f.y) > 100 and f.X.shape[0] == len(f.y) and f.X.shape[1] == len(f.names) >= 1
