"""Concurrent load against a running local federation, and the invariants checked after it.

Shared by ``tests/test_load.py`` (small) and ``benchmarks/bench_load.py`` (100 queries): a query
mix per researcher (plain and mpc, small aggregates and per-variant allele statistics over
thousands of variants, DP counts with identical repeats and one researcher pushing past their
budget), fired at once from a thread pool, each researcher through their own client; then,
from the nodes' own state files:

(a) every answer equals the pooled DuckDB oracle (DP answers within a generous bound of it);
(b) every node's ledger: spent = the sum of its charges ≤ the budget, every charge audited as a
    release of that query, each answered DP release charged once or served from the cache (per
    researcher a release key is charged at most once), identical DP queries got identical
    answers, and charges of failed queries belong to queries refused somewhere (audited);
(c) every node's audit log verifies, and records a release of every answered query;
(d) the membership-risk state holds, per researcher and cohort, exactly the union of the
    variants of the answered per-variant releases (no lost update).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import random
import sqlite3
import statistics
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import genofed
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.engine.errors import GenofedError
from genofed.genomics.store import NodeStore
from genofed.privacy.audit import fragment_digest, records, verify
from genofed.privacy.ledger import Ledger
from genofed.privacy.membership import MembershipGate

POPULATIONS = ("ACB", "ASW", "CEU", "CHB", "CLM", "GBR", "GIH", "JPT", "LWK", "MXL", "PUR", "YRI")
EPSILON = 0.5


@dataclass(frozen=True)
class Job:
    researcher: str
    size: str  # small | large
    combine: str  # plain | mpc
    sql: str
    epsilon: float | None = None
    tag: str = "exact"  # exact | dp | dp_repeat | dp_greedy
    variants_where: str | None = None  # large: the variant selection (over the store's variants table)
    by_population: bool = False  # large: one cohort per population, else everyone

    @property
    def cls(self) -> str:
        return f"{self.combine}/{self.size}"


@dataclass
class Outcome:
    job: Job
    seconds: float
    table: pa.Table | None = None
    provenance: Any = None
    error: str = ""
    rule: str = ""

    @property
    def ok(self) -> bool:
        return self.table is not None

    @property
    def budget_refused(self) -> bool:
        return self.rule == "dp_budget"


# -- the mix ------------------------------------------------------------------------------------

SMALL = (
    "SELECT s.population, count(*) AS n FROM samples s GROUP BY 1",
    "SELECT s.sex, avg(p.bmi) AS bmi, count(*) AS n FROM samples s JOIN phenotypes p USING (sample_id) GROUP BY 1",
    "SELECT s.population, s.sex, count(*) AS n FROM samples s GROUP BY 1, 2",
    "SELECT s.population, avg(p.ldl) AS ldl, stddev_samp(p.age) AS sd_age FROM samples s JOIN phenotypes p USING (sample_id) GROUP BY 1",
    "SELECT avg(p.age) AS age, var_samp(p.bmi) AS var_bmi, count(*) AS n FROM phenotypes p",
    "SELECT p.smoker, avg(p.ldl) AS ldl, count(*) AS n FROM phenotypes p GROUP BY 1",
)
DP_REPEAT = "SELECT s.sex, count(*) AS n FROM samples s GROUP BY 1"
DP_OTHER = "SELECT s.population, count(*) AS n FROM samples s GROUP BY 1"
DP_GREEDY = "SELECT count(*) AS n FROM samples s WHERE s.population = '{pop}'"


def _large_variants(chroms: list[str]) -> tuple[str, str]:
    inlist = ", ".join(f"'{c}'" for c in chroms)
    sql = (f"SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, allele_freq(g.dosage) AS af "
           f"FROM genotypes g WHERE g.chrom IN ({inlist}) GROUP BY 1")
    return sql, f"chrom IN ({inlist})"


def _large_by_population(chrom: str, lo: int, hi: int) -> tuple[str, str]:
    sql = (f"SELECT g.variant_id, s.population, allele_count(g.dosage) AS ac, allele_freq(g.dosage) AS af "
           f"FROM genotypes g JOIN samples s USING (sample_id) WHERE g.chrom = '{chrom}' AND g.pos BETWEEN {lo} AND {hi} GROUP BY 1, 2")
    return sql, f"chrom = '{chrom}' AND pos BETWEEN {lo} AND {hi}"


def make_mix(researchers: list[str], n_queries: int, *, seed: int = 9, large_share: float = 0.3,
             greedy_attempts: int = 8, dp_repeats: int | None = None, large_by_population: bool = True) -> list[Job]:
    """``n_queries`` jobs over ``researchers`` (the first one is greedy: distinct DP counts, ε each,
    beyond their budget). About half plain and half mpc; about ``large_share`` per-variant allele
    statistics over thousands of variants; each non-greedy researcher repeats one identical DP
    query (the cache must charge it once) and asks one other. The racing jobs come first so that
    they run at the same time: the identical repeats, then the greedy ones, then the rest, each
    part in a seeded random order."""
    rng = random.Random(seed)
    per = [n_queries // len(researchers) + (1 if i < n_queries % len(researchers) else 0) for i in range(len(researchers))]
    jobs: list[Job] = []
    chrom_sets = [[str(c) for c in range(k, k + 3)] for k in range(1, 21, 3)]
    for i, (r, n) in enumerate(zip(researchers, per, strict=True)):
        mine: list[Job] = []
        modes = ("plain", "mpc") if i % 2 == 0 else ("mpc", "plain")
        if i == 0:  # greedy: distinct DP counts, one per population, past the budget
            mine += [Job(r, "small", modes[k % 2], DP_GREEDY.format(pop=POPULATIONS[k % len(POPULATIONS)]), EPSILON, "dp_greedy")
                     for k in range(min(greedy_attempts, n))]
            n_large = round(n * large_share / 2)
        else:  # one identical DP query repeated (charged once), one other
            mine += [Job(r, "small", modes[0], DP_REPEAT, EPSILON, "dp_repeat") for _ in range(dp_repeats or max(2, n // 7))]
            mine.append(Job(r, "small", modes[1], DP_OTHER, EPSILON, "dp"))
            n_large = round(n * large_share)
        for k in range(min(n_large, n - len(mine))):
            mode = modes[k % 2]
            if large_by_population and k % 4 in (1, 2):
                sql, where = _large_by_population(str((i * 5 + k) % 22 + 1), 1, 300_000_000)
                mine.append(Job(r, "large", mode, sql, variants_where=where, by_population=True))
            else:
                sql, where = _large_variants(chrom_sets[(i + k) % len(chrom_sets)])
                mine.append(Job(r, "large", mode, sql, variants_where=where))
        k = 0
        while len(mine) < n:
            mine.append(Job(r, "small", modes[k % 2], SMALL[(i + k) % len(SMALL)]))
            k += 1
        jobs += mine
    order = []
    for tags in (("dp_repeat",), ("dp_greedy",), ("exact", "dp")):
        part = [j for j in jobs if j.tag in tags]
        rng.shuffle(part)
        order += part
    return order


# -- running -------------------------------------------------------------------------------------

def run_load(root: Path, tokens: dict[str, str], jobs: list[Job], concurrency: int, timeout: float = 600.0) -> tuple[list[Outcome], float]:
    """Fire every job at once through a pool of ``concurrency`` threads, each researcher through
    their own :func:`genofed.connect` client. Returns the outcomes (in job order) and the wall time."""
    clients = {r: genofed.connect(root, timeout=timeout, token=t) for r, t in tokens.items()}
    for c in clients.values():
        c.catalog()
    start = threading.Event()

    def one(job: Job) -> Outcome:
        start.wait()
        t0 = time.perf_counter()
        try:
            res = clients[job.researcher].sql(job.sql, combine=job.combine, epsilon=job.epsilon)
            return Outcome(job, time.perf_counter() - t0, res.to_arrow(), res.provenance)
        except GenofedError as e:
            return Outcome(job, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}", rule=str(getattr(e, "rule", "") or ""))
        except Exception as e:  # noqa: BLE001 - an unexpected failure is an error of the run, reported
            return Outcome(job, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")

    try:
        with cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(one, j) for j in jobs]
            t0 = time.perf_counter()
            start.set()
            outcomes = [f.result() for f in futures]
            wall = time.perf_counter() - t0
    finally:
        for c in clients.values():
            c.close()
    return outcomes, wall


def latency_summary(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """p50/p95/p99/max (seconds) of the successful queries, per class and overall."""
    groups: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        if o.ok:
            groups[o.job.cls].append(o.seconds)
            groups["all"].append(o.seconds)
    out = {}
    for k in sorted(groups, key=lambda x: (x == "all", x)):
        v = sorted(groups[k])
        out[k] = {"n": len(v), "p50": _pct(v, 50), "p95": _pct(v, 95), "p99": _pct(v, 99), "max": v[-1], "mean": statistics.fmean(v)}
    return out


def _pct(v: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


# -- invariants ----------------------------------------------------------------------------------

class Violations(AssertionError):
    pass


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.problems.append(msg)

    def raise_if_any(self) -> None:
        if self.problems:
            head = "\n  ".join(self.problems[:30])
            raise Violations(f"{len(self.problems)} invariant violations:\n  {head}")


def _sorted(t: pa.Table) -> pa.Table:
    keys = [c for c in t.column_names if pa.types.is_string(t.schema.field(c).type) or pa.types.is_large_string(t.schema.field(c).type)
            or pa.types.is_integer(t.schema.field(c).type)][:3]
    return t.sort_by([(c, "ascending") for c in keys]) if keys else t


def same_table(got: pa.Table, want: pa.Table, rel: float = 1e-9) -> str:
    """'' when equal (integers exactly, reals to ``rel``), else what differs."""
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, oracle {want.num_rows}"
    if sorted(got.column_names) != sorted(want.column_names):
        return f"columns {got.column_names}, oracle {want.column_names}"
    got, want = _sorted(got), _sorted(want.select(got.column_names))
    for c in got.column_names:
        a, b = got.column(c).to_pylist(), want.column(c).to_pylist()
        for x, y in zip(a, b, strict=True):
            if x is None or y is None:
                if (x is None) != (y is None):
                    return f"column {c}: {x!r} vs oracle {y!r}"
            elif isinstance(x, float) or isinstance(y, float):
                if not math.isclose(float(x), float(y), rel_tol=rel, abs_tol=rel):
                    return f"column {c}: {x!r} vs oracle {y!r}"
            elif x != y:
                return f"column {c}: {x!r} vs oracle {y!r}"
    return ""


class Oracle:
    """Pooled DuckDB answers (exact), cached per SQL text; thread-unsafe, used after the run."""

    def __init__(self, con: Any):
        self.con = con
        self._cache: dict[str, pa.Table] = {}

    def __call__(self, sql: str) -> pa.Table:
        if sql not in self._cache:
            from oracle import to_pooled_sql

            self._cache[sql] = self.con.sql(to_pooled_sql(sql)).to_arrow_table()
        return self._cache[sql]


def check_answers(rep: Report, outcomes: list[Outcome], oracle: Oracle) -> None:
    """(a) exact answers equal the oracle; DP counts within 4× the nodes' summed 95 % accuracy;
    identical DP queries (same researcher, SQL, mode, ε) got identical answers."""
    dp_answers: dict[tuple, list[pa.Table]] = defaultdict(list)
    checked = 0
    for o in outcomes:
        if not o.ok:
            continue
        want = oracle(o.job.sql)
        if o.job.epsilon is None:
            diff = same_table(o.table, want)
            rep.check(not diff, f"{o.job.researcher} {o.job.cls} {o.job.sql[:70]!r}: {diff}")
            rep.check(not o.provenance.suppressed, f"{o.job.sql[:60]!r}: {o.provenance.suppressed} unexpected withheld group(s)")
        else:
            dp_answers[(o.job.researcher, o.job.sql, o.job.combine, o.job.epsilon)].append(o.table)
            nodes = o.provenance.details.get("dp", {}).get("nodes", {})
            acc = [p["accuracy"] for p in nodes.values() if p.get("accuracy")]  # 95 % half-width at a node
            if not acc:  # every node answered from its cache without provenance: COUNT(*) and _n, L1 = 2
                from genofed.privacy.dp import Mechanism, accuracy, noise_scale

                mech = Mechanism("laplace", o.job.epsilon)
                acc = [accuracy(mech, noise_scale(mech, 2))]
            bound = 4 * len(nodes) * max(acc)
            assert o.table is not None
            got, ref = _sorted(o.table), _sorted(want.select(o.table.column_names))
            if got.num_rows != ref.num_rows:
                rep.check(False, f"DP {o.job.sql[:60]!r}: {got.num_rows} rows, oracle {ref.num_rows}")
                continue
            err = np.abs(np.asarray(got.column("n").to_pylist(), float) - np.asarray(ref.column("n").to_pylist(), float))
            rep.check(len(nodes) == len(o.provenance.nodes) and bool((err <= bound).all()), f"DP {o.job.sql[:60]!r}: error {err.max():g} > bound {bound:g} ({len(nodes)} nodes)")
        checked += 1
    for key, tables in dp_answers.items():
        first = _sorted(tables[0])
        rep.check(all(_sorted(t).equals(first) for t in tables[1:]),
                  f"identical DP queries of {key[0]} ({key[2]}) got different noisy answers: noise could be averaged")
    rep.facts["answers_checked"] = checked
    dp_ok = [o for o in outcomes if o.ok and o.job.epsilon is not None]
    rep.facts["dp_answers"] = {"answered": len(dp_ok), "node_releases": sum(len(o.provenance.nodes) for o in dp_ok),
                               "node_releases_from_cache": sum(1 for o in dp_ok for n in o.provenance.details["dp"]["nodes"].values()
                                                               if n.get("cached"))}
    rep.facts["identical_dp_groups"] = {f"{k[0]}/{k[2]}": len(v) for k, v in dp_answers.items() if len(v) > 1}


def _node_configs(root: Path) -> dict[str, NodeConfig]:
    fed = FederationConfig.load(root)
    return {n.name: NodeConfig.load(fed.root / n.config) for n in fed.nodes}


def check_nodes(rep: Report, root: Path, outcomes: list[Outcome], researchers: list[str]) -> None:
    """(b) ledgers, (c) audit logs, (d) membership-risk state, at every node."""
    answered = {o.provenance.query_id: o for o in outcomes if o.ok}
    failed_dp: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if not o.ok and o.job.epsilon is not None:
            failed_dp[o.job.researcher] += 1
    ledger_facts: dict[str, Any] = {}
    refused_ids = _refused_ids(root)
    for name, cfg in _node_configs(root).items():
        audit_path = cfg.audit_path()
        assert audit_path is not None
        v = verify(audit_path)
        rep.check(v.ok, f"{name}: audit log does not verify: line {v.line}: {v.problem}")
        recs = list(records(audit_path))
        releases: dict[str, list[dict]] = defaultdict(list)
        refused: dict[str, list[dict]] = defaultdict(list)
        done: set[str] = set()
        for r in recs:
            if r.get("event") == "release" and r.get("query_id"):
                releases[str(r["query_id"])].append(r)
            elif r.get("event") == "refused" and r.get("query_id"):
                refused[str(r["query_id"])].append(r)
            elif r.get("event") == "mpc_done" and r.get("query_id"):
                done.add(str(r["query_id"]))
        # (c) every answered query is recorded here as released (plain) or shared (mpc), once
        for qid, o in answered.items():
            rel = releases.get(qid, [])
            want = {"plain": "released", "mpc": "shared"}[o.job.combine]
            ok = (len(rel) == 1 and rel[0].get("researcher") == o.job.researcher and rel[0].get("decision") == want
                  and rel[0].get("fragment_sha256") == fragment_digest(o.provenance.fragment_sql))
            rep.check(ok, f"{name}: answered query {qid} ({o.job.researcher}, {o.job.cls}) has no single matching release record: {rel}")
            if o.job.combine == "mpc":
                rep.check(qid in done, f"{name}: answered mpc query {qid} has no mpc_done record")
        # (b) the ledger
        state = cfg.state_path()
        assert state is not None
        budget = cfg.dp.budget_epsilon
        with Ledger(state / "ledger.sqlite") as led:
            try:
                led.check_integrity()
            except Exception as err:  # noqa: BLE001
                rep.check(False, f"{name}: ledger integrity: {err}")
            per: dict[str, Any] = {}
            for r in researchers:
                entries = led.entries(r)
                spent = led.spent(r)[0]
                total = sum(e["epsilon"] for e in entries)
                rep.check(math.isclose(spent, total, abs_tol=1e-9), f"{name}/{r}: spent {spent} != sum of charges {total}")
                rep.check(spent <= budget + 1e-12, f"{name}/{r}: spent {spent} > budget {budget}: overspent")
                keys: dict[str, int] = defaultdict(int)
                for entry in entries:
                    keys[entry["release_key"]] += 1
                    rel = releases.get(entry["query_id"], [])
                    rep.check(any(x.get("researcher") == r and x.get("fragment_sha256") == entry["fragment_sha256"] for x in rel),
                              f"{name}/{r}: charge for query {entry['query_id']} has no release record in the audit log")
                twice = {k: c for k, c in keys.items() if c > 1}
                rep.check(not twice, f"{name}/{r}: {len(twice)} release keys charged more than once (identical DP queries double-charged)")
                charged = {e["query_id"]: e for e in entries}
                for qid, o in answered.items():
                    if o.job.researcher != r or o.job.epsilon is None:
                        continue
                    note = o.provenance.details.get("dp", {}).get("nodes", {}).get(name, {})
                    if note.get("cached"):
                        rep.check(qid not in charged, f"{name}/{r}: query {qid} answered from the cache but charged")
                    else:
                        mine = charged.get(qid)
                        rep.check(mine is not None and math.isclose(mine["epsilon"], o.job.epsilon),
                                  f"{name}/{r}: answered DP query {qid} not charged ε={o.job.epsilon} here ({mine})")
                # a query retried after a node answered "busy" is answered under a new query id,
                # from the release cache of the nodes that had already charged the first attempt:
                # that first charge paid for the answer the researcher got, it is no orphan
                cached_here = {fragment_digest(o.provenance.fragment_sql) for o in answered.values()
                               if o.job.researcher == r and o.job.epsilon is not None
                               and o.provenance.details.get("dp", {}).get("nodes", {}).get(name, {}).get("cached")}
                orphans = [q for q, e in charged.items() if q not in answered and e["fragment_sha256"] not in cached_here]
                rep.check(len(orphans) <= failed_dp[r], f"{name}/{r}: {len(orphans)} charges for unanswered queries, only {failed_dp[r]} DP queries failed")
                for q in orphans:  # charged here, refused somewhere else (audited there)
                    rep.check(q in refused_ids, f"{name}/{r}: charge for query {q} that no node refused or answered")
                per[r] = {"spent": spent, "charges": len(entries), "unanswered_charges": len(orphans), "budget": budget}
            ledger_facts[name] = per
        # (d) membership-risk state
        _check_membership(rep, name, cfg, answered, researchers)
    rep.facts["ledgers"] = ledger_facts


def _refused_ids(root: Path) -> set[str]:
    """Query ids some node of the federation refused (audited)."""
    ids: set[str] = set()
    for cfg in _node_configs(root).values():
        p = cfg.audit_path()
        assert p is not None
        ids |= {str(r["query_id"]) for r in records(p) if r.get("event") == "refused" and r.get("query_id")}
    return ids


def _check_membership(rep: Report, name: str, cfg: NodeConfig, answered: dict[str, Outcome], researchers: list[str]) -> None:
    store = NodeStore(cfg.store)
    samples = pq.read_table(store.samples_path, columns=["sample_id", "population"])
    variants = pq.read_table(store.variants_path, columns=["vidx", "chrom", "pos"])
    n_bytes = (store.manifest.n_variants + 7) // 8
    import duckdb

    con = duckdb.connect()
    con.register("v", variants)
    expected: dict[tuple[str, str], np.ndarray] = {}
    everyone = np.arange(samples.num_rows, dtype=np.int64)
    pops = {p: np.flatnonzero(pc.equal(samples.column("population"), p).to_numpy(zero_copy_only=False)).astype(np.int64)
            for p in set(samples.column("population").to_pylist())}
    for o in answered.values():
        if o.job.variants_where is None:
            continue
        vidx = con.sql(f"SELECT vidx FROM v WHERE {o.job.variants_where}").fetchnumpy()["vidx"].astype(np.int64)
        mask = np.zeros(n_bytes * 8, bool)
        mask[vidx] = True
        bits = np.packbits(mask)
        cohorts = list(pops.values()) if o.job.by_population else [everyone]
        for members in cohorts:
            key = (o.job.researcher, MembershipGate.cohort_key(members))
            expected[key] = expected[key] | bits if key in expected else bits
    con.close()
    state = cfg.state_path()
    assert state is not None
    path = state / "risk.sqlite"
    got: dict[tuple[str, str], np.ndarray] = {}
    if path.exists():
        db = sqlite3.connect(path)
        for r, cohort, blob in db.execute("SELECT researcher, cohort, bits FROM released_variants"):
            b = np.zeros(n_bytes, np.uint8)
            raw = np.frombuffer(zlib.decompress(blob), np.uint8)[:n_bytes]
            b[: len(raw)] = raw
            got[(r, cohort)] = b
        db.close()
    # a release is charged to the finest cohorts the researcher's released sets define (the
    # linear audit's atoms: an everyone-release after by-population ones is charged per
    # population), so compare per researcher: the cohorts recorded are ones the jobs could
    # define, and every released variant is recorded (no lost update)
    known = {MembershipGate.cohort_key(everyone)} | {MembershipGate.cohort_key(m) for m in pops.values()}
    for r in researchers:
        e_keys = [k for k in expected if k[0] == r]
        g_keys = [k for k in got if k[0] == r]
        e = np.bitwise_or.reduce([expected[k] for k in e_keys]) if e_keys else np.zeros(n_bytes, np.uint8)
        g = np.bitwise_or.reduce([got[k] for k in g_keys]) if g_keys else np.zeros(n_bytes, np.uint8)
        ne, ng = int(np.bitwise_count(e).sum()), int(np.bitwise_count(g).sum())
        rep.check(bool((e == g).all()), f"{name}: membership state of {r}: {ng} variants recorded, {ne} released (lost update?)")
        odd = [k[1][:10] for k in g_keys if k[1] not in known]
        rep.check(not odd, f"{name}: membership state of {r} holds cohorts no job defines: {odd}")
    rep.facts.setdefault("membership_cohorts", {})[name] = len([k for k in got if k[0] in researchers])
    store.close()


def configure(root: Path, *, budget_epsilon: float, max_epsilon: float = 1.0) -> None:
    """The load's node policies: a DP budget per researcher, and the membership-risk gate
    recording every per-variant release without a cap (1.0: thousands of variants of one cohort
    pass any lower cap; the state it keeps is what invariant (d) checks)."""
    import tomllib

    import tomli_w

    for n in FederationConfig.load(root).nodes:
        p = root / n.config
        node = tomllib.loads(p.read_text())
        node["dp"] = {"budget_epsilon": budget_epsilon, "max_epsilon": max_epsilon}
        node["risk"] = {"max_membership_power": 1.0}
        p.write_text(tomli_w.dumps(node))
