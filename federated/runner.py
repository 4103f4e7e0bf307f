"""Run a genofed training run on real Flower processes.

:class:`FlowerDeployment` starts a SuperLink and one SuperNode per node on loopback (telemetry
and update checks off, no network needed), each SuperNode pointed at its node's ``node.toml``;
:meth:`FlowerDeployment.train` writes the run's Flower App (a FAB holding ``run.json``, the
settings every party reads), submits it with ``flwr run`` and follows ``progress.jsonl`` until the
ServerApp writes ``result.json``.

In a real deployment each biobank runs its own SuperNode (``genofed-supernode`` below shows the
command) against the analyst's SuperLink, with TLS; see docs/federated-learning.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genofed.engine.errors import ConfigError, GenofedError

from .apps import RUN_FILE, RunSettings

CONNECTION = "genofed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} is not installed; install genofed's federated-learning extra: pip install 'genofed[fl]'")
    return found


def flower_env(home: Path, poll_interval: float = 0.1) -> dict[str, str]:
    """The environment of every Flower process: its own home, no telemetry or update checks, this
    Python's tools first on PATH, and the SuperExec's task poll (Flower: 1 s) at ``poll_interval``."""
    env = dict(os.environ)
    if poll_interval > 0:  # 0: Flower's own intervals
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(max(0.01, min(60.0, poll_interval)))
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    return env


class TrainingError(GenofedError):
    """A training run failed; the message says where (a node's refusal, a round, a process)."""


class FlowerDeployment:
    """A SuperLink and one SuperNode per node, as local processes on loopback.

    Parameters
    ----------
    node_configs
        The ``node.toml`` of each node (its SuperNode's ClientApp reads features there).
    workdir
        Logs, Flower's home and run folders (a temporary directory when omitted).
    poll_interval
        Seconds a SuperNode, its SuperExec and the ServerApp sleep between polls when idle
        (0: Flower's own intervals, 3 s, 1 s and 3 s).
    superlink
        ``host:port`` of a SuperLink that is already running (the biobanks run its SuperNodes):
        nothing is started, runs are only submitted there.
    """

    def __init__(self, node_configs: list[Path], workdir: Path | None = None, poll_interval: float = 0.1,
                 superlink: str | None = None):
        if superlink is not None:
            host, _, port = superlink.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--superlink must be host:port, got {superlink!r}")
        elif not node_configs:
            raise ConfigError("a Flower deployment needs at least one node")
        self.superlink = superlink
        self.node_configs = [Path(p).resolve() for p in node_configs]
        for p in self.node_configs:
            if not p.exists():
                raise ConfigError(f"node config {p} does not exist")
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="genofed-flower-")
        self.workdir = Path(workdir or self._tmp.name).resolve()  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self.home = self.workdir / "flwr-home"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.port = 0

    # -- processes --------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=flower_env(self.home, self.poll_interval), cwd=self.workdir,
                             start_new_session=True)
        log.close()
        self.procs.append((name, p))
        return p

    def _connect(self, address: str) -> None:
        """Flower's own config (in this deployment's FLWR_HOME): where ``flwr run`` submits."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\ninsecure = true\n')

    def start(self, timeout: float = 60.0) -> FlowerDeployment:
        """Start the SuperLink, wait for it to listen, then start the SuperNodes (with
        ``superlink`` given: only point ``flwr run`` at it)."""
        if self.superlink is not None:
            self._connect(self.superlink)
            return self
        self.port = _free_port()
        self._connect(f"127.0.0.1:{self.port}")
        self._spawn("superlink", [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"])
        end = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                self._check_alive()
                if time.monotonic() > end:
                    self.stop()
                    raise TrainingError(f"the Flower SuperLink did not start within {timeout:.0f} s; see {self.workdir / 'superlink.log'}") from None
                time.sleep(0.2)
        for i, cfg in enumerate(self.node_configs):
            launcher = ([sys.executable, "-m", "genofed.federated.flowerproc", "supernode", str(self.poll_interval)]
                        if self.poll_interval > 0 else [_bin("flower-supernode")])
            self._spawn(f"supernode-{i}", [*launcher, "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(_free_port()),
                                           "--node-config", f'genofed-node="{cfg}"'])
        return self

    def _check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                tail = _tail(self.workdir / f"{name}.log")
                raise TrainingError(f"the Flower {name} process exited (code {p.returncode}): {tail}")

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s)."""
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 10
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        self.procs.clear()

    def __enter__(self) -> FlowerDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- runs ---------------------------------------------------------------------------------------
    def train(self, settings: RunSettings, token: str, out: Path, *, timeout: float = 1800.0,
              progress: Callable[[dict[str, Any]], None] | None = None, record: bool = False) -> dict[str, Any]:
        """Submit one run and wait for its result (``out/result.json``, also returned)."""
        settings.check()
        out = Path(out).resolve()
        if "'" in str(out) or '"' in str(out):
            raise ConfigError("the output folder's path must not contain quotes")
        if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in token):
            raise ConfigError("the researcher token must be a genofed token (letters, digits, - and _)")
        out.mkdir(parents=True, exist_ok=True)
        for f in ("result.json", "progress.jsonl", "received.npz"):
            (out / f).unlink(missing_ok=True)
        settings.poll_interval = self.poll_interval
        fab = write_app(self.workdir / "apps" / f"run-{int(time.time() * 1000)}", settings)
        env = flower_env(self.home, self.poll_interval)
        cmd = [_bin("flwr"), "run", str(fab), CONNECTION, "--format", "json", "--run-config", f"out='{out}'",
               "--run-config", f"token='{token}'", "--run-config", f"record={'true' if record else 'false'}"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.workdir, timeout=120)
        if res.returncode != 0:
            raise TrainingError(f"flwr run failed: {(res.stderr or res.stdout).strip()[-800:]}")
        return self.wait(out, timeout, progress)

    def wait(self, out: Path, timeout: float, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        end = time.monotonic() + timeout
        seen = 0
        result_file = out / "result.json"
        while True:
            lines = (out / "progress.jsonl").read_text().splitlines() if (out / "progress.jsonl").exists() else []
            for ln in lines[seen:]:
                if progress is not None:
                    progress(json.loads(ln))
            seen = len(lines)
            if result_file.exists():
                result: dict[str, Any] = json.loads(result_file.read_text())
                if not result.get("ok"):
                    raise TrainingError(f"training failed: {result.get('error')}")
                return result
            self._check_alive()
            if time.monotonic() > end:
                raise TrainingError(f"no result within {timeout:.0f} s; see the logs in {self.workdir}")
            time.sleep(0.2)


def write_app(folder: Path, settings: RunSettings) -> Path:
    """The run's Flower App: a pyproject, two one-line modules and ``run.json``."""
    pkg = folder / "genofed_run"
    pkg.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "genofed-run"\nversion = "1.0.0"\ndescription = "A genofed federated training run"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "genofed"\n\n'
        '[tool.flwr.app.components]\nserverapp = "genofed_run.server:app"\nclientapp = "genofed_run.client:app"\n\n'
        '[tool.flwr.app.config]\nout = ""\ntoken = ""\nrecord = false\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "server.py").write_text("from pathlib import Path\n\nfrom genofed.federated.apps import make_server_app\n\n"
                                   f'app = make_server_app(Path(__file__).with_name("{RUN_FILE}"))\n')
    (pkg / "client.py").write_text("from pathlib import Path\n\nfrom genofed.federated.apps import make_client_app\n\n"
                                   f'app = make_client_app(Path(__file__).with_name("{RUN_FILE}"))\n')
    (pkg / RUN_FILE).write_text(settings.to_json())
    return folder


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


def run_training(node_configs: list[Path], token: str, settings: RunSettings, out: Path, *, superlink: str | None = None,
                 poll_interval: float = 0.1, timeout: float = 1800.0, workdir: Path | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one model: on a local Flower deployment started for the run (``superlink`` None), or
    on the running SuperLink at ``superlink`` ("host:port") whose SuperNodes the biobanks run."""
    if superlink is None:
        settings.nodes = len(node_configs)
    with FlowerDeployment(node_configs, workdir=workdir, poll_interval=poll_interval, superlink=superlink) as dep:
        return dep.train(settings, token, out, timeout=timeout, progress=progress)
