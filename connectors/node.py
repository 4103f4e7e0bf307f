"""The node server: an Arrow Flight service a biobank runs next to its store.

Every call must carry a researcher's bearer token. Fragments are re-validated here against the
node's own catalog and policy, executed by the node's backend, passed through the node's
minimum-count rule, and streamed back as Arrow. Errors cross the wire as a code and a reason
(``GENOFED:{json}``), never a traceback, sample ID or cell value.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from genofed.engine import protocol as P
from genofed.engine.backends.base import Backend
from genofed.engine.combine import narrow_integers
from genofed.engine.errors import DisclosureError, FragmentError, GenofedError, NodeError
from genofed.engine.fragment import validate_fragment
from genofed.engine.schema import Catalog
from genofed.genomics.store import NodeStore
from genofed.privacy.disclosure import apply_min_count

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
    raise GenofedError(f"unknown backend {config.backend!r} in node config; available: duckdb")


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
        self._mpc: Any = None  # NodeSessions, created on the first MPC query
        self._kh: Any = None  # KeyHolderClient, created on the first HE query
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
        return validate_fragment(sql, self.catalog, allow_min_max=self.config.allow_min_max)

    def _validate_any(self, sql: str):
        """A SQL fragment (validation cached) or an analysis round (validated every time: its
        state changes from round to round)."""
        from genofed.engine.analysis import is_analysis, validate_analysis

        if is_analysis(sql):
            return validate_analysis(sql, self.catalog, self.config)
        return self._validate(sql)

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
        ]

    def _record(self, event: str, researcher: str, sql: str | None = None, **fields: Any) -> None:
        """Audit one decision. Fails closed: if the log cannot be written, nothing is released."""
        if self.audit is None:
            return
        from genofed.privacy.audit import fragment_digest

        try:
            self.audit.append(event, researcher=researcher, fragment_sha256=fragment_digest(sql) if sql else None, **fields)
        except OSError as e:
            log.error("audit log %s cannot be written: %s", self.audit.path, e)
            raise flight.FlightServerError(P.encode_error(P.CODE_INTERNAL, "the node's audit log cannot be written; nothing was released")) from None

    def do_action(self, context, action):
        kind = action.type
        if kind == P.ACTION_CATALOG:
            self._record("catalog", self._researcher(context), decision="answered")
        if kind == P.ACTION_PING:
            yield flight.Result(b"ok")
        elif kind == P.ACTION_CATALOG:
            body = self._visible(dict(self.backend.catalog()))
            body["node"] = self.config.name
            body["min_count"] = self.config.min_count
            body["allow_plain"] = self.config.allow_plain
            body["model_policy"] = self.config.model_policy()
            yield flight.Result(json.dumps(body).encode())
        elif kind in (P.ACTION_MPC_PREPARE, P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT):
            body = self._json_body(action)
            yield flight.Result(json.dumps(self._mpc_action(kind, body, self._researcher(context))).encode())
        else:
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"unknown action {kind!r}"))

    @staticmethod
    def _json_body(action) -> dict[str, Any]:
        try:
            body = json.loads(action.body.to_pybytes().decode() or "{}")
            if not isinstance(body, dict) or not isinstance(body.get(P.KEY_QUERY_ID), str):
                raise ValueError("expected a JSON object with a query_id")
            return body
        except (ValueError, UnicodeDecodeError) as e:
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed request: {e}")) from None

    def _sessions(self):
        if self._mpc is None:
            from genofed.privacy.secure.mpc import NodeSessions

            self._mpc = NodeSessions(host=self.config.mpc_host)
        return self._mpc

    def _mpc_action(self, kind: str, body: dict[str, Any], researcher: str) -> dict[str, Any]:
        qid = body[P.KEY_QUERY_ID]
        if kind == P.ACTION_MPC_ABORT:
            self._sessions().abort(qid)
            return {"ok": True}
        if kind == P.ACTION_MPC_PREPARE:
            sql = body.get(P.KEY_SQL)
            if not isinstance(sql, str):
                raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, "mpc_prepare needs the fragment sql"))
            frag, table = self._run(sql, qid, researcher)
            try:
                from genofed.privacy.secure.layout import lane_hints

                counts, finite = lane_hints(frag)
                self._record("release", researcher, sql, query_id=qid, combine="mpc", decision="shared", groups=table.num_rows)
                addr = self._sessions().prepare(qid, table, list(frag.keys), list(frag.partials), sql, counts, finite)
            except GenofedError as e:
                raise flight.FlightServerError(P.encode_error("mpc", str(e))) from None
            log.info("query %s for %s: MPC party ready with %d groups", qid, researcher, table.num_rows)
            return addr
        try:
            sent = self._sessions().run(qid, body, self.config.name, self.config.min_count)
        except NodeError as e:
            raise flight.FlightServerError(P.encode_error(e.node_code, e.reason, party=e.node)) from None
        except GenofedError as e:
            raise flight.FlightServerError(P.encode_error("mpc", str(e))) from None
        log.info("query %s for %s: MPC protocol done, %d bytes sent", qid, researcher, sent)
        self._record("mpc_done", researcher, query_id=qid, combine="mpc", decision="combined")
        return {"ok": True, "bytes_sent": sent}

    def _he(self, req: dict[str, Any], researcher: str):
        """combine='he': align keys through the key holder, encrypt every lane under its public
        keys, and return only ciphertexts."""
        from genofed.privacy.secure import he as H
        from genofed.privacy.secure import layout as L

        qid = str(req.get(P.KEY_QUERY_ID, "?"))
        timeout = float(req.get("timeout", 60.0))
        frag, table = self._run(req[P.KEY_SQL], qid, researcher)
        try:
            kh = self._keyholder()
            keys = kh.public_keys()
            if req.get("key_id") != keys.key_id:  # the key holder may have restarted with new keys
                keys = kh.public_keys(refresh=True)
                if req.get("key_id") != keys.key_id:
                    raise GenofedError("the coordinator's key holder is not this node's key holder (key ids differ); refusing to encrypt")
            layout = L.layout_for(table.schema, list(frag.keys), list(frag.partials), *L.lane_hints(frag))
            union = kh.align(qid, self.config.min_count, layout, L.key_table(table, layout.keys), timeout)
            g = union.num_rows
            aligned = L.align(table, union, layout.keys) if layout.keys else L.align(table, union, [])
            cts = H.encrypt_lanes(L.lane_values(aligned, layout), layout, keys) if g else H.CT_SCHEMA.empty_table()
        except NodeError as e:
            raise flight.FlightServerError(P.encode_error(e.node_code, e.reason, party=e.node)) from None
        except GenofedError as e:
            raise flight.FlightServerError(P.encode_error("he", str(e))) from None
        self._record("release", researcher, req[P.KEY_SQL], query_id=qid, combine="he", decision="encrypted", groups=g)
        meta = {b"genofed.node": self.config.name.encode(), b"genofed.key_id": keys.key_id.encode(),
                b"genofed.groups": str(g).encode(), b"genofed.layout": json.dumps(layout.to_json()).encode()}
        log.info("query %s for %s: %d groups encrypted as %d ciphertexts", qid, researcher, g, cts.num_rows)
        return cts.replace_schema_metadata(meta)

    def _keyholder(self):
        from genofed.privacy.secure.keyholder import KeyHolderClient

        loc = self.config.keyholder_location()
        if self._kh is None or self._kh.location != loc:
            self._kh = KeyHolderClient(loc, self.config.keyholder["token"], tls=self.config.keyholder_tls())
        return self._kh

    def _run(self, sql: str, qid: str, researcher: str):
        """Validate and execute a fragment, translating errors to wire errors. No suppression:
        callers apply the rule their combine mode needs."""
        try:
            frag = self._validate_any(sql)
            table = self.backend.execute(frag)
            if getattr(frag, "fn", None) == "pca" and frag.round == "project":
                # the node now keeps the scores as a table: researchers can use them as covariates
                self.catalog = Catalog.merge({self.config.name: self._visible(self.backend.catalog())})
                self._validate.cache_clear()
            return frag, table
        except DisclosureError as e:
            log.info("refused query %s for %s: %s", qid, researcher, e.rule)
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule=e.rule)
            raise flight.FlightServerError(P.encode_error(P.CODE_DISCLOSURE, str(e), e.rule)) from None
        except (FragmentError, GenofedError) as e:
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="invalid_fragment")
            raise flight.FlightServerError(P.encode_error(P.CODE_FRAGMENT, str(e))) from None
        except Exception:
            log.exception("internal error on query %s", qid)
            self._record("error", researcher, sql, query_id=qid, decision="error")
            raise flight.FlightServerError(P.encode_error(P.CODE_INTERNAL, "internal error at the node; the steward can see it in the node log")) from None

    # -- fragments -------------------------------------------------------------------------
    def do_get(self, context, ticket):
        researcher = self._researcher(context)
        try:
            req = json.loads(ticket.ticket.decode())
            if not isinstance(req, dict) or req.get(P.KEY_KIND) != P.TICKET_KIND_FRAGMENT or not isinstance(req.get(P.KEY_SQL), str):
                raise ValueError("not a fragment request")
            if req.get(P.KEY_VERSION) != P.PROTOCOL_VERSION:
                raise ValueError(f"protocol version {req.get(P.KEY_VERSION)} not supported (this node speaks {P.PROTOCOL_VERSION})")
        except (ValueError, UnicodeDecodeError) as e:
            self._record("bad_request", researcher, decision="refused", rule="malformed")
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed ticket: {e}")) from None
        mode = req.get(P.KEY_COMBINE, "plain")
        if mode == "he":
            return flight.RecordBatchStream(self._he(req, researcher))
        if mode != "plain":
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"combine mode {mode!r} is not served by do_get; see the mpc_* actions"))
        if not self.config.allow_plain:
            self._record("refused", researcher, req[P.KEY_SQL], query_id=req.get(P.KEY_QUERY_ID), decision="refused", rule="plain_not_allowed")
            raise flight.FlightServerError(P.encode_error(
                P.CODE_POLICY,
                "this node's policy does not allow combine='plain' (the coordinator would see this node's partials); use combine='mpc' or 'he'",
            ))
        frag, table = self._run(req[P.KEY_SQL], req.get(P.KEY_QUERY_ID, "?"), researcher)
        table, n_suppressed = apply_min_count(narrow_integers(table), self.config.min_count, frag.partials)
        meta = {
            P.META_NODE: self.config.name.encode(),
            P.META_SUPPRESSED: str(n_suppressed).encode(),
            P.META_MIN_COUNT: str(self.config.min_count).encode(),
        }
        table = table.replace_schema_metadata(meta)
        self._record("release", researcher, req[P.KEY_SQL], query_id=req.get(P.KEY_QUERY_ID), combine="plain", decision="released",
                     groups=table.num_rows, suppressed=n_suppressed)
        log.info("query %s for %s: %d groups, %d suppressed", req.get(P.KEY_QUERY_ID), researcher, table.num_rows, n_suppressed)
        # large partial tables (e.g. per-variant GWAS statistics, many of them constant) go
        # LZ4-compressed: cheaper than the bytes on any real network
        opts = pa.ipc.IpcWriteOptions(compression="lz4") if table.nbytes > (1 << 20) else None
        return flight.RecordBatchStream(table, options=opts)


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
