"""The backend interface a node executes fragments with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from ..fragment import Fragment
from ..protocol import N_COLUMN  # noqa: F401  (re-exported for backends)


class Backend(ABC):
    """Executes validated fragments over one node store.

    ``compile`` turns a fragment into the backend's own plan; ``execute`` runs it and returns an
    Arrow table with the fragment's key and partial columns plus ``_n``.
    """

    name: str = "backend"

    @abstractmethod
    def catalog(self) -> dict[str, Any]:
        """``{"tables": {table: {column: type}}, "variants_digest": str}`` of this store."""

    @abstractmethod
    def compile(self, fragment: Fragment) -> Any:
        """The backend's executable form of a fragment."""

    @abstractmethod
    def execute(self, fragment: Fragment) -> pa.Table:
        """Run a fragment; returns keys, partials and ``_n``."""

    def sample_sets(self, fragment: Any) -> Any:
        """The samples behind each sample-level group of a fragment
        (:class:`genofed.engine.samplesets.SampleSets`), for the node's differencing defence.
        A backend that cannot compute them makes a node with that defence on refuse to release."""
        from ..errors import GenofedError

        raise GenofedError(f"the {self.name} backend cannot compute sample sets for the differencing defence")

    def has_operation(self, fragment: Fragment) -> bool:  # noqa: ARG002
        """Whether this backend can run the fragment (the planner asks before shipping)."""
        return True

    def close(self) -> None:  # noqa: B027
        """Release resources."""
