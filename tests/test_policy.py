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


def _add_researcher(root, name: str, token: str, roles: dict, researcher_roles: list[str], **policy) -> None:
    import tomllib

    import tomli_w

    from genofed.connectors.config import hash_token
    from genofed.connectors.federation import FederationConfig

    for n in FederationConfig.load(root).nodes:
        path = root / n.config
        node = tomllib.loads(path.read_text())
        node["roles"] = roles
        node["researchers"].append({"name": name, "token_sha256": hash_token(token), "roles": researcher_roles})
        node["policy"].update(policy)
        path.write_text(tomli_w.dumps(node))


def _as(root, token: str):
    import genofed
    from genofed.connectors.federation import FederationConfig

    cfg = FederationConfig.load(root)
    for n in cfg.nodes:
        n.token = token
    return genofed.api.Federation(cfg, timeout=60)


@pytest.fixture(scope="module")
def roles_fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed_roles"), min_count=5, combine="plain")
    _add_researcher(root, "bob", "bob-token-123", {"genetics": {"tables": ["samples", "variants", "genotypes"], "rate_limit_per_minute": 4}},
                    ["genetics"])
    lf = LocalFederation(root)
    try:
        yield root, lf.fed
    finally:
        lf.close()


def test_researcher_outside_a_dataset_is_refused(roles_fed):
    """bob's role reads genotypes but not the clinical table: refused at every node (even sent
    straight to a node), audited with rule 'access'; the catalog bob sees lacks the table."""
    from genofed.privacy.audit import records

    root, alice = roles_fed
    bob = _as(root, "bob-token-123")
    try:
        assert "phenotypes" in alice.catalog(refresh=True).tables
        assert "phenotypes" not in bob.catalog(refresh=True).tables
        with pytest.raises(NodeError, match="roles at this node do not allow reading phenotypes"):
            bob._transports[0].run_fragment("SELECT count(*) AS _p0 FROM phenotypes", "direct", 30)
        with pytest.raises(GenofedError):
            bob.sql("SELECT avg(p.age) AS a FROM samples s JOIN phenotypes p USING (sample_id)")
        with pytest.raises(GenofedError, match="phenotypes"):
            bob.sql("SELECT * FROM gwas_linear('samples.outcome', covariates => ['phenotypes.bmi'], chrom => '22')")
        assert alice.sql("SELECT avg(p.age) AS a FROM samples s JOIN phenotypes p USING (sample_id)").num_rows == 1
        log = [r for r in records(root / "biobank_A" / "audit.log") if r.get("researcher") == "bob"]
        assert any(r["event"] == "refused" and r.get("rule") == "access" for r in log)
    finally:
        bob.close()


def test_rate_limit(roles_fed):
    """bob's role allows 4 requests a minute at each node: the fifth in a burst is refused and
    audited; alice (policy default 600) is not affected."""
    from genofed.privacy.audit import records

    root, alice = roles_fed
    bob = _as(root, "bob-token-123")
    try:
        refused = 0
        for _ in range(6):
            try:
                bob._transports[0].run_fragment("SELECT count(*) AS _p0 FROM samples", "direct", 30)
            except NodeError as e:
                assert "requests per minute" in str(e)
                refused += 1
        assert refused >= 1
        for _ in range(6):
            alice._transports[0].run_fragment("SELECT count(*) AS _p0 FROM samples", "direct", 30)
        assert any(r.get("rule") == "rate_limit" for r in records(root / "biobank_A" / "audit.log"))
    finally:
        bob.close()


def test_policy_check_points_at_the_line(tmp_path):
    from genofed.connectors.policycheck import check_policy

    p = tmp_path / "node.toml"
    good = ('[node]\nname = "a"\n\n[policy]\nmin_count = 5\nrate_limit_per_minute = 60\n\n[roles.g]\ntables = ["samples"]\n\n'
            '[[researchers]]\nname = "alice"\ntoken_sha256 = "' + "0" * 64 + '"\nroles = ["g"]\n\n'
            '[[researchers]]\nname = "bob"\ntoken_sha256 = "' + "1" * 64 + '"\n')
    p.write_text(good)
    assert not [f for f in check_policy(p) if f.level == "error"]
    cases = [
        (good.replace("min_count = 5", "min_count = 0"), 5, "min_count"),
        (good.replace("min_count = 5", "min_count = 5\nmin_cout = 5"), 6, "min_cout"),
        (good.replace('roles = ["g"]', 'roles = ["nope"]'), 14, "roles"),
        (good.replace('"' + "1" * 64 + '"', '"plain-token"'), 18, "64 hex"),
        (good.replace("rate_limit_per_minute = 60", "rate_limit_per_minute = "), 6, "invalid TOML"),
        (good.replace('tables = ["samples"]', 'tables = "samples"'), 9, "tables"),
    ]
    for text, line, words in cases:
        p.write_text(text)
        errors = [f for f in check_policy(p) if f.level == "error"]
        assert len(errors) == 1 and errors[0].line == line and words in errors[0].message, (words, errors)
    p.write_text(good.replace("min_count = 5", "min_count = 2\nallow_plain = true"))
    warnings = {f.line: f.message for f in check_policy(p) if f.level == "warning"}
    assert "min_count" in warnings[5] and "allow_plain" in warnings[6]
