"""Local federations: a researcher's sandbox and the tests' harness.

``init`` splits one cohort over several node stores and writes ``DIR/federation.toml``; ``up``
starts one node server process per node on free loopback ports; ``down`` stops them.

By default ``init`` also makes a local CA (``DIR/tls``) and a server certificate for every node
and the key holder, so every Flight link is ``grpc+tls://``; ``federation.toml`` then has::

    [tls]
    ca = "tls/ca.crt"          # verifies the nodes and the key holder (relative to this file)
    cert = "..."               # optional: the researcher's client certificate (mutual TLS)
    key = "..."
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import tomli_w

from genofed.engine.errors import ConfigError, GenofedError, NodeError
from genofed.engine.privatefs import open_private, private_dir, write_private
from genofed.privacy.disclosure import DEFAULT_MIN_COUNT

from .config import NodeConfig, Researcher, hash_token
from .ingest import _read_table, ingest, normalise_name, read_clinical, read_sample_sheet
from .tls import ClientTLS, check_table

FEDERATION_FILE = "federation.toml"
PRIVATE_UMASK = 0o077  # what the node and key holder processes of a local federation write is their owner's only
KEYHOLDER_DIR = "keyholder"
TLS_DIR = "tls"


@dataclass
class NodeEntry:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""
    config: str = ""  # node.toml path, relative to the federation dir (local federations)
    tls: bool = False

    def location(self, root: Path) -> str:
        port = self.port or _read_port(root, self.name)
        scheme = "grpc+tls" if self.tls else "grpc"
        return f"{scheme}://{self.host}:{port}"


@dataclass
class FederationConfig:
    root: Path
    name: str
    nodes: list[NodeEntry]
    min_count: int = DEFAULT_MIN_COUNT
    combine: str = "mpc"
    timeout_s: float = 60.0
    keyholder: dict[str, Any] = field(default_factory=dict)  # host, port, token, config, tls
    extra: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, str] = field(default_factory=dict)  # [tls] ca, cert, key (relative to root)

    def client_tls(self) -> ClientTLS | None:
        """The CA (and client certificate) this federation's clients dial ``grpc+tls://`` with."""
        return ClientTLS.load(self.tls, self.root, f"{self.root / FEDERATION_FILE} [tls]")

    def keyholder_location(self) -> str | None:
        """Where the key holder listens (None when the federation has none)."""
        kh = self.keyholder
        if not kh:
            return None
        port = int(kh.get("port", 0)) or _read_port(self.root, KEYHOLDER_DIR, what="key holder")
        scheme = "grpc+tls" if kh.get("tls", bool(self.tls)) else "grpc"
        return f"{scheme}://{kh.get('host', '127.0.0.1')}:{port}"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FederationConfig:
        p = Path(path)
        f = p / FEDERATION_FILE if p.is_dir() else p
        if not f.exists():
            raise ConfigError(f"{f} does not exist: give a federation directory made by 'genofed federation init' or a federation.toml")
        try:
            data = tomllib.loads(f.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{f}: invalid TOML: {e}") from None
        fed = data.get("federation", {})
        tls = check_table(data.get("tls"), str(f), "client")  # with [tls], nodes are grpc+tls:// unless tls = false
        nodes = []
        for i, n in enumerate(data.get("nodes", [])):
            if "name" not in n or "token" not in n:
                raise ConfigError(f"{f}: [[nodes]] entry {i + 1} needs name and token")
            nodes.append(NodeEntry(n["name"], n.get("host", "127.0.0.1"), int(n.get("port", 0)), n["token"], n.get("config", ""), bool(n.get("tls", bool(tls)))))
        if not nodes:
            raise ConfigError(f"{f}: no [[nodes]]; a federation needs at least one node")
        combine = fed.get("combine", "mpc")
        if combine not in ("plain", "mpc", "he"):
            raise ConfigError(f"{f}: [federation] combine must be plain, mpc or he, got {combine!r}")
        kh = data.get("keyholder", {})
        if kh and "token" not in kh:
            raise ConfigError(f"{f}: [keyholder] needs a token (and host/port, or config for a local key holder)")
        if combine == "he" and not kh:
            raise ConfigError(f"{f}: combine = \"he\" needs a [keyholder] table")
        return cls(f.parent, fed.get("name", f.parent.name), nodes, int(fed.get("min_count", DEFAULT_MIN_COUNT)), combine, float(fed.get("timeout_s", 60.0)), dict(kh), tls=tls)

    def save(self) -> Path:
        data = {
            "federation": {"name": self.name, "min_count": self.min_count, "combine": self.combine, "timeout_s": self.timeout_s},
            "nodes": [
                {k: v for k, v in {"name": n.name, "host": n.host, "port": n.port, "token": n.token, "config": n.config, "tls": n.tls}.items() if v not in ("",)}
                for n in self.nodes
            ],
        }
        if self.keyholder:
            data["keyholder"] = dict(self.keyholder)
        if self.tls:
            data["tls"] = dict(self.tls)
        return write_private(self.root / FEDERATION_FILE, tomli_w.dumps(data))  # holds the researcher's token


def _read_port(root: Path, node: str, what: str = "node") -> int:
    f = root / node / f"{'keyholder' if what == 'key holder' else 'node'}.port"
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        raise NodeError(node, "unavailable", f"{what} not running (no port in {f}); start it with 'genofed federation up {root}'") from None


def init_federation(
    root: str | os.PathLike[str],
    vcf: str | os.PathLike[str],
    samples: str | os.PathLike[str],
    split: str | os.PathLike[str] | None = None,
    *,
    n_nodes: int = 3,
    clinical: Mapping[str, str | os.PathLike[str]] | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
    node_min_count: int | None = None,
    allow_min_max: bool = False,
    allow_plain: bool = False,
    combine: str = "mpc",
    progress: bool = False,
    tls: bool = True,
) -> FederationConfig:
    """Split a cohort over node stores and write ``ROOT/federation.toml``.

    Parameters
    ----------
    split
        TSV/CSV whose first column is the sample id and which has a ``node`` column. Without it,
        samples are dealt round-robin over ``n_nodes`` nodes named ``node_1..``.
    min_count
        Federation-wide minimum count, also each node's own unless ``node_min_count`` is given.
    allow_plain
        Write node policies that allow ``combine='plain'`` (development and testing only).
    combine
        The federation's default combine mode (``mpc``, ``he`` or ``plain``).
    tls
        Make a CA in ``ROOT/tls`` and a certificate for every node and the key holder (for
        localhost and 127.0.0.1), and configure every Flight link as ``grpc+tls://`` (the
        default). False: plain ``grpc://`` (bearer tokens and partials travel unencrypted).
    """
    if combine == "plain" and not allow_plain:
        raise ConfigError("combine='plain' as the default needs node policies that allow it: pass allow_plain=True (development only)")
    root = Path(root)
    private_dir(root)  # tokens, keys, stores and privacy state: the owner's only
    sheet = read_sample_sheet(samples)
    ids = sheet.column("sample_id")
    if split is not None:
        st = _read_table(Path(split), "split file")
        names = [normalise_name(c) for c in st.column_names]
        if "node" not in names:
            raise ConfigError(f"split file {split} needs a 'node' column (first column: sample id)")
        sid = st.column(0).cast(pa.string())
        node_col = st.column(names.index("node")).cast(pa.string())
        assign = dict(zip(sid.to_pylist(), node_col.to_pylist()))
        unknown = [s for s in assign if s not in set(ids.to_pylist())]
        if unknown:
            raise ConfigError(f"split file {split}: {len(unknown)} sample ids are not in the sample sheet")
    else:
        assign = {s: f"node_{i % n_nodes + 1}" for i, s in enumerate(ids.to_pylist())}
    node_names = sorted({v for v in assign.values() if v})
    clin_tables = {normalise_name(k): read_clinical(v) for k, v in (clinical or {}).items()}
    token = secrets.token_urlsafe(24)
    kh_clients = [{"name": "researcher", "role": "coordinator", "token_sha256": hash_token(token)}]
    private_dir(root / KEYHOLDER_DIR)
    if tls:
        from .tls import make_ca, make_cert

        if not (root / TLS_DIR / "ca.crt").exists():
            make_ca(root / TLS_DIR, name=f"genofed {root.name} local CA")
        make_cert(root / TLS_DIR, root / KEYHOLDER_DIR / TLS_DIR, "keyholder")
    entries = []
    key_secret = secrets.token_urlsafe(32)  # the nodes' own: blinds group keys, keys MPC links (the researcher never has it)
    cfgs = []
    for name in node_names:
        members = pa.array([s for s, n in assign.items() if n == name], pa.string())
        node_sheet = sheet.filter(pc.is_in(ids, value_set=members))
        ndir = root / name
        private_dir(ndir)
        ingest(ndir / "store", vcf, node_sheet, dict(clin_tables), progress=progress)
        cfg = NodeConfig(
            name=name,
            store=Path("store"),
            min_count=node_min_count if node_min_count is not None else min_count,
            allow_min_max=allow_min_max,
            allow_plain=allow_plain,
            researchers=[Researcher("researcher", hash_token(token))],
            keyholder={"port_file": f"../{KEYHOLDER_DIR}/keyholder.port", "token": (kh_token := secrets.token_urlsafe(24)),
                       **({"ca": f"../{TLS_DIR}/ca.crt"} if tls else {})},
            tls={"cert": f"{TLS_DIR}/node.crt", "key": f"{TLS_DIR}/node.key"} if tls else {},
            training=_sandbox_training(allow_plain),
            key_secret=key_secret,
            federation_ca=f"../{TLS_DIR}/ca.crt" if tls else "",
        )
        if tls:
            make_cert(root / TLS_DIR, ndir / TLS_DIR, "node")
        kh_clients.append({"name": name, "role": "node", "token_sha256": hash_token(kh_token)})
        cfgs.append(cfg)
        entries.append(NodeEntry(name, token=token, config=f"{name}/node.toml", tls=tls))
    # every node pins the federation: its members' names and certificate fingerprints
    from .config import Member
    from .tls import fingerprint

    pinned = [Member(c.name, fingerprint(root / c.name / TLS_DIR / "node.crt") if tls else "") for c in cfgs]
    for cfg in cfgs:
        cfg.members = list(pinned)
        write_private(root / cfg.name / "node.toml", tomli_w.dumps(cfg.to_toml()))
    kh_tls = {"tls": {"cert": f"{TLS_DIR}/keyholder.crt", "key": f"{TLS_DIR}/keyholder.key"}} if tls else {}
    write_private(root / KEYHOLDER_DIR / "keyholder.toml", tomli_w.dumps({"keyholder": {"name": f"{root.name}-keys"}, "clients": kh_clients, **kh_tls}))
    fed = FederationConfig(root, root.name, entries, min_count=min_count, combine=combine,
                           keyholder={"token": token, "config": f"{KEYHOLDER_DIR}/keyholder.toml", "tls": tls},
                           tls={"ca": f"{TLS_DIR}/ca.crt"} if tls else {})
    fed.save()
    return fed


def _sandbox_training(allow_plain: bool):
    """A local (sandbox) federation lets its researcher train models: [training] allow = true."""
    from genofed.federated.features import TrainingPolicy

    return TrainingPolicy(allow=True, allow_plain=allow_plain)


def _previous_port(port_file: Path, host: str) -> int:
    """The port a node of a local federation served on before it stopped (or crashed), if it is
    still free: connected clients then reach the restarted node where they left it. 0 otherwise."""
    import socket

    try:
        port = int(port_file.read_text().strip())
    except (OSError, ValueError):
        return 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT leftovers are fine
        try:
            sock.bind((host, port))
        except OSError:
            return 0
    return port


def _alive(pid: int) -> bool:
    _reap(pid)  # a child that died (e.g. killed) is a zombie until reaped, and zombies answer kill(pid, 0)
    try:  # a process still exiting, or another's zombie, is not alive either
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(root: str | os.PathLike[str], timeout: float = 60.0) -> dict[str, int]:
    """Start one node server per node on free loopback ports; return ``{node: port}`` once all answer."""
    from .client import FlightTransport

    fed = FederationConfig.load(root)
    root = fed.root
    procs: dict[str, subprocess.Popen] = {}
    if fed.keyholder.get("config"):
        _start_keyholder(fed, timeout)
    for n in fed.nodes:
        ndir = root / n.name
        pidf = ndir / "node.pid"
        if pidf.exists() and _alive(int(pidf.read_text() or 0)):
            continue
        port = n.port or _previous_port(ndir / "node.port", n.host)  # a restarted node keeps its address
        for stale in ("node.port", "node.pid"):
            (ndir / stale).unlink(missing_ok=True)
        if not n.config:
            raise ConfigError(f"node {n.name!r} has no local config; 'up' starts local federations only")
        log = open_private(ndir / "node.log", "ab")  # the steward's: engine messages there may quote values
        # the nodes of a local federation share this machine's cores: split the compiled
        # kernels' threads between them instead of oversubscribing
        env = dict(os.environ)
        env.setdefault("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, len(fed.nodes)))))
        procs[n.name] = subprocess.Popen(
            [sys.executable, "-m", "genofed.cli", "node", "serve", "--config", str(root / n.config),
             "--host", n.host, "--port", str(port), "--port-file", str(ndir / "node.port")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=env, umask=PRIVATE_UMASK,
        )
        write_private(pidf, str(procs[n.name].pid))
    deadline = time.monotonic() + timeout
    ports: dict[str, int] = {}
    client_tls = fed.client_tls()
    for n in fed.nodes:
        tls_since: float | None = None
        while True:
            p = procs.get(n.name)
            if p is not None and p.poll() is not None:
                down(root)
                raise NodeError(n.name, "start_failed", f"node server exited with code {p.returncode}; see {root / n.name / 'node.log'}")
            try:
                t = FlightTransport(n.name, n.location(root), n.token, tls=client_tls)
                t.catalog(timeout=2.0)
                t.close()
                ports[n.name] = _read_port(root, n.name) if not n.port else n.port
                break
            except GenofedError as e:
                if isinstance(e, NodeError) and e.node_code == "tls":
                    # a server still starting can reset a handshake; one that keeps failing it is
                    # misconfigured, and waiting longer will not help
                    tls_since = tls_since if tls_since is not None else time.monotonic()
                    if time.monotonic() - tls_since > 3.0:
                        down(root)
                        raise
                else:
                    tls_since = None
                if time.monotonic() > deadline:
                    down(root)
                    raise NodeError(n.name, "start_failed", f"did not answer within {timeout:g} s; see {root / n.name / 'node.log'}") from None
                time.sleep(0.1)
    return ports


def _start_keyholder(fed: FederationConfig, timeout: float) -> None:
    from genofed.privacy.secure.keyholder import KeyHolderClient

    kdir = fed.root / KEYHOLDER_DIR
    pidf = kdir / "keyholder.pid"
    if pidf.exists() and _alive(int(pidf.read_text() or 0)):
        return
    (kdir / "keyholder.port").unlink(missing_ok=True)
    log = open_private(kdir / "keyholder.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genofed.cli", "keyholder", "serve", "--config", str(fed.root / fed.keyholder["config"]),
         "--host", fed.keyholder.get("host", "127.0.0.1"), "--port", str(fed.keyholder.get("port", 0)),
         "--port-file", str(kdir / "keyholder.port")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, umask=PRIVATE_UMASK,
    )
    write_private(pidf, str(proc.pid))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise NodeError("keyholder", "start_failed", f"key holder exited with code {proc.returncode}; see {kdir / 'keyholder.log'}")
        try:
            loc = fed.keyholder_location()
            c = KeyHolderClient(str(loc), fed.keyholder["token"], tls=fed.client_tls())
            c.public_keys(timeout=2.0)
            c.close()
            return
        except GenofedError as e:
            if isinstance(e, NodeError) and e.node_code == "tls":
                raise
            if time.monotonic() > deadline:
                raise NodeError("keyholder", "start_failed", f"did not answer within {timeout:g} s; see {kdir / 'keyholder.log'}") from None
            time.sleep(0.1)


def down(root: str | os.PathLike[str], timeout: float = 10.0) -> list[str]:
    """Stop the node servers (and the local key holder) ``up`` started. Returns what was stopped."""
    fed = FederationConfig.load(root)
    stopped = []
    services = [(n.name, fed.root / n.name, "node") for n in fed.nodes]
    if fed.keyholder.get("config"):
        services.append((KEYHOLDER_DIR, fed.root / KEYHOLDER_DIR, "keyholder"))
    for name, ndir, kind in services:
        pidf = ndir / f"{kind}.pid"
        if not pidf.exists():
            continue
        try:
            pid = int(pidf.read_text().strip())
        except ValueError:
            pid = 0
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            stopped.append(name)
        pidf.unlink(missing_ok=True)
        (ndir / f"{kind}.port").unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def history_gates_off(root: str | os.PathLike[str]) -> None:
    """Switch off the history-based release gates at every node of a local federation: the
    differencing defence and the re-identification gate (membership risk, beacon budget).

    For sandboxes that run many overlapping whole-genome queries as one researcher (the demo,
    arithmetic tests); never for a node holding real people's data. The minimum count, roles,
    hidden and quasi-identifier columns, DP and the audit log stay on.
    """
    import tomllib

    fed = FederationConfig.load(Path(root))
    for n in fed.nodes:
        p = fed.root / n.config
        node = tomllib.loads(p.read_text())
        node.setdefault("policy", {})["differencing"] = False
        node["risk"] = {"max_membership_power": 1.0, "beacon_cap": 1.0}
        write_private(p, tomli_w.dumps(node))


def add_researcher(root: str | os.PathLike[str], name: str, roles: list[str] | None = None) -> str:
    """Register a researcher at every node of a local federation; returns their new token.

    Each node's ``node.toml`` gets a ``[[researchers]]`` entry holding only the sha256 of the
    token (the token itself is written nowhere), and the local key holder, when there is one,
    learns it as a coordinator so the researcher can use ``combine='he'``. Hand the token over
    securely: it cannot be recovered. The researcher connects with
    ``genofed.connect(root, token=token)``.

    Nodes and the key holder read their clients when they start: restart running ones
    (``down(root)`` then ``up(root)``) before the token is accepted.

    Parameters
    ----------
    name
        The researcher's name at the nodes (their DP ledger, audit records and rate limit go
        by it); must not be registered at any node yet.
    roles
        ``[roles.*]`` each node defines (which tables the researcher may read); None or empty:
        every table.

    Examples
    --------
    >>> token = add_researcher("fed", "bob", roles=["genetics"])  # doctest: +SKIP
    """
    from .config import load_toml

    fed = FederationConfig.load(root)
    name = name.strip()
    if not name:
        raise ConfigError("a researcher needs a non-empty name")
    roles = list(roles or [])
    token = secrets.token_urlsafe(24)
    digest = hash_token(token)
    updates: list[tuple[Path, dict[str, Any]]] = []
    for n in fed.nodes:
        if not n.config:
            raise ConfigError(f"node {n.name!r} has no local config in {fed.root / FEDERATION_FILE}; its steward adds researchers at the biobank")
        path = fed.root / n.config
        data = load_toml(path, "node config")
        known = [r.get("name") for r in data.get("researchers", [])]
        if name in known:
            raise ConfigError(f"{path}: researcher {name!r} is already registered; choose another name")
        missing = sorted(set(roles) - set(data.get("roles", {})))
        if missing:
            raise ConfigError(f"{path}: roles {missing} are not defined there (defined: {sorted(data.get('roles', {}))}); add [roles.NAME] tables first")
        data.setdefault("researchers", []).append({"name": name, "token_sha256": digest, **({"roles": roles} if roles else {})})
        updates.append((path, data))
    if fed.keyholder.get("config"):
        path = fed.root / fed.keyholder["config"]
        data = load_toml(path, "key holder config")
        if any(c.get("name") == name and c.get("role") == "coordinator" for c in data.get("clients", [])):
            raise ConfigError(f"{path}: researcher {name!r} is already a client of the key holder; choose another name")
        data.setdefault("clients", []).append({"name": name, "role": "coordinator", "token_sha256": digest})
        updates.append((path, data))
    for path, data in updates:  # every file checked before any is written
        write_private(path, tomli_w.dumps(data))
    return token


def running(root: str | os.PathLike[str]) -> list[str]:
    """The node servers (and key holder) of a local federation whose processes are alive."""
    fed = FederationConfig.load(root)
    services = [(n.name, fed.root / n.name / "node.pid") for n in fed.nodes]
    if fed.keyholder.get("config"):
        services.append((KEYHOLDER_DIR, fed.root / KEYHOLDER_DIR / "keyholder.pid"))
    alive = []
    for name, pidf in services:
        try:
            pid = int(pidf.read_text().strip() or 0)
            if pid > 0 and _alive(pid):
                alive.append(name)
        except (OSError, ValueError):
            continue
    return alive
