"""Protocol names and message keys shared by the node server and the coordinator's transport."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pyarrow as pa

PROTOCOL_VERSION = 1

ACTION_CATALOG = "catalog"
ACTION_PING = "ping"
ACTION_MPC_PREPARE = "mpc_prepare"
ACTION_MPC_RUN = "mpc_run"
ACTION_MPC_ABORT = "mpc_abort"
ACTION_HISTORY = "history"  # the calling researcher's own releases at the node (JSON)
ACTION_PIPELINE = "pipeline"  # the ordered steps every fragment passes at the node (JSON)

COMBINE_MODES = ("plain", "mpc", "he")

TICKET_KIND_FRAGMENT = "fragment"

KEY_VERSION = "v"
KEY_KIND = "kind"
KEY_SQL = "sql"
KEY_QUERY_ID = "query_id"
KEY_COMBINE = "combine"
KEY_DP = "dp"  # {mechanism, epsilon, delta}: ask the nodes to noise their partials
KEY_USER_SQL = "user_sql"  # the researcher's SQL as written, for their release history at the node
MAX_USER_SQL_CHARS = 20_000  # what is sent and kept of it

AUTH_HEADER = "authorization"
BEARER = "Bearer "

# columns a node appends to every partial table
N_COLUMN = "_n"
SUPPRESSED_COLUMN = "_suppressed"
BLINDED_KEY_COLUMN = "_bk"  # plain: each released group's blinded key, matched by the coordinator against other nodes' withheld ones (rule 3)

# schema metadata on a node's partial table
META_NODE = b"genofed.node"
META_SUPPRESSED = b"genofed.suppressed"
META_MIN_COUNT = b"genofed.min_count"
META_RISK = b"genofed.risk"  # JSON: the node's re-identification risk score for this release
META_NOTES = b"genofed.notes"  # JSON {"dp": .., "risk": ..}: a node's privacy notes under he
META_WITHHELD = b"genofed.withheld"  # JSON {rule: groups}: what the node's disclosure rules withheld
META_WITHHELD_TOKENS = b"genofed.withheld_tokens"  # JSON [token]: blinded keys of withheld groups (plain)
META_DP = b"genofed.dp"  # JSON: the node's DP provenance (mechanism, epsilon, scale, accuracy)

ERROR_PREFIX = "GENOFED:"

# error codes that cross the wire
CODE_AUTH = "unauthenticated"
CODE_FORBIDDEN = "forbidden"
CODE_FRAGMENT = "fragment"
CODE_DISCLOSURE = "disclosure"
CODE_BAD_REQUEST = "bad_request"
CODE_INTERNAL = "internal"
CODE_POLICY = "policy"
CODE_RATE_LIMITED = "rate_limited"
CODE_UNSUPPORTED = "unsupported"  # the node's execution backend cannot run the fragment
CODE_LIMIT = "resource_limit"  # the fragment would exceed the node's [limits] (time, memory, groups, scan)
CODE_BUSY = "busy"  # every execution slot stayed taken for [limits] queue_seconds: retry later


def fragment_ticket(sql: str, query_id: str, combine: str = "plain", **extra: Any) -> bytes:
    body = {KEY_VERSION: PROTOCOL_VERSION, KEY_KIND: TICKET_KIND_FRAGMENT, KEY_SQL: sql, KEY_QUERY_ID: query_id, KEY_COMBINE: combine}
    body.update(extra)
    return json.dumps(body).encode()


def encode_error(code: str, reason: str, rule: str | None = None, party: str | None = None) -> str:
    """``party``: the federation member at fault when it is not the node answering (MPC)."""
    body: dict[str, Any] = {"code": code, "reason": reason}
    if rule:
        body["rule"] = rule
    if party:
        body["party"] = party
    return ERROR_PREFIX + json.dumps(body)


def decode_error(message: str) -> dict[str, Any] | None:
    i = message.find(ERROR_PREFIX)
    if i < 0:
        return None
    text = message[i + len(ERROR_PREFIX) :]
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:
        return None


# -- Arrow IPC helpers shared by the transport, the coordinator and the secure combine modes -----

def ipc_bytes(table: pa.Table) -> bytes:
    """A table as an Arrow IPC stream."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def read_ipc(b: bytes) -> pa.Table:
    """The table in an Arrow IPC stream (raises ``pa.ArrowInvalid`` if malformed)."""
    return pa.ipc.open_stream(b).read_all()


def ipc_size(table: pa.Table) -> int:
    """Bytes of a table as an Arrow IPC stream: what it costs on the wire."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return int(sink.size())


def write_ipc_file(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write an Arrow IPC file atomically (a temporary name, then a rename)."""
    tmp = f"{os.fspath(path)}.tmp"
    with pa.OSFile(tmp, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)
