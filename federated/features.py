"""Training features at a node: a SQL feature query evaluated by the node's own engine, under the
node's policy.

The analyst writes a *feature file*: one SQL SELECT over ``samples`` and the clinical tables that
returns one row per sample, with ``sample_id``, the label column and numeric feature columns
(booleans count as 0/1; encode categories in SQL, e.g. ``sex = 'female' AS female``). Genotype
features are named separately, as a list of ``variant_id``: the ClientApp reads their dosages from
the node's bit-packed genotype planes (missing calls take the node's mean dosage; a variant this
node does not hold counts as 0 copies). The rows never leave the node: the ClientApp trains on
them in the node's process and returns only model updates (summed under SecAgg+).

Policy (``[training]`` in node.toml, see docs/stewards.md): training is off unless the steward
allows it; the researcher must authenticate with their genofed token; the feature query may read
only tables the researcher's roles allow and no hidden column; the node needs at least
``min_samples`` complete rows and ``[policy] min_cases`` / ``min_controls`` of each label; the
model may have at most ``glm_max_param_ratio`` parameters per sample. Every load is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlglot
from sqlglot import exp

from genofed.engine.errors import ConfigError, DisclosureError, GenofedError

FEATURE_TABLE_FORBIDDEN = {"genotypes", "variants"}


class TrainingRefused(GenofedError):
    """The node's policy refuses this training request (the reason names the rule, never a value)."""


@dataclass
class TrainingPolicy:
    """``[training]`` in node.toml."""

    allow: bool = False
    researchers: list[str] = field(default_factory=list)  # empty: every configured researcher
    min_samples: int = 50
    allow_plain: bool = False  # updates without SecAgg+ (development only)
    max_rounds: int = 500
    release_node_metrics: bool = True  # the node's own AUC/Brier at the end of a run

    KEYS = ("allow", "researchers", "min_samples", "allow_plain", "max_rounds", "release_node_metrics")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> TrainingPolicy:
        unknown = set(raw) - set(cls.KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown [training] keys {sorted(unknown)}; known: {sorted(cls.KEYS)}")
        p = cls()
        for key in ("allow", "allow_plain", "release_node_metrics"):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise ConfigError(f"{where}: [training] {key} must be true or false, got {raw[key]!r}")
                setattr(p, key, raw[key])
        for key in ("min_samples", "max_rounds"):
            if key in raw:
                v = raw[key]
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ConfigError(f"{where}: [training] {key} must be an integer ≥ 1, got {v!r}")
                setattr(p, key, v)
        if "researchers" in raw:
            r = raw["researchers"]
            if not isinstance(r, list) or not all(isinstance(x, str) for x in r):
                raise ConfigError(f"{where}: [training] researchers must be a list of researcher names, got {r!r}")
            p.researchers = list(r)
        return p

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


@dataclass(frozen=True)
class FeatureSpec:
    """What a model trains on: the per-sample SQL, the label column, and genotype features."""

    sql: str
    label: str
    variants: tuple[str, ...] = ()

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.sql, self.label, *self.variants):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]


def read_feature_file(path: str | Path) -> str:
    """The feature query of a ``NAME.sql`` file (comments kept; one statement)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the feature file {p}: {e.strerror}") from None
    check_feature_sql(text)
    return text.strip().rstrip(";").strip()


def check_feature_sql(sql: str) -> exp.Select:
    """Parse a feature query: one SELECT that does not read genotypes/variants and lists its columns."""
    try:
        stmts = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise ConfigError(f"the feature query is not valid SQL: {str(e).splitlines()[0]}") from None
    if len(stmts) != 1 or not isinstance(stmts[0], exp.Select):
        raise ConfigError("the feature file must hold exactly one SELECT statement (one row per sample)")
    sel = stmts[0]
    tables = {t.name.lower() for t in sel.find_all(exp.Table)}
    bad = sorted(tables & FEATURE_TABLE_FORBIDDEN)
    if bad:
        raise ConfigError(f"the feature query reads {', '.join(bad)}: genotype features are given as a variant list "
                          "(genofed train --variants FILE or --variants-sql), not in the feature query")
    if any(isinstance(e, exp.Star) for e in sel.expressions) or any(isinstance(c.this, exp.Star) for c in sel.find_all(exp.Column)):
        raise ConfigError("the feature query must list its columns (no SELECT *): sample_id, the label and each feature")
    names = [e.alias_or_name for e in sel.expressions]
    if "sample_id" not in names:
        raise ConfigError("the feature query must return sample_id (it joins the genotype features; it never leaves the node)")
    return sel


@dataclass
class NodeFeatures:
    """One node's training matrix (row-level: stays in the node's process)."""

    X: np.ndarray  # [n, p] float64, raw scale
    y: np.ndarray  # [n] float64 0/1
    names: list[str]
    dropped_incomplete: int
    variants_absent: int


_AUDIT_LOCK = threading.Lock()


def _audit(config: Any, event: str, **fields: Any) -> None:
    path = config.audit_path()
    if path is None:
        return
    from genofed.privacy.audit import AuditLog

    with _AUDIT_LOCK:
        AuditLog(path).append(event, **fields)


def authorize(config: Any, token: str, *, secure: bool, rounds: int, run_id: str) -> str:
    """The researcher a training run's token belongs to, or :class:`TrainingRefused` (audited) when
    this node's policy does not allow the run."""
    from genofed.connectors.config import hash_token

    pol: TrainingPolicy = config.training
    digest = hash_token(token) if token else ""
    who = next((r.name for r in config.researchers if digest and hmac.compare_digest(r.token_sha256, digest)), None)

    def refuse(rule: str, message: str) -> None:
        _audit(config, "train_refused", researcher=who or "?", run=run_id, rule=rule)
        raise TrainingRefused(f"node {config.name}: {message}")

    if who is None:
        refuse("auth", "the run's token is not a researcher token of this node; use the token the data steward gave you")
    assert who is not None
    if not pol.allow:
        refuse("training_disabled", "federated training is not enabled at this node ([training] allow = true); ask the data steward")
    if pol.researchers and who not in pol.researchers:
        refuse("training_researcher", "you are not among the researchers allowed to train models here ([training] researchers)")
    if not secure and not pol.allow_plain:
        refuse("secagg_required", "this node sends model updates only under SecAgg+ secure aggregation; run without --plain")
    if rounds > pol.max_rounds:
        refuse("max_rounds", f"more than the node's [training] max_rounds = {pol.max_rounds} rounds were asked for")
    return who


def load_features(config: Any, spec: FeatureSpec, researcher: str, *, run_id: str, n_params: int | None = None,
                  backend: Any = None) -> NodeFeatures:
    """Evaluate the feature query and read the genotype features at this node, under its policy.

    Raises :class:`TrainingRefused` (audited) when the policy refuses, and ``ConfigError`` for a
    query the node cannot evaluate; messages name the rule, never a count.
    """
    from genofed.engine.backends.analysis import AnalysisData

    sel = check_feature_sql(spec.sql)
    pol: TrainingPolicy = config.training

    def refuse(rule: str, message: str) -> None:
        _audit(config, "train_refused", researcher=researcher, run=run_id, rule=rule, features=spec.digest())
        raise TrainingRefused(f"node {config.name}: {message}")

    own = backend is None
    if own:
        backend = FeatureReader(config.store)
    try:
        known = set(backend.tables())
        tables = {t.name.lower() for t in sel.find_all(exp.Table)}
        ctes = {c.alias_or_name.lower() for c in sel.find_all(exp.CTE)}
        unknown = sorted(tables - known - ctes)
        if unknown:
            raise ConfigError(f"node {config.name}: the feature query reads unknown tables {unknown}; "
                              f"tables here: {sorted(known - FEATURE_TABLE_FORBIDDEN)}")
        from genofed.connectors.pipeline import authorized_tables

        denied = authorized_tables(config, researcher, tables - ctes)  # the rule query fragments pass (one policy object)
        if denied:
            refuse("access", f"your roles at this node do not allow reading {', '.join(denied)}")
        _check_feature_rules(sel, config, refuse, backend)
        hidden = {h.split(".")[1] for h in config.hidden_columns if h.split(".")[0] in tables}
        if hidden & {c.name.lower() for c in sel.find_all(exp.Column)}:
            raise ConfigError(f"node {config.name}: the feature query names a column that does not exist here")
        cur = backend.con.cursor()
        try:
            t = cur.sql(f"SELECT _q.*, _sidx.sidx AS _sidx FROM ({sel.sql(dialect='duckdb')}) AS _q "
                        "JOIN _sidx USING (sample_id) ORDER BY _sidx").to_arrow_table()
        except Exception as e:  # duckdb.Error; never its message: it quotes the operands (people's values)
            from genofed.engine.backends.engine_errors import translate_duckdb

            raise ConfigError(f"node {config.name}: {translate_duckdb(e, 'evaluate the feature query', sel)}") from None
        finally:
            cur.close()
        if spec.label not in t.column_names:
            raise ConfigError(f"the feature query returns no label column {spec.label!r} (columns: "
                              f"{[c for c in t.column_names if c not in ('_sidx', 'sample_id')]})")
        sidx = t.column("_sidx").to_numpy().astype(np.int64)
        if len(sidx) and (np.diff(sidx) == 0).any():
            raise ConfigError("the feature query returns several rows for one sample; it must return one row per sample")
        names = [c for c in t.column_names if c not in ("_sidx", "sample_id", spec.label)]
        cols = []
        for c in [spec.label, *names]:
            col = t.column(c)
            typ = col.type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or pa.types.is_decimal(typ)):
                raise ConfigError(f"feature column {c!r} has type {typ}; features must be numbers or booleans "
                                  f"(encode categories in SQL, e.g. sex = 'female' AS female)")
            cols.append(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
        M = np.column_stack(cols) if cols else np.zeros((len(sidx), 0))
        complete = np.isfinite(M).all(axis=1)
        dropped = int((~complete).sum())
        M, sidx = M[complete], sidx[complete]
        y = M[:, 0]
        if not np.isin(y, (0.0, 1.0)).all():
            raise ConfigError(f"the label {spec.label!r} must be 0/1 (or boolean) for a classifier")
        X = M[:, 1:]
        absent = 0
        if spec.variants:
            G, absent = _dosages(backend, AnalysisData(backend, None), list(spec.variants), sidx)  # type: ignore[arg-type]
            X = np.hstack([X, G])
            names = names + list(spec.variants)
        n, n_pos = len(y), int(y.sum())
        need = max(pol.min_samples, config.min_count)
        if n < need:
            refuse("min_samples", f"fewer complete samples than the node's minimum for training ({need})")
        if n_pos < config.min_cases or n - n_pos < config.min_controls:
            refuse("min_cases", "fewer cases or controls than the node's minimum ([policy] min_cases / min_controls)")
        small = _small_feature_classes(M[:, 1:len(names) + 1] if names else np.zeros((len(M), 0)), config.min_count)
        if small is not None:
            refuse("feature_classes", f"feature {names[small]!r} is non-zero, or takes one of its two values, for fewer than "
                                      f"{config.min_count} people at this node: a model would single them out; use a coarser feature")
        p = n_params if n_params is not None else X.shape[1] + 1
        if p > config.glm_max_param_ratio * n:
            refuse("param_ratio", f"the model has more parameters than [policy] glm_max_param_ratio = {config.glm_max_param_ratio} "
                                  "per sample here; use fewer features or a smaller model")
        _audit(config, "train_features", researcher=researcher, run=run_id, features=spec.digest(),
               columns=len(names), variants=len(spec.variants))
        return NodeFeatures(X=X, y=y, names=names, dropped_incomplete=dropped, variants_absent=absent)
    finally:
        if own:
            backend.close()


def _check_feature_rules(sel: exp.Select, config: Any, refuse: Any, backend: Any) -> None:
    """Rule 1 for a feature query: identifiers only link rows (``sample_id`` is returned bare to
    join the genotype features and never leaves the node); a feature computed from an identifier
    (``CAST(sample_id = 'HG00096' AS INT)``) would let a model weight read that person's label."""
    from sqlglot.errors import OptimizeError
    from sqlglot.optimizer.qualify import qualify

    from genofed.privacy.identifiers import check_identifiers

    schema: dict[str, object] = {}
    for t in backend.tables():
        cur = backend.con.cursor()
        try:
            schema[t] = {str(r[0]): str(r[1]) for r in cur.sql(f'DESCRIBE "{t}"').fetchall()}
        finally:
            cur.close()
    outer = exp.select("1").from_(exp.Subquery(this=sel.copy(), alias=exp.TableAlias(this=exp.to_identifier("_features"))))
    try:
        outer = qualify(outer, schema=schema, dialect="duckdb", validate_qualify_columns=True, quote_identifiers=False, identify=False)
    except (OptimizeError, RecursionError) as e:
        raise ConfigError(f"node {config.name}: the feature query names a column this node cannot resolve: {str(e)[:200]}") from None
    try:
        check_identifiers(outer, config.identifiers)
    except DisclosureError as e:
        refuse(e.rule, str(e))


def _small_feature_classes(X: np.ndarray, k: int) -> int | None:
    """Rule 6 for features (as for an analysis' phenotype): the index of a feature that is
    non-zero for 1..k-1 people, or whose two values split off 1..k-1 people, else None.
    Decided on counts of people, never on the values; constant features single out nobody."""
    if k <= 1:
        return None
    for j in range(X.shape[1]):
        col = X[:, j]
        nonzero = int(np.count_nonzero(col))
        if 0 < nonzero < k:
            return j
        values, counts = np.unique(col, return_counts=True)
        if len(values) == 2 and counts.min() < k:
            return j
    return None


class FeatureReader:
    """What a ClientApp reads at a node: ``samples`` and the clinical (and derived) tables as
    DuckDB views over the store's Parquet files, ``_sidx`` (store row of each sample) and
    ``_variants``, and the genotype planes. Lighter than the query backend (nothing is copied
    into DuckDB), because Flower starts a fresh ClientApp process for every message."""

    def __init__(self, store_root: Path):
        import duckdb
        import pyarrow.parquet as pq

        from genofed.engine.backends.analysis import derived_dir
        from genofed.genomics.store import NodeStore

        self.store = NodeStore(store_root)
        self.con = duckdb.connect(":memory:")
        self._tables = ["samples", *self.store.manifest.clinical]

        def view(name: str, path: Path) -> None:
            quoted = str(path).replace("'", "''")
            self.con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet(\'{quoted}\')')

        view("samples", self.store.samples_path)
        for name in self.store.manifest.clinical:
            view(name, self.store.clinical_path(name))
        ids = pq.read_table(self.store.samples_path, columns=["sample_id"]).column("sample_id")
        self.con.register("_sidx_arrow", pa.table({"sidx": pa.array(np.arange(len(ids), dtype=np.int32)), "sample_id": ids}))
        self.con.execute("CREATE TABLE _sidx AS SELECT * FROM _sidx_arrow")
        self.con.unregister("_sidx_arrow")
        self.con.register("_variants_arrow", pq.read_table(self.store.variants_path, columns=["vidx", "variant_id"]))
        self.con.execute("CREATE TABLE _variants AS SELECT * FROM _variants_arrow")
        self.con.unregister("_variants_arrow")
        ddir = derived_dir(self.store.path)
        if ddir.exists():
            for f in sorted(ddir.glob("*.parquet")):
                if f.stem not in self._tables and f.stem not in ("genotypes", "variants"):
                    view(f.stem, f)
                    self._tables.append(f.stem)

    def tables(self) -> list[str]:
        return list(self._tables)

    def close(self) -> None:
        self.con.close()
        self.store.close()


def _dosages(backend: Any, data: Any, variant_ids: list[str], sidx: np.ndarray) -> tuple[np.ndarray, int]:
    """Dosage matrix [samples, variants] in ``variant_ids`` order; missing calls take the node's
    mean dosage of the variant; variants absent here are 0."""
    cur = backend.con.cursor()
    try:
        cur.register("_want", pa.table({"variant_id": pa.array(variant_ids, pa.string()),
                                        "_k": pa.array(np.arange(len(variant_ids), dtype=np.int64))}))
        t = cur.sql("SELECT _want._k, _v.vidx FROM _want JOIN _variants AS _v USING (variant_id) ORDER BY _v.vidx").to_arrow_table()
    finally:
        cur.close()
    ks = t.column("_k").to_numpy().astype(np.int64)
    vidx = t.column("vidx").to_numpy().astype(np.int64)
    if len(np.unique(ks)) != len(ks):
        raise ConfigError("a genotype feature's variant_id names several rows of this node's variants")
    G = np.zeros((len(sidx), len(variant_ids)), dtype=np.float64)
    if len(vidx) and len(sidx):
        for start, dosage, called in data.dosage_chunks(vidx, sidx):
            d = dosage
            if called is not None:
                d = d.copy()
                cnt = called.sum(axis=1)
                mean = np.where(cnt > 0, (dosage * called).sum(axis=1) / np.maximum(cnt, 1), 0.0)
                d[~called] = np.broadcast_to(mean[:, None], d.shape)[~called]
            G[:, ks[start:start + d.shape[0]]] = d.T
    return G, len(variant_ids) - len(ks)
