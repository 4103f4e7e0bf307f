"""Protocol names and message keys shared by the node server and the coordinator's transport."""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1

ACTION_CATALOG = "catalog"
ACTION_PING = "ping"
ACTION_MPC_PREPARE = "mpc_prepare"
ACTION_MPC_RUN = "mpc_run"
ACTION_MPC_ABORT = "mpc_abort"

COMBINE_MODES = ("plain", "mpc", "he")

TICKET_KIND_FRAGMENT = "fragment"

KEY_VERSION = "v"
KEY_KIND = "kind"
KEY_SQL = "sql"
KEY_QUERY_ID = "query_id"
KEY_COMBINE = "combine"

AUTH_HEADER = "authorization"
BEARER = "Bearer "

# columns a node appends to every partial table
N_COLUMN = "_n"
SUPPRESSED_COLUMN = "_suppressed"

# schema metadata on a node's partial table
META_NODE = b"genofed.node"
META_SUPPRESSED = b"genofed.suppressed"
META_MIN_COUNT = b"genofed.min_count"

ERROR_PREFIX = "GENOFED:"

# error codes that cross the wire
CODE_AUTH = "unauthenticated"
CODE_FORBIDDEN = "forbidden"
CODE_FRAGMENT = "fragment"
CODE_DISCLOSURE = "disclosure"
CODE_BAD_REQUEST = "bad_request"
CODE_INTERNAL = "internal"
CODE_POLICY = "policy"


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
