"""The privacy and utility audit of a synthetic genotype set, run at the nodes, and the release gate.

Every real genome stays at its node: the coordinator sends each node the synthetic genotypes of
an *audit panel* (a random set of informative variants) and the synthetic allele frequencies;
each node scores them against its own samples and returns only sums and counts, added up across
nodes in the query's combine mode (MPC/HE: no node's scores are seen alone).

Per node, against its training members (and the non-members it held out of training):

- **AATS**, nearest-neighbour adversarial accuracy (Yale et al. 2020) between the node's members
  and a synthetic subsample with the same population mix; 0.5 is ideal, near 0 is copying, near 1
  is a generator unlike the data.
- **exact copies**: synthetic genotypes identical to a member's over the panel.
- **KING kinship** (plink2's KING-robust) of every synthetic sample to every member: the
  histogram of each synthetic sample's closest relative. None may exceed first degree (0.177),
  or the estimator's noise floor on the panel when that is higher (the kinship 99 % of real
  members stay under with their closest fellow member: short or LD-heavy panels are noisy).
- **membership inference**: distance to the closest synthetic record (DCR) of members and of
  held-out non-members, as histograms; the AUC of "closer means member" comes from the summed
  histograms.
- **canaries**: the node's secret planted genomes vs unplanted controls drawn the same way
  (:func:`genofed.genomics.synth_metrics.canary_exposure`).
- utility: allele frequency correlation with the node's cohort (synthetic frequencies mixed to
  the node's populations), LD decay sums, and the moments of the node's samples projected on the
  synthetic PCA (per population).

:func:`audit` runs both rounds and assembles the report; :func:`gate` decides.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.analysis import AnalysisFragment, pack_array, sample_query, variant_query
from ..engine.errors import FragmentError, PlanningError
from . import synth_metrics as M
from .analyses import ANALYSES, COUNT, KEY, REAL, Analysis, _col, _table, chrom_rank
from .synth import (
    SynthCounts,
    SyntheticSet,
    canary_populations,
    canary_uniforms,
    genome_sorted,
    holdout_mask,
    node_secret,
    population_of,
)

LD_BINS = [0, 10_000, 50_000, 100_000, 250_000, 500_000]
KIN_EDGES = np.round(np.linspace(-0.5, 0.5, 101), 4)  # closest-relative histogram, 0.01 wide
DCR_BINS = 256
AF_BINS = 20  # the allele-frequency plot: a 20 × 20 grid of variant counts (real at the node, synthetic)
N_CONTROLS = 49
CANARY_ALPHA = 0.01  # the gate's chance of refusing, for its canaries, a generator that memorised none


def canary_allowance(n: int) -> int:
    """The most detected canaries, of ``n`` planted, that chance explains: a canary of a generator
    that memorised nothing is closer than all of its controls with probability at most
    ``1 / (1 + N_CONTROLS)`` (rank alone; the rule also asks z ≤ −3), so the number detected is at
    most Binomial(n, 1/50). The gate refuses at the smallest count that chance reaches with
    probability at most :data:`CANARY_ALPHA` (6 canaries: refuse at 2; 18: at 3). A generator
    that memorises shows many: each memorised canary sits at distance about 0."""
    p = 1.0 / (1 + N_CONTROLS)
    tail = 1.0  # P(X >= d)
    for d in range(n + 1):
        if d > 0:
            tail -= math.comb(n, d - 1) * p ** (d - 1) * (1 - p) ** (n - d + 1)
        if d > 0 and tail <= CANARY_ALPHA:
            return d - 1
    return n
PANEL = 2000
LD_MAX = 3000
PCS = 4

# thresholds of the release gate (the issue's, and the literature's: KING 0.177 = 1st degree)
AATS_BAND = (0.45, 0.55)
MAX_KINSHIP = 0.177
KIN_FLOOR_QUANTILE = 0.99  # of real members' closest-member kinship: the estimator's noise floor
MAX_MIA_AUC = 0.55
MIN_AF_R = 0.99


def _pack_dosage(g: np.ndarray) -> dict[str, Any]:
    bits = np.stack([g >= 1, g == 2])
    return {"shape": list(g.shape), "b64": base64.b64encode(np.packbits(bits, axis=2, bitorder="little").tobytes()).decode()}


def _unpack_dosage(d: Any) -> np.ndarray:
    try:
        n, m = (int(x) for x in d["shape"])
        raw = np.frombuffer(base64.b64decode(d["b64"], validate=True), np.uint8)
        bits = np.unpackbits(raw.reshape(2, n, -1), axis=2, bitorder="little", count=m)
    except (KeyError, TypeError, ValueError) as e:
        raise FragmentError(f"audit state 'synthetic' is malformed ({e})") from None
    return (bits[0].astype(np.int8) + bits[1]).astype(np.int8)


def _sym_names(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i, k)]


class SynthAudit(Analysis):
    name = "synth_audit"
    doc = "scores of a synthetic genotype set against each node's cohort (only sums and counts leave the node)"
    params = {**SynthCounts.params}

    def layout(self, args, round_):
        if round_ == "audit":
            cols = [("n_members", COUNT), ("n_nonmembers", COUNT), ("n_subsample", COUNT), ("aa_truth2", COUNT),
                    ("aa_syn2", COUNT), ("exact_copies", COUNT), ("canaries", COUNT), ("canaries_detected", COUNT),
                    ("af_r_n", REAL), ("af_n", COUNT)]
            cols += [(f"kin{i}", COUNT) for i in range(len(KIN_EDGES) + 1)]
            cols += [(f"kinref{i}", COUNT) for i in range(len(KIN_EDGES) + 1)]
            cols += [(f"af{i}", COUNT) for i in range(AF_BINS * AF_BINS)]
            cols += [(f"dm{i}", COUNT) for i in range(DCR_BINS)] + [(f"dn{i}", COUNT) for i in range(DCR_BINS)]
            cols += [(f"ld_r2_{i}", REAL) for i in range(len(LD_BINS) - 1)] + [(f"ld_pairs_{i}", COUNT) for i in range(len(LD_BINS) - 1)]
            return [], cols
        if round_ == "pca":
            return [KEY], [("n", COUNT), *[(f"s{i}", REAL) for i in range(PCS)], *[(f"ss{i}_{j}", REAL) for i, j in _sym_names(PCS)]]
        raise PlanningError(f"unknown round {round_!r}")

    def node_fragment(self, args, round_, state, catalog, policy):
        args = self.check_args(args)
        keys, cols = self.layout(args, round_)
        sql, st = sample_query(None, [], args.get("samples"), catalog, extra=[args["population"]])
        return AnalysisFragment(
            fn=self.name, args=args, round=round_, state=state, keys=keys, partials=[c for c, _ in cols],
            counts=[c for c, k in cols if k == COUNT], finite=[c for c, k in cols if k == REAL], sample_sql=sql,
            variant_sql=variant_query(args.get("variants"), catalog), tables={*st, "genotypes", "variants"}, policy=policy,
        )

    # -- node side --------------------------------------------------------------------------------
    def _cohort(self, frag, data):
        """Members, non-members (ids, populations), the node's variants in genome order."""
        args = frag.args
        s = data.samples
        ids = s.sample_id.to_pylist()
        pops = population_of(s.extra["x0"])
        secret = node_secret(data.store.root)
        hold = holdout_mask(secret, int(args["seed"]), ids, float(args["holdout"]))
        ok = pops != ""
        v = data.variants
        order = genome_sorted(v)
        return secret, s.sidx, pops, ok & ~hold, ok & hold, v, order

    def _dosage(self, data, vidx: np.ndarray, sidx: np.ndarray) -> np.ndarray:
        """int8 [samples, variants] with -1 for missing, variants in the given order."""
        out = np.empty((len(sidx), len(vidx)), np.int8)
        o = np.argsort(vidx, kind="stable")
        for off, g, called in data.dosage_chunks(vidx[o], sidx=sidx):
            blk = g.astype(np.int8)
            if called is not None:
                blk[~called] = -1
            out[:, o[off:off + len(g)]] = blk.T
        return out

    def node_round(self, frag, data):
        secret, sidx, pops, mem, non, v, order = self._cohort(frag, data)
        vid_sorted = [v.column("variant_id")[int(i)].as_py() for i in order]
        vidx_sorted = v.column("vidx").to_numpy().astype(np.int64)[order]
        where = {x: i for i, x in enumerate(vid_sorted)}
        st = frag.state
        if frag.round == "pca":
            panel = [where.get(x, -1) for x in st.get("ids", [])]
            if not panel or min(panel) < 0:
                raise FragmentError("the audit panel has variants this node does not have; audit on the variants every node shares")
            g = self._dosage(data, vidx_sorted[panel], sidx[mem]).astype(np.float64)
            mu, scale, load = frag.array("mu"), frag.array("scale"), frag.array("loadings")
            x = np.where(g < 0, 0.0, (g - mu) / scale)
            scores = x @ load
            lab = pops[mem]
            names = sorted(set(lab.tolist()))
            lay = self.layout(frag.args, "pca")[1]
            cols: dict[str, list] = {c: [] for c, _ in lay}
            for p in names:
                sc = scores[lab == p]
                cols["n"].append(len(sc))
                for i in range(PCS):
                    cols[f"s{i}"].append(float(sc[:, i].sum()))
                for i, j in _sym_names(PCS):
                    cols[f"ss{i}_{j}"].append(float((sc[:, i] * sc[:, j]).sum()))
            arrs = {c: np.asarray(cols[c], np.float64) for c, _ in lay}
            return _table({KEY: pa.array(names, pa.string())}, arrs, arrs["n"], lay)
        return self._audit(frag, data, secret, sidx, pops, mem, non, vid_sorted, vidx_sorted, where)

    def _audit(self, frag, data, secret, sidx, pops, mem, non, vid_sorted, vidx_sorted, where):
        args, st = frag.args, frag.state
        ids = st.get("ids")
        syn_pop = st.get("syn_pop")
        if not isinstance(ids, list) or not isinstance(syn_pop, list):
            raise FragmentError("audit state must carry the panel 'ids' and the synthetic populations 'syn_pop'")
        panel = np.array([where.get(x, -1) for x in ids], np.int64)
        if not len(panel) or (panel < 0).any():
            raise FragmentError("the audit panel has variants this node does not have; audit on the variants every node shares")
        syn = _unpack_dosage(st.get("synthetic"))
        if syn.shape != (len(syn_pop), len(ids)):
            raise FragmentError("audit state: the synthetic genotypes do not match the panel and populations")
        syn_pop_a = np.array(syn_pop, dtype=object)
        rng = np.random.default_rng(int(args["seed"]) + 7)
        g_mem = self._dosage(data, vidx_sorted[panel], sidx[mem])
        g_non = self._dosage(data, vidx_sorted[panel], sidx[non])
        mem_pops = pops[mem]
        # AATS against a synthetic subsample with the node's population mix
        sub = []
        for p in sorted(set(mem_pops.tolist())):
            have = np.flatnonzero(syn_pop_a == p)
            want = int((mem_pops == p).sum())
            if len(have):
                sub.append(rng.choice(have, size=min(want, len(have)), replace=False))
        sub_idx = np.sort(np.concatenate(sub)) if sub else np.zeros(0, np.int64)
        if not len(sub_idx) and len(syn):  # a synthetic set whose populations are not named like ours
            sub_idx = np.sort(rng.choice(len(syn), size=min(len(g_mem), len(syn)), replace=False))
        out: dict[str, float] = {"n_members": len(g_mem), "n_nonmembers": len(g_non), "n_subsample": len(sub_idx)}
        if len(g_mem) >= 2 and len(sub_idx) >= 2:
            a = M.aats(g_mem, syn[sub_idx])
            out["aa_truth2"] = round(2 * a["aa_truth"] * len(g_mem))
            out["aa_syn2"] = round(2 * a["aa_syn"] * len(sub_idx))
        else:
            out["aa_truth2"] = out["aa_syn2"] = 0
        out["exact_copies"] = M.exact_copies(g_mem, syn) if len(g_mem) else 0
        # closest relative of every synthetic sample among the members
        kin = np.zeros(len(KIN_EDGES) + 1, np.int64)
        if len(g_mem):
            phi = M.king_robust(syn, g_mem)
            best = np.nanmax(np.where(np.isnan(phi), -1.0, phi), axis=1)
            kin = np.bincount(np.searchsorted(KIN_EDGES, best, side="right"), minlength=len(KIN_EDGES) + 1)
        # the same estimator between the members themselves: the noise floor of the kinship score
        kin_ref = np.zeros(len(KIN_EDGES) + 1, np.int64)
        if len(g_mem) >= 2:
            phi_r = M.king_robust(g_mem, g_mem)
            np.fill_diagonal(phi_r, np.nan)
            best_r = np.nanmax(np.where(np.isnan(phi_r), -1.0, phi_r), axis=1)
            kin_ref = np.bincount(np.searchsorted(KIN_EDGES, best_r, side="right"), minlength=len(KIN_EDGES) + 1)
        # membership inference: DCR histograms of members and non-members
        max_d = 2 * len(ids)
        width = max(1, -(-(max_d + 1) // DCR_BINS))
        hist_m = np.zeros(DCR_BINS, np.int64)
        hist_n = np.zeros(DCR_BINS, np.int64)
        if len(g_mem):
            hist_m = np.bincount(np.minimum(M.nearest(g_mem, syn)[0] // width, DCR_BINS - 1), minlength=DCR_BINS)
        if len(g_non):
            hist_n = np.bincount(np.minimum(M.nearest(g_non, syn)[0] // width, DCR_BINS - 1), minlength=DCR_BINS)
        # canaries: planted (in training) vs controls, drawn the same way
        n_can = int(args["canaries"])
        seed = int(args["seed"])
        detected = 0
        if n_can and mem.any():
            cpop = canary_populations(secret, seed, mem_pops, n_can)
            planted = _canaries(g_mem, mem_pops, cpop, canary_uniforms(secret, seed, len(vid_sorted), n_can)[panel])
            ctrl_pop = [cpop[j % n_can] for j in range(N_CONTROLS)]
            controls = _canaries(g_mem, mem_pops, ctrl_pop,
                                 canary_uniforms(secret, seed, len(vid_sorted), N_CONTROLS, controls=True)[panel])
            ex = M.canary_exposure(M.nearest(planted, syn)[0], M.nearest(controls, syn)[0])
            # per planted canary, the rule of canary_exposure: closer than every control and z <= -3
            each = (np.asarray(ex["rank_p"]) <= 1.0 / (1 + N_CONTROLS)) & (np.asarray(ex["z"]) <= -3)
            detected = int(each.sum())
        out["canaries"] = n_can if mem.any() else 0
        out["canaries_detected"] = detected
        # utility: allele frequencies over every shared variant, mixed to this node's populations
        syn_af = frag.array("syn_af")  # [P, V]
        syn_af_ids = st.get("af_ids")
        syn_pops = st.get("af_pops")
        if not isinstance(syn_af_ids, list) or not isinstance(syn_pops, list) or syn_af.shape != (len(syn_pops), len(syn_af_ids)):
            raise FragmentError("audit state: synthetic allele frequencies do not match their ids")
        pos = np.array([where.get(x, -1) for x in syn_af_ids], np.int64)
        have = pos >= 0
        all_s = sidx[mem | non]
        real_af = _allele_freq(data, vidx_sorted[pos[have]], all_s)
        mix = np.zeros(have.sum())
        all_pops = pops[mem | non]
        shares = np.array([(all_pops == p).mean() if len(all_pops) else 0.0 for p in syn_pops])
        if shares.sum() <= 0:  # populations not named like ours: the synthetic set's own mix
            shares = np.full(len(syn_pops), 1.0 / max(1, len(syn_pops)))
        for i, w in enumerate(shares):
            mix += w * syn_af[i, have]
        r = M.af_correlation(real_af, mix)
        ok = np.isfinite(real_af) & np.isfinite(mix)
        gi = np.minimum((real_af[ok] * AF_BINS).astype(np.int64), AF_BINS - 1)
        gj = np.minimum((mix[ok] * AF_BINS).astype(np.int64), AF_BINS - 1)
        grid = np.bincount(gi * AF_BINS + gj, minlength=AF_BINS * AF_BINS)
        out["af_r_n"] = 0.0 if not np.isfinite(r) else float(r) * len(all_s)
        out["af_n"] = len(all_s) if np.isfinite(r) else 0
        # LD decay over the variants the coordinator chose (one chromosome's first ones)
        ld_ids = st.get("ld_ids") or []
        lpos = np.array([where.get(x, -1) for x in ld_ids], np.int64)
        lpos = lpos[lpos >= 0]
        sums = np.zeros(len(LD_BINS) - 1)
        pairs = np.zeros(len(LD_BINS) - 1, np.int64)
        if len(lpos) > 1 and mem.any():
            gl = self._dosage(data, vidx_sorted[lpos], sidx[mem])
            parts = [vid_sorted[i].split(":") for i in lpos]
            d = M.ld_decay(gl, np.array([p[0] for p in parts], dtype=object), np.array([int(p[1]) for p in parts], np.int64), LD_BINS)
            sums, pairs = d["sum_r2"], d["pairs"]
        lay = self.layout(args, "audit")[1]
        cols = {c: np.zeros(1) for c, _ in lay}
        for k_, val in out.items():
            cols[k_] = np.array([val], np.float64)
        for i, c in enumerate(grid):
            cols[f"af{i}"] = np.array([c], np.float64)
        for i, c in enumerate(kin):
            cols[f"kin{i}"] = np.array([c], np.float64)
        for i, c in enumerate(kin_ref):
            cols[f"kinref{i}"] = np.array([c], np.float64)
        for i in range(DCR_BINS):
            cols[f"dm{i}"] = np.array([hist_m[i]], np.float64)
            cols[f"dn{i}"] = np.array([hist_n[i]], np.float64)
        for i in range(len(LD_BINS) - 1):
            cols[f"ld_r2_{i}"] = np.array([sums[i]])
            cols[f"ld_pairs_{i}"] = np.array([pairs[i]], np.float64)
        n = np.array([len(g_mem)], np.float64)
        return _table({}, cols, n, lay)

    def drive(self, args, run):
        raise PlanningError("synth_audit is run by genofed's synthetic-data release (genofed synth release)")


def _allele_freq(data: Any, vidx: np.ndarray, sidx: np.ndarray) -> np.ndarray:
    o = np.argsort(vidx, kind="stable")
    af = np.full(len(vidx), np.nan)
    for off, g, called in data.dosage_chunks(vidx[o], sidx=sidx):
        n = (len(sidx) if called is None else called.sum(axis=1)) * 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            af[o[off:off + len(g)]] = g.sum(axis=1) / n
    return af


def _canaries(g_mem: np.ndarray, mem_pops: np.ndarray, cpop: list[str], unif: np.ndarray) -> np.ndarray:
    """Canary dosages on the panel: each allele ALT with its population's member frequency."""
    out = np.zeros((len(cpop), g_mem.shape[1]), np.int8)
    freqs: dict[str, np.ndarray] = {}
    for j, p in enumerate(cpop):
        if p not in freqs:
            gp = g_mem[mem_pops == p].astype(np.float64)
            ok = gp >= 0
            with np.errstate(invalid="ignore", divide="ignore"):
                freqs[p] = np.nan_to_num(np.where(ok, gp, 0).sum(axis=0) / (2 * ok.sum(axis=0)))
        f = freqs[p].astype(np.float32)
        out[j] = (unif[:, j, 0] < f).astype(np.int8) + (unif[:, j, 1] < f).astype(np.int8)
    return out


ANALYSES[SynthAudit.name] = SynthAudit()


# -- coordinator side -------------------------------------------------------------------------------

@dataclass
class AuditResult:
    report: dict[str, Any]
    figures: dict[str, Any]
    passed: bool


def _panel(syn: SyntheticSet, rng: np.random.Generator, size: int = PANEL) -> np.ndarray:
    """Audit panel: up to ``size`` variants, random among those with synthetic MAF ≥ 5 % (KING and
    distances need heterozygous calls: on rare variants unrelated pairs reach "first degree"),
    in genome order."""
    af = (syn.hap1.sum(axis=1) + syn.hap2.sum(axis=1)) / (2.0 * syn.hap1.shape[1])
    maf = np.minimum(af, 1 - af)
    cand = np.flatnonzero(maf >= 0.05)
    if len(cand) < 200:
        cand = np.flatnonzero(maf >= 0.01)
    if len(cand) < 50:
        cand = np.arange(len(af))
    return np.sort(rng.choice(cand, size=min(size, len(cand)), replace=False))


def _ld_set(syn: SyntheticSet) -> np.ndarray:
    chrom = syn.model.chrom
    vals, counts = np.unique(chrom.astype(str), return_counts=True)
    best = vals[np.argmax(counts)]
    return np.flatnonzero(chrom.astype(str) == best)[:LD_MAX]


def audit(coordinator: Any, syn: SyntheticSet, *, combine: str | None = None, seed: int = 1) -> AuditResult:
    """Score ``syn`` at every node (two rounds) and assemble the report and its figures."""
    from ..engine.tablefunc import AnalysisRun

    t0 = time.perf_counter()
    prov = syn.model.provenance
    args = SynthAudit().parse_args({k: prov.get(k) for k in ("population", "holdout", "canaries", "seed", "variants", "samples")}
                                   | {"order": syn.model.order, "population": prov.get("population")
                                      or synth_default_population(coordinator)})
    mode = combine or coordinator.default_combine
    import uuid

    run = AnalysisRun(coordinator, mode, uuid.uuid4().hex[:16])
    rng = np.random.default_rng(seed)
    panel = _panel(syn, rng)
    dos = syn.dosage  # [n, V]
    gp = dos[:, panel]
    pops = sorted(set(syn.population))
    pop_a = np.array(syn.population, dtype=object)
    syn_af = np.zeros((len(pops), syn.model.n_variants))
    for i, p in enumerate(pops):
        syn_af[i] = dos[pop_a == p].mean(axis=0) / 2.0
    ld_idx = _ld_set(syn)
    ids = [syn.model.variant_id[i] for i in panel]
    state = {"ids": ids, "syn_pop": list(syn.population), "synthetic": _pack_dosage(gp),
             "syn_af": pack_array(syn_af), "af_ids": syn.model.variant_id, "af_pops": pops,
             "ld_ids": [syn.model.variant_id[i] for i in ld_idx]}
    a = SynthAudit()
    keys, lay = a.layout(args, "audit")
    t = run.round(a.name, args, "audit", state, keys, lay)
    if t.num_rows != 1:
        raise PlanningError("the audit round was withheld by disclosure control (too few members at the nodes)")
    row = {c: float(_col(t, c)[0]) for c, _ in lay}
    # PCA of the synthetic panel; the nodes project their members on it
    x = gp.astype(np.float64)
    mu = x.mean(axis=0)
    p_ = np.clip(mu / 2, 1e-6, 1 - 1e-6)
    scale = np.sqrt(2 * p_ * (1 - p_))
    z = (x - mu) / scale
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    load = vt[:PCS].T
    syn_scores = z @ load
    keys_p, lay_p = a.layout(args, "pca")
    tp = run.round(a.name, args, "pca", {"ids": ids, "mu": pack_array(mu), "scale": pack_array(scale),
                                         "loadings": pack_array(load)}, keys_p, lay_p)
    real_pca: dict[str, dict[str, Any]] = {}
    overlaps = {}
    for r in tp.to_pylist():
        n = float(r["n"])
        if n < 2:
            continue
        m = np.array([r[f"s{i}"] for i in range(PCS)]) / n
        ss = np.zeros((PCS, PCS))
        for i, j in _sym_names(PCS):
            ss[i, j] = ss[j, i] = r[f"ss{i}_{j}"]
        cov = ss / n - np.outer(m, m)
        real_pca[r[KEY]] = {"mean": m[:2].tolist(), "cov": cov[:2, :2].tolist(), "n": int(n)}
        sp = syn_scores[pop_a == r[KEY]]
        if len(sp) > PCS:
            overlaps[r[KEY]] = M.gaussian_overlap(m[:2], cov[:2, :2], sp[:, :2].mean(axis=0), np.cov(sp[:, :2].T))
    # synthetic LD curve on the same variants
    parts = [syn.model.variant_id[i].split(":") for i in ld_idx]
    syn_ld = M.ld_decay(dos[:, ld_idx], np.array([p[0] for p in parts], dtype=object),
                        np.array([int(p[1]) for p in parts], np.int64), LD_BINS)
    nb = len(LD_BINS) - 1
    real_ld = {"sum_r2": np.array([row[f"ld_r2_{i}"] for i in range(nb)]), "pairs": np.array([row[f"ld_pairs_{i}"] for i in range(nb)])}
    real_curve, syn_curve = M.ld_curve(real_ld), M.ld_curve(syn_ld)
    report = _report(row, syn, real_curve, syn_curve, overlaps, mode, time.perf_counter() - t0, len(ids))
    grid = np.array([row[f"af{i}"] for i in range(AF_BINS * AF_BINS)], np.int64).reshape(AF_BINS, AF_BINS)
    centre = (np.arange(AF_BINS) + 0.5) / AF_BINS
    ri, si = np.nonzero(grid)
    reps = grid[ri, si]
    figures = {
        "af": {"real": np.repeat(centre[ri], reps), "synthetic": np.repeat(centre[si], reps)} if reps.sum() else None,
        "ld": {"bins_bp": LD_BINS, "real": real_curve, "synthetic": syn_curve},
        "pca": {"synthetic": {"scores": syn_scores[:, :2], "labels": list(syn.population)}, "real": real_pca},
    }
    figures = {k: v for k, v in figures.items() if v is not None}
    passed = not report["reasons"]
    report["verdict"] = "released" if passed else "refused"
    return AuditResult(report, figures, passed)


def _report(row: dict[str, float], syn: SyntheticSet, real_curve: np.ndarray, syn_curve: np.ndarray,
            overlaps: dict[str, float], mode: str, seconds: float, panel: int) -> dict[str, Any]:
    nm, ns = row["n_members"], row["n_subsample"]
    aa_t = row["aa_truth2"] / (2 * nm) if nm else float("nan")
    aa_s = row["aa_syn2"] / (2 * ns) if ns else float("nan")
    aats = (aa_t + aa_s) / 2
    kin = np.array([row[f"kin{i}"] for i in range(len(KIN_EDGES) + 1)])
    nz = np.flatnonzero(kin)
    top = int(nz.max()) if len(nz) else 0
    kin_max = float(KIN_EDGES[min(top, len(KIN_EDGES) - 1)]) if top else float("nan")
    kref = np.array([row[f"kinref{i}"] for i in range(len(KIN_EDGES) + 1)])
    # the estimator's noise floor on this panel: the kinship 99 % of real members stay under with
    # their closest fellow member. On a short or LD-heavy panel unrelated real pairs exceed 0.177;
    # a synthetic sample that close is no evidence of copying (the 1 % left out: real relatives)
    floor = float("nan")
    if kref.sum():
        cum = np.cumsum(kref)
        floor = float(KIN_EDGES[min(int(np.searchsorted(cum, KIN_FLOOR_QUANTILE * cum[-1])), len(KIN_EDGES) - 1)])
    kin_limit = max(MAX_KINSHIP, floor) if np.isfinite(floor) else MAX_KINSHIP
    over = int(kin[np.searchsorted(KIN_EDGES, kin_limit, side="right"):].sum())
    nzr = np.flatnonzero(kref)
    kin_ref_max = float(KIN_EDGES[min(int(nzr.max()), len(KIN_EDGES) - 1)]) if len(nzr) and nzr.max() else float("nan")
    hm = np.array([row[f"dm{i}"] for i in range(DCR_BINS)])
    hn = np.array([row[f"dn{i}"] for i in range(DCR_BINS)])
    # score = -DCR: a closer record looks more like a member, so reverse the bins
    auc = M.auc_from_histograms(hm[::-1], hn[::-1]) if hm.sum() and hn.sum() else float("nan")
    af_r = row["af_r_n"] / row["af_n"] if row["af_n"] else float("nan")
    ld_err = M.curve_error(real_curve, syn_curve)
    pca_ov = float(np.mean(list(overlaps.values()))) if overlaps else float("nan")
    copies = int(row["exact_copies"])
    can_n, can_d = int(row["canaries"]), int(row["canaries_detected"])
    privacy = [
        {"name": "AATS", "value": round(aats, 4), "threshold": f"{(AATS_BAND[0] + AATS_BAND[1]) / 2:.2f} ± {(AATS_BAND[1] - AATS_BAND[0]) / 2:.2f}",
         "pass": bool(AATS_BAND[0] <= aats <= AATS_BAND[1]),
         "detail": f"AA_truth {aa_t:.3f}, AA_syn {aa_s:.3f}; {int(nm)} members vs {int(ns)} synthetic (population-matched), {panel} panel variants"},
        {"name": "exact copies", "value": copies, "threshold": "0", "pass": copies == 0,
         "detail": "synthetic genotypes identical to a training member's over the audit panel"},
        {"name": "max KING kinship", "value": kin_max, "threshold": f"≤ {kin_limit:g}", "pass": over == 0,
         "detail": f"closest relative of each synthetic sample among the members (0.01 bins); {over} above "
                   f"{kin_limit:g} (first degree, {MAX_KINSHIP}, or the estimator's noise floor on this panel if higher: "
                   f"99 % of real members stay under {floor:g} with their closest fellow member); between real members "
                   f"it reaches {kin_ref_max} (relatives included)"},
        {"name": "membership inference AUC", "value": round(auc, 4), "threshold": f"≤ {MAX_MIA_AUC}",
         "pass": bool(auc <= MAX_MIA_AUC) if np.isfinite(auc) else False,
         "detail": (f"distance to closest synthetic record, {int(hm.sum())} members vs {int(hn.sum())} held-out non-members"
                    if np.isfinite(auc) else "not measured: no held-out non-members (not a genofed-trained set); refused")},
        {"name": "canaries detected", "value": can_d, "threshold": f"≤ {canary_allowance(can_n)}",
         "pass": can_d <= canary_allowance(can_n),
         "detail": (f"{can_n} planted canary genomes vs {N_CONTROLS} unplanted controls per node; chance alone "
                    f"detects up to {canary_allowance(can_n)} of {can_n} (at {CANARY_ALPHA:.0%})" if can_n
                    else "not measured: no canaries were planted in training")},
    ]
    utility = [
        {"name": "allele frequency correlation", "value": round(af_r, 5), "target": f"≥ {MIN_AF_R}", "pass": bool(af_r >= MIN_AF_R)},
        {"name": "LD decay curve error (mean |Δr²|)", "value": round(ld_err, 5), "target": "≤ 0.05", "pass": bool(ld_err <= 0.05)},
        {"name": "PCA overlap (Bhattacharyya, PC1-2)", "value": round(pca_ov, 4), "target": "≥ 0.5", "pass": bool(pca_ov >= 0.5)},
    ]
    reasons = [f"{p['name']} = {p['value']} fails {p['threshold']}" for p in privacy if not p["pass"]]
    if not privacy[0]["pass"] and np.isfinite(aats):
        reasons[0] += (" (below: synthetic genomes sit closer to real ones than real ones to each other, memorisation)"
                       if aats < AATS_BAND[0] else
                       " (above: synthetic genomes are easy to tell from real ones, under-fitting; with DP, often the noise)")
    gen = syn.model.provenance
    return {
        "title": "genofed synthetic genotype release", "verdict": "", "reasons": reasons,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": {"name": gen.get("generator", "haplotype-markov"), "order": syn.model.order, "epsilon": gen.get("epsilon"),
                      "delta": gen.get("delta"), "mechanism": gen.get("mechanism"),
                      "noise scale per summed count": round(float(gen.get("noise_scale_total") or 0.0), 3),
                      "populations": {p: int(sum(1 for x in syn.population if x == p)) for p in sorted(set(syn.population))},
                      "n_synthetic": len(syn.sample_id), "n_variants": syn.model.n_variants},
        "privacy": privacy, "utility": utility,
        "per_node": {},
        "provenance": {"combine": mode, "audit_s": round(seconds, 2), "nodes": ", ".join(gen.get("nodes", [])),
                       "pca_overlap_per_population": {k: round(v, 4) for k, v in overlaps.items()}},
        "scores": {"aats": aats, "aa_truth": aa_t, "aa_syn": aa_s, "exact_copies": copies, "kinship_max_bin": kin_max,
                   "kinship_over": over, "kinship_limit": kin_limit, "kinship_real_q99_bin": floor, "kinship_real_max_bin": kin_ref_max, "mia_auc": auc, "mia_members": int(hm.sum()), "mia_nonmembers": int(hn.sum()), "canaries": can_n, "canaries_detected": can_d, "af_r": af_r,
                   "ld_error": ld_err, "pca_overlap": pca_ov},
    }


def synth_default_population(coordinator: Any) -> str:
    from .synth import default_population

    return default_population(coordinator.catalog())


def evaluate(coordinator: Any, syn: SyntheticSet, report_path: str | Any, *, combine: str | None = None,
             seed: int = 1) -> AuditResult:
    """Audit any synthetic set (e.g. another generator's VCF, :meth:`SyntheticSet.from_vcf`) and
    write the report; nothing is released. Without a genofed training there are no held-out
    non-members or canaries: those criteria are reported as not measured (and fail)."""
    from pathlib import Path

    from .synth_report import write_report

    res = audit(coordinator, syn, combine=combine, seed=seed)
    res.report["title"] = "genofed synthetic genotype audit (evaluation only, nothing released)"
    write_report(Path(report_path), {k: v for k, v in res.report.items() if k != "scores"}, res.figures)
    res.report["report_path"] = str(report_path)
    return res


def gate(result: AuditResult) -> tuple[bool, list[str]]:
    """The release decision: every privacy criterion must pass."""
    return result.passed, list(result.report["reasons"])


__all__ = ["AuditResult", "SynthAudit", "audit", "gate", "chrom_rank"]


def release(coordinator: Any, syn: SyntheticSet, out: str | Any, report_path: str | Any | None = None, *,
            combine: str | None = None, seed: int = 1) -> AuditResult:
    """The release gate: audit ``syn`` at the nodes; write the report (always: a refusal says
    why) and, only when every privacy criterion passes, the bgzipped, indexed VCF at ``out``."""
    from pathlib import Path

    from .synth import SynthError
    from .synth_report import write_report, write_vcf

    out = Path(out)
    res = audit(coordinator, syn, combine=combine, seed=seed)
    rp = Path(report_path) if report_path is not None else out.with_name(out.name.removesuffix(".vcf.gz") + ".report.html")
    res.report["provenance"]["vcf"] = str(out) if res.passed else "(not written: refused)"
    write_report(rp, {k: v for k, v in res.report.items() if k != "scores"}, res.figures)
    res.report["report_path"] = str(rp)
    if res.passed:
        prov = syn.model.provenance
        write_vcf(out, chrom=syn.model.chrom, pos=syn.model.pos, ref=syn.model.ref, alt=syn.model.alt,
                  variant_id=syn.model.variant_id, sample_ids=syn.sample_id, hap1=syn.hap1, hap2=syn.hap2,
                  header_lines=[f"##genofed_synth_generator=haplotype-markov order={syn.model.order}",
                                f"##genofed_synth_epsilon={prov.get('epsilon')}",
                                f"##genofed_synth_report={rp.name}"])
    elif out.exists():
        raise SynthError(f"{out} exists from an earlier release and this one was refused; it was left as it was")
    return res
