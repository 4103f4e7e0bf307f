"""HE combine (TenSEAL): nodes encrypt and tag, the key holder checks, adds and decrypts sums only.

This is the only module that imports TenSEAL (lazily, on first use).

Parameters (128-bit security by the HE standard's table: N = 8192 allows at most 218 bits of
coefficient modulus; both schemes use 3 x 60 = 180 bits). :func:`check_security` enforces the
table wherever a context is made (the key holder) or loaded (nodes and coordinators, before
SEAL parses the context), so a key holder cannot hand out weaker keys:

- **BFV** for every integer lane (exact): N = 8192, 8192 slots, plain modulus
  ``BFV_T`` (a 58-bit prime, 1 mod 2N, so slots batch). Integers are written as limbs of 48
  bits after an offset (``v + 2**(w-1)`` for a w-bit type), so sums over up to 512 nodes never
  wrap; counts and flags are one limb.
- **Fixed point in BFV** for *finite* real lanes (analysis statistics): ``round(x * 2**32)``
  offset by ``2**61 * 2**32``, as two 48-bit limbs; exact sums, released without rounding.
- **CKKS** for the other real lanes: N = 8192, 4096 slots, scale 2**50. Measured error of a sum of five
  public-key encryptions: ~2e-11 absolute, ~1e-12 relative for large values; magnitudes up
  to ~2**68 fit. Released values are rounded to 32 significant bits and never finer than
  2**-28 (about 8 bits above the noise), so |released - exact| <= max(2**-29, |x| 2**-32)
  plus that noise.

The coordinator, which runs in the researcher's process, only relays: every node tags its
ciphertexts (HMAC-SHA256 under a key derived from its own key-holder token, over the query id,
the node, the key id and every ciphertext's digest), and the key holder adds the ciphertexts
itself, only when every member of the federation it serves contributed, each with a valid tag.
A coordinator that adds Enc(4) to a count lane, drops a node, or asks for one node's partials is
refused. The key holder decrypts the sums, runs the minimum-count test, and rounds every CKKS result to
``CKKS_KEEP_BITS`` significant bits (and never finer than ``2**CKKS_FLOOR_EXP``) before
release: raw CKKS decryptions leak information about the secret key (Li & Micciancio, 2021).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from genofed.engine.combine import Combiner, Round
from genofed.engine.errors import CombineError
from genofed.engine.protocol import ipc_size

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
MAX_NODES = 511

CT_SCHEMA = pa.schema([
    ("channel", pa.int32()),  # index into channels(layout)
    ("chunk", pa.int32()),  # which block of groups (BFV_SLOTS or CKKS_SLOTS per block)
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


N_BITS = 32  # the count lane's field in the first flag word
FLAG_BITS = 9  # each flag lane's field (a sum over at most MAX_NODES nodes)
WORD_BITS = 56  # a word's sum stays below BFV_T / 2


@dataclass(frozen=True)
class Channel:
    """One BFV or CKKS vector per chunk of groups: a real value lane (``ckks``), one limb of an
    integer value lane (``limb``), or a word packing the count and flag lanes (``word``)."""

    kind: str
    lane: L.Lane | None = None
    limb: int = 0
    fields: tuple[tuple[L.Lane, int], ...] = ()  # (lane, bit offset) for words


def channels(layout: L.Layout) -> list[Channel]:
    """The public list of vectors a node encrypts for a layout."""
    out: list[Channel] = []
    for lane in layout.value_lanes():
        if lane.kind == L.REAL:
            if _finite(layout, lane):  # exact fixed point in BFV, two limbs
                out += [Channel("fixed", lane, k) for k in range(2)]
            else:
                out.append(Channel("ckks", lane))
            continue
        p = next(x for x in layout.partials if x.name == lane.column)
        n = 1 if p.count else math.ceil(_int_width(p) / LIMB_BITS)
        out += [Channel("limb", lane, k) for k in range(n)]
    flags = layout.flag_lanes()
    count, rest = flags[-1], flags[:-1]
    word: list[tuple[L.Lane, int]] = [(count, 0)]
    used = N_BITS
    for lane in rest:
        width = N_BITS if lane.role == L.COUNT else FLAG_BITS  # influence counts: a count's field
        if used + width > WORD_BITS:
            out.append(Channel("word", fields=tuple(word)))
            word, used = [], 0
        word.append((lane, used))
        used += width
    out.append(Channel("word", fields=tuple(word)))
    return out


FIXED_FRAC_BITS = 32  # finite reals: round(x * 2**32), exact sums (as MPC)
_FIXED_OFFSET = 1 << 61  # |x| < 2**61


def _finite(layout: L.Layout, lane: L.Lane) -> bool:
    return any(p.name == lane.column and p.finite for p in layout.partials)


def _fixed_limbs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A finite real as a 96-bit offset fixed-point integer ``(floor(x) + 2**61) * 2**32 +
    round(frac(x) * 2**32)``, in two 48-bit limbs (vectorised, exact)."""
    x = np.asarray(x, np.float64)
    if x.size and not (np.isfinite(x).all() and np.abs(x).max() < 2.0**60):
        raise CombineError("a statistic is out of range for HE fixed-point encoding (|x| < 2^60)")
    hi = np.floor(x)
    lo = np.rint((x - hi) * 2.0**FIXED_FRAC_BITS).astype(np.int64)
    carry = lo >> FIXED_FRAC_BITS
    hu = (hi.astype(np.int64) + carry + _FIXED_OFFSET).astype(np.uint64)
    lo = lo & ((1 << FIXED_FRAC_BITS) - 1)
    limb0 = ((hu & np.uint64(0xFFFF)) << np.uint64(32)) | lo.astype(np.uint64)
    limb1 = hu >> np.uint64(16)
    return limb0.astype(np.int64), limb1.astype(np.int64)


def _fixed_value(s0: np.ndarray, s1: np.ndarray, n_nodes: int) -> np.ndarray:
    """The real sum from the summed limbs of ``n_nodes`` encodings."""
    a = np.asarray(s1, np.int64) - (n_nodes << (61 + 32 - LIMB_BITS))
    return a.astype(np.float64) * 2.0 ** (LIMB_BITS - FIXED_FRAC_BITS) + np.asarray(s0, np.float64) / 2.0**FIXED_FRAC_BITS


def _slots(ch: Channel) -> int:
    return CKKS_SLOTS if ch.kind == "ckks" else BFV_SLOTS


# -- keys ------------------------------------------------------------------------------------------

# The HomomorphicEncryption.org security standard (Albrecht et al. 2018, table 1; SEAL's tc128):
# the largest total coefficient modulus, in bits, for 128-bit classical security at each ring
# dimension N (ternary secret, error width 3.2).
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def check_security(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int] | tuple[int, ...]) -> None:
    """Refuse RLWE parameters below 128-bit security (:data:`HE_STANDARD_128`)."""
    n = int(poly_modulus_degree)
    bits = [int(b) for b in coeff_mod_bit_sizes]
    total = sum(bits)
    limit = HE_STANDARD_128.get(n)
    if limit is None:
        raise CombineError(f"HE parameters below 128-bit security: poly_modulus_degree {n} is not one of the HE standard's "
                           f"ring dimensions {sorted(HE_STANDARD_128)}; refusing these keys")
    if not bits or total > limit:
        raise CombineError(f"HE parameters below 128-bit security: poly_modulus_degree {n} with a {total}-bit coefficient modulus "
                           f"({'+'.join(map(str, bits)) or 'none'}); the HE standard allows at most {limit} bits at N = {n}; "
                           "refusing these keys")


def context_parameters(blob: bytes) -> tuple[str, int, list[int]]:
    """``(scheme, poly_modulus_degree, coeff_mod_bit_sizes)`` of a serialised TenSEAL context,
    read without building it (SEAL refuses to build insecure contexts with an unhelpful message)."""
    import os
    import tempfile

    _ts()
    import tenseal.sealapi as sealapi

    try:
        params = _proto_field(blob, 1)  # TenSEALContextProto.encryption_parameters
        with tempfile.TemporaryDirectory(prefix="genofed-he-") as d:
            path = os.path.join(d, "parms")
            with open(path, "wb") as f:
                f.write(params)
            parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.NONE)
            parms.load(path)
        scheme = parms.scheme().name.lower()
        return scheme, int(parms.poly_modulus_degree()), [m.bit_count() for m in parms.coeff_modulus()]
    except CombineError:
        raise
    except Exception as e:  # noqa: BLE001  (SEAL raises plain ValueError/RuntimeError)
        raise CombineError(f"malformed HE context (its encryption parameters cannot be read: {e})") from None


def _proto_field(buf: bytes, number: int) -> bytes:
    """The first length-delimited field ``number`` of a protobuf message."""
    def varint(i: int) -> tuple[int, int]:
        x = shift = 0
        while True:
            if i >= len(buf) or shift > 63:
                raise CombineError("malformed HE context (truncated protobuf)")
            c = buf[i]
            i += 1
            x |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return x, i

    i = 0
    while i < len(buf):
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = varint(i)
            if i + size > len(buf):
                raise CombineError("malformed HE context (truncated protobuf)")
            if field == number:
                return bytes(buf[i : i + size])
            i += size
        else:
            raise CombineError(f"malformed HE context (protobuf wire type {wire})")
    raise CombineError(f"malformed HE context (no field {number})")


class KeyPair:
    """The key holder's BFV and CKKS contexts (secret keys stay in this object)."""

    def __init__(self) -> None:
        check_security(N_POLY, COEFF_BITS)
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
        for want, blob in (("bfv", bfv_bytes), ("ckks", ckks_bytes)):
            scheme, n, bits = context_parameters(blob)
            if scheme != want:
                raise CombineError(f"the key holder sent a {scheme} context where a {want} context belongs; refusing its keys")
            check_security(n, bits)
        try:
            bfv, ckks = ts.context_from(bfv_bytes), ts.context_from(ckks_bytes)
        except Exception as e:  # noqa: BLE001  (SEAL raises plain ValueError/RuntimeError)
            raise CombineError(f"malformed public keys from the key holder: {e}") from None
        if bfv.is_private() or ckks.is_private():
            raise CombineError("the key holder sent a context with a secret key; refusing to use it")
        return cls(key_id, bfv, ckks)


# -- node: encrypt ---------------------------------------------------------------------------------

def encrypt_lanes(lanes: dict[L.Lane, np.ndarray], layout: L.Layout, keys: PublicKeys) -> pa.Table:
    """A node's aligned lanes as a table of ciphertexts (one row per channel and chunk)."""
    ts = _ts()
    cells = {}
    for i, ch in enumerate(channels(layout)):
        v = _channel_values(ch, lanes, layout)
        for c, s in enumerate(range(0, max(len(v), 1), _slots(ch))):
            part = v[s : s + _slots(ch)].tolist()
            cells[(i, c)] = ts.ckks_vector(keys.ckks, part) if ch.kind == "ckks" else ts.bfv_vector(keys.bfv, part)
    return _ct_table(cells)


def _ct_table(cells: dict[tuple[int, int], Any]) -> pa.Table:
    """Ciphertexts keyed by (channel, chunk) as a table, each with its SHA-256 digest."""
    rows: dict[str, list[Any]] = {"channel": [], "chunk": [], "ct": [], "sha256": []}
    for (ch_i, chunk), ct in sorted(cells.items()):
        blob = ct.serialize()
        rows["channel"].append(ch_i)
        rows["chunk"].append(chunk)
        rows["ct"].append(blob)
        rows["sha256"].append(hashlib.sha256(blob).digest())
    return pa.table(rows, schema=CT_SCHEMA)


def _load_cells(t: pa.Table, layout: L.Layout, n_groups: int, bfv: Any, ckks: Any, sender: str, then: str) -> dict[tuple[int, int], Any]:
    """Check a ciphertext table's format, shape and digests, and load every ciphertext. Errors
    name ``sender`` and say what did not happen (``then``)."""
    ts = _ts()
    if t.schema.remove_metadata() != CT_SCHEMA:
        raise CombineError(f"{sender} sent ciphertexts in an unexpected format; {then}")
    cells = list(zip(*(t.column(c).to_pylist() for c in CT_SCHEMA.names)))
    if sorted((a, b) for a, b, _, _ in cells) != _expected_cells(layout, n_groups):
        raise CombineError(f"{sender} sent the wrong set of ciphertexts for this query (shape mismatch); {then}")
    chs = channels(layout)
    out = {}
    for ch_i, chunk, blob, digest in cells:
        if hashlib.sha256(blob).digest() != digest:
            raise CombineError(f"a ciphertext from {sender} failed its integrity check (tampered or corrupted in transit); {then}")
        real = chs[ch_i].kind == "ckks"
        try:
            out[(ch_i, chunk)] = (ts.ckks_vector_from if real else ts.bfv_vector_from)(ckks if real else bfv, blob)
        except Exception as e:  # noqa: BLE001  (SEAL raises plain ValueError/RuntimeError)
            raise CombineError(f"malformed ciphertext from {sender} ({e}); {then}") from None
    return out


def _channel_values(ch: Channel, lanes: dict[L.Lane, np.ndarray], layout: L.Layout) -> np.ndarray:
    if ch.kind == "ckks":
        assert ch.lane is not None
        return np.asarray(lanes[ch.lane], np.float64)
    if ch.kind == "fixed":
        assert ch.lane is not None
        return _fixed_limbs(lanes[ch.lane])[ch.limb]
    if ch.kind == "word":
        acc = None
        for lane, shift in ch.fields:
            x = np.asarray(lanes[lane], np.int64)
            limit = 1 << (N_BITS - 1 if lane.role == L.COUNT else FLAG_BITS - 1)
            if x.size and (x.min() < 0 or x.max() >= limit):
                raise CombineError(f"lane {lane.column}/{lane.role} is out of range for HE encoding")
            acc = (x << shift) if acc is None else acc | (x << shift)
        return acc if acc is not None else np.zeros(0, np.int64)
    assert ch.lane is not None
    p = next(x for x in layout.partials if x.name == ch.lane.column)
    v = lanes[ch.lane]
    mask = (1 << LIMB_BITS) - 1
    if p.count:
        a = np.asarray(v, np.int64)
        if a.size and (a.min() < 0 or a.max() > mask):
            raise CombineError(f"count partial {p.name!r} is out of range for HE encoding")
        return a
    if not p.decimal:  # int64: offset binary in uint64, split into 48-bit limbs
        u = np.asarray(v, np.int64).view(np.uint64) ^ np.uint64(1 << 63)
        return ((u >> np.uint64(LIMB_BITS * ch.limb)) & np.uint64(mask)).astype(np.int64)
    offset = 1 << (_int_width(p) - 1)
    out = np.empty(len(v), np.int64)
    for j, val in enumerate(v):
        w = int(val) + offset
        if not 0 <= w < (1 << _int_width(p)):
            raise CombineError(f"an integer partial in {p.name!r} exceeds {_int_width(p)} bits")
        out[j] = (w >> (LIMB_BITS * ch.limb)) & mask
    return out


# -- tags: which node sent which ciphertexts --------------------------------------------------------

TAG_METADATA = b"genofed.he_tag"
NODE_COLUMN = "node"


def tag_key(token_sha256_hex: str) -> bytes:
    """A node's tagging key, derived from its key-holder token's SHA-256 (which the key holder
    stores, and the coordinator never has)."""
    import hmac

    return hmac.new(bytes.fromhex(token_sha256_hex), b"genofed-he-tag", hashlib.sha256).digest()


def tag_ciphertexts(cts: pa.Table, query_id: str, node: str, key_id: str, key: bytes) -> str:
    """The tag of one node's ciphertext table for one query (hex)."""
    import hmac

    cells = sorted(zip(cts.column("channel").to_pylist(), cts.column("chunk").to_pylist(),
                       (d.hex() for d in cts.column("sha256").to_pylist()), strict=True))
    msg = json.dumps(["genofed-he", query_id, node, key_id, cells]).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def check_tag(cts: pa.Table, query_id: str, node: str, key_id: str, key: bytes, tag: Any) -> None:
    import hmac

    try:
        want = tag_ciphertexts(cts, query_id, node, key_id, key)
    except (AttributeError, TypeError, KeyError, ValueError, pa.ArrowInvalid):
        raise CombineError(f"node {node!r}'s ciphertexts arrived in an unexpected format; nothing was released") from None
    if not isinstance(tag, str) or not hmac.compare_digest(want, tag):
        raise CombineError(f"the ciphertexts relayed as node {node!r}'s do not carry that node's tag for this query (altered, "
                           "replayed from another query, or not from that node); nothing was released")


# -- key holder: add -------------------------------------------------------------------------------

def add_ciphertexts(parts: dict[str, pa.Table], layout: L.Layout, keys: PublicKeys | KeyPair, n_groups: int) -> pa.Table:
    """Sum every node's ciphertexts slot-wise. Checks each message's digest and shape, naming the
    node whose ciphertexts are tampered or malformed."""
    acc: dict[tuple[int, int], Any] = {}
    for node, t in parts.items():
        for k, ct in _load_cells(t, layout, n_groups, keys.bfv, keys.ckks, f"node {node!r}", "nothing was released").items():
            acc[k] = ct if k not in acc else acc[k] + ct
    return _ct_table(acc)


def _expected_cells(layout: L.Layout, n_groups: int) -> list[tuple[int, int]]:
    return sorted((i, c) for i, ch in enumerate(channels(layout)) for c in range(max(1, -(-n_groups // _slots(ch)))))


# -- key holder: decrypt, test, round, release -----------------------------------------------------

def decrypt_release(sums: pa.Table, layout: L.Layout, union: pa.Table, n_groups: int, n_nodes: int, keys: KeyPair, min_count: int,
                    min_mac: int | None = None) -> pa.Table:
    """Decrypt summed channels, suppress groups with 1..min_count-1 samples (and, per count lane,
    below its minimum: :func:`~genofed.privacy.secure.layout.lane_small`; ``min_mac`` for the
    rule-5 allele-count lanes, default ``min_count``), round CKKS values, and build the released
    table (keys, partials, ``_n`` NULL, ``_suppressed``)."""
    chs = channels(layout)
    parts: dict[int, list[tuple[int, list]]] = {}
    for (ch_i, chunk), ct in _load_cells(sums, layout, n_groups, keys.bfv, keys.ckks, "the coordinator", "nothing was released").items():
        try:
            parts.setdefault(ch_i, []).append((chunk, ct.decrypt()))
        except Exception as e:  # noqa: BLE001
            raise CombineError(f"a summed ciphertext could not be decrypted ({e}); nothing was released") from None
    _check_plausible(chs, parts, n_groups, n_nodes)
    dec: dict[L.Lane, Any] = {}
    limbs: dict[L.Lane, dict[int, np.ndarray]] = {}
    fixed: dict[L.Lane, dict[int, np.ndarray]] = {}
    for i, ch in enumerate(chs):
        if ch.kind == "fixed":
            assert ch.lane is not None
            fixed.setdefault(ch.lane, {})[ch.limb] = np.asarray(_join(parts[i])[:n_groups], np.int64)
        elif ch.kind == "ckks":
            assert ch.lane is not None
            dec[ch.lane] = np.asarray(_join(parts[i])[:n_groups], np.float64)
        elif ch.kind == "word":
            w = np.asarray(_join(parts[i])[:n_groups], np.int64)
            for lane, shift in ch.fields:
                bits = N_BITS if lane.role == L.COUNT else FLAG_BITS
                dec[lane] = (w >> shift) & ((1 << bits) - 1)
        else:
            assert ch.lane is not None
            limbs.setdefault(ch.lane, {})[ch.limb] = np.asarray(_join(parts[i])[:n_groups], np.int64)
    for lane, fl in fixed.items():
        dec[lane] = _fixed_value(fl[0], fl[1], n_nodes)
    for lane, ls in limbs.items():
        p = next(x for x in layout.partials if x.name == lane.column)
        if p.count:
            dec[lane] = ls[0]
        elif not p.decimal and len(ls) == 2:
            # v = (hi - n * 2^15) * 2^48 + lo, in int64 when it fits
            hi = ls[1] - (n_nodes << (63 - LIMB_BITS))
            if hi.size == 0 or (np.abs(hi).max() < (1 << (62 - LIMB_BITS))):
                dec[lane] = (hi << LIMB_BITS) + ls[0]
            else:
                dec[lane] = [int(h) * (1 << LIMB_BITS) + int(lo) for h, lo in zip(hi, ls[0])]
        else:
            offset = n_nodes << (_int_width(p) - 1)
            dec[lane] = [sum(int(ls[k][j]) << (LIMB_BITS * k) for k in range(len(ls))) - offset for j in range(n_groups)]
    small = np.zeros(n_groups, bool)
    count_lanes = layout.count_lanes()
    for lane in count_lanes:  # every influence and guard count (0 included), then the group's count (last)
        small |= L.lane_small(lane, np.asarray(dec[lane]), min_count, min_mac, lane is count_lanes[-1])
    released = ~small
    idx = np.flatnonzero(released)
    values: dict[L.Lane, Any] = {}
    flags: dict[L.Lane, np.ndarray] = {}
    for lane in layout.value_lanes():
        v = dec[lane]
        if lane.kind == L.REAL and lane in fixed:
            values[lane] = np.asarray(v, np.float64)[idx]  # exact fixed-point sums, no CKKS noise to hide
        elif lane.kind == L.REAL:
            values[lane] = round_ckks(np.asarray(v, np.float64)[idx])
        elif isinstance(v, np.ndarray):
            values[lane] = v[idx]
        else:
            values[lane] = [v[j] for j in idx]
    for lane in layout.opened_flags():
        flags[lane] = np.asarray(dec[lane])[idx] != 0
    if layout.keys:  # a withheld group's key never leaves: its row is NULLs
        import pyarrow.compute as pc

        mask = pa.array(released)
        union = pa.table({k: pc.if_else(mask, union.column(k), pa.nulls(len(released), union.schema.field(k).type)) for k in layout.keys})
    return L.assemble(union, layout, released, values, flags)


CKKS_PAD_TOLERANCE = 2.0**-10  # an honest sum's unused CKKS slots decrypt to noise ~1e-11
CKKS_MAX_MAGNITUDE = 2.0**68  # the largest CKKS sum that fits (module docstring); noise decrypts to ~2**70


def _check_plausible(chs: list[Channel], parts: dict[int, list[tuple[int, list]]], n_groups: int, n_nodes: int) -> None:
    """Refuse decryptions no sum of ``n_nodes`` honest encodings can give: unused slots that are
    not zero, BFV slots outside the range of a sum of limbs or words, CKKS slots beyond the
    encodable magnitude. A corrupted or bit-flipped
    ciphertext (its digest recomputed) decrypts to noise across every slot, so it is refused here
    instead of being released. (A ciphertext crafted homomorphically under the public key passes:
    this is a sanity check, not integrity.)"""
    for i, ch in enumerate(chs):
        v = np.asarray(_join(parts[i]), np.float64 if ch.kind == "ckks" else object)
        if len(v) < n_groups:
            raise CombineError(f"a summed ciphertext from the coordinator holds {len(v)} values where this query has {n_groups} groups "
                               "(malformed); nothing was released")
        pad, used = v[n_groups:], v[:n_groups]
        if ch.kind == "ckks":
            ok = (bool(np.isfinite(v).all()) and (used.size == 0 or float(np.abs(used).max()) < CKKS_MAX_MAGNITUDE)
                  and (pad.size == 0 or float(np.abs(pad).max()) <= CKKS_PAD_TOLERANCE))
        elif ch.kind == "word":  # the count field, then flag fields that each sum at most n_nodes ones
            top = max(shift + (N_BITS if lane.role == L.COUNT else FLAG_BITS) for lane, shift in ch.fields)
            flags = [shift for lane, shift in ch.fields if lane.role != L.COUNT]
            ok = all(x == 0 for x in pad) and all(0 <= x < (1 << top) and all((x >> f) & ((1 << FLAG_BITS) - 1) <= n_nodes for f in flags)
                                                  for x in used)
        else:
            ok = all(x == 0 for x in pad) and all(0 <= x < n_nodes * (1 << LIMB_BITS) for x in used)
        if not ok:
            raise CombineError("the summed ciphertexts from the coordinator decrypt to values no sum of node encodings can take "
                               "(tampered or corrupted); nothing was released")


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


# -- coordinator: one query ------------------------------------------------------------------------

class HECombiner(Combiner):
    """``combine='he'``: nodes encrypt and tag, the key holder checks, adds and decrypts."""

    mode = "he"

    def run(self, rnd: Round) -> pa.Table:
        return _run(rnd)


def run_he(coordinator: Any, targets: list[Any], fragment_sql: str, query_id: str, min_count: int, timeout: float, wire: dict[str, int] | None = None,
           dp: dict[str, Any] | None = None, notes: dict[str, Any] | None = None, user_sql: str | None = None) -> pa.Table:
    """One HE round driven by ``coordinator`` (its :meth:`~genofed.engine.coordinator.Coordinator.round`)."""
    rnd = coordinator.round(fragment_sql, query_id, targets, dp=dp, notes=notes, user_sql=user_sql)
    rnd.timeout, rnd.min_count = timeout, min_count
    out = _run(rnd)
    if wire is not None:
        wire.update(rnd.wire)
    return out


def _run(rnd: Any) -> pa.Table:
    """Run one query under HE; returns the released combined table. The coordinator sees each
    node's tagged ciphertexts and the released groups only, and relays the ciphertexts to the key
    holder, which adds them itself. ``user_sql``: the researcher's query as written, for their
    release history at each node."""
    targets, fragment_sql, query_id, min_count, timeout = rnd.targets, rnd.fragment_sql, rnd.query_id, rnd.min_count, rnd.timeout
    dp, notes, user_sql, wire = rnd.dp, rnd.notes, rnd.user_sql, rnd.wire
    kh = rnd.keyholder
    if kh is None:
        raise CombineError("combine='he' needs a key holder: add a [keyholder] table (location, token) to federation.toml, or use combine='mpc'")
    key_id = kh.open(query_id, [t.name for t in targets], min_count, timeout=timeout)
    keys = kh.public_keys()
    # the node's call deadline is timeout + 10 s (encryption after the fragment): wait as long
    mine = {"user_sql": user_sql} if user_sql is not None else {}
    parts = rnd.fan_out(lambda t: t.run_he(fragment_sql, query_id, key_id, timeout, dp=dp, **mine), targets, grace=12.0)
    layouts, groups = set(), set()
    if notes is not None:  # each node's DP and re-identification notes for the provenance
        notes.update({node: json.loads(t.schema.metadata[b"genofed.notes"]) for node, t in parts.items()
                      if t.schema.metadata and b"genofed.notes" in t.schema.metadata})
    if wire is not None:
        wire.update({node: ipc_size(t) for node, t in parts.items()})
    for node, t in parts.items():
        meta = t.schema.metadata or {}
        if meta.get(b"genofed.key_id", b"").decode() != key_id:
            raise CombineError(f"node {node!r} encrypted under another key than the key holder's")
        try:
            # the shape must agree; each node's own minimum minor-allele count is its policy (the key holder takes the largest)
            layouts.add(json.dumps(L.split_min_mac(json.loads(meta[b"genofed.layout"].decode()))[0], sort_keys=True))
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
    del keys
    tags = {node: (t.schema.metadata or {}).get(TAG_METADATA, b"").decode() for node, t in parts.items()}
    relay = pa.concat_tables([t.replace_schema_metadata(None).append_column(NODE_COLUMN, pa.array([node] * t.num_rows, pa.string()))
                              for node, t in parts.items()])
    return kh.release(query_id, relay, timeout, tags=tags)
