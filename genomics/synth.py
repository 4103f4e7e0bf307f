"""Synthetic genotypes from a haplotype Markov model trained across the federation.

The model, per population and chromosome, is an order-``k`` Markov chain along the variants:
the probability that a haplotype carries the ALT allele at a variant given its alleles at the
``k`` previous variants (window-wise: each variant has its own ``2^k`` context probabilities,
so allele frequencies and the local LD of every window are kept). Its parameters are counts:
for every population, variant and context, how many haplotypes have each allele.

Training never pools data. Each node counts its own haplotypes (:class:`SynthCounts`, one
analysis round, computed window by window from the phased bit planes), adds differential
privacy noise to its counts *before they leave it* (the node's ``[dp]`` policy, charged to the
researcher's ledger at that node), and the noisy counts are summed in the query's combine mode
(MPC or HE: nobody sees one node's counts). The coordinator turns the summed counts into
probabilities (clipping negative noisy counts, shrinking sparse contexts towards the variant's
frequency) and samples haplotypes; pairs of haplotypes of one population form a diploid
synthetic sample. Sample attributes (population, sex) and phenotypes are drawn from a federated
SQL summary per (population, sex) group.

Each node also keeps a random fraction of its samples out of training (``holdout``: the
non-members of the membership-inference audit) and plants ``canaries`` artificial genomes into
its counts (secret: drawn from a key only the node holds), so the audit can tell whether a
generator memorises: see :mod:`genofed.genomics.synth_audit`.

Differential privacy, stated exactly: one sample changes, per variant, one context cell of each
of its two haplotypes (and the node's own row count): L1 sensitivity ``3·V``, L2 sensitivity
``sqrt(5·V)`` for ``V`` variants. Noise therefore grows with the square root of the number of
variants (a genome-wide release needs a large ε for useful counts); the release report states
the ε spent and the noise scale, and the privacy audit is what gates a release.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.analysis import AnalysisFragment, parse_expression, sample_query, variant_query
from ..engine.errors import GenofedError, PlanningError
from .analyses import (
    ANALYSES,
    KEY,
    KEY_B,
    REAL,
    Analysis,
    Param,
    _col,
    _ids,
    _table,
    chrom_rank,
    variant_columns,
)

SECRET_FILE = "synth.key"
# The ε that genome-wide training needs for useful counts on cohorts of ~1,000 samples (measured:
# benchmarks/RESULTS.md, docs/synthetic.md). Far above the ε of a single query: nodes refuse it
# unless their steward raises [dp] max_epsilon and the researcher's budget on purpose.
DEFAULT_EPSILON = 1000.0
MAX_ORDER = 6


class SynthError(GenofedError):
    """A synthetic-data model or release that cannot be made as asked."""


# -- node side: secrets, holdout, canaries ------------------------------------------------------

def node_secret(store_root: Path) -> bytes:
    """The node's secret for the holdout split and the canaries (created once, 0600, beside the
    store's versions; it never leaves the node)."""
    path = Path(store_root) / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def _seed(secret: bytes, *parts: Any) -> int:
    h = hashlib.sha256(secret)
    for p in parts:
        h.update(b"\0" + str(p).encode())
    return int.from_bytes(h.digest()[:8], "little")


def holdout_mask(secret: bytes, seed: int, sample_ids: list[str], fraction: float) -> np.ndarray:
    """True for the samples a node keeps out of training (its membership-audit non-members)."""
    if fraction <= 0:
        return np.zeros(len(sample_ids), bool)
    u = np.array([_seed(secret, "holdout", seed, s) for s in sample_ids], np.float64) / 2.0**64
    return u < fraction


def population_of(pops: pa.Array) -> np.ndarray:
    vals = pops.cast(pa.string()).to_pylist()
    return np.array(["" if v is None else v for v in vals], dtype=object)


# -- the counting round ----------------------------------------------------------------------------

@dataclass
class Haplotypes:
    """Haplotype alleles of a block of variants: alleles uint8 [rows, 2·samples] (haplotype 1 of
    every sample, then haplotype 2) and called bool [rows, 2·samples]."""

    alleles: np.ndarray
    called: np.ndarray


def genome_sorted(v: pa.Table) -> np.ndarray:
    """Row order of an analysis variants table in genome order (chromosome, position, vidx)."""
    chrom = v.column("chrom").to_pylist()
    pos = v.column("pos").to_numpy()
    vidx = v.column("vidx").to_numpy()
    ranks = np.array([chrom_rank(c) for c in chrom], np.int64)
    return np.lexsort((vidx, pos, ranks))


def context_codes(block: np.ndarray, prev: np.ndarray, order: int) -> np.ndarray:
    """The context of every allele: bit ``t-1`` is the allele ``t`` variants earlier (``prev``:
    the last ``order`` rows before the block, zeros at a chromosome's start)."""
    ext = np.concatenate([prev, block], axis=0)
    c = len(block)
    ctx = np.zeros(block.shape, np.int64)
    for t in range(1, order + 1):
        ctx |= ext[order - t: order - t + c].astype(np.int64) << (t - 1)
    return ctx


class SynthCounts(Analysis):
    name = "synth_counts"
    doc = ("per population, variant and allele context, the haplotype counts of an order-k Markov model "
           "(the node's training samples plus its secret canaries); noised by each node under differential privacy")
    params = {
        "population": Param("str", None, "expression naming each sample's population (one model per population)", required=True),
        "order": Param("int", 2, "Markov order: how many previous variants condition an allele"),
        "holdout": Param("float", 0.2, "fraction of each node's samples kept out of training (audit non-members)"),
        "canaries": Param("int", 2, "artificial genomes each node plants into its counts (the audit looks for them)"),
        "seed": Param("int", 1, "seed of the holdout split and the canaries (with the node's secret)"),
    }
    requires_dp = True

    def layout(self, args, round_):
        if round_ != "counts":
            raise PlanningError(f"unknown round {round_!r}")
        k = int(args["order"])
        if not 1 <= k <= MAX_ORDER:
            raise PlanningError(f"synth: order must be 1..{MAX_ORDER}, got {k}")
        # REAL, not COUNT: the noisy counts may be negative and are summed unclipped (clipping at
        # each node would bias every empty cell upwards; the coordinator clips after the sum)
        return [KEY, KEY_B], [(f"c{i}", REAL) for i in range(2 << k)]

    def check_args(self, args):
        out = super().check_args(args)
        if not 0 <= float(out["holdout"]) < 0.9:
            raise PlanningError("synth: holdout must be in [0, 0.9)")
        if not 0 <= int(out["canaries"]) <= 100:
            raise PlanningError("synth: canaries must be 0..100")
        return out

    def node_fragment(self, args, round_, state, catalog, policy):
        args = self.check_args(args)
        keys, cols = self.layout(args, round_)
        sql, st = sample_query(None, [], args.get("samples"), catalog, extra=[args["population"]])
        return AnalysisFragment(
            fn=self.name, args=args, round=round_, state=state, keys=keys, partials=[c for c, _ in cols],
            counts=[], finite=[c for c, _ in cols], sample_sql=sql, variant_sql=variant_query(args.get("variants"), catalog),
            tables={*st, "genotypes", "variants"}, policy=policy,
        )

    def dp_sensitivity(self, frag: AnalysisFragment, n_variants: int) -> tuple[int, float]:
        """One sample: one cell of each of its two haplotypes per variant (L1 2, L2 2 at worst,
        both in one cell) plus the node's row count ``_n`` (1 per variant row)."""
        v = max(1, int(n_variants))
        return 3 * v, float(np.sqrt(5.0 * v))

    def node_round(self, frag, data):
        args = frag.args
        k = int(args["order"])
        cells = 2 << k
        s = data.samples
        ids = s.sample_id.to_pylist()
        pops = population_of(s.extra["x0"])
        secret = node_secret(data.store.root)
        seed = int(args["seed"])
        train = ~holdout_mask(secret, seed, ids, float(args["holdout"])) & (pops != "")
        v = data.variants
        order = genome_sorted(v)
        vidx = v.column("vidx").to_numpy().astype(np.int64)[order]
        vids = [v.column("variant_id")[int(i)].as_py() for i in order]
        chroms = np.array(v.column("chrom").to_pylist(), dtype=object)[order]
        pop_names = sorted(set(pops[train].tolist()))
        n_canary = int(args["canaries"])
        canary_pop = canary_populations(secret, seed, pops[train], n_canary)
        sel = np.flatnonzero(train)
        cols = {p: [np.flatnonzero(pops[sel] == p)] for p in pop_names}
        n_members = len(sel)
        for j, p in enumerate(canary_pop):  # canaries: columns after the members'
            cols[p].append(np.array([n_members + j]))
        hap_cols = {p: np.concatenate([np.concatenate(c), np.concatenate(c) + n_members + n_canary]) for p, c in cols.items()}
        counts = {p: np.zeros((len(vidx), cells), np.int64) for p in pop_names}
        prev = np.zeros((k, 2 * (n_members + n_canary)), np.uint8)
        last_chrom = None
        unif = canary_uniforms(secret, seed, len(vidx), n_canary)
        for off, h in data.haplotype_chunks(vidx, sidx=s.sidx[sel], phase_seed=_seed(secret, "phase", seed)):
            rows = slice(off, off + len(h.alleles))
            canary = canary_haplotypes(h, hap_cols_members(pop_names, pops[sel]), canary_pop, unif[rows], n_members)
            a = np.concatenate([h.alleles[:, :n_members], canary[0], h.alleles[:, n_members:], canary[1]], axis=1)
            called = np.concatenate([h.called[:, :n_members], np.ones_like(canary[0], bool), h.called[:, n_members:],
                                     np.ones_like(canary[1], bool)], axis=1)
            # restart the context at each chromosome's first variant
            ch = chroms[rows]
            starts = np.flatnonzero(np.r_[ch[0] != last_chrom, ch[1:] != ch[:-1]])
            bounds = [*starts.tolist(), len(ch)]
            if bounds[0] != 0:
                bounds = [0, *bounds]
            for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True):
                if b1 <= b0:
                    continue
                if b0 in starts:
                    prev[:] = 0
                blk = a[b0:b1]
                ctx = context_codes(blk, prev, k)
                cell = ctx * 2 + blk
                for p in pop_names:
                    hc = hap_cols[p]
                    cc, ok = cell[:, hc], called[b0:b1][:, hc]
                    r = np.broadcast_to(np.arange(b1 - b0)[:, None], cc.shape)
                    flat = np.bincount((r[ok] * cells + cc[ok]).ravel(), minlength=(b1 - b0) * cells)
                    counts[p][off + b0: off + b1] += flat.reshape(b1 - b0, cells)
                tail = np.concatenate([prev, blk], axis=0)[-k:]
                prev = tail.copy()
            last_chrom = ch[-1]
        keys_p, keys_v, mats, ns = [], [], [], []
        for p in pop_names:
            n_p = len(cols[p][0]) + sum(len(c) for c in cols[p][1:])
            keys_p += [p] * len(vids)
            keys_v += vids
            mats.append(counts[p])
            ns.append(np.full(len(vids), n_p, np.int64))
        mat = np.concatenate(mats) if mats else np.zeros((0, cells), np.int64)
        n = np.concatenate(ns) if ns else np.zeros(0, np.int64)
        lay = self.layout(args, "counts")[1]
        return _table({KEY: pa.array(keys_p, pa.string()), KEY_B: pa.array(keys_v, pa.string())},
                      {f"c{i}": mat[:, i] for i in range(cells)}, n, lay)

    def drive(self, args, run):
        raise PlanningError("synth_counts is run by genofed.synth_train (it returns a model, not a table)")


def node_canaries(frag: AnalysisFragment, data: Any, secret: bytes, seed: int) -> dict[str, Any]:
    """The node's planted canaries on every analysis variant (genome order), as training drew
    them: ``variant_id``, ``population`` and ``hap1``/``hap2`` uint8 [V, canaries]. Node-side only."""
    s = data.samples
    pops = population_of(s.extra["x0"])
    train = ~holdout_mask(secret, seed, s.sample_id.to_pylist(), float(frag.args["holdout"])) & (pops != "")
    sel = np.flatnonzero(train)
    v = data.variants
    order = genome_sorted(v)
    vidx = v.column("vidx").to_numpy().astype(np.int64)[order]
    n_canary = int(frag.args["canaries"])
    cpop = canary_populations(secret, seed, pops[train], n_canary)
    pop_names = sorted(set(pops[train].tolist()))
    unif = canary_uniforms(secret, seed, len(vidx), n_canary)
    h1 = np.zeros((len(vidx), n_canary), np.uint8)
    h2 = np.zeros_like(h1)
    for off, h in data.haplotype_chunks(vidx, sidx=s.sidx[sel], phase_seed=_seed(secret, "phase", seed)):
        rows = slice(off, off + len(h.alleles))
        h1[rows], h2[rows] = canary_haplotypes(h, hap_cols_members(pop_names, pops[sel]), cpop, unif[rows], len(sel))
    return {"variant_id": [v.column("variant_id")[int(i)].as_py() for i in order], "population": cpop, "hap1": h1, "hap2": h2}


def hap_cols_members(pop_names: list[str], pops: np.ndarray) -> dict[str, np.ndarray]:
    return {p: np.flatnonzero(pops == p) for p in pop_names}


def canary_populations(secret: bytes, seed: int, member_pops: np.ndarray, n: int) -> list[str]:
    """Each canary's population: drawn like a member (a canary looks like one of the node's samples)."""
    if n == 0 or len(member_pops) == 0:
        return []
    rng = np.random.default_rng(_seed(secret, "canary-pop", seed))
    return [str(member_pops[i]) for i in rng.integers(0, len(member_pops), n)]


def canary_uniforms(secret: bytes, seed: int, n_variants: int, n: int, controls: bool = False) -> np.ndarray:
    """float32 [variants, n, 2]: the uniforms that decide each canary allele (fixed per variant
    position in genome order, so the audit regenerates the same genomes)."""
    rng = np.random.default_rng(_seed(secret, "canary-controls" if controls else "canary", seed))
    return rng.random((n_variants, n, 2), dtype=np.float32)


def canary_haplotypes(h: Haplotypes, member_cols: dict[str, np.ndarray], canary_pop: list[str], unif: np.ndarray,
                      n_members: int) -> tuple[np.ndarray, np.ndarray]:
    """Canary haplotype alleles for a block: each allele ALT with the frequency of the canary's
    population among the node's members at that variant (independent across variants)."""
    if not canary_pop:
        z = np.zeros((len(h.alleles), 0), np.uint8)
        return z, z
    freq = population_freqs(h, member_cols, n_members)
    f = np.column_stack([freq[p] for p in canary_pop])
    return (unif[:, :, 0] < f).astype(np.uint8), (unif[:, :, 1] < f).astype(np.uint8)


def population_freqs(h: Haplotypes, member_cols: dict[str, np.ndarray], n_members: int) -> dict[str, np.ndarray]:
    out = {}
    for p, c in member_cols.items():
        hc = np.concatenate([c, c + n_members])
        a, ok = h.alleles[:, hc], h.called[:, hc]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[p] = np.nan_to_num((a * ok).sum(axis=1) / ok.sum(axis=1))
    return out


# -- the model (coordinator side) --------------------------------------------------------------

@dataclass
class SynthModel:
    """The trained model: noisy counts per population [P, V, 2^k, 2] and what they describe."""

    order: int
    populations: list[str]
    variant_id: list[str]
    chrom: np.ndarray
    pos: np.ndarray
    ref: list[str]
    alt: list[str]
    counts: np.ndarray  # float64 [P, V, 2^k, 2]: the summed noisy counts (not clipped)
    haplotypes: np.ndarray  # float64 [P]: estimated training haplotypes per population
    groups: list[dict[str, Any]] = field(default_factory=list)  # attribute/phenotype summary per (population, sex)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_variants(self) -> int:
        return len(self.variant_id)

    def probabilities(self, prior: float | None = None, min_signal: float = 3.0) -> np.ndarray:
        """P(ALT | context) [P, V, 2^k], from the noisy counts by post-processing only.

        1. Each variant's frequency in a population is a posterior mean given its noisy ALT
           count (:func:`denoise_population_frequencies`: empirical Bayes around the denoised
           federation-wide frequency), so the noise does not turn rare variants into common ones.
        2. Where the population has fewer minor alleles than ``min_signal`` noise scales, the
           contexts are noise: the variant is drawn from its frequency alone.
        3. Elsewhere each context's counts are shrunk towards the frequency by ``prior``
           pseudo-haplotypes (default: 2 plus twice the noise scale of a summed count)."""
        raw = self.counts
        sigma = float(self.provenance.get("noise_scale_total") or 0.0)
        ncell = raw.shape[2]
        c = np.clip(raw, 0, None)
        out = np.empty(raw.shape[:3])
        kappa = 2.0 + 2.0 * sigma if prior is None else float(prior)
        freqs = denoise_population_frequencies(raw[..., 1].sum(axis=2), self.haplotypes, sigma * np.sqrt(ncell))
        for p in range(raw.shape[0]):
            hap = max(float(self.haplotypes[p]), 1.0)
            freq = freqs[p]
            q = (c[p, :, :, 1] + kappa * freq[:, None]) / (c[p].sum(axis=2) + kappa)
            weak = hap * np.minimum(freq, 1 - freq) < min_signal * max(sigma, 1e-9) * np.sqrt(ncell)
            q[weak] = freq[weak, None]
            out[p] = np.clip(q, 0.0, 1.0)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model (``.npz``, atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
        meta = {"order": self.order, "populations": self.populations, "ref": self.ref, "alt": self.alt,
                "variant_id": self.variant_id, "groups": self.groups, "provenance": self.provenance, "format": 1}
        try:
            np.savez_compressed(tmp, counts=self.counts, haplotypes=self.haplotypes, chrom=self.chrom.astype(str),
                                pos=self.pos, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SynthModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                return cls(order=int(meta["order"]), populations=list(meta["populations"]), variant_id=list(meta["variant_id"]),
                           chrom=z["chrom"].astype(object), pos=z["pos"].astype(np.int64), ref=list(meta["ref"]),
                           alt=list(meta["alt"]), counts=z["counts"].astype(np.float64), haplotypes=z["haplotypes"],
                           groups=list(meta.get("groups") or []), provenance=dict(meta.get("provenance") or {}))
        except (OSError, KeyError, ValueError) as e:
            raise SynthError(f"{path} is not a genofed synthetic-data model ({e}); train one with `genofed synth train`") from None


def denoise_frequencies(alt: np.ndarray, haplotypes: float, noise: float, iterations: int = 200) -> np.ndarray:
    """Posterior-mean allele frequencies from noisy ALT counts ``alt`` (Gaussian noise of sd
    ``noise``) of ``haplotypes`` haplotypes: the prior is a discrete distribution on a grid of
    frequencies fitted to all the variants by EM (the nonparametric maximum likelihood of
    Kiefer and Wolfowitz; empirical Bayes "g-modelling"). Noise-free counts give alt/haplotypes."""
    alt = np.asarray(alt, np.float64)
    if noise <= 0:
        return np.clip(alt / haplotypes, 0.0, 1.0)
    grid = _grid(haplotypes)
    z = (alt[:, None] - haplotypes * grid[None, :]) / noise
    lik = np.exp(-0.5 * (z**2 - np.min(z**2, axis=1, keepdims=True)))
    w = np.full(len(grid), 1.0 / len(grid))
    for _ in range(iterations):
        post = lik * w
        post /= post.sum(axis=1, keepdims=True)
        w = post.mean(axis=0)
    post = lik * w
    post /= post.sum(axis=1, keepdims=True)
    return post @ grid


def _grid(haplotypes: float) -> np.ndarray:
    half = np.geomspace(1.0 / (4 * haplotypes), 0.5, 48)
    return np.unique(np.concatenate([[0.0], half, 1.0 - half[::-1], [1.0]]))


def denoise_population_frequencies(alt: np.ndarray, haplotypes: np.ndarray, noise: float, fst: float = 0.1) -> np.ndarray:
    """Posterior-mean frequencies [P, V] of each population's variants, borrowing strength
    across populations: the federation-wide frequency is denoised first
    (:func:`denoise_frequencies`, its noise is √P smaller relative to its count), then each
    population's frequency has the Balding-Nichols prior Beta(p(1-F)/F, (1-p)(1-F)/F) around
    it (``fst`` = F), and its noisy count a Gaussian likelihood."""
    from scipy.stats import beta as beta_dist

    alt = np.asarray(alt, np.float64)
    haps = np.maximum(np.asarray(haplotypes, np.float64), 1.0)
    if noise <= 0:
        return np.clip(alt / haps[:, None], 0.0, 1.0)
    total = denoise_frequencies(alt.sum(axis=0), float(haps.sum()), noise * np.sqrt(len(haps)))
    grid = _grid(float(haps.min()))
    mid = np.clip(grid, 1e-6, 1 - 1e-6)
    pg = np.clip(total, 1.0 / (4 * haps.sum()), 1 - 1.0 / (4 * haps.sum()))
    scale = (1 - fst) / fst
    # prior weights on the grid (density at the grid points times the cell widths)
    width = np.gradient(grid)
    prior = beta_dist.pdf(mid[None, :], (pg * scale)[:, None], ((1 - pg) * scale)[:, None]) * width[None, :]
    prior /= prior.sum(axis=1, keepdims=True)
    out = np.empty_like(alt)
    for p in range(alt.shape[0]):
        z = (alt[p][:, None] - haps[p] * grid[None, :]) / noise
        post = prior * np.exp(-0.5 * (z**2 - np.min(z**2, axis=1, keepdims=True)))
        post /= post.sum(axis=1, keepdims=True)
        out[p] = post @ grid
    return out


@dataclass
class SyntheticSet:
    """Synthetic samples: haplotypes uint8 [V, n] each, and their attributes."""

    model: SynthModel
    sample_id: list[str]
    population: list[str]
    sex: list[str | None]
    hap1: np.ndarray
    hap2: np.ndarray
    phenotypes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dosage(self) -> np.ndarray:
        """int8 [n, V] (samples × variants)."""
        return (self.hap1 + self.hap2).T.astype(np.int8)

    @classmethod
    def from_vcf(cls, path: str | os.PathLike[str], populations: dict[str, str] | None = None) -> SyntheticSet:
        """Any synthetic set as a VCF (e.g. another generator's): multi-allelic records split per
        ALT; unphased or missing calls are read as they come (missing as REF). ``populations``
        maps sample ids to population labels (for the population-matched scores)."""
        import cyvcf2

        try:
            vcf = cyvcf2.VCF(str(path))
        except (OSError, ValueError) as e:
            raise SynthError(f"{path}: not a readable VCF ({e})") from None
        ids, chrom, pos, ref, alt, h1, h2 = [], [], [], [], [], [], []
        for rec in vcf:
            gt = np.array([g[:2] if len(g) >= 3 else [g[0], -1] for g in rec.genotypes], np.int64)
            for a, allele in enumerate(rec.ALT, start=1):
                ids.append(f"{rec.CHROM}:{rec.POS}:{rec.REF}:{allele}")
                chrom.append(rec.CHROM)
                pos.append(rec.POS)
                ref.append(rec.REF)
                alt.append(allele)
                h1.append(gt[:, 0] == a)
                h2.append(gt[:, 1] == a)
        if not ids:
            raise SynthError(f"{path}: no variants")
        samples = list(vcf.samples)
        pops = [(populations or {}).get(s, "") for s in samples]
        model = SynthModel(order=0, populations=sorted(set(pops)), variant_id=ids, chrom=np.array(chrom, dtype=object),
                           pos=np.array(pos, np.int64), ref=ref, alt=alt, counts=np.zeros((0, len(ids), 1, 2)),
                           haplotypes=np.zeros(0), provenance={"generator": f"external VCF {Path(path).name}",
                                                               "holdout": 0.0, "canaries": 0, "seed": 1})
        return cls(model, samples, pops, [None] * len(samples), np.array(h1, np.uint8), np.array(h2, np.uint8))


def sample_haplotypes(prob: np.ndarray, chrom: np.ndarray, order: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` haplotypes [V, n] from one population's chain ``prob`` [V, 2^k]."""
    v = prob.shape[0]
    out = np.zeros((v, n), np.uint8)
    mask = (1 << order) - 1
    state = np.zeros(n, np.int64)
    u = rng.random((v, n), dtype=np.float32) if v * n <= 50_000_000 else None
    for j in range(v):
        if j == 0 or chrom[j] != chrom[j - 1]:
            state[:] = 0
        uj = u[j] if u is not None else rng.random(n, dtype=np.float32)
        a = uj < prob[j, state]
        out[j] = a
        state = ((state << 1) | a) & mask
    return out


def sample(model: SynthModel, n: int, seed: int = 1) -> SyntheticSet:
    """Draw ``n`` synthetic diploid samples: populations (and sex) in the proportions of the
    model's group summary, two independent haplotypes of the population's chain each."""
    if n < 1:
        raise SynthError("the number of synthetic samples must be at least 1")
    rng = np.random.default_rng(seed)
    groups = [g for g in model.groups if g["population"] in model.populations and g["n"] > 0]
    if groups:
        w = np.array([g["n"] for g in groups], np.float64)
        pick = rng.choice(len(groups), size=n, p=w / w.sum())
        pops = [groups[i]["population"] for i in pick]
        sexes: list[str | None] = [groups[i].get("sex") for i in pick]
    else:
        w = np.clip(model.haplotypes, 0, None)
        if w.sum() <= 0:
            raise SynthError("the model has no haplotypes (every population was withheld)")
        pick = rng.choice(len(model.populations), size=n, p=w / w.sum())
        pops = [model.populations[i] for i in pick]
        sexes = [None] * n
    prob = model.probabilities()
    h1 = np.zeros((model.n_variants, n), np.uint8)
    h2 = np.zeros_like(h1)
    pop_arr = np.array(pops, dtype=object)
    for pi, p in enumerate(model.populations):
        cols = np.flatnonzero(pop_arr == p)
        if not len(cols):
            continue
        haps = sample_haplotypes(prob[pi], model.chrom, model.order, 2 * len(cols), rng)
        h1[:, cols], h2[:, cols] = haps[:, : len(cols)], haps[:, len(cols):]
    ids = [f"SYN{i + 1:06d}" for i in range(n)]
    out = SyntheticSet(model, ids, pops, sexes, h1, h2)
    out.phenotypes = _phenotypes(model, pick if groups else None, groups, rng)
    return out


def _phenotypes(model: SynthModel, pick: np.ndarray | None, groups: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if pick is None or not groups:
        return {}
    names = sorted({k[:-5] for g in groups for k in g if k.endswith("_mean")})
    out = {}
    for name in names:
        kind = model.provenance.get("phenotypes", {}).get(name, "continuous")
        vals = np.full(len(pick), np.nan)
        for gi, g in enumerate(groups):
            rows = np.flatnonzero(pick == gi)
            m, sd = g.get(f"{name}_mean"), g.get(f"{name}_sd")
            if m is None or not len(rows):
                continue
            if kind == "binary":
                vals[rows] = rng.random(len(rows)) < min(1.0, max(0.0, float(m)))
            else:
                vals[rows] = rng.normal(float(m), float(sd or 0.0), len(rows))
        out[name] = vals
    return out


# -- training (coordinator side) ----------------------------------------------------------------

def default_population(catalog: Any) -> str:
    """``super_pop`` when the samples have it, else ``population``, else ``pop``."""
    cols = catalog.tables.get("samples", {})
    for c in ("super_pop", "population", "pop"):
        if c in cols:
            return f"samples.{c}"
    raise PlanningError("synth: name the population column with population => '...' (the samples have no super_pop, population or pop)")


def train(coordinator: Any, *, population: str | None = None, sex: str | None = None, order: int = 2,
          epsilon: float | None = None, delta: float = 1e-6, mechanism: str = "gaussian", holdout: float = 0.2,
          canaries: int = 2, seed: int = 1, variants: str | None = None, samples: str | None = None,
          phenotypes: dict[str, str] | None = None, combine: str | None = None,
          attributes_epsilon_share: float = 0.05) -> SynthModel:
    """Train the model across the federation (see the module docstring). ``epsilon`` is the
    total for this training at every node: most of it noises the counts (``mechanism``, Gaussian
    by default), ``attributes_epsilon_share`` of it the (population, sex) group summary
    (Laplace). ``phenotypes`` maps a name to ``'binary'`` or ``'continuous'`` (an expression over
    the samples and clinical tables, e.g. ``{'phenotypes.t2d': 'binary'}``)."""
    from ..engine.tablefunc import AnalysisRun

    t0 = time.perf_counter()
    catalog = coordinator.catalog()
    population = population or default_population(catalog)
    parse_expression(population, "population")
    if sex is None and "sex" in catalog.tables.get("samples", {}):
        sex = "samples.sex"
    mode = combine or coordinator.default_combine
    analysis = SynthCounts()
    args = analysis.parse_args({"population": population, "order": order, "holdout": holdout, "canaries": canaries,
                                "seed": seed, "variants": variants, "samples": samples})
    sample_query(None, [], args.get("samples"), catalog, extra=[population])
    variant_query(args.get("variants"), catalog)
    dp_counts = dp_attr = None
    if epsilon is not None:
        if epsilon <= 0 or not 0 < attributes_epsilon_share < 1:
            raise SynthError("synth: epsilon must be positive and the attribute share in (0, 1)")
        dp_counts = {"epsilon": float(epsilon) * (1 - attributes_epsilon_share), "mechanism": mechanism,
                     **({"delta": float(delta)} if mechanism == "gaussian" else {})}
        dp_attr = {"epsilon": float(epsilon) * attributes_epsilon_share, "mechanism": "laplace"}
    import uuid

    run = AnalysisRun(coordinator, mode, uuid.uuid4().hex[:16], dp=dp_counts)
    keys, lay = analysis.layout(args, "counts")
    t = run.round(analysis.name, args, "counts", {}, keys, lay)
    k = int(args["order"])
    pops = sorted(set(t.column(KEY).to_pylist()))
    if not pops:
        raise SynthError("synth: no population passed the minimum count at the nodes; nothing to train on")
    vids_all = _ids(t, KEY_B)
    uniq = list(dict.fromkeys(vids_all))
    vc = variant_columns(uniq)
    chrom = np.array(vc["chrom"].to_pylist(), dtype=object)
    pos = vc["pos"].to_numpy().astype(np.int64)
    order_idx = np.lexsort((pos, np.array([chrom_rank(c) for c in chrom], np.int64)))
    uniq = [uniq[i] for i in order_idx]
    where = {vid: i for i, vid in enumerate(uniq)}
    mat = np.column_stack([_col(t, f"c{i}").astype(np.float64) for i in range(2 << k)])
    counts = np.zeros((len(pops), len(uniq), 1 << k, 2))
    pi = np.array([pops.index(p) for p in t.column(KEY).to_pylist()], np.int64)
    vi = np.array([where[v] for v in vids_all], np.int64)
    counts[pi, vi] = mat.reshape(len(mat), 1 << k, 2)
    # haplotypes per population: the counts of every variant add up to them (median: robust to noise)
    haps = np.array([float(np.median(counts[i].sum(axis=(1, 2)))) for i in range(len(pops))])
    parts = [s.split(":") for s in uniq]
    model = SynthModel(order=k, populations=pops, variant_id=uniq, chrom=np.array([p[0] for p in parts], dtype=object),
                       pos=np.array([int(p[1]) for p in parts], np.int64), ref=[p[2] for p in parts],
                       alt=[":".join(p[3:]) for p in parts], counts=counts, haplotypes=haps)
    model.groups = _group_summary(run, population, sex, samples, phenotypes or {}, dp_attr, mode, coordinator)
    model.provenance = {
        "generator": "haplotype-markov", "order": k, "population": population, "sex": sex, "combine": mode,
        "epsilon": epsilon, "delta": delta if (epsilon is not None and mechanism == "gaussian") else None,
        "mechanism": mechanism if epsilon is not None else None, "attributes_epsilon_share": attributes_epsilon_share,
        "holdout": holdout, "canaries": canaries, "seed": seed, "variants": variants, "samples": samples,
        "nodes": [tr.name for tr in coordinator.transports], "dp_nodes": run.details.get("dp_nodes", {}),
        "noise_scale_total": _total_scale(run.details.get("dp_nodes", {})),
        "phenotypes": {n.split(".")[-1]: kind for n, kind in (phenotypes or {}).items()}, "train_s": round(time.perf_counter() - t0, 3), "query_id": run.query_id,
        "suppressed_rows": run.suppressed,
    }
    return model


def _total_scale(dp_nodes: dict[str, Any]) -> float:
    """Noise scale of a summed count: every node adds its own noise."""
    return float(np.sqrt(sum(float(d.get("scale") or 0.0) ** 2 for d in dp_nodes.values())))


def _group_summary(run: Any, population: str, sex: str | None, samples: str | None, phenotypes: dict[str, str],
                   dp: dict[str, Any] | None, mode: str, coordinator: Any) -> list[dict[str, Any]]:
    """Sample attributes per (population, sex): the group sizes with the attribute share of the
    DP request; phenotype means and standard deviations per group as ordinary aggregate releases
    (each node's policy governs them like any query: minimum count, and its DP if it requires
    it). One DP vector for both would calibrate the noise of a 0/1 mean to the sensitivity of a
    sum of squared LDL values."""
    for name, kind in phenotypes.items():
        parse_expression(name, "phenotype")
        if kind not in ("binary", "continuous"):
            raise SynthError(f"phenotype {name!r}: kind must be 'binary' or 'continuous', got {kind!r}")
    keys = [f"({population}) AS population"] + ([f"({sex}) AS sex"] if sex else [])
    where = f" WHERE {samples}" if samples else ""
    res = coordinator.run_round(f"SELECT {', '.join(keys)}, count(*) AS n FROM samples{where} GROUP BY ALL", combine=mode, dp=dp)
    groups: dict[tuple, dict[str, Any]] = {}
    for r in res.table.to_pylist():
        groups[(r["population"], r.get("sex"))] = {"population": r["population"], "sex": r.get("sex"), "n": max(0, int(r["n"] or 0))}
    run.note("groups_suppressed", res.provenance.suppressed)
    if phenotypes:
        sel = list(keys)
        for i, name in enumerate(phenotypes):
            sel += [f"avg({name}) AS p{i}_mean", f"stddev_samp({name}) AS p{i}_sd"]
        tables = sorted({n.split(".")[0] for n in phenotypes if "." in n} - {"samples"})
        frm = "samples" + "".join(f" JOIN {t} USING (sample_id)" for t in tables)
        ph = coordinator.run_round(f"SELECT {', '.join(sel)} FROM {frm}{where} GROUP BY ALL", combine=mode)
        rows = ph.table.to_pylist()
        for i, name in enumerate(phenotypes):
            short = name.split(".")[-1]
            have = [(r[f"p{i}_mean"], r[f"p{i}_sd"]) for r in rows if r.get(f"p{i}_mean") is not None]
            overall = (float(np.mean([m for m, _ in have])), float(np.mean([sd or 0.0 for _, sd in have]))) if have else (None, None)
            for g in groups.values():
                r = next((r for r in rows if (r["population"], r.get("sex")) == (g["population"], g["sex"])), None)
                m, sd = (r[f"p{i}_mean"], r[f"p{i}_sd"]) if r is not None and r.get(f"p{i}_mean") is not None else overall
                g[f"{short}_mean"], g[f"{short}_sd"] = m, sd
    return list(groups.values())


ANALYSES[SynthCounts.name] = SynthCounts()

from . import synth_audit as _synth_audit  # noqa: E402, F401 - registers the audit rounds

__all__ = ["SynthCounts", "SynthError", "SynthModel", "SyntheticSet", "sample", "train"]
