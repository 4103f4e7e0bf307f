"""Hail, started lazily: one Hail/Spark session per process, on ``local[*]`` or a Spark master.

Importing this module imports nothing heavy. :func:`hail` imports Hail (with an install hint when
it is missing, as ``ibis.load_backend`` does) and :func:`ensure_session` starts the JVM the first
time a fragment needs it, never at import or node start-up.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, GenofedError

INSTALL_HINT = (
    "the hail backend needs Hail: pip install 'genofed[hail]' in an environment of its own "
    "(hail pins rich<13, which flwr cannot share; see docs/hail-backend.md)"
)

_lock = threading.Lock()
_started: HailSettings | None = None


@dataclass(frozen=True)
class HailSettings:
    """Where and how Hail runs (the ``[hail]`` table of a node config).

    Parameters
    ----------
    master
        Spark master URL: ``local[*]`` (default, this machine) or e.g. ``spark://host:7077``,
        ``yarn``, ``k8s://https://...`` in production.
    tmp_dir
        Hail's scratch directory (must be visible to every executor on a cluster).
    analyses
        ``"refuse"`` (default): table functions whose node rounds read genotype planes (GWAS, PCA,
        LD, ...) are refused with :class:`~genofed.engine.errors.BackendUnsupportedError`;
        ``"embedded"``: they run on this node machine with the embedded numpy kernels over the
        store (streaming, bounded memory), not on Spark.
    data_dir
        Where the store's Hail tables are cached (a URI every executor reads on a cluster:
        ``hdfs://``, ``gs://``, ``s3a://`` or a shared mount); default: next to the store version.
    driver_memory
        ``spark.driver.memory`` (e.g. ``"4g"``); the JVM's heap in local mode.
    spark_conf
        Further Spark properties, passed through.
    """

    master: str = "local[*]"
    tmp_dir: str = ""
    driver_memory: str = "4g"
    data_dir: str = ""
    analyses: str = "refuse"
    spark_conf: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HailSettings:
        d = dict(d or {})
        known = {"master", "tmp_dir", "driver_memory", "data_dir", "analyses", "spark_conf"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"[hail]: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        conf = d.get("spark_conf") or {}
        if not isinstance(conf, dict):
            raise ConfigError("[hail] spark_conf must be a table of Spark properties, e.g. spark_conf = {\"spark.executor.memory\" = \"8g\"}")
        master = str(d.get("master", "local[*]"))
        if not master:
            raise ConfigError("[hail] master must be a Spark master URL such as local[*] or spark://host:7077")
        analyses = str(d.get("analyses", "refuse"))
        if analyses not in ("refuse", "embedded"):
            raise ConfigError(f"[hail] analyses = {analyses!r}: choose \"refuse\" or \"embedded\"")
        return cls(master, str(d.get("tmp_dir", "")), str(d.get("driver_memory", "4g")), str(d.get("data_dir", "")),
                   analyses, tuple(sorted((str(k), str(v)) for k, v in conf.items())))


def hail() -> ModuleType:
    """The ``hail`` module, or an error that says how to install it."""
    try:
        import hail as hl
    except ImportError:
        raise GenofedError(INSTALL_HINT) from None
    return hl


def hail_available() -> bool:
    try:
        import hail  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_session(settings: HailSettings) -> ModuleType:
    """Start Hail once per process with ``settings`` (later calls with other settings are refused:
    Spark allows one context per JVM)."""
    global _started
    hl = hail()
    with _lock:
        if _started is not None:
            if _started.master != settings.master:
                raise ConfigError(f"Hail already runs on {_started.master} in this process; one Spark master per process")
            return hl
        tmp = settings.tmp_dir or str(Path(tempfile.gettempdir()) / f"genofed-hail-{os.getuid()}")
        Path(tmp).mkdir(parents=True, exist_ok=True)
        conf = {"spark.driver.memory": settings.driver_memory, "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", **dict(settings.spark_conf)}
        try:
            hl.init(master=settings.master, quiet=True, log=str(Path(tmp) / "hail.log"), tmp_dir=tmp,
                    local_tmpdir=tmp, spark_conf=conf, idempotent=True)
        except Exception as e:  # noqa: BLE001 - Py4J/Spark errors have no common base
            raise GenofedError(f"could not start Hail on {settings.master}: {str(e).strip().splitlines()[0][:300]}; "
                               "check [hail] master in node.toml and that Java 11+ is installed") from None
        _started = settings
    return hl
