"""The node's release log (privacy/releases.py): what it keeps, for whom, and how it is read back."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from genofed.privacy.releases import MAX_SQL_CHARS, ReleaseLog

SHA = "ab" * 32


def test_record_get_by_query_and_list():
    log = ReleaseLog(None)
    a1 = log.record("alice", "q1", user_sql="select sex, count(*) from samples group by sex", fragment_sha256=SHA, combine="plain",
                    decision="released", at=100.0)
    b1 = log.record("bob", "q2", user_sql="SELECT 1", combine="mpc", decision="shared", at=101.0)
    a2 = log.record("alice", "q3", user_sql="SELECT * FROM gwas_linear('samples.outcome')", kind="analysis", combine="he",
                    decision="encrypted", at=102.0)
    a3 = log.record("alice", "q3", user_sql="SELECT * FROM gwas_linear('samples.outcome')", kind="analysis", combine="he",
                    decision="refused", rule="differencing", at=103.0)
    assert len({a1, b1, a2, a3}) == 4
    r = log.get(a1)
    assert r is not None and (r.researcher, r.query_id, r.time, r.combine, r.kind, r.decision, r.rule) == \
        ("alice", "q1", 100.0, "plain", "sql", "released", None)
    assert r.user_sql == "select sex, count(*) from samples group by sex" and r.fragment_sha256 == SHA
    assert log.get(10_000) is None
    assert [x.id for x in log.by_query("alice", "q3")] == [a2, a3]
    assert log.by_query("bob", "q3") == []  # another researcher's query id is not theirs
    assert [x.id for x in log.list("alice")] == [a1, a2, a3]  # oldest first
    assert [x.id for x in log.list("alice", limit=2)] == [a2, a3]  # the newest two
    assert [x.id for x in log.list("alice", since=102.0)] == [a2, a3]
    assert log.list("alice", limit=0) == [] and len(log.list("alice", limit=None)) == 3
    assert [x.researcher for x in log.list("bob")] == ["bob"]
    assert log.list("carol") == []
    assert log.count() == 4 and log.count("alice") == 3
    assert log.get(a3).to_dict()["rule"] == "differencing"


def test_keeps_only_what_the_researcher_wrote_and_hashes():
    log = ReleaseLog(None)
    cols = [r[1] for r in log._con.execute("PRAGMA table_info(releases)").fetchall()]
    assert cols == ["id", "researcher", "query_id", "time", "user_sql", "fragment_sha256", "combine", "kind", "decision", "rule"]
    long = "SELECT count(*) FROM samples WHERE " + " OR ".join(["sex = 'F'"] * 5000)
    rid = log.record("alice", "q" * 500, user_sql=long, decision="released")
    r = log.get(rid)
    assert r.user_sql == long[:MAX_SQL_CHARS] and len(r.user_sql) == 20_000
    assert len(r.query_id) == 200
    for odd in (None, 1, ["SELECT 1"], {"sql": "SELECT 1"}):
        assert log.get(log.record("alice", "q", user_sql=odd, decision="released")).user_sql is None
    lone = log.get(log.record("alice", "q", user_sql="SELECT '\ud800'", decision="released")).user_sql  # a lone surrogate from JSON
    assert lone == "SELECT '?'"


def test_rejects_unknown_decisions_and_limits():
    log = ReleaseLog(None)
    with pytest.raises(ValueError, match="unknown release decision 'error'"):
        log.record("alice", "q", decision="error")
    with pytest.raises(ValueError, match="limit must be a whole number"):
        log.list("alice", limit=-1)
    assert log.count() == 0


def test_file_is_private_and_persists(tmp_path):
    path = tmp_path / "state" / "releases.sqlite"
    log = ReleaseLog(path)
    rid = log.record("alice", "q1", user_sql="SELECT 1", decision="released")
    for p in path.parent.iterdir():  # the database and its WAL files
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    log.close()
    os.chmod(path, 0o644)
    again = ReleaseLog(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again.get(rid).user_sql == "SELECT 1"
    assert again.record("alice", "q2", decision="refused", rule="differencing") > rid  # ids are never reused
    again.close()


def test_concurrent_records_get_distinct_ids(tmp_path):
    log = ReleaseLog(tmp_path / "releases.sqlite")
    ids: list[int] = []
    lock = threading.Lock()

    def work(who: str) -> None:
        for i in range(50):
            rid = log.record(who, f"{who}{i}", user_sql=f"SELECT {i}", decision="released")
            with lock:
                ids.append(rid)

    threads = [threading.Thread(target=work, args=(f"r{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200 == log.count()
    assert all(r.query_id.startswith("r2") for r in log.list("r2"))
    log.close()
