"""genofed.genomics.plots: λ_GC, the four plots on synthetic data, save(), and input errors."""

from __future__ import annotations

import ast
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import stats

from genofed.genomics import plots

# --------------------------------------------------------------------------------------------
# helpers and data


def _by_gid(fig_or_ax, gid: str) -> list:
    return [a for a in fig_or_ax.findobj() if a.get_gid() == gid]


def _n_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


class _ResultLike:
    """Stands in for genofed.api.Result: only .to_pandas()."""

    def __init__(self, df: pd.DataFrame):
        self._df = df

    def to_pandas(self) -> pd.DataFrame:
        return self._df


class _ArrowOnly:
    def __init__(self, table: pa.Table):
        self._t = table

    def to_arrow(self) -> pa.Table:
        return self._t


@pytest.fixture(scope="module")
def gwas() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    parts = []
    for c in ["chr10", "chr2", "chrX", "chr1"]:  # deliberately out of natural order
        n = 50
        parts.append(
            pd.DataFrame(
                {
                    "chrom": c,
                    "pos": np.sort(rng.integers(10_000, 5_000_000, n)),
                    "p": rng.uniform(size=n),
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    df["variant_id"] = [f"rs{i}" for i in range(len(df))]
    df.loc[3, "p"] = 1e-12  # strongest finite
    df.loc[60, "p"] = 0.0  # underflow: clipped to the strongest finite
    df.loc[120, "p"] = 2e-9
    return df


# --------------------------------------------------------------------------------------------
# genomic inflation


def test_lambda_matches_direct_computation():
    p = np.random.default_rng(1).uniform(size=1001)
    direct = np.median(stats.chi2.isf(p, 1)) / stats.chi2.ppf(0.5, 1)
    assert plots.genomic_inflation(p) == pytest.approx(direct, rel=1e-12)
    assert stats.chi2.ppf(0.5, 1) == pytest.approx(0.4549364, abs=1e-7)


def test_lambda_uniform_is_one():
    p = np.random.default_rng(2).uniform(size=20_000)
    assert abs(plots.genomic_inflation(p) - 1.0) < 0.05


def test_lambda_inflated_chi2():
    chi = np.random.default_rng(3).chisquare(1, size=20_000) * 1.2
    p = stats.chi2.sf(chi, 1)
    assert plots.genomic_inflation(p) == pytest.approx(1.2, abs=0.05)


def test_lambda_ignores_invalid_values():
    # only 0.5 is valid: λ = chi2.isf(0.5) / chi2.ppf(0.5) = 1
    assert plots.genomic_inflation([0.5, None, float("nan"), 0.0, 1.5, -0.1]) == pytest.approx(1.0)
    arr = pa.chunked_array([[0.5, None], [0.5]])
    assert plots.genomic_inflation(arr) == pytest.approx(1.0)
    assert plots.genomic_inflation(pd.Series([0.5, None, 1.0], dtype="Float64")) == pytest.approx(
        np.median(stats.chi2.isf([0.5, 1.0], 1)) / stats.chi2.ppf(0.5, 1)
    )


@pytest.mark.parametrize("bad", [[], [None, float("nan")], [0.0, 2.0]])
def test_lambda_without_valid_p_raises(bad):
    with pytest.raises(ValueError, match=r"at least one p-value in \(0, 1\]"):
        plots.genomic_inflation(bad)


# --------------------------------------------------------------------------------------------
# Manhattan


def test_manhattan_points_lines_and_chromosome_order(gwas):
    fig = plots.manhattan(pa.Table.from_pandas(gwas), title="GWAS")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert _n_points(ax) == len(gwas)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "10", "X"]
    ys = {line.get_gid(): line.get_ydata()[0] for line in ax.get_lines()}
    assert ys["manhattan-genome-wide"] == pytest.approx(-math.log10(5e-8))
    assert ys["manhattan-suggestive"] == pytest.approx(5.0)
    assert ax.get_title() == "GWAS"
    # chromosomes occupy disjoint, naturally ordered x ranges
    (pts,) = _by_gid(ax, "manhattan-points")
    assert len(pts.get_offsets()) == len(gwas) - 1
    # p == 0 is drawn at the largest finite -log10 p with its own marker
    (clipped,) = _by_gid(ax, "manhattan-points-clipped")
    assert clipped.get_offsets()[:, 1].tolist() == pytest.approx([12.0])
    assert ax.get_ylim()[1] > 12.0


def test_manhattan_x_layout_is_natural(gwas):
    ax = plots.manhattan(gwas, suggestive=None, threshold=None).axes[0]
    assert not ax.get_lines()
    (pts,) = _by_gid(ax, "manhattan-points")
    rows = gwas.drop(index=60)  # the p == 0 row is drawn separately
    x = pd.Series(pts.get_offsets()[:, 0], index=rows.index)
    ranges = x.groupby(rows.chrom).agg(["min", "max"]).loc[["chr1", "chr2", "chr10", "chrX"]]
    # chromosome blocks are disjoint and laid out left to right in natural order
    assert (ranges["max"].to_numpy()[:-1] < ranges["min"].to_numpy()[1:]).all()
    ticks = ax.get_xticks()
    # ticks at chromosome centres
    assert ((ranges["min"] <= ticks) & (ticks <= ranges["max"])).all()


def test_manhattan_highlight_and_inputs(gwas):
    for data in (gwas, _ResultLike(gwas), _ArrowOnly(pa.Table.from_pandas(gwas))):
        ax = plots.manhattan(data, highlight=["rs120", "rs60", "not-there"]).axes[0]
        assert _n_points(ax) == len(gwas)
        (hl,) = _by_gid(ax, "manhattan-highlight")
        (hl0,) = _by_gid(ax, "manhattan-highlight-clipped")
        assert len(hl.get_offsets()) == 1 and len(hl0.get_offsets()) == 1
        assert hl.get_offsets()[0, 1] == pytest.approx(-math.log10(2e-9))
        assert not _by_gid(ax, "manhattan-points-clipped")  # the clipped one is the highlighted one
    # a single string is one variant_id, not its characters
    ax = plots.manhattan(gwas, highlight="rs120").axes[0]
    assert len(_by_gid(ax, "manhattan-highlight")[0].get_offsets()) == 1


def test_manhattan_drops_invalid_rows_and_single_chromosome():
    df = pd.DataFrame(
        {
            "chrom": ["22", "22", "22", None, "22"],
            "pos": [16_000_000, 17_000_000, None, 18_000_000, 19_500_000],
            "p": [0.01, float("nan"), 0.5, 0.5, 1e-9],
        }
    )
    ax = plots.manhattan(df).axes[0]
    assert _n_points(ax) == 2
    assert "chromosome 22 (Mb)" in ax.get_xlabel()
    assert sorted(ax.collections[0].get_offsets()[:, 0].tolist()) == pytest.approx([16.0, 19.5])


def test_manhattan_draws_into_given_axes(gwas):
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plots.manhattan(gwas, ax=ax2) is fig
    assert _n_points(ax2) == len(gwas) and _n_points(ax1) == 0
    sub = Figure().subfigures(1, 2)[1]
    assert isinstance(plots.qq(gwas, ax=sub.add_subplot()), Figure)


# --------------------------------------------------------------------------------------------
# QQ


def test_qq_points_band_and_lambda(gwas):
    fig = plots.qq(gwas, title="QQ")
    ax = fig.axes[0]
    assert _n_points(ax) == len(gwas)
    assert len(_by_gid(ax, "qq-ci")) == 1 and isinstance(_by_gid(ax, "qq-ci")[0], PolyCollection)
    (diag,) = _by_gid(ax, "qq-diagonal")
    assert diag.get_xdata()[0] == 0 and diag.get_ydata()[-1] == diag.get_xdata()[-1]
    (text,) = _by_gid(ax, "qq-lambda")
    assert text.get_text() == f"λ = {plots.genomic_inflation(gwas.p):.3f}"
    # observed vs expected: the i-th smallest p against i / (n + 1)
    pts = _by_gid(ax, "qq-points")[0].get_offsets()
    n = len(gwas)
    # rank 1 is the clipped p == 0, drawn separately
    assert pts[:, 0].max() == pytest.approx(-math.log10(2 / (n + 1)))
    assert pts[:, 1].max() == pytest.approx(12.0)


def test_qq_band_is_beta_order_statistics():
    p = np.random.default_rng(5).uniform(size=300)
    ax = plots.qq(pd.DataFrame({"p": p}), ci=True).axes[0]
    verts = _by_gid(ax, "qq-ci")[0].get_paths()[0].vertices
    # at rank 1 (largest expected) the band spans Beta(1, n) quantiles
    x1 = -math.log10(1 / 301)
    at = verts[np.isclose(verts[:, 0], x1), 1]
    want = sorted(
        [-math.log10(stats.beta.ppf(0.975, 1, 300)), -math.log10(stats.beta.ppf(0.025, 1, 300))]
    )
    assert sorted(set(np.round(at, 9))) == pytest.approx(want)
    assert not _by_gid(plots.qq(pd.DataFrame({"p": p}), ci=False), "qq-ci")


def test_qq_band_thinned_for_large_n():
    e, lo, hi = plots._qq_band(100_000)
    assert len(e) < 3000 and e.max() == pytest.approx(-math.log10(1 / 100_001))
    assert (lo <= e + 1e-9).all() and (hi >= e - 1e-9).all()


# --------------------------------------------------------------------------------------------
# PCA


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    rows = []
    for g, (mx, my) in {"EUR": (-1.0, 2.0), "AFR": (3.0, 0.0), "EAS": (-1.0, -2.0)}.items():
        for i, (dx, dy) in enumerate([(-0.2, 0), (0.2, 0), (0, 0.2)]):
            rows.append({"super_pop": g, "pc1": mx + dx, "pc2": my + dy, "n": 10 * (i + 1)})
    return pd.DataFrame(rows)


def test_pca_binned_cells(cells):
    fig = plots.pca_scatter(pa.Table.from_pandas(cells), group="super_pop", count="n", title="PCA")
    ax = fig.axes[0]
    colls = _by_gid(ax, "pca-cells")
    assert len(colls) == 3 and _n_points(ax) == len(cells)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AFR", "EAS", "EUR"]
    assert len({tuple(c.get_facecolor()[0]) for c in colls}) == 3
    sizes = np.concatenate([c.get_sizes() for c in colls])
    assert sizes.max() / sizes.min() == pytest.approx(3.0)  # area proportional to count (30 / 10)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1", "PC2")
    assert not [p for p in ax.patches if isinstance(p, Ellipse)]


def test_pca_centroids_with_sd_ellipses():
    cent = pd.DataFrame(
        {
            "super_pop": ["AFR", "EUR", "EAS"],
            "PC_3": [3.0, -1.0, -1.0],
            "pc4": [0.0, 2.0, -2.0],
            "PC_3_sd": [0.5, 0.4, 0.3],
            "pc4_sd": [0.2, 0.2, 0.2],
        }
    )
    ax = plots.pca_scatter(_ResultLike(cent), x="PC_3", y="pc4", group="super_pop").axes[0]
    assert sorted(a.get_text() for a in _by_gid(ax, "pca-label")) == ["AFR", "EAS", "EUR"]
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    afr = next(e for e in ellipses if e.center[0] == 3.0)
    assert (afr.width, afr.height) == (1.0, 0.4)  # 2 × SD
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC3", "PC4")
    assert ax.get_xlim()[1] >= 3.5  # ellipses are inside the view


def test_pca_without_group_and_drops_empty_cells(cells):
    df = cells.assign(n=[0] + cells.n.tolist()[1:])
    ax = plots.pca_scatter(df, count="n").axes[0]
    assert _n_points(ax) == len(cells) - 1
    assert ax.get_legend() is None


# --------------------------------------------------------------------------------------------
# LD decay


def _ld_pairs(n: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1_000_000, n)
    d = rng.integers(0, 100_000, n)
    r2 = np.clip(np.exp(-d / 20_000) + rng.normal(0, 0.05, n), 0, 1)
    b = np.where(rng.uniform(size=n) < 0.5, a + d, a - d)  # either order
    return pd.DataFrame({"pos_a": a, "pos_b": b, "r2": r2})


def test_ld_decay_bins_means_and_scatter():
    df = _ld_pairs(2000)
    ax = plots.ld_decay(df, bins=10, title="LD").axes[0]
    (line,) = _by_gid(ax, "ld-mean")
    d = (df.pos_b - df.pos_a).abs()
    edges = np.linspace(0, d.max(), 11)
    idx = np.clip(np.digitize(d, edges) - 1, 0, 9)
    want = df.r2.groupby(idx).mean()
    assert line.get_ydata() == pytest.approx(want.to_numpy())
    assert line.get_xdata() == pytest.approx(((edges[:-1] + edges[1:]) / 2 / 1e3)[want.index])
    assert len(_by_gid(ax, "ld-pairs")[0].get_offsets()) == len(df)
    assert "kb" in ax.get_xlabel()
    assert line.get_marker() == "o"


def test_ld_decay_distance_column_max_distance_and_no_scatter_when_large():
    df = _ld_pairs(50_000)  # about 25,000 pairs within 50 kb
    df["dist"] = (df.pos_b - df.pos_a).abs()
    ax = plots.ld_decay(df[["dist", "r2"]], distance="dist", max_distance=50_000, bins=5).axes[0]
    (line,) = _by_gid(ax, "ld-mean")
    assert line.get_xdata() == pytest.approx([5, 15, 25, 35, 45])
    assert not _by_gid(ax, "ld-pairs")
    assert ax.get_xlim() == pytest.approx((0, 50))


# --------------------------------------------------------------------------------------------
# save


def test_save_png_svg_pdf(tmp_path, gwas):
    fig = plots.qq(gwas)
    png = plots.save(fig, tmp_path / "a" / "b" / "qq.png")  # parent dirs are created
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plots.save(fig, tmp_path / "qq.SVG")
    assert "<svg" in svg.read_text()
    assert plots.save(fig, str(tmp_path / "qq.pdf")).read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "qq.SVG", "qq.pdf"]


def test_save_rejects_other_suffixes(tmp_path, gwas):
    fig = plots.qq(gwas)
    for name in ("qq.txt", "qq"):
        with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf"):
            plots.save(fig, tmp_path / "sub" / name)
    assert list(tmp_path.iterdir()) == []


def test_save_failure_leaves_no_partial_file(tmp_path, gwas, monkeypatch):
    fig = plots.qq(gwas)
    target = tmp_path / "qq.png"
    target.write_bytes(b"old")

    def broken(fh, **kwargs):
        fh.write(b"half")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plots.save(fig, target)
    assert [p.name for p in tmp_path.iterdir()] == ["qq.png"]  # no temp file left behind
    assert target.read_bytes() == b"old"


def test_plots_in_threads(tmp_path, gwas, cells):
    jobs = [
        lambda i: plots.manhattan(gwas),
        lambda i: plots.qq(gwas),
        lambda i: plots.pca_scatter(cells, group="super_pop", count="n"),
        lambda i: plots.ld_decay(_ld_pairs(500, seed=i)),
    ] * 2

    def run(i):
        return plots.save(jobs[i](i), tmp_path / f"{i}.png")

    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(run, range(len(jobs))))
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out)


def test_no_pyplot_import():
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {
        f"{n.module}.{a.name}"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    assert not {m for m in imported if "pyplot" in m}, "plots must not use pyplot global state"


# --------------------------------------------------------------------------------------------
# errors and the CLI mapping


def test_plots_mapping():
    expected = {
        "manhattan": plots.manhattan,
        "qq": plots.qq,
        "pca": plots.pca_scatter,
        "ld-decay": plots.ld_decay,
    }
    assert expected == plots.PLOTS


def test_missing_column_message():
    df = pd.DataFrame({"chrom": ["1"], "pos": [1], "beta": [0.1]})
    with pytest.raises(ValueError) as err:
        plots.manhattan(df)
    assert str(err.value) == "manhattan needs column 'p'; the table has: chrom, pos, beta"
    with pytest.raises(ValueError, match="needs column 'variant_id'"):
        plots.manhattan(df.assign(p=0.1), highlight=["x"])


@pytest.mark.parametrize(
    ("fn", "kwargs", "missing"),
    [
        (plots.manhattan, {}, "'pos'"),
        (plots.qq, {"p": "pval"}, "'pval'"),
        (plots.pca_scatter, {"group": "super_pop"}, "'pc2', 'super_pop'"),
        (plots.ld_decay, {}, "'pos_a', 'pos_b', 'r2'"),
        (plots.ld_decay, {"distance": "d"}, "'d', 'r2'"),
    ],
)
def test_missing_columns(fn, kwargs, missing):
    table = pa.table({"chrom": ["1"], "p": [0.5], "pc1": [0.1]})
    with pytest.raises(ValueError, match=f"needs columns? {missing}; the table has: chrom, p, pc1"):
        fn(table, **kwargs)


@pytest.mark.parametrize(
    ("fn", "columns"),
    [
        (plots.manhattan, ["chrom", "pos", "p"]),
        (plots.qq, ["p"]),
        (plots.pca_scatter, ["pc1", "pc2"]),
        (plots.ld_decay, ["pos_a", "pos_b", "r2"]),
    ],
)
def test_empty_input(fn, columns):
    arrow = pa.table({c: pa.array([], pa.float64()) for c in columns})
    for data in (arrow, arrow.to_pandas(), _ResultLike(arrow.to_pandas())):
        with pytest.raises(ValueError, match="no rows to plot"):
            fn(data)
    nulls = pa.table({c: pa.array([None, None], pa.float64()) for c in columns})
    with pytest.raises(ValueError, match="no rows to plot"):
        fn(nulls)


def test_bad_arguments(gwas):
    with pytest.raises(ValueError, match="threshold"):
        plots.manhattan(gwas, threshold=5)
    with pytest.raises(ValueError, match="bins"):
        plots.ld_decay(_ld_pairs(10), bins=0)
    with pytest.raises(TypeError, match="pyarrow Table"):
        plots.qq(42)
    with pytest.raises(ValueError, match="no numeric values"):
        plots.qq(pd.DataFrame({"p": ["a", "b"]}))
