"""Synthetic genotype release: the federated, DP-noised, securely summed Markov model; the audit
at the nodes; the release gate (which must be able to refuse).

Oracles: the node's haplotype counts against counts computed from the VCF with cyvcf2; allele
frequencies against DuckDB over the pooled cohort; the gate against generators that copy
training genomes or leak the nodes' secret canaries.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import clone_federation
from inproc import serve_in_process

import genofed
from genofed.engine.errors import DisclosureError
from genofed.genomics import synth, synth_audit

pytest.importorskip("mpyc")

EPS = synth.DEFAULT_EPSILON


def _allow_synth(root: Path) -> None:
    """The stewards' opt-in: a per-release ε large enough for genome-wide synthetic training."""
    for toml in root.glob("*/node.toml"):
        cfg = tomllib.loads(toml.read_text())
        cfg["dp"] = {**cfg.get("dp", {}), "max_epsilon": 2 * EPS, "budget_epsilon": 10 * EPS, "budget_delta": 1e-3}
        toml.write_text(tomli_w.dumps(cfg))


def _super_pops() -> dict[str, str]:
    from conftest import shared_data

    out = {}
    for line in (shared_data() / "panel" / "1kg_phase3_2504_panel.tsv").read_text().splitlines()[1:]:
        f = line.split("\t")
        out[f[1]] = f[2]
    return out


def _super_pop_case() -> str:
    return "CASE " + " ".join(f"WHEN population = '{p}' THEN '{s}'" for p, s in sorted(_super_pops().items())) + " END"


@pytest.fixture(scope="module")
def synth_fed(fed_dir_1126, tmp_path_factory):
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp("synth1126"), min_count=5, combine="mpc", gates=False)
    _allow_synth(root)
    with serve_in_process(root) as backends:
        fed = genofed.connect(root, timeout=600)
        yield root, fed, backends
        fed.close()


@pytest.fixture(scope="module")
def trained(synth_fed):
    root, fed, _ = synth_fed
    # the subset's sites are ~110 kb apart (little LD between neighbours): order 1, whose
    # frequencies sum two noisy cells instead of four
    return fed.synth_train(epsilon=EPS, population=_super_pop_case(), order=1, seed=3)


# -- the node's counts ------------------------------------------------------------------------------

def test_node_counts_equal_vcf_haplotype_counts(synth_fed, data_1126):
    """biobank_A's un-noised counts (no holdout, no canaries) against the same counts from the VCF."""
    import cyvcf2

    from genofed.engine.analysis import encode, validate_analysis
    from genofed.engine.schema import Catalog

    _, _, backends = synth_fed
    node = backends["biobank_A"]
    args = synth.SynthCounts().parse_args({"population": "population", "order": 2, "holdout": 0.0, "canaries": 0,
                                           "chrom": "22"})
    frag = validate_analysis(encode("synth_counts", args, "counts"), Catalog.merge({"biobank_A": node.catalog()}))
    got = node.execute(frag)
    split = dict(line.split("\t")[:2] for line in data_1126["split"].read_text().splitlines()[1:])
    pop = {ln.split("\t")[0]: ln.split("\t")[2] for ln in data_1126["samples"].read_text().splitlines()[1:]}
    vcf = cyvcf2.VCF(str(data_1126["vcf"]), samples=[s for s, n in split.items() if n == "biobank_A"])
    ids = vcf.samples
    pops = np.array([pop[s] for s in ids], dtype=object)
    want: dict[tuple[str, str], np.ndarray] = {}
    prev = {p: np.zeros((2, 2 * int((pops == p).sum())), np.int64) for p in set(pops)}
    for rec in vcf("22"):
        gt = np.array([g[:2] for g in rec.genotypes])
        for a, alt in enumerate(rec.ALT, start=1):
            vid = f"{rec.CHROM}:{rec.POS}:{rec.REF}:{alt}"
            for p in prev:
                sel = gt[pops == p]
                h = np.concatenate([sel[:, 0] == a, sel[:, 1] == a]).astype(np.int64)
                ctx = prev[p][1] | (prev[p][0] << 1)  # bit 0: the previous variant, bit 1: the one before
                cell = ctx * 2 + h
                want[(p, vid)] = np.bincount(cell, minlength=8)
                prev[p] = np.stack([prev[p][1], h])
    rows = got.to_pylist()
    assert len(rows) == len(want) > 1000
    for r in rows:
        assert [r[f"c{i}"] for i in range(8)] == want[(r["_k0"], r["_k1"])].tolist(), (r["_k0"], r["_k1"])


def test_training_without_epsilon_is_refused(synth_fed):
    _, fed, _ = synth_fed
    with pytest.raises(DisclosureError, match="differential privacy"):
        fed.synth_train(epsilon=None, population="population")


# -- secure combine ----------------------------------------------------------------------------------

def _recorded_training(fed, mode, tmp_path, monkeypatch):
    """Train on chromosome 21 in ``mode`` recording what the coordinator receives (it holds no MPC
    party: the nodes' answers are all it gets), and each node's noisy counts as they leave each
    node (in-process nodes)."""
    from test_secure_combine import _Recorder

    from genofed.privacy import dpnode
    from genofed.privacy.secure import mpc as MPC

    produced: list = []
    real_noise = dpnode.noise_table

    def spy(table, frag, mech, plan):
        out = real_noise(table, frag, mech, plan)
        produced.append(out[0])
        return out

    monkeypatch.setattr(dpnode, "noise_table", spy)
    blobs: list[bytes] = []
    MPC.close_idle()
    coord = fed._coord
    saved = coord.transports
    coord.transports = [_Recorder(t, blobs) for t in coord.transports]
    try:
        model = fed.synth_train(epsilon=EPS, population="population", variants="chrom = '21'", seed=11, combine=mode)
    finally:
        coord.transports = saved
        monkeypatch.setattr(dpnode, "noise_table", real_noise)
        MPC.close_idle()
    return model, [t for t in produced if "c0" in t.column_names], blobs


def _runs(t) -> list[list[int]]:
    """Runs of three counts unlikely to occur in the messages by chance: each |v| ≥ 20, and not an
    arithmetic progression (index and offset arrays are full of those)."""
    runs = []
    for i in range(8):
        vals = [int(x) for x in t.column(f"c{i}").to_pylist()[:400]]
        runs += [r for r in (vals[j:j + 3] for j in range(len(vals) - 2))
                 if min(abs(v) for v in r) >= 20 and r[1] - r[0] != r[2] - r[1]]
    return runs


def _where(blobs: list[bytes], runs: list[list[int]]) -> str:
    from test_secure_combine import _encodings

    for run in runs:
        for k, enc in enumerate(_encodings(run)):
            for i, b in enumerate(blobs):
                at = b.find(enc)
                if at >= 0:
                    return f"run {run} encoding {k} in message {i} of {len(blobs)}: {b[max(0, at - 60): at + 60]!r}"
    return "?"


def test_model_counts_are_combined_securely(synth_fed, tmp_path, monkeypatch):
    """In MPC mode the coordinator's messages (and its party's) never contain one node's noisy
    counts, and the model is exactly their sum; in plain mode (the control) they do."""
    from test_secure_combine import _found

    _, fed, _ = synth_fed
    model, counts, blobs = _recorded_training(fed, "mpc", tmp_path, monkeypatch)
    assert len(counts) == 3  # one noisy partial per node
    total: dict = {}
    for t in counts:
        for r in t.to_pylist():
            total[(r["_k0"], r["_k1"])] = total.get((r["_k0"], r["_k1"]), 0) + np.array([r[f"c{i}"] for i in range(8)])
    pi = {p: i for i, p in enumerate(model.populations)}
    vi = {v: i for i, v in enumerate(model.variant_id)}
    assert len(total) == len(model.populations) * len(model.variant_id)
    for (p, v), c in total.items():
        assert np.allclose(model.counts[pi[p], vi[v]].ravel(), c)
    # the first party's answer carries the released model (the totals, in the same value range as
    # a node's counts, so any three of them can match by chance): the model is the output, public
    # by design; every other message must hold no node's counts
    blobs = [b for b in blobs if not b.startswith(b"ARROW1")]
    for t in counts:
        runs = _runs(t)
        assert len(runs) > 50
        assert not _found(blobs, runs), f"a node's noisy counts reached the coordinator: {_where(blobs, runs)}"
    _, counts_plain, blobs_plain = _recorded_training(fed, "plain", tmp_path, monkeypatch)
    assert all(_found(blobs_plain, _runs(t)) for t in counts_plain)


# -- utility, privacy, the gate --------------------------------------------------------------------

def _af_r(model, syn, real: dict) -> float:
    from genofed.genomics.synth_metrics import af_correlation, allele_freq

    return af_correlation(np.array([real[v] for v in model.variant_id], np.float64), allele_freq(syn.dosage))


def _auc_se(sc) -> float:
    """The sampling error of a membership AUC when nothing leaks (Mann–Whitney under AUC = 0.5):
    with ~110 held-out non-members at 1,126 samples it is ~0.03, so a model that leaks nothing
    lands above the gate's 0.55 a few times in a hundred (the gate then refuses: the safe side)."""
    m, n = sc["mia_members"], sc["mia_nonmembers"]
    return float(np.sqrt((m + n + 1) / (12.0 * m * n)))


def test_1126_at_the_default_epsilon(synth_fed, trained, pooled1126, tmp_path):
    """1000 Genomes subset, three nodes, MPC, default ε: allele frequencies correlate ≥ 0.99 with the
    pooled cohort's (DuckDB); nothing leaks (no copies, no relatives, MIA AUC ≤ 0.55, no canary);
    and the gate refuses on AATS above the band: at this cohort size the DP noise makes synthetic
    genomes easy to tell from real ones (under-fitting, measured: docs/synthetic.md)."""
    _, fed, _ = synth_fed
    syn = synth.sample(trained, 1126, seed=5)
    from oracle import to_pooled_sql

    real = dict(pooled1126.sql(to_pooled_sql("SELECT variant_id, allele_freq(dosage) FROM genotypes GROUP BY variant_id")).fetchall())
    assert _af_r(trained, syn, real) >= 0.99
    out = tmp_path / "synthetic.vcf.gz"
    res = synth_audit.release(fed._coord, syn, out, tmp_path / "report.html")
    sc = res.report["scores"]
    assert sc["af_r"] >= 0.98  # at the nodes, against each node's own cohort
    assert sc["exact_copies"] == 0 and sc["kinship_over"] == 0 and sc["mia_auc"] <= 0.55 + 2 * _auc_se(sc)
    # a canary counts as detected when it is closer to the synthetic genomes than all 49 of its
    # controls (and z <= -3): with nothing memorised each of the 6 is that close by chance with
    # probability at most 1/50, so one detection happens in up to ~11 % of runs, two in < 1 %
    # (the gate then refuses: the safe side); a model that memorised would show several
    assert sc["canaries"] == 6 and sc["canaries_detected"] <= 1
    assert sc["aats"] > 0.55 and not res.passed
    reasons = res.report["reasons"]
    assert "under-fitting" in reasons[0]
    # a membership AUC within sampling noise of 0.55, or a canary detected by chance, adds the
    # gate's reason for it (the safe side)
    extra = [r for r in reasons[1:] if "membership inference" in r or "canaries detected" in r]
    assert reasons[1:] == extra
    assert len(reasons) == 1 + (sc["mia_auc"] > 0.55) + (sc["canaries_detected"] > synth_audit.canary_allowance(sc["canaries"]))
    assert not out.exists()
    html = (tmp_path / "report.html").read_text()
    assert "refused" in html and "AATS" in html
    dp_nodes = trained.provenance["dp_nodes"]
    assert set(dp_nodes) == {"biobank_A", "biobank_B", "biobank_C"}
    assert all(d["epsilon"] == pytest.approx(EPS * 0.95) for d in dp_nodes.values())


@pytest.fixture(scope="module")
def demo_synth(demo_dir, tmp_path_factory):
    root = clone_federation(demo_dir[0] / "fed", tmp_path_factory.mktemp("synth_demo"), min_count=5, combine="mpc", gates=False)
    _allow_synth(root)
    for toml in root.glob("*/node.toml"):
        cfg = tomllib.loads(toml.read_text())
        cfg["dp"]["bounds"] = {"phenotypes.ldl": [0, 400], "phenotypes.t2d": [0, 1]}
        toml.write_text(tomli_w.dumps(cfg))
    with serve_in_process(root):
        fed = genofed.connect(root, timeout=600)
        model = fed.synth_train(epsilon=EPS, phenotypes={"phenotypes.t2d": "binary", "phenotypes.ldl": "continuous"})
        yield fed, model
        fed.close()


def test_demo_cohort_released_at_the_default_epsilon(demo_synth, demo_dir, tmp_path):
    """The demo cohort (3,000 samples, three populations): released at the default ε, every
    privacy threshold met, allele frequencies ≥ 0.99 against plink2 on the pooled VCF, a VCF that
    bcftools reads, synthetic sex and phenotypes from the group summary."""
    fed, model = demo_synth
    syn = synth.sample(model, 3000, seed=1)
    vcf = demo_dir[0] / "cohort" / "cohort.vcf.gz"
    subprocess.run(["plink2", "--vcf", str(vcf), "--freq", "--out", str(tmp_path / "ref"), "--set-all-var-ids",
                    "@:#:$r:$a", "--new-id-max-allele-len", "1000", "--threads", "1"], check=True, capture_output=True)
    real = {}
    for line in (tmp_path / "ref.afreq").read_text().splitlines()[1:]:
        f = line.split("\t")
        real[f[1]] = float(f[4])
    assert _af_r(model, syn, real) >= 0.99
    out = tmp_path / "demo_synth.vcf.gz"
    res = fed.synth_release(model, 3000, out, tmp_path / "demo.html", seed=1)
    assert res.passed, res.report["reasons"]
    sc = res.report["scores"]
    assert 0.45 <= sc["aats"] <= 0.55 and sc["exact_copies"] == 0 and sc["kinship_over"] == 0
    assert sc["mia_auc"] <= 0.55 and sc["canaries_detected"] <= synth_audit.canary_allowance(sc["canaries"]) and sc["af_r"] >= 0.99
    q = subprocess.run(["bcftools", "query", "-f", "%ID[\t%GT]\n", str(out)], capture_output=True, text=True, check=True)
    lines = q.stdout.splitlines()
    assert len(lines) == model.n_variants and lines[0].count("|") == 3000
    assert Path(str(out) + ".tbi").exists()
    assert set(syn.sex) <= {"0", "1", "M", "F", "male", "female"} and len(set(syn.sex)) == 2
    import pandas as pd

    pheno = pd.read_csv(demo_dir[0] / "cohort" / "phenotypes.csv")
    t2d = syn.phenotypes["t2d"]
    assert set(np.unique(t2d)) <= {0.0, 1.0} and abs(t2d.mean() - pheno["t2d"].mean()) < 0.03
    assert abs(syn.phenotypes["ldl"].mean() - pheno["ldl"].mean()) < 0.03 * pheno["ldl"].mean()
    assert abs(syn.phenotypes["ldl"].std() - pheno["ldl"].std()) < 0.15 * pheno["ldl"].std()


def test_gate_refuses_a_generator_that_copies_training_genomes(synth_fed, trained, data_1126, tmp_path):
    """A deliberately leaky generator: synthetic samples are real samples' genotypes."""
    import cyvcf2
    import pyarrow.parquet as pq

    _, fed, backends = synth_fed
    # it copies training members (as a generator trained on them would): each node's holdout is
    # known here from the node's key, as only the node could
    members = set()
    for node in backends.values():
        ids = pq.read_table(node.store.samples_path).column("sample_id").to_pylist()
        hold = synth.holdout_mask(synth.node_secret(node.store.root), int(trained.provenance["seed"]), ids, 0.2)
        members |= {s for s, h in zip(ids, hold, strict=True) if not h}
    syn = synth.sample(trained, 600, seed=6)
    vcf = cyvcf2.VCF(str(data_1126["vcf"]))
    take_ids = [s for s in vcf.samples if s in members][:600]
    take = np.array([vcf.samples.index(s) for s in take_ids])
    where = {v: i for i, v in enumerate(trained.variant_id)}
    h1 = np.zeros_like(syn.hap1)
    h2 = np.zeros_like(syn.hap2)
    for rec in vcf:
        gt = np.array([g[:2] for g in rec.genotypes])[take]
        for a, alt in enumerate(rec.ALT, start=1):
            i = where.get(f"{rec.CHROM}:{rec.POS}:{rec.REF}:{alt}")
            if i is not None:
                h1[i], h2[i] = gt[:, 0] == a, gt[:, 1] == a
    syn.hap1, syn.hap2 = h1, h2
    pops = dict((ln.split("\t")[0], ln.split("\t")[2]) for ln in data_1126["samples"].read_text().splitlines()[1:])
    sup = _super_pops()
    syn.population = [sup[pops[s]] for s in np.array(vcf.samples)[take]]
    out = tmp_path / "leaky.vcf.gz"
    res = synth_audit.release(fed._coord, syn, out, tmp_path / "leaky.html")
    assert not res.passed
    sc = res.report["scores"]
    assert sc["exact_copies"] > 0 and sc["aats"] < 0.45 and sc["kinship_over"] > 0 and sc["mia_auc"] > 0.55
    assert not out.exists() and not Path(str(out) + ".tbi").exists()
    assert "refused" in (tmp_path / "leaky.html").read_text()


def test_gate_detects_planted_canaries(synth_fed, trained, tmp_path):
    """A generator that memorised a node's canaries: the node's secret canary genomes appear in
    the synthetic set (built here from the node's key, as only the node can)."""
    root, fed, backends = synth_fed
    syn = synth.sample(trained, 1126, seed=7)
    store = backends["biobank_B"].store
    secret = synth.node_secret(store.root)
    seed = int(trained.provenance["seed"])
    # the canaries' genomes, on every variant, exactly as biobank_B drew them in training
    from genofed.engine.analysis import encode, validate_analysis
    from genofed.engine.backends.analysis import AnalysisData
    from genofed.engine.schema import Catalog

    node = backends["biobank_B"]
    args = synth.SynthCounts().parse_args({k: trained.provenance[k] for k in ("population", "holdout", "canaries", "seed")})
    frag = validate_analysis(encode("synth_counts", args, "counts"), Catalog.merge({"biobank_B": node.catalog()}))
    data = AnalysisData(node, frag)
    canary = synth.node_canaries(frag, data, secret, seed)
    where = {v: i for i, v in enumerate(trained.variant_id)}
    rows = np.array([where[v] for v in canary["variant_id"]])
    for j, p in enumerate(canary["population"]):
        col = int(np.flatnonzero(np.array(syn.population) == p)[j])
        syn.hap1[:, col] = 0
        syn.hap2[:, col] = 0
        syn.hap1[rows, col], syn.hap2[rows, col] = canary["hap1"][:, j], canary["hap2"][:, j]
    res = synth_audit.release(fed._coord, syn, tmp_path / "canary.vcf.gz", tmp_path / "canary.html")
    assert res.report["scores"]["canaries_detected"] >= 1
    assert not res.passed and any("canar" in r for r in res.report["reasons"])


def test_cli_train_and_release(synth_fed, tmp_path):
    """`genofed synth train` then `release`: the exit status, the VCF and the report agree."""
    from click.testing import CliRunner

    from genofed.cli import main

    root, _, _ = synth_fed
    model = tmp_path / "model.npz"
    r = CliRunner().invoke(main, ["synth", "train", "--federation", str(root), "--out", str(model), "--epsilon", str(EPS),
                                  "--population", "population", "--order", "1", "--variants", "chrom = '20'"])
    assert r.exit_code == 0, r.output
    assert "model:" in r.output and model.exists()
    m = synth.SynthModel.load(model)
    assert set(m.chrom) == {"20"} and m.provenance["epsilon"] == EPS
    out = tmp_path / "s.vcf.gz"
    r = CliRunner().invoke(main, ["synth", "release", "--federation", str(root), "--model", str(model), "-n", "400",
                                  "--out", str(out), "--report", str(tmp_path / "s.html")])
    assert r.exit_code in (0, 1), r.output
    assert (r.exit_code == 0) == out.exists() == ("released:" in r.output)
    assert "AATS" in r.output and (tmp_path / "s.html").exists()
    bad = tmp_path / "not_a_model.npz"
    bad.write_bytes(b"junk")
    r = CliRunner().invoke(main, ["synth", "release", "--federation", str(root), "--model", str(bad), "-n", "10",
                                  "--out", str(tmp_path / "x.vcf.gz")])
    assert r.exit_code == 2 and "not a genofed synthetic-data model" in r.output


def test_evaluate_any_synthetic_vcf(synth_fed, trained, tmp_path):
    """The evaluator runs on any synthetic VCF (here one written from the model, read back as an
    outside generator's): scores come back, membership inference is reported as not measured."""
    from click.testing import CliRunner

    from genofed.cli import main
    from genofed.genomics.synth_report import write_vcf

    root, _, _ = synth_fed
    syn = synth.sample(trained, 300, seed=9)
    vcf = write_vcf(tmp_path / "other.vcf.gz", chrom=trained.chrom, pos=trained.pos, ref=trained.ref, alt=trained.alt,
                    variant_id=trained.variant_id, sample_ids=syn.sample_id, hap1=syn.hap1, hap2=syn.hap2)
    (tmp_path / "pops.tsv").write_text("".join(f"{s}\t{p}\n" for s, p in zip(syn.sample_id, syn.population, strict=True)))
    r = CliRunner().invoke(main, ["synth", "evaluate", "--federation", str(root), "--vcf", str(vcf), "--populations",
                                  str(tmp_path / "pops.tsv"), "--report", str(tmp_path / "eval.html")])
    assert r.exit_code == 0, r.output
    import re

    assert "AATS" in r.output
    af = float(re.search(r"allele frequency correlation: ([0-9.]+)", r.output).group(1))
    assert af > 0.97
    html = (tmp_path / "eval.html").read_text()
    assert "not measured" in html and "evaluation only" in html
