"""The public Python API: ``genofed.connect(path).sql(query)``."""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from genofed.connectors.client import FlightTransport
from genofed.connectors.federation import FederationConfig
from genofed.engine.coordinator import Coordinator, Provenance, QueryResult
from genofed.engine.errors import ConfigError, GenofedError
from genofed.engine.schema import Catalog

HISTORY_SCHEMA = pa.schema([("node", pa.string()), ("release_id", pa.int64()), ("query_id", pa.string()), ("time", pa.string()),
                            ("sql", pa.string()), ("kind", pa.string()), ("combine", pa.string()), ("decision", pa.string()),
                            ("rule", pa.string())])


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

    def plot(self, kind: str = "manhattan", **options: Any):
        """A matplotlib figure of this result: ``manhattan``, ``qq``, ``pca`` or ``ld-decay``
        (see :mod:`genofed.genomics.plots` for the options)."""
        return plot(kind, self._table, **options)

    @property
    def num_rows(self) -> int:
        return self._table.num_rows

    @property
    def suppressed(self) -> int:
        return self.provenance.suppressed

    def __repr__(self) -> str:
        sup = f", {self.suppressed} withheld" if self.suppressed else ""
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
        tls = config.client_tls()  # [tls] ca (and cert/key for mutual TLS) in federation.toml
        self._transports = [FlightTransport(n.name, n.location(config.root), n.token, tls=tls,
                                            resolve=functools.partial(n.location, config.root)) for n in config.nodes]
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

    def sql(self, query: str, combine: str | None = None, epsilon: float | None = None, mechanism: str = "laplace",
            delta: float | None = None) -> Result:
        """Run a federated SQL query; see the README for the supported subset.

        Parameters
        ----------
        query
            One SELECT statement (DuckDB dialect) over the federated schema.
        combine
            ``mpc`` (MPyC secret sharing), ``he`` (TenSEAL encryption through the key holder) or
            ``plain`` (the coordinator sees every node's partials; only if every node's policy
            allows it). Default: federation.toml's ``combine``.
        epsilon, mechanism, delta
            Differential privacy: every node adds OpenDP noise (``laplace``: discrete Laplace,
            pure ε; ``gaussian``: discrete Gaussian, needs ``delta``) to its partials before they
            leave it, and charges ε to your budget at that node; an identical repeated query is
            answered from the node's cache at no cost. Nodes whose policy requires DP noise every
            release with their defaults even when ``epsilon`` is not given.
        """
        dp = None
        if epsilon is not None:
            dp = {"epsilon": float(epsilon), "mechanism": mechanism, **({"delta": float(delta)} if delta is not None else {})}
        return Result(self._coord.query(query, combine=combine, dp=dp))

    def named(self, name: str, **params: Any) -> Result:
        """Run a named query from ``queries/`` with parameters."""
        from genofed.named import get_query

        return self.sql(get_query(name).render(**params))

    def pca_cells(self, scores: str = "pca", x: str = "pc1", y: str = "pc2", group: str | None = "population",
                  bins: int = 30, combine: str | None = None) -> Result:
        """Binned principal-component scores for a PCA scatter, without any sample leaving a node.

        The scores stay at the nodes (table ``scores``, written by ``pca(name => ...)``); this
        runs two ordinary federated aggregates: the federation-wide mean and SD of each axis (to
        place a ``bins`` × ``bins`` grid over mean ± 4 SD), then the count of samples per grid
        cell and group. Cells below the minimum count are suppressed like any other group.
        Returns columns ``group, x, y, n`` (cell centres) for :func:`genofed.genomics.plots.pca_scatter`.
        """
        from genofed.engine.analysis import check_name

        for name, what in ((scores, "scores table"), (x, "x"), (y, "y")):
            check_name(name, what)
        if group is not None:
            check_name(group, "group")
        stats = self.sql(f"SELECT avg({x}) AS mx, stddev_samp({x}) AS sx, avg({y}) AS my, stddev_samp({y}) AS sy "
                         f"FROM samples JOIN {scores} USING (sample_id)", combine=combine).to_arrow().to_pylist()
        if not stats or stats[0]["sx"] is None:
            raise GenofedError(f"no scores to bin in {scores!r}")
        s = stats[0]
        cells = []
        for axis, m, sd in ((x, s["mx"], s["sx"]), (y, s["my"], s["sy"])):
            w = 8 * float(sd) / bins or 1.0
            lo = float(m) - 4 * float(sd)
            cells.append(f"{lo!r} + ({w!r}) * (floor(({axis} - {lo!r}) / {w!r}) + 0.5) AS {axis}")
        keys = ([f"{group} AS \"group\""] if group else []) + cells
        return self.sql(f"SELECT {', '.join(keys)}, count(*) AS n FROM samples JOIN {scores} USING (sample_id) GROUP BY ALL",
                        combine=combine)

    def synth_train(self, *, epsilon: float | None = None, population: str | None = None, order: int = 2,
                    holdout: float = 0.2, canaries: int = 2, seed: int = 1, variants: str | None = None,
                    samples: str | None = None, phenotypes: dict[str, str] | None = None,
                    combine: str | None = None, delta: float = 1e-6):
        """Train the synthetic-genotype model across the nodes (:mod:`genofed.genomics.synth`):
        per population an order-``order`` haplotype Markov chain whose counts each node noises
        with differential privacy (``epsilon`` in total, charged at every node) before they are
        summed in the combine mode. Returns a :class:`~genofed.genomics.synth.SynthModel`."""
        from genofed.genomics import synth

        return synth.train(self._coord, population=population, order=order, epsilon=epsilon, delta=delta,
                           holdout=holdout, canaries=canaries, seed=seed, variants=variants, samples=samples,
                           phenotypes=phenotypes, combine=combine)

    def synth_release(self, model, n: int, out: str | os.PathLike[str], report: str | os.PathLike[str] | None = None,
                      *, seed: int = 1, combine: str | None = None):
        """Sample ``n`` synthetic genomes from ``model`` (a SynthModel or its .npz path), audit them
        at the nodes and release them only if every privacy criterion passes: returns the
        :class:`~genofed.genomics.synth_audit.AuditResult` (``.passed``, ``.report``); the VCF is
        written at ``out`` only when released, the report (HTML or PDF) always."""
        from genofed.genomics import synth, synth_audit

        if not isinstance(model, synth.SynthModel):
            model = synth.SynthModel.load(model)
        return synth_audit.release(self._coord, synth.sample(model, n, seed=seed), out, report, combine=combine, seed=seed)

    def train(self, features: str | os.PathLike[str], label: str, **options: Any) -> dict[str, Any]:
        """Train a model across this federation's nodes with Flower: see :func:`genofed.train`."""
        return train(self.config, features, label, federation=self, **options)

    def history(self, node: str | None = None, limit: int = 1000, since: float | datetime | None = None) -> pa.Table:
        """Your own releases, and refusals, at every node of the federation (or one).

        Each node keeps, per researcher, what it released to them: the query id, the time, the
        SQL as you wrote it, the combine mode and the decision (or the rule that refused it),
        never a released value. A node answers for the researcher your token names only. A
        federated query appears once per node that answered it (a table function once per
        round).

        Parameters
        ----------
        node
            Only this node's history (default: every node).
        limit
            The newest ``limit`` entries of each node (at most 1,000).
        since
            Only entries at or after this time: a ``datetime`` (naive means UTC) or unix seconds.

        Returns
        -------
        pyarrow.Table
            Columns ``node``, ``release_id``, ``query_id``, ``time`` (ISO 8601, UTC), ``sql``,
            ``kind`` (``sql`` or ``analysis``), ``combine``, ``decision`` (``released``,
            ``shared``, ``encrypted`` or ``refused``) and ``rule``; oldest first.

        Examples
        --------
        >>> fed = genofed.connect("demo-federation")  # doctest: +SKIP
        >>> fed.history().to_pandas()[["node", "time", "sql", "decision", "rule"]]  # doctest: +SKIP
                node                  time                                             sql  decision  rule
        0  biobank_A  2025-05-01T09:12:03Z  SELECT sex, count(*) AS n FROM samples GROUP BY sex  released  None
        """
        import concurrent.futures as cf

        targets = self._transports
        if node is not None:
            targets = [t for t in self._transports if t.name == node]
            if not targets:
                raise ConfigError(f"no node {node!r} in this federation; its nodes are {', '.join(self.nodes)}")
        if isinstance(since, datetime):
            since = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
        timeout = self._coord.timeout
        with cf.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            answers = list(pool.map(lambda t: (t.name, t.history(limit=limit, since=since, timeout=timeout)), targets))
        rows = sorted(((name, r) for name, releases in answers for r in releases),
                      key=lambda nr: (float(nr[1].get("time") or 0), nr[0], int(nr[1].get("id") or 0)))
        return pa.Table.from_pylist([{
            "node": name, "release_id": r.get("id"), "query_id": r.get("query_id"),
            "time": datetime.fromtimestamp(float(r.get("time") or 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sql": r.get("user_sql"), "kind": r.get("kind"), "combine": r.get("combine"), "decision": r.get("decision"),
            "rule": r.get("rule")} for name, r in rows], schema=HISTORY_SCHEMA)

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


def plot(kind: str, data: Any, **options: Any):
    """A matplotlib figure of a result table: ``manhattan``, ``qq``, ``pca`` or ``ld-decay``.

    ``data`` is a :class:`Result`, an Arrow table or a pandas DataFrame; options go to the
    function in :mod:`genofed.genomics.plots` (e.g. ``threshold=5e-8``, ``group="population"``).
    """
    from genofed.genomics.plots import PLOTS

    if kind not in PLOTS:
        raise GenofedError(f"unknown plot {kind!r}; choose one of {', '.join(PLOTS)}")
    if isinstance(data, Result):
        data = data.to_arrow()
    return PLOTS[kind](data, **options)


class _LazyKeyHolder:
    """The key holder client, connected on first use (its port may not be known at connect)."""

    def __init__(self, config: FederationConfig):
        self._config = config
        self._client: Any = None

    def _get(self):
        from genofed.privacy.secure.keyholder import KeyHolderClient

        loc = self._config.keyholder_location()
        if self._client is None or self._client.location != loc:
            self._client = KeyHolderClient(str(loc), self._config.keyholder["token"], tls=self._config.client_tls())
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def connect(path: str | os.PathLike[str], timeout: float | None = None, token: str | None = None) -> Federation:
    """Connect to a federation: a directory with ``federation.toml`` (or the file itself).

    Parameters
    ----------
    timeout
        Seconds each node has to answer (default: the federation's ``timeout_s``).
    token
        Your own researcher token (from ``genofed federation add-researcher``), used at every
        node and at the key holder instead of the tokens in ``federation.toml``: the nodes then
        know you by your name (your privacy budget, rate limit and audit records).

    Examples
    --------
    >>> fed = genofed.connect("demo-federation")  # doctest: +SKIP
    >>> fed.sql("SELECT sex, count(*) AS n FROM samples GROUP BY sex").to_pandas()  # doctest: +SKIP
    >>> bob = genofed.connect("demo-federation", token=os.environ["GENOFED_TOKEN"])  # doctest: +SKIP
    """
    config = FederationConfig.load(Path(path))
    if token is not None:
        if not token:
            raise ConfigError("token is empty; give the token the data steward handed you")
        for n in config.nodes:
            n.token = token
        if config.keyholder:
            config.keyholder = {**config.keyholder, "token": token}
    return Federation(config, timeout=timeout)


def train(config: FederationConfig | str | os.PathLike[str], features: str | os.PathLike[str], label: str, *, model: str = "logistic", strategy: str = "fedavg",
          variants: list[str] | None = None, variants_sql: str | None = None, rounds: int = 20, local_epochs: int = 5,
          lr: float = 0.5, l2: float = 0.0, mu: float = 0.0, hidden: int = 16, batch_size: int = 0, seed: int = 0,
          secagg: bool = True, out: str | os.PathLike[str] = "model", superlink: str | None = None,
          poll_interval: float = 0.1, timeout: float = 1800.0, progress=None, federation: Federation | None = None) -> dict[str, Any]:
    """Train a model across the nodes with Flower (:mod:`genofed.federated`).

    ``features`` is a feature file (``NAME.sql``) or the SQL itself: one SELECT over
    ``samples`` and clinical tables returning ``sample_id``, the ``label`` (0/1) and numeric
    features, evaluated at each node under its policy. Genotype dosages are added as features
    for ``variants`` (variant_ids), or for the variant_ids a federated query ``variants_sql``
    returns (e.g. ``SELECT variant_id FROM genotypes WHERE chrom = '22' GROUP BY variant_id
    HAVING allele_freq(dosage) BETWEEN 0.05 AND 0.95``).

    ``strategy``: ``fedavg``, ``fedprox`` (``mu``) or ``exact`` (federated Newton–Raphson:
    the pooled logistic regression). Every sum runs under SecAgg+ unless ``secagg=False`` (and
    every node allows it). With ``superlink=None`` a local Flower deployment (SuperLink and one
    SuperNode per node of this federation) is started for the run; otherwise the run is
    submitted to the SuperLink at ``host:port``. Returns the result (also written to
    ``out/result.json``, with ``out/model.npz`` and ``out/progress.jsonl``).

    The nodes' query servers need not run (the SuperNodes read the stores), except to answer
    ``variants_sql``.
    """
    from pathlib import Path

    from genofed.federated import features as F
    from genofed.federated.apps import RunSettings
    from genofed.federated.runner import run_training

    if not isinstance(config, FederationConfig):
        config = FederationConfig.load(config)

    text = str(features)
    path = Path(text)
    sql = F.read_feature_file(path) if text.endswith(".sql") or (len(text) < 4096 and path.exists()) else text
    F.check_feature_sql(sql)
    ids = list(variants or [])
    if variants_sql:
        if federation is None:
            with connect(config.root) as fed:
                t = fed.sql(variants_sql).to_arrow()
        else:
            t = federation.sql(variants_sql).to_arrow()
        if "variant_id" not in t.column_names:
            raise ConfigError("the variants query must return a variant_id column")
        ids += [v for v in t.column("variant_id").to_pylist() if v is not None and v not in ids]
    settings = RunSettings(sql=sql, label=label, variants=ids, model=model, strategy=strategy, rounds=rounds,
                           local_epochs=local_epochs, lr=lr, l2=l2, mu=mu, hidden=hidden, batch_size=batch_size, seed=seed,
                           secagg=secagg, nodes=len(config.nodes), name=Path(str(out)).name)
    configs = []
    if superlink is None:
        for n in config.nodes:
            if not n.config:
                raise ConfigError(f"node {n.name} has no local config in federation.toml: its SuperNode runs at the biobank; "
                                  "give the analyst's SuperLink with superlink='host:port'")
            configs.append(config.root / n.config)
    tokens = {n.token for n in config.nodes}
    if len(tokens) != 1:
        raise ConfigError("the nodes of this federation know you by different tokens; a training run carries one researcher token")
    return run_training(configs, tokens.pop(), settings, Path(out), superlink=superlink, poll_interval=poll_interval,
                        timeout=timeout, progress=progress)
