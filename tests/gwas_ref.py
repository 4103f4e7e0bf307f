"""Pooled references for the genomic statistics: plink2 (--glm, --hardy) on the pooled,
bcftools-split VCF, and exact numpy computations on the pooled dosage matrix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import allel
import numpy as np
import pandas as pd
from scipy import stats as sps


def split_vcf(vcf: Path, out: Path, regions: str | None = None) -> Path:
    """``bcftools norm -m-`` of (a region of) a VCF, as genofed splits multi-allelic records."""
    view = f"bcftools view -Ou {'-r ' + regions if regions else ''} {vcf}"
    subprocess.run(f"{view} | bcftools norm -m- -Oz -o {out} 2>/dev/null && tabix -f -p vcf {out}", shell=True, check=True)
    return out


def make_pgen(split: Path, prefix: Path) -> Path:
    subprocess.run(["plink2", "--vcf", str(split), "--set-all-var-ids", "@:#:$r:$a", "--new-id-max-allele-len", "10000",
                    "--make-pgen", "--threads", "2", "--memory", "2000", "--out", str(prefix)], check=True, capture_output=True)
    return prefix


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """A plink2 pheno/covar file: ``#IID`` then the columns."""
    out = df.copy()
    out.insert(0, "#IID", out.index)
    out.to_csv(path, sep="\t", index=False, na_rep="NA")
    return path


def plink2_glm(prefix: Path, pheno: Path, name: str, covar: Path | None, covars: list[str], out: Path, logistic: bool = False) -> pd.DataFrame:
    """``plink2 --glm`` results for the ADD test, indexed by variant_id, with the effect oriented
    to the ALT allele (plink2's A1 may be REF)."""
    cmd = ["plink2", "--pfile", str(prefix), "--pheno", str(pheno), "--pheno-name", name, "--threads", "2", "--memory", "2000",
           "--glm", "hide-covar", *(["no-firth"] if logistic else []), "--out", str(out)]
    if covar is not None:
        cmd += ["--covar", str(covar), "--covar-name", ",".join(covars), "--covar-variance-standardize"]
    else:
        cmd[cmd.index("hide-covar")] = "allow-no-covars"
    subprocess.run(cmd, check=True, capture_output=True)
    f = next(Path(out).parent.glob(f"{Path(out).name}.{name}.glm.{'logistic' if logistic else 'linear'}"))
    df = pd.read_csv(f, sep="\t", na_values=["NA", "."], dtype={"#CHROM": str, "ID": str})
    df = df[df["TEST"] == "ADD"].set_index("ID")
    flip = df["A1"] != df["ALT"]
    if logistic:
        df.loc[flip, "OR"] = 1 / df.loc[flip, "OR"]
        df.loc[flip, "Z_STAT"] = -df.loc[flip, "Z_STAT"]
    else:
        df.loc[flip, "BETA"] = -df.loc[flip, "BETA"]
        df.loc[flip, "T_STAT"] = -df.loc[flip, "T_STAT"]
    return df


def plink2_hardy(prefix: Path, out: Path) -> pd.DataFrame:
    subprocess.run(["plink2", "--pfile", str(prefix), "--hardy", "--threads", "2", "--out", str(out)], check=True, capture_output=True)
    return pd.read_csv(f"{out}.hardy", sep="\t", dtype={"#CHROM": str, "ID": str}).set_index("ID")


def dosages(split: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(variant ids, sample ids, dosage float [variants, samples] with NaN for missing) of a
    split VCF, read with scikit-allel (an independent reader)."""
    cs = allel.read_vcf(str(split), fields=["variants/CHROM", "variants/POS", "variants/REF", "variants/ALT", "calldata/GT", "samples"],
                        alt_number=1)
    ids = [f"{c}:{p}:{r}:{a}" for c, p, r, a in zip(cs["variants/CHROM"], cs["variants/POS"], cs["variants/REF"], cs["variants/ALT"])]
    gt = allel.GenotypeArray(cs["calldata/GT"])
    d = gt.to_n_alt(fill=-1).astype(np.float64)
    d[gt.is_missing()] = np.nan
    return ids, list(cs["samples"]), d


def ols(g: np.ndarray, y: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """Per-variant OLS y ~ g + c (+ intercept) with per-variant complete cases, by lstsq."""
    out = {k: np.full(len(g), np.nan) for k in ("beta", "se", "p")}
    for i, row in enumerate(g):
        ok = ~np.isnan(row)
        x = np.column_stack([row[ok], np.ones(ok.sum()), c[ok]])
        if np.linalg.matrix_rank(x) < x.shape[1]:
            continue
        beta, res, *_ = np.linalg.lstsq(x, y[ok], rcond=None)
        df = ok.sum() - x.shape[1]
        resid = y[ok] - x @ beta
        sigma2 = resid @ resid / df
        se = np.sqrt(sigma2 * np.linalg.inv(x.T @ x)[0, 0])
        out["beta"][i], out["se"][i] = beta[0], se
        out["p"][i] = 2 * sps.t.sf(abs(beta[0] / se), df)
    return out


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if len(a) else 0.0


def logistic(g: np.ndarray, y: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """Per-variant logistic regression y ~ g + c (+ intercept), Newton to machine precision."""
    out = {k: np.full(len(g), np.nan) for k in ("beta", "se", "p")}
    for i, row in enumerate(g):
        ok = ~np.isnan(row)
        x = np.column_stack([row[ok], np.ones(ok.sum()), c[ok]])
        b = np.zeros(x.shape[1])
        for _ in range(60):
            p = 1 / (1 + np.exp(-x @ b))
            h = x.T @ (x * (p * (1 - p))[:, None])
            step = np.linalg.solve(h, x.T @ (y[ok] - p))
            b += step
            if np.abs(step).max() < 1e-13:
                break
        se = np.sqrt(np.linalg.inv(h)[0, 0])
        out["beta"][i], out["se"][i], out["p"][i] = b[0], se, 2 * sps.norm.sf(abs(b[0] / se))
    return out
