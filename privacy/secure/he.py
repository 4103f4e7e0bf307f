"""HE combine (TenSEAL): nodes encrypt, the coordinator adds, the key holder decrypts sums only.

This is the only module that imports TenSEAL (lazily, on first use).

Parameters (128-bit security by the HE standard's table: N = 8192 allows at most 218 bits of
coefficient modulus; both schemes use 3 x 60 = 180 bits):

- **BFV** for every integer lane (exact): N = 8192, 8192 slots, plain modulus
  ``BFV_T`` (a 58-bit prime, 1 mod 2N, so slots batch). Integers are written as limbs of 48
  bits after an offset (``v + 2**(w-1)`` for a w-bit type), so sums over up to 512 nodes never
  wrap; counts and flags are one limb.
- **CKKS** for real lanes: N = 8192, 4096 slots, scale 2**50. Measured error of a sum of five
  public-key encryptions: ~2e-11 absolute, ~1e-12 relative for large values; magnitudes up
  to ~2**68 fit. Released values are rounded to 32 significant bits and never finer than
  2**-28 (about 8 bits above the noise), so |released - exact| <= max(2**-29, |x| 2**-32)
  plus that noise.

The key holder (:mod:`genofed.privacy.secure.keyholder`) never aggregates and never sees a
single node's ciphertext: the coordinator adds ciphertexts and sends only the sums. The key
holder decrypts the sums, runs the minimum-count test, and rounds every CKKS result to
``CKKS_KEEP_BITS`` significant bits (and never finer than ``2**CKKS_FLOOR_EXP``) before
release: raw CKKS decryptions leak information about the secret key (Li & Micciancio, 2021).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from genofed.engine.errors import CombineError

from . import layout as L

N_POLY = 8192
COEFF_BITS = [60, 60, 60]
BFV_T = 288230376150876161  # prime, = 1 mod 16384, 58 bits
BFV_SLOTS = 8192
CKKS_SLOTS = 4096
CKKS_SCALE_BITS = 50
LIMB_BITS = 48
CKKS_KEEP_BITS = 32
CKKS_FLOOR_EXP = -28
MAX_NODES = 512

CT_SCHEMA = pa.schema([
    ("lane", pa.int32()),
    ("limb", pa.int8()),
    ("chunk", pa.int32()),
    ("ct", pa.binary()),
    ("sha256", pa.binary(32)),
])


def _ts():
    try:
        import tenseal
    except ImportError:
        raise CombineError("combine='he' needs TenSEAL: pip install 'genofed[he]'") from None
    return tenseal


def _int_width(p: L.PartialLayout) -> int:
    return 128 if p.decimal else 64


def limbs_for(lane: L.Lane, layout: L.Layout) -> int:
    """How many BFV limbs an integer lane needs (flags and counts: one)."""
    if lane.role != L.VALUE:
        return 1
    p = next(x for x in layout.partials if x.name == lane.column)
    return math.ceil(_int_width(p) / LIMB_BITS)


# -- keys ------------------------------------------------------------------------------------------

class KeyPair:
    """The key holder's BFV and CKKS contexts (secret keys stay in this object)."""

    def __init__(self) -> None:
        ts = _ts()
        self.bfv = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N_POLY, plain_modulus=BFV_T, coeff_mod_bit_sizes=COEFF_BITS)
        self.ckks = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=N_POLY, coeff_mod_bit_sizes=COEFF_BITS)
        self.ckks.global_scale = 2**CKKS_SCALE_BITS
        opts = {"save_secret_key": False, "save_galois_keys": False, "save_relin_keys": False}
        self.public_bfv = self.bfv.serialize(**opts)
        self.public_ckks = self.ckks.serialize(**opts)
        self.key_id = hashlib.sha256(self.public_bfv + self.public_ckks).hexdigest()[:16]


@dataclass
class PublicKeys:
    """What nodes and the coordinator hold: public contexts only."""

    key_id: str
    bfv: Any
    ckks: Any

    @classmethod
    def load(cls, key_id: str, bfv_bytes: bytes, ckks_bytes: bytes) -> PublicKeys:
        ts = _ts()
        if hashlib.sha256(bfv_bytes + ckks_bytes).hexdigest()[:16] != key_id:
            raise CombineError("the key holder's public keys do not match their key id")
        try:
            bfv, ckks = ts.context_from(bfv_bytes), ts.context_from(ckks_bytes)
        except Exception as e:  # noqa: BLE001  (SEAL raises plain ValueError/RuntimeError)
            raise CombineError(f"malformed public keys from the key holder: {e}") from None
        if bfv.is_private() or ckks.is_private():
            raise CombineError("the key holder sent a context with a secret key; refusing to use it")
        return cls(key_id, bfv, ckks)


# -- node: encrypt ---------------------------------------------------------------------------------

def encrypt_lanes(lanes: dict[L.Lane, np.ndarray], layout: L.Layout, keys: PublicKeys) -> pa.Table:
    """A node's aligned lanes as a table of ciphertexts (one row per lane, limb and chunk)."""
    ts = _ts()
    rows: dict[str, list[Any]] = {"lane": [], "limb": [], "chunk": [], "ct": [], "sha256": []}

    def add(i: int, limb: int, chunk: int, blob: bytes) -> None:
        rows["lane"].append(i)
        rows["limb"].append(limb)
        rows["chunk"].append(chunk)
        rows["ct"].append(blob)
        rows["sha256"].append(hashlib.sha256(blob).digest())

    for i, lane in enumerate(layout.lanes()):
        v = lanes[lane]
        if lane.kind == L.REAL and lane.role == L.VALUE:
            x = np.asarray(v, np.float64)
            for c, s in enumerate(range(0, max(len(x), 1), CKKS_SLOTS)):
                add(i, 0, c, ts.ckks_vector(keys.ckks, x[s : s + CKKS_SLOTS].tolist()).serialize())
            continue
        for limb, part in enumerate(_to_limbs(v, lane, layout)):
            for c, s in enumerate(range(0, max(len(part), 1), BFV_SLOTS)):
                add(i, limb, c, ts.bfv_vector(keys.bfv, part[s : s + BFV_SLOTS].tolist()).serialize())
    return pa.table(rows, schema=CT_SCHEMA)


def _to_limbs(v: np.ndarray, lane: L.Lane, layout: L.Layout) -> list[np.ndarray]:
    n = limbs_for(lane, layout)
    if n == 1:
        a = np.asarray(v, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= 2**LIMB_BITS):
            raise CombineError(f"count lane {lane.column}/{lane.role} is out of range for HE encoding")
        return [a]
    p = next(x for x in layout.partials if x.name == lane.column)
    offset = 1 << (_int_width(p) - 1)
    mask = (1 << LIMB_BITS) - 1
    out = [np.empty(len(v), np.int64) for _ in range(n)]
    for j, val in enumerate(v):
        u = int(val) + offset
        if not 0 <= u < (1 << _int_width(p)):
            raise CombineError(f"an integer partial in {lane.column!r} exceeds {_int_width(p)} bits")
        for k in range(n):
            out[k][j] = (u >> (LIMB_BITS * k)) & mask
    return out


# -- coordinator: add ------------------------------------------------------------------------------

def add_ciphertexts(parts: dict[str, pa.Table], layout: L.Layout, keys: PublicKeys, n_groups: int) -> pa.Table:
    """Sum every node's ciphertexts slot-wise. Checks each message's digest and shape, naming the
    node whose ciphertexts are tampered or malformed."""
    ts = _ts()
    expected = _expected_cells(layout, n_groups)
    acc: dict[tuple[int, int, int], Any] = {}
    lanes = layout.lanes()
    for node, t in parts.items():
        if t.schema.remove_metadata() != CT_SCHEMA:
            raise CombineError(f"node {node!r} sent ciphertexts in an unexpected format")
        cells = list(zip(*(t.column(c).to_pylist() for c in ("lane", "limb", "chunk", "ct", "sha256"))))
        if sorted((a, b, c) for a, b, c, _, _ in cells) != expected:
            raise CombineError(f"node {node!r} sent the wrong set of ciphertexts for this query (shape mismatch)")
        for lane_i, limb, chunk, blob, digest in cells:
            if hashlib.sha256(blob).digest() != digest:
                raise CombineError(f"a ciphertext from node {node!r} failed its integrity check (tampered or corrupted in transit); nothing was decrypted")
            real = lanes[lane_i].kind == L.REAL and lanes[lane_i].role == L.VALUE
            try:
                ct = (ts.ckks_vector_from if real else ts.bfv_vector_from)(keys.ckks if real else keys.bfv, blob)
            except Exception as e:  # noqa: BLE001
                raise CombineError(f"malformed ciphertext from node {node!r} ({e}); nothing was decrypted") from None
            k = (lane_i, limb, chunk)
            acc[k] = ct if k not in acc else acc[k] + ct
    rows: dict[str, list[Any]] = {"lane": [], "limb": [], "chunk": [], "ct": [], "sha256": []}
    for (lane_i, limb, chunk), ct in sorted(acc.items()):
        blob = ct.serialize()
        rows["lane"].append(lane_i)
        rows["limb"].append(limb)
        rows["chunk"].append(chunk)
        rows["ct"].append(blob)
        rows["sha256"].append(hashlib.sha256(blob).digest())
    return pa.table(rows, schema=CT_SCHEMA)


def _expected_cells(layout: L.Layout, n_groups: int) -> list[tuple[int, int, int]]:
    out = []
    for i, lane in enumerate(layout.lanes()):
        if lane.kind == L.REAL and lane.role == L.VALUE:
            chunks = max(1, -(-n_groups // CKKS_SLOTS))
            out += [(i, 0, c) for c in range(chunks)]
        else:
            chunks = max(1, -(-n_groups // BFV_SLOTS))
            out += [(i, limb, c) for limb in range(limbs_for(lane, layout)) for c in range(chunks)]
    return sorted(out)


# -- key holder: decrypt, test, round, release -----------------------------------------------------

def decrypt_release(sums: pa.Table, layout: L.Layout, union: pa.Table, n_groups: int, n_nodes: int, keys: KeyPair, min_count: int) -> pa.Table:
    """Decrypt summed lanes, suppress groups with 1..min_count-1 samples, round CKKS values, and
    build the released table (keys, partials, ``_n`` NULL, ``_suppressed``)."""
    ts = _ts()
    if sums.schema.remove_metadata() != CT_SCHEMA:
        raise CombineError("the coordinator sent sums in an unexpected format")
    cells = list(zip(*(sums.column(c).to_pylist() for c in ("lane", "limb", "chunk", "ct", "sha256"))))
    if sorted((a, b, c) for a, b, c, _, _ in cells) != _expected_cells(layout, n_groups):
        raise CombineError("the coordinator sent the wrong set of summed ciphertexts (shape mismatch)")
    lanes = layout.lanes()
    parts: dict[tuple[int, int], list[tuple[int, list]]] = {}
    for lane_i, limb, chunk, blob, digest in cells:
        if hashlib.sha256(blob).digest() != digest:
            raise CombineError("a summed ciphertext failed its integrity check (tampered or corrupted in transit); nothing was released")
        real = lanes[lane_i].kind == L.REAL and lanes[lane_i].role == L.VALUE
        try:
            ct = (ts.ckks_vector_from if real else ts.bfv_vector_from)(keys.ckks if real else keys.bfv, blob)
            vals = ct.decrypt()
        except Exception as e:  # noqa: BLE001
            raise CombineError(f"malformed summed ciphertext ({e}); nothing was released") from None
        parts.setdefault((lane_i, limb), []).append((chunk, vals))
    dec: dict[L.Lane, Any] = {}
    for i, lane in enumerate(lanes):
        real = lane.kind == L.REAL and lane.role == L.VALUE
        if real:
            dec[lane] = _join(parts[(i, 0)])[:n_groups]
            continue
        limbs = [_join(parts[(i, k)])[:n_groups] for k in range(limbs_for(lane, layout))]
        if len(limbs) == 1:
            dec[lane] = np.asarray(limbs[0], dtype=np.int64)
        else:
            p = next(x for x in layout.partials if x.name == lane.column)
            offset = n_nodes << (_int_width(p) - 1)
            dec[lane] = [sum(int(limbs[k][j]) << (LIMB_BITS * k) for k in range(len(limbs))) - offset for j in range(n_groups)]
    n = dec[lanes[-1]]  # the count lane is always last
    released = ~L.small_groups(np.asarray(n), min_count)
    idx = np.flatnonzero(released)
    values: dict[L.Lane, Any] = {}
    flags: dict[L.Lane, np.ndarray] = {}
    for lane in layout.value_lanes():
        v = dec[lane]
        if lane.kind == L.REAL:
            values[lane] = round_ckks(np.asarray(v, np.float64)[idx])
        else:
            values[lane] = [v[j] for j in idx]
    for lane in layout.flag_lanes()[:-1]:
        flags[lane] = np.asarray(dec[lane])[idx] != 0
    return L.assemble(union, layout, released, values, flags)


def _join(chunks: list[tuple[int, list]]) -> list:
    out: list = []
    for _, vals in sorted(chunks, key=lambda c: c[0]):
        out.extend(vals)
    return out


def round_ckks(x: np.ndarray) -> np.ndarray:
    """Round CKKS decryptions to ``CKKS_KEEP_BITS`` significant bits, never finer than
    ``2**CKKS_FLOOR_EXP``: the released value carries none of the low-order noise bits."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    nz = x != 0
    exp = np.floor(np.log2(np.abs(x[nz]))).astype(np.int64)
    step_exp = np.maximum(exp - CKKS_KEEP_BITS + 1, CKKS_FLOOR_EXP)
    step = np.ldexp(1.0, step_exp)
    out[nz] = np.round(x[nz] / step) * step
    return out


def ipc_size(table: pa.Table) -> int:
    """Bytes of a table as an Arrow IPC stream (what it costs on the wire)."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return int(sink.size())


def ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def read_ipc(b: bytes, what: str) -> pa.Table:
    try:
        return pa.ipc.open_stream(b).read_all()
    except (pa.ArrowInvalid, TypeError) as e:
        raise CombineError(f"malformed {what}: {e}") from None


# -- coordinator: one query ------------------------------------------------------------------------

def run_he(coordinator: Any, targets: list[Any], fragment_sql: str, query_id: str, min_count: int, timeout: float, wire: dict[str, int] | None = None) -> pa.Table:
    """Run one query under HE; returns the released combined table. The coordinator sees
    ciphertexts, their sums, and the released groups only."""
    kh = getattr(coordinator, "keyholder", None)
    if kh is None:
        raise CombineError("combine='he' needs a key holder: add a [keyholder] table (location, token) to federation.toml, or use combine='mpc'")
    key_id = kh.open(query_id, [t.name for t in targets], min_count, timeout=timeout)
    keys = kh.public_keys()
    parts = coordinator._fan_out(lambda t: t.run_he(fragment_sql, query_id, key_id, timeout), targets)
    layouts, groups = set(), set()
    if wire is not None:
        wire.update({node: ipc_size(t) for node, t in parts.items()})
    for node, t in parts.items():
        meta = t.schema.metadata or {}
        if meta.get(b"genofed.key_id", b"").decode() != key_id:
            raise CombineError(f"node {node!r} encrypted under another key than the key holder's")
        try:
            layouts.add(meta[b"genofed.layout"].decode())
            groups.add(int(meta[b"genofed.groups"]))
        except (KeyError, ValueError):
            raise CombineError(f"node {node!r} sent ciphertexts without their layout") from None
    if len(layouts) != 1 or len(groups) != 1:
        raise CombineError("nodes disagree on the shape of this query's partials (layout or number of groups)")
    layout = L.Layout.from_json(json.loads(layouts.pop()))
    g = groups.pop()
    if g == 0:
        empty = pa.table({k: pa.array([], pa.null()) for k in layout.keys})
        return L.assemble(empty, layout, np.zeros(0, bool), {lane: [] for lane in layout.value_lanes()}, {lane: np.zeros(0, bool) for lane in layout.flag_lanes()})
    sums = add_ciphertexts(parts, layout, keys, g)
    return kh.release(query_id, sums, timeout)
