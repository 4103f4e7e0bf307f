"""Group keys as integer codes, computed with numpy rather than Arrow's Acero engine.

Acero (``Table.join``, ``Table.group_by``) crashed the process (a segmentation fault in CI)
when node threads aligned partial tables received over Flight, whose buffers are not always
64-byte aligned. Keys are small (a few columns, at most a few hundred thousand rows), so they are
copied to numpy and coded there: every distinct key tuple gets one integer, in the tuple's sort
order (ascending per column, NULL after every value), the order ``ORDER BY k1, k2, ... NULLS
LAST`` gives.

GROUP BY semantics: NULL is its own group (never equal to a value, equal to another NULL), and NaN
is one group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class KeyTypeError(ValueError):
    """Key columns whose values cannot be compared (different types at different nodes)."""


def _values(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values with NULLs filled, is-NULL mask) of one key column, as numpy arrays."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    typ = col.type
    if pa.types.is_dictionary(typ):
        col = col.dictionary_decode()
        typ = col.type
    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        vals = pc.fill_null(col, pa.scalar(0).cast(typ) if not pa.types.is_boolean(typ) else False)
        return np.array(vals.to_numpy(zero_copy_only=False)), null
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        vals = pc.fill_null(col.cast(pa.large_string()), "")
        return np.array(vals.to_numpy(zero_copy_only=False), dtype=object), null
    if pa.types.is_temporal(typ) and getattr(typ, "bit_width", 0) in (32, 64):
        # dates, times, timestamps and durations compare as their integer representation
        vals = pc.fill_null(col.view(pa.int32() if typ.bit_width == 32 else pa.int64()), 0)
        return np.array(vals.to_numpy(zero_copy_only=False)).astype(np.int64), null
    if pa.types.is_decimal(typ):
        vals = [0 if v is None else v for v in col.to_pylist()]
        return np.array(vals, dtype=object), null
    vals = pc.fill_null(col.cast(pa.large_string()), "")
    return np.array(vals.to_numpy(zero_copy_only=False), dtype=object), null


def _is_text(col: pa.Array | pa.ChunkedArray) -> bool:
    t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _text_codes(parts: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Text key column: hash-encoded by Arrow, then only the distinct values are sorted."""
    chunks: list[pa.Array] = []
    for p in parts:
        for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p]):
            if pa.types.is_dictionary(c.type):
                c = c.dictionary_decode()
            chunks.append(c.cast(pa.large_string()))
    arr = pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())
    enc = arr.dictionary_encode()
    words = np.array(enc.dictionary.to_pylist(), dtype=object)
    rank = np.empty(len(words) + 1, dtype=np.int64)
    rank[np.argsort(words, kind="stable")] = np.arange(len(words), dtype=np.int64)
    rank[len(words)] = len(words)  # NULL sorts last
    idx = pc.fill_null(enc.indices, len(words)).to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[idx]


def _column_codes(parts: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One key column over several tables (concatenated in order): codes in sort order, NULL last."""
    if parts and all(_is_text(p) for p in parts):
        return _text_codes(parts)
    vals, nulls = [], []
    for p in parts:
        v, z = _values(p)
        vals.append(v)
        nulls.append(z)
    z = np.concatenate(nulls) if nulls else np.zeros(0, bool)
    kinds = {("o" if v.dtype == object else "n") for v in vals if len(v)}
    if len(kinds) > 1:
        raise KeyTypeError("a key column holds numbers at one table and text at another")
    try:
        v = np.concatenate(vals) if vals else np.zeros(0)
        uniq, inv = np.unique(v, return_inverse=True)
    except TypeError as e:  # e.g. str vs Decimal in one object array
        raise KeyTypeError(f"a key column's values cannot be compared: {e}") from None
    codes = inv.reshape(-1).astype(np.int64)
    codes[z] = len(uniq)
    return codes


def key_codes(tables: Sequence[pa.Table], keys: Sequence[str]) -> tuple[np.ndarray, int]:
    """A code per row of the concatenated ``tables`` (same code = same key tuple; codes ordered as
    the tuples sort), and the number of distinct tuples."""
    n = sum(t.num_rows for t in tables)
    combined = np.zeros(n, dtype=np.int64)
    card = 1
    for k in keys:
        try:
            c = _column_codes([t.column(k) for t in tables])
        except KeyError:
            raise KeyTypeError(f"a table has no key column {k!r}") from None
        width = int(c.max()) + 1 if n else 1
        if card * width >= 2**62:  # re-compress before the mixed-radix product overflows
            uniq, inv = np.unique(combined, return_inverse=True)
            combined, card = inv.reshape(-1).astype(np.int64), len(uniq)
        combined = combined * width + c
        card *= width
    uniq, inv = np.unique(combined, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), len(uniq)


def distinct_sorted(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The distinct key tuples of ``table``, sorted ascending with NULLs last."""
    codes, g = key_codes([table], keys)
    first = np.full(g, -1, dtype=np.int64)
    # the first row of each code: assign in reverse so the smallest index wins
    rows = np.arange(len(codes), dtype=np.int64)
    first[codes[::-1]] = rows[::-1]
    return table.select(list(keys)).take(pa.array(first))


def group_rows(table: pa.Table, keys: Sequence[str]) -> tuple[pa.Table, list[np.ndarray]]:
    """Distinct key tuples of ``table`` (sorted) and, for each, the row indices holding it."""
    codes, g = key_codes([table], keys)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(g + 1))
    groups = [order[bounds[i]:bounds[i + 1]] for i in range(g)]
    first = np.array([grp[0] for grp in groups], dtype=np.int64)
    return table.select(list(keys)).take(pa.array(first)), groups


def lookup(union: pa.Table, table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """For each row of ``union`` (distinct keys), the row of ``table`` with the same key, or -1.

    Raises ``KeyTypeError`` if ``table`` holds a key twice or the key types do not compare.
    """
    codes, g = key_codes([union, table], keys)
    cu, ct = codes[: union.num_rows], codes[union.num_rows:]
    if len(np.unique(ct)) != len(ct):
        raise KeyTypeError("a table holds the same group key twice")
    pos = np.full(g, -1, dtype=np.int64)
    pos[ct] = np.arange(len(ct), dtype=np.int64)
    return pos[cu]
