"""The key holder for ``combine='he'``: a small Arrow Flight service, run by a party trusted not
to collude with the coordinator (a designated biobank, or an independent operator).

It generates the BFV/CKKS key pair at start and never exports the secret keys. Per query it:

1. is opened by the coordinator (``he_open``: query id, the nodes, federation minimum count). The
   nodes must be every node client of its configuration (the federation it serves): a
   coordinator cannot open a session for a subset, or for one node;
2. receives each node's group keys and the node's own minimum count (``align`` exchange) and
   answers every node with the sorted union of keys, once all nodes have sent theirs;
3. receives every node's ciphertexts, relayed by the coordinator (``release`` exchange), each
   node's with that node's tag; checks every tag (a key derived from the node's token), adds the
   ciphertexts itself, decrypts the sums, applies the minimum count (the largest of the
   federation's and every node's), rounds CKKS values, and returns the released groups (a
   withheld group is a row of NULLs: its key does not leave).

What it learns: each node's set of group keys, and the federation-wide sums of every group
(including groups it then suppresses). It receives each node's ciphertexts and holds the secret
key: it is trusted to decrypt only the sums (see docs/secure-combine.md).

Configuration (``keyholder.toml``)::

    [keyholder]
    name = "keyholder"

    [[clients]]                 # one per node (role node) and per researcher (role coordinator)
    name = "biobank_A"
    role = "node"
    token_sha256 = "<sha256 hex>"

    [tls]                       # optional: serve grpc+tls:// (paths relative to this file)
    cert = "tls/keyholder.crt"
    key = "tls/keyholder.key"
    client_ca = "clients-ca.crt"  # optional: mutual TLS, callers need a certificate signed by it
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from genofed.engine import protocol as P
from genofed.engine.errors import CombineError, ConfigError, GenofedError, NodeError

from . import he as H
from . import layout as L

log = logging.getLogger("genofed.keyholder")

ROLES = ("node", "coordinator")


@dataclass
class KeyHolderConfig:
    name: str
    clients: dict[str, tuple[str, str]]  # token sha256 -> (name, role)
    path: Path | None = None
    tls: dict[str, str] = field(default_factory=dict)  # [tls] cert, key, client_ca (resolved paths)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyHolderConfig:
        from genofed.connectors.config import load_toml
        from genofed.connectors.tls import check_table

        p = Path(path)
        data = load_toml(p, "key holder config")
        clients = {}
        for i, c in enumerate(data.get("clients", [])):
            if not {"name", "role", "token_sha256"} <= set(c):
                raise ConfigError(f"{p}: [[clients]] entry {i + 1} needs name, role and token_sha256")
            if c["role"] not in ROLES:
                raise ConfigError(f"{p}: [[clients]] entry {i + 1}: role must be one of {ROLES}")
            clients[c["token_sha256"].lower()] = (c["name"], c["role"])
        if not clients:
            raise ConfigError(f"{p}: no [[clients]]; add the nodes (role node) and the researchers (role coordinator)")
        tls = check_table(data.get("tls"), str(p), "server", base=p.parent)
        return cls(data.get("keyholder", {}).get("name", "keyholder"), clients, p, tls)


@dataclass
class _Session:
    nodes: list[str]
    min_count: int
    created: float = field(default_factory=time.monotonic)
    keys: dict[str, pa.Table] = field(default_factory=dict)
    node_min: dict[str, int] = field(default_factory=dict)
    node_mac: dict[str, int] = field(default_factory=dict)  # each node's minimum minor-allele count (rule 5)
    layouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    union: pa.Table | None = None
    failed: str | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Auth(flight.ServerMiddlewareFactory):
    def __init__(self, clients: dict[str, tuple[str, str]]):
        self.clients = clients

    def start_call(self, info, headers):
        from genofed.connectors.config import match_bearer

        return _Who(*match_bearer(headers, self.clients, "the key holder"))


class _Who(flight.ServerMiddleware):
    def __init__(self, name: str, role: str):
        self.name = name
        self.role = role


def _err(code: str, reason: str) -> flight.FlightServerError:
    return flight.FlightServerError(P.encode_error(code, reason))


class KeyHolderServer(flight.FlightServerBase):
    """The key holder service. ``session_ttl``: seconds a query may stay open."""

    def __init__(self, config: KeyHolderConfig, location: str = "grpc://127.0.0.1:0", session_ttl: float = 600.0):
        from genofed.connectors.tls import ServerTLS, tls_location

        tls = ServerTLS.load(config.tls, None, f"{config.path or 'key holder config'} [tls]")
        if tls is not None:
            location = tls_location(location)
        super().__init__(location, middleware={"auth": _Auth(config.clients)}, **(tls.server_kwargs() if tls else {}))
        self.config = config
        self.keys = H.KeyPair()
        # the federation this key holder serves: its node clients, each with its tagging key
        self.members = {name: H.tag_key(sha) for sha, (name, role) in config.clients.items() if role == "node"}
        self.ttl = session_ttl
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _who(self, context) -> _Who:
        return context.get_middleware("auth")

    def _session(self, qid: str) -> _Session:
        with self._lock:
            s = self._sessions.get(qid)
        if s is None:
            raise _err(P.CODE_BAD_REQUEST, f"no open HE session for query {qid}")
        return s

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for q in [q for q, s in self._sessions.items() if now - s.created > self.ttl]:
                del self._sessions[q]

    # -- public keys and sessions --------------------------------------------------------------
    def do_get(self, context, ticket):
        if ticket.ticket != b"public_keys":
            raise _err(P.CODE_BAD_REQUEST, "unknown ticket; the key holder serves 'public_keys'")
        t = pa.table({"key_id": [self.keys.key_id], "bfv": [self.keys.public_bfv], "ckks": [self.keys.public_ckks]})
        return flight.RecordBatchStream(t)

    def do_action(self, context, action):
        who = self._who(context)
        if action.type != "he_open":
            raise _err(P.CODE_BAD_REQUEST, f"unknown action {action.type!r}")
        if who.role != "coordinator":
            raise _err(P.CODE_FORBIDDEN, "only a coordinator may open a query")
        try:
            body = json.loads(action.body.to_pybytes())
            qid, nodes, k = str(body["query_id"]), [str(n) for n in body["nodes"]], int(body["min_count"])
        except (ValueError, KeyError, TypeError) as e:
            raise _err(P.CODE_BAD_REQUEST, f"malformed he_open: {e}") from None
        if not nodes or len(nodes) > H.MAX_NODES or len(set(nodes)) != len(nodes):
            raise _err(P.CODE_BAD_REQUEST, f"he_open needs 1..{H.MAX_NODES} distinct nodes")
        if set(nodes) != set(self.members):
            odd = sorted(set(nodes) - set(self.members))
            raise _err(P.CODE_FORBIDDEN, (f"{odd[0][:40]!r} is not a node of the federation this key holder serves" if odd else
                                          f"a session must include every node of the federation this key holder serves "
                                          f"({len(self.members)}); this one names {len(nodes)}") + "; nothing was opened")
        self._expire()
        with self._lock:
            self._sessions[qid] = _Session(nodes, k)
        log.info("query %s opened by %s for %d nodes", qid, who.name, len(nodes))
        yield flight.Result(json.dumps({"key_id": self.keys.key_id}).encode())

    # -- align and release ---------------------------------------------------------------------
    def do_exchange(self, context, descriptor, reader, writer):
        who = self._who(context)
        try:
            cmd = json.loads(descriptor.command)
            op, qid = cmd["op"], str(cmd["query_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise _err(P.CODE_BAD_REQUEST, f"malformed exchange command: {e}") from None
        s = self._session(qid)
        try:
            table = reader.read_all()
        except pa.ArrowInvalid as e:
            raise _err(P.CODE_BAD_REQUEST, f"malformed table: {e}") from None
        if op == "align":
            out = self._align(s, who, cmd, table)
        elif op == "release":
            if who.role != "coordinator":
                raise _err(P.CODE_FORBIDDEN, "only the coordinator may ask for a release")
            out = self._release(qid, s, cmd, table, who.name)
        else:
            raise _err(P.CODE_BAD_REQUEST, f"unknown exchange op {op!r}")
        writer.begin(out.schema)
        writer.write_table(out)

    def _align(self, s: _Session, who: _Who, cmd: dict[str, Any], keys: pa.Table) -> pa.Table:
        if who.role != "node" or who.name not in s.nodes:
            raise _err(P.CODE_FORBIDDEN, f"{who.name!r} is not a node of this query")
        try:
            k = int(cmd["min_count"])
            lay, mac = L.split_min_mac(dict(cmd["layout"]))
            timeout = float(cmd.get("timeout", 60.0))
        except (KeyError, TypeError, ValueError, GenofedError) as e:
            raise _err(P.CODE_BAD_REQUEST, f"malformed align command: {e}") from None
        with s.cond:
            s.keys[who.name] = keys
            s.node_min[who.name] = k
            s.node_mac[who.name] = k if mac is None else mac
            s.layouts[who.name] = lay
            if len(s.keys) == len(s.nodes) and s.union is None and s.failed is None:
                first = s.layouts[s.nodes[0]]
                odd = [n for n in s.nodes if s.layouts[n] != first]
                if odd:
                    s.failed = f"node {odd[0]!r} produced partials of different types than node {s.nodes[0]!r}"
                else:
                    try:
                        layout = L.Layout.from_json(first)
                        s.union = L.union_keys([s.keys[n] for n in s.nodes], layout.keys) if layout.keys else pa.table({"_": pa.array([0])})
                    except GenofedError as e:
                        s.failed = str(e)
                s.cond.notify_all()
            deadline = time.monotonic() + timeout
            while s.union is None and s.failed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in s.nodes if n not in s.keys]
                    raise flight.FlightServerError(P.encode_error("timeout", f"the key holder waited {timeout:g} s for the key sets of {missing}", party=missing[0]))
                s.cond.wait(left)
            if s.failed:
                raise _err("mismatch", s.failed)
            return s.union

    def _release(self, qid: str, s: _Session, cmd: dict[str, Any], relay: pa.Table, who: str) -> pa.Table:
        import pyarrow.compute as pc

        with self._lock:
            self._sessions.pop(qid, None)  # one release per query
        if s.union is None or len(s.keys) != len(s.nodes):
            raise _err(P.CODE_BAD_REQUEST, "release before every node aligned its keys")
        layout = L.Layout.from_json(s.layouts[s.nodes[0]])
        union = s.union if layout.keys else pa.table({})
        g = s.union.num_rows
        k = max([s.min_count, *s.node_min.values()])
        mac = max(s.node_mac.values()) if s.node_mac else k
        tags = cmd.get("tags")
        if H.NODE_COLUMN not in relay.column_names or not isinstance(tags, dict):
            raise _err("malformed", "a release needs every node's own ciphertexts with their tags (a pre-added sum is refused: the "
                                    "key holder adds them itself); nothing was released")
        nodes = relay.column(H.NODE_COLUMN)
        sent = set(pc.unique(nodes).to_pylist())
        if sent != set(s.nodes):
            missing = sorted(set(s.nodes) - sent)
            raise _err("malformed", (f"the release lacks node {missing[0]!r}'s ciphertexts (every node of the session must contribute)"
                                     if missing else "the release holds ciphertexts of a node outside the session") + "; nothing was released")
        parts = {}
        try:
            for n in s.nodes:
                t = relay.filter(pc.equal(nodes, n)).drop_columns([H.NODE_COLUMN]).replace_schema_metadata(None)
                H.check_tag(t, qid, n, self.keys.key_id, self.members[n], tags.get(n))
                parts[n] = t
            sums = H.add_ciphertexts(parts, layout, self.keys, g)
            out = H.decrypt_release(sums, layout, union, g, len(s.nodes), self.keys, k, mac)
        except CombineError as e:
            log.warning("query %s: release refused (%s): %s", qid, who, e)
            raise _err("tampered" if "tag" in str(e) or "integrity" in str(e) else "malformed", str(e)) from None
        return out


class KeyHolderClient:
    """How nodes and coordinators talk to the key holder. ``tls``: a
    :class:`~genofed.connectors.tls.ClientTLS` for a ``grpc+tls://`` location."""

    def __init__(self, location: str, token: str, name: str = "key holder", tls: Any = None):
        from genofed.connectors.tls import flight_client

        self.location = location
        self.name = name
        self._tls = tls
        self._headers = [(P.AUTH_HEADER.encode(), (P.BEARER + token).encode())]
        self._client = flight_client(location, tls)
        self._keys: H.PublicKeys | None = None

    def _opts(self, timeout: float | None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self._headers, timeout=timeout)

    def _error(self, e: flight.FlightError) -> NodeError:
        body = P.decode_error(str(e)) or {}
        if isinstance(e, flight.FlightUnavailableError):
            from genofed.connectors.tls import tls_problem

            problem = tls_problem(e, self.location, self._tls)
            if problem is not None:
                return NodeError(self.name, "tls", f"{problem} [{self.location}]")
            return NodeError(self.name, "unavailable", f"cannot reach the key holder at {self.location}")
        if isinstance(e, flight.FlightTimedOutError):
            return NodeError(self.name, "timeout", "the key holder did not answer in time")
        return NodeError(body.get("party") or self.name, body.get("code", "error"), body.get("reason", type(e).__name__))

    def public_keys(self, timeout: float = 30.0, refresh: bool = False) -> H.PublicKeys:
        """The key holder's public keys (cached; ``refresh`` fetches them again)."""
        if self._keys is None or refresh:
            try:
                t = self._client.do_get(flight.Ticket(b"public_keys"), self._opts(timeout)).read_all()
            except flight.FlightError as e:
                raise self._error(e) from None
            row = t.to_pylist()[0]
            self._keys = H.PublicKeys.load(row["key_id"], row["bfv"], row["ckks"])
        return self._keys

    def open(self, query_id: str, nodes: list[str], min_count: int, timeout: float = 30.0) -> str:
        body = json.dumps({"query_id": query_id, "nodes": nodes, "min_count": min_count}).encode()
        try:
            res = list(self._client.do_action(flight.Action("he_open", body), self._opts(timeout)))
        except flight.FlightError as e:
            raise self._error(e) from None
        key_id = json.loads(res[0].body.to_pybytes())["key_id"]
        if self._keys is not None and self._keys.key_id != key_id:
            self._keys = None  # the key holder restarted with new keys
        return key_id

    def _exchange(self, cmd: dict[str, Any], table: pa.Table, timeout: float) -> pa.Table:
        desc = flight.FlightDescriptor.for_command(json.dumps(cmd).encode())
        try:
            writer, reader = self._client.do_exchange(desc, self._opts(timeout))
            with writer:
                writer.begin(table.schema)
                writer.write_table(table)
                writer.done_writing()
                return reader.read_all()
        except flight.FlightError as e:
            raise self._error(e) from None

    def align(self, query_id: str, min_count: int, layout: L.Layout, keys: pa.Table, timeout: float) -> pa.Table:
        cmd = {"op": "align", "query_id": query_id, "min_count": min_count, "layout": layout.to_json(), "timeout": timeout}
        return self._exchange(cmd, keys, timeout + 5.0)

    def release(self, query_id: str, relay: pa.Table, timeout: float, tags: dict[str, str] | None = None) -> pa.Table:
        """Ask for a release: ``relay`` holds every node's ciphertexts (column ``node``), ``tags``
        each node's tag."""
        return self._exchange({"op": "release", "query_id": query_id, "tags": tags or {}}, relay, timeout)

    def close(self) -> None:
        self._client.close()


def serve(config: KeyHolderConfig, host: str = "127.0.0.1", port: int = 0, ready: Any = None) -> None:
    """Run the key holder in the foreground until SIGTERM/SIGINT."""
    server = KeyHolderServer(config, f"grpc://{host}:{port}")  # grpc+tls:// with a [tls] table
    if ready is not None:
        ready(server.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"genofed key holder {config.name!r} (key id {server.keys.key_id}) on {'grpc+tls' if config.tls else 'grpc'}://{host}:{server.port}", file=sys.stderr, flush=True)
    server.serve()
