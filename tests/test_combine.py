"""The plain combiner: aligned parts are added column by column; anything else is hashed by key.
Both paths must give the same groups and values (and so must a node's partials in any order)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genofed.engine.combine import PlainCombiner
from genofed.engine.planner import PartialSpec
from genofed.engine.protocol import N_COLUMN, SUPPRESSED_COLUMN

PARTIALS = [PartialSpec("_p0", "sum"), PartialSpec("_p1", "sum"), PartialSpec("_p2", "min"), PartialSpec("_p3", "max")]


def part(seed: int, n: int = 50) -> pa.Table:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    return pa.table({
        "_k0": pa.array([f"v{i}" for i in range(n)]),
        "_k1": pa.array(["EUR" if i % 3 else None for i in range(n)]),
        "_p0": pa.array(rng.integers(0, 100, n), mask=rng.random(n) < 0.2),
        "_p1": pa.array(s, mask=rng.random(n) < 0.2),
        "_p2": pa.array(rng.integers(-5, 5, n)),
        "_p3": pa.array(rng.normal(size=n)),
        N_COLUMN: pa.array(rng.integers(0, 20, n)),
        SUPPRESSED_COLUMN: pa.array(rng.random(n) < 0.1),
    })


def canon(t: pa.Table) -> list[dict]:
    rows = t.to_pylist()
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                r[k] = round(v, 9)
    return sorted(rows, key=lambda r: (r["_k0"], r["_k1"] or ""))


def test_aligned_and_hashed_paths_agree():
    parts = {f"n{i}": part(i) for i in range(3)}
    aligned = PlainCombiner().combine(parts, ["_k0", "_k1"], PARTIALS)
    shuffled = {k: t.take(pa.array(np.random.default_rng(7 + i).permutation(t.num_rows))) for i, (k, t) in enumerate(parts.items())}
    hashed = PlainCombiner().combine(shuffled, ["_k0", "_k1"], PARTIALS)
    assert canon(aligned) == canon(hashed)
    # a sum is NULL only where every node's partial is NULL
    p0 = [t.column("_p0").is_null().to_numpy(zero_copy_only=False) for t in parts.values()]
    assert (aligned.column("_p0").is_null().to_numpy(zero_copy_only=False) == np.logical_and.reduce(p0)).all()


def test_groups_missing_at_one_node_are_hashed():
    a, b = part(1), part(2).slice(0, 30)
    out = PlainCombiner().combine({"a": a, "b": b}, ["_k0", "_k1"], PARTIALS)
    assert out.num_rows == 50


def test_combine_modes_are_plugins_and_the_engine_imports_no_privacy_module():
    """mpc and he are found through the genofed.combiners entry points; plain is the engine's own.
    Importing the coordinator and planning a query pull in no genofed.privacy module."""
    import subprocess
    import sys

    from genofed.engine.combine import Combiner, PlainCombiner, combiner, register
    from genofed.engine.errors import CombineError

    assert isinstance(combiner("plain"), PlainCombiner)
    assert type(combiner("mpc")).__module__ == "genofed.privacy.secure.mpc"
    assert type(combiner("he")).__module__ == "genofed.privacy.secure.he"
    with pytest.raises(CombineError, match="unknown combine mode 'nosuch'; choose he, mpc, plain"):
        combiner("nosuch")

    class Echo(Combiner):
        mode = "echo-test"

        def run(self, rnd):
            return rnd

    from genofed.engine import combine as C

    register(Echo())
    try:
        assert combiner("echo-test").run("x") == "x"
    finally:
        C._REGISTRY.pop("echo-test", None)

    code = ("import sys; import genofed.engine.coordinator, genofed.engine.planner, genofed.engine.tablefunc; "
            "bad = sorted(m for m in sys.modules if m.startswith('genofed.privacy')); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
