"""The node server: an Arrow Flight service a biobank runs next to its store.

This module is the transport: it authenticates every call (a researcher's bearer token, Flight
middleware), parses tickets and action bodies, and hands each fragment to the node's request
pipeline (:mod:`genofed.connectors.pipeline`), whose ordered steps validate, authorize, limit,
execute, apply the disclosure rules (:mod:`genofed.connectors.gates`) and audit it the same way
for every combine mode. Errors cross the wire as a code and a reason (``GENOFED:{json}``), never a
traceback, sample ID or cell value.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from genofed.engine import protocol as P
from genofed.engine.backends.base import Backend
from genofed.engine.errors import (
    GenofedError,
    NodeError,
)
from genofed.engine.fragment import validate_fragment
from genofed.engine.schema import Catalog
from genofed.genomics.store import NodeStore

from .config import NodeConfig, match_bearer

log = logging.getLogger("genofed.node")


class _AuthMiddleware(flight.ServerMiddleware):
    def __init__(self, researcher: str):
        self.researcher = researcher


class _AuthFactory(flight.ServerMiddlewareFactory):
    def __init__(self, config: NodeConfig, audit: Any = None):
        self.tokens = {r.token_sha256: r.name for r in config.researchers}
        self.audit = audit

    def start_call(self, info, headers):
        try:
            return _AuthMiddleware(match_bearer(headers, self.tokens, "this node"))
        except flight.FlightUnauthenticatedError:
            if self.audit is not None:  # refused calls are audited too (who tried is unknown)
                self.audit.append("auth_failed", method=str(info.method).rsplit(".", 1)[-1].lower(), decision="refused", rule="auth")
            raise


def make_backend(config: NodeConfig) -> Backend:
    """The execution backend named in the node config."""
    store = NodeStore(config.store)
    if config.backend == "duckdb":
        from genofed.engine.backends.duckdb import DuckDBBackend

        return DuckDBBackend(store, max_genotype_cells=config.max_genotype_cells)
    if config.backend == "hail":
        from genofed.engine.backends.hailbackend import HailBackend

        return HailBackend(store, config.hail, max_genotype_cells=config.max_genotype_cells)
    raise GenofedError(f"unknown backend {config.backend!r} in node config; available: duckdb, hail")


_LAZY_LOCK = threading.Lock()


def _locked_once(fn):
    """A lazily built attribute, built once even when server threads race for it (the node's
    privacy state: two ledgers or trackers over one file would lose updates)."""
    name = "_lazy_" + fn.__name__

    @functools.wraps(fn)
    def get(self):
        value = self.__dict__.get(name)
        if value is None:
            with _LAZY_LOCK:
                value = self.__dict__.get(name)
                if value is None:
                    value = fn(self)
                    self.__dict__[name] = value
        return value

    return property(get)


class NodeServer(flight.FlightServerBase):
    """Arrow Flight server for one node.

    Parameters
    ----------
    config
        The node configuration (store, policy, researchers).
    location
        ``grpc://host:port``; port 0 picks a free port (see :attr:`port`). With a ``[tls]``
        table in the config the server speaks ``grpc+tls://`` on it instead.
    """

    def __init__(self, config: NodeConfig, location: str = "grpc://127.0.0.1:0", backend: Backend | None = None):
        from genofed.privacy.audit import AuditLog

        audit_path = config.audit_path()
        self.audit = AuditLog(audit_path) if audit_path is not None else None
        tls = config.server_tls()  # [tls]: serve grpc+tls:// (and with client_ca, require client certificates)
        if tls is not None:
            from .tls import tls_location

            location = tls_location(location)
        super().__init__(location, middleware={"auth": _AuthFactory(config, self.audit)}, **(tls.server_kwargs() if tls else {}))
        self.config = config
        self.backend = backend or make_backend(config)
        self.catalog = Catalog.merge({config.name: self._visible(self.backend.catalog())})
        # validation depends only on the SQL text, this node's catalog and its policy, all fixed
        # for the server's lifetime: repeated fragments are validated once
        self._validate = functools.lru_cache(maxsize=256)(self._validate_uncached)
        from .gates import ReleaseGates
        from .pipeline import fragment_pipeline

        self.gates = ReleaseGates(self)
        self.pipeline = fragment_pipeline(self)
        self._mpc: Any = None  # NodeSessions, created on the first MPC query
        self._rate_lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # researcher -> (tokens, last refill)
        self._kh: Any = None  # KeyHolderClient, created on the first HE query
        lim = config.limits
        self._slots = threading.BoundedSemaphore(lim.max_concurrent)  # fragments executing at once
        con = getattr(self.backend, "con", None)
        if con is not None:  # DuckDB's own cap: every slot's fragment at its full budget
            con.execute(f"SET memory_limit = '{lim.memory_mb * lim.max_concurrent}MB'")
        from genofed.privacy.secure.mpc import prewarm

        prewarm()
        threading.Thread(target=_warm_kernels, name="genofed-warm", daemon=True).start()

    def _visible(self, catalog: dict[str, Any]) -> dict[str, Any]:
        """The backend's catalog without the columns the policy hides: fragments naming them fail
        validation as unknown columns, and coordinators never learn they exist."""
        hidden = set(self.config.hidden_columns)
        if not hidden:
            return catalog
        tables = {t: {c: typ for c, typ in cols.items() if f"{t}.{c}".lower() not in hidden} for t, cols in catalog["tables"].items()}
        return {**catalog, "tables": tables}

    def _validate_uncached(self, sql: str):
        frag = validate_fragment(sql, self.catalog, allow_min_max=self.config.allow_min_max)
        from genofed.privacy.rules import check_request

        check_request(frag, self.config)
        return frag

    def validate(self, sql: str) -> Any:
        """A SQL fragment (validation cached) or an analysis round (validated every time: its
        state changes from round to round), checked against this node's catalog and the rules
        that depend on the request alone (:func:`genofed.privacy.rules.check_request`)."""
        from genofed.engine.analysis import is_analysis, validate_analysis

        if is_analysis(sql):
            from genofed.privacy.rules import check_request

            frag = validate_analysis(sql, self.catalog, self.config)
            check_request(frag, self.config)
            return frag
        return self._validate(sql)

    def refresh_catalog(self) -> None:
        """Re-read the backend's catalog (a PCA projection round keeps the scores as a table)."""
        self.catalog = Catalog.merge({self.config.name: self._visible(self.backend.catalog())})
        self._validate.cache_clear()

    def _researcher(self, context) -> str:
        mw = context.get_middleware("auth")
        return mw.researcher if mw else "?"

    # -- actions ---------------------------------------------------------------------------
    def list_actions(self, context):
        return [
            (P.ACTION_CATALOG, "tables and columns this node exposes"),
            (P.ACTION_PING, "liveness"),
            (P.ACTION_MPC_PREPARE, "run a fragment and start this node's MPC party"),
            (P.ACTION_MPC_RUN, "run the MPC protocol for a prepared fragment"),
            (P.ACTION_MPC_ABORT, "drop a prepared fragment"),
            (P.ACTION_HISTORY, "your own releases and refusals at this node"),
            (P.ACTION_PIPELINE, "the ordered steps every fragment passes at this node"),
        ]

    def record(self, event: str, req: Any, **fields: Any) -> None:
        """Audit one decision about a pipeline request (:class:`~genofed.connectors.pipeline.Request`)."""
        self._record(event, req.researcher, req.sql, query_id=req.query_id, _user_sql=req.user_sql, _combine=req.combine, **fields)

    def _record(self, event: str, researcher: str, sql: str | None = None, **fields: Any) -> None:
        """Audit one decision. Fails closed: if the log cannot be written, nothing is released."""
        user_sql, combine = fields.pop("_user_sql", None), fields.pop("_combine", None)
        if event in ("release", "refused"):
            self._log_release(researcher, sql, fields, user_sql, combine)
        if self.audit is None:
            return
        from genofed.privacy.audit import fragment_digest

        try:
            self.audit.append(event, researcher=researcher, fragment_sha256=fragment_digest(sql) if sql else None, **fields)
        except OSError as e:
            log.error("audit log %s cannot be written: %s", self.audit.path, e)
            raise flight.FlightServerError(P.encode_error(P.CODE_INTERNAL, "the node's audit log cannot be written; nothing was released")) from None

    def _log_release(self, researcher: str, sql: str | None, fields: dict[str, Any], user_sql: str | None = None,
                     combine: str | None = None) -> None:
        """Log a release or refusal in the researcher's release log (:attr:`releases`). A release
        that cannot be logged is not made (as with the audit log); a refusal stays a refusal."""
        import sqlite3

        from genofed.engine.analysis import is_analysis
        from genofed.privacy.audit import fragment_digest

        qid = fields.get("query_id")
        qid = qid if isinstance(qid, str) else "?"
        decision = fields.get("decision")
        try:
            self.releases.record(researcher, qid, user_sql=user_sql, fragment_sha256=fragment_digest(sql) if sql else None,
                                 combine=fields.get("combine") or combine, kind="analysis" if sql and is_analysis(sql) else "sql",
                                 decision=decision, rule=fields.get("rule"))
        except (sqlite3.Error, OSError, ValueError) as e:
            log.error("release log of %s cannot be written: %s", self.config.name, e)
            if decision != "refused":
                raise flight.FlightServerError(P.encode_error(
                    P.CODE_INTERNAL, "the node's release log cannot be written; nothing was released")) from None

    def _history(self, action: Any, researcher: str) -> dict[str, Any]:
        """``ACTION_HISTORY``: the calling researcher's own releases and refusals at this node
        (body ``{"limit": n, "since": unix time}``, both optional; at most 1,000), never another
        researcher's."""
        import math

        try:
            body = json.loads(action.body.to_pybytes().decode() or "{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            limit, since = body.get("limit", 1000), body.get("since")
            if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 1000:
                raise ValueError("limit must be a whole number from 0 to 1000")
            if since is not None and (isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(float(since))):
                raise ValueError("since must be a unix time in seconds")
        except (ValueError, OverflowError, UnicodeDecodeError, RecursionError) as e:
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed history request: {e}")) from None
        self._record("history", researcher, decision="answered")
        rows = [{k: v for k, v in r.to_dict().items() if k != "researcher"} for r in self.releases.list(researcher, limit, since)]
        return {"node": self.config.name, "researcher": researcher, "releases": rows}

    def do_action(self, context, action):
        kind = action.type
        if kind == P.ACTION_CATALOG:
            self._record("catalog", self._researcher(context), decision="answered")
        if kind == P.ACTION_PING:
            yield flight.Result(b"ok")
        elif kind == P.ACTION_CATALOG:
            body = self._visible(dict(self.backend.catalog()))
            allowed = self.config.allowed_tables(self._researcher(context))
            if allowed is not None:  # a researcher sees only the tables their roles may read
                body["tables"] = {t: c for t, c in body["tables"].items() if t.lower() in allowed}
            body["node"] = self.config.name
            body["min_count"] = self.config.min_count
            body["allow_plain"] = self.config.allow_plain
            body["model_policy"] = self.config.model_policy()
            yield flight.Result(json.dumps(body).encode())
        elif kind == P.ACTION_HISTORY:
            yield flight.Result(json.dumps(self._history(action, self._researcher(context))).encode())
        elif kind in (P.ACTION_MPC_PREPARE, P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT):
            body = self._json_body(action)
            yield flight.Result(json.dumps(self._mpc_action(kind, body, self._researcher(context), context)).encode())
        elif kind == P.ACTION_PIPELINE:
            yield flight.Result(json.dumps({"node": self.config.name, "steps": self.pipeline.names}).encode())
        else:
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"unknown action {kind[:40]!r}; see list_actions"))

    @staticmethod
    def _json_body(action) -> dict[str, Any]:
        try:
            body = json.loads(action.body.to_pybytes().decode() or "{}")
            if not isinstance(body, dict) or not isinstance(body.get(P.KEY_QUERY_ID), str) or len(body[P.KEY_QUERY_ID]) > 200:
                raise ValueError("expected a JSON object with a query_id (a string of at most 200 characters)")
            return body
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed request: {e}")) from None

    def sessions(self):
        if self._mpc is None:
            from genofed.privacy.secure.mpc import NodeSessions

            self._mpc = NodeSessions(host=self.config.mpc_host)
        return self._mpc

    def keyholder(self):
        from genofed.privacy.secure.keyholder import KeyHolderClient

        loc = self.config.keyholder_location()
        if self._kh is None or self._kh.location != loc:
            self._kh = KeyHolderClient(loc, self.config.keyholder["token"], tls=self.config.keyholder_tls())
        return self._kh

    # -- fragments: parse the transport, run the pipeline -------------------------------------------
    def _mpc_action(self, kind: str, body: dict[str, Any], researcher: str, context: Any = None) -> dict[str, Any]:
        from genofed.privacy.releases import clip_text

        from .pipeline import Request

        qid = body[P.KEY_QUERY_ID]
        if kind == P.ACTION_MPC_ABORT:
            self.sessions().abort(qid)
            return {"ok": True}
        if kind == P.ACTION_MPC_PREPARE:
            sql = body.get(P.KEY_SQL)
            if not isinstance(sql, str):
                raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, "mpc_prepare needs the fragment sql"))
            req = Request(researcher, sql, qid, "mpc", dp=body.get(P.KEY_DP), context=context, user_sql=clip_text(body.get(P.KEY_USER_SQL)))
            return dict(self.pipeline(req))
        try:
            answer = self.sessions().run(qid, body, self.config)
        except NodeError as e:
            raise flight.FlightServerError(P.encode_error(e.node_code, e.reason, party=e.node)) from None
        except GenofedError as e:
            raise flight.FlightServerError(P.encode_error("mpc", str(e))) from None
        log.info("query %s for %s: MPC protocol done, %d bytes sent", qid, researcher, answer.get("bytes_sent", 0))
        self._record("mpc_done", researcher, query_id=qid, combine="mpc", decision="combined")
        return {"ok": True, **answer}

    def do_get(self, context, ticket):
        from genofed.privacy.releases import clip_text

        from .pipeline import Request

        researcher = self._researcher(context)
        try:
            req = json.loads(ticket.ticket.decode())
            if not isinstance(req, dict) or req.get(P.KEY_KIND) != P.TICKET_KIND_FRAGMENT or not isinstance(req.get(P.KEY_SQL), str):
                raise ValueError("not a fragment request")
            version = req.get(P.KEY_VERSION)
            if type(version) is not int or version != P.PROTOCOL_VERSION:
                raise ValueError(f"protocol version {str(version)[:20]} not supported (this node speaks {P.PROTOCOL_VERSION})")
            qid = req.get(P.KEY_QUERY_ID, "?")
            if not isinstance(qid, str) or len(qid) > 200:
                raise ValueError("query_id must be a string of at most 200 characters")
            timeout = req.get("timeout", 60.0)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
                raise ValueError("timeout must be a number of seconds, above 0 and at most 86400")
            mode = req.get(P.KEY_COMBINE, "plain")
            if mode not in ("plain", "he"):
                raise ValueError(f"combine mode {str(mode)[:20]!r} is not served by do_get; see the mpc_* actions")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
            self._record("bad_request", researcher, decision="refused", rule="malformed")
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed ticket: {e}")) from None
        request = Request(researcher, req[P.KEY_SQL], qid, mode, dp=req.get(P.KEY_DP), context=context,
                          timeout=float(timeout) if mode == "he" else None, user_sql=clip_text(req.get(P.KEY_USER_SQL)),
                          body={"key_id": req.get("key_id")})
        table = self.pipeline(request)
        # large partial tables (e.g. per-variant GWAS statistics, many of them constant) go
        # LZ4-compressed: cheaper than the bytes on any real network
        opts = pa.ipc.IpcWriteOptions(compression="lz4") if mode == "plain" and table.nbytes > (1 << 20) else None
        return flight.RecordBatchStream(table, options=opts)

    @_locked_once
    def releases(self) -> Any:
        """What this node released to (and refused) each researcher: their SQL as written, hashes
        and decisions, never values (``genofed history``, refusals naming an earlier release)."""
        from genofed.privacy.releases import FILE_NAME, ReleaseLog

        state = self.config.state_path()
        return ReleaseLog(state / FILE_NAME if state is not None else None)

    @_locked_once
    def set_audit(self) -> Any:
        """The person sets released per researcher and statistic (rule 4)."""
        from genofed.privacy.setaudit import SetAudit

        state = self.config.state_path()
        return SetAudit(state / "audit_sets.sqlite" if state is not None else None, self.backend.store.manifest.n_samples)

    @_locked_once
    def membership(self) -> Any:
        """Released variants per researcher and cohort, and beacon budgets (re-identification gate)."""
        from genofed.privacy.membership import MembershipGate

        state = self.config.state_path()
        return MembershipGate(state / "risk.sqlite" if state is not None else None, self.backend.store.manifest.n_variants, self.config.risk,
                              self.backend.store.manifest.n_samples)

    @_locked_once
    def ledger(self) -> Any:
        """The per-researcher privacy budget ledger and release cache (SQLite, in the state dir)."""
        import tempfile

        from genofed.privacy.ledger import Ledger

        state = self.config.state_path()
        if state is None:
            state = Path(tempfile.mkdtemp(prefix="genofed-state-"))
        state.mkdir(parents=True, exist_ok=True)
        return Ledger(state / "ledger.sqlite")

    # -- what a node does not serve: a clean wire error, never the server's traceback ------------
    def _not_served(self, what: str):
        return flight.FlightServerError(P.encode_error(
            P.CODE_BAD_REQUEST, f"this node does not serve {what}; fragments go through do_get tickets and the mpc_* actions"))

    def list_flights(self, context, criteria):
        raise self._not_served("list_flights")

    def get_flight_info(self, context, descriptor):
        raise self._not_served("get_flight_info")

    def get_schema(self, context, descriptor):
        # pyarrow forwards any error raised here with the server's traceback: answer "no columns"
        return flight.SchemaResult(pa.schema([]))

    def do_put(self, context, descriptor, reader, writer):
        raise self._not_served("do_put (nothing is uploaded to a node)")

    def do_exchange(self, context, descriptor, reader, writer):
        raise self._not_served("do_exchange")

    # -- fragments -------------------------------------------------------------------------



def _warm_kernels() -> None:
    try:
        from genofed.genomics.glm_kernels import warm

        warm()
    except Exception:  # noqa: BLE001 - warming is an optimisation; a failure shows on first use
        log.debug("kernel warm-up failed", exc_info=True)


def serve(config: NodeConfig, host: str = "127.0.0.1", port: int = 0, ready: Any = None) -> None:
    """Run a node server in the foreground until SIGTERM/SIGINT."""
    server = NodeServer(config, f"grpc://{host}:{port}")
    if ready is not None:
        ready(server.port)
    stop = threading.Event()

    def _stop(*_):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scheme = "grpc+tls" if config.tls else "grpc"
    mtls = " (client certificates required)" if config.tls.get("client_ca") else ""
    print(f"genofed node {config.name!r} serving {config.store} on {scheme}://{host}:{server.port}{mtls}", file=sys.stderr, flush=True)
    try:
        server.serve()
    finally:
        if server._mpc is not None:
            server._mpc.close()



