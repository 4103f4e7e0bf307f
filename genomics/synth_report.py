"""Writers for a synthetic-genotype release: the bgzipped, indexed VCF and the steward's report.

The release gate (``genofed.privacy``) decides whether synthetic genotypes may leave; this
module only writes what it decided:

* :func:`write_vcf` writes phased diploid genotypes as a bgzipped VCF 4.2 with its tabix index,
  atomically (a temporary file is renamed into place only when both the file and its index are
  complete). It needs the htslib tools ``bgzip`` and ``tabix`` on ``PATH``.
* :func:`write_report` writes one self-contained HTML file (inline CSS, plots embedded as base64
  PNG, no scripts and no external resources) or a PDF with the same plots and a text page.
* :func:`plot_af`, :func:`plot_ld`, :func:`plot_pca` and :func:`plot_privacy` draw the report's
  plots; each returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (headless and
  thread-safe) and can be used on its own.

Examples
--------
>>> write_vcf("out/synth.vcf.gz", chrom=chrom, pos=pos, ref=ref, alt=alt,
...           variant_id=vid, sample_ids=ids, hap1=h1, hap2=h2,
...           header_lines=["##genofed_synth_epsilon=1.0"])  # doctest: +SKIP
>>> write_report("out/release.html", report, {"af": {"real": af_r, "synthetic": af_s}})  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse

from genofed.engine.errors import ConfigError, GenofedError

__all__ = [
    "FIGURE_ORDER",
    "plot_af",
    "plot_ld",
    "plot_pca",
    "plot_privacy",
    "render_html",
    "threshold_band",
    "write_report",
    "write_vcf",
]

# --------------------------------------------------------------------------------------------
# VCF

_INSTALL_HINT = (
    "install htslib's tools: apt-get install tabix (Debian/Ubuntu), "
    "conda install -c bioconda htslib, or brew install htslib"
)
_CONTIG_RE = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")
_INFO_KEY_RE = re.compile(r"[A-Za-z_][0-9A-Za-z_.]*")
_FIELD_BAD = re.compile(r"[\s;]")  # whitespace or ';' would break a VCF column
_SPECIAL_CONTIGS = {"X": 0, "Y": 1, "MT": 2}
# "a|b\t" for the four (hap1, hap2) codes 2*a + b
_GT_TABLE = np.frombuffer(b"0|0\t0|1\t1|0\t1|1\t", dtype=np.uint8).reshape(4, 4)
_CHUNK_BYTES = 16 << 20  # genotype bytes built per block of records
_BGZIP_LEVEL = 3


def _contig_rank(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Sort key of each contig: numeric ones numerically, then X, Y, MT, then others as given.

    A ``chr`` prefix and ``M`` for the mitochondrion are recognised for ordering only; the names
    are written as given.
    """
    key: dict[str, tuple[int, int, int]] = {}
    for first_seen, name in enumerate(names):
        bare = name[3:] if name[:3].lower() == "chr" else name
        upper = "MT" if bare.upper() in ("M", "MT") else bare.upper()
        if bare.isdigit():
            key[name] = (0, int(bare), first_seen)
        elif upper in _SPECIAL_CONTIGS:
            key[name] = (1, _SPECIAL_CONTIGS[upper], first_seen)
        else:
            key[name] = (2, first_seen, first_seen)
    return key


def _strings(values: Any, what: str, n: int) -> list[str]:
    items = values.tolist() if isinstance(values, np.ndarray) else values
    out = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
    if len(out) != n:
        raise ValueError(f"write_vcf: {what} has {len(out):,} entries but pos has {n:,}")
    return out


def _check_fields(values: list[str], what: str) -> None:
    for i, v in enumerate(values):
        if not v or _FIELD_BAD.search(v):
            raise ValueError(
                f"write_vcf: {what}[{i}] = {v!r} is empty or contains whitespace or ';', "
                "which a VCF column cannot hold"
            )


def _haplotypes(h: Any, what: str, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(h)
    if arr.shape != shape:
        raise ValueError(
            f"write_vcf: {what} has shape {arr.shape}; expected (n_variants, n_samples) = {shape}"
        )
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"write_vcf: {what} must hold 0/1 alleles (uint8 or bool); got {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(
            f"write_vcf: {what} must hold alleles 0 or 1 (bi-allelic records); "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.uint8, copy=False)


def _need_tools() -> tuple[str, str]:
    bgzip, tabix = shutil.which("bgzip"), shutil.which("tabix")
    missing = [name for name, found in (("bgzip", bgzip), ("tabix", tabix)) if found is None]
    if bgzip is None or tabix is None:
        raise ConfigError(
            f"write_vcf needs bgzip and tabix (htslib) on PATH; not found: {', '.join(missing)}. "
            f"To fix, {_INSTALL_HINT}"
        )
    return bgzip, tabix


@functools.lru_cache(maxsize=8)
def _bgzip_options(bgzip: str) -> tuple[str, ...]:
    """Two compression threads and level 3 when this bgzip has the options (htslib >= 1.4).

    Level 3 compresses about four times faster than bgzip's default (6) on genotype text, for
    files some 10-20% larger.
    """
    try:
        out = subprocess.run([bgzip, "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    text = out.stdout + out.stderr
    opts: tuple[str, ...] = ()
    if "--threads" in text:
        opts += ("--threads", "2")
    if "--compress-level" in text:
        opts += ("-l", str(_BGZIP_LEVEL))
    return opts


def _header(
    contigs: list[str],
    sample_ids: list[str],
    info: Mapping[str, str] | None,
    header_lines: Sequence[str],
) -> bytes:
    lines = ["##fileformat=VCFv4.2", "##source=genofed-synthetic"]
    lines.append('##FILTER=<ID=PASS,Description="All filters passed">')
    for key, value in (info or {}).items():
        if value == "":
            lines.append(f'##INFO=<ID={key},Number=0,Type=Flag,Description="genofed release">')
        else:
            lines.append(f'##INFO=<ID={key},Number=1,Type=String,Description="genofed release">')
    lines.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Phased genotype">')
    lines.extend(f"##contig=<ID={c}>" for c in contigs)
    lines.extend(header_lines)
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
    lines.append("\t".join(columns + sample_ids))
    return ("\n".join(lines) + "\n").encode()


def _info_column(info: Mapping[str, str] | None) -> str:
    if not info:
        return "."
    for key, value in info.items():
        if not _INFO_KEY_RE.fullmatch(str(key)):
            raise ValueError(f"write_vcf: INFO key {key!r} is not a valid VCF INFO ID")
        if re.search(r"[\s;=,]", str(value)):
            raise ValueError(
                f"write_vcf: INFO value {value!r} of {key!r} contains whitespace, ';', '=' or ','"
            )
    return ";".join(str(k) if v == "" else f"{k}={v}" for k, v in info.items())


def _records(
    prefixes: list[bytes], order: np.ndarray, h1: np.ndarray, h2: np.ndarray
) -> Iterator[bytes]:
    """The record lines in blocks: each genotype via a 4-entry lookup of ``a|b\\t``."""
    n_samples = h1.shape[1]
    rows = max(1, _CHUNK_BYTES // (4 * n_samples))
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        code = (h1[idx] << 1) | h2[idx]
        gt = _GT_TABLE[code].reshape(len(idx), 4 * n_samples)
        gt[:, -1] = ord("\n")
        parts: list[bytes] = []
        for i, row in zip(idx.tolist(), gt):
            parts.append(prefixes[i])
            parts.append(row.tobytes())
        yield b"".join(parts)


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_vcf(
    path: str | os.PathLike[str],
    *,
    chrom: Sequence[str] | np.ndarray,
    pos: np.ndarray,
    ref: Sequence[str] | np.ndarray,
    alt: Sequence[str] | np.ndarray,
    variant_id: Sequence[str] | np.ndarray,
    sample_ids: Sequence[str],
    hap1: np.ndarray,
    hap2: np.ndarray,
    info: Mapping[str, str] | None = None,
    header_lines: Sequence[str] = (),
) -> Path:
    """Write phased synthetic genotypes as a bgzipped, tabix-indexed VCF 4.2.

    Every sample gets a phased diploid ``GT`` (``hap1|hap2``). Records are sorted by contig
    (numeric contigs numerically, then X, Y, MT, then other contigs in order of first
    appearance) and position; records at the same position (a split multi-allelic site) keep
    their input order and are written as separate bi-allelic records. QUAL is ``.``, FILTER
    ``PASS``; the header has ``##source=genofed-synthetic`` and a ``##contig`` line per
    chromosome seen.

    The file is compressed by ``bgzip`` (through a pipe, two threads, level 3) into ``path.tmp-XXXX``,
    indexed by ``tabix -p vcf``, and only then are the file and ``path.tbi`` renamed into place.
    On any failure no temporary file is left and nothing new appears at ``path``.

    Parameters
    ----------
    path
        Destination, ending in ``.vcf.gz``; the index is written next to it as ``.vcf.gz.tbi``.
        Missing parent directories are created.
    chrom, pos, ref, alt, variant_id
        One entry per variant (bi-allelic rows). ``variant_id`` fills the ID column (the
        engine's ``chrom:pos:ref:alt``).
    sample_ids
        Sample column names, unique.
    hap1, hap2
        Alleles (0/1, uint8 or bool) of the first and second haplotype, shape
        ``[n_variants, n_samples]``.
    info
        INFO fields put on every record, key to value (an empty value makes a flag); each gets
        an ``##INFO`` header line. None (default) writes INFO ``.``.
    header_lines
        Extra ``##`` header lines, e.g. ``["##genofed_synth_epsilon=1.0"]``.

    Returns
    -------
    pathlib.Path
        The written ``.vcf.gz`` path.

    Raises
    ------
    ConfigError
        If ``bgzip`` or ``tabix`` is not on PATH (the message names how to install them).
    ValueError
        If the inputs are inconsistent or cannot be written as VCF.
    GenofedError
        If bgzip or tabix fails (the message carries the tool's error output).
    """
    path = Path(path)
    if not path.name.endswith(".vcf.gz"):
        raise ValueError(f"write_vcf: {path.name!r} must end in .vcf.gz (bgzipped VCF)")
    pos_arr = np.asarray(pos)
    if pos_arr.ndim != 1 or not np.issubdtype(pos_arr.dtype, np.integer):
        raise ValueError(f"write_vcf: pos must be a 1-D integer array; got {pos_arr.dtype}")
    n = len(pos_arr)
    if n and pos_arr.min() < 1:
        raise ValueError("write_vcf: positions are 1-based; found a position below 1")
    chroms = _strings(chrom, "chrom", n)
    refs, alts, ids = (
        _strings(ref, "ref", n),
        _strings(alt, "alt", n),
        _strings(variant_id, "variant_id", n),
    )
    samples = [str(s) for s in sample_ids]
    if not samples:
        raise ValueError("write_vcf: no samples; a genotype release needs at least one sample")
    if len(set(samples)) != len(samples):
        dup = next(s for s in samples if samples.count(s) > 1)
        raise ValueError(f"write_vcf: sample_ids must be unique; {dup!r} appears more than once")
    _check_fields(samples, "sample_ids")
    _check_fields(refs, "ref")
    _check_fields(alts, "alt")
    _check_fields(ids, "variant_id")
    for i, a in enumerate(alts):
        if "," in a:
            raise ValueError(
                f"write_vcf: alt[{i}] = {a!r} has several alleles; give one row per ALT "
                "(split multi-allelic sites)"
            )
    shape = (n, len(samples))
    h1 = _haplotypes(hap1, "hap1", shape)
    h2 = _haplotypes(hap2, "hap2", shape)
    extra = [str(line) for line in header_lines]
    for line in extra:
        if not line.startswith("##") or "\n" in line or "\r" in line:
            raise ValueError(f"write_vcf: header line {line!r} must be one line starting with '##'")
    info_col = _info_column(info)

    uniq = list(dict.fromkeys(chroms))
    for c in uniq:
        if not _CONTIG_RE.fullmatch(c):
            raise ValueError(f"write_vcf: chromosome name {c!r} is not a valid VCF contig ID")
    rank_of = _contig_rank(uniq)
    contigs = sorted(uniq, key=rank_of.__getitem__)
    contig_index = {c: i for i, c in enumerate(contigs)}
    crank = np.fromiter((contig_index[c] for c in chroms), dtype=np.int64, count=n)
    order = np.lexsort((np.arange(n), pos_arr, crank))
    pos_list = pos_arr.tolist()
    tail = f"\t.\tPASS\t{info_col}\tGT\t"
    prefixes = [
        f"{c}\t{p}\t{i}\t{r}\t{a}{tail}".encode()
        for c, p, i, r, a in zip(chroms, pos_list, ids, refs, alts)
    ]
    header = _header(contigs, samples, info, extra)

    bgzip, tabix = _need_tools()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    tmp_tbi = tmp.with_name(tmp.name + ".tbi")
    final_tbi = path.with_name(path.name + ".tbi")
    cmd = [bgzip, "-c", *_bgzip_options(bgzip)]
    proc: subprocess.Popen[bytes] | None = None
    placed_tbi = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
            assert proc.stdin is not None and proc.stderr is not None
            try:
                proc.stdin.write(header)
                for block in _records(prefixes, order, h1, h2):
                    proc.stdin.write(block)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # bgzip died; its exit status and message are reported below
            rc = proc.wait()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            if rc != 0:
                raise GenofedError(f"write_vcf: bgzip failed (exit {rc}): {err or 'no message'}")
            out.flush()
            os.fsync(out.fileno())
        res = subprocess.run([tabix, "-f", "-p", "vcf", str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            msg = res.stderr.strip() or "no message"
            raise GenofedError(f"write_vcf: tabix failed (exit {res.returncode}): {msg}")
        _fsync(tmp_tbi)
        os.replace(tmp_tbi, final_tbi)
        placed_tbi = True
        os.replace(tmp, path)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for stream in (proc.stdin, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        _unlink(tmp, tmp_tbi)
        if placed_tbi:
            _unlink(final_tbi)
        raise
    return path


# --------------------------------------------------------------------------------------------
# plots

_REAL_COLOUR = "#1f4e8c"
_SYNTH_COLOUR = "#e6550d"
_PASS_COLOUR = "#1a9641"
_FAIL_COLOUR = "#d7191c"
_NEUTRAL_COLOUR = "#7f7f7f"
_HEXBIN_ABOVE = 5_000
_CHI2_2DF_95 = -2.0 * math.log(0.05)  # 95% quantile of chi-square with 2 df (5.991...)

FIGURE_ORDER = ("privacy", "af", "ld", "pca")
_CAPTIONS = {
    "privacy": "Privacy audit: each metric's value against its threshold "
    "(shaded: the accepted range; green passes, red fails).",
    "af": "Allele frequencies of the synthetic genotypes against the real ones (federated "
    "aggregates); the dashed line is y = x.",
    "ld": "Linkage disequilibrium decay: mean r² between variant pairs by distance, real "
    "(federated aggregates) and synthetic.",
    "pca": "Synthetic individuals on the principal components, coloured by population; real "
    "populations as 95% ellipses from their federated mean and covariance (no real individual "
    "leaves a node).",
}


def _mpl(s: Any) -> str:
    """A label for matplotlib, with '$' kept literal (never mathtext)."""
    return str(s).replace("$", r"\$")


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    root: Any
    try:
        root = ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10: .figure is already the root figure
        root = ax.figure
    if not isinstance(root, Figure):
        raise ValueError("ax is not part of a figure")
    return root, ax


def _tidy(ax: Axes) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _vector(values: Any, name: str, fname: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{fname}: {name} must be one-dimensional; got shape {arr.shape}")
    return arr


def plot_af(real: Any, synthetic: Any, *, ax: Axes | None = None) -> Figure:
    """Allele frequency of each variant, synthetic against real.

    A scatter up to 5,000 variants and a log-scaled hexbin above; the y = x line is dashed and
    the Pearson correlation r is in the title.

    Parameters
    ----------
    real, synthetic
        Allele frequencies in [0, 1], one per variant, same length. Pairs with a NaN are left out.
    ax
        Draw into this Axes instead of a new figure.

    Raises
    ------
    ValueError
        If the lengths differ or no pair is finite.
    """
    fname = "plot_af"
    x, y = _vector(real, "real", fname), _vector(synthetic, "synthetic", fname)
    if x.shape != y.shape:
        raise ValueError(f"{fname}: real has {x.size:,} values but synthetic has {y.size:,}")
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        raise ValueError(f"{fname}: no variant has a finite real and synthetic frequency")
    x, y = x[keep], y[keep]
    r = float(np.corrcoef(x, y)[0, 1]) if x.size > 1 and x.std() > 0 and y.std() > 0 else math.nan
    fig, ax = _new_axes(ax, (5.5, 5.0))
    if x.size > _HEXBIN_ABOVE:
        hb = ax.hexbin(
            x, y, gridsize=70, bins="log", mincnt=1, cmap="viridis", extent=(0.0, 1.0, 0.0, 1.0)
        )
        hb.set_gid("af-hexbin")
        fig.colorbar(hb, ax=ax, label="variants (log scale)")
    else:
        sc = ax.scatter(x, y, s=8, alpha=0.5, color=_REAL_COLOUR, linewidths=0)
        sc.set_gid("af-scatter")
    (line,) = ax.plot([0, 1], [0, 1], ls="--", color=_NEUTRAL_COLOUR, lw=1)
    line.set_gid("af-identity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("real allele frequency")
    ax.set_ylabel("synthetic allele frequency")
    r_text = "n/a" if math.isnan(r) else f"{r:.4f}"
    ax.set_title(f"Allele frequency (r = {r_text}, {x.size:,} variants)")
    _tidy(ax)
    return fig


def plot_ld(bins_bp: Any, real: Any, synthetic: Any, *, ax: Axes | None = None) -> Figure:
    """LD decay: mean r² per distance bin, real and synthetic, against distance in kb.

    Parameters
    ----------
    bins_bp
        Bin edges in base pairs (one more than the number of bins), or the bin distances
        themselves (as many as bins); edges are plotted at the bin midpoints.
    real, synthetic
        Mean r² per bin; NaN bins are gaps.
    ax
        Draw into this Axes instead of a new figure.

    Raises
    ------
    ValueError
        If the lengths do not fit or nothing is finite.
    """
    fname = "plot_ld"
    edges = _vector(bins_bp, "bins_bp", fname)
    yr, ys = _vector(real, "real", fname), _vector(synthetic, "synthetic", fname)
    if yr.size != ys.size:
        raise ValueError(f"{fname}: real has {yr.size:,} bins but synthetic has {ys.size:,}")
    if edges.size == yr.size + 1:
        centres = (edges[:-1] + edges[1:]) / 2.0
    elif edges.size == yr.size:
        centres = edges
    else:
        raise ValueError(
            f"{fname}: bins_bp has {edges.size:,} values; give {yr.size + 1:,} edges "
            f"(or {yr.size:,} distances) for {yr.size:,} bins"
        )
    if not (np.isfinite(yr).any() or np.isfinite(ys).any()):
        raise ValueError(f"{fname}: no bin has a finite mean r²")
    fig, ax = _new_axes(ax, (6.0, 4.0))
    kb = centres / 1000.0
    ax.plot(kb, yr, "-o", color=_REAL_COLOUR, ms=3, lw=1.5, label="real", gid="ld-real")
    ax.plot(kb, ys, "--s", color=_SYNTH_COLOUR, ms=3, lw=1.5, label="synthetic", gid="ld-synthetic")
    ax.set_xlabel("distance (kb)")
    ax.set_ylabel("mean r²")
    ax.set_ylim(bottom=0)
    ax.set_title("LD decay")
    ax.legend(frameon=False)
    _tidy(ax)
    return fig


def _palette(labels: Sequence[str]) -> dict[str, Any]:
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _ellipse_95(mean: np.ndarray, cov: np.ndarray, **kw: Any) -> Ellipse:
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    vals = np.clip(vals, 0.0, None)
    width, height = 2.0 * np.sqrt(_CHI2_2DF_95 * vals[::-1])
    angle = math.degrees(math.atan2(vecs[1, -1], vecs[0, -1]))
    return Ellipse((float(mean[0]), float(mean[1])), float(width), float(height), angle=angle, **kw)


def plot_pca(
    synthetic_scores: Any,
    labels: Sequence[Any],
    real: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    ax: Axes | None = None,
) -> Figure:
    """Synthetic individuals on two principal components, with the real populations as ellipses.

    Real individuals never leave their nodes, so a real population is drawn only from its
    federated summary: a 95% normal ellipse from its mean and covariance, and its mean.

    Parameters
    ----------
    synthetic_scores
        ``[n, 2]`` component scores of the synthetic individuals.
    labels
        Population of each synthetic individual (length n); colours are shared with ``real``.
    real
        ``{population: {"mean": [2], "cov": [[2, 2]], "n": int}}``, or None.
    ax
        Draw into this Axes instead of a new figure.

    Raises
    ------
    ValueError
        If the shapes do not fit.
    """
    fname = "plot_pca"
    scores = np.asarray(synthetic_scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"{fname}: synthetic scores must have shape [n, 2]; got {scores.shape}")
    labs = np.array([str(v) for v in labels], dtype=object)
    if labs.size != scores.shape[0]:
        raise ValueError(
            f"{fname}: {labs.size:,} labels for {scores.shape[0]:,} synthetic individuals"
        )
    real = dict(real or {})
    populations = sorted(set(labs.tolist()) | {str(k) for k in real})
    colour = _palette(populations)
    fig, ax = _new_axes(ax, (6.5, 5.5))
    handles: list[Any] = []
    many = scores.shape[0] > 20_000
    for popn in populations:
        sel = labs == popn
        if sel.any():
            sc = ax.scatter(
                scores[sel, 0],
                scores[sel, 1],
                s=9,
                alpha=0.6,
                color=colour[popn],
                linewidths=0,
                rasterized=many,
                gid="pca-synthetic",
            )
            sc.set_label(_mpl(f"{popn} synthetic (n = {int(sel.sum()):,})"))
            handles.append(sc)
    for key, summary in real.items():
        popn = str(key)
        mean = np.asarray(summary["mean"], dtype=float).reshape(-1)
        cov = np.asarray(summary["cov"], dtype=float)
        if mean.shape != (2,) or cov.shape != (2, 2):
            raise ValueError(
                f"{fname}: real population {popn!r} needs mean of length 2 and cov 2x2; "
                f"got {mean.shape} and {cov.shape}"
            )
        ell = _ellipse_95(
            mean, cov, facecolor="none", edgecolor=colour[popn], lw=2.0, gid="pca-real-ellipse"
        )
        ax.add_patch(ell)
        ax.plot(
            mean[0],
            mean[1],
            marker="X",
            ms=9,
            color=colour[popn],
            mec="black",
            mew=0.8,
            ls="none",
            gid="pca-real-mean",
        )
        n_txt = f", n = {int(summary['n']):,}" if summary.get("n") is not None else ""
        handles.append(
            Line2D(
                [],
                [],
                color=colour[popn],
                lw=2.0,
                marker="X",
                mec="black",
                ms=7,
                label=_mpl(f"{popn} real, 95%{n_txt}"),
            )
        )
    ax.autoscale_view()
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("PCA: synthetic individuals and real populations")
    if handles:
        ax.legend(handles=handles, fontsize="small", frameon=False, loc="best")
    _tidy(ax)
    return fig


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BAND_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[float, float]]]] = [
    (
        re.compile(rf"\s*({_NUM})\s*±\s*({_NUM})"),
        lambda m: (float(m[1]) - abs(float(m[2])), float(m[1]) + abs(float(m[2]))),
    ),
    (re.compile(rf"\s*<=?\s*({_NUM})"), lambda m: (-math.inf, float(m[1]))),
    (re.compile(rf"\s*>=?\s*({_NUM})"), lambda m: (float(m[1]), math.inf)),
    (
        re.compile(rf"\s*\[?\s*({_NUM})\s*(?:,|–|\.\.|to|-)\s*({_NUM})\s*\]?"),
        lambda m: (float(m[1]), float(m[2])),
    ),
    (re.compile(rf"\s*=?\s*({_NUM})\s*$"), lambda m: (float(m[1]), float(m[1]))),
]


def threshold_band(threshold: Any) -> tuple[float, float] | None:
    """The accepted range ``(low, high)`` written in a threshold string, or None.

    Understands ``"0.50 ± 0.05"``, ``"≤ 0.6"`` / ``"< 0.6"``, ``"≥ 0.99"``, ``"0.4–0.6"`` and a
    single number (``"0"``: exactly that value). Anything after the expression is ignored.
    """
    if threshold is None or isinstance(threshold, bool):
        return None
    if isinstance(threshold, int | float):
        return None  # a bare number does not say which side passes
    text = str(threshold).replace("≤", "<=").replace("≥", ">=").replace("−", "-")
    text = text.replace("+/-", "±").replace("+-", "±")
    for pattern, band in _BAND_PATTERNS:
        m = pattern.match(text)
        if m:
            lo, hi = band(m)
            return (min(lo, hi), max(lo, hi))
    return None


def _numeric_value(v: Any) -> float | None:
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def plot_privacy(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One small panel per numeric privacy metric: its value against the accepted range.

    Parameters
    ----------
    rows
        ``report["privacy"]``: dicts with ``name``, ``value``, ``threshold`` (a string such as
        ``"0.50 ± 0.05"`` or ``"≤ 0.6"``, see :func:`threshold_band`) and ``pass``. Rows whose
        value is not a finite number are left out.

    Raises
    ------
    ValueError
        If no row has a numeric value.
    """
    metrics = [(r, v) for r in rows if (v := _numeric_value(r.get("value"))) is not None]
    if not metrics:
        raise ValueError("plot_privacy: no privacy metric has a numeric value")
    fig = Figure(figsize=(7.0, 0.45 + 0.95 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, (row, value) in zip(axes, metrics):
        ok = row.get("pass")
        colour = _NEUTRAL_COLOUR if ok is None else (_PASS_COLOUR if ok else _FAIL_COLOUR)
        band = threshold_band(row.get("threshold"))
        ends = [value] + ([e for e in band if math.isfinite(e)] if band else [])
        if isinstance(row.get("threshold"), int | float) and not isinstance(
            row.get("threshold"), bool
        ):
            ends.append(float(row["threshold"]))
        lo, hi = min(ends), max(ends)
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.5
        xlo, xhi = lo - 0.25 * span, hi + 0.25 * span
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(0, 1)
        if band is not None:
            blo, bhi = max(band[0], xlo), min(band[1], xhi)
            if bhi > blo:
                ax.axvspan(blo, bhi, color=colour, alpha=0.2, lw=0, gid="privacy-band")
            else:
                ax.axvline(blo, color=colour, alpha=0.6, lw=3, gid="privacy-band")
        elif "threshold" in row and _numeric_value(row.get("threshold")) is not None:
            ax.axvline(float(row["threshold"]), color=_NEUTRAL_COLOUR, ls="--", lw=1)
        ax.plot(
            [value],
            [0.5],
            marker="D",
            ms=9,
            color=colour,
            mec="black",
            ls="none",
            gid="privacy-value",
        )
        verdict = "pass" if ok else ("not evaluated" if ok is None else "FAIL")
        thr = f"  (threshold {row.get('threshold')})" if row.get("threshold") is not None else ""
        ax.set_title(
            _mpl(f"{row.get('name', '?')}: {_fmt(value)} — {verdict}{thr}"),
            loc="left",
            fontsize=9,
            color=colour if ok is False else "black",
        )
        ax.set_yticks([])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="x", labelsize=8)
    return fig


def _build_figures(
    report: Mapping[str, Any], figures: Mapping[str, Any] | None
) -> dict[str, Figure]:
    """The report's figures in :data:`FIGURE_ORDER`; unknown names are an error."""
    figures = dict(figures or {})
    unknown = sorted(set(figures) - set(FIGURE_ORDER))
    if unknown:
        raise ValueError(
            f"write_report: unknown figure(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(FIGURE_ORDER)}"
        )
    out: dict[str, Figure] = {}
    privacy_rows = report.get("privacy") or []
    want_privacy = figures.get("privacy", True) is not False
    if want_privacy and any(_numeric_value(r.get("value")) is not None for r in privacy_rows):
        out["privacy"] = plot_privacy(privacy_rows)
    if figures.get("af") is not None:
        d = figures["af"]
        out["af"] = plot_af(d["real"], d["synthetic"])
    if figures.get("ld") is not None:
        d = figures["ld"]
        out["ld"] = plot_ld(d["bins_bp"], d["real"], d["synthetic"])
    if figures.get("pca") is not None:
        d = figures["pca"]
        synth = d.get("synthetic") or {}
        out["pca"] = plot_pca(
            synth.get("scores", np.empty((0, 2))), synth.get("labels", []), d.get("real")
        )
    return out


# --------------------------------------------------------------------------------------------
# the report

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
margin:0;background:#f6f7f9;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:1.6em;margin:0 0 8px}h2{font-size:1.2em;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:32px}
.verdict{display:inline-block;font-weight:700;font-size:1.15em;padding:6px 14px;
border-radius:4px;letter-spacing:.04em}
.verdict-released{background:#e3f4e8;color:#13652f;border:1px solid #1a9641}
.verdict-refused{background:#fde4e4;color:#9b1010;border:1px solid #d7191c}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pass{color:#13652f;font-weight:700}td.fail{color:#9b1010;font-weight:700}
td.na{color:#777}table.kv th{width:14em}
ul.reasons li{margin:4px 0}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.88em}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;white-space:pre-wrap}
footer{margin-top:40px;color:#888;font-size:.8em}
"""


def _fmt(v: Any) -> str:
    """A value as the report shows it."""
    if v is None:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        f = float(v)
        return "n/a" if math.isnan(f) else f"{f:.4g}"
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple) and all(
        isinstance(x, str | int | float) and not isinstance(x, bool) for x in v
    ):
        return ", ".join(_fmt(x) for x in v)
    return json.dumps(v, default=str, ensure_ascii=False)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _result(ok: Any) -> tuple[str, str]:
    if ok is None:
        return "na", "—"
    return ("pass", "PASS") if ok else ("fail", "FAIL")


def _kv_table(d: Mapping[str, Any], table_id: str, depth: int = 0) -> str:
    if not d:
        return '<p class="meta">(none recorded)</p>'
    rows = []
    for key, value in d.items():
        if isinstance(value, Mapping):
            cell = (
                _kv_table(value, "", depth + 1)
                if depth < 2
                else f"<code>{_e(json.dumps(value, default=str, ensure_ascii=False))}</code>"
            )
            rows.append(f"<tr><th>{_e(key)}</th><td>{cell}</td></tr>")
        else:
            cls = ' class="num"' if _numeric_value(value) is not None else ""
            rows.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(_fmt(value))}</td></tr>")
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f'<table class="kv"{ident}>{"".join(rows)}</table>'


def _metric_table(
    rows: Sequence[Mapping[str, Any]], table_id: str, bound: str, detail: bool
) -> str:
    if not rows:
        return '<p class="meta">(no metrics recorded)</p>'
    head = ["Metric", "Value", bound.capitalize(), "Result"] + (["Detail"] if detail else [])
    out = [f'<table id="{table_id}"><thead><tr>']
    out += [f"<th>{h}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cls, word = _result(r.get("pass"))
        value = r.get("value")
        num = ' class="num"' if _numeric_value(value) is not None else ""
        cells = [
            f'<td class="metric">{_e(r.get("name", ""))}</td>',
            f'<td{num} data-col="value">{_e(_fmt(value))}</td>',
            f'<td data-col="{bound}">{_e(_fmt(r.get(bound)))}</td>',
            f'<td class="{cls}" data-col="result">{word}</td>',
        ]
        if detail:
            cells.append(
                f'<td data-col="detail">{_e(_fmt(r.get("detail")) if r.get("detail") is not None else "")}</td>'
            )
        out.append(f'<tr data-pass="{cls}">{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _per_node_table(per_node: Mapping[str, Mapping[str, Any]]) -> str:
    if not per_node:
        return '<p class="meta">(no per-node metrics recorded)</p>'
    metrics = list(dict.fromkeys(m for values in per_node.values() for m in values))
    out = ['<table id="per_node"><thead><tr><th>Node</th>']
    out += [f"<th>{_e(m)}</th>" for m in metrics]
    out.append("</tr></thead><tbody>")
    for node, values in per_node.items():
        out.append(f"<tr><td>{_e(node)}</td>")
        for m in metrics:
            v = values.get(m)
            cls = ' class="num"' if _numeric_value(v) is not None else ""
            out.append(f"<td{cls}>{_e(_fmt(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _png(fig: Figure, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(name: str, fig: Figure) -> str:
    alt = {
        "privacy": "privacy audit metrics",
        "af": "allele frequency, real vs synthetic",
        "ld": "LD decay, real vs synthetic",
        "pca": "PCA of synthetic individuals",
    }[name]
    return (
        f'<figure id="fig-{name}"><img src="data:image/png;base64,{_png(fig)}" alt="{alt}">'
        f"<figcaption>{_e(_CAPTIONS[name])}</figcaption></figure>"
    )


def _check_report(report: Mapping[str, Any]) -> str:
    if not isinstance(report, Mapping):
        raise ValueError(f"write_report: report must be a dict; got {type(report).__name__}")
    verdict = report.get("verdict")
    if verdict not in ("released", "refused"):
        raise ValueError(
            f"write_report: report['verdict'] must be 'released' or 'refused'; got {verdict!r}"
        )
    for key in ("privacy", "utility", "reasons"):
        if not isinstance(report.get(key) or [], list | tuple):
            raise ValueError(f"write_report: report[{key!r}] must be a list")
    for key in ("generator", "per_node", "provenance"):
        if not isinstance(report.get(key) or {}, Mapping):
            raise ValueError(f"write_report: report[{key!r}] must be a dict")
    return str(verdict)


def render_html(report: Mapping[str, Any], figures: Mapping[str, Any] | None = None) -> str:
    """The report as one self-contained HTML document (see :func:`write_report`)."""
    verdict = _check_report(report)
    figs = _build_figures(report, figures)
    title = str(report.get("title") or "Synthetic genotype release")
    reasons = list(report.get("reasons") or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p id="verdict" class="verdict verdict-{verdict}" data-verdict="{verdict}">'
        f"{verdict.upper()}</p>",
        f'<p class="meta">Created {_e(report.get("created", "—"))}</p></header>',
    ]
    if reasons or verdict == "refused":
        heading = "Why the release was refused" if verdict == "refused" else "Notes"
        items = "".join(f"<li>{_e(r)}</li>" for r in reasons) or "<li>(no reason recorded)</li>"
        parts.append(
            f'<section id="reasons"><h2>{heading}</h2><ul class="reasons">{items}</ul></section>'
        )
    parts.append('<section id="generator-section"><h2>Generator</h2>')
    parts.append(_kv_table(report.get("generator") or {}, "generator"))
    parts.append('</section><section id="privacy-section"><h2>Privacy audit</h2>')
    parts.append(_metric_table(report.get("privacy") or [], "privacy", "threshold", True))
    if "privacy" in figs:
        parts.append(_img("privacy", figs["privacy"]))
    parts.append('</section><section id="utility-section"><h2>Utility</h2>')
    parts.append(_metric_table(report.get("utility") or [], "utility", "target", False))
    parts += [_img(name, figs[name]) for name in ("af", "ld", "pca") if name in figs]
    parts.append('</section><section id="per-node-section"><h2>Per node</h2>')
    parts.append(_per_node_table(report.get("per_node") or {}))
    parts.append('</section><section id="provenance-section"><h2>Provenance</h2>')
    parts.append(_kv_table(report.get("provenance") or {}, "provenance"))
    parts.append(
        "</section><footer>Written by genofed.genomics.synth_report. This file is "
        "self-contained: it loads nothing from the network.</footer></main></body></html>\n"
    )
    return "\n".join(parts)


def _text_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report as (style, line) pairs for the PDF text page(s)."""
    lines: list[tuple[str, str]] = []
    wrap = functools.partial(textwrap.wrap, width=100, subsequent_indent="    ")

    def add(style: str, text: str) -> None:
        for piece in wrap(text) or [""]:
            lines.append((style, piece))

    verdict = str(report["verdict"])
    add("title", str(report.get("title") or "Synthetic genotype release"))
    add(verdict, f"Verdict: {verdict.upper()}")
    add("meta", f"Created {report.get('created', '—')}")
    reasons = list(report.get("reasons") or [])
    if reasons:
        lines.append(("text", ""))
        add("head", "Why the release was refused" if verdict == "refused" else "Notes")
        for r in reasons:
            add("text", f"- {r}")
    for head, key in (("Generator", "generator"),):
        lines.append(("text", ""))
        add("head", head)
        for k, v in (report.get(key) or {}).items():
            add("text", f"{k}: {_fmt(v)}")
    for head, key, bound in (
        ("Privacy audit", "privacy", "threshold"),
        ("Utility", "utility", "target"),
    ):
        lines.append(("text", ""))
        add("head", head)
        for r in report.get(key) or []:
            word = _result(r.get("pass"))[1]
            text = f"{r.get('name', '')}: {_fmt(r.get('value'))}  ({bound} {_fmt(r.get(bound))})  {word}"
            if r.get("detail"):
                text += f"  {r['detail']}"
            add("fail" if r.get("pass") is False else "text", text)
    if report.get("per_node"):
        lines.append(("text", ""))
        add("head", "Per node")
        for node, values in report["per_node"].items():
            add("text", f"{node}: " + ", ".join(f"{m} = {_fmt(v)}" for m, v in values.items()))
    if report.get("provenance"):
        lines.append(("text", ""))
        add("head", "Provenance")
        for k, v in report["provenance"].items():
            add("text", f"{k}: {_fmt(v)}")
    return lines


_PAGE_SIZE = (8.27, 11.69)  # A4 portrait, inches
_PAGE_TOP, _PAGE_BOTTOM = 0.95, 0.05  # text area, figure fraction
_STYLES: dict[str, dict[str, Any]] = {
    "title": {"fontsize": 15, "fontweight": "bold"},
    "released": {"fontsize": 12, "fontweight": "bold", "color": _PASS_COLOUR},
    "refused": {"fontsize": 12, "fontweight": "bold", "color": _FAIL_COLOUR},
    "head": {"fontsize": 11, "fontweight": "bold"},
    "meta": {"fontsize": 8.5, "color": "#666666"},
    "fail": {"fontsize": 8.5, "color": _FAIL_COLOUR},
    "text": {"fontsize": 8.5},
}


def _line_height(style: str) -> float:
    """Height of a line of ``style`` as a fraction of the page height."""
    return float(_STYLES[style]["fontsize"]) * 1.5 / 72.0 / _PAGE_SIZE[1]


def _paginate(lines: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    pages: list[list[tuple[str, str]]] = [[]]
    used = 0.0
    for style, text in lines:
        h = _line_height(style)
        if pages[-1] and used + h > _PAGE_TOP - _PAGE_BOTTOM:
            pages.append([])
            used = 0.0
        pages[-1].append((style, text))
        used += h
    return pages


def _text_pages(report: Mapping[str, Any]) -> list[Figure]:
    pages = []
    for page in _paginate(_text_lines(report)):
        fig = Figure(figsize=_PAGE_SIZE)
        y = _PAGE_TOP
        for style, text in page:
            fig.text(0.07, y, text, va="top", ha="left", parse_math=False, **_STYLES[style])
            y -= _line_height(style)
        pages.append(fig)
    return pages


def write_report(
    path: str | os.PathLike[str],
    report: Mapping[str, Any],
    figures: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
) -> Path:
    """Write a release report for data stewards: one self-contained HTML file, or a PDF.

    HTML: the verdict (and the reasons for a refusal), the generator, the privacy audit and
    utility tables with each metric's value, threshold/target and result, per-node metrics,
    provenance, and the plots as embedded PNG images. Inline CSS; no scripts, fonts or other
    external resources. Every string from ``report`` is HTML-escaped.
    PDF: a text page (more if long) with the same content, then one page per plot.

    Parameters
    ----------
    path
        Destination ending in ``.html`` (or ``.htm``) or ``.pdf``. Written atomically
        (temporary file, then rename); missing parent directories are created.
    report
        ``{"title", "verdict": "released"|"refused", "reasons": [...], "created",
        "generator": {...}, "privacy": [{"name", "value", "threshold", "pass", "detail"}, ...],
        "utility": [{"name", "value", "target", "pass"}, ...], "per_node": {node: {metric:
        value}}, "provenance": {...}}``.
    figures
        Plot data by name, each optional: ``"af"`` ``{"real", "synthetic"}`` (:func:`plot_af`),
        ``"ld"`` ``{"bins_bp", "real", "synthetic"}`` (:func:`plot_ld`), ``"pca"``
        ``{"synthetic": {"scores", "labels"}, "real": {pop: {"mean", "cov", "n"}}}``
        (:func:`plot_pca`). The privacy plot (:func:`plot_privacy`) is drawn from
        ``report["privacy"]`` whenever a metric is numeric; ``"privacy": False`` leaves it out.
    format
        ``"html"`` or ``"pdf"``; by default taken from the suffix of ``path``.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ValueError
        If the report or figure data is malformed, the format is unknown or does not match the
        suffix, or a figure name is unknown.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    by_suffix = {".html": "html", ".htm": "html", ".pdf": "pdf"}.get(suffix)
    fmt = format.lower() if format is not None else by_suffix
    if fmt not in ("html", "pdf"):
        raise ValueError(
            f"write_report: cannot write {format or suffix or 'a file without suffix'!r}; "
            "use a path ending in .html or .pdf (format='html' or 'pdf')"
        )
    if by_suffix != fmt:
        raise ValueError(
            f"write_report: format={fmt!r} needs a path ending in .{fmt}; got {path.name!r}"
        )
    if fmt == "html":
        payload = render_html(report, figures).encode("utf-8")
    else:
        _check_report(report)
        figs = _build_figures(report, figures)
        buf = io.BytesIO()
        with PdfPages(buf, metadata={"CreationDate": None, "Creator": "genofed"}) as pdf:
            for page in _text_pages(report):
                pdf.savefig(page)
            for name in FIGURE_ORDER:
                if name in figs:
                    pdf.savefig(figs[name])
        payload = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return path
