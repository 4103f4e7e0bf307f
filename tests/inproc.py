"""Node servers started inside the test process (real Arrow Flight servers on loopback).

Used where many nodes, or nodes sharing one heavy runtime (Hail's JVM), would make separate
processes too slow; everything but process isolation is production code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w

from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.connectors.node import NodeServer, make_backend


def set_backend(root: Path, node: str, backend: str) -> None:
    """Switch one node of a federation directory to another execution backend (its node.toml)."""
    import tomllib

    cfg = FederationConfig.load(root)
    n = next(x for x in cfg.nodes if x.name == node)
    data = tomllib.loads((root / n.config).read_text())
    data["node"]["backend"] = backend
    if backend == "hail":
        data["hail"] = {"master": "local[2]", "driver_memory": "3g"}
    (root / n.config).write_text(tomli_w.dumps(data))


@contextlib.contextmanager
def serve_in_process(root: Path, wrap: Callable[[Any, str], Any] | None = None) -> Iterator[dict[str, Any]]:
    """Start the key holder (when the federation has one) and every node of ``root`` in this
    process; yields ``{node name: backend}``. ``wrap(backend, node)`` may wrap a backend (faults)."""
    servers: list[Any] = []
    backends: dict[str, Any] = {}
    try:
        fed = FederationConfig.load(root)
        kh_cfg = root / "keyholder" / "keyholder.toml"
        if kh_cfg.exists():
            from genofed.privacy.secure.keyholder import KeyHolderConfig, KeyHolderServer

            kh = KeyHolderServer(KeyHolderConfig.load(kh_cfg))
            servers.append(kh)
            (root / "keyholder" / "keyholder.port").write_text(str(kh.port))
        for n in fed.nodes:
            cfg = NodeConfig.load(root / n.config)
            backend = make_backend(cfg)
            backends[n.name] = backend
            server = NodeServer(cfg, "grpc://127.0.0.1:0", backend=wrap(backend, n.name) if wrap else backend)
            servers.append(server)
            (root / n.name / "node.port").write_text(str(server.port))
        yield backends
    finally:
        for s in servers:
            s.shutdown()
