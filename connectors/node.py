"""The node server: an Arrow Flight service a biobank runs next to its store.

Every call must carry a researcher's bearer token. Fragments are re-validated here against the
node's own catalog and policy, executed by the node's backend, passed through the node's
minimum-count rule, and streamed back as Arrow. Errors cross the wire as a code and a reason
(``GENOFED:{json}``), never a traceback, sample ID or cell value.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from sqlglot import exp

from genofed.engine import protocol as P
from genofed.engine.backends.base import Backend
from genofed.engine.combine import narrow_integers
from genofed.engine.errors import (
    DisclosureError,
    FragmentError,
    GenofedError,
    NodeError,
    UnsupportedError,
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
_REQUEST = threading.local()  # the request this server thread handles: (researcher, query id, user_sql, combine)


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

    def _validate_any(self, sql: str):
        """A SQL fragment (validation cached) or an analysis round (validated every time: its
        state changes from round to round)."""
        from genofed.engine.analysis import is_analysis, validate_analysis

        if is_analysis(sql):
            from genofed.privacy.rules import check_request

            frag = validate_analysis(sql, self.catalog, self.config)
            check_request(frag, self.config)
            return frag
        return self._validate(sql)

    def _admit(self, researcher: str, sql: str | None, qid: Any) -> None:
        """The researcher's rate limit (a token bucket of ``rate_limit_per_minute``, refilled
        continuously); refusals are audited."""
        limit = self.config.rate_limit(researcher)
        if not limit:
            return
        now = time.monotonic()
        with self._rate_lock:
            tokens, last = self._buckets.get(researcher, (float(limit), now))
            tokens = min(float(limit), tokens + (now - last) * limit / 60.0)
            ok = tokens >= 1.0
            self._buckets[researcher] = (tokens - 1.0 if ok else tokens, now)
        if not ok:
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="rate_limit")
            raise flight.FlightServerError(P.encode_error(
                P.CODE_RATE_LIMITED, f"more than {limit} requests per minute from you at this node; wait a few seconds and retry"))

    def _authorize(self, frag: Any, researcher: str, sql: str, qid: Any) -> None:
        """Refuse a fragment reading a table outside the researcher's roles (audited)."""
        allowed = self.config.allowed_tables(researcher)
        if allowed is None:
            return
        known = set(self.catalog.tables) | {"genotypes"}
        reads = {t.lower() for t in frag.tables if t in known}
        if getattr(frag, "fn", None):  # analyses read genotypes and variants
            reads |= {"genotypes", "variants"}
        denied = sorted(reads - allowed)
        if denied:
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="access")
            raise flight.FlightServerError(P.encode_error(
                P.CODE_FORBIDDEN, f"your roles at this node do not allow reading {', '.join(denied)}; ask the data steward"))

    def _quasi_identified(self, frag: Any) -> bool:
        """Whether a fragment reads a quasi-identifier column (its groups must be k-anonymous here)."""
        if not self.config.quasi_identifiers or not hasattr(frag, "select"):
            return False
        from genofed.engine.samplesets import referenced_columns

        return bool(referenced_columns(frag.select) & set(self.config.quasi_identifiers))

    def _disclose(self, frag: Any, table: pa.Table, notes: dict[str, Any], mode: str, qid: str, researcher: str,
                  sql: str) -> Any:
        """The pipeline's disclosure step, one for every combine mode (:func:`genofed.privacy.rules.release`):
        what may leave this node. Refusals are audited; ``notes["withheld"]`` counts withheld
        groups by rule (never which)."""
        from genofed.privacy.rules import release

        infl = notes.pop("_influence", None)
        try:
            out = release(frag, narrow_integers(table), mode, self.config, quasi_identified=self._quasi_identified(frag),
                          query_id=qid, influence=infl)
        except DisclosureError as e:
            log.info("refused query %s for %s: %s", qid, researcher, e.rule)
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule=e.rule)
            raise flight.FlightServerError(P.encode_error(P.CODE_DISCLOSURE, str(e), e.rule)) from None
        if out.withheld:
            notes["withheld"] = out.withheld
        return out

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
            (P.ACTION_BLIND, "blinded keys of the groups this node released for a plain query"),
            (P.ACTION_HISTORY, "your own releases and refusals at this node"),
        ]

    def _record(self, event: str, researcher: str, sql: str | None = None, **fields: Any) -> None:
        """Audit one decision. Fails closed: if the log cannot be written, nothing is released."""
        if event in ("release", "refused"):
            self._log_release(researcher, sql, fields)
        if self.audit is None:
            return
        from genofed.privacy.audit import fragment_digest

        try:
            self.audit.append(event, researcher=researcher, fragment_sha256=fragment_digest(sql) if sql else None, **fields)
        except OSError as e:
            log.error("audit log %s cannot be written: %s", self.audit.path, e)
            raise flight.FlightServerError(P.encode_error(P.CODE_INTERNAL, "the node's audit log cannot be written; nothing was released")) from None

    @staticmethod
    def _note_request(researcher: str, req: dict[str, Any], combine: Any) -> None:
        """Remember, for the request this thread serves, the researcher's SQL as written (the
        ticket's or body's ``user_sql``: a string, clipped; anything else is ignored) and the
        combine mode, for the release log entries its decisions make."""
        from genofed.privacy.releases import clip_text

        qid = req.get(P.KEY_QUERY_ID)
        _REQUEST.current = (researcher, qid if isinstance(qid, str) else "?", clip_text(req.get(P.KEY_USER_SQL)),
                            combine if combine in P.COMBINE_MODES else None)

    def _log_release(self, researcher: str, sql: str | None, fields: dict[str, Any]) -> None:
        """Log a release or refusal in the researcher's release log (:attr:`releases`). A release
        that cannot be logged is not made (as with the audit log); a refusal stays a refusal."""
        import sqlite3

        from genofed.engine.analysis import is_analysis
        from genofed.privacy.audit import fragment_digest

        qid = fields.get("query_id")
        qid = qid if isinstance(qid, str) else "?"
        noted = getattr(_REQUEST, "current", None)
        user_sql, combine = noted[2:] if noted is not None and noted[:2] == (researcher, qid) else (None, None)
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
        elif kind == P.ACTION_BLIND:
            body = self._json_body(action)
            yield flight.Result(json.dumps(self._blind(self._researcher(context), body[P.KEY_QUERY_ID])).encode())
        elif kind in (P.ACTION_MPC_PREPARE, P.ACTION_MPC_RUN, P.ACTION_MPC_ABORT):
            body = self._json_body(action)
            yield flight.Result(json.dumps(self._mpc_action(kind, body, self._researcher(context), context)).encode())
        else:
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"unknown action {kind[:40]!r}; see list_actions"))

    def _keep_released(self, researcher: str, qid: str, frag: Any, table: pa.Table) -> None:
        """Keep the keys of a plain release for a short while: if another node withheld a group,
        the coordinator asks for their blinded keys (:meth:`_blind`)."""
        with self._rate_lock:
            now = time.monotonic()
            self._released = {k: v for k, v in getattr(self, "_released", {}).items() if now - v[0] < 120}
            while len(self._released) >= 64:
                self._released.pop(next(iter(self._released)))
            self._released[(researcher, qid)] = (now, list(frag.keys), table.select(list(frag.keys)))

    def _blind(self, researcher: str, qid: str) -> list[str]:
        """``ACTION_BLIND``: the blinded keys of the groups this node released to this researcher
        for ``qid`` (in the order sent), so the coordinator can withhold a group another node
        withheld without anyone learning its key. Nothing for another researcher's query."""
        from genofed.privacy.rules import blind_keys

        with self._rate_lock:
            kept = getattr(self, "_released", {}).get((researcher, qid))
        if kept is None or not self.config.key_secret:
            raise flight.FlightServerError(P.encode_error(
                P.CODE_BAD_REQUEST, "no recent plain release of that query to you at this node; run the query again"))
        return blind_keys(kept[2], kept[1], self.config.key_secret, qid)

    @staticmethod
    def _json_body(action) -> dict[str, Any]:
        try:
            body = json.loads(action.body.to_pybytes().decode() or "{}")
            if not isinstance(body, dict) or not isinstance(body.get(P.KEY_QUERY_ID), str) or len(body[P.KEY_QUERY_ID]) > 200:
                raise ValueError("expected a JSON object with a query_id (a string of at most 200 characters)")
            return body
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed request: {e}")) from None

    def _sessions(self):
        if self._mpc is None:
            from genofed.privacy.secure.mpc import NodeSessions

            self._mpc = NodeSessions(host=self.config.mpc_host)
        return self._mpc

    def _mpc_action(self, kind: str, body: dict[str, Any], researcher: str, context: Any = None) -> dict[str, Any]:
        qid = body[P.KEY_QUERY_ID]
        if kind == P.ACTION_MPC_ABORT:
            self._sessions().abort(qid)
            return {"ok": True}
        if kind == P.ACTION_MPC_PREPARE:
            sql = body.get(P.KEY_SQL)
            if not isinstance(sql, str):
                raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, "mpc_prepare needs the fragment sql"))
            self._note_request(researcher, body, "mpc")
            self._admit(researcher, sql, qid)
            frag, table, notes = self._run(sql, qid, researcher, "mpc", body.get(P.KEY_DP), context=context)
            table = self._disclose(frag, table, notes, "mpc", qid, researcher, sql).table
            try:
                from genofed.privacy.secure.layout import lane_hints

                counts, finite = lane_hints(frag)
                self._record("release", researcher, sql, query_id=qid, combine="mpc", decision="shared", groups=table.num_rows,
                             **_dp_audit(notes))
                addr = self._sessions().prepare(qid, table, list(frag.keys), list(frag.partials), sql, counts, finite)
            except GenofedError as e:
                raise flight.FlightServerError(P.encode_error("mpc", str(e))) from None
            log.info("query %s for %s: MPC party ready with %d groups", qid, researcher, table.num_rows)
            return {**addr, **({"notes": notes} if notes else {})}
        try:
            sent = self._sessions().run(qid, body, self.config.name, self.config.min_count)
        except NodeError as e:
            raise flight.FlightServerError(P.encode_error(e.node_code, e.reason, party=e.node)) from None
        except GenofedError as e:
            raise flight.FlightServerError(P.encode_error("mpc", str(e))) from None
        log.info("query %s for %s: MPC protocol done, %d bytes sent", qid, researcher, sent)
        self._record("mpc_done", researcher, query_id=qid, combine="mpc", decision="combined")
        return {"ok": True, "bytes_sent": sent}

    def _he(self, req: dict[str, Any], researcher: str, context: Any = None):
        """combine='he': align keys through the key holder, encrypt every lane under its public
        keys, and return only ciphertexts."""
        from genofed.privacy.secure import he as H
        from genofed.privacy.secure import layout as L

        qid = str(req.get(P.KEY_QUERY_ID, "?"))
        timeout = float(req.get("timeout", 60.0))
        self._admit(researcher, req[P.KEY_SQL], qid)
        frag, table, notes = self._run(req[P.KEY_SQL], qid, researcher, "he", req.get(P.KEY_DP), context=context, caller_timeout=timeout)
        table = self._disclose(frag, table, notes, "he", qid, researcher, req[P.KEY_SQL]).table
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
        self._record("release", researcher, req[P.KEY_SQL], query_id=qid, combine="he", decision="encrypted", groups=g,
                     **_dp_audit(notes))
        meta = {b"genofed.node": self.config.name.encode(), b"genofed.key_id": keys.key_id.encode(),
                b"genofed.groups": str(g).encode(), b"genofed.layout": json.dumps(layout.to_json()).encode(),
                **({P.META_NOTES: json.dumps(notes).encode()} if notes else {})}
        log.info("query %s for %s: %d groups encrypted as %d ciphertexts", qid, researcher, g, cts.num_rows)
        return cts.replace_schema_metadata(meta)

    def _keyholder(self):
        from genofed.privacy.secure.keyholder import KeyHolderClient

        loc = self.config.keyholder_location()
        if self._kh is None or self._kh.location != loc:
            self._kh = KeyHolderClient(loc, self.config.keyholder["token"], tls=self.config.keyholder_tls())
        return self._kh

    @_locked_once
    def tracker(self) -> Any:
        """The sample sets released to each researcher (differencing defence)."""
        from genofed.privacy.tracker import SampleTracker

        state = self.config.state_path()
        return SampleTracker(state / "tracker.sqlite" if state is not None else None, self.backend.store.manifest.n_samples)

    @_locked_once
    def releases(self) -> Any:
        """What this node released to (and refused) each researcher: their SQL as written, hashes
        and decisions, never values (``genofed history``, refusals naming an earlier release)."""
        from genofed.privacy.releases import FILE_NAME, ReleaseLog

        state = self.config.state_path()
        return ReleaseLog(state / FILE_NAME if state is not None else None)

    def _check_phenotype(self, frag: Any) -> None:
        """Rule 6 for analyses with a phenotype: enough people in each class (binary) or with a
        non-zero value (continuous) at this node."""
        if (getattr(frag, "sample_sql", None) is None or not (getattr(frag, "args", None) or {}).get("phenotype")
                or not hasattr(self.backend, "con")):
            return
        from genofed.engine.backends.analysis import AnalysisData
        from genofed.privacy.rules import check_phenotype

        check_phenotype(AnalysisData(self.backend, frag).samples.y, self.config.min_count)  # type: ignore[arg-type]  # has .con

    def _guard(self, frag: Any, researcher: str, mode: str, sets: Any = False, qid: str = "?", noisy: bool = False) -> dict[str, Any] | None:
        """The release gates that depend on who is counted: the linear audit of person sets per
        statistic (rule 4, :mod:`genofed.privacy.setaudit`: refuse a release that, with earlier
        ones to the same researcher, determines a total over fewer than min_count people) and the
        genomic re-identification gate (membership risk of per-variant statistics, the
        beacon budget). Both depend on sample sets, variants and history only, never on the
        values being released. Returns the risk score for provenance (or None)."""
        differencing = self.config.differencing and self.config.min_count > 1
        # with min_count 1 the steward releases groups of one person: nothing left to protect
        genomic = _genomic_release(frag) if self.config.min_count > 1 else None
        if not differencing and genomic is None:
            return None
        if sets is False:
            sets = self.backend.sample_sets(frag)
        if sets is None:
            return None
        k = self.config.min_count
        secure = mode != "plain"
        sizes = [len(m) for m in sets.members]
        # plain: cells below the minimum count are suppressed here (not released); a global
        # aggregate over nobody is released as zero. secure: the node's own counts are not
        # released, but every non-empty cell enters the federation-wide sums.
        keep = [(s > 0) if secure else (s >= k or (s == 0 and not sets.keys)) for s in sizes]
        if differencing and not noisy:  # differentially private releases: their noise is accounted by the ledger
            self._audit_sets(frag, researcher, qid, sets, keep, secure)
        if genomic is None:
            return None
        vidx = self._released_variants(frag)
        if genomic == "frequencies" and hasattr(frag, "select") and not _keys_by_variant(frag):
            # every selected variant feeds one value per group (a burden, a mean over a region):
            # one statistic per cohort, not one per variant
            vidx = vidx[:1]
        if genomic == "frequencies":
            cohorts = [m for m, ok in zip(sets.members, keep, strict=True) if ok and len(m)]
            if differencing and cohorts:  # the finest cohorts the released sets let the researcher compute
                from genofed.privacy.setaudit import statistics_of

                cohorts = self.set_audit.atoms(researcher, statistics_of(frag), np.concatenate(cohorts))
            # plain: this node's own frequencies are released, so its own cohort is the attacked
            # pool and the attack is measured on it; secure: only federation-wide sums are, over a
            # pool this node cannot see (the analytic bound, on its own smaller cohort)
            return self.membership.check_frequencies(researcher, cohorts, vidx, None if secure else self._measured_power)
        # presence: each selected variant is a beacon question, charged its worst case
        from genofed.privacy.reid import conservative_frequencies

        ac, an = self._allele_counts(vidx)
        freqs = conservative_frequencies(ac, an)
        return self.membership.check_beacon(researcher, freqs, np.ones(len(vidx), bool), self.backend.store.manifest.n_samples)

    def _audit_sets(self, frag: Any, researcher: str, qid: str, sets: Any, keep: list[bool], secure: bool) -> None:
        """Rule 4: the linear audit of this release's person sets, per statistic
        (:mod:`genofed.privacy.setaudit`). A refusal names the earlier releases it conflicts with:
        their query ids, times and SQL as the researcher wrote them."""
        from genofed.privacy.setaudit import AuditConflict, Row, statistics_of

        rows = [Row(m, direct=not secure) for m, ok in zip(sets.members, keep, strict=True) if ok and len(m)]
        if not rows:
            return
        try:
            self.set_audit.check_and_record(researcher, qid, {s: rows for s in statistics_of(frag)}, self.config.min_count)
        except AuditConflict as e:
            raise DisclosureError(f"{e}{self._describe_releases(researcher, e.conflicts)}", rule=e.rule) from None

    def _describe_releases(self, researcher: str, query_ids: list[str]) -> str:
        """The researcher's own earlier releases, as they wrote them (for a refusal that names them)."""
        import datetime as dt

        lines = []
        for q in query_ids[:3]:
            for r in self.releases.by_query(researcher, q)[:1]:
                when = dt.datetime.fromtimestamp(r.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                sql = " ".join((r.user_sql or "(SQL not recorded)").split())
                lines.append(f"query {q} at {when}: {sql[:300]}")
        return ("; the conflicting earlier answer(s): " + " | ".join(lines)) if lines else ""

    @_locked_once
    def set_audit(self) -> Any:
        """The person sets released per researcher and statistic (rule 4)."""
        from genofed.privacy.setaudit import SetAudit

        state = self.config.state_path()
        return SetAudit(state / "audit_sets.sqlite" if state is not None else None, self.backend.store.manifest.n_samples)

    def _released_variants(self, frag: Any) -> np.ndarray:
        """Store rows of the variants whose values feed a release (an analysis: its variants)."""
        if hasattr(frag, "select"):
            return np.asarray(self.backend.variant_selection(frag), np.int64)
        from genofed.engine.backends.analysis import AnalysisData

        if not hasattr(self.backend, "con"):  # a Hail node runs no analyses (analyses = "refuse")
            return np.zeros(0, np.int64)
        data = AnalysisData(self.backend, frag)  # type: ignore[arg-type]  # analyses run on the embedded backend's data
        vidx = np.asarray(data.variants.column("vidx").to_numpy(), np.int64)
        min_maf = (getattr(frag, "args", None) or {}).get("min_maf")
        if isinstance(min_maf, int | float) and min_maf > 0 and len(vidx):  # PCA releases only the variants it uses
            ac, an = self._allele_counts(vidx)
            order = np.argsort(vidx)
            af = np.zeros(len(vidx))
            af[order] = np.where(an > 0, ac / np.maximum(an, 1), 0.0)
            vidx = vidx[np.minimum(af, 1 - af) >= float(min_maf)]
        return vidx

    def _measured_power(self, members: np.ndarray, vidx: np.ndarray) -> float:
        """The membership attack's power simulated at this cohort's own allele frequencies (rule 5;
        the analytic model holds for common variants only): a pool of the cohort's size drawn at
        those frequencies, the attacker knowing the population frequencies exactly (the worst
        case), members against non-members of the same population. Simulating at the cohort's
        frequencies rather than scoring its real members against the node's other people keeps
        ancestry from passing for membership. Releases without rare variants, or too large to
        simulate (their analytic power already decides), are not simulated."""
        if not len(vidx) or not len(members):
            return 0.0
        from genofed.genomics.kernels import genotype_rows
        from genofed.privacy.reid import membership_power

        store = self.backend.store
        n = store.manifest.n_samples
        t = genotype_rows(store.planes, np.sort(vidx), n)
        dos = t.column("dosage").to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(vidx), n)[:, members]
        f = np.nan_to_num(np.nanmean(dos, axis=1) / 2)
        rare = np.minimum(f, 1 - f) * 2 * len(members) < 10
        n_sim = int(np.ceil(20 / self.config.risk.fpr))  # enough non-members for an empirical threshold
        if not rare.any() or (n_sim + len(members)) * len(vidx) > 50_000_000:
            return 0.0
        rng = np.random.default_rng(len(members) * 1_000_003 + len(vidx))
        pool = rng.binomial(2, f, size=(len(members), len(vidx))).astype(np.float64)
        p_hat = pool.mean(axis=0) / 2
        est = membership_power(pool, p_hat, f, fpr=self.config.risk.fpr, rng=rng, n_pool=len(members),
                               n_simulated=n_sim, threshold="empirical")
        return float(est.power)

    def _allele_counts(self, vidx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This node's alternate allele counts and allele numbers at store variant rows."""
        from genofed.genomics.kernels import group_counts
        from genofed.genomics.store import pack_mask

        store = self.backend.store
        n = store.manifest.n_samples
        vs = np.sort(np.asarray(vidx, np.int64))
        if not len(vs):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        masks = pack_mask(np.arange(n, dtype=np.int64), n)[None, :]
        c = group_counts(store.planes, vs, masks, ("alt1", "alt2", "called", "diploid"), complete=store.complete)
        return (c["alt1"] + c["alt2"])[:, 0].astype(np.int64), (c["called"] + c["diploid"])[:, 0].astype(np.int64)

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

    @_locked_once
    def _clinical_multiplicity(self) -> dict[str, int]:
        """The most rows one sample has in each clinical table (bounds a sample's rows under DP)."""
        out = {}
        for t in self.backend.store.manifest.clinical:
            cur = self.backend.con.cursor()  # server threads never share one DuckDB connection
            try:
                rows = cur.sql(f'SELECT max(c) FROM (SELECT count(*) AS c FROM "{t}" GROUP BY sample_id)').fetchall()
            finally:
                cur.close()
            out[t] = int(rows[0][0] or 1)
        return out

    def _dp_execute(self, frag: Any, sql: str, qid: str, researcher: str, mode: str, mech: Any) -> tuple[pa.Table, dict[str, Any]]:
        """A noised release: served from the release cache when this researcher asked exactly this
        before (so noise cannot be averaged away), else charged to their budget, then noised."""
        from genofed.privacy.audit import fragment_digest
        from genofed.privacy.dpnode import noise_table, plan_dp
        from genofed.privacy.ledger import release_key

        n_var: int | None
        if not hasattr(frag, "select"):  # an analysis round: its variants bound a sample's contribution
            vidx = None
            n_var = self._analysis_variants(frag)
        else:
            vidx = self.backend.variant_selection(frag) if "genotypes" in getattr(frag, "tables", set()) else None
            n_var = None if vidx is None else len(vidx)
        plan = plan_dp(frag, self.config.dp, n_var, self._clinical_multiplicity)
        sets = self.backend.sample_sets(frag)
        key = release_key(*self._release_identity(frag, sql, sets, vidx), mode, mech, l1=plan.l1, l2=plan.l2,
                          data=self.backend.catalog().get("variants_digest"))
        cached = self.ledger.cache.get(researcher, key)
        if cached is not None:
            return cached, {"cached": True, **json.loads((cached.schema.metadata or {}).get(b"genofed.dp", b"{}"))}
        from genofed.privacy.dp import noise_scale

        noise_scale(mech, plan.l1, plan.l2)  # calibrate first: a request OpenDP cannot serve costs no budget
        table = self.backend.execute(plan.fragment)
        risk = self._guard(frag, researcher, mode, sets, qid=qid, noisy=True)
        pol = self.config.dp
        decision = self.ledger.charge_or_cached(researcher, str(qid), fragment_digest(sql), key, mech.epsilon, mech.delta,
                                                pol.budget_epsilon, pol.budget_delta)
        if decision.hit:  # an identical release, charged and stored by a racing query: its noise, its details
            return decision.cached, {"cached": True, **json.loads((decision.cached.schema.metadata or {}).get(b"genofed.dp", b"{}"))}
        noisy, prov = noise_table(table, frag, mech, plan)
        prov = {**prov, "remaining_epsilon": decision.charge.remaining_epsilon, **({"membership_risk": risk} if risk else {})}
        noisy = noisy.replace_schema_metadata({b"genofed.dp": json.dumps(prov).encode()})
        noisy = self.ledger.put(researcher, key, noisy)  # a racing identical query may have stored first: release that one
        return noisy, json.loads((noisy.schema.metadata or {}).get(b"genofed.dp", b"{}")) or prov

    def _analysis_variants(self, frag: Any) -> int:
        """How many variants an analysis round reads at this node."""
        cur = self.backend.con.cursor()
        try:
            rows = cur.sql(f"SELECT count(*) FROM ({frag.variant_sql})").fetchall()
        finally:
            cur.close()
        return int(rows[0][0])

    def _release_identity(self, frag: Any, sql: str, sets: Any, vidx: np.ndarray | None) -> tuple[str]:
        """What a noisy release is cached under. When every table read has at most one row per
        sample and no condition reads genotype values, the answer depends only on the aggregates,
        the group keys, the samples in each group and the variants: near-duplicate predicates
        selecting the same people (``age >= 40`` vs ``age > 39.99``) then get the same cached noisy
        answer, so they cannot be averaged either. Otherwise the fragment text is the identity."""
        from genofed.engine.samplesets import plan_sample_sets

        if sets is None or not hasattr(frag, "select"):
            return (sql,)
        names = {t.name for t in frag.select.find_all(exp.Table)}
        plan = plan_sample_sets(frag.select, list(frag.keys), frag.sample_id)
        if plan is None or plan.genotype_values or any(self._clinical_multiplicity.get(t, 1) > 1 for t in names):
            return (sql,)
        shape = frag.select.copy()
        shape.set("where", None)
        digest = hashlib.sha256()
        digest.update(shape.sql().encode())
        cells = sorted((json.dumps(list(cell), default=str), np.sort(np.asarray(m, np.int64)).tobytes())
                       for cell, m in zip(sets.cells, sets.members, strict=True))
        for cell_key, members in cells:  # in a fixed order: DuckDB returns groups in any order
            digest.update(cell_key.encode())
            digest.update(members)
        if vidx is not None:
            digest.update(np.asarray(vidx, np.int64).tobytes())
        return ("who:" + digest.hexdigest(),)

    @contextlib.contextmanager
    def _limited(self, researcher: str, sql: str, qid: Any, context: Any = None, caller_timeout: float | None = None):
        """One execution slot and the fragment's [limits] (time, memory, groups, scan): a fragment
        waits for a slot at most ``queue_seconds`` (then the node answers ``busy``), and stops when
        ``query_seconds`` pass, the caller's own timeout passes, or the caller hangs up."""
        from genofed.engine import limits as L

        lim = self.config.limits
        now = time.monotonic()
        deadline = now + lim.query_seconds
        if caller_timeout is not None and caller_timeout > 0:
            deadline = min(deadline, now + caller_timeout)
        cancelled = getattr(context, "is_cancelled", None)
        wait = max(0.0, min(lim.queue_seconds, deadline - now))
        if not self._slots.acquire(timeout=wait):
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="busy")
            raise flight.FlightServerError(P.encode_error(
                P.CODE_BUSY, f"this node is already running {lim.max_concurrent} queries and none finished within "
                f"{wait:.3g} s; retry in a little while"))
        try:
            with L.scope(L.Limits(deadline=deadline, seconds=lim.query_seconds, memory_bytes=lim.memory_mb << 20,
                                  max_rows=lim.max_result_rows, max_scan=lim.max_scan_genotypes or None, cancelled=cancelled)):
                yield
        finally:
            self._slots.release()

    def _run(self, sql: str, qid: str, researcher: str, mode: str = "plain", dp: Any = None, context: Any = None,
             caller_timeout: float | None = None):
        """Validate and execute a fragment, translating errors to wire errors; the differencing
        defence runs before anything leaves, and differential privacy noise (when asked for or
        required) is added here, before any combine mode. No suppression: callers apply the rule
        their combine mode needs. Execution holds one of the node's slots and runs under its
        [limits]. Returns the fragment, the table and the DP provenance (or None)."""
        from genofed.engine.limits import ResourceLimitError

        try:
            with self._limited(researcher, sql, qid, context, caller_timeout):
                return self._run_limited(sql, qid, researcher, mode, dp)
        except ResourceLimitError as e:
            log.info("stopped query %s for %s: %s", qid, researcher, e.rule)
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule=e.rule)
            raise flight.FlightServerError(P.encode_error(P.CODE_LIMIT, str(e), e.rule)) from None

    def _run_limited(self, sql: str, qid: str, researcher: str, mode: str, dp: Any):
        from genofed.engine.limits import ResourceLimitError

        try:
            frag = self._validate_any(sql)
            self._authorize(frag, researcher, sql, qid)
            mech = self.config.dp.mechanism_for(dp)
            if mech is None and getattr(ANALYSES_BY_NAME().get(getattr(frag, "fn", "")), "requires_dp", False):
                raise DisclosureError(f"{frag.fn} releases per-variant haplotype counts: this node noises them with "
                                      "differential privacy only; ask with an epsilon", rule="dp_required")
            notes: dict[str, Any] = {}
            if mech is not None:
                table, notes["dp"] = self._dp_execute(frag, sql, qid, researcher, mode, mech)
                if "membership_risk" in notes["dp"]:
                    notes["risk"] = notes["dp"].pop("membership_risk")
            else:
                table = self.backend.execute(frag)
                if self.config.min_count > 1:
                    infl = getattr(self.backend, "influence", None)
                    notes["_influence"] = infl(frag) if infl is not None else None
                    branches = getattr(self.backend, "key_branches", None)
                    if branches is not None and any(b < self.config.min_count for b in branches(frag)):
                        raise DisclosureError(
                            f"a group key splits off fewer than {self.config.min_count} people at this node (a CASE, IF or "
                            "comparison whose branch few or none take): the groups' existence and sizes would single them "
                            "out; group by a coarser condition", rule="key_branch")
                    self._check_phenotype(frag)
                risk = self._guard(frag, researcher, mode, qid=qid)
                if risk:
                    notes["risk"] = risk
            from genofed.engine.limits import check_rows

            check_rows(table.num_rows)
            if getattr(frag, "fn", None) == "pca" and frag.round == "project":
                # the node now keeps the scores as a table: researchers can use them as covariates
                self.catalog = Catalog.merge({self.config.name: self._visible(self.backend.catalog())})
                self._validate.cache_clear()
            return frag, table, notes
        except (flight.FlightError, ResourceLimitError):
            raise  # already a wire error (access), already audited; limits: audited by _run
        except DisclosureError as e:
            log.info("refused query %s for %s: %s", qid, researcher, e.rule)
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule=e.rule)
            raise flight.FlightServerError(P.encode_error(P.CODE_DISCLOSURE, str(e), e.rule)) from None
        except UnsupportedError as e:  # this node's backend cannot run it: nothing was computed
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="unsupported_by_backend")
            raise flight.FlightServerError(P.encode_error(P.CODE_UNSUPPORTED, f"the {self.backend.name} backend: {e}")) from None
        except (FragmentError, GenofedError) as e:
            self._record("refused", researcher, sql, query_id=qid, decision="refused", rule="invalid_fragment")
            raise flight.FlightServerError(P.encode_error(P.CODE_FRAGMENT, str(e))) from None
        except Exception:
            log.exception("internal error on query %s", qid)
            self._record("error", researcher, sql, query_id=qid, decision="error")
            raise flight.FlightServerError(P.encode_error(P.CODE_INTERNAL, "internal error at the node; the steward can see it in the node log")) from None

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
    def do_get(self, context, ticket):
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
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
            self._record("bad_request", researcher, decision="refused", rule="malformed")
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"malformed ticket: {e}")) from None
        mode = req.get(P.KEY_COMBINE, "plain")
        self._note_request(researcher, req, mode)
        if mode == "he":
            return flight.RecordBatchStream(self._he(req, researcher, context))
        if mode != "plain":
            raise flight.FlightServerError(P.encode_error(P.CODE_BAD_REQUEST, f"combine mode {str(mode)[:20]!r} is not served by do_get; see the mpc_* actions"))
        if not self.config.allow_plain:
            self._record("refused", researcher, req[P.KEY_SQL], query_id=req.get(P.KEY_QUERY_ID), decision="refused", rule="plain_not_allowed")
            raise flight.FlightServerError(P.encode_error(
                P.CODE_POLICY,
                "this node's policy does not allow combine='plain' (the coordinator would see this node's partials); use combine='mpc' or 'he'",
            ))
        self._admit(researcher, req[P.KEY_SQL], req.get(P.KEY_QUERY_ID))
        frag, table, notes = self._run(req[P.KEY_SQL], req.get(P.KEY_QUERY_ID, "?"), researcher, "plain", req.get(P.KEY_DP),
                                       context=context)
        qid = req.get(P.KEY_QUERY_ID, "?")
        out = self._disclose(frag, table, notes, "plain", qid, researcher, req[P.KEY_SQL])
        table, n_suppressed = out.table, out.n_withheld
        if out.tokens or (frag.keys and table.num_rows and self.config.key_secret):
            self._keep_released(researcher, qid, frag, table)
        meta = {
            P.META_NODE: self.config.name.encode(),
            P.META_SUPPRESSED: str(n_suppressed).encode(),
            P.META_MIN_COUNT: str(self.config.min_count).encode(),
            **({P.META_WITHHELD: json.dumps(out.withheld).encode()} if out.withheld else {}),
            **({P.META_WITHHELD_TOKENS: json.dumps(out.tokens).encode()} if out.tokens else {}),
            **({P.META_DP: json.dumps(notes["dp"]).encode()} if notes.get("dp") else {}),
            **({P.META_RISK: json.dumps(notes["risk"]).encode()} if notes.get("risk") else {}),
        }
        table = table.replace_schema_metadata(meta)
        self._record("release", researcher, req[P.KEY_SQL], query_id=req.get(P.KEY_QUERY_ID), combine="plain", decision="released",
                     groups=table.num_rows, suppressed=n_suppressed, **_dp_audit(notes))
        log.info("query %s for %s: %d groups, %d suppressed", req.get(P.KEY_QUERY_ID), researcher, table.num_rows, n_suppressed)
        # large partial tables (e.g. per-variant GWAS statistics, many of them constant) go
        # LZ4-compressed: cheaper than the bytes on any real network
        opts = pa.ipc.IpcWriteOptions(compression="lz4") if table.nbytes > (1 << 20) else None
        return flight.RecordBatchStream(table, options=opts)


def _dp_audit(notes: dict[str, Any]) -> dict[str, Any]:
    """The DP facts of a release for the audit log: ε charged (0 when served from the release
    cache, which charges nothing) and whether it was cached. Never the noise or the values."""
    dp = notes.get("dp")
    if not dp:
        return {}
    cached = bool(dp.get("cached"))
    return {"dp_epsilon": 0.0 if cached else dp.get("epsilon"), "dp_cached": cached}


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


def ANALYSES_BY_NAME() -> dict[str, Any]:  # noqa: N802 - a lazily imported registry
    from genofed.genomics.analyses import ANALYSES

    return ANALYSES


def _keys_by_variant(frag: Any) -> bool:
    """Whether a fragment's groups split by variant (a key reads a variant column, however
    written: ``variant_id``, ``variant_id || ''``, ``pos / 1000``)."""
    from sqlglot import exp

    from genofed.engine.schema import GENOTYPE_VARIANT_COLUMNS

    cols = set(GENOTYPE_VARIANT_COLUMNS) | {"variant_id", "chrom", "pos", "ref", "alt", "rsid", "qual", "filter"}
    bodies = [p.unalias() for p in frag.select.expressions if p.alias_or_name in frag.keys]
    return any(c.name in cols for b in bodies for c in b.find_all(exp.Column))


def _genomic_release(frag: Any) -> str | None:
    """Rule 5, from what the fragment reads, not how it is spelled: 'presence' for beacon-style
    questions (counts of who has a genotype value, the WHERE clause choosing carriers),
    'frequencies' for any other release computed from genotype values (allele counts however
    written: ``SUM(dosage)``, ``COUNT(CASE WHEN dosage = 1 ...)``, keys such as
    ``variant_id || ''``; GWAS, association, LD, PCA and Fst rounds), else None."""
    if not hasattr(frag, "select"):
        return "frequencies" if getattr(frag, "sample_sql", None) is not None and getattr(frag, "variant_sql", None) else None
    if "genotypes" not in frag.tables:
        return None
    from sqlglot import exp

    sel = frag.select
    g_tables = {t.alias_or_name for t in sel.find_all(exp.Table) if t.name == "genotypes"}
    values = [c for c in sel.find_all(exp.Column) if c.name in ("dosage", "phased", "ploidy") and (c.table in g_tables or not c.table)]
    if not values:
        return None  # genotype rows counted without their values: who was genotyped, not what they carry
    bodies = {p.alias_or_name: p.unalias() for p in sel.expressions}
    where = sel.args.get("where")
    on_values = where is not None and any(c.table in g_tables and c.name in ("dosage", "phased", "ploidy")
                                          for c in where.find_all(exp.Column))
    if on_values and not any(s is not sel for s in sel.find_all(exp.Select)) and all(isinstance(bodies[p], exp.Count) for p in frag.partials):
        return "presence"  # who carries an allele, counted: a beacon question per selected variant
    return "frequencies"
