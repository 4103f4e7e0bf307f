"""The public Python API: ``genofed.connect(path).sql(query)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from genofed.connectors.client import FlightTransport
from genofed.connectors.federation import FederationConfig
from genofed.engine.coordinator import Coordinator, Provenance, QueryResult
from genofed.engine.schema import Catalog


class Result:
    """A released query result: an Arrow table plus its provenance.

    Examples
    --------
    >>> r = genofed.connect("fed").sql("SELECT super_pop, count(*) AS n FROM samples GROUP BY 1")  # doctest: +SKIP
    >>> r.to_pandas()  # doctest: +SKIP
    """

    def __init__(self, result: QueryResult):
        self._table = result.table
        self.provenance: Provenance = result.provenance

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_pandas(self):
        return self._table.to_pandas()

    def to_polars(self):
        try:
            import polars as pl
        except ImportError:
            raise ImportError("to_polars() needs polars: pip install 'genofed[polars]'") from None
        return pl.from_arrow(self._table)

    @property
    def num_rows(self) -> int:
        return self._table.num_rows

    @property
    def suppressed(self) -> list[dict[str, Any]]:
        return self.provenance.suppressed

    def __repr__(self) -> str:
        sup = f", {len(self.suppressed)} suppressed" if self.suppressed else ""
        return f"<genofed.Result {self._table.num_rows} rows × {self._table.num_columns} cols, combine={self.provenance.combine}{sup}>\n{self._table.to_pandas().to_string(max_rows=20)}"


class Federation:
    """A connection to the nodes of a federation.

    Parameters
    ----------
    config
        A loaded :class:`FederationConfig`.
    timeout
        Seconds each node has to answer (default: the federation's ``timeout_s``).
    """

    def __init__(self, config: FederationConfig, timeout: float | None = None):
        self.config = config
        self._transports = [FlightTransport(n.name, n.location(config.root), n.token) for n in config.nodes]
        self._keyholder = None
        if config.keyholder:
            self._keyholder = _LazyKeyHolder(config)
        self._coord = Coordinator(
            self._transports,
            min_count=config.min_count,
            timeout=timeout if timeout is not None else config.timeout_s,
            combine=config.combine,
            keyholder=self._keyholder,
        )
        if config.combine == "mpc":
            from genofed.privacy.secure.mpc import prewarm

            prewarm()

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.config.nodes]

    def catalog(self, refresh: bool = False) -> Catalog:
        """Tables and columns queryable at every node."""
        return self._coord.catalog(refresh)

    def sql(self, query: str, combine: str | None = None) -> Result:
        """Run a federated SQL query; see the README for the supported subset.

        Parameters
        ----------
        query
            One SELECT statement (DuckDB dialect) over the federated schema.
        combine
            ``mpc`` (MPyC secret sharing), ``he`` (TenSEAL encryption through the key holder) or
            ``plain`` (the coordinator sees every node's partials; only if every node's policy
            allows it). Default: federation.toml's ``combine``.
        """
        return Result(self._coord.query(query, combine=combine))

    def named(self, name: str, **params: Any) -> Result:
        """Run a named query from ``queries/`` with parameters."""
        from genofed.named import get_query

        return self.sql(get_query(name).render(**params))

    def explain(self, query: str) -> dict[str, str]:
        """The node fragment and the finalize step a query plans into."""
        plan = self._coord.plan(query)
        return {"fragment": plan.fragment_sql, "finalize": plan.final_sql}

    def close(self) -> None:
        self._coord.close()
        for t in self._transports:
            t.close()
        if self._keyholder is not None:
            self._keyholder.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _LazyKeyHolder:
    """The key holder client, connected on first use (its port may not be known at connect)."""

    def __init__(self, config: FederationConfig):
        self._config = config
        self._client: Any = None

    def _get(self):
        from genofed.privacy.secure.keyholder import KeyHolderClient

        loc = self._config.keyholder_location()
        if self._client is None or self._client.location != loc:
            self._client = KeyHolderClient(str(loc), self._config.keyholder["token"])
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def connect(path: str | os.PathLike[str], timeout: float | None = None) -> Federation:
    """Connect to a federation: a directory with ``federation.toml`` (or the file itself).

    Examples
    --------
    >>> fed = genofed.connect("demo-federation")  # doctest: +SKIP
    >>> fed.sql("SELECT sex, count(*) AS n FROM samples GROUP BY sex").to_pandas()  # doctest: +SKIP
    """
    return Federation(FederationConfig.load(Path(path)), timeout=timeout)
