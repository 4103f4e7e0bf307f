"""genofed: federated SQL over genotypes and clinical tables held by several biobanks."""

from __future__ import annotations

from genofed.engine.errors import (
    AuthError,
    BackendUnsupportedError,
    CombineError,
    ConfigError,
    DisclosureError,
    FragmentError,
    GenofedError,
    IngestError,
    NodeError,
    ParseError,
    PlanningError,
    UnsupportedError,
)

__version__ = "0.1.0"


def connect(path, timeout=None, token=None):  # noqa: ANN001
    """Connect to a federation directory, optionally with your own researcher ``token`` (see
    :func:`genofed.api.connect`)."""
    from genofed.api import connect as _connect

    return _connect(path, timeout=timeout, token=token)


def train(path, features, label, **options):  # noqa: ANN001, ANN201
    """Train a model across the nodes of the federation at ``path`` with Flower (see
    :func:`genofed.api.train`)."""
    from genofed.api import train as _train

    return _train(path, features, label, **options)


__all__ = [
    "AuthError",
    "BackendUnsupportedError",
    "CombineError",
    "ConfigError",
    "DisclosureError",
    "FragmentError",
    "GenofedError",
    "IngestError",
    "NodeError",
    "ParseError",
    "PlanningError",
    "UnsupportedError",
    "connect",
    "train",
]
