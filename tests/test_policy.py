"""Node policy: hidden columns are not queryable by any route (SQL, a fragment sent straight
to the node, analysis expressions) and do not appear in the catalog; policy values are checked
at start-up with messages that name the key."""

from __future__ import annotations

import pytest
from conftest import LocalFederation, clone_federation

from genofed.connectors.config import NodeConfig
from genofed.engine.errors import ConfigError, GenofedError, NodeError, PlanningError


@pytest.fixture(scope="module")
def hidden_fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_hidden"), min_count=5, combine="plain",
                            hidden_columns=["samples.family_id", "phenotypes.bmi"])
    lf = LocalFederation(root)
    try:
        yield lf.fed
    finally:
        lf.close()


def test_hidden_columns_are_not_queryable(hidden_fed, fed1126):
    # the column exists in the data: without the policy it is queryable
    assert fed1126.sql("SELECT family_id IS NULL AS missing, count(*) AS n FROM samples GROUP BY ALL").num_rows >= 1
    tables = hidden_fed.catalog(refresh=True).tables
    assert "family_id" not in tables["samples"] and "bmi" not in tables["phenotypes"] and "age" in tables["phenotypes"]
    with pytest.raises(PlanningError, match="family_id"):
        hidden_fed.sql("SELECT family_id IS NULL AS missing, count(*) AS n FROM samples GROUP BY ALL")
    with pytest.raises(GenofedError):
        hidden_fed.sql("SELECT avg(bmi) AS b FROM phenotypes")
    # straight to a node, bypassing the coordinator's catalog: the node refuses it
    with pytest.raises(NodeError, match="bmi"):
        hidden_fed._transports[0].run_fragment("SELECT avg(bmi) AS _p0 FROM phenotypes", "direct", 30)
    # nor through an analysis expression
    with pytest.raises(GenofedError, match="bmi"):
        hidden_fed.sql("SELECT * FROM gwas_linear('samples.outcome', covariates => ['phenotypes.bmi'], chrom => '22')")
    assert hidden_fed.sql("SELECT avg(age) AS a FROM phenotypes").num_rows == 1


def test_policy_errors_name_the_key(tmp_path):
    base = {"node": {"name": "n", "store": "s"}, "researchers": [{"name": "a", "token_sha256": "0" * 64}]}
    for policy, words in (({"hidden_columns": "samples.sex"}, "hidden_columns"), ({"hidden_columns": ["samples.sample_id"]}, "sample_id"),
                          ({"min_cases": -1}, "min_cases"), ({"glm_max_param_ratio": 2}, "glm_max_param_ratio"), ({"nope": 1}, "nope")):
        with pytest.raises(ConfigError, match=words):
            NodeConfig.from_dict({**base, "policy": policy}, base=tmp_path)
