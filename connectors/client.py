"""The coordinator's transport to node servers (Arrow Flight)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from genofed.engine import protocol as P
from genofed.engine.errors import AuthError, BackendUnsupportedError, DisclosureError, NodeError

from .tls import ClientTLS, flight_client, tls_problem

T = TypeVar("T")


class FlightTransport:
    """Talks to one node. Implements the engine's ``Transport`` interface.

    Parameters
    ----------
    name
        The node's name in the federation (used in every error).
    location
        ``grpc://host:port`` (or ``grpc+tls://``).
    token
        The researcher's bearer token for this node.
    tls
        For a ``grpc+tls://`` location: the CA that signed the node's certificate and, for
        mutual TLS, the client certificate (:class:`~genofed.connectors.tls.ClientTLS`).
    resolve
        Where the node is now (a local federation's node restarted on another port): called when
        the node cannot be reached; a new location is used for one more try.
    """

    def __init__(self, name: str, location: str, token: str, connect_timeout: float = 5.0, tls: ClientTLS | None = None,
                 resolve: Callable[[], str] | None = None):
        self.name = name
        self.location = location
        self._resolve = resolve
        self.tls = tls
        self._headers = [(P.AUTH_HEADER.encode(), (P.BEARER + token).encode())]
        self._client = flight_client(location, tls)
        self._answered = False  # this node has answered a call: TLS and credentials work

    def _options(self, timeout: float | None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self._headers, timeout=timeout)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a call. When the node could not be connected to (nothing was sent), try once more
        on a fresh channel, at the node's current location when it moved (a local node restarted
        on another port): a channel that saw the node go down waits out gRPC's reconnect backoff
        otherwise. Other errors become the node's error."""
        try:
            return fn()
        except flight.FlightUnavailableError as e:
            if "failed to connect" not in str(e).lower() or not self._reconnect():
                raise self._error(e) from None
        except flight.FlightError as e:
            raise self._error(e) from None
        try:
            return fn()
        except flight.FlightError as e:
            raise self._error(e) from None

    def _reconnect(self) -> bool:
        """A fresh channel to where the node is now (``resolve``), or where it was."""
        where = self.location
        if self._resolve is not None:
            try:
                where = self._resolve()
            except Exception:  # noqa: BLE001 - no current location known: the one we had
                where = self.location
        try:
            client = flight_client(where, self.tls)
        except Exception:  # noqa: BLE001 - a location that cannot be dialled: report the original failure
            return False
        self._client.close()
        if where != self.location:
            self._answered = False
        self.location, self._client = where, client
        return True

    def catalog(self, timeout: float = 10.0) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            results = list(self._client.do_action(flight.Action(P.ACTION_CATALOG, b""), self._options(timeout)))
            self._answered = True
            return dict(json.loads(results[0].body.to_pybytes()))

        return self._call(call)

    def run_fragment(self, sql: str, query_id: str, timeout: float, dp: dict[str, Any] | None = None,
                     user_sql: str | None = None) -> pa.Table:
        """A plain-mode fragment: the node's partial table itself (noised by the node when ``dp``
        asks for it or its policy requires it). ``user_sql``: the researcher's query as written,
        for their release history at the node."""
        extra: dict[str, Any] = {P.KEY_DP: dp} if dp else {}
        ticket = P.fragment_ticket(sql, query_id, **extra, **_user_sql(user_sql))

        def call() -> pa.Table:
            out = self._client.do_get(flight.Ticket(ticket), self._options(timeout)).read_all()
            self._answered = True
            return out

        return self._call(call)

    def run_he(self, sql: str, query_id: str, key_id: str, timeout: float, dp: dict[str, Any] | None = None,
               user_sql: str | None = None) -> pa.Table:
        """An HE-mode fragment: the node's lanes as ciphertexts (schema metadata: layout, groups)."""
        ticket = P.fragment_ticket(sql, query_id, "he", key_id=key_id, timeout=timeout, **({P.KEY_DP: dp} if dp else {}),
                                   **_user_sql(user_sql))
        return self._call(lambda: self._client.do_get(flight.Ticket(ticket), self._options(timeout + 10.0)).read_all())

    def history(self, limit: int = 1000, since: float | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Your own releases (and refusals) at this node, oldest first: dicts with ``id``,
        ``query_id``, ``time`` (unix), ``user_sql``, ``fragment_sha256``, ``combine``, ``kind``,
        ``decision`` and ``rule``. The node answers for the researcher the token names, never
        another one.

        Examples
        --------
        >>> [r["decision"] for r in transport.history(limit=10)]  # doctest: +SKIP
        ['released', 'refused']
        """
        body: dict[str, Any] = {"limit": limit, **({"since": since} if since is not None else {})}
        return list(self.action(P.ACTION_HISTORY, body, timeout).get("releases", []))

    def action(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A JSON request/response action (the secure combine protocols)."""
        def call() -> Any:
            results = list(self._client.do_action(flight.Action(kind, json.dumps(body).encode()), self._options(timeout)))
            self._answered = True
            return json.loads(results[0].body.to_pybytes()) if results else {}

        return self._call(call)

    def _error(self, e: flight.FlightError) -> NodeError:
        body = P.decode_error(str(e))
        if isinstance(e, flight.FlightUnauthenticatedError) or (body and body.get("code") == P.CODE_AUTH):
            return AuthError(self.name, P.CODE_AUTH, body["reason"] if body else "authentication failed")
        if body is not None:
            if body.get("code") == P.CODE_DISCLOSURE:
                err = DisclosureError(f"node {self.name!r} refused: {body.get('reason')}", rule=body.get("rule", "disclosure"))
                return err  # type: ignore[return-value]
            if body.get("code") == P.CODE_UNSUPPORTED:
                return BackendUnsupportedError(self.name, P.CODE_UNSUPPORTED, body.get("reason", ""))
            return NodeError(body.get("party") or self.name, body.get("code", "error"), body.get("reason", ""))
        if isinstance(e, flight.FlightTimedOutError):
            return NodeError(self.name, "timeout", "did not answer within the timeout")
        if isinstance(e, flight.FlightUnavailableError):
            if self._answered and "socket closed" in str(e).lower():
                # TLS and credentials worked before: the node went away mid-call, not a handshake refusal
                return NodeError(self.name, "unavailable", f"the connection to {self.location} closed mid-call (the node stopped or crashed)")
            problem = tls_problem(e, self.location, self.tls)
            if problem is not None:  # a handshake failure: say which and how to fix it, not gRPC's text
                return NodeError(self.name, "tls", f"{problem} [{self.location}]")
            return NodeError(self.name, "unavailable", f"cannot reach {self.location} (is the node running?)")
        return NodeError(self.name, "transport", type(e).__name__)

    def close(self) -> None:
        self._client.close()


def _user_sql(text: str | None) -> dict[str, str]:
    """The ticket field carrying the researcher's SQL as written (clipped as the node keeps it)."""
    return {P.KEY_USER_SQL: text[: P.MAX_USER_SQL_CHARS]} if isinstance(text, str) else {}
