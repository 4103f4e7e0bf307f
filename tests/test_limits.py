"""Per-query resource limits at the node ([limits]): time, memory, groups per answer, genotypes
scanned, concurrent slots, and queries nobody waits for any more.

Real node servers (in this process) over the 1126-sample 1000 Genomes subset. Every refusal must
name the node and the limit, be audited at the node, release nothing, and leave the node serving;
every query under the limits must still equal DuckDB over the pooled data.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import clone_federation, set_node_section
from inproc import serve_in_process

import genofed
from genofed.connectors.client import FlightTransport
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.engine.errors import ConfigError, NodeError
from genofed.privacy.audit import records, verify

# row-wise (a condition on genotype values the count kernels cannot take): about a second per node
SLOW = ("SELECT s.population, count(*) AS n FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id "
        "WHERE g.dosage + g.ploidy > 2 GROUP BY 1")
PER_VARIANT = "SELECT g.variant_id, sum(g.dosage) AS ac FROM genotypes g GROUP BY 1"
SMALL = "SELECT s.population, count(*) AS n FROM samples s GROUP BY 1"


def _limited(src: Path, dst: Path, **limits) -> Path:
    return set_node_section(clone_federation(src, dst, min_count=1, gates=False), "limits", limits)


def _refusals(root: Path) -> dict[str, list[str]]:
    out = {}
    for n in FederationConfig.load(root).nodes:
        log = root / n.name / "audit.log"
        assert verify(log).ok
        out[n.name] = [r.get("rule") for r in records(log) if r["event"] == "refused"]
    return out


def _pooled_small(pooled1126):
    return sorted(pooled1126.sql("SELECT population, count(*) FROM samples GROUP BY 1").fetchall())


def _answer(fed, sql=SMALL):
    t = fed.sql(sql, combine="plain").to_arrow()
    return sorted(zip(*[t.column(i).to_pylist() for i in range(t.num_columns)], strict=True))


def test_time_limit_stops_the_fragment_and_the_node_serves_on(fed_dir_1126, tmp_path, pooled1126):
    root = _limited(fed_dir_1126, tmp_path / "time", query_seconds=0.1)
    with serve_in_process(root, wrap=lambda b, name: _Slow(b, 0.3)):  # a slow node: its storage lags 0.3 s
        fed = genofed.connect(root, timeout=60)
        t0 = time.monotonic()
        with pytest.raises(NodeError, match=r"node 'biobank_\w' resource_limit: the fragment ran past this node's time limit \(0.1 s\)"):
            fed.sql(SLOW, combine="plain")
        assert time.monotonic() - t0 < 5
        assert _answer(fed) == _pooled_small(pooled1126)
        fed.close()
    refused = _refusals(root)
    assert any("time_limit" in r for r in refused.values())
    for n in FederationConfig.load(root).nodes:  # a node that stopped the fragment released nothing for it
        recs = list(records(root / n.name / "audit.log"))
        stopped = {r["query_id"] for r in recs if r["event"] == "refused" and r.get("rule") == "time_limit"}
        assert not [r for r in recs if r["event"] == "release" and r.get("query_id") in stopped]


def test_result_rows_and_scan_limits(fed_dir_1126, tmp_path, pooled1126):
    root = _limited(fed_dir_1126, tmp_path / "rows", max_result_rows=5000, max_scan_genotypes=2_000_000)
    with serve_in_process(root):
        fed = genofed.connect(root, timeout=60)
        with pytest.raises(NodeError, match=r"resource_limit: the query would scan about .* genotypes, more than this node's limit of 2e\+06"):
            fed.sql(PER_VARIANT, combine="plain")
        # restricted to a region: under both limits, and exact
        q = PER_VARIANT.replace("GROUP BY", "WHERE g.pos < 16100000 GROUP BY")
        got = _answer(fed, q)
        want = sorted(pooled1126.sql("SELECT variant_id, sum(dosage) FROM genotypes WHERE pos < 16100000 GROUP BY 1").fetchall())
        assert got == [(v, int(a)) for v, a in want] and 0 < len(got) <= 5000
        fed.close()
    root = _limited(fed_dir_1126, tmp_path / "rows2", max_result_rows=5000)
    with serve_in_process(root):
        fed = genofed.connect(root, timeout=60)
        with pytest.raises(NodeError, match=r"resource_limit: the fragment would return more than 5,000 groups"):
            fed.sql(PER_VARIANT, combine="plain")
        fed.close()
    assert all("result_limit" in r for r in _refusals(root).values())


def test_memory_limit_refuses_before_allocating(fed_dir_1126, tmp_path, pooled1126):
    root = _limited(fed_dir_1126, tmp_path / "mem", memory_mb=64)
    with serve_in_process(root):
        fed = genofed.connect(root, timeout=60)
        with pytest.raises(NodeError, match=r"resource_limit: reading [\d,]+ genotypes row by row would need about [\d.]+ \w+ of memory, "
                                            r"more than this node's per-query limit of 64 MiB"):
            fed.sql(SLOW, combine="plain")
        assert _answer(fed) == _pooled_small(pooled1126)
        fed.close()
    assert all("memory_limit" in r for r in _refusals(root).values())


class _Slow:
    """A node whose backend lags ``delay`` seconds before each fragment (an injected fault: slow
    storage), and tells when a fragment has started."""

    def __init__(self, backend, delay: float, started: threading.Event | None = None):
        self._b, self._delay, self._started = backend, delay, started

    def execute(self, fragment):
        if self._started is not None:
            self._started.set()
        time.sleep(self._delay)
        return self._b.execute(fragment)

    def __getattr__(self, name):
        return getattr(self._b, name)


def test_slots_queue_then_busy(fed_dir_1126, tmp_path, pooled1126):
    """One slot: a second fragment waits for it; one that cannot get it within queue_seconds is
    told the node is busy (and may retry), and nothing is lost."""
    root = _limited(fed_dir_1126, tmp_path / "busy", max_concurrent=1, queue_seconds=0.2)
    started = {n.name: threading.Event() for n in FederationConfig.load(root).nodes}
    with serve_in_process(root, wrap=lambda b, name: _Slow(b, 1.0, started[name])):
        slow = genofed.connect(root, timeout=60)
        errors: list[BaseException] = []

        def run_slow():
            try:
                slow.sql(SLOW, combine="plain")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=run_slow)
        t.start()
        for ev in started.values():  # the slow fragment holds every node's only slot
            assert ev.wait(30)
        cfg = FederationConfig.load(root)
        n = cfg.nodes[0]
        direct = FlightTransport(n.name, n.location(root), n.token, tls=cfg.client_tls())
        frag = slow._coord.plan(SMALL).fragment_sql
        with pytest.raises(NodeError, match=r"busy: this node is already running 1 queries and none finished within 0.2 s; retry"):
            direct.run_fragment(frag, "q-busy", timeout=30)
        direct.close()
        # the coordinator retries a busy node with backoff: the query waits for the slot, then answers
        fed = genofed.connect(root, timeout=60)
        assert _answer(fed) == _pooled_small(pooled1126)
        t.join(60)
        assert not errors
        fed.close()
        slow.close()
    assert "busy" in _refusals(root)[n.name]  # audited where it was refused


def test_a_query_nobody_waits_for_is_stopped(fed_dir_1126, tmp_path, pooled1126):
    """The coordinator gives up after 0.3 s: the nodes stop the fragment (the call is cancelled)
    instead of computing for nobody, and their single slot is free for the next query."""
    root = _limited(fed_dir_1126, tmp_path / "cancel", max_concurrent=1, queue_seconds=5)
    with serve_in_process(root, wrap=lambda b, name: _Slow(b, 1.0)):
        impatient = genofed.connect(root, timeout=0.3)
        with pytest.raises(NodeError, match=r"timeout"):
            impatient.sql(SLOW, combine="plain")
        impatient.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all("cancelled" in r for r in _refusals(root).values()):
            time.sleep(0.1)
        assert all("cancelled" in r for r in _refusals(root).values())
        fed = genofed.connect(root, timeout=60)
        assert _answer(fed) == _pooled_small(pooled1126)
        fed.close()


@pytest.mark.parametrize("limits, match", [
    ({"query_seconds": 0}, r"\[limits\] query_seconds must be a number > 0"),
    ({"max_concurrent": 1.5}, r"\[limits\] max_concurrent must be a whole number"),
    ({"memory_mb": True}, r"\[limits\] memory_mb must be a number > 0"),
    ({"max_scan_genotypes": -1}, r"\[limits\] max_scan_genotypes must be a number ≥ 0 \(0 is unlimited\)"),
    ({"query_secs": 5}, r"unknown \[limits\] keys \['query_secs'\]"),
])
def test_bad_limits_config(tmp_path, limits, match):
    data = {"node": {"name": "n"}, "limits": limits, "researchers": [{"name": "r", "token_sha256": "0" * 64}]}
    with pytest.raises(ConfigError, match=match):
        NodeConfig.from_dict(data, base=tmp_path)
    ok = NodeConfig.from_dict({**data, "limits": {"query_seconds": 10, "max_scan_genotypes": 0}}, base=tmp_path)
    assert ok.limits.query_seconds == 10.0 and ok.limits.max_scan_genotypes == 0
    assert NodeConfig.from_dict(ok.to_toml(), base=tmp_path).limits == ok.limits
