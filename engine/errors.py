"""The exception hierarchy: one root, one subclass per phase.

Messages name the problem and the remedy. Privacy errors (`DisclosureError`) never carry the
protected values (cell counts, sample IDs).
"""

from __future__ import annotations


class GenofedError(Exception):
    """Root of every error genofed raises on purpose."""

    code = "error"


class ConfigError(GenofedError, ValueError):
    """A federation, node or policy configuration is invalid."""

    code = "config"


class IngestError(GenofedError, ValueError):
    """Input data (VCF, sample sheet, clinical table) could not be ingested."""

    code = "ingest"


class ParseError(GenofedError, ValueError):
    """SQL could not be parsed. Keeps sqlglot's line and column."""

    code = "parse"

    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.line = line
        self.col = col


class PlanningError(GenofedError, ValueError):
    """The query is valid SQL but cannot be run federated (unknown name, unsupported construct)."""

    code = "planning"


class UnsupportedError(PlanningError):
    """A construct or function genofed does not support; the message lists what is supported."""

    code = "unsupported"


class DisclosureError(GenofedError):
    """A release was refused by disclosure control. Names the rule, never the protected values."""

    code = "disclosure"

    def __init__(self, message: str, rule: str = "disclosure"):
        super().__init__(message)
        self.rule = rule


class ExecutionError(GenofedError, ValueError):
    """An execution engine (DuckDB, Hail, NumPy) failed on a fragment's data: an overflow, a
    conversion, a division by zero. Translated at the node from the engine's exception, whose
    message can carry the operands (people's values): ours names the kind of failure, the
    construct and the columns, never a value. ``kind``, ``construct`` and ``columns`` hold them."""

    code = "execution"

    def __init__(self, message: str, kind: str = "engine", construct: str | None = None, columns: tuple[str, ...] = ()):
        super().__init__(message)
        self.kind = kind
        self.construct = construct
        self.columns = tuple(columns)


class CombineError(GenofedError):
    """Partials from the nodes could not be combined."""

    code = "combine"


class NodeError(GenofedError):
    """A node failed, refused or did not answer. Carries the node name and an error code."""

    code = "node"

    def __init__(self, node: str, code: str, reason: str):
        super().__init__(f"node {node!r} {code}: {reason}")
        self.node = node
        self.node_code = code
        self.reason = reason


class AuthError(NodeError):
    """The node refused the caller's credentials."""


class BackendUnsupportedError(NodeError):
    """A node's execution backend cannot run the query (e.g. an analysis on a Hail node); the
    reason names what, and the node's steward can switch that node's backend."""


class FragmentError(GenofedError, ValueError):
    """A node refused a fragment during its own validation."""

    code = "fragment"
