"""Reference tools (bcftools, plink2) and shared test data, as helpers for genofed's tests.

Every helper returns a pandas DataFrame keyed (indexed) by ``variant_id = chrom:pos:ref:alt``
after splitting multi-allelic records with ``bcftools norm -m-``.

Availability helpers: :func:`have` / :func:`require_tool` and :func:`shared_data_path` /
:func:`require_shared_data`.  When something is missing the ``require_*`` helpers skip the
calling test locally but FAIL it when the environment variable ``GENOFED_REQUIRE_REAL=1`` is set
(CI sets it, so CI always runs the real-data and reference-tool tests).

Semantics of the reference tools compared with genofed's definitions
(``allele_count = sum(dosage)``, ``allele_number = sum(ploidy)`` with ploidy = number of called
alleles), as observed with bcftools/htslib 1.16 and PLINK v2.00a3.5 (tests/test_oracle.py pins them):

* ``bcftools norm -m-`` splits ``1/2`` into ``1/0`` and ``0/1`` and ``2/.`` into ``0/.`` and
  ``1/.``: the same as counting "called alleles equal to this ALT".  Symbolic ALTs (``<CN0>``,
  ``<CN2>,<CN3>``, ``<INS:ME:ALU>``) are split and counted like any allele.  A record with
  ALT ``.`` is kept by bcftools/plink2 (id ``chrom:pos:ref:.``); these helpers drop it, as
  genofed has no row for it.
* ``bcftools +fill-tags -t AC,AN,AF``: AN counts called alleles, so a half-call ``0/.`` adds 1
  (like ``ploidy``), a haploid call 1, ``./.`` 0; no sex information is used.  On the 1126 set
  AC and AN equal the definitions for all 26,250 split variants, chrX and PAR included.  AF is
  printed with ~6 significant digits (compare with a tolerance).  Differences: a polyploid
  call (``0/1/1``) is not counted as 3 alleles (AN and AC come out lower); a FILTER not
  declared in the header makes every bcftools command fail (htslib refuses to write it).
* ``plink2 --freq counts``: see :func:`plink2_freq`.  Equal to the definitions for diploid
  calls.  On an autosome a haploid call ``0`` always becomes the homozygous DIPLOID ``0/0``
  (OBS_CT 2, genofed ploidy 1); a half-call ``0/.`` / ``1/.`` becomes ``0/0`` / ``1/1`` with
  ``--vcf-half-call haploid``, missing with ``missing``, ``0/0`` / ``0/1`` with
  ``reference`` (and is an error by default); no mode counts just the called allele.
  On chrX plink2 uses the sample's SEX, not the written ploidy: without ``--update-sex``
  every sample is treated as female (male ``0/.`` counted twice, OBS_CT = AN + #males);
  with sex but without ``--split-par`` males are haploid in the pseudo-autosomal regions too
  (OBS_CT = AN - #males there, male heterozygous calls set missing); with sex and
  ``--split-par b37`` all 26,250 split variants of the 1126 set agree exactly.  Polyploid
  calls are set missing.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from functools import cache
from os import PathLike
from pathlib import Path

import pandas as pd

__all__ = [
    "REQUIRE_REAL_ENV",
    "SHARED_DATA_ENV",
    "bcftools_fill_tags",
    "bcftools_genotypes",
    "have",
    "plink2_freq",
    "require_real",
    "require_shared_data",
    "require_tool",
    "shared_data_path",
]

StrPath = str | PathLike[str]

#: Environment variable that turns "skip because missing" into a test failure (CI sets it).
REQUIRE_REAL_ENV = "GENOFED_REQUIRE_REAL"
#: Environment variable overriding the location of the shared real data.
SHARED_DATA_ENV = "GENOFED_SHARED_DATA"


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------


def require_real() -> bool:
    """True when missing tools/data must fail tests instead of skipping them."""
    return os.environ.get(REQUIRE_REAL_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _skip_or_fail(reason: str) -> None:
    import pytest

    if require_real():
        pytest.fail(f"{reason} (and {REQUIRE_REAL_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@cache
def _bcftools_plugins() -> frozenset[str]:
    try:
        out = subprocess.run(
            ["bcftools", "plugin", "-l"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return frozenset()
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


def have(tool: str) -> bool:
    """Is ``tool`` available?  ``"bcftools+fill-tags"`` checks a bcftools plugin too."""
    if "+" in tool:
        base, plugin = tool.split("+", 1)
        return shutil.which(base) is not None and plugin in _bcftools_plugins()
    return shutil.which(tool) is not None


def require_tool(*tools: str) -> None:
    """Skip the current test if a tool is missing (fail if ``GENOFED_REQUIRE_REAL=1``)."""
    missing = [t for t in tools if not have(t)]
    if missing:
        _skip_or_fail(f"reference tool(s) not installed: {', '.join(missing)}")


def shared_data_path() -> Path:
    """Directory of the shared real data (``$GENOFED_SHARED_DATA`` or ``<repo>/../shared/data``).

    Does not check that it exists; see :func:`require_shared_data`.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


def require_shared_data(*parts: str) -> Path:
    """Return ``shared_data_path() / parts``; skip (or fail in CI) when it does not exist."""
    p = shared_data_path().joinpath(*parts)
    if not p.exists():
        _skip_or_fail(
            f"shared real data not found: {p} (set {SHARED_DATA_ENV} or provide ../shared/data)"
        )
    return p


# --------------------------------------------------------------------------------------------
# running tools
# --------------------------------------------------------------------------------------------


def _run(cmd: Sequence[str] | str, *, shell: bool = False, cwd: StrPath | None = None) -> str:
    """Run a command, returning stdout; raise with stderr on failure."""
    res = subprocess.run(
        cmd,
        shell=shell,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        executable="/bin/bash" if shell else None,
    )
    if res.returncode != 0:
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        raise RuntimeError(f"command failed ({res.returncode}): {shown}\n{res.stderr[-4000:]}")
    return res.stdout


def _write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def _samples_arg(samples: StrPath | Iterable[str] | None, tmp: Path) -> Path | None:
    """A file with one sample id per line, from a file path or an iterable of ids."""
    if samples is None:
        return None
    if isinstance(samples, str | PathLike):
        return Path(samples)
    return _write_lines(tmp / "samples.txt", samples)


def _split_view(vcf: StrPath, samples_file: Path | None, regions: str | None) -> str:
    """Shell pipeline (string) emitting an uncompressed, split VCF on stdout."""
    view = ["bcftools", "view", "-Ou"]
    if samples_file is not None:
        view += ["-S", str(samples_file), "--force-samples"]
    if regions:
        view += ["-r", regions]
    view.append(str(vcf))
    return f"{shlex.join(view)} | bcftools norm -m- -Ou -"


_NUMERIC = ["AC", "AN", "AF"]


def bcftools_fill_tags(
    vcf: StrPath,
    samples_file: StrPath | Iterable[str] | None = None,
    *,
    regions: str | None = None,
) -> pd.DataFrame:
    """AC, AN, AF per split variant from ``bcftools norm -m- | bcftools +fill-tags``.

    ``samples_file``: restrict to these samples (a file with one id per line, or the ids).
    ``regions``: optional ``-r`` region (needs an index).  Index: ``variant_id``; columns
    ``AC`` (int), ``AN`` (int), ``AF`` (float, NaN when AN = 0).

    Half-calls ``0/.`` count 1 in AN (the called allele), haploid calls 1, ``./.`` 0.
    """
    with tempfile.TemporaryDirectory(prefix="genofed_bcft_") as d:
        sf = _samples_arg(samples_file, Path(d))
        cmd = (
            f"{_split_view(vcf, sf, regions)} | bcftools +fill-tags -Ou - -- -t AC,AN,AF | "
            "bcftools query -f '%CHROM:%POS:%REF:%ALT\\t%INFO/AC\\t%INFO/AN\\t%INFO/AF\\n' -"
        )
        out = _run(cmd, shell=True)
    df = pd.read_csv(
        io.StringIO(out),
        sep="\t",
        header=None,
        names=["variant_id", *_NUMERIC],
        dtype={"variant_id": str},
        na_values=["."],
        keep_default_na=False,
    )
    # a record whose ALT is '.' has no ALT allele: no row (as in genofed's variants table)
    df = df[~df["variant_id"].str.endswith(":.")].copy()
    df["AC"] = df["AC"].astype("int64")
    df["AN"] = df["AN"].astype("int64")
    df["AF"] = df["AF"].astype("float64")
    return df.set_index("variant_id")


def bcftools_genotypes(
    vcf: StrPath,
    variant_ids: Iterable[str] | None = None,
    *,
    regions: str | None = None,
    samples_file: StrPath | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Long table of split genotypes from ``bcftools norm -m- | bcftools query``.

    Columns: ``variant_id, sample_id, gt`` (the GT string after splitting, e.g. ``0|1``,
    ``0/.``, ``1``, ``./.``) plus ``dosage``, ``ploidy``, ``phased`` computed from it with
    genofed's definitions (a fully independent second oracle for a few variants).  Use
    ``regions`` to keep it small.
    """
    with tempfile.TemporaryDirectory(prefix="genofed_bcft_") as d:
        sf = _samples_arg(samples_file, Path(d))
        cmd = (
            f"{_split_view(vcf, sf, regions)} | "
            "bcftools query -f '[%CHROM:%POS:%REF:%ALT\\t%SAMPLE\\t%GT\\n]' -"
        )
        out = _run(cmd, shell=True)
    df = pd.read_csv(
        io.StringIO(out),
        sep="\t",
        header=None,
        names=["variant_id", "sample_id", "gt"],
        dtype=str,
        keep_default_na=False,
    )
    df = df[~df["variant_id"].str.endswith(":.")]
    if variant_ids is not None:
        df = df[df["variant_id"].isin(set(variant_ids))]
    alleles = df["gt"].str.split(r"[/|]", regex=True)
    # after norm -m- every row is bi-allelic: called alleles are "0" or "1"
    df = df.assign(
        ploidy=alleles.map(lambda a: sum(x != "." for x in a)).astype("int8"),
        dosage=alleles.map(lambda a: sum(x == "1" for x in a)).astype("Int8"),
        phased=df["gt"].str.contains("|", regex=False) & (alleles.map(len) == 2),
    )
    df.loc[df["ploidy"] == 0, "dosage"] = pd.NA
    return df.reset_index(drop=True)


def plink2_freq(
    vcf: StrPath,
    samples_keep: StrPath | Iterable[str] | None = None,
    loop_cats_file: StrPath | None = None,
    *,
    loop_cats_column: str | None = None,
    sex_file: StrPath | None = None,
    half_call: str = "haploid",
    split_par: str | None = None,
    regions: str | None = None,
    extra_args: Sequence[str] = (),
) -> pd.DataFrame:
    """ALT allele counts per split variant from ``plink2 --freq counts``.

    The VCF is first split with ``bcftools norm -m-``, then read by plink2 with
    ``--set-all-var-ids @:#:$r:$a --new-id-max-allele-len 10000`` so that plink2's ID equals
    genofed's ``variant_id``.

    Parameters
    ----------
    samples_keep:
        ``--keep``: a file (``#IID`` header or one id per line) or an iterable of ids.
    loop_cats_file, loop_cats_column:
        ``--pheno FILE --loop-cats COLUMN``: one frequency table per category (a TSV with a
        ``#IID`` column and a categorical column with non-numeric values).  The result then has
        a ``category`` column and is indexed by ``(category, variant_id)``.
    sex_file:
        ``--update-sex`` file (``#IID  SEX`` with 1 = male, 2 = female).  Without it every
        sample has unknown sex, and plink2 treats unknown sex like female on chrX.
    half_call:
        ``--vcf-half-call`` mode.  ``haploid`` (default) turns ``0/.`` into a homozygous call:
        on chrX for a male that is the haploid allele (as genofed), on an autosome or for a
        female it is a DIPLOID ``0/0`` (OBS_CT 2, genofed ploidy 1).  ``missing`` drops it
        (genofed counts 1).  There is no plink2 mode that counts exactly the called allele.
    split_par:
        e.g. ``"b37"``: ``--split-par b37`` moves the chrX pseudo-autosomal regions to chrom
        ``PAR1``/``PAR2`` (diploid for everyone), the variant_id keeps ``X``.
    regions:
        restrict with ``bcftools view -r`` before plink2.

    Returns columns ``ALT_CTS`` and ``OBS_CT`` (ints) indexed by ``variant_id``.
    """
    if (loop_cats_file is None) != (loop_cats_column is None):
        raise ValueError("loop_cats_file and loop_cats_column go together")
    with tempfile.TemporaryDirectory(prefix="genofed_plink2_") as d:
        tmp = Path(d)
        split = tmp / "split.vcf.gz"
        _run(f"{_split_view(vcf, None, regions)} -Oz -o {shlex.quote(str(split))}", shell=True)
        cmd = [
            "plink2",
            "--vcf",
            str(split),
            "--vcf-half-call",
            half_call,
            "--set-all-var-ids",
            "@:#:$r:$a",
            "--new-id-max-allele-len",
            "10000",
            "--allow-extra-chr",
            "--threads",
            "2",
            "--memory",
            "2000",
            "--freq",
            "counts",
            "--out",
            str(tmp / "out"),
        ]
        if split_par:
            cmd += ["--split-par", split_par]
        if samples_keep is not None:
            keep = samples_keep
            if not isinstance(keep, str | PathLike):
                keep = _write_lines(tmp / "keep.txt", ["#IID", *keep])
            cmd += ["--keep", str(keep)]
        if sex_file is not None:
            cmd += ["--update-sex", str(sex_file)]
        if loop_cats_file is not None:
            cmd += ["--pheno", str(loop_cats_file), "--loop-cats", str(loop_cats_column)]
        cmd += list(extra_args)
        _run(cmd)
        frames = []
        for f in sorted(tmp.glob("out*.acount")):
            df = pd.read_csv(f, sep="\t", dtype={"ID": str, "#CHROM": str})
            df = df.rename(columns={"ID": "variant_id", "#CHROM": "plink_chrom"})
            if loop_cats_file is not None:
                # out.<category>.acount
                df.insert(0, "category", f.name[len("out.") : -len(".acount")])
            frames.append(df)
    if not frames:
        raise RuntimeError("plink2 produced no .acount file")
    res = pd.concat(frames, ignore_index=True)
    res = res[res["ALT"] != "."]  # no ALT allele: no row (as in genofed's variants table)
    res["ALT_CTS"] = res["ALT_CTS"].astype("int64")
    res["OBS_CT"] = res["OBS_CT"].astype("int64")
    keys = ["category", "variant_id"] if loop_cats_file is not None else ["variant_id"]
    return res.set_index(keys).sort_index()
