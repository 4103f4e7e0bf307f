"""Cost of the node's disclosure-control pipeline: the same workload on two versions of genofed,
side by side in one run.

Versions:

- **baseline**: commit ``1a1f22a`` (main before the disclosure-control rework), checked out as a
  git worktree outside the repository (``/tmp/genofed-baseline``, never committed) and installed
  non-editable into its own directory (``pip install --no-deps --target /tmp/genofed-baseline-site``);
- **current**: this working tree (``/work/main``, the editable install of ``.venv``).

Each version runs in its own worker process (this file with ``--worker``), started with the same
interpreter (``.venv``'s, so the same numpy/pyarrow/duckdb) from a neutral working directory (no
``genofed`` package in it: ``python -m`` puts the working directory first on ``sys.path``). The
baseline worker has the baseline directory on ``PYTHONPATH`` (and first on its ``sys.path``), which
wins over the editable install's finder; the current worker has no ``PYTHONPATH``. Every worker
checks that every ``genofed*`` module it imported comes from its version. ``federation up`` starts
the node servers as ``sys.executable -m genofed.cli node serve`` with the worker's environment and
working directory, so they inherit the same resolution; this is checked on the running nodes
themselves: they are started with ``PYTHONVERBOSE=1`` (the interpreter logs the file of every
module it imports to ``node.log``, at start-up and warm-up only), and every genofed module a node
loaded must come from its version (``connectors/node.py`` among them); their
``/proc/PID/{cmdline,cwd,environ}`` are recorded too. The run stops if any check fails.

Data: the real 1000 Genomes 2,504-sample peddy VCF (23,770 common SNVs) with the phase 3 panel
(``super_pop`` a sample column), split round-robin over 3 nodes by an explicit split file (the same
for both versions), and a deterministic phenotype table ``phenotypes(sample_id, c1, c2, y)``
(seeded numpy: c1 age-like integer 20-79, c2 sex 0/1 from the panel, y = 0.02 (c1 - 50) + 0.3 c2 +
N(0, 1)). Each version builds its own federation with its own ``init_federation`` (its default
policy: minimum count 5, differencing defence on, membership-risk gate on, TLS; plus
``allow_plain`` and ``combine='plain'``), cached under ``benchmarks/work/disclosure/templates/``
and rebuilt only when that version's sources or the inputs change. Each run copies the template to
a fresh directory, so ledgers, released-set histories, risk state and audit logs start empty.

Workloads (``combine='plain'``, end-to-end wall time of ``Federation.sql`` in the worker: parse,
plan, dispatch, node validation/execution, the node's disclosure pipeline, Arrow Flight, combine,
the coordinator's disclosure checks and finalize):

- ``af_all`` (a): allele frequency by super-population over all variants (118,850 groups):
  ``SELECT s.super_pop, g.variant_id, allele_freq(g.dosage) AS af
  FROM genotypes g JOIN samples s USING (sample_id) GROUP BY ALL``. Under the default policy every
  node refuses it (rule ``membership_risk``: 23,770 variants of per-node super-population cohorts of
  114-222 people put the analytic attack power at 1.0, cap 0.10), so this phase sets
  ``[risk] max_membership_power = 1.0`` at every node: the gate still runs in full (cohorts,
  released-variant bitmaps, power, SQLite update, the score in provenance) but cannot refuse.
  Everything else stays the default. (The report lists each version's membership-risk score from
  provenance: a version that skips the gate at cap 1.0 would show none there, and its time would
  then not include the gate.) ``run_all.py``'s federated row asks the same query (variant_id
  first, min_count 1, so without any gate).
- ``gwas_linear`` (b): ``SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates =>
  ['phenotypes.c1', 'phenotypes.c2'])`` over all variants, default policy (the phenotype and
  covariates of ``bench_gwas.py``, two covariates instead of three).
- ``af_subset`` (extra): (a) restricted to the first 300 variants of chromosome 1, which the default
  gate allows (power ~0.07 at the smallest cohort, 114), default policy: the gate's allow path.

Researchers: by default one researcher (the federation's own token) asks every query of a
version, as the other benchmarks do; a repeated identical query is not refused by the baseline's
gates. ``--researchers fresh`` registers one researcher per run (``add_researcher`` before the
nodes start; each client fetches its catalog before its timed query), for a version whose gates
refuse repeats: the run stops with that hint when a repeated query is refused.

Timing: for each workload, ``--warmup`` runs per version (baseline, current), then ``--reps``
timed runs interleaved baseline, current, baseline, current, ... (both federations are up at once;
the idle one's nodes wait). Reported: median per version and the ratio current/baseline.

Correctness: every answer of both versions (warm-ups included) is compared with the baseline's
first answer: same rows and keys, integers and strings exactly, floats to 1e-9 (relative above
1), same number of suppressed groups. The script exits 1 if they differ, 2 on a setup or
version-check failure.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_disclosure.py                 # prints a markdown table
    .venv/bin/python benchmarks/bench_disclosure.py --reps 5 --json out.json
    .venv/bin/python benchmarks/bench_disclosure.py --researchers fresh

Raw numbers: ``benchmarks/work/disclosure/results.json`` (gitignored) and ``--json PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "disclosure"
DATA = Path(os.environ.get("GENOFED_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
VCF = DATA / "1kg_2504_peddy" / "peddy_1kg_2504x23770.vcf.gz"
PANEL = DATA / "panel" / "1kg_phase3_2504_panel.tsv"

BASELINE_COMMIT = "1a1f22a"
BASELINE_WORKTREE = Path("/tmp/genofed-baseline")
BASELINE_SITE = Path("/tmp/genofed-baseline-site")
# the current version's package directories (pyproject [tool.setuptools.package-dir])
CURRENT_DIRS = ("genofed", "engine", "connectors", "genomics", "privacy", "federated", "queries")

N_NODES = 3
SEED = 20261123
SUBSET_VARIANTS = 300  # af_subset: the first N variants of chromosome 1 (fits the default risk cap)
FLOAT_TOL = 1e-9

SQL_AF = ("SELECT s.super_pop, g.variant_id, allele_freq(g.dosage) AS af "
          "FROM genotypes g JOIN samples s USING (sample_id) {where}GROUP BY ALL")
SQL_GWAS = "SELECT * FROM gwas_linear(phenotype => 'phenotypes.y', covariates => ['phenotypes.c1', 'phenotypes.c2'])"

# the workloads in the order of the table, their key columns and their columns to compare
WORKLOADS: dict[str, dict[str, Any]] = {
    # rule 5's minimum minor-allele count per released cell withholds the cells with fewer than 5
    # copies of an allele at a node (plain): compared on the cells released
    "af_all": {"label": "(a) AF by super_pop, all variants", "keys": ["super_pop", "variant_id"],
               "columns": ["super_pop", "variant_id", "af"], "phase": "risk_cap_1", "withholds": True},
    "gwas_linear": {"label": "(b) gwas_linear, 2 covariates", "keys": ["variant_id"],
                    "columns": ["variant_id", "chrom", "pos", "ref", "alt", "n", "alt_freq", "beta", "se", "t", "p"],
                    # the rework charges GWAS estimates to the membership gate (rule 5): a genome-wide GWAS of
                    # one node's ~835 people is refused at the default cap, so both versions run with cap 1.0
                    # (the gate still scores and records every release)
                    "phase": "risk_cap_1",
                    # rule 5 (minimum carriers of each allele per cell) withholds the variants with fewer than
                    # 5 carriers of an allele at a node: compared on the variants released
                    "withholds": True},
    "af_subset": {"label": f"(extra) AF by super_pop, first {SUBSET_VARIANTS} chr1 variants", "keys": ["super_pop", "variant_id"],
                  "columns": ["super_pop", "variant_id", "af"], "phase": "default", "withholds": True},
}
# phases: one federation each (copied from the version's template); risk_cap None = the default
PHASES: dict[str, dict[str, Any]] = {
    "risk_cap_1": {"risk_cap": 1.0, "what": "default policy, [risk] max_membership_power = 1.0"},
    "default": {"risk_cap": None, "what": "default policy of init_federation"},
}


def log(msg: str) -> None:
    print(f"[bench_disclosure {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(RuntimeError):
    pass


# =============================================================================================
# worker: one per version; JSON lines on stdin/stdout
# =============================================================================================

_PYC = re.compile(r"^(.*)/__pycache__/([^/]+?)\.cpython-\d+(?:\.opt-\d+)?\.pyc$")
_VERBOSE_PATH = re.compile(r"^# (?:code object from '?([^' ]+)'?|(\S+) matches (\S+))\s*$")


def _source_of(path: str) -> str:
    m = _PYC.match(path)
    return f"{m.group(1)}/{m.group(2)}.py" if m else path


def _classify(path: str, site: Path, worktree: Path) -> str | None:
    """Which version a module file belongs to (None: not genofed's)."""
    p = os.path.realpath(path)
    if p.startswith(str(site) + "/"):
        return "baseline"
    if p.startswith(str(worktree) + "/"):
        return "baseline-worktree"
    venv = str(ROOT / ".venv") + "/"
    if p.startswith(str(ROOT) + "/") and not p.startswith(venv):
        return "current"
    return None


class Worker:
    def __init__(self, version: str, site: Path, worktree: Path):
        self.version = version
        self.site = site
        self.worktree = worktree
        self.run_dir: Path | None = None
        self.clients: dict[str | None, Any] = {}
        self.tokens: dict[str, str] = {}

    # -- checks -------------------------------------------------------------------------------
    def own_modules(self) -> dict[str, Any]:
        import genofed
        import genofed.connectors.federation
        import genofed.connectors.node
        import genofed.engine
        import genofed.engine.coordinator
        import genofed.privacy.disclosure  # noqa: F401

        files = {name: getattr(m, "__file__", None) for name, m in sorted(sys.modules.items())
                 if (name == "genofed" or name.startswith("genofed.")) and getattr(m, "__file__", None)}
        wrong = {n: f for n, f in files.items() if _classify(f, self.site, self.worktree) != self.version}
        if wrong:
            raise SetupError(f"{self.version} worker imported genofed modules from elsewhere: {dict(list(wrong.items())[:5])}")
        return {"genofed": genofed.__file__, "genofed.engine": genofed.engine.__file__,
                "genofed.connectors.node": genofed.connectors.node.__file__,
                "genofed.privacy.disclosure": genofed.privacy.disclosure.__file__, "n_modules": len(files),
                "sys_path_0_3": sys.path[:3], "cwd": os.getcwd(), "executable": sys.executable,
                "PYTHONPATH": os.environ.get("PYTHONPATH")}

    def check_nodes(self, root: Path) -> dict[str, Any]:
        """The running node servers import genofed from this worker's version (their own
        verbose import log), with this worker's interpreter, working directory and PYTHONPATH."""
        from genofed.connectors.federation import FederationConfig

        out = {}
        for n in FederationConfig.load(root).nodes:
            pid = int((root / n.name / "node.pid").read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cmd = [c.decode() for c in cmd if c]
            env = dict(e.decode(errors="replace").split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
            cwd = os.readlink(f"/proc/{pid}/cwd")
            exe = os.readlink(f"/proc/{pid}/exe")
            if cmd[1:3] != ["-m", "genofed.cli"] or "serve" not in cmd:
                raise SetupError(f"{self.version} {n.name}: pid {pid} is not a genofed node server: {cmd}")
            if os.path.realpath(cmd[0]) != os.path.realpath(sys.executable) or cwd != os.getcwd() or env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
                raise SetupError(f"{self.version} {n.name}: interpreter/cwd/PYTHONPATH differ from the worker's: {cmd[0]}, {cwd}, {env.get('PYTHONPATH')}")
            text = (root / n.name / "node.log").read_text(errors="replace")
            seen: dict[str, str] = {}
            for line in text.splitlines():
                m = _VERBOSE_PATH.match(line)
                if not m:
                    continue
                for p in (m.group(1), m.group(3)):
                    if p:
                        src = _source_of(p)
                        kind = _classify(src, self.site, self.worktree)
                        if kind is not None:
                            seen[src] = kind
            node_py = [p for p in seen if p.endswith("connectors/node.py")]
            wrong = {p: k for p, k in seen.items() if k != self.version}
            if not seen or not node_py:
                raise SetupError(f"{self.version} {n.name}: no genofed module paths in its verbose import log {root / n.name / 'node.log'}")
            if wrong:
                raise SetupError(f"{self.version} {n.name}: node imported modules of another version: {dict(list(wrong.items())[:5])}")
            out[n.name] = {"pid": pid, "exe": exe, "cwd": cwd, "PYTHONPATH": env.get("PYTHONPATH"),
                           "genofed_modules": len(seen), "connectors_node": node_py[0]}
        return out

    # -- commands -----------------------------------------------------------------------------
    def prepare(self, a: dict[str, Any]) -> dict[str, Any]:
        from genofed.connectors.federation import FEDERATION_FILE, init_federation

        tpl = Path(a["template"])
        stamp = tpl / "bench_disclosure.stamp.json"
        if (tpl / FEDERATION_FILE).exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == a["key"]:
            return {"built": False, "init_s": json.loads(stamp.read_text()).get("init_s"), **self._policy(tpl)}
        shutil.rmtree(tpl, ignore_errors=True)
        tpl.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        init_federation(tpl, a["vcf"], a["panel"], a["split"], n_nodes=N_NODES, clinical={"phenotypes": a["pheno"]},
                        allow_plain=True, combine="plain")
        init_s = time.perf_counter() - t0
        stamp.write_text(json.dumps({"key": a["key"], "init_s": init_s}))
        return {"built": True, "init_s": init_s, **self._policy(tpl)}

    @staticmethod
    def _policy(root: Path) -> dict[str, Any]:
        import tomllib

        node = tomllib.loads((root / "node_1" / "node.toml").read_text())
        return {"node_1_policy": node.get("policy", {}), "node_1_risk": node.get("risk", "(absent: defaults)")}

    def up(self, a: dict[str, Any]) -> dict[str, Any]:
        import tomllib

        import tomli_w

        import genofed
        from genofed.connectors.federation import FederationConfig, add_researcher, up

        root = Path(a["run_dir"])
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(a["template"], root, ignore=shutil.ignore_patterns("bench_disclosure.stamp.json"))
        fed = FederationConfig.load(root)
        if a.get("risk_cap") is not None:
            for n in fed.nodes:
                p = root / n.config
                data = tomllib.loads(p.read_text())
                data["risk"] = {**data.get("risk", {}), "max_membership_power": float(a["risk_cap"])}
                p.write_text(tomli_w.dumps(data))
        self.tokens = {name: add_researcher(root, name) for name in a.get("researchers", [])}
        os.environ["PYTHONVERBOSE"] = "1"  # the nodes log where each module comes from (see check_nodes)
        try:
            t0 = time.perf_counter()
            up(root)
            up_s = time.perf_counter() - t0
        finally:
            os.environ.pop("PYTHONVERBOSE", None)
        self.run_dir = root
        try:
            nodes = self.check_nodes(root)
        except Exception:
            self.down({})
            raise
        self.clients = {None: genofed.connect(root, timeout=600)}
        for name, tok in self.tokens.items():
            self.clients[name] = genofed.connect(root, timeout=600, token=tok)
        return {"up_s": up_s, "nodes": nodes, **self._policy(root)}

    def run(self, a: dict[str, Any]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        client = self.clients[a.get("researcher")]
        if a.get("researcher") is not None:
            try:  # a fresh client: fetch the catalog outside the timing
                client._coord.plan(a["sql"])
            except Exception:
                pass
        t0 = time.perf_counter()
        try:
            r = client.sql(a["sql"], combine="plain")
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}", "rule": getattr(e, "rule", None), "wall_s": time.perf_counter() - t0}
        wall = time.perf_counter() - t0
        table = r.to_arrow()
        if a.get("save"):
            pq.write_table(table, a["save"])
        prov = getattr(r, "provenance", None)
        details = getattr(prov, "details", None) or {}
        sup = getattr(r, "suppressed", None) or 0  # a list of keys in the baseline, a count since
        return {"wall_s": wall, "rows": table.num_rows, "suppressed": sup if isinstance(sup, int) else len(sup),
                "timings": dict(getattr(prov, "timings", None) or {}),
                "details": json.loads(json.dumps(details, default=str))}

    def down(self, a: dict[str, Any]) -> dict[str, Any]:
        from genofed.connectors.federation import down

        for c in self.clients.values():
            try:
                c.close()
            except Exception:
                pass
        self.clients = {}
        stopped = down(self.run_dir) if self.run_dir is not None else []
        self.run_dir = None
        return {"stopped": stopped}


def worker_main(version: str, site: Path, worktree: Path) -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the protocol
    if version == "baseline":
        sys.path.insert(0, str(site))
    w = Worker(version, site, worktree)

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, default=str) + "\n")
        out.flush()

    try:
        send({"ok": True, "hello": w.own_modules()})
    except Exception as e:
        send({"ok": False, "error": f"{type(e).__name__}: {e}", "setup": True})
        return 2
    try:
        for line in sys.stdin:
            req = json.loads(line)
            cmd = req.pop("cmd")
            if cmd == "quit":
                send({"ok": True})
                break
            try:
                res = getattr(w, cmd)(req)
                send({"ok": True, **res})
            except Exception as e:
                send({"ok": False, "error": f"{type(e).__name__}: {e}", "setup": isinstance(e, SetupError),
                      "traceback": traceback.format_exc()[-3000:]})
    finally:
        if w.run_dir is not None:
            try:
                w.down({})
            except Exception:
                pass
    return 0


# =============================================================================================
# orchestrator
# =============================================================================================

def sh(cmd: list[str], **kw: Any) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def ensure_baseline(commit: str, worktree: Path, site: Path) -> dict[str, Any]:
    """The baseline worktree at ``commit`` and its non-editable install in ``site``."""
    full = sh(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"])
    if not (worktree / ".git").exists():
        log(f"git worktree add --detach {worktree} {commit}")
        shutil.rmtree(worktree, ignore_errors=True)
        sh(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), full])
    head = sh(["git", "-C", str(worktree), "rev-parse", "HEAD"])
    if head != full:
        raise SetupError(f"{worktree} is at {head[:12]}, not the baseline {full[:12]}; remove it (git worktree remove {worktree}) and rerun")
    dirty = sh(["git", "-C", str(worktree), "status", "--porcelain", "--untracked-files=no"])
    if dirty:
        raise SetupError(f"{worktree} has local changes:\n{dirty}")
    stamp = site / ".bench_disclosure_commit"
    if not (stamp.exists() and stamp.read_text().strip() == full and (site / "genofed" / "__init__.py").exists()):
        log(f"pip install --no-deps --target {site} {worktree}")
        shutil.rmtree(site, ignore_errors=True)
        sh([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(worktree)])
        stamp.write_text(full + "\n")
    return {"commit": full, "worktree": str(worktree), "site": str(site)}


def source_key(version: str, site: Path) -> str:
    """Hash of a version's Python/SQL sources (its federation template is rebuilt when it changes)."""
    h = hashlib.sha256()
    bases = [site / "genofed"] if version == "baseline" else [ROOT / d for d in CURRENT_DIRS]
    for base in bases:
        for p in sorted(base.rglob("*")):
            if p.suffix in (".py", ".sql", ".toml") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(base.parent)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def make_inputs() -> dict[str, Any]:
    """The phenotype table and the split file (deterministic; rewritten only when they change)."""
    import numpy as np
    import pandas as pd

    WORK.mkdir(parents=True, exist_ok=True)
    panel = pd.read_csv(PANEL, sep="\t", dtype=str)
    rng = np.random.default_rng(SEED)
    n = len(panel)
    c1 = rng.integers(20, 80, n)
    c2 = (panel["sex"].str.lower() == "female").to_numpy(np.int64)
    y = np.round(0.02 * (c1 - 50) + 0.3 * c2 + rng.normal(size=n), 6)
    pheno = pd.DataFrame({"sample_id": panel["sample"], "c1": c1, "c2": c2, "y": y}).to_csv(index=False, float_format="%.6f")
    split = pd.DataFrame({"sample": panel["sample"], "node": [f"node_{i % N_NODES + 1}" for i in range(n)]}).to_csv(sep="\t", index=False)
    paths = {"pheno": WORK / "phenotypes.csv", "split": WORK / "split.tsv"}
    for key, text in (("pheno", pheno), ("split", split)):
        if not paths[key].exists() or paths[key].read_text() != text:
            paths[key].write_text(text)
    st = VCF.stat()
    key = hashlib.sha256(json.dumps([str(VCF), st.st_size, st.st_mtime, PANEL.read_text(), pheno, split]).encode()).hexdigest()[:16]
    return {"pheno": str(paths["pheno"]), "split": str(paths["split"]), "key": key, "n_samples": n}


class WorkerProc:
    def __init__(self, version: str, site: Path, worktree: Path):
        self.version = version
        self.cwd = WORK / "run" / version  # neutral: no genofed package here (python -m puts it first on sys.path)
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONVERBOSE", "PYTHONSTARTUP")}
        if version == "baseline":
            env["PYTHONPATH"] = str(site)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", version, "--baseline-site", str(site),
             "--baseline-worktree", str(worktree)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.cwd, env=env, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise SetupError(f"{self.version} worker exited (code {self.proc.wait()}); see the messages above")
        msg = json.loads(line)
        if not msg.get("ok"):
            if msg.get("traceback"):
                log(f"{self.version} worker traceback:\n{msg['traceback']}")
            err = SetupError if msg.get("setup") else RuntimeError
            raise err(f"{self.version}: {msg.get('error')}")
        return msg

    def send(self, cmd: str, **kw: Any) -> None:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        self.send(cmd, **kw)
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # node servers are their own sessions: stop any this run started that are still up
        for pidf in self.cwd.glob("*/*/node.pid"):
            try:
                pid = int(pidf.read_text().strip())
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"genofed.cli" in cmd and str(pidf.parent).encode() in cmd:
                log(f"stopping leftover node server {pid} ({pidf.parent})")
                os.kill(pid, signal.SIGTERM)


def first_chr1_cut(template: Path, n: int) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    v = pq.read_table(template / "node_1" / "store" / "current" / "variants.parquet", columns=["chrom", "pos"])
    pos = sorted(v.filter(pc.equal(v.column("chrom"), "1")).column("pos").to_pylist())
    if len(pos) < n:
        raise SetupError(f"chromosome 1 has only {len(pos)} variants")
    cut = pos[n - 1]
    if n < len(pos) and pos[n] == cut:
        raise SetupError(f"two chr1 variants at {cut}: choose another subset size")
    return cut


def same_split(a: Path, b: Path) -> dict[str, Any]:
    """Both versions' templates hold the same samples at each node and the same variants."""
    import pyarrow.parquet as pq

    out = {}
    for node in sorted(p.name for p in a.glob("node_*")):
        sa = pq.read_table(a / node / "store" / "current" / "samples.parquet", columns=["sample_id"]).column(0).to_pylist()
        sb = pq.read_table(b / node / "store" / "current" / "samples.parquet", columns=["sample_id"]).column(0).to_pylist()
        va = pq.read_table(a / node / "store" / "current" / "variants.parquet", columns=["variant_id"]).column(0).to_pylist()
        vb = pq.read_table(b / node / "store" / "current" / "variants.parquet", columns=["variant_id"]).column(0).to_pylist()
        if sorted(sa) != sorted(sb) or va != vb:
            raise SetupError(f"{node}: the two versions' federations hold different samples or variants")
        out[node] = {"samples": len(sa), "variants": len(va)}
    return out


def compare(ref_path: Path, path: Path, spec: dict[str, Any]) -> tuple[bool, str, float]:
    """Same rows and keys, exact non-floats, floats to FLOAT_TOL (relative above 1)."""
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = pq.read_table(ref_path), pq.read_table(path)
    missing = [c for c in spec["columns"] if c not in b.column_names or c not in a.column_names]
    if missing:
        return False, f"columns missing: {missing}", math.inf
    note = ""
    if b.num_rows < a.num_rows and spec.get("withholds"):
        # the current rules withhold cells the baseline released (rule 5's minimum minor-allele
        # count per cell): every released row must be one of the baseline's, with its values
        keys = spec["keys"]
        kb = set(zip(*(b.column(k).to_pylist() for k in keys), strict=True))
        ka = list(zip(*(a.column(k).to_pylist() for k in keys), strict=True))
        if not kb <= set(ka):
            return False, "rows the baseline does not have", math.inf
        a = a.filter(pa.array([k in kb for k in ka]))
        note = f"; {len(ka) - len(kb)} rows withheld by rule 5"
    if a.num_rows != b.num_rows:
        return False, f"{b.num_rows} rows vs {a.num_rows}", math.inf
    order = [(k, "ascending") for k in spec["keys"]]
    a, b = a.sort_by(order), b.sort_by(order)
    worst = 0.0
    for c in spec["columns"]:
        x, y = a.column(c), b.column(c)
        if pa.types.is_floating(x.type) and pa.types.is_floating(y.type):
            for u, v in zip(x.to_pylist(), y.to_pylist()):
                if u is None or v is None or math.isnan(u) or math.isnan(v):
                    if not ((u is None and v is None) or (u is not None and v is not None and math.isnan(u) and math.isnan(v))):
                        return False, f"column {c}: {u!r} vs {v!r}", math.inf
                    continue
                d = abs(u - v)
                worst = max(worst, d)
                if d > FLOAT_TOL * max(1.0, abs(u), abs(v)):
                    return False, f"column {c}: {u!r} vs {v!r}", d
        elif x.to_pylist() != y.to_pylist():
            return False, f"column {c} differs", math.inf
    extra = sorted(set(b.column_names) - set(a.column_names))
    return True, f"equal (max abs diff {worst:.1e})" + (f"; extra columns {extra}" if extra else "") + note, worst


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.2f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed runs per version and workload (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per version before the timed ones (default 1)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--researchers", choices=("same", "fresh"), default="same",
                    help="same: one researcher asks every query (default); fresh: a new researcher per run")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--rebuild", action="store_true", help="rebuild both versions' federation templates")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (logs, state, answers)")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--baseline-worktree", type=Path, default=BASELINE_WORKTREE)
    ap.add_argument("--baseline-site", type=Path, default=BASELINE_SITE)
    ap.add_argument("--worker", choices=("baseline", "current"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.baseline_site.resolve(), args.baseline_worktree.resolve())

    command = "python benchmarks/bench_disclosure.py" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or args.reps < 1 or args.warmup < 0:
        ap.error(f"unknown workloads {unknown}" if unknown else "--reps must be >= 1, --warmup >= 0")
    if not VCF.exists() or not PANEL.exists():
        log(f"missing real data: {VCF} / {PANEL}")
        return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.monotonic()
    load_before = os.getloadavg()
    versions = ("baseline", "current")
    R: dict[str, Any] = {"command": command, "started": started, "python": platform.python_version(), "cpus": os.cpu_count(),
                         "machine": platform.platform(), "reps": args.reps, "warmup": args.warmup, "researchers": args.researchers,
                         "load_before": load_before, "workloads": {}, "versions": {}}
    workers: dict[str, WorkerProc] = {}
    try:
        site, worktree = args.baseline_site.resolve(), args.baseline_worktree.resolve()
        R["baseline"] = ensure_baseline(args.baseline_commit, worktree, site)
        R["current"] = {"root": str(ROOT), "head": sh(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
                        "changed_files": [ln[3:] for ln in sh(["git", "-C", str(ROOT), "status", "--porcelain"]).splitlines()
                                          if ln[3:].split("/")[0] in CURRENT_DIRS]}
        inputs = make_inputs()
        for v in versions:
            workers[v] = WorkerProc(v, site, worktree)
            R["versions"][v] = {"worker": workers[v].hello["hello"], "source_key": source_key(v, site)}
            log(f"{v}: worker imports genofed from {workers[v].hello['hello']['genofed']} "
                f"(engine {workers[v].hello['hello']['genofed.engine']})")
        templates = {v: WORK / "templates" / v for v in versions}
        for v in versions:
            if args.rebuild:
                shutil.rmtree(templates[v], ignore_errors=True)
            log(f"{v}: federation template {templates[v].relative_to(ROOT)} ...")
            key = hashlib.sha256(f"{inputs['key']}:{R['versions'][v]['source_key']}".encode()).hexdigest()[:16]
            res = workers[v].call("prepare", template=str(templates[v]), vcf=str(VCF), panel=str(PANEL), split=inputs["split"],
                                  pheno=inputs["pheno"], key=key)
            R["versions"][v]["template"] = {k: res[k] for k in ("built", "init_s", "node_1_policy", "node_1_risk")}
            log(f"{v}: template " + (f"built in {res['init_s']:.1f} s" if res["built"] else "reused"))
        R["split"] = same_split(templates["baseline"], templates["current"])
        cut = first_chr1_cut(templates["baseline"], SUBSET_VARIANTS)
        sqls = {"af_all": SQL_AF.format(where=""), "gwas_linear": SQL_GWAS,
                "af_subset": SQL_AF.format(where=f"WHERE g.chrom = '1' AND g.pos <= {cut} ")}

        answers = WORK / "run" / "answers"
        shutil.rmtree(answers, ignore_errors=True)
        answers.mkdir(parents=True)
        n_runs = args.warmup + args.reps
        for phase, pol in PHASES.items():
            todo = [w for w in workloads if WORKLOADS[w]["phase"] == phase]
            if not todo:
                continue
            names = [f"bench_{w}_{i}" for w in todo for i in range(n_runs)] if args.researchers == "fresh" else []
            for v in versions:
                res = workers[v].call("up", run_dir=str(workers[v].cwd / phase), template=str(templates[v]),
                                      risk_cap=pol["risk_cap"], researchers=names)
                R["versions"][v].setdefault("phases", {})[phase] = {"what": pol["what"], "up_s": res["up_s"], "nodes": res["nodes"],
                                                                    "node_1_policy": res["node_1_policy"], "node_1_risk": res["node_1_risk"]}
                log(f"{v}: phase {phase} up in {res['up_s']:.1f} s; nodes import genofed from "
                    + ", ".join(sorted({os.path.dirname(os.path.dirname(x['connectors_node'])) for x in res['nodes'].values()})))
            for w in todo:
                W = R["workloads"].setdefault(w, {"label": WORKLOADS[w]["label"], "sql": sqls[w], "phase": phase,
                                                  "policy": pol["what"], "runs": {v: [] for v in versions}})
                log(f"{w}: {args.warmup} warm-up + {args.reps} timed runs per version, interleaved ...")
                for i in range(n_runs):
                    for v in versions:
                        researcher = f"bench_{w}_{i}" if args.researchers == "fresh" else None
                        save = answers / f"{w}.{v}.{i}.parquet"
                        r = workers[v].call("run", sql=sqls[w], save=str(save), researcher=researcher)
                        if "error" in r:
                            hint = ("; a gate refused a repeated query: rerun with --researchers fresh"
                                    if args.researchers == "same" and i > 0 and r.get("rule") else "")
                            raise SetupError(f"{v} {w} run {i}: {r['error']}{hint}")
                        r.update(warmup=i < args.warmup, answer=str(save))
                        W["runs"][v].append(r)
                        log(f"  {w} {v} {'warm-up' if i < args.warmup else 'run'} {i}: {r['wall_s']:.3f} s, "
                            f"{r['rows']:,} rows, {r['suppressed']} suppressed")
            for v in versions:  # both versions' nodes stop at once (~5 s each)
                workers[v].send("down")
            for v in versions:
                workers[v]._read()
    except (SetupError, RuntimeError, subprocess.CalledProcessError) as e:
        log(f"FAILED: {e}")
        return 2
    finally:
        for wp in workers.values():
            wp.close()

    # -- answers: every run of both versions against the baseline's first ---------------------
    ok = True
    for w, W in R["workloads"].items():
        ref = Path(W["runs"]["baseline"][0]["answer"])
        ref_sup = W["runs"]["baseline"][0]["suppressed"]
        notes, worst = [], 0.0
        for v in versions:
            for i, r in enumerate(W["runs"][v]):
                same, why, d = compare(ref, Path(r["answer"]), WORKLOADS[w])
                withheld_here = int(why.rsplit("; ", 1)[-1].split()[0]) if same and "withheld by rule 5" in why else 0
                if same and r["suppressed"] != ref_sup + withheld_here:
                    same, why = False, f"{r['suppressed']} suppressed groups vs {ref_sup}"
                worst = max(worst, d)
                if not same:
                    ok = False
                    notes.append(f"{v} run {i}: {why}")
        W["answers_equal"] = not notes
        W["answer_notes"] = notes or [f"all {sum(len(x) for x in W['runs'].values())} answers equal the baseline's first"]
        W["max_abs_diff"] = worst
        for v in versions:
            timed = [r["wall_s"] for r in W["runs"][v] if not r["warmup"]]
            W.setdefault("summary", {})[v] = {
                "median_s": statistics.median(timed), "min_s": min(timed), "runs_s": timed,
                "warmup_s": [r["wall_s"] for r in W["runs"][v] if r["warmup"]],
                "median_timings": {k: statistics.median([r["timings"].get(k, float("nan")) for r in W["runs"][v] if not r["warmup"]])
                                   for k in W["runs"][v][-1]["timings"]},
                "rows": W["runs"][v][-1]["rows"], "suppressed": W["runs"][v][-1]["suppressed"],
                "details": W["runs"][v][-1]["details"]}
        s = W["summary"]
        W["ratio"] = s["current"]["median_s"] / s["baseline"]["median_s"]
        W["ratio_min"] = s["current"]["min_s"] / s["baseline"]["min_s"]
    R["elapsed_s"] = time.monotonic() - t_start
    R["load_after"] = os.getloadavg()

    # -- report ---------------------------------------------------------------------------------
    L = ["## Disclosure-control cost: current tree vs baseline " + R["baseline"]["commit"][:7], ""]
    L.append(f"Command: `{command}` · started {started} · {R['elapsed_s']:.0f} s · {os.cpu_count()} CPUs · Python "
             f"{platform.python_version()} · load {load_before[0]:.2f} → {R['load_after'][0]:.2f} · current = "
             f"{R['current']['head'][:7]}" + (f" + {len(R['current']['changed_files'])} changed or new source files"
                                      if R["current"]["changed_files"] else " (sources clean)"))
    L.append("")
    L.append(f"3 loopback node processes per version (TLS), peddy 2,504 × 23,770 split round-robin, combine='plain', "
             f"researchers: {args.researchers}. Wall: end-to-end `Federation.sql`, median of {args.reps} after {args.warmup} "
             f"warm-up, versions interleaved.")
    L.append("")
    L.append("| workload | policy | groups | baseline | current | current/baseline | best-of ratio | runs baseline / current (s) | answers |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        W = R["workloads"].get(w)
        if not W:
            continue
        s = W["summary"]
        runs = " / ".join(", ".join(f"{x:.3f}" for x in s[v]["runs_s"]) for v in versions)
        L.append(f"| {W['label']} | {W['policy']} | {s['baseline']['rows']:,} | {fmt_s(s['baseline']['median_s'])} | "
                 f"{fmt_s(s['current']['median_s'])} | {W['ratio']:.2f}× | {W['ratio_min']:.2f}× | {runs} | "
                 f"{'equal' if W['answers_equal'] else '**DIFFER**'} |")
    L.append("")
    L.append("Coordinator timings (median, s; baseline → current): " + "; ".join(
        f"{w}: " + ", ".join(f"{k} {R['workloads'][w]['summary']['baseline']['median_timings'].get(k, float('nan')):.3f} → "
                             f"{R['workloads'][w]['summary']['current']['median_timings'].get(k, float('nan')):.3f}"
                             for k in R["workloads"][w]["summary"]["baseline"]["median_timings"])
        for w in workloads if w in R["workloads"]))
    for w in workloads:
        W = R["workloads"].get(w)
        if not W:
            continue
        gate = []
        for v in versions:  # evidence that the membership gate ran (its score in provenance)
            d = W["summary"][v]["details"]
            risk = d.get("membership_risk") if isinstance(d, dict) else None
            if isinstance(risk, dict) and risk:
                p = [x["power"] for x in risk.values() if isinstance(x, dict) and isinstance(x.get("power"), int | float)]
                gate.append(f"{v} membership-risk score from {len(p)} nodes (max power {max(p, default=float('nan')):.3f})")
            else:
                gate.append(f"{v} no membership-risk score (provenance details: {sorted(d) if isinstance(d, dict) else d})")
        W["gate_evidence"] = gate
        L.append(f"- {w}: {'; '.join(W['answer_notes'][:5])}; {', '.join(gate)}")
    text = "\n".join(L)
    print(text)

    out = json.dumps(R, indent=1, default=str)
    (WORK / "results.json").write_text(out)
    if args.json:
        args.json.write_text(out)
    if not args.keep:
        for v in versions:
            for phase in PHASES:
                shutil.rmtree(WORK / "run" / v / phase, ignore_errors=True)
        shutil.rmtree(WORK / "run" / "answers", ignore_errors=True)
    if not ok:
        log("FAILED: the two versions' answers differ (see above)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
