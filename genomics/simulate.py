"""Simulate a demo cohort: genotypes (VCF), sample sheet, phenotypes with planted effects, split.

The genotypes come from stdpopsim's HomSap ``OutOfAfrica_3G09`` model (YRI/CEU/CHB, Gutenkunst
et al. 2009), simulated with msprime over a window of chromosome 22 at the species' mean
recombination rate (no genetic map download) and the model's mutation rate. Only bi-allelic
sites are kept; REF is the ancestral allele. The VCF is written in pure Python as BGZF (a valid
multi-member gzip that htslib/cyvcf2 read and ``tabix`` can index), with ~0.5% of calls missing
(``./.``) and ~1% of sites unphased (``/``).

Phenotypes (``phenotypes.csv``; ``sex`` is 0 = male, 1 = female):

- ``age`` uniform integer 40-80; ``bmi`` = 27 + 0.06 (age - 60) + N(0, 4.5), clipped to 16-55;
- ``ldl`` (mg/dL, ~130 +- 35) = 130 + 0.8 (age - 60) + 4 female + genetic + noise, where each of
  ``n_causal_ldl`` causal variants explains ~3% of the variance (genome-wide significant with a
  linear regression at n = 3000);
- ``t2d`` (0/1, ~20% prevalence) ~ logistic in age, bmi and ``n_causal_t2d`` causal variants
  (beta^2 * 2pq = 0.25 on the logit scale each, detectable at n = 3000).

About 1% of ``bmi`` and ``ldl`` values are empty (NULL). Causal variants have MAF >= 0.1, are
distinct between traits, spaced apart (100 kb by default) and in linkage equilibrium with
each other (r^2 < 0.01); ``truth.json`` records them as
``22:pos:ref:alt`` with their effects. Effects are computed from the true (unmasked) genotypes.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tskit

POPS = ("YRI", "CEU", "CHB")
SUPER_POP = {"YRI": "AFR", "CEU": "EUR", "CHB": "EAS"}
NODES = ("biobank_A", "biobank_B", "biobank_C")
# P(node | super-population): overall sizes 45/35/20%; A mostly EUR, B mostly EAS, C mostly AFR.
NODE_MIX = {"EUR": (0.80, 0.15, 0.05), "AFR": (0.25, 0.35, 0.40), "EAS": (0.30, 0.55, 0.15)}
CHR22_LENGTH = 50_818_468  # GRCh38


@dataclass(frozen=True)
class CohortPaths:
    """Paths of the files written by :func:`simulate_cohort`."""

    vcf: Path
    samples: Path
    phenotypes: Path
    split: Path
    truth: Path


class _BgzfWriter:
    """Minimal BGZF (blocked gzip) writer, so no ``bgzip`` binary is needed."""

    _EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

    def __init__(self, path: Path, level: int = 4) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._level = level
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 65280:
            self._block(bytes(self._buf[:65280]))
            del self._buf[:65280]

    def _block(self, data: bytes) -> None:
        c = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        payload = c.compress(data) + c.flush()
        header = struct.pack(
            "<4BI2BH2BHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(payload) + 25
        )
        self._f.write(header + payload + struct.pack("<2I", zlib.crc32(data), len(data)))

    def close(self) -> None:
        if self._buf:
            self._block(bytes(self._buf))
        self._f.write(self._EOF)
        self._f.close()


def _pick_causal(
    ts: tskit.TreeSequence,
    hap_index: np.ndarray,
    k: int,
    rng: np.random.Generator,
    min_spacing: int = 100_000,
    max_r2: float = 0.01,
    min_maf: float = 0.1,
) -> dict[int, np.ndarray]:
    """Pick ``k`` sites with MAF >= ``min_maf``, ``min_spacing`` bp apart and with pairwise r^2
    below ``max_r2`` (relaxed in steps when the window is too small to satisfy them); return
    their true diploid ALT dosages (samples in ``hap_index`` order), sorted by site."""
    import tskit

    freq = np.zeros(ts.num_sites)
    for tree in ts.trees():
        for site in tree.sites():
            freq[site.id] = tree.num_samples(site.mutations[0].node) / ts.num_samples
    pos = ts.tables.sites.position
    var = tskit.Variant(ts)
    chosen: dict[int, np.ndarray] = {}
    for spacing, r2, maf in [(min_spacing, max_r2, min_maf), (0, 0.5, min_maf), (0, 1.0, 0.05)]:
        for i in rng.permutation(np.flatnonzero((freq >= maf) & (freq <= 1 - maf))):
            if int(i) in chosen or any(abs(pos[i] - pos[j]) < spacing for j in chosen):
                continue
            var.decode(int(i))
            x = var.genotypes[hap_index].reshape(-1, 2).sum(axis=1).astype(float)
            if all(np.corrcoef(x, y)[0, 1] ** 2 < r2 for y in chosen.values()):
                chosen[int(i)] = x
                if len(chosen) == k:
                    return dict(sorted(chosen.items()))
    raise ValueError(f"only {len(chosen)} causal variants with MAF >= 0.05; increase length_bp")


def simulate_cohort(
    out_dir: str | Path,
    n_samples: int = 3000,
    length_bp: int = 2_000_000,
    seed: int = 1,
    *,
    start_bp: int = 20_000_000,
    n_causal_ldl: int = 5,
    n_causal_t2d: int = 4,
    missing_rate: float = 0.005,
    unphased_site_rate: float = 0.01,
    verbose: bool = False,
) -> CohortPaths:
    """Simulate a three-population demo cohort and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output directory (created if needed).
    n_samples : int
        Number of diploid samples, split evenly over YRI, CEU and CHB.
    length_bp : int
        Length of the simulated chr22 window (2 Mb gives ~40,000 bi-allelic sites).
    seed : int
        Seed for the simulation and every random choice; equal seeds give equal files.
    start_bp : int
        First position of the window on chromosome 22.
    n_causal_ldl, n_causal_t2d : int
        Number of causal variants planted for ``ldl`` and ``t2d``.
    missing_rate : float
        Fraction of genotype calls written as ``./.``.
    unphased_site_rate : float
        Fraction of sites whose genotypes are written unphased.
    verbose : bool
        Print the time taken by each step to stderr.

    Returns
    -------
    CohortPaths
        ``vcf`` (cohort.vcf.gz), ``samples`` (samples.tsv), ``phenotypes`` (phenotypes.csv),
        ``split`` (split.tsv) and ``truth`` (truth.json).
    """
    try:
        import msprime  # noqa: F401
        import stdpopsim
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "simulate_cohort needs msprime and stdpopsim: install genofed[sim]"
        ) from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = CohortPaths(
        out / "cohort.vcf.gz",
        out / "samples.tsv",
        out / "phenotypes.csv",
        out / "split.tsv",
        out / "truth.json",
    )
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()

    def step(what: str) -> None:
        if verbose:
            print(f"  {what}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    # -- genotypes -------------------------------------------------------------------------
    species = stdpopsim.get_species("HomSap")
    model = species.get_demographic_model("OutOfAfrica_3G09")
    contig = species.get_contig(
        "chr22", left=start_bp, right=start_bp + length_bp, mutation_rate=model.mutation_rate
    )
    per_pop = {p: n_samples // 3 + (1 if i < n_samples % 3 else 0) for i, p in enumerate(POPS)}
    ts = stdpopsim.get_engine("msprime").simulate(model, contig, per_pop, seed=seed)
    ts = ts.delete_sites([s.id for s in ts.sites() if len(s.mutations) != 1])
    step(f"msprime simulated {ts.num_individuals} x {ts.num_sites} bi-allelic sites")

    # Sample columns are a random permutation of the individuals, so names do not reveal ancestry.
    order = rng.permutation(ts.num_individuals)
    ind_nodes = np.array([ts.individual(int(i)).nodes for i in order])  # (n, 2)
    node_pop = ts.tables.nodes.population
    pops = [ts.population(int(node_pop[a])).metadata["name"] for a, _ in ind_nodes]
    column = np.zeros(ts.num_nodes, dtype=np.int64)
    column[ts.samples()] = np.arange(ts.num_samples)  # genotype column of each sample node
    hap_index = column[ind_nodes.ravel()]
    names = [f"DEMO{i + 1:06d}" for i in range(n_samples)]

    pos = ts.tables.sites.position.astype(np.int64)
    causal_dosage = _pick_causal(
        ts,
        hap_index,
        n_causal_ldl + n_causal_t2d,
        rng,
        min_spacing=min(100_000, length_bp // (4 * (n_causal_ldl + n_causal_t2d))),
    )
    causal = list(rng.permutation(list(causal_dosage)))  # random trait assignment
    ldl_ids, t2d_ids = sorted(causal[:n_causal_ldl]), sorted(causal[n_causal_ldl:])
    variant_id: dict[int, str] = {}

    unphased = rng.random(ts.num_sites) < unphased_site_rate
    header = (
        "##fileformat=VCFv4.2\n##source=genofed.genomics.simulate (stdpopsim OutOfAfrica_3G09)\n"
        f"##contig=<ID=22,length={CHR22_LENGTH}>\n"
        '##FILTER=<ID=PASS,Description="All filters passed">\n'
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(names) + "\n"
    )
    vcf = _BgzfWriter(paths.vcf)
    vcf.write(header.encode())
    cell = np.empty((n_samples, 4), dtype=np.uint8)
    for var in ts.variants():
        sid = var.site.id
        g = var.genotypes[hap_index].reshape(n_samples, 2)
        if sid in causal_dosage:
            variant_id[sid] = f"22:{pos[sid]}:{var.alleles[0]}:{var.alleles[1]}"
        if unphased[sid]:
            g = np.sort(g, axis=1)
        cell[:, 0] = g[:, 0] + 48
        cell[:, 1] = ord("/") if unphased[sid] else ord("|")
        cell[:, 2] = g[:, 1] + 48
        cell[:, 3] = 9  # tab
        miss = rng.random(n_samples) < missing_rate
        cell[miss, 0] = cell[miss, 2] = ord(".")
        cell[miss, 1] = ord("/")
        cell[-1, 3] = 10  # newline
        vcf.write(
            f"22\t{pos[sid]}\t.\t{var.alleles[0]}\t{var.alleles[1]}\t.\tPASS\t.\tGT\t".encode()
            + cell.tobytes()
        )
    vcf.close()
    step(f"wrote {paths.vcf}")

    # -- sample sheet and split ----------------------------------------------------------------
    sex = rng.integers(0, 2, n_samples)  # 1 = female
    sup = [SUPER_POP[p] for p in pops]
    with open(paths.samples, "w") as f:
        f.write("sample\tpop\tsuper_pop\tsex\n")
        for name, p, s, x in zip(names, pops, sup, sex, strict=True):
            f.write(f"{name}\t{p}\t{s}\t{'female' if x else 'male'}\n")
    node = np.empty(n_samples, dtype=object)
    for sp, mix in NODE_MIX.items():
        idx = rng.permutation(np.flatnonzero(np.array(sup) == sp))
        cuts = np.round(np.cumsum(mix)[:-1] * len(idx)).astype(int)
        for nd, part in zip(NODES, np.split(idx, cuts), strict=True):
            node[part] = nd
    with open(paths.split, "w") as f:
        f.write("sample\tnode\n" + "".join(f"{a}\t{b}\n" for a, b in zip(names, node, strict=True)))

    # -- phenotypes ----------------------------------------------------------------------------
    age = rng.integers(40, 81, n_samples)
    bmi = np.clip(27 + 0.06 * (age - 60) + rng.normal(0, 4.5, n_samples), 16, 55)

    def genetic(ids: list[int], scale2: float) -> tuple[np.ndarray, list[dict[str, object]]]:
        """Sum of effects with beta^2 * 2pq = scale2 each, random sign."""
        total, rows = np.zeros(n_samples), []
        for sid in ids:
            x = causal_dosage[sid]
            p = x.mean() / 2
            beta = float(rng.choice([-1, 1]) * np.sqrt(scale2 / (2 * p * (1 - p))))
            total += beta * (x - 2 * p)
            rows.append(
                {"variant_id": variant_id[sid], "beta": round(beta, 4), "alt_freq": round(p, 4)}
            )
        return total, rows

    ldl_g, ldl_truth = genetic(ldl_ids, 0.03 * 35.0**2)
    ldl = 130 + 0.8 * (age - 60) + 4 * sex + ldl_g + rng.normal(0, 31, n_samples)
    ldl = np.clip(ldl, 30, 400)
    t2d_g, t2d_truth = genetic(t2d_ids, 0.25)
    eta = 0.06 * (age - 60) + 0.12 * (bmi - 27) + t2d_g
    lo, hi = -10.0, 10.0  # intercept giving 20% expected prevalence
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(mid + eta)))) < 0.20 else (lo, mid)
    t2d = (rng.random(n_samples) < 1 / (1 + np.exp(-(lo + eta)))).astype(int)
    bmi_txt = np.where(rng.random(n_samples) < 0.01, "", np.char.mod("%.1f", bmi))
    ldl_txt = np.where(rng.random(n_samples) < 0.01, "", np.char.mod("%.1f", ldl))
    with open(paths.phenotypes, "w") as f:
        f.write("sample_id,age,sex,bmi,ldl,t2d\n")
        for row in zip(names, age, sex, bmi_txt, ldl_txt, t2d, strict=True):
            f.write(",".join(map(str, row)) + "\n")

    truth = {
        "seed": seed,
        "n_samples": n_samples,
        "n_variants": ts.num_sites,
        "region": {"chrom": "22", "start": start_bp, "stop": start_bp + length_bp - 1},
        "model": "HomSap/OutOfAfrica_3G09 (msprime)",
        "sex_coding": "0 = male, 1 = female",
        "ldl": {
            "model": "130 + 0.8*(age-60) + 4*sex + sum(beta*(dosage-2p)) + N(0, 31^2)",
            "causal": ldl_truth,
        },
        "bmi": {"model": "27 + 0.06*(age-60) + N(0, 4.5^2), clipped to [16, 55]"},
        "t2d": {
            "model": "logit P = b0 + 0.06*(age-60) + 0.12*(bmi-27) + sum(beta*(dosage-2p))",
            "intercept": round(lo, 4),
            "prevalence": float(t2d.mean()),
            "causal": t2d_truth,
        },
        "nodes": {nd: int((node == nd).sum()) for nd in NODES},
        "missing_rate": missing_rate,
        "unphased_sites": int(unphased.sum()),
    }
    paths.truth.write_text(json.dumps(truth, indent=2) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m genofed.genomics.simulate OUT_DIR [options]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n-samples", type=int, default=3000)
    ap.add_argument("--length-bp", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    paths = simulate_cohort(args.out_dir, args.n_samples, args.length_bp, args.seed, verbose=True)
    truth = json.loads(paths.truth.read_text())
    print(
        f"simulated {truth['n_samples']} samples x {truth['n_variants']} variants "
        f"in {time.perf_counter() - t0:.1f}s; nodes {truth['nodes']}"
    )
    for key, path in asdict(paths).items():
        print(f"  {key:<10} {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
