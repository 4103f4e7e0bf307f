"""Protocol names and message keys shared by the node server and the coordinator's transport."""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1

ACTION_CATALOG = "catalog"
ACTION_PING = "ping"

TICKET_KIND_FRAGMENT = "fragment"

KEY_VERSION = "v"
KEY_KIND = "kind"
KEY_SQL = "sql"
KEY_QUERY_ID = "query_id"

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


def fragment_ticket(sql: str, query_id: str) -> bytes:
    return json.dumps({KEY_VERSION: PROTOCOL_VERSION, KEY_KIND: TICKET_KIND_FRAGMENT, KEY_SQL: sql, KEY_QUERY_ID: query_id}).encode()


def encode_error(code: str, reason: str, rule: str | None = None) -> str:
    body: dict[str, Any] = {"code": code, "reason": reason}
    if rule:
        body["rule"] = rule
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
