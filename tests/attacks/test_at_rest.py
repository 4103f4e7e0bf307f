"""Attack: reading secrets and privacy state at rest (security review, issue 18, finding 8).

Another user of a node's machine could read ``federation.toml`` (the researcher's token),
``node.toml`` (the key holder token), TLS keys, the node stores (people's genotypes and clinical
values), the privacy state (released sample sets, budgets, cached releases) and the audit logs:
all were written with the default umask (0644 files, 0755 directories).

Disclosure rule 7: secrets and state files are readable by their owner only. Oracle: the modes
of every file and directory a real local federation leaves after init, ingest, adding a
researcher and queries in every combine mode (with DP and the history gates on), walked on disk.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import LocalFederation, need, set_node_section, shared_data

from genofed.connectors.federation import FederationConfig, add_researcher, init_federation
from genofed.connectors.ingest import ingest

FILE_MODE, DIR_MODE = 0o600, 0o700


def _modes(root: Path) -> tuple[dict[Path, int], dict[Path, int]]:
    """Every file and directory under ``root`` (root included; symlinks not followed) and its mode."""
    files, dirs = {}, {root: stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                dirs[p] = stat.S_IMODE(p.lstat().st_mode)
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                files[p] = stat.S_IMODE(p.lstat().st_mode)
    return files, dirs


def _violations(root: Path) -> list[str]:
    files, dirs = _modes(root)
    bad = [f"{p.relative_to(root.parent)} {oct(m)}" for p, m in files.items() if m != FILE_MODE]
    bad += [f"{p.relative_to(root.parent)}/ {oct(m)}" for p, m in dirs.items() if m != DIR_MODE]
    return sorted(bad)


@pytest.fixture(scope="module")
def live(data_1126, phenotypes_1126, tmp_path_factory):
    """A federation made the way a researcher makes one (init: ingest, TLS, tokens), with a second
    researcher added, DP and the history gates on, that has answered queries in every mode."""
    root = tmp_path_factory.mktemp("at_rest") / "fed"
    init_federation(root, data_1126["vcf"], data_1126["samples"], data_1126["split"], clinical={"phenotypes": phenotypes_1126},
                    min_count=5, allow_plain=True, combine="plain")
    set_node_section(root, "dp", {"budget_epsilon": 100.0, "max_epsilon": 1.0})
    add_researcher(root, "bob")
    lf = LocalFederation(root)
    try:
        f = lf.fed
        f.sql("SELECT s.population, count(*) AS n FROM samples s GROUP BY 1")  # the differencing tracker
        f.sql("SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an FROM genotypes g "
              "WHERE g.chrom = '22' AND g.pos < 18000000 GROUP BY 1")  # the re-identification gate
        f.sql("SELECT count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) WHERE p.age > 40", epsilon=0.5)  # the DP ledger
        f.sql("SELECT s.sex, count(*) AS n FROM samples s GROUP BY 1", combine="mpc")
        f.sql("SELECT s.sex, avg(s.outcome) AS m FROM samples s GROUP BY 1", combine="he")
        yield root
    finally:
        lf.close()


def test_federation_tree_is_owner_only(live):
    root = live
    fed = FederationConfig.load(root)
    # what must be there (so the walk below is not vacuous)
    expected = [root / "federation.toml", root / "tls" / "ca.key", root / "keyholder" / "keyholder.toml",
                root / "keyholder" / "tls" / "keyholder.key"]
    for n in fed.nodes:
        d = root / n.name
        expected += [d / "node.toml", d / "tls" / "node.key", d / "audit.log", d / "node.log", d / "node.pid", d / "node.port",
                     d / "store" / "current" / "samples.parquet", d / "store" / "current" / "clinical" / "phenotypes.parquet",
                     d / "store" / "current" / "manifest.json", d / "state" / "ledger.sqlite", d / "state" / "ledger.sqlite-wal",
                     d / "state" / "risk.sqlite"]
    missing = [str(p.relative_to(root)) for p in expected if not p.exists()]
    assert not missing, missing
    for n in fed.nodes:  # the sample-set history of the differencing defence too, whatever its file is called
        assert len(list((root / n.name / "state").glob("*.sqlite"))) >= 3
    assert not _violations(root), "\n".join(_violations(root))


def test_tokens_live_only_in_owner_only_files(live):
    root = live
    token = FederationConfig.load(root).nodes[0].token
    holders = [p for p in root.rglob("*.toml") if token in p.read_text()]
    assert holders == [root / "federation.toml"]
    assert stat.S_IMODE(holders[0].stat().st_mode) == FILE_MODE


def test_reingest_swaps_atomically_and_stays_private(tmp_path):
    """A store written again: the new version replaces the old one atomically, and everything in
    it (planes, Parquet tables written by Arrow, the manifest) is owner-only."""
    vcf = need(shared_data() / "extras" / "va_chr22_5samples.vcf.gz")
    store = tmp_path / "store"
    first = ingest(store, vcf).store
    second = ingest(store, vcf, clinical={"labs": pa.table({"sample_id": ["HG00096"], "x": [1.0]})}).store
    assert first != second and not first.exists()
    assert (store / "current").resolve() == second.resolve()
    assert {p.name for p in second.iterdir()} >= {"manifest.json", "samples.parquet", "variants.parquet", "clinical"}
    assert not _violations(store), "\n".join(_violations(store))


def test_state_left_readable_by_an_earlier_version_is_tightened(tmp_path):
    """Privacy state files a previous version left 0644 (SQLite with its -wal and -shm, the audit
    log) become owner-only when the node opens them again."""
    from genofed.privacy.audit import AuditLog
    from genofed.privacy.ledger import Ledger
    from genofed.privacy.tracker import state_db

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    for name, reopen in (("tracker.sqlite", state_db), ("ledger.sqlite", Ledger)):
        con = sqlite3.connect(state / name)  # as an earlier version left it: 0644, with -wal and -shm
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS t (x)")
        for p in state.glob(name + "*"):
            os.chmod(p, 0o644)
        reopen(state / name).close()
        con.close()
    log = tmp_path / "audit.log"
    log.write_text("")
    os.chmod(log, 0o644)
    AuditLog(log).append("test", decision="answered")
    assert not _violations(state), "\n".join(_violations(state))
    assert stat.S_IMODE(log.stat().st_mode) == FILE_MODE


def test_mpc_session_files_are_private():
    """A node's partials wait for its MPC party in a private directory, as owner-only files."""
    from genofed.privacy.secure.mpc import NodeSessions

    sessions = NodeSessions()
    try:
        sessions.prepare("at-rest", pa.table({"n": pa.array([3], pa.int64())}), [], ["n"], "SELECT 1")
        workdir = sessions._sessions["at-rest"].workdir
        assert (workdir / "partials.arrow").exists()
        assert not _violations(workdir), "\n".join(_violations(workdir))
    finally:
        sessions.close()
