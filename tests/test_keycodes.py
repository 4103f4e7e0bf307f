"""Key union and alignment of partial tables (numpy, no Acero), against DuckDB as the oracle."""

from __future__ import annotations

import threading

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from genofed.engine.errors import CombineError
from genofed.engine.keycodes import group_rows
from genofed.privacy.secure import layout as L


def _random_partial(rng: np.random.Generator, n: int) -> pa.Table:
    words = np.array(["AFR", "EUR", "EAS", "SAS", "AMR", "é", "", "z z"], dtype=object)
    s = pa.array(rng.choice(words, n), mask=rng.random(n) < 0.1)
    i = pa.array(rng.integers(-3, 4, n), pa.int64(), mask=rng.random(n) < 0.1)
    f = rng.choice([0.5, -1.25, np.nan, 2.0], n)
    fa = pa.array(f, mask=rng.random(n) < 0.1)
    t = pa.table({"s": s, "i": i, "f": fa})
    # one row per key, as a partial table has
    con = duckdb.connect()
    con.register("t", t)
    keyed = con.sql("SELECT s, i, f, count(*)::BIGINT AS c FROM t GROUP BY ALL").to_arrow_table()
    con.close()
    return keyed


def _ipc_roundtrip(t: pa.Table) -> pa.Table:
    """A table as a node receives it over Flight: read back from IPC bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


@pytest.mark.parametrize("seed", range(5))
def test_union_and_align_match_duckdb(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [_ipc_roundtrip(_random_partial(rng, int(rng.integers(0, 60)))) for _ in range(3)]
    keys = ["s", "i", "f"]
    union = L.union_keys(parts, keys)
    con = duckdb.connect()
    for j, p in enumerate(parts):
        con.register(f"p{j}", p)
    oracle = con.sql(
        "SELECT DISTINCT s, i, f FROM (SELECT s, i, f FROM p0 UNION ALL SELECT s, i, f FROM p1 UNION ALL "
        "SELECT s, i, f FROM p2) ORDER BY s NULLS LAST, i NULLS LAST, f NULLS LAST").to_arrow_table()
    got = union.to_pylist()
    want = oracle.to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["s"] == w["s"] and g["i"] == w["i"]
        assert (g["f"] is None and w["f"] is None) or (np.isnan(g["f"]) and np.isnan(w["f"])) or g["f"] == w["f"]
    con.register("u", union)
    for j, p in enumerate(parts):
        aligned = L.align(p, union, keys)
        want_c = con.sql(
            f"SELECT p.c FROM (SELECT *, row_number() OVER () AS r FROM u) u LEFT JOIN p{j} p "
            "ON u.s IS NOT DISTINCT FROM p.s AND u.i IS NOT DISTINCT FROM p.i AND u.f IS NOT DISTINCT FROM p.f "
            "ORDER BY u.r").to_arrow_table().column("c").to_pylist()
        assert aligned.column("c").to_pylist() == want_c
        assert sum(c for c in want_c if c is not None) == sum(p.column("c").to_pylist())


def test_align_refuses_duplicate_keys_and_mismatched_types() -> None:
    t = pa.table({"k": ["a", "a"], "v": [1, 2]})
    with pytest.raises(CombineError, match="duplicate group keys"):
        L.align(t, pa.table({"k": ["a"]}), ["k"])
    with pytest.raises(CombineError, match="do not agree"):
        L.union_keys([pa.table({"k": ["a"]}), pa.table({"k": [1]})], ["k"])
    with pytest.raises(CombineError, match="cannot align"):
        L.align(pa.table({"k": [1], "v": [1]}), pa.table({"k": ["a"]}), ["k"])


def test_align_absent_node_and_keyless() -> None:
    union = pa.table({"k": ["a", "b"]})
    empty = pa.table({"k": pa.array([], pa.string()), "v": pa.array([], pa.int64())})
    assert L.align(empty, union, ["k"]).column("v").to_pylist() == [None, None]
    assert L.align(pa.table({"v": pa.array([], pa.int64())}), pa.table({}), []).column("v").to_pylist() == [None]


def test_concurrent_alignment_of_received_tables() -> None:
    """Node threads align tables received over Flight at the same time (Acero crashed here)."""
    rng = np.random.default_rng(7)
    parts = [_ipc_roundtrip(_random_partial(rng, 200)) for _ in range(8)]
    keys = ["s", "i", "f"]
    union = L.union_keys(parts, keys)
    errors: list[BaseException] = []
    totals: list[int] = []

    def work(p: pa.Table) -> None:
        try:
            for _ in range(30):
                a = L.align(p, _ipc_roundtrip(union), keys)
            totals.append(sum(c for c in a.column("c").to_pylist() if c is not None))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(totals) == sorted(sum(p.column("c").to_pylist()) for p in parts)


def test_group_rows_lists_each_keys_rows() -> None:
    t = pa.table({"g": ["x", None, "x", "y", None], "sidx": [4, 1, 2, 3, 0]})
    keys, rows = group_rows(t, ["g"])
    assert keys.column("g").to_pylist() == ["x", "y", None]
    assert [sorted(t.column("sidx").take(pa.array(r)).to_pylist()) for r in rows] == [[2, 4], [3], [0, 1]]
