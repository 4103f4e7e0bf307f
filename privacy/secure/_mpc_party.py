"""One MPC party for one query: ``python -m genofed.privacy.secure._mpc_party``.

This is the only module that imports MPyC. MPyC configures a process-wide runtime from
``sys.argv`` when it is imported, so every party runs in a process of its own, started per query
by :mod:`genofed.privacy.secure.mpc` with a clean argument list. Nothing of MPyC's set-up leaks
into the node server or the researcher's process.

Conversation with the parent (the node server), one JSON object per line:

1. the party binds a free port and prints ``{"event": "port", "port": P}``;
2. the parent writes the session config (all parties' addresses and names, this party's index,
   its minimum count, input/output files, the links' authentication key, TLS settings with every
   party's pinned certificate fingerprint);
3. the party runs the protocol and prints ``{"event": "done"}`` or
   ``{"event": "error", "code": ..., "party": j, "reason": ...}``, naming the party at fault.

The parties are the federation's nodes only (the coordinator holds no share). Links are mutual
TLS; each peer's certificate must match the fingerprint its node pins for that party, and every
message carries an HMAC-SHA256 tag over (sender, receiver, position, payload) under a key only
nodes holding the federation's secret can derive for this session.

The protocol (Shamir secret sharing over prime fields, threshold t = (m-1)//2, passive
adversary, honest majority of the m >= 3 nodes):

1. every party announces the plan fingerprint, its lane layout and its minimum count; the
   threshold is the largest minimum count announced;
2. parties send their groups' *tokens* (keyed hashes of the group keys) to the aligner (party 0),
   which sends back the sorted union of tokens to every party: no party sees another's keys;
3. every party secret-shares its lanes over the union (zeros for groups it does not hold);
4. the shares are summed; the count test ``n == 0 or n >= threshold`` is evaluated on shares as
   a public zero test of ``(n-1)(n-2)...(n-threshold+1)`` multiplied by a secret random mask
   (MPyC's ``np_is_zero_public``), so only the pass/fail bit of each group is opened;
5. for groups that pass, the NULL/NaN/infinity flags are opened as zero tests and the value sums
   are opened to the first party, to which every party sends the keys of the passing groups it
   holds; the first party writes the released groups (withheld groups are rows of NULLs).

Reals are fixed point: ``round(x * 2**FRAC_BITS)`` per node, so a released real sum is within
``n_nodes * 2**-(FRAC_BITS+1)`` of the exact sum of the nodes' doubles.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

from genofed.privacy.secure import ring as R

FRAC_BITS = 32
BIG_FIELD_BITS = 192  # ints to 2**127 and reals to ~2**150 sum exactly
SMALL_FIELD_BITS = 64  # counts and flags
_TAG = 16

_out = None  # the parent's pipe (stdout is redirected to stderr so libraries cannot corrupt it)
_names: list[str] = []
_sent = [0]  # bytes this party sent in the current query (read before shutdown closes links)
_finished = threading.Event()


def _emit(obj: dict[str, Any]) -> None:
    assert _out is not None
    _out.write(json.dumps(obj) + "\n")
    _out.flush()


def _fail(code: str, party: int | None, reason: str, exit_code: int = 3) -> None:
    if _finished.is_set():
        return
    _finished.set()
    _emit({"event": "error", "code": code, "party": party, "reason": reason})
    os._exit(exit_code)


def _who(pid: int | None) -> str:
    if pid is None:
        return "?"
    return _names[pid] if 0 <= pid < len(_names) else f"party {pid}"


def _listen(host: str) -> socket.socket:
    """A listening socket on a free port, kept open and handed to MPyC (binding, closing and
    re-binding by number would race with other processes' ephemeral ports)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(64)
    return s


class _Liveness:
    """When each peer was last heard from; blames the quietest peer on a stall."""

    def __init__(self, m: int, pid: int):
        self.pid = pid
        self.last: dict[int, float | None] = {j: None for j in range(m) if j != pid}

    def heard(self, j: int | None) -> None:
        if j is not None:
            self.last[j] = time.monotonic()

    def stalest(self) -> int:
        never = [j for j, t in self.last.items() if t is None]
        if never:
            return never[0]
        return min(self.last, key=lambda j: self.last[j])  # type: ignore[arg-type, return-value]


def _check_peer(transport: Any, peer: int, fingerprints: list[str] | None) -> None:
    """The peer at index ``peer`` must present the certificate its node pins (TLS links)."""
    if fingerprints is None:
        return
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if der is None:
        _fail("impostor", peer, f"the link to {_who(peer)} is not mutually authenticated TLS; refused")
        return
    if hashlib.sha256(der).hexdigest() != fingerprints[peer]:
        _fail("impostor", peer, f"the party at {_who(peer)}'s index presented a certificate that is not the one this node pins "
                                f"for {_who(peer)} (a stranger in its place); nothing was opened")


def _install_message_checks(asyncoro: Any, secret: bytes, live: _Liveness, fault: str | None,
                            fingerprints: list[str] | None = None) -> None:
    """Authenticate every MPyC message (HMAC-SHA256, per-session key), check each peer's
    certificate against its pinned fingerprint, and watch peers.

    A message that fails its check ends the query naming the sender; a peer that disconnects
    before the protocol finished ends it naming that peer.
    """
    ME = asyncoro.MessageExchanger
    corrupt = [fault == "corrupt"]
    # MPyC's own connection_made, kept once: a party process serves query after query, and each
    # query's check must replace the previous one's (its peers and fingerprints), never wrap it
    if not hasattr(ME, "_genofed_connection_made"):
        ME._genofed_connection_made = ME.connection_made
    original_made = ME._genofed_connection_made

    def connection_made(self, transport):
        if self.peer_pid is not None:  # this party dialled the peer: check who answered
            _check_peer(transport, self.peer_pid, fingerprints)
        original_made(self, transport)

    def tag(sender: int, receiver: int, pc: int, payload: bytes) -> bytes:
        return hmac.new(secret, struct.pack("<hhq", sender, receiver, pc) + payload, hashlib.sha256).digest()[:_TAG]

    def send(self, pc, payload):
        rt = self.runtime
        payload = bytes(payload)
        body = payload + tag(rt.pid, self.peer_pid, pc, payload)
        if corrupt[0] and len(payload) > 0:  # fault injection for tests: tamper in transit
            body = bytes([body[0] ^ 0x5A]) + body[1:]
        self.transport.write(struct.pack(f"<qI{len(body)}s", pc, len(body), body))
        self.nbytes_sent += 12 + len(body)

    def data_received(self, data):
        self.bytes.extend(data)
        data = self.bytes
        rt = self.runtime
        if self.peer_pid is None:  # handshake: the peer (client) sends its pid and PRSS keys
            if len(data) < 2:
                return
            peer_pid = int.from_bytes(data[:2], "little")
            if not 0 <= peer_pid < len(rt.parties):
                _fail("malformed", None, "a connection announced an unknown party index")
            if not rt.options.no_prss:
                len_packet = rt._prss_keys_from_peer(peer_pid)
                if len(data) < len_packet + 2:
                    return
            _check_peer(self.transport, peer_pid, fingerprints)  # a dialling peer: is it who it claims?
            self.peer_pid = peer_pid
            del data[:2]
            if not rt.options.no_prss:
                rt._prss_keys_from_peer(peer_pid, data)
                del data[:len_packet]
            rt.set_protocol(self.peer_pid, self)
        live.heard(self.peer_pid)
        while len(data) >= 12:
            pc, size = struct.unpack_from("<qI", data)
            if len(data) < size + 12:
                break
            body = bytes(data[12 : 12 + size])
            del data[: size + 12]
            payload, got = body[:-_TAG], body[-_TAG:]
            if size < _TAG or not hmac.compare_digest(got, tag(self.peer_pid, rt.pid, pc, payload)):
                _fail("tampered", self.peer_pid, f"a share message from {_who(self.peer_pid)} failed its integrity check (tampered or corrupted in transit)")
            if pc in self.buffers:
                self.buffers.pop(pc).set_result(payload)
            else:
                self.buffers[pc] = payload
        self.bytes = data

    def connection_lost(self, exc):
        if not _finished.is_set():
            _fail("disconnected", self.peer_pid, f"{_who(self.peer_pid)} disconnected mid-protocol")
        self.runtime.unset_protocol(self.peer_pid)

    ME.connection_made = connection_made
    ME.send = send
    ME.data_received = data_received
    ME.connection_lost = connection_lost


def _tls_contexts(tls: dict[str, Any] | None) -> tuple[Any, Any]:
    """(server, client) SSL contexts for mutual TLS under the federation CA; (None, None) without
    TLS. Host names are not checked: each peer's certificate is pinned by fingerprint instead."""
    if not tls:
        return None, None
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls["cert"], tls["key"])
        ctx.load_verify_locations(cafile=tls["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return server, client


def _serve_on(mpc: Any, sock: socket.socket, tls: dict[str, Any] | None = None) -> None:
    """Make MPyC's listener use our already-bound socket instead of binding its port again, and
    run every link over mutual TLS when ``tls`` is given."""
    loop = mpc._loop
    original = type(loop).create_server
    original_connect = type(loop).create_connection
    port = sock.getsockname()[1]
    server_ctx, client_ctx = _tls_contexts(tls)

    async def create_server(protocol_factory, host=None, port_=None, **kw):
        if server_ctx is not None:
            kw["ssl"] = server_ctx
        if kw.get("port", port_) == port:
            kw.pop("port", None)
            return await original(loop, protocol_factory, sock=sock, **kw)
        return await original(loop, protocol_factory, host, port_, **kw)

    async def create_connection(protocol_factory, host=None, port_=None, **kw):
        if client_ctx is not None:
            kw["ssl"] = client_ctx
            kw["server_hostname"] = ""
        return await original_connect(loop, protocol_factory, host, port_, **kw)

    loop.create_server = create_server
    loop.create_connection = create_connection


def _read_ipc(b: bytes, who: int):
    import pyarrow as pa

    from genofed.engine.protocol import read_ipc

    try:
        return read_ipc(b)
    except (pa.ArrowInvalid, TypeError) as e:
        _fail("malformed", who, f"{_who(who)} sent a malformed key table: {e}")
        raise


def _preload() -> None:
    """Import everything but ``mpyc.runtime`` (which reads sys.argv) while the party is idle."""
    import mpyc.asyncoro  # noqa: F401
    import mpyc.finfields  # noqa: F401
    import mpyc.mpctools  # noqa: F401
    import mpyc.random  # noqa: F401
    import mpyc.sectypes  # noqa: F401
    import mpyc.thresha  # noqa: F401
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401

    import genofed.privacy.secure.layout  # noqa: F401
    from genofed.engine.protocol import ipc_bytes, read_ipc

    read_ipc(ipc_bytes(pyarrow.table({"warm": [0]})))  # first Arrow conversions import pandas


def main() -> None:
    """Serve queries one after another until the parent closes stdin. Each query gets a fresh
    MPyC runtime (``mpyc.runtime.setup()`` with that query's arguments); a party whose query
    failed exits, so no state survives a failure."""
    global _out
    _out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    _preload()
    while True:
        first_line = sys.stdin.readline()
        if not first_line:
            os._exit(0)  # the parent is done with this party
        first = json.loads(first_line)
        sock = _listen(str(first.get("bind", "127.0.0.1")))
        _emit({"event": "port", "port": sock.getsockname()[1]})
        line = sys.stdin.readline()
        if not line:
            os._exit(0)  # the parent gave up before the query started
        try:
            _one_query(json.loads(line), sock)
        finally:
            sock.close()


def _one_query(cfg: dict[str, Any], sock: socket.socket | None = None) -> None:
    global _names, _finished
    _finished = threading.Event()
    finished = _finished
    pid = int(cfg["pid"])
    _names = list(cfg["names"])
    parties = list(cfg["parties"])
    m = len(parties)
    timeout = float(cfg.get("timeout", 60.0))
    fault = None
    spec = _fault_spec()
    if spec and ":" in spec:
        who, what = spec.split(":", 1)
        if who == _names[pid]:
            fault = what

    live = _Liveness(m, pid)
    # the first party diagnoses stalls first; the others wait a little longer, so a stalled
    # party's own watchdog does not get to blame someone else first
    patience = timeout if pid == 0 else timeout + 3.0

    def watchdog() -> None:
        if not finished.wait(patience):
            j = live.stalest()
            if live.last.get(j) is None:
                _fail("timeout", j, f"{_who(j)} never connected within {timeout:g} s over mutually authenticated TLS with the "
                                    "pinned certificate (down, a plaintext link, or a certificate the federation's CA did not sign)")
            _fail("timeout", j, f"{_who(j)} stalled: no progress within {timeout:g} s")

    threading.Thread(target=watchdog, daemon=True).start()

    sys.argv = [sys.argv[0], "--no-log", "-I", str(pid)] + [a for p in parties for a in ("-P", p)]
    from mpyc import asyncoro

    fresh_import = "mpyc.runtime" not in sys.modules
    import mpyc.runtime  # the first import sets a runtime up from sys.argv

    mpc = mpyc.runtime.mpc if fresh_import else mpyc.runtime.setup()  # a fresh runtime per query

    tls = cfg.get("tls")
    _install_message_checks(asyncoro, bytes.fromhex(cfg["secret"]), live, fault, tls["fingerprints"] if tls else None)
    if sock is not None:
        _serve_on(mpc, sock, tls)
    try:
        mpc.run(_protocol(mpc, cfg, pid, m, fault))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001  (any failure must reach the parent as an event)
        # a node party's exception can quote its node's partials: the message and traceback go to
        # the party's stderr (the node's log, the steward's); the verdict, which crosses the wire,
        # names the exception's class only
        import traceback

        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        _fail("error", pid, f"{_who(pid)} failed: {type(e).__name__} (the message is in that node's log)")
    finished.set()
    _emit({"event": "done", "bytes_sent": _sent[0]})


def _fault_spec() -> str:
    """Fault injection for tests: ``GENOFED_MPC_FAULT_FILE`` names a file holding
    ``<party name>:<die|stall|corrupt>`` (read per query, so a test can arm one query)."""
    path = os.environ.get("GENOFED_MPC_FAULT_FILE")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


_T0 = time.monotonic()


def _trace(what: str) -> None:
    """Phase timings for profiling: ``GENOFED_MPC_TRACE=<file>`` appends one line per phase."""
    path = os.environ.get("GENOFED_MPC_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {what} {time.monotonic():.3f}\n")


async def _protocol(mpc: Any, cfg: dict[str, Any], pid: int, m: int, fault: str | None) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from genofed.engine.protocol import ipc_bytes, write_ipc_file
    from genofed.privacy.secure import layout as L

    TOK = "_tok"
    _trace("begin")
    await mpc.start()
    _trace("started")
    parties = list(range(m))
    table = pa.ipc.open_file(cfg["input"]).read_all()
    my_layout, my_mac = L.split_min_mac(L.layout_for(table.schema.remove(table.schema.get_field_index(TOK)) if TOK in table.column_names
                                                     else table.schema, cfg["keys"], cfg["partials"], cfg.get("counts"),
                                                     cfg.get("finite")).to_json())

    # 1. public agreement: same plan, same layout; the strictest minimum count (and minimum
    # minor-allele count, rule 5) wins
    infos = await mpc.transfer({"plan": cfg["plan"], "layout": my_layout, "k": int(cfg["min_count"]), "mac": my_mac})
    for j, info in enumerate(infos):
        if not isinstance(info, dict) or info.get("plan") != cfg["plan"]:
            _fail("mismatch", j, f"{_who(j)} is running a different query plan")
    layouts = [infos[j]["layout"] for j in parties]
    for j, lay in zip(parties, layouts):
        if lay != layouts[0]:
            _fail("mismatch", j, f"{_who(j)} produced partials of different types than {_who(0)}")
    layout = L.Layout.from_json(layouts[0])
    threshold = max(int(info["k"]) for info in infos)
    # a node that announced no minor-allele minimum defaults it to its minimum count
    mac_threshold = max(int(infos[j]["mac"] if infos[j].get("mac") is not None else infos[j]["k"]) for j in parties)
    keys = layout.keys
    _trace("agreed")

    # 2. alignment on tokens through the aligner (party 0): keys never leave a party here
    if keys:
        mine = ipc_bytes(pa.table({TOK: table.column(TOK)}))
        got = await mpc.transfer(mine, senders=parties, receivers=[0])
        ub = None
        if pid == 0:
            toks = [_read_ipc(b, j) for j, b in zip(parties, got)]
            for j, t in zip(parties, toks):
                if t.column_names != [TOK] or not pa.types.is_string(t.schema.field(TOK).type) or t.column(TOK).null_count:
                    _fail("malformed", j, f"{_who(j)} sent malformed group tokens")
            union_tok = pc.unique(pa.chunked_array([t.column(TOK).combine_chunks() for t in toks], pa.string()).combine_chunks()).sort()
            ub = ipc_bytes(pa.table({TOK: union_tok}))
        ub = await mpc.transfer(ub, senders=0)
        union = _read_ipc(ub, 0)
        g = union.num_rows
        where = pc.index_in(union.column(TOK), value_set=table.column(TOK))  # this party's row of each group, or NULL
        aligned = table.drop_columns([TOK]).take(where)
    else:
        union = pa.table({})
        g = 1
        aligned = L.align(table, union, keys)

    big_lanes, small_lanes = layout.value_lanes(), layout.flag_lanes()
    _trace("aligned")
    if g == 0:
        if pid == 0:
            write_ipc_file(cfg["output"], L.assemble(_empty_keys(table, keys), layout, np.zeros(0, bool),
                                                     {la: [] for la in big_lanes}, {la: np.zeros(0, bool) for la in small_lanes}))
        _finished.set()
        await mpc.shutdown()
        return

    lanes = L.lane_values(aligned, layout)
    # values: additive shares over Z_2^(32k) under pairwise AES-CTR masks (the seeds, fresh per
    # query, go over the parties' TLS links); nothing but the seeds is sent until the opening
    widths = [_digits(layout, lane) for lane in big_lanes]
    digits = np.concatenate([_lane_digits(layout, lane, lanes[lane], k) for lane, k in zip(big_lanes, widths)], axis=1) \
        if big_lanes else np.zeros((g, 0), np.int64)
    seeds_out = {j: os.urandom(32) for j in parties if j != pid}
    seeds_in = await _scatter(mpc, parties, pid, seeds_out, lambda j, b: b if isinstance(b, bytes) and len(b) == 32 else None)
    share = R.mask(digits, [seeds_out[j] for j in sorted(seeds_out)], [seeds_in[j] for j in sorted(seeds_in)])
    if fault == "die":
        os._exit(9)
    if fault == "stall":
        time.sleep(3600)
    _trace("inputs")

    # 4. the minimum-count test on Shamir shares of the federation-wide counts (F_p, numpy)
    count_idx = [i for i, lane in enumerate(small_lanes) if lane.role == L.COUNT]  # influence counts, then _n
    flag_idx = [i for i, lane in enumerate(small_lanes) if lane.role != L.COUNT]
    counts = np.stack([np.asarray(lanes[lane], np.int64) for lane in small_lanes], axis=1) if small_lanes else np.zeros((g, 0), np.int64)
    if counts.size and (counts.min() < 0 or counts.max() >= 1 << 30):
        raise ValueError("a count partial is out of range for the minimum-count test (0 to 2^30)")
    t = (m - 1) // 2
    n_rand = 1 + len(flag_idx)  # one random factor for the group test, one per flag lane
    own = np.concatenate([counts, R.random_field((g, n_rand))], axis=1)
    width = own.shape[1]
    split = R.shamir_split(own, t, m)
    got = await _scatter(mpc, parties, pid, {j: split[j].astype(np.int32).tobytes() for j in parties if j != pid},
                         lambda j, b: _field(b, (g, width)))
    tot = split[pid].copy()
    for j in got:
        tot = (tot + got[j]) % R.P
    lam = R.lagrange_at_zero(list(range(1, m + 1)))

    async def multiply(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Shares of x*y (degree t) from shares of x and y: local product, reshare, recombine."""
        z = x * y % R.P
        parts = R.shamir_split(z, t, m)
        recv = await _scatter(mpc, parties, pid, {j: parts[j].astype(np.int32).tobytes() for j in parties if j != pid},
                              lambda j, b: _field(b, z.shape))
        return R.combine([parts[pid] if j == pid else recv[j] for j in parties], lam)

    n_cols = len(small_lanes)
    r_group = tot[:, n_cols]
    # per count lane of minimum K (the minimum count; the minimum minor-allele count for rule 5's
    # allele-count lanes), (n-1)(n-2)...(n-K+1): pair the factors as (n-j)(n-K+j) = a + j(K-j)
    # with a = n^2 - Kn, so one multiplication gives every pair. Every lane but _n (the last) also
    # has the factor n: 0 fails too. The group is released when no lane fails: the product of
    # every lane's polynomial, times a random factor, opens to non-zero (F_p has no zero divisors).
    tested = [(ci, L.lane_threshold(small_lanes[ci], threshold, mac_threshold)) for ci in count_idx]
    tested = [(ci, k) for ci, k in tested if k > 1]
    sq_cols = [ci for ci, k in tested if k >= 4]
    # round 1: every square, and every flag lane times its own random factor, at once
    flag_cols = [tot[:, fi] for fi in flag_idx]
    first_x = [tot[:, ci] for ci in sq_cols] + flag_cols
    first_y = [tot[:, ci] for ci in sq_cols] + [tot[:, n_cols + 1 + i] for i in range(len(flag_idx))]
    prods = await multiply(np.stack(first_x, 1), np.stack(first_y, 1)) if first_x else np.zeros((g, 0), np.int64)
    squares = {ci: prods[:, i] for i, ci in enumerate(sq_cols)}
    masked_flags = prods[:, len(sq_cols):]
    terms = [r_group]
    for ci, k in tested:
        n = tot[:, ci]
        if ci != count_idx[-1]:
            terms.append(n)
        if k >= 4:
            a = (squares[ci] - k * n) % R.P
            terms += [(a + j * (k - j)) % R.P for j in range(1, (k + 1) // 2)]
            if k % 2 == 0:
                terms.append((n - k // 2) % R.P)
        else:
            terms += [(n - j) % R.P for j in range(1, k)]
    while len(terms) > 1:  # a product tree: one resharing round per level, every pair at once
        half = len(terms) // 2
        prod = await multiply(np.stack(terms[:half], 1), np.stack(terms[half:2 * half], 1))
        terms = [prod[:, i] for i in range(half)] + terms[2 * half:]
    _trace("multiplied")
    # open the masked product to every party: only zero / non-zero shows
    async def open_all(x: np.ndarray) -> np.ndarray:
        opened = await mpc.transfer(x.astype(np.int32).tobytes())
        sh = [_field(b, x.shape) for b in opened]
        for j, v in enumerate(sh):
            if v is None:
                _fail("malformed", j, f"{_who(j)} sent a malformed share")
        return R.combine(sh, lam)

    released = (await open_all(terms[0][:, None]))[:, 0] != 0
    _trace("tested")
    idx = np.flatnonzero(released)

    # 5. flags of released groups (masked, so only zero / non-zero shows), value sums of released
    # groups to the first party, and the released groups' keys (each party sends those it holds)
    # to the first party
    zf = await open_all(masked_flags[idx]) if flag_idx and len(idx) else np.zeros((len(idx), len(flag_idx)), np.int64)
    flags: dict[Any, np.ndarray] = {small_lanes[fi]: zf[:, i] != 0 for i, fi in enumerate(flag_idx)}
    sums: dict[Any, Any] = {}
    got_sums = await mpc.transfer(share[idx].astype(np.uint32).tobytes(), senders=parties, receivers=[0])
    if pid == 0:
        parts_v = []
        for j, b in enumerate(got_sums):
            v = np.frombuffer(b, dtype=np.uint32) if isinstance(b, bytes) and len(b) == 4 * len(idx) * digits.shape[1] else None
            if v is None:
                _fail("malformed", j, f"{_who(j)} sent malformed value shares")
                return
            parts_v.append(v.astype(np.int64).reshape(len(idx), digits.shape[1]))
        total = R.open_sum(parts_v)
        col = 0
        for lane, k in zip(big_lanes, widths):
            sums[lane] = _decode(layout, lane, total[:, col:col + k])
            col += k
    key_rows = None
    if keys:
        rel_tok = union.column(TOK).take(pa.array(idx, pa.int64()))
        have = pc.is_in(table.column(TOK), value_set=rel_tok)
        key_rows = await mpc.transfer(ipc_bytes(table.filter(have).select([TOK, *keys]).replace_schema_metadata(None)),
                                      senders=parties, receivers=[0])
    _trace("opened")
    if pid == 0:
        key_table = _released_keys(union, idx, key_rows or [], keys, table) if keys else union
        out = L.assemble(key_table, layout, released, sums, flags)
        write_ipc_file(cfg["output"], _released_first(out, keys))
    _sent[0] = sum(q.protocol.nbytes_sent for q in mpc.parties if q.pid != pid and q.protocol is not None)
    _finished.set()
    await mpc.shutdown()
    _trace("shutdown")


def _empty_keys(table: Any, keys: list[str]) -> Any:
    return table.select(keys).slice(0, 0).replace_schema_metadata(None) if keys else table.slice(0, 0).select([])


def _released_keys(union: Any, idx: Any, key_rows: list[bytes], keys: list[str], table: Any) -> Any:
    """The key columns aligned to the token union: each released group's key (sent by the parties
    holding it, which must agree), NULL for every withheld group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    TOK = "_tok"
    parts = [_read_ipc(b, j) for j, b in enumerate(key_rows)]
    for j, t in enumerate(parts):
        if t.column_names != [TOK, *keys]:
            _fail("malformed", j, f"{_who(j)} sent released keys with the wrong columns")
    try:
        allk = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        _fail("mismatch", None, f"the parties' released keys do not agree on types: {e}")
        raise
    uniq = allk.group_by(TOK).aggregate([(k, "count_distinct", pc.CountOptions(mode="all")) for k in keys])
    if any(pc.max(uniq.column(f"{k}_count_distinct")).as_py() not in (None, 1) for k in keys):
        _fail("mismatch", None, "two parties sent different keys for one group token")
    rows = pc.index_in(union.column(TOK), value_set=allk.column(TOK))
    mask = np.zeros(union.num_rows, bool)
    mask[idx] = True
    if pc.sum(pc.is_null(pc.filter(rows, pa.array(mask)))).as_py():
        _fail("malformed", None, "no party sent the key of a released group")
    take = pc.if_else(pa.array(mask), rows, pa.nulls(union.num_rows, rows.type))
    schema = table.select(keys).schema
    return pa.table({k: allk.column(k).take(take).cast(schema.field(k).type) for k in keys})


def _released_first(out: Any, keys: list[str]) -> Any:
    """Released groups sorted by key (NULL last), then the withheld ones (rows of NULLs)."""
    import pyarrow.compute as pc

    from genofed.engine.protocol import SUPPRESSED_COLUMN

    sup = pc.fill_null(out.column(SUPPRESSED_COLUMN), False)
    rel = out.filter(pc.invert(sup))
    if keys and rel.num_rows:
        rel = rel.take(pc.sort_indices(rel, sort_keys=[(k, "ascending") for k in keys], null_placement="at_end"))
    import pyarrow as pa

    return pa.concat_tables([rel, out.filter(sup)])


FRAC_BITS = 32  # reals are fixed point: round(x * 2^32) per node
COUNT_BITS = 48  # a count partial at one node


def _digits(layout: Any, lane: Any) -> int:
    """32-bit digits of a value lane's additive shares: counts 2, int64 sums 3, 128-bit decimals 5,
    reals (fixed point) 4."""
    from genofed.privacy.secure import layout as L

    p = next(x for x in layout.partials if x.name == lane.column)
    if lane.kind == L.REAL:
        return 4
    return 2 if p.count else 5 if p.decimal else 3


def _lane_digits(layout: Any, lane: Any, v: Any, k: int) -> Any:
    import numpy as np

    from genofed.privacy.secure import layout as L

    p = next(x for x in layout.partials if x.name == lane.column)
    if lane.kind == L.REAL:
        x = np.asarray(v, np.float64)
        if x.size and np.abs(x).max() >= 2.0**88:
            raise ValueError("a real partial exceeds the fixed-point range (|x| < 2^88)")
        return R.fixed_digits(x, FRAC_BITS, k)
    if p.decimal or (isinstance(v, np.ndarray) and v.dtype == object):
        return R.big_digits([int(x) for x in v], k)
    a = np.asarray(v, np.int64)
    if p.count and a.size and (a.min() < 0 or a.max() >= 1 << COUNT_BITS):
        raise ValueError(f"count partial {lane.column} is out of range")
    return R.int_digits(a, k)


def _decode(layout: Any, lane: Any, d: Any) -> Any:
    from genofed.privacy.secure import layout as L

    if lane.kind == L.REAL:
        return R.to_fixed(d, FRAC_BITS)
    v = R.to_int64(d)
    return v if v is not None else R.to_ints(d)


def _field(b: Any, shape: tuple[int, ...]) -> Any:
    """A peer's field elements (int32 on the wire) as int64, or None when malformed."""
    import numpy as np

    n = int(np.prod(shape))
    if not isinstance(b, bytes) or len(b) != 4 * n:
        return None
    a = np.frombuffer(b, dtype=np.int32).astype(np.int64).reshape(shape)
    if a.size and (a.min() < 0 or a.max() >= R.P):
        return None
    return a


async def _scatter(mpc: Any, parties: list[int], pid: int, out: dict[int, Any], check: Any) -> dict[int, Any]:
    """Send ``out[j]`` to each other party j; returns what each other party sent this one, each
    passed through ``check`` (None: malformed, the sender is named). One transfer per receiver,
    all in flight at once (MPyC schedules each as its own coroutine): one network round."""
    futures = []
    for i in parties:
        others = [j for j in parties if j != i]
        futures.append((i, others, mpc.transfer(out.get(i) if pid != i else None, senders=others, receivers=[i])))
    got: dict[int, Any] = {}
    for i, others, fut in futures:
        r = await fut
        if pid == i:
            for j, b in zip(others, r):
                v = check(j, b)
                if v is None:
                    _fail("malformed", j, f"{_who(j)} sent a malformed message")
                got[j] = v
    return got


if __name__ == "__main__":
    main()
