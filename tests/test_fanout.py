"""Coordinator fan-out: a 10-node federation over a simulated cohort.

* A cohort of 1,500 samples x ~2,500 bi-allelic chr22 sites is simulated with the repository's
  own simulator (:func:`genofed.genomics.simulate.simulate_cohort`: msprime over stdpopsim's
  OutOfAfrica_3G09, populations YRI/CEU/CHB, ~0.5 % missing calls, ~1 % unphased sites); its
  sample sheet gets two numeric columns (``outcome`` with ~2 % NULLs, ``status`` 0/1) and the
  simulator's ``phenotypes`` (age, sex, bmi, ldl with NULLs, t2d) is the clinical table. No
  external data, so nothing here skips.
* ``init_federation(n_nodes=10)`` deals the samples round-robin over ten node stores, each with
  its own node.toml, TLS certificate, audit log and privacy state. The ten nodes are
  served by ten real :class:`~genofed.connectors.node.NodeServer` Arrow Flight servers (TLS on
  loopback) and the HE key holder by a real ``KeyHolderServer``, all started in this process:
  ``up`` would start them as eleven processes, which on a 2-core machine costs 14-21 s to start
  and 4-7 s to stop, too slow for this module. Each node's real backend is wrapped only to
  inject a delay before a fragment executes (fault injection); everything else is production
  code: Flight transport, node validation and policy, coordinator, combine.
* A corpus of core-style queries (samples-only aggregates with GROUP BY / HAVING / ORDER BY /
  LIMIT, joins with the clinical table, allele frequencies by population x variant, het/hom
  counts, call rates, dosage means, CTE burden, regressions) must equal DuckDB over the pooled
  data (``tests/oracle.py``, an independent scikit-allel reader): keys and counts exactly, reals
  to 1e-9 relative. MPC and HE run with all ten nodes as parties.
* Concurrency: with every node delayed D seconds a query takes ~D, not 10 D, and all ten nodes
  are seen waiting at the same time. A node slower than the federation's timeout makes the
  query fail with a NodeError naming it (code ``timeout``) within the timeout plus a small
  margin, and its late answer does not disturb the queries that follow. A transport that hangs
  past its own deadline is cut by the coordinator's deadline (timeout + 2 s), and the thread it
  holds does not starve the next queries.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from oracle import build_pooled, to_pooled_sql

import genofed
from genofed.connectors.client import FlightTransport
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig, history_gates_off, init_federation
from genofed.connectors.node import NodeServer, make_backend
from genofed.engine.coordinator import Coordinator
from genofed.engine.errors import NodeError

N_NODES = 10
N_SAMPLES = 1500
SEED = 20260610
START = 20_000_000  # the simulated chr22 window: [START, START + LENGTH)
LENGTH = 150_000
NODE_NAMES = sorted(f"node_{i + 1}" for i in range(N_NODES))  # config order; sample i -> node_{i % 10 + 1}

REL, ABS = 1e-9, 1e-9
TOL = {"plain": (REL, ABS), "mpc": (1e-9, 1e-8), "he": (1e-6, 1e-7)}  # as tests/test_secure_combine.py


def _r(lo_kb: int, hi_kb: int) -> str:
    """A region of the simulated window, in kb from its start."""
    return f"g.chrom = '22' AND g.pos BETWEEN {START + lo_kb * 1000} AND {START + hi_kb * 1000}"


# ------------------------------------------------------------------------------------ corpus
# The core corpus (tests/corpus.py) rewritten for the simulated cohort's columns and window:
# samples(sample_id, pop, super_pop, sex 'male'/'female', outcome DOUBLE with NULLs, status 0/1),
# phenotypes(sample_id, age, sex 0/1, bmi, ldl with NULLs, t2d 0/1), chr22 only.
SIM_CORPUS: list[tuple[str, str]] = [
    # samples only
    ("s_count", "SELECT count(*) AS n, count(outcome) AS n_outcome FROM samples"),
    ("s_by_pop", "SELECT pop, count(*) AS n, avg(outcome) AS mean_outcome, sum(status) AS cases "
                 "FROM samples GROUP BY pop ORDER BY pop"),
    ("s_by_superpop_sex", "SELECT super_pop, sex, count(*) AS n, avg(outcome) AS m, var_samp(outcome) AS vs "
                          "FROM samples GROUP BY super_pop, sex ORDER BY super_pop, sex"),
    ("s_moments", "SELECT count(outcome) AS n, sum(outcome) AS s, avg(outcome) AS mean, var_samp(outcome) AS vs, "
                  "var_pop(outcome) AS vp, stddev_samp(outcome) AS sds, stddev_pop(outcome) AS sdp FROM samples"),
    ("s_having", "SELECT pop, sex, count(*) AS n, avg(outcome) AS m FROM samples GROUP BY pop, sex "
                 "HAVING count(*) >= 250 ORDER BY n DESC, pop, sex"),
    ("s_order_limit", "SELECT pop, sex, avg(outcome) AS m FROM samples GROUP BY pop, sex "
                      "ORDER BY m DESC, pop, sex LIMIT 4"),
    ("s_case_null_group", "SELECT CASE WHEN outcome >= 10 THEN 'high' WHEN outcome < 10 THEN 'low' END AS band, "
                          "count(*) AS n, sum(status) AS cases FROM samples GROUP BY band ORDER BY band NULLS LAST"),
    ("s_bivariate", "SELECT corr(outcome, status) AS r, covar_samp(outcome, status) AS cs, "
                    "regr_slope(outcome, status) AS b1, regr_intercept(outcome, status) AS b0 FROM samples"),
    # phenotypes, and joins with it
    ("p_summary_nulls", "SELECT count(*) AS n, count(bmi) AS n_bmi, count(ldl) AS n_ldl, avg(bmi) AS mean_bmi, "
                        "avg(ldl) AS mean_ldl, stddev_samp(ldl) AS sd_ldl, sum(t2d) AS cases FROM phenotypes"),
    ("p_age_decade", "SELECT floor(age / 10) * 10 AS decade, count(*) AS n, avg(ldl) AS mean_ldl, "
                     "var_pop(bmi) AS vp_bmi FROM phenotypes GROUP BY floor(age / 10) * 10 ORDER BY decade"),
    ("sp_superpop", "SELECT s.super_pop, count(*) AS n, avg(p.ldl) AS mean_ldl, avg(p.bmi) AS mean_bmi, "
                    "sum(p.t2d) AS t2d FROM samples s JOIN phenotypes p USING (sample_id) "
                    "GROUP BY s.super_pop ORDER BY s.super_pop"),
    ("sp_regression_by_sex", "SELECT s.sex, regr_slope(p.ldl, p.age) AS b1, regr_intercept(p.ldl, p.age) AS b0, "
                             "corr(p.bmi, s.outcome) AS r FROM samples s JOIN phenotypes p "
                             "ON s.sample_id = p.sample_id GROUP BY s.sex ORDER BY s.sex"),
    ("sp_in_subquery", "SELECT pop, count(*) AS n, avg(outcome) AS m FROM samples "
                       "WHERE sample_id IN (SELECT sample_id FROM phenotypes WHERE t2d = 1) GROUP BY pop ORDER BY pop"),
    ("sp_cte", "WITH older AS (SELECT sample_id, ldl, bmi FROM phenotypes WHERE age >= 65) "
               "SELECT s.pop, count(*) AS n, avg(o.ldl) AS mean_ldl, var_samp(o.bmi) AS vs_bmi "
               "FROM older o JOIN samples s USING (sample_id) GROUP BY s.pop ORDER BY s.pop"),
    # genotypes
    ("g_count", "SELECT count(*) AS n_calls, count(dosage) AS n_called, sum(dosage) AS alt_alleles "
                "FROM genotypes WHERE chrom = '22'"),
    ("g_af_region", "SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
                    f"allele_freq(g.dosage) AS af FROM genotypes g WHERE {_r(0, 20)} "
                    "GROUP BY g.variant_id ORDER BY g.variant_id"),
    ("g_pop_x_variant", "SELECT s.pop, g.variant_id, allele_count(g.dosage) AS ac, allele_freq(g.dosage) AS af "
                        f"FROM genotypes g JOIN samples s USING (sample_id) WHERE {_r(20, 40)} "
                        "GROUP BY s.pop, g.variant_id ORDER BY s.pop, g.variant_id"),
    ("g_het_hom_callrate", "SELECT g.variant_id, het_count(g.dosage) AS het, hom_alt_count(g.dosage) AS hom, "
                           f"call_rate(g.dosage) AS cr, count(*) AS n FROM genotypes g WHERE {_r(40, 60)} "
                           "GROUP BY g.variant_id ORDER BY g.variant_id"),
    ("g_having_limit", "SELECT s.super_pop, g.variant_id, allele_freq(g.dosage) AS af "
                       f"FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id WHERE {_r(60, 90)} "
                       "GROUP BY s.super_pop, g.variant_id HAVING allele_count(g.dosage) >= 10 "
                       "ORDER BY af DESC, s.super_pop, g.variant_id LIMIT 20"),
    ("g_pop_sex_whole_window", "SELECT s.pop, s.sex, count(*) AS n, het_count(g.dosage) AS het, "
                               "hom_alt_count(g.dosage) AS hom, allele_freq(g.dosage) AS af, avg(g.dosage) AS m "
                               "FROM genotypes g JOIN samples s USING (sample_id) WHERE g.chrom = '22' "
                               "GROUP BY s.pop, s.sex ORDER BY s.pop, s.sex"),
    ("g_bins", "SELECT floor(pos / 1e4) AS bin, count(*) AS n_calls, allele_count(dosage) AS ac, "
               "avg(dosage) AS mean_dosage FROM genotypes WHERE chrom = '22' GROUP BY floor(pos / 1e4) ORDER BY bin"),
    ("g_dosage_distribution", f"SELECT g.dosage, count(*) AS n FROM genotypes g WHERE {_r(0, 50)} "
                              "GROUP BY g.dosage ORDER BY g.dosage NULLS FIRST"),
    ("g_phased", "SELECT phased, count(*) AS n, avg(dosage) AS m FROM genotypes WHERE chrom = '22' "
                 "GROUP BY phased ORDER BY phased"),
    ("g_case_control", "SELECT g.variant_id, p.t2d, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an "
                       f"FROM genotypes g JOIN phenotypes p USING (sample_id) WHERE {_r(90, 100)} "
                       "GROUP BY g.variant_id, p.t2d ORDER BY g.variant_id, p.t2d"),
    ("g_regression", "SELECT g.variant_id, regr_slope(p.ldl, g.dosage) AS beta, regr_intercept(p.ldl, g.dosage) AS b0, "
                     f"count(p.ldl) AS n FROM genotypes g JOIN phenotypes p USING (sample_id) WHERE {_r(100, 115)} "
                     "GROUP BY g.variant_id ORDER BY g.variant_id"),
    ("g_variance", "SELECT g.variant_id, var_samp(g.dosage) AS vs, stddev_pop(g.dosage) AS sdp, avg(g.dosage) AS m "
                   f"FROM genotypes g WHERE {_r(115, 130)} GROUP BY g.variant_id ORDER BY g.variant_id"),
    ("g_expected_het", "SELECT g.variant_id, het_count(g.dosage) * 1.0 / count(g.dosage) AS obs_het, "
                       "2 * allele_freq(g.dosage) * (1 - allele_freq(g.dosage)) AS exp_het "
                       f"FROM genotypes g WHERE {_r(130, 150)} GROUP BY g.variant_id ORDER BY g.variant_id"),
    ("g_carriers", "SELECT s.pop, count(DISTINCT g.sample_id) AS carriers FROM genotypes g "
                   f"JOIN samples s USING (sample_id) WHERE {_r(0, 10)} AND g.dosage > 0 "
                   "GROUP BY s.pop ORDER BY s.pop"),
    ("g_three_way_join", "SELECT s.super_pop, p.t2d, allele_freq(g.dosage) AS af, count(DISTINCT g.sample_id) AS n_samples, "
                         "count(*) AS n_calls FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id "
                         f"JOIN phenotypes p ON p.sample_id = g.sample_id WHERE {_r(10, 30)} "
                         "GROUP BY s.super_pop, p.t2d ORDER BY s.super_pop, p.t2d"),
    ("g_cte_burden", "WITH per_sample AS (SELECT g.sample_id, sum(g.dosage) AS burden, count(*) AS n_var "
                     f"FROM genotypes g WHERE {_r(30, 80)} GROUP BY g.sample_id) "
                     "SELECT s.pop, count(*) AS n, avg(ps.burden) AS mean_burden, stddev_samp(ps.burden) AS sd_burden "
                     "FROM per_sample ps JOIN samples s USING (sample_id) GROUP BY s.pop ORDER BY s.pop"),
    ("g_cte_burden_regression", "WITH per_sample AS (SELECT sample_id, sum(dosage) AS burden FROM genotypes "
                                "WHERE chrom = '22' GROUP BY sample_id) "
                                "SELECT regr_slope(p.ldl, ps.burden) AS b1, regr_intercept(p.ldl, ps.burden) AS b0, "
                                "corr(p.ldl, ps.burden) AS r, count(p.ldl) AS n "
                                "FROM per_sample ps JOIN phenotypes p USING (sample_id)"),
    ("g_empty_global", "SELECT count(*) AS n, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
                       "allele_freq(dosage) AS af, call_rate(dosage) AS cr FROM genotypes WHERE chrom = 'Y'"),
]
SIM_CORPUS_IDS = [q for q, _ in SIM_CORPUS]
SQL = dict(SIM_CORPUS)

# run with all ten nodes as parties (MPC: eleven MPyC party processes per query, ~5 s here)
SECURE_QUERIES = {"mpc": ["g_three_way_join"], "he": ["sp_superpop", "g_three_way_join"]}


# ------------------------------------------------------------------------------ comparison
def _norm(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return int(v)
    try:
        return float(v)  # int, Decimal, numpy scalars
    except (TypeError, ValueError):
        return v


def _key(row: tuple) -> tuple:
    return tuple((0, "") if v is None else (1, v) if isinstance(v, str) else (2, v) for v in row)


def assert_same(got: list[tuple], want: list[tuple], ordered: bool, label: str, rel: float = REL, abs_tol: float = ABS) -> None:
    """Row-for-row equality: exact for keys and counts, ``rel``/``abs_tol`` for reals."""
    got = [tuple(_norm(v) for v in r) for r in got]
    want = [tuple(_norm(v) for v in r) for r in want]
    assert len(got) == len(want), f"{label}: {len(got)} rows federated vs {len(want)} pooled"
    if not ordered:
        got, want = sorted(got, key=_key), sorted(want, key=_key)
    for i, (a, b) in enumerate(zip(got, want)):
        assert len(a) == len(b), f"{label} row {i}: {len(a)} vs {len(b)} columns"
        for x, y in zip(a, b):
            if isinstance(x, float) and isinstance(y, float):
                if math.isnan(x) or math.isnan(y):
                    assert math.isnan(x) and math.isnan(y), f"{label} row {i}: {x} vs {y}"
                else:
                    assert math.isclose(x, y, rel_tol=rel, abs_tol=abs_tol), f"{label} row {i}: {x!r} vs {y!r}"
            else:
                assert x == y, f"{label} row {i}: {x!r} vs {y!r}"


def rows(result: Any) -> list[tuple]:
    table = result.to_arrow() if hasattr(result, "to_arrow") else result.table
    return [tuple(r.values()) for r in table.to_pylist()]


def pooled_rows(pooled: Any, sql: str) -> list[tuple]:
    return pooled.execute(to_pooled_sql(sql)).fetchall()


def ordered(sql: str) -> bool:
    return "order by" in sql.lower()


def check(fed_result: Any, pooled: Any, sql: str, label: str, mode: str = "plain") -> list[tuple]:
    want = pooled_rows(pooled, sql)
    rel, abs_tol = TOL[mode]
    assert_same(rows(fed_result), want, ordered(sql), label, rel, abs_tol)
    return want


# -------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """The simulated cohort: VCF, a sample sheet with numeric columns, a phenotypes table."""
    from genofed.genomics.simulate import simulate_cohort

    d = tmp_path_factory.mktemp("fanout_cohort")
    t0 = time.perf_counter()
    paths = simulate_cohort(d, n_samples=N_SAMPLES, length_bp=LENGTH, seed=SEED, start_bp=START,
                            n_causal_ldl=2, n_causal_t2d=2)
    lines = paths.samples.read_text().splitlines()
    rng = np.random.default_rng(SEED)
    outcome = rng.normal(10.0, 2.0, len(lines) - 1)
    missing = rng.random(len(lines) - 1) < 0.02
    status = (rng.random(len(lines) - 1) < 0.3).astype(int)
    sheet = d / "samples_numeric.tsv"
    body = [f"{ln}\t{'' if m else f'{o:.3f}'}\t{s}" for ln, o, m, s in zip(lines[1:], outcome, missing, status)]
    sheet.write_text("\n".join([lines[0] + "\toutcome\tstatus", *body]) + "\n")
    print(f"\n[fanout] simulated cohort in {time.perf_counter() - t0:.1f} s")
    return {"vcf": paths.vcf, "samples": sheet, "phenotypes": paths.phenotypes}


def _build_pooled(cohort: dict[str, Path]) -> Any:
    t0 = time.perf_counter()
    con = build_pooled(None, cohort["vcf"], cohort["samples"], {"phenotypes": cohort["phenotypes"]})
    print(f"\n[fanout] pooled oracle in {time.perf_counter() - t0:.1f} s")
    return con


@pytest.fixture(scope="module")
def pooled_future(cohort):
    """The oracle is built in a thread while the node stores are ingested (two cores)."""
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        yield ex.submit(_build_pooled, cohort)


@pytest.fixture(scope="module")
def pooled(pooled_future):
    con = pooled_future.result()
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    v = con.execute("SELECT count(*) FROM variants").fetchone()[0]
    assert n == N_SAMPLES and v > 1000, (n, v)
    return con


@pytest.fixture(scope="module")
def fed10_dir(cohort, pooled_future, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fed10")
    t0 = time.perf_counter()
    init_federation(root, cohort["vcf"], cohort["samples"], None, n_nodes=N_NODES,
                    clinical={"phenotypes": cohort["phenotypes"]}, min_count=1, allow_plain=True, combine="plain")
    history_gates_off(root)  # an arithmetic test: many overlapping releases by one researcher
    print(f"\n[fanout] init_federation (10 node stores) in {time.perf_counter() - t0:.1f} s")
    return root


class _Delays:
    """Per-node delay (seconds) injected before a fragment executes, and a log of the calls."""

    def __init__(self) -> None:
        self.delay: dict[str, float] = {}
        self.release = threading.Event()  # set at teardown: sleeping handlers return at once
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []


class _DelayedBackend:
    """A node's real backend; ``execute`` first waits for the node's injected delay."""

    def __init__(self, inner: Any, node: str, delays: _Delays):
        self._inner, self._node, self._delays = inner, node, delays

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def execute(self, fragment: Any) -> Any:
        d = self._delays
        delay = d.delay.get(self._node, 0.0)
        call = {"node": self._node, "delay": delay, "enter": time.monotonic()}
        with d.lock:
            d.calls.append(call)
        if delay:
            d.release.wait(delay)
        call["woke"] = time.monotonic()
        try:
            return self._inner.execute(fragment)
        except Exception as e:  # e.g. the node's [limits] stopped a fragment whose caller had gone
            call["stopped"] = getattr(e, "rule", type(e).__name__)
            raise
        finally:
            call["done"] = time.monotonic()


@dataclass
class Nodes:
    root: Path
    delays: _Delays
    cleanup: list[Callable[[], None]] = field(default_factory=list)  # run after delays are released

    def transports(self) -> list[FlightTransport]:
        cfg = FederationConfig.load(self.root)
        tls = cfg.client_tls()
        return [FlightTransport(n.name, n.location(cfg.root), n.token, tls=tls) for n in cfg.nodes]


@pytest.fixture(scope="module")
def nodes10(fed10_dir, pooled) -> Any:  # the oracle first: it is not built beside starting nodes
    """The key holder and ten node servers, real Flight servers on loopback, in this process."""
    from genofed.privacy.secure.keyholder import KeyHolderConfig, KeyHolderServer

    root = fed10_dir
    t0 = time.perf_counter()
    nodes = Nodes(root, _Delays())
    servers: list[Any] = []
    try:
        kh = KeyHolderServer(KeyHolderConfig.load(root / "keyholder" / "keyholder.toml"))
        servers.append(kh)
        (root / "keyholder" / "keyholder.port").write_text(str(kh.port))
        for n in FederationConfig.load(root).nodes:
            cfg = NodeConfig.load(root / n.config)
            server = NodeServer(cfg, "grpc://127.0.0.1:0", backend=_DelayedBackend(make_backend(cfg), n.name, nodes.delays))
            servers.append(server)
            (root / n.name / "node.port").write_text(str(server.port))  # where FederationConfig finds it
        print(f"\n[fanout] key holder + 10 node servers listening after {time.perf_counter() - t0:.1f} s")
        yield nodes
    finally:
        nodes.delays.release.set()
        for f in nodes.cleanup:
            f()
        for s in servers:
            s.shutdown()


@pytest.fixture(scope="module")
def fed10(nodes10):
    fed = genofed.connect(nodes10.root, timeout=60)
    yield fed
    fed.close()


def _close(coord: Coordinator, ts: list[Any]) -> None:
    coord.close()
    for t in ts:
        t.close()


# ------------------------------------------------------------------- ten nodes vs the oracle
def test_ten_nodes_all_answer(fed10, pooled):
    sql = "SELECT pop, count(*) AS n FROM samples GROUP BY pop ORDER BY pop"
    t0 = time.perf_counter()
    r = fed10.sql(sql)
    print(f"\n[fanout] first query (catalog + cold nodes): {time.perf_counter() - t0:.2f} s")
    assert r.provenance.nodes == NODE_NAMES
    assert sorted(r.provenance.wire_bytes) == NODE_NAMES  # every node sent partials
    assert all(b > 0 for b in r.provenance.wire_bytes.values())
    assert sum(n for _, n in rows(r)) == N_SAMPLES
    check(r, pooled, sql, "pop counts")


@pytest.mark.parametrize("qid", SIM_CORPUS_IDS)
def test_corpus_10_nodes_equals_pooled(fed10, pooled, qid):
    sql = SQL[qid]
    want = check(fed10.sql(sql), pooled, sql, qid)
    if qid == "g_empty_global":
        assert len(want) == 1 and want[0][0] == 0
    else:
        assert want, f"{qid} returns no row on the pooled oracle: the comparison would prove nothing"


def test_every_node_holds_a_tenth(nodes10, pooled):
    """Each node alone (a one-node coordinator) answers for exactly its round-robin share."""
    sql = "SELECT super_pop, count(*) AS n, sum(status) AS cases FROM samples GROUP BY super_pop ORDER BY super_pop"
    ids = [r[0] for r in pooled.execute("SELECT sample_id FROM samples").fetchall()]  # sheet order
    counted = 0
    for t in nodes10.transports():
        members = ", ".join(f"'{s}'" for s in ids[int(t.name.split("_")[1]) - 1::N_NODES])
        coord = Coordinator([t], min_count=1, timeout=30, combine="plain")
        try:
            got = coord.query(sql)
        finally:
            _close(coord, [t])
        want = pooled.execute(sql.replace("GROUP BY", f"WHERE sample_id IN ({members}) GROUP BY")).fetchall()
        assert_same(rows(got), want, True, f"{t.name} alone")
        assert sum(r[1] for r in want) == N_SAMPLES // N_NODES
        counted += sum(r[1] for r in want)
    assert counted == N_SAMPLES


def test_a_wrong_answer_fails(fed10, nodes10, pooled):
    """The comparison is not vacuous: nine of the ten nodes, an allele count off by one, or a
    frequency off by 1e-7 relative, each fail it."""
    sql = SQL["g_pop_x_variant"]
    ts = nodes10.transports()[:-1]
    coord = Coordinator(ts, min_count=1, timeout=30, combine="plain")
    try:
        nine = coord.query(sql)
    finally:
        _close(coord, ts)
    with pytest.raises(AssertionError):
        check(nine, pooled, sql, "nine nodes")
    good = rows(fed10.sql(sql))
    want = pooled_rows(pooled, sql)
    assert_same(good, want, True, "ten nodes")
    i = max(range(len(good)), key=lambda k: good[k][3])  # the largest allele frequency
    off_by_one = list(good)
    off_by_one[i] = (*good[i][:2], good[i][2] + 1, good[i][3])
    with pytest.raises(AssertionError):
        assert_same(off_by_one, want, True, "allele count off by one")
    rounding = list(good)
    rounding[i] = (*good[i][:3], good[i][3] * (1 + 1e-7))
    with pytest.raises(AssertionError):
        assert_same(rounding, want, True, "frequency off by 1e-7")


@pytest.mark.parametrize("mode", ["mpc", "he"])
def test_secure_combine_with_ten_parties(fed10, pooled, mode):
    for qid in SECURE_QUERIES[mode]:
        sql = SQL[qid]
        t0 = time.perf_counter()
        r = fed10.sql(sql, combine=mode)
        print(f"\n[fanout] {mode} {qid}: {time.perf_counter() - t0:.2f} s with {len(r.provenance.nodes)} nodes")
        assert r.provenance.combine == mode
        assert r.provenance.nodes == NODE_NAMES
        check(r, pooled, sql, f"{qid} [{mode}]", mode)


def _median_latency(run: Callable[[str], Any], sql: str, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(sql)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_latency_ten_vs_three_nodes(fed10, nodes10, pooled):
    """Timings are reported, not asserted (a shared 2-core machine); three nodes hold exactly
    three tenths of the samples."""
    ts = nodes10.transports()[:3]
    three = Coordinator(ts, min_count=1, timeout=30, combine="plain")
    try:
        report = []
        for qid in ("g_pop_sex_whole_window",):
            sql = SQL[qid]
            r10 = fed10.sql(sql)
            check(r10, pooled, sql, qid)
            n3, n10 = (sum(r[2] for r in rows(x)) for x in (three.query(sql), r10))  # samples (x variants)
            assert n3 * N_NODES == n10 * 3, (qid, n3, n10)
            t10, t3 = _median_latency(fed10.sql, sql), _median_latency(three.query, sql)
            report.append(f"{qid}: 10 nodes {t10 * 1000:.0f} ms, 3 nodes {t3 * 1000:.0f} ms")
        print("\n[fanout] median latency: " + "; ".join(report))
    finally:
        _close(three, ts)


# ------------------------------------------------------------- delays, timeouts, late answers
def test_ten_nodes_are_answered_concurrently(nodes10, pooled):
    delays = nodes10.delays
    fed = genofed.connect(nodes10.root, timeout=30)
    try:
        sql = SQL["g_pop_x_variant"]
        check(fed.sql(sql), pooled, sql, "undelayed")  # catalog and warm-up, outside the clock
        base = _median_latency(fed.sql, sql, 1)
        D = 1.0
        delays.delay = dict.fromkeys(NODE_NAMES, D)
        delays.calls.clear()
        t0 = time.perf_counter()
        r = fed.sql(sql)
        elapsed = time.perf_counter() - t0
        delays.delay = {}
        calls = list(delays.calls)
        print(f"\n[fanout] every node delayed {D:.1f} s: query took {elapsed:.2f} s "
              f"(undelayed {base:.2f} s; one node after another would take >= {N_NODES * D:.0f} s)")
        check(r, pooled, sql, "delayed")
        assert sorted(c["node"] for c in calls) == NODE_NAMES
        # all ten nodes were waiting at the same time: the last one started before the first woke
        assert max(c["enter"] for c in calls) < min(c["woke"] for c in calls)
        assert D <= elapsed < D + 2.0, elapsed  # concurrent: ~D, not 10 D
    finally:
        delays.delay = {}
        fed.close()


def test_one_slow_node_fails_with_timeout_then_the_federation_answers(nodes10, pooled):
    delays = nodes10.delays
    T = 1.0  # the per-node timeout (federation.toml timeout_s, or connect(timeout=))
    S = T + 1.5  # node_7 answers this late
    fed = genofed.connect(nodes10.root, timeout=T)
    try:
        slow_sql, other_sql = SQL["g_het_hom_callrate"], SQL["sp_superpop"]
        check(fed.sql(slow_sql), pooled, slow_sql, "before")  # catalog and warm-up
        delays.delay = {"node_7": S}
        delays.calls.clear()
        t0 = time.monotonic()
        with pytest.raises(NodeError) as ei:
            fed.sql(slow_sql)
        elapsed = time.monotonic() - t0
        delays.delay = {}  # node_7 is fast again for new calls; the late call is still running
        print(f"\n[fanout] node_7 {S:.1f} s late, timeout {T:.1f} s: NodeError after {elapsed:.2f} s: {ei.value}")
        assert ei.value.node == "node_7" and ei.value.node_code == "timeout", str(ei.value)
        assert T - 0.05 <= elapsed < T + 1.0, elapsed
        late = next(c for c in delays.calls if c["node"] == "node_7" and c["delay"] == S)
        # the queries that follow, while and after node_7 computes its late answer, are right
        answered = 0
        while "done" not in late or time.monotonic() < late["done"] + 0.3:
            assert time.monotonic() < t0 + S + 10, "node_7's late call never ended"
            for sql in (other_sql, slow_sql):
                check(fed.sql(sql), pooled, sql, f"after the timeout: {sql[:50]}")
                answered += 1
        assert answered >= 4 and late["done"] >= t0 + S - 0.05
        # the coordinator had given up on it: the node stopped instead of computing for nobody
        assert late.get("stopped") == "cancelled", late
    finally:
        delays.delay = {}
        fed.close()


class _IgnoresItsTimeout:
    """A transport that hangs past the deadline it is given (a stuck connection): only the
    coordinator's own deadline bounds the query."""

    def __init__(self, inner: FlightTransport):
        self._inner = inner
        self.name = inner.name
        self._inflight = 0
        self._cv = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run_fragment(self, sql: str, query_id: str, timeout: float, dp: Any = None, user_sql: str | None = None) -> Any:
        with self._cv:
            self._inflight += 1
        try:
            return self._inner.run_fragment(sql, query_id, 60.0, dp, user_sql)
        finally:
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:  # not under a call still in flight
            self._cv.wait_for(lambda: self._inflight == 0, timeout=30)
        self._inner.close()


def test_coordinator_deadline_bounds_a_hung_transport(nodes10, pooled):
    delays = nodes10.delays
    ts: list[Any] = nodes10.transports()
    hung = ts[3] = _IgnoresItsTimeout(ts[3])
    T = 1.0
    coord = Coordinator(ts, min_count=1, timeout=T, combine="plain")
    nodes10.cleanup.append(lambda: _close(coord, ts))  # the hung call ends when delays are released
    sql = SQL["s_by_pop"]
    check(coord.query(sql), pooled, sql, "before")
    delays.delay = {hung.name: 30.0}
    t0 = time.perf_counter()
    with pytest.raises(NodeError) as ei:
        coord.query(sql)
    elapsed = time.perf_counter() - t0
    delays.delay = {}
    print(f"\n[fanout] hung transport, timeout {T:.1f} s: NodeError after {elapsed:.2f} s: {ei.value}")
    assert ei.value.node == hung.name and ei.value.node_code == "timeout"
    assert T <= elapsed < T + 3.0, elapsed  # the coordinator allows a node T + 2 s in all
    # the hung call still holds a worker thread: the next queries must not be starved of one
    for _ in range(2):
        check(coord.query(sql), pooled, sql, "after a hung call")
