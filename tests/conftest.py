"""Shared fixtures: real node servers on loopback over real 1000 Genomes data.

Real data is read from ../shared/data (override with GENOFED_SHARED_DATA). Locally a missing
file skips the test with a message; with GENOFED_REQUIRE_REAL=1 (CI) it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))

import genofed  # noqa: E402
from genofed.connectors.federation import (  # noqa: E402,F401
    FederationConfig,
    down,
    history_gates_off,
    init_federation,
    up,
)

REQUIRE_REAL = os.environ.get("GENOFED_REQUIRE_REAL") == "1"

# Hail lives in its own environment (genofed[hail] cannot share one with flwr): its modules are
# collected there (make test-hail, GENOFED_REQUIRE_HAIL=1), and not where Hail is not installed.
from genofed.engine.backends.hail_session import hail_available  # noqa: E402

collect_ignore_glob = [] if hail_available() or os.environ.get("GENOFED_REQUIRE_HAIL") == "1" else ["test_hail_*.py"]


def shared_data() -> Path:
    env = os.environ.get("GENOFED_SHARED_DATA")
    return Path(env) if env else (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def need(path: Path) -> Path:
    """A real-data file: skip locally when missing, fail in CI."""
    if not path.exists():
        msg = f"real data {path} is missing (set GENOFED_SHARED_DATA or provide ../shared/data)"
        if REQUIRE_REAL:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def need_tool(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        msg = f"reference tool {tool} is not installed (apt-get install {tool})"
        if REQUIRE_REAL:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


P1126 = "1kg_phase3_subset_1126"


@pytest.fixture(scope="session")
def data_1126() -> dict[str, Path]:
    d = shared_data() / P1126
    return {
        "vcf": need(d / f"{P1126}.vcf.gz"),
        "samples": need(d / "samples_1126.tsv"),
        "split": need(d / "suggested_3node_split.tsv"),
    }


@pytest.fixture(scope="session")
def phenotypes_1126(tmp_path_factory, data_1126) -> Path:
    from fixtures_data import make_phenotypes_1126

    return make_phenotypes_1126(tmp_path_factory.mktemp("pheno") / "phenotypes.csv")


class LocalFederation:
    """A started local federation; ``fed`` is a connected :class:`genofed.api.Federation`."""

    def __init__(self, root: Path):
        self.root = root
        up(root)
        self.fed = genofed.connect(root, timeout=60)

    def close(self) -> None:
        self.fed.close()
        down(self.root)


def clone_federation(src: Path, dst: Path, *, min_count: int, node_min_count: int | None = None, combine: str | None = None,
                     gates: bool = True, **policy) -> Path:
    """A second federation over the same stores with another policy (no re-ingest); it gets its
    own key holder (a copy of the source's key holder config). ``gates=False`` switches off the
    history-based gates (:func:`history_gates_off`)."""
    cfg = FederationConfig.load(src)
    dst.mkdir(parents=True, exist_ok=True)
    import tomllib

    if cfg.keyholder.get("config"):
        kh = dst / cfg.keyholder["config"]
        kh.parent.mkdir(parents=True, exist_ok=True)
        kh.write_text((src / cfg.keyholder["config"]).read_text())

    for n in cfg.nodes:
        (dst / n.name).mkdir(exist_ok=True)
        node = tomllib.loads((src / n.config).read_text())
        node["node"]["store"] = str((src / n.name / node["node"]["store"]).resolve())
        node["policy"]["min_count"] = node_min_count if node_min_count is not None else min_count
        node["policy"].update(policy)
        (dst / n.config).write_text(tomli_w.dumps(node))
    for tls_dir in [src / "tls", src / "keyholder" / "tls", *(src / n.name / "tls" for n in cfg.nodes)]:  # TLS material, when init made it
        if tls_dir.exists():
            shutil.copytree(tls_dir, dst / tls_dir.relative_to(src), dirs_exist_ok=True)
    new = FederationConfig(dst, dst.name, cfg.nodes, min_count=min_count, combine=combine or cfg.combine, keyholder=dict(cfg.keyholder), tls=dict(cfg.tls))
    for n in new.nodes:
        n.port = 0
    new.save()
    if not gates:
        history_gates_off(dst)
    return dst


def set_node_section(root: Path, section: str, table: dict, merge: bool = False) -> Path:
    """Write ``[section]`` into every node.toml of the federation at ``root`` (e.g. ``limits``, ``dp``);
    ``merge``: add these keys to the section's existing ones."""
    import tomllib

    for n in FederationConfig.load(root).nodes:
        p = root / n.config
        node = tomllib.loads(p.read_text())
        node[section] = {**(node.get(section, {}) if merge else {}), **table}
        p.write_text(tomli_w.dumps(node))
    return root


@pytest.fixture(scope="session")
def fed_dir_1126(tmp_path_factory, data_1126, phenotypes_1126) -> Path:
    root = tmp_path_factory.mktemp("fed1126")
    init_federation(root, data_1126["vcf"], data_1126["samples"], data_1126["split"],
                    clinical={"phenotypes": phenotypes_1126}, min_count=1, allow_plain=True, combine="plain")
    return root


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> tuple[Path, dict]:
    """The demo cohort (3,000 simulated samples, planted effects in truth.json) on three nodes:
    ``root/fed`` (plain allowed, history gates off) and the truth."""
    import json

    from genofed.genomics.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("demo")
    paths = simulate_cohort(root / "cohort", n_samples=3000, seed=1)
    init_federation(root / "fed", paths.vcf, paths.samples, paths.split, clinical={"phenotypes": paths.phenotypes},
                    min_count=5, allow_plain=True, combine="plain")
    history_gates_off(root / "fed")  # whole-genome analyses of one cohort, many times over (gates: tests/attacks/)
    return root, json.loads(paths.truth.read_text())


@pytest.fixture(scope="session")
def fed_dir_1126_5nodes(tmp_path_factory, data_1126, phenotypes_1126) -> Path:
    """The same cohort dealt round-robin over five nodes."""
    root = tmp_path_factory.mktemp("fed1126x5")
    init_federation(root, data_1126["vcf"], data_1126["samples"], None, n_nodes=5,
                    clinical={"phenotypes": phenotypes_1126}, min_count=1, allow_plain=True, combine="plain")
    return root


@pytest.fixture(scope="session")
def fed1126_5nodes(fed_dir_1126_5nodes):
    lf = LocalFederation(fed_dir_1126_5nodes)
    yield lf.fed
    lf.close()


@pytest.fixture(scope="session")
def fed1126(fed_dir_1126):
    lf = LocalFederation(fed_dir_1126)
    yield lf.fed
    lf.close()


@pytest.fixture(scope="session")
def fed1126_k5(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("fed1126_k5"), min_count=5, gates=False)
    lf = LocalFederation(root)
    yield lf.fed
    lf.close()


@pytest.fixture(scope="session")
def pooled_chr22(tmp_path_factory, data_1126, phenotypes_1126):
    """For the attack tests (``tests/attacks/``): the pooled oracle (``tests/oracle.py``: DuckDB, genotypes read with scikit-allel) over all
    1126 samples, the ``phenotypes`` table and the genotypes of chromosome 22 (the region the
    attack tests query), plus ``split(sample_id, node)`` from the suggested three-node split.
    Built once per run (a couple of seconds); tests only read it."""
    from cyvcf2 import VCF
    from oracle import build_pooled

    path = tmp_path_factory.mktemp("chr22") / "chr22.vcf"
    vcf = VCF(str(data_1126["vcf"]))
    with open(path, "w") as f:
        f.write(vcf.raw_header)
        for rec in vcf("22"):
            f.write(str(rec))
    vcf.close()
    con = build_pooled(None, path, data_1126["samples"], {"phenotypes": phenotypes_1126})
    con.execute(f"CREATE TABLE split AS SELECT \"sample.id\" AS sample_id, node FROM read_csv('{data_1126['split']}', delim='\t', header=true)")
    return con


@pytest.fixture(scope="session")
def pooled1126(data_1126, phenotypes_1126):
    from oracle import build_pooled

    return build_pooled(None, data_1126["vcf"], data_1126["samples"], {"phenotypes": phenotypes_1126})
