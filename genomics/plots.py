"""Plots of federated genomic results: Manhattan, QQ, PCA (aggregated) and LD decay.

Every plotting function accepts a :class:`pyarrow.Table`, a :class:`pandas.DataFrame`, or any
object with ``.to_arrow()`` / ``.to_pandas()`` (a :class:`genofed.api.Result`, a polars frame), and
returns a :class:`matplotlib.figure.Figure`. Figures are built with the object-oriented API
(``matplotlib.figure.Figure`` directly, never ``pyplot``), so the functions work headless, in
threads and without touching the global backend. Pass ``ax=`` to draw into an existing Axes; the
function then returns that Axes' figure.

Examples
--------
>>> from genofed.genomics import plots
>>> r = fed.sql("SELECT variant_id, chrom, pos, p FROM gwas")  # doctest: +SKIP
>>> plots.save(plots.manhattan(r), "out/manhattan.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import stats

__all__ = ["PLOTS", "genomic_inflation", "ld_decay", "manhattan", "pca_scatter", "qq", "save"]

# median of the chi-square distribution with one degree of freedom (0.4549364...)
_CHI2_MEDIAN = float(stats.chi2.ppf(0.5, 1))

_MANHATTAN_COLOURS = ("#1f4e8c", "#79a6d9")
_HIGHLIGHT_COLOUR = "#e6550d"
_THRESHOLD_COLOUR = "#b2182b"
_SUGGESTIVE_COLOUR = "#4d4d4d"
_PAIRS_SCATTER_MAX = 20_000  # ld_decay draws the individual pairs only below this many
_RASTERIZE_ABOVE = 20_000  # points drawn as a raster inside SVG/PDF above this many
_SAVE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


# --------------------------------------------------------------------------------------------
# input handling


def _frame(
    data: Any, fname: str, required: Iterable[str], optional: Iterable[str] = ()
) -> pd.DataFrame:
    """The needed columns of ``data`` as a DataFrame.

    Raises ValueError naming the missing column(s) and the available ones, or when there are
    no rows.
    """
    required = list(dict.fromkeys(required))
    wanted = required + [c for c in dict.fromkeys(optional) if c not in required]
    if isinstance(data, pd.DataFrame):
        columns = [str(c) for c in data.columns]
        table: pa.Table | None = None
    else:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if not isinstance(data, pa.Table) and hasattr(data, "to_arrow"):
            data = data.to_arrow()
            if isinstance(data, pa.RecordBatch):
                data = pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            table = data
            columns = list(table.column_names)
        elif hasattr(data, "to_pandas"):
            data = data.to_pandas()
            columns = [str(c) for c in data.columns]
            table = None
        elif isinstance(data, Mapping):
            data = pd.DataFrame(data)
            columns = [str(c) for c in data.columns]
            table = None
        else:
            raise TypeError(
                f"{fname} needs a pyarrow Table, a pandas DataFrame or an object with "
                f".to_arrow()/.to_pandas(); got {type(data).__name__}"
            )
    missing = [c for c in required if c not in columns]
    if missing:
        have = ", ".join(columns) if columns else "(no columns)"
        what = "column" if len(missing) == 1 else "columns"
        raise ValueError(
            f"{fname} needs {what} {', '.join(repr(c) for c in missing)}; the table has: {have}"
        )
    present = [c for c in wanted if c in columns]
    if table is not None:
        if table.num_rows == 0:
            raise ValueError(f"{fname}: no rows to plot (the table is empty)")
        return table.select(present).to_pandas()
    df = data
    if len(df) == 0:
        raise ValueError(f"{fname}: no rows to plot (the table is empty)")
    df = df.rename(columns={c: str(c) for c in df.columns if not isinstance(c, str)})
    return df.loc[:, present].reset_index(drop=True)


def _numeric(values: Any, fname: str = "", column: str = "") -> np.ndarray:
    """Values as a float64 array: nulls, NaN and non-numeric entries become NaN."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_pandas()
    if not isinstance(values, pd.Series):
        values = pd.Series(
            np.asarray(values, dtype=object).ravel()
            if not isinstance(values, np.ndarray)
            else values.ravel()
        )
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if column and len(out) and np.isnan(out).all() and values.notna().any():
        raise ValueError(f"{fname}: column {column!r} has no numeric values (dtype {values.dtype})")
    return out


def _no_rows(fname: str, n: int, what: str) -> ValueError:
    return ValueError(f"{fname}: no rows to plot (all {n:,} rows have a missing or invalid {what})")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return _root_figure(ax), ax


def _root_figure(ax: Axes) -> Figure:
    fig: Any
    try:
        fig = ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10: .figure is already the root figure
        fig = ax.figure
    if not isinstance(fig, Figure):
        raise ValueError("ax is not part of a figure")
    return fig


def _finish(ax: Axes, title: str | None) -> None:
    if title:
        ax.set_title(title)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _check_level(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a p-value in (0, 1) or None; got {value!r}")
    return value


def _fmt_p(p: float) -> str:
    return f"{p:.0e}".replace("e-0", "e-") if p < 1e-3 else f"{p:g}"


# --------------------------------------------------------------------------------------------
# genomic inflation


def genomic_inflation(p: Any) -> float:
    """Genomic inflation factor λ_GC of a set of p-values.

    λ_GC = median(χ²₁ quantile of 1 − p) / median(χ²₁) where median(χ²₁) ≈ 0.4549364.

    Parameters
    ----------
    p
        p-values: a list, numpy array, pandas Series or pyarrow array. NaN, None and values
        outside (0, 1] are ignored.

    Returns
    -------
    float
        λ_GC; about 1 for well-calibrated null p-values, above 1 under inflation.

    Raises
    ------
    ValueError
        If no p-value lies in (0, 1].

    Examples
    --------
    >>> round(genomic_inflation([0.5]), 6)
    1.0
    """
    values = _numeric(p)
    valid = values[np.isfinite(values) & (values > 0.0) & (values <= 1.0)]
    if valid.size == 0:
        raise ValueError(
            "genomic_inflation needs at least one p-value in (0, 1]; "
            f"got {values.size:,} values and none is valid"
        )
    return float(np.median(stats.chi2.isf(valid, 1)) / _CHI2_MEDIAN)


# --------------------------------------------------------------------------------------------
# Manhattan


_SEX_MITO = {"X": 0, "Y": 1, "XY": 2, "MT": 3}


def _chrom_name(value: Any) -> str:
    """Normalised chromosome label: 'chr1' -> '1', 1.0 -> '1', 'chrM' -> 'MT', 'x' -> 'X'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    name = str(value).strip()
    if name[:3].lower() == "chr":
        name = name[3:]
    upper = name.upper()
    if upper in ("M", "MT"):
        return "MT"
    if upper in ("X", "Y", "XY"):
        return upper
    return name


def _chrom_key(name: str) -> tuple[int, int, str]:
    """Natural order: 1..22 (numerically), then X, Y, XY, MT, then anything else alphabetically."""
    if name.isdigit():
        return (0, int(name), "")
    if name in _SEX_MITO:
        return (1, _SEX_MITO[name], "")
    return (2, 0, name)


def _layout_chromosomes(
    chrom: pd.Series, pos: np.ndarray
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, bool]:
    """Genome-wide x coordinates for (chrom, pos).

    Returns x, the chromosome labels in plot order, each row's chromosome rank, the tick
    positions (chromosome centres) and whether there is a single chromosome (x is then in Mb).
    """
    codes, uniques = pd.factorize(chrom.astype(object))
    names = [_chrom_name(u) for u in np.asarray(uniques, dtype=object)]
    labels = sorted(set(names), key=_chrom_key)
    rank_of = {name: i for i, name in enumerate(labels)}
    rank = np.array([rank_of[n] for n in names], dtype=np.int64)[codes]
    if len(labels) == 1:
        x = pos / 1e6
        return x, labels, rank, np.array([float(np.median(x))]), True
    lo = np.full(len(labels), np.inf)
    hi = np.full(len(labels), -np.inf)
    np.minimum.at(lo, rank, pos)
    np.maximum.at(hi, rank, pos)
    span = hi - lo
    gap = max(float(span.sum()) * 0.01, 1.0)
    offsets = np.concatenate([[0.0], np.cumsum(span + gap)[:-1]])
    x = offsets[rank] + (pos - lo[rank])
    return x, labels, rank, offsets + span / 2.0, False


def manhattan(
    data: Any,
    *,
    p: str = "p",
    chrom: str = "chrom",
    pos: str = "pos",
    threshold: float | None = 5e-8,
    suggestive: float | None = 1e-5,
    title: str | None = None,
    ax: Axes | None = None,
    highlight: Iterable[Any] | None = None,
) -> Figure:
    """Manhattan plot: −log10 p along the genome.

    Chromosomes are ordered naturally (1..22, X, Y, XY, MT; a ``chr`` prefix is ignored) and
    drawn in alternating colours with x ticks at their centres. With a single chromosome the x
    axis is the position in Mb instead. Rows with a missing chromosome, position or p, or p
    outside [0, 1], are left out. p == 0 (underflow) is plotted at the largest finite −log10 p
    with a triangle marker.

    Parameters
    ----------
    data
        Arrow table, pandas DataFrame, or an object with ``.to_arrow()`` / ``.to_pandas()``.
    p, chrom, pos
        Column names of the p-value, chromosome and base-pair position.
    threshold
        Genome-wide significance level drawn as a dashed line (None: no line).
    suggestive
        Suggestive significance level drawn as a dotted line (None: no line).
    title
        Axes title.
    ax
        Draw into this Axes instead of a new figure.
    highlight
        variant_ids (matched against the ``variant_id`` column) drawn in a distinct colour.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a column is missing, there are no rows to plot, or a level is not in (0, 1).
    """
    fname = "manhattan"
    threshold = _check_level("threshold", threshold)
    suggestive = _check_level("suggestive", suggestive)
    if isinstance(highlight, str | bytes):
        highlight = [highlight]
    needed = [p, chrom, pos] + (["variant_id"] if highlight is not None else [])
    df = _frame(data, fname, needed)
    n_in = len(df)
    pv = _numeric(df[p], fname, p)
    bp = _numeric(df[pos], fname, pos)
    keep = (
        np.isfinite(pv) & (pv >= 0.0) & (pv <= 1.0) & np.isfinite(bp) & df[chrom].notna().to_numpy()
    )
    if not keep.any():
        raise _no_rows(fname, n_in, f"{chrom}, {pos} or {p}")
    df, pv, bp = df.loc[keep].reset_index(drop=True), pv[keep], bp[keep]

    x, labels, rank, ticks, single = _layout_chromosomes(df[chrom], bp)
    clipped = pv == 0.0
    y = np.empty_like(pv)
    y[~clipped] = -np.log10(pv[~clipped])
    finite_max = float(y[~clipped].max()) if (~clipped).any() else None
    if finite_max is None or finite_max <= 0.0:  # everything is p == 0 (or p == 1)
        finite_max = max(finite_max or 0.0, -math.log10(threshold) if threshold else 10.0)
    y[clipped] = finite_max
    hl = (
        df["variant_id"].isin(list(highlight)).to_numpy()
        if highlight is not None
        else np.zeros(len(df), bool)
    )

    fig, ax = _axes(ax, (12.0, 4.5))
    colours = to_rgba_array(_MANHATTAN_COLOURS)[rank % 2]  # RGBA rows: fast for millions of points
    n = len(df)
    size = 8.0 if n <= 10_000 else 3.0
    raster = n > _RASTERIZE_ABOVE
    groups = [
        (~clipped & ~hl, "o", None, "_points"),
        (clipped & ~hl, "^", None, f"p = 0 (drawn at {finite_max:.1f})"),
        (~clipped & hl, "o", _HIGHLIGHT_COLOUR, "highlighted"),
        (clipped & hl, "^", _HIGHLIGHT_COLOUR, "highlighted, p = 0"),
    ]
    for sel, marker, colour, label in groups:
        if not sel.any():
            continue
        big = colour is not None or marker == "^"
        coll = ax.scatter(
            x[sel],
            y[sel],
            s=size * (3.0 if big else 1.0),
            c=colour if colour else colours[sel],
            marker=marker,
            linewidths=0.4 if big else 0.0,
            edgecolors="black" if big else "none",
            label=label,
            rasterized=raster,
            zorder=3 if big else 2,
        )
        coll.set_gid(
            f"manhattan-{'highlight' if colour else 'points'}{'-clipped' if marker == '^' else ''}"
        )
    for level, colour, style, what in (
        (threshold, _THRESHOLD_COLOUR, "--", "genome-wide"),
        (suggestive, _SUGGESTIVE_COLOUR, ":", "suggestive"),
    ):
        if level is not None:
            line = ax.axhline(
                -math.log10(level),
                color=colour,
                linestyle=style,
                linewidth=1.0,
                label=f"{what} (p = {_fmt_p(level)})",
                zorder=1,
            )
            line.set_gid(f"manhattan-{what}")

    top = max(
        finite_max,
        -math.log10(threshold) if threshold else 0.0,
        -math.log10(suggestive) if suggestive else 0.0,
    )
    ax.set_ylim(0.0, top * 1.08 + 0.5)
    ax.set_ylabel(r"$-\log_{10}(p)$")
    if single:
        ax.set_xlabel(f"Position on chromosome {labels[0]} (Mb)")
        ax.margins(x=0.01)
    else:
        ax.set_xticks(ticks, labels, fontsize=8 if len(labels) <= 25 else 6)
        ax.set_xlabel("Chromosome")
        ax.set_xlim(
            float(x.min()) - 0.01 * float(np.ptp(x) or 1.0),
            float(x.max()) + 0.01 * float(np.ptp(x) or 1.0),
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    _finish(ax, title)
    return fig


# --------------------------------------------------------------------------------------------
# QQ


def _qq_band(n: int, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected −log10 p and the 95% band of the i-th smallest of n uniform p-values.

    Evaluated at every rank up to ``max_points`` values, above that at a log-spaced subset of ranks
    (the band is smooth, and Beta quantiles for millions of ranks would be slow).
    """
    if n <= max_points:
        i = np.arange(1, n + 1, dtype=float)
    else:
        i = np.unique(
            np.concatenate([np.arange(1, 201), np.round(np.geomspace(1, n, max_points))])
        ).astype(float)
    b = n - i + 1.0
    expected = -np.log10(i / (n + 1.0))
    upper = -np.log10(stats.beta.ppf(0.025, i, b))
    lower = -np.log10(stats.beta.ppf(0.975, i, b))
    return expected, lower, upper


def qq(
    data: Any, *, p: str = "p", title: str | None = None, ax: Axes | None = None, ci: bool = True
) -> Figure:
    """QQ plot of observed against expected −log10 p, with λ_GC.

    Expected values are −log10(i / (n + 1)) for the i-th smallest of n p-values; the 95% band
    comes from the Beta(i, n − i + 1) distribution of uniform order statistics. p == 0 is drawn at
    the largest finite observed value with a triangle marker. λ_GC (:func:`genomic_inflation`) is
    written in the upper-left corner as ``λ = 1.023``.

    Parameters
    ----------
    data
        Arrow table, pandas DataFrame, or an object with ``.to_arrow()`` / ``.to_pandas()``.
    p
        Column name of the p-values; NaN, null and values outside [0, 1] are ignored.
    title
        Axes title.
    ax
        Draw into this Axes instead of a new figure.
    ci
        Draw the 95% confidence band.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the column is missing or there are no valid p-values.
    """
    fname = "qq"
    df = _frame(data, fname, [p])
    pv = _numeric(df[p], fname, p)
    pv = pv[np.isfinite(pv) & (pv >= 0.0) & (pv <= 1.0)]
    if pv.size == 0:
        raise _no_rows(fname, len(df), p)
    pv.sort()
    n = pv.size
    expected = -np.log10(np.arange(1, n + 1) / (n + 1.0))
    clipped = pv == 0.0
    observed = np.empty(n)
    observed[~clipped] = -np.log10(pv[~clipped])
    finite_max = float(observed[~clipped].max()) if (~clipped).any() else float(expected.max())
    observed[clipped] = finite_max
    lam = genomic_inflation(pv) if (pv > 0.0).any() else float("nan")

    fig, ax = _axes(ax, (5.5, 5.5))
    if ci:
        e, lo, hi = _qq_band(n)
        band = ax.fill_between(
            e, lo, hi, color="#bdbdbd", alpha=0.45, linewidth=0.0, label="95% CI", zorder=1
        )
        band.set_gid("qq-ci")
    top = max(float(expected.max()), float(observed.max()))
    diag = ax.plot(
        [0.0, top],
        [0.0, top],
        color="#636363",
        linewidth=1.0,
        linestyle="--",
        label="expected",
        zorder=2,
    )[0]
    diag.set_gid("qq-diagonal")
    raster = n > _RASTERIZE_ABOVE
    size = 10.0 if n <= 10_000 else 4.0
    pts = ax.scatter(
        expected[~clipped],
        observed[~clipped],
        s=size,
        color=_MANHATTAN_COLOURS[0],
        linewidths=0.0,
        label=f"observed (n = {n:,})",
        rasterized=raster,
        zorder=3,
    )
    pts.set_gid("qq-points")
    if clipped.any():
        cl = ax.scatter(
            expected[clipped],
            observed[clipped],
            s=size * 3,
            marker="^",
            color=_HIGHLIGHT_COLOUR,
            edgecolors="black",
            linewidths=0.4,
            label=f"p = 0 (drawn at {finite_max:.1f})",
            zorder=4,
        )
        cl.set_gid("qq-points-clipped")
    text = ax.text(
        0.04, 0.96, f"λ = {lam:.3f}", transform=ax.transAxes, ha="left", va="top", fontsize=10
    )
    text.set_gid("qq-lambda")
    ax.set_xlim(0.0, float(expected.max()) * 1.03)
    ax.set_ylim(0.0, top * 1.05)
    ax.set_xlabel(r"Expected $-\log_{10}(p)$")
    ax.set_ylabel(r"Observed $-\log_{10}(p)$")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    _finish(ax, title)
    return fig


# --------------------------------------------------------------------------------------------
# PCA


def _pc_label(column: str) -> str:
    """'pc1' -> 'PC1', 'PC_2_mean' -> 'PC2'; other names are returned unchanged."""
    m = re.fullmatch(
        r"(?i)(?:(?:mean|avg)_)?pc_?(\d+)(?:_(?:mean|avg|bin|centre|center|mid))?", column.strip()
    )
    return f"PC{int(m.group(1))}" if m else column


def _group_colours(groups: list[Any]) -> dict[Any, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {g: cmap(i % cmap.N) for i, g in enumerate(groups)}


def pca_scatter(
    data: Any,
    *,
    x: str = "pc1",
    y: str = "pc2",
    group: str | None = None,
    count: str | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Privacy-aware PCA scatter of aggregated principal components.

    Individual sample components never leave a biobank, so the input is aggregated, in one of two
    shapes:

    * binned cells (``count`` given): one row per (bin, group) with the bin centre in ``x`` / ``y``
      and the number of samples in ``count``; drawn with marker area proportional to the count.
      Small cells are expected to have been suppressed by the federation already.
    * centroids (``count`` None): one row per group, drawn as large markers labelled with the group.

    With ``group`` each group gets its own colour and a legend entry. If columns ``{x}_sd`` and
    ``{y}_sd`` exist, a 1-SD (axis-aligned) ellipse is drawn around each row.

    Parameters
    ----------
    data
        Arrow table, pandas DataFrame, or an object with ``.to_arrow()`` / ``.to_pandas()``.
    x, y
        Columns of the two components; axis labels are derived from them ("pc1" -> "PC1").
    group
        Column of the group (e.g. ``super_pop``), or None for a single colour.
    count
        Column of per-cell sample counts (binned mode), or None (centroid mode).
    title
        Axes title.
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a column is missing or there are no rows with finite coordinates (and positive count).
    """
    fname = "pca_scatter"
    required = [x, y] + [c for c in (group, count) if c is not None]
    df = _frame(data, fname, required, optional=[f"{x}_sd", f"{y}_sd"])
    n_in = len(df)
    xs = _numeric(df[x], fname, x)
    ys = _numeric(df[y], fname, y)
    keep = np.isfinite(xs) & np.isfinite(ys)
    counts = None
    if count is not None:
        counts = _numeric(df[count], fname, count)
        keep &= np.isfinite(counts) & (counts > 0)
    if not keep.any():
        raise _no_rows(fname, n_in, f"{x}, {y}" + (f" or {count}" if count else ""))
    df, xs, ys = df.loc[keep].reset_index(drop=True), xs[keep], ys[keep]
    if counts is not None:
        counts = counts[keep]
    has_sd = f"{x}_sd" in df.columns and f"{y}_sd" in df.columns
    if has_sd:
        sdx = np.abs(_numeric(df[f"{x}_sd"]))
        sdy = np.abs(_numeric(df[f"{y}_sd"]))

    if group is not None:
        gcol = df[group].astype(object).where(df[group].notna(), "(missing)").map(str)
        groups = sorted(gcol.unique(), key=lambda g: (g == "(missing)", g))
        colour = _group_colours(groups)
        membership = [(g, (gcol == g).to_numpy()) for g in groups]
    else:
        gcol = None
        colour = {None: _MANHATTAN_COLOURS[0]}
        membership = [(None, np.ones(len(df), bool))]

    fig, ax = _axes(ax, (6.5, 5.5))
    max_area = 400.0
    for g, sel in membership:
        if counts is not None:
            sizes = counts[sel] / float(counts.max()) * max_area
            coll = ax.scatter(
                xs[sel],
                ys[sel],
                s=sizes,
                color=colour[g],
                alpha=0.6,
                edgecolors="white",
                linewidths=0.5,
                label=g if g is not None else "_cells",
                zorder=3,
            )
        else:
            coll = ax.scatter(
                xs[sel],
                ys[sel],
                s=140.0,
                color=colour[g],
                edgecolors="black",
                linewidths=0.8,
                label=g if g is not None else "_centroids",
                zorder=3,
            )
        coll.set_gid(f"pca-{'cells' if counts is not None else 'centroids'}")
        if has_sd:
            for cx, cy, wx, wy in zip(xs[sel], ys[sel], sdx[sel], sdy[sel]):
                if np.isfinite(wx) and np.isfinite(wy):
                    e = Ellipse(
                        (cx, cy),
                        width=2.0 * wx,
                        height=2.0 * wy,
                        facecolor=colour[g],
                        alpha=0.15,
                        edgecolor=colour[g],
                        linewidth=1.0,
                        zorder=2,
                    )
                    e.set_gid("pca-sd-ellipse")
                    ax.add_patch(e)
    if counts is None and gcol is not None:
        for cx, cy, g in zip(xs, ys, gcol):
            ann = ax.annotate(
                g,
                (cx, cy),
                xytext=(7, 7),
                textcoords="offset points",
                fontsize=9,
                fontweight="bold",
            )
            ann.set_gid("pca-label")
    if counts is not None:
        note = ax.text(
            0.99,
            0.01,
            f"marker area ∝ samples per cell (largest {int(round(counts.max())):,})",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="#636363",
        )
        note.set_gid("pca-size-note")
    ax.autoscale_view()
    ax.set_xlabel(_pc_label(x))
    ax.set_ylabel(_pc_label(y))
    if group is not None:
        leg = ax.legend(
            title=group,
            fontsize=8,
            title_fontsize=8,
            frameon=False,
            loc="best" if len(df) < 2000 else "upper right",
        )
        for handle in getattr(leg, "legend_handles", []):
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([40.0])
    _finish(ax, title)
    return fig


# --------------------------------------------------------------------------------------------
# LD decay


def ld_decay(
    data: Any,
    *,
    pos_a: str = "pos_a",
    pos_b: str = "pos_b",
    r2: str = "r2",
    distance: str | None = None,
    bins: int | Iterable[float] = 30,
    max_distance: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """LD decay: mean r² of variant pairs against their distance.

    The distance is ``|pos_b - pos_a|`` in bp (or the ``distance`` column). Pairs are grouped into
    distance bins and the mean r² per non-empty bin is drawn as a line with points; below 20,000
    pairs the pairs themselves are drawn as a light scatter. The x axis is in kb.

    Parameters
    ----------
    data
        Arrow table, pandas DataFrame, or an object with ``.to_arrow()`` / ``.to_pandas()``.
    pos_a, pos_b
        Columns of the two positions (bp); unused when ``distance`` is given.
    r2
        Column of r².
    distance
        Column of precomputed pair distances in bp, instead of ``pos_a`` / ``pos_b``.
    bins
        Number of equal-width bins from 0 to the largest distance, or the bin edges in bp.
    max_distance
        Leave out pairs farther apart than this many bp.
    title
        Axes title.
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a column is missing or no pair has a finite distance and r².
    """
    fname = "ld_decay"
    df = _frame(data, fname, [distance, r2] if distance is not None else [pos_a, pos_b, r2])
    n_in = len(df)
    if distance is not None:
        d = np.abs(_numeric(df[distance], fname, distance))
    else:
        d = np.abs(_numeric(df[pos_b], fname, pos_b) - _numeric(df[pos_a], fname, pos_a))
    r = _numeric(df[r2], fname, r2)
    keep = np.isfinite(d) & np.isfinite(r)
    if max_distance is not None:
        keep &= d <= float(max_distance)
    if not keep.any():
        within = f" within {max_distance:,} bp" if max_distance is not None else ""
        raise ValueError(
            f"{fname}: no rows to plot "
            f"(none of the {n_in:,} pairs has a finite distance and {r2}{within})"
        )
    d, r = d[keep], r[keep]

    if isinstance(bins, int | np.integer):
        if bins < 1:
            raise ValueError(f"bins must be at least 1; got {bins}")
        hi = float(max_distance) if max_distance is not None else float(d.max())
        edges = np.linspace(0.0, max(hi, 1.0), int(bins) + 1)
    else:
        edges = np.asarray(list(bins), dtype=float)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError("bins must be an int or at least two increasing bin edges (bp)")
    n_bin, _ = np.histogram(d, bins=edges)
    sum_bin, _ = np.histogram(d, bins=edges, weights=r)
    filled = n_bin > 0
    centres_kb = (edges[:-1] + edges[1:]) / 2.0 / 1e3
    mean_r2 = sum_bin[filled] / n_bin[filled]

    fig, ax = _axes(ax, (7.0, 4.5))
    if d.size < _PAIRS_SCATTER_MAX:
        pairs = ax.scatter(
            d / 1e3,
            r,
            s=4.0,
            color="#969696",
            alpha=0.25,
            linewidths=0.0,
            label=f"pairs (n = {d.size:,})",
            zorder=1,
        )
        pairs.set_gid("ld-pairs")
    line = ax.plot(
        centres_kb[filled],
        mean_r2,
        "-o",
        color=_MANHATTAN_COLOURS[0],
        markersize=4,
        linewidth=1.5,
        label=f"mean r² per bin ({d.size:,} pairs)",
        zorder=3,
    )[0]
    line.set_gid("ld-mean")
    ax.set_xlim(edges[0] / 1e3, edges[-1] / 1e3)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("Distance (kb)")
    ax.set_ylabel("r²")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    _finish(ax, title)
    return fig


# --------------------------------------------------------------------------------------------
# saving


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write a figure to PNG, SVG or PDF, chosen by the file suffix, atomically.

    The figure is written to a temporary file in the target directory which then replaces
    ``path``, so a failure never leaves a partly written file (an existing file is kept).
    Missing parent directories are created.

    Parameters
    ----------
    fig
        The figure (an Axes is accepted too; its figure is saved).
    path
        Destination ending in ``.png``, ``.svg`` or ``.pdf``.
    dpi
        Resolution of PNG output (and of rasterised parts of SVG/PDF).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ValueError
        If the suffix is not one of .png, .svg, .pdf.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(_SAVE_FORMATS)
        raise ValueError(
            f"save: cannot write {path.suffix or 'a file without suffix'!r} ({path.name}); "
            f"use one of {allowed}"
        )
    if isinstance(fig, Axes):
        fig = _root_figure(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi, metadata=metadata)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


PLOTS: dict[str, Callable[..., Figure]] = {"manhattan": manhattan, "qq": qq, "pca": pca_scatter, "ld-decay": ld_decay}
