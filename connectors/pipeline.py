"""The node's request pipeline: one ordered list of steps wraps every fragment a node runs.

A node serves fragments over three transports (a ``do_get`` ticket for ``combine='plain'`` and
``'he'``, the ``mpc_prepare`` action for ``'mpc'``) and two kinds of fragment (SQL, and the rounds
of table-function analyses, synthetic-genotype training included). Whatever the transport and
kind, the same steps run in the same order (DESIGN.md, "Disclosure model"):

=================  ==========================================================================
``audit``          outermost: every outcome is audited once (release log and audit log), and
                   every refusal or failure leaves as a wire error (code, rule, reason; never a
                   value or a traceback)
``combine_policy`` the node's policy on combine modes (``allow_plain``)
``rate_limit``     the researcher's token bucket
``egress``         on the way out: what the combine mode sends (the plain table with its
                   provenance, an MPC party's shares, HE ciphertexts), after every rule passed
``validate``       the fragment against this node's catalog; rule 1 (identifiers) and rule 6
                   (declared variables) before anything runs
``authorize``      the researcher's roles (tables they may read)
``limits``         an execution slot and the [limits] (time, memory, groups, scan)
``execute``        the backend; with an epsilon, the bounded fragment (rule 8) and the release
                   cache
``disclose``       rules 2-6 and 8 (:class:`~genofed.connectors.gates.ReleaseGates`): influence,
                   dominance, key branches, phenotype classes, the person-set audit, the
                   membership gate, the DP charge and noise, then the one disclosure step of
                   :func:`genofed.privacy.rules.release`
=================  ==========================================================================

No rule lives in a transport or a combine-mode branch: a combine mode changes only what
``egress`` sends. The node's policy object (:class:`~genofed.connectors.config.NodeConfig`) is
the one every step reads, and the one the Flower feature reads check (:func:`authorized_tables`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from genofed.engine import protocol as P
from genofed.engine.errors import (
    DisclosureError,
    FragmentError,
    GenofedError,
    NodeError,
    UnsupportedError,
)

log = logging.getLogger("genofed.node")

COMBINE_DECISION = {"plain": "released", "mpc": "shared", "he": "encrypted"}


class Refused(Exception):
    """A step's decision not to serve a request: the wire code, the reason (no values) and the
    rule the audit records. ``audited=False`` for requests refused before they were understood."""

    def __init__(self, code: str, reason: str, rule: str | None = None, party: str | None = None, event: str = "refused"):
        super().__init__(reason)
        self.code, self.reason, self.rule, self.party, self.event = code, reason, rule, party, event

    def wire(self) -> flight.FlightServerError:
        return flight.FlightServerError(P.encode_error(self.code, self.reason, self.rule, **({"party": self.party} if self.party else {})))


@dataclass
class Request:
    """One fragment request as the pipeline sees it, whatever its transport."""

    researcher: str
    sql: str
    query_id: str
    combine: str  # plain | mpc | he
    dp: Any = None  # the caller's DP request (epsilon, delta, mechanism) or None
    context: Any = None  # the Flight call context (cancellation)
    timeout: float | None = None  # the caller's own timeout
    user_sql: str | None = None  # the researcher's SQL as written (release log)
    body: dict[str, Any] = field(default_factory=dict)  # transport extras (the HE key id)
    # filled in by the steps
    frag: Any = None
    table: pa.Table | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # provenance for the caller: dp, risk, withheld
    dp_plan: Any = None  # rule 8: the bounded fragment and its sensitivity, the release-cache key
    released: Any = None  # privacy.rules.Released
    audit: dict[str, Any] = field(default_factory=dict)  # what the release's audit entry records


Step = Callable[[Request, Callable[[], Any]], Any]


class Pipeline:
    """Ordered steps; each gets the request and a ``proceed()`` that runs the rest."""

    def __init__(self, steps: list[tuple[str, Step]]):
        self.steps = steps

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.steps]

    def __call__(self, req: Request) -> Any:
        def run(i: int) -> Any:
            if i == len(self.steps):
                return None
            return self.steps[i][1](req, lambda: run(i + 1))

        return run(0)


def authorized_tables(policy: Any, researcher: str, reads: set[str]) -> list[str]:
    """The tables in ``reads`` the researcher's roles do not allow (sorted; empty: all allowed).
    Shared by query fragments and Flower feature reads."""
    allowed = policy.allowed_tables(researcher)
    if allowed is None:
        return []
    return sorted({t.lower() for t in reads} - allowed)


def fragment_pipeline(node: Any) -> Pipeline:
    """The steps every fragment request of ``node`` (a :class:`~genofed.connectors.node.NodeServer`) runs."""
    s = _Steps(node)
    return Pipeline([("audit", s.audit), ("combine_policy", s.combine_policy), ("rate_limit", s.rate_limit),
                     ("egress", s.egress), ("validate", s.validate), ("authorize", s.authorize), ("limits", s.limits),
                     ("execute", s.execute), ("disclose", s.disclose)])


class _Steps:
    def __init__(self, node: Any):
        self.node = node
        self.config = node.config

    # -- audit: one place turns outcomes into audit entries and wire errors --------------------------
    def audit(self, req: Request, proceed: Callable[[], Any]) -> Any:
        from genofed.engine.limits import ResourceLimitError

        node = self.node
        try:
            out = proceed()
        except Refused as e:
            if e.event:
                log.info("%s query %s for %s: %s", e.event, req.query_id, req.researcher, e.rule)
                node.record(e.event, req, decision="error" if e.event == "error" else "refused", rule=e.rule)
            raise e.wire() from None
        except flight.FlightError:
            raise  # an error already on the wire (an audit log that cannot be written)
        except DisclosureError as e:
            log.info("refused query %s for %s: %s", req.query_id, req.researcher, e.rule)
            node.record("refused", req, decision="refused", rule=e.rule)
            raise Refused(P.CODE_DISCLOSURE, str(e), e.rule).wire() from None
        except ResourceLimitError as e:
            log.info("stopped query %s for %s: %s", req.query_id, req.researcher, e.rule)
            node.record("refused", req, decision="refused", rule=e.rule)
            raise Refused(P.CODE_LIMIT, str(e), e.rule).wire() from None
        except UnsupportedError as e:  # this node's backend cannot run it: nothing was computed
            node.record("refused", req, decision="refused", rule="unsupported_by_backend")
            raise Refused(P.CODE_UNSUPPORTED, f"the {node.backend.name} backend: {e}").wire() from None
        except (FragmentError, GenofedError) as e:
            node.record("refused", req, decision="refused", rule="invalid_fragment")
            raise Refused(P.CODE_FRAGMENT, str(e)).wire() from None
        except Exception:
            log.exception("internal error on query %s", req.query_id)
            node.record("error", req, decision="error")
            raise Refused(P.CODE_INTERNAL, "internal error at the node; the steward can see it in the node log").wire() from None
        try:
            node.record("release", req, combine=req.combine, decision=COMBINE_DECISION[req.combine], **req.audit)
        except BaseException:
            if req.combine == "mpc":  # nothing leaves: the prepared party is dropped
                node.sessions().abort(req.query_id)
            raise
        return out

    # -- admission --------------------------------------------------------------------------------
    def combine_policy(self, req: Request, proceed: Callable[[], Any]) -> Any:
        if req.combine not in COMBINE_DECISION:
            raise Refused(P.CODE_BAD_REQUEST, f"combine mode {req.combine[:20]!r} is not served; use plain, mpc or he", event="")
        return proceed()

    def _plain_policy(self, req: Request) -> None:
        """combine='plain' needs the node's ``allow_plain``, unless the fragment reads no one's
        data (the public variant list alone: secure combine of one node's copy protects nothing)."""
        frag = req.frag
        public = not getattr(frag, "fn", None) and {t.lower() for t in getattr(frag, "tables", ())} <= {"variants"}
        if req.combine == "plain" and not self.config.allow_plain and not public:
            raise Refused(P.CODE_POLICY, "this node's policy does not allow combine='plain' (the coordinator would see this "
                                         "node's partials); use combine='mpc' or 'he'", "plain_not_allowed")

    def rate_limit(self, req: Request, proceed: Callable[[], Any]) -> Any:
        """The researcher's rate limit (a token bucket of ``rate_limit_per_minute``, refilled continuously)."""
        limit = self.config.rate_limit(req.researcher)
        if limit:
            node = self.node
            now = time.monotonic()
            with node._rate_lock:
                tokens, last = node._buckets.get(req.researcher, (float(limit), now))
                tokens = min(float(limit), tokens + (now - last) * limit / 60.0)
                ok = tokens >= 1.0
                node._buckets[req.researcher] = (tokens - 1.0 if ok else tokens, now)
            if not ok:
                raise Refused(P.CODE_RATE_LIMITED, f"more than {limit} requests per minute from you at this node; "
                                                   "wait a few seconds and retry", "rate_limit")
        return proceed()

    # -- before execution -------------------------------------------------------------------------------
    def validate(self, req: Request, proceed: Callable[[], Any]) -> Any:
        """The fragment against this node's catalog, and the rules that depend on the request alone."""
        from genofed.genomics.analyses import ANALYSES

        req.frag = self.node.validate(req.sql)
        self._plain_policy(req)
        fn = getattr(req.frag, "fn", "")
        if self.config.dp.mechanism_for(req.dp) is None and getattr(ANALYSES.get(fn), "requires_dp", False):
            raise DisclosureError(f"{fn} releases per-variant haplotype counts: this node noises them with "
                                  "differential privacy only; ask with an epsilon", rule="dp_required")
        return proceed()

    def authorize(self, req: Request, proceed: Callable[[], Any]) -> Any:
        """Refuse a fragment reading a table outside the researcher's roles."""
        frag = req.frag
        known = set(self.node.catalog.tables) | {"genotypes"}
        reads = {t.lower() for t in frag.tables if t in known}
        if getattr(frag, "fn", None):  # analyses read genotypes and variants
            reads |= {"genotypes", "variants"}
        denied = authorized_tables(self.config, req.researcher, reads)
        if denied:
            raise Refused(P.CODE_FORBIDDEN, f"your roles at this node do not allow reading {', '.join(denied)}; ask the data steward",
                          "access")
        return proceed()

    def limits(self, req: Request, proceed: Callable[[], Any]) -> Any:
        """One execution slot and the fragment's [limits] (time, memory, groups, scan): a fragment
        waits for a slot at most ``queue_seconds`` (then the node answers ``busy``), and stops when
        ``query_seconds`` pass, the caller's own timeout passes, or the caller hangs up."""
        from genofed.engine import limits as L

        lim = self.config.limits
        now = time.monotonic()
        deadline = now + lim.query_seconds
        if req.timeout is not None and req.timeout > 0:
            deadline = min(deadline, now + req.timeout)
        wait = max(0.0, min(lim.queue_seconds, deadline - now))
        slots = self.node._slots
        if not slots.acquire(timeout=wait):
            raise Refused(P.CODE_BUSY, f"this node is already running {lim.max_concurrent} queries and none finished within "
                                       f"{wait:.3g} s; retry in a little while", "busy")
        try:
            with L.scope(L.Limits(deadline=deadline, seconds=lim.query_seconds, memory_bytes=lim.memory_mb << 20,
                                  max_rows=lim.max_result_rows, max_scan=lim.max_scan_genotypes or None,
                                  cancelled=getattr(req.context, "is_cancelled", None))):
                return proceed()
        finally:
            slots.release()

    # -- execution and disclosure -------------------------------------------------------------------------
    def execute(self, req: Request, proceed: Callable[[], Any]) -> Any:
        from genofed.engine.limits import check_rows

        gates = self.node.gates
        mech = self.config.dp.mechanism_for(req.dp)
        if mech is not None:
            gates.dp_execute(req, mech)
        else:
            req.table = self.node.backend.execute(req.frag)
        assert req.table is not None
        check_rows(req.table.num_rows)
        frag = req.frag
        if getattr(frag, "fn", None) == "pca" and frag.round == "project":
            self.node.refresh_catalog()  # the node now keeps the scores as a table: researchers can use them as covariates
        return proceed()

    def disclose(self, req: Request, proceed: Callable[[], Any]) -> Any:
        self.node.gates.disclose(req)
        return proceed()

    # -- on the way out: what the combine mode sends --------------------------------------------------------
    def egress(self, req: Request, proceed: Callable[[], Any]) -> Any:
        proceed()
        try:
            return {"plain": self._plain, "mpc": self._mpc, "he": self._he}[req.combine](req)
        except NodeError as e:  # a peer of the secure combine (the key holder) failed or refused
            raise Refused(e.node_code, e.reason, "combine", party=e.node, event="error") from None
        except GenofedError as e:  # the secure combine could not be set up: nothing was sent
            raise Refused(req.combine, str(e), "combine", event="error") from None

    def _plain(self, req: Request) -> pa.Table:
        out = req.released
        table = out.table
        notes = req.notes
        meta = {
            P.META_NODE: self.config.name.encode(),
            P.META_SUPPRESSED: str(out.n_withheld).encode(),
            P.META_MIN_COUNT: str(self.config.min_count).encode(),
            **({P.META_WITHHELD: json.dumps(out.withheld).encode()} if out.withheld else {}),
            **({P.META_WITHHELD_TOKENS: json.dumps(out.tokens).encode()} if out.tokens else {}),
            **({P.META_DP: json.dumps(notes["dp"]).encode()} if notes.get("dp") else {}),
            **({P.META_RISK: json.dumps(notes["risk"]).encode()} if notes.get("risk") else {}),
        }
        req.audit.update(groups=table.num_rows, suppressed=out.n_withheld, **dp_audit(notes))
        log.info("query %s for %s: %d groups, %d suppressed", req.query_id, req.researcher, table.num_rows, out.n_withheld)
        return table.replace_schema_metadata(meta)

    def _mpc(self, req: Request) -> dict[str, Any]:
        from genofed.privacy.secure.layout import lane_hints

        table, frag = req.released.table, req.frag
        counts, finite = lane_hints(frag)
        addr = self.node.sessions().prepare(req.query_id, table, list(frag.keys), list(frag.partials), req.sql, counts, finite,
                                            token_secret=self.node.config.key_secret)
        req.audit.update(groups=table.num_rows, **dp_audit(req.notes))
        log.info("query %s for %s: MPC party ready with %d groups", req.query_id, req.researcher, table.num_rows)
        return {**addr, **({"notes": req.notes} if req.notes else {})}

    def _he(self, req: Request) -> pa.Table:
        """Align keys through the key holder, encrypt every lane under its public keys, and return
        only ciphertexts."""
        from genofed.privacy.secure import he as H
        from genofed.privacy.secure import layout as L

        table, frag = req.released.table, req.frag
        kh = self.node.keyholder()
        keys = kh.public_keys()
        if req.body.get("key_id") != keys.key_id:  # the key holder may have restarted with new keys
            keys = kh.public_keys(refresh=True)
            if req.body.get("key_id") != keys.key_id:
                raise GenofedError("the coordinator's key holder is not this node's key holder (key ids differ); refusing to encrypt")
        layout = L.layout_for(table.schema, list(frag.keys), list(frag.partials), *L.lane_hints(frag))
        union = kh.align(req.query_id, self.config.min_count, layout, L.key_table(table, layout.keys), req.timeout or 60.0)
        g = union.num_rows
        aligned = L.align(table, union, layout.keys)
        cts = H.encrypt_lanes(L.lane_values(aligned, layout), layout, keys) if g else H.CT_SCHEMA.empty_table()
        req.audit.update(groups=g, **dp_audit(req.notes))
        import hashlib

        tag = H.tag_ciphertexts(cts, req.query_id, self.config.name, keys.key_id,
                                H.tag_key(hashlib.sha256(self.config.keyholder["token"].encode()).hexdigest()))
        meta = {b"genofed.node": self.config.name.encode(), b"genofed.key_id": keys.key_id.encode(), H.TAG_METADATA: tag.encode(),
                b"genofed.groups": str(g).encode(), b"genofed.layout": json.dumps(layout.to_json()).encode(),
                **({P.META_NOTES: json.dumps(req.notes).encode()} if req.notes else {})}
        log.info("query %s for %s: %d groups encrypted as %d ciphertexts", req.query_id, req.researcher, g, cts.num_rows)
        return cts.replace_schema_metadata(meta)


def dp_audit(notes: dict[str, Any]) -> dict[str, Any]:
    """The DP facts of a release for the audit log: ε charged (0 when served from the release
    cache, which charges nothing) and whether it was cached. Never the noise or the values."""
    dp = notes.get("dp")
    if not dp:
        return {}
    cached = bool(dp.get("cached"))
    return {"dp_epsilon": 0.0 if cached else dp.get("epsilon"), "dp_cached": cached}

