"""Federated learning with Flower on real processes: a SuperLink and one SuperNode per node on
loopback, genofed's ClientApp reading features through each node's engine, SecAgg+ on.

Oracles: scikit-learn on the pooled cohort, read independently (pandas CSV + cyvcf2 on the pooled
VCF); the plain-FedAvg run for the SecAgg+ weights; each node's own contribution, computed
in-process, for what the server must never receive.
"""

from __future__ import annotations

import csv
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import clone_federation

import genofed
from genofed.connectors.config import NodeConfig
from genofed.connectors.federation import FederationConfig
from genofed.federated import lanes
from genofed.federated.apps import NodeTrainer, RunSettings
from genofed.federated.runner import FlowerDeployment, TrainingError

pytest.importorskip("flwr")
sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

T2D_SQL = "-- t2d risk\nSELECT sample_id, t2d, age, bmi, sex\nFROM phenotypes\n"


def _dosages(vcf: Path, ids: list[str], samples: list[str], node_of: dict[str, str] | None = None) -> np.ndarray:
    """[samples, variants] ALT dosages from the pooled VCF with cyvcf2 (bi-allelic records). A
    missing call takes the mean dosage of the variant among the samples of the same node (as
    each node imputes); without ``node_of`` there must be none."""
    from cyvcf2 import VCF

    want = {v: j for j, v in enumerate(ids)}
    reader = VCF(str(vcf), samples=samples)
    order = [reader.samples.index(s) for s in samples]
    G = np.full((len(samples), len(ids)), np.nan)
    for rec in reader:
        for a, alt in enumerate(rec.ALT):
            vid = f"{rec.CHROM}:{rec.POS}:{rec.REF}:{alt}"
            if vid in want:
                gt = rec.genotype.array()[:, :-1]
                d = np.where(gt < 0, np.nan, (gt == a + 1)).sum(axis=1)
                d[(gt < 0).any(axis=1)] = np.nan
                G[:, want[vid]] = d[order]
    reader.close()
    if node_of is None:
        assert np.isfinite(G).all(), "the oracle's variants must have no missing calls (nodes impute with their own means)"
        return G
    nodes = np.array([node_of[s] for s in samples])
    for node in np.unique(nodes):
        rows = nodes == node
        block = G[rows]
        mean = np.nanmean(block, axis=0)
        G[rows] = np.where(np.isnan(block), mean, block)
    return G


def _set_training(root: Path, **policy) -> None:
    cfg = FederationConfig.load(root)
    for n in cfg.nodes:
        p = root / n.config
        doc = tomllib.loads(p.read_text())
        doc.setdefault("training", {}).update(policy)
        p.write_text(tomli_w.dumps(doc))


@pytest.fixture(scope="module")
def demo_fl(demo_dir, tmp_path_factory):
    """A copy of the demo federation (its node.toml files are edited by the refusal tests) and a
    running Flower deployment over it."""
    root, truth = demo_dir
    fed = clone_federation(root / "fed", tmp_path_factory.mktemp("demo_fl"), min_count=5)
    _set_training(fed, allow=True, allow_plain=True)
    cfg = FederationConfig.load(fed)
    dep = FlowerDeployment([fed / n.config for n in cfg.nodes], workdir=tmp_path_factory.mktemp("flower")).start()
    yield fed, cfg, dep, root, truth
    dep.stop()


@pytest.fixture(scope="module")
def demo_pooled(demo_fl):
    """The pooled demo cohort (features in the run's order) read without genofed."""
    _, _, _, root, truth = demo_fl
    causal = [c["variant_id"] for c in truth["t2d"]["causal"]]
    with open(root / "cohort" / "phenotypes.csv") as f:
        rows = [r for r in csv.DictReader(f) if all(r[c] not in ("", "NA") for c in ("age", "bmi", "sex", "t2d"))]
    ids = [r["sample_id"] for r in rows]
    X = np.array([[float(r["age"]), float(r["bmi"]), float(r["sex"])] for r in rows])
    y = np.array([float(r["t2d"]) for r in rows])
    with open(root / "cohort" / "split.tsv") as f:
        node_of = {r["sample"]: r["node"] for r in csv.DictReader(f, delimiter="\t")}
    G = _dosages(root / "cohort" / "cohort.vcf.gz", causal, ids, node_of)
    assert np.isnan(G).sum() == 0
    return np.hstack([X, G]), y, causal


def _settings(causal: list[str], **kw) -> RunSettings:
    s = RunSettings(sql=T2D_SQL.strip(), label="t2d", variants=list(causal), nodes=3, **kw)
    s.check()
    return s


def test_exact_logistic_equals_pooled_sklearn(demo_fl, demo_pooled, tmp_path):
    fed, cfg, dep, _, _ = demo_fl
    X, y, causal = demo_pooled
    res = dep.train(_settings(causal, strategy="exact"), cfg.nodes[0].token, tmp_path / "exact")
    ref = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(X, y)
    coef = res["coefficients"]
    got = np.array([coef[k] for k in ["age", "bmi", "sex", *causal]])
    np.testing.assert_allclose(got, ref.coef_[0], atol=1e-4, rtol=0)
    assert abs(coef["(intercept)"] - ref.intercept_[0]) < 1e-4
    # pooled-equivalent AUC from the securely summed histograms vs sklearn on the pooled predictions
    auc_pooled = roc_auc_score(y, ref.predict_proba(X)[:, 1])
    assert abs(res["metrics"]["auc"] - auc_pooled) <= max(2e-3, res["metrics"]["auc_max_error"])
    assert res["n_total"] == len(y) and res["n_cases"] == int(y.sum())
    assert res["secagg"] and res["provenance"]["aggregation"].startswith("SecAgg+")
    assert len(res["node_metrics"]) == 3 and all(0.5 < m["auc"] < 1 for m in res["node_metrics"])
    assert [h["iteration"] for h in res["history"]] == list(range(1, len(res["history"]) + 1))
    # the planted t2d effects are recovered in sign and size
    for c in demo_fl[4]["t2d"]["causal"]:
        assert abs(coef[c["variant_id"]] - c["beta"]) < 0.35
    saved = np.load(tmp_path / "exact" / "model.npz")
    assert set(saved.files) >= {"mean", "sd", "param0"}


def _own_contributions(fed: Path, cfg: FederationConfig, s: RunSettings) -> list[np.ndarray]:
    """Each node's encoded ``stats`` vector, computed in-process exactly as its ClientApp does."""
    out = []
    for n in cfg.nodes:
        t = NodeTrainer(s, NodeConfig.load(fed / n.config), cfg.nodes[0].token, "oracle")
        t.authorize(True)
        out.append(lanes.encode(t.contribution("stats", [np.zeros(1)], 1)))
    return out


def _received(path: Path) -> list[np.ndarray]:
    from flwr.common import bytes_to_ndarray

    arrays = []
    with np.load(path) as z:
        for k in z.files:
            a = z[k]
            arrays.append(a.astype(np.float64).reshape(-1))
            if a.dtype == np.uint8:  # bytes fields: SecAgg+ sends the masked vectors as serialised arrays
                try:
                    arrays.append(bytes_to_ndarray(a.tobytes()).astype(np.float64).reshape(-1))
                except Exception:  # noqa: BLE001 - keys, shares: not arrays
                    pass
    return arrays


def _contains(haystack: list[np.ndarray], needle: np.ndarray) -> bool:
    for a in haystack:
        if a.size >= needle.size:
            for off in range(0, a.size - needle.size + 1, max(1, needle.size // 4)):
                if np.array_equal(a[off:off + needle.size], needle):
                    return True
    return False


def test_secagg_equals_plain_and_server_never_sees_a_node_update(demo_fl, demo_pooled, tmp_path):
    """An MLP trained with FedProx, under SecAgg+ and in plain: the same weights (exact lanes), a
    server recording that holds no node's own vector under SecAgg+ (and each of them in plain, the
    control), and an AUC within 0.01 of the same model trained on the pooled data."""
    from genofed.federated.models import MLPModel, Standardizer

    fed, cfg, dep, _, _ = demo_fl
    X, y, causal = demo_pooled
    kw = {"model": "mlp", "strategy": "fedprox", "mu": 0.01, "hidden": 8, "rounds": 2, "local_epochs": 40, "lr": 0.5}
    s = _settings(causal, **kw)
    sec = dep.train(s, cfg.nodes[0].token, tmp_path / "sec", record=True)
    plain = dep.train(_settings(causal, secagg=False, **kw), cfg.nodes[0].token, tmp_path / "plain", record=True)
    a, b = np.load(tmp_path / "sec" / "model.npz"), np.load(tmp_path / "plain" / "model.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
    assert max(abs(a[k] - b[k]).max() for k in a.files) < 1e-7  # exact lanes: only float rounding differs
    assert not plain["secagg"] and sec["secagg"] and sec["coefficients"] is None
    # what the server received: under SecAgg+ no node's own vector, in plain mode each of them
    own = _own_contributions(fed, cfg, s)
    got_sec, got_plain = _received(tmp_path / "sec" / "received.npz"), _received(tmp_path / "plain" / "received.npz")
    assert all(_contains(got_plain, v) for v in own), "control: the plain run's recording holds each node's update"
    assert not any(_contains(got_sec, v) for v in own)
    assert not any(_contains(got_sec, v + lanes.CLIPPING_RANGE) for v in own)  # nor its quantised form
    # the AUC of the same model, same initialisation and epochs, trained on the pooled data
    m = MLPModel(hidden=8)
    std = Standardizer.from_sums(len(y), X.sum(axis=0), (X ** 2).sum(axis=0))
    Xs = std.transform(X)
    params = m.fit(m.init(X.shape[1], 0), Xs, y, epochs=kw["rounds"] * kw["local_epochs"], lr=kw["lr"])
    assert abs(sec["metrics"]["auc"] - roc_auc_score(y, m.predict_proba(params, Xs))) < 0.01
    assert len(sec["history"]) == 2 and sec["history"][-1]["train_loss"] < sec["history"][0]["train_loss"]


def test_policy_refusals_stop_before_any_sum(demo_fl, tmp_path):
    fed, cfg, dep, _, _ = demo_fl
    s = _settings([], strategy="exact")
    try:
        _set_training(fed, allow_plain=False)
        with pytest.raises(TrainingError, match="only under SecAgg"):
            dep.train(_settings([], strategy="fedavg", rounds=1, secagg=False), cfg.nodes[0].token, tmp_path / "plain")
        with pytest.raises(TrainingError, match="token"):
            dep.train(s, "not-a-token", tmp_path / "auth")
        _set_training(fed, allow=False)
        with pytest.raises(TrainingError, match=r"not enabled at this node \(\[training\] allow"):
            dep.train(s, cfg.nodes[0].token, tmp_path / "off")
        progress = (tmp_path / "off" / "progress.jsonl").read_text()
        assert '"stage": "stats"' not in progress and '"stage": "newton"' not in progress
        _set_training(fed, allow=True, min_samples=100_000)
        with pytest.raises(TrainingError, match="minimum for training") as e:
            dep.train(s, cfg.nodes[0].token, tmp_path / "small")
        assert not any(ch.isdigit() for ch in str(e.value).split("minimum for training")[0][-30:])  # no count leaks
    finally:
        _set_training(fed, allow=True, allow_plain=True, min_samples=50)
    audit = "".join((fed / n.name / "audit.log").read_text() for n in cfg.nodes if (fed / n.name / "audit.log").exists())
    assert "train_refused" in audit and "secagg_required" in audit


def test_1126_status_exact_model_matches_pooled(fed_dir_1126, fed1126, data_1126, phenotypes_1126, tmp_path):
    """The 1000 Genomes subset's simulated case/control ``status`` with sex and ten common chr22
    variants chosen by a federated query: the exact federated model is the pooled one."""
    sql = ("SELECT p.sample_id, p.status, p.age, p.bmi, s.sex = 'F' AS female\n"
           "FROM phenotypes AS p JOIN samples AS s ON p.sample_id = s.sample_id")
    features = tmp_path / "status.sql"
    features.write_text(sql + "\n")
    vq = ("SELECT variant_id FROM genotypes WHERE chrom = '22' AND length(ref) = 1 AND length(alt) = 1 "
          "GROUP BY variant_id HAVING allele_freq(dosage) BETWEEN 0.25 AND 0.75")
    # plain aggregation (the 1126 federation allows it; SecAgg+ is tested on the demo cohort above)
    res = genofed.train(fed_dir_1126, features, "status", strategy="exact", variants_sql=vq, out=tmp_path / "m",
                        federation=fed1126, secagg=False)
    variants = res["features"][3:]
    assert len(variants) >= 10
    # the pooled oracle: phenotypes CSV + sample sheet + cyvcf2
    sex = {}
    with open(data_1126["samples"]) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            sex[r["sample.id"]] = 1.0 if r["sex"] == "F" else 0.0
    rows = []
    with open(phenotypes_1126) as f:
        for r in csv.DictReader(f):
            if r["status"] not in ("", "NA") and r["age"] not in ("", "NA") and r["bmi"] not in ("", "NA"):
                rows.append(r)
    ids = [r["sample_id"] for r in rows]
    X = np.array([[float(r["age"]), float(r["bmi"]), sex[r["sample_id"]]] for r in rows])
    y = np.array([float(r["status"]) for r in rows])
    X = np.hstack([X, _dosages(data_1126["vcf"], variants, ids)])
    ref = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(X, y)
    got = np.array([res["coefficients"][k] for k in ["age", "bmi", "female", *variants]])
    np.testing.assert_allclose(got, ref.coef_[0], atol=1e-4, rtol=0)
    assert abs(res["metrics"]["auc"] - roc_auc_score(y, ref.predict_proba(X)[:, 1])) < 0.01
    assert res["n_total"] == len(y)
    shutil.rmtree(tmp_path / "m", ignore_errors=True)
    json.dumps(res)  # the result is plain JSON


def test_cli_train_prints_progress_and_matches_pooled(fed_dir_1126, data_1126, phenotypes_1126, tmp_path):
    """``genofed train`` (its own local deployment; plain, as the 1126 nodes allow): per-round
    progress, the pooled-equivalent metrics, and coefficients equal to scikit-learn's."""
    import subprocess
    import sys

    features = tmp_path / "status.sql"
    features.write_text("SELECT sample_id, status, age, bmi FROM phenotypes\n")
    p = subprocess.run([sys.executable, "-m", "genofed.cli", "train", "--federation", str(fed_dir_1126), "--features", str(features),
                        "--label", "status", "--strategy", "exact", "--plain", "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "round 1 stats" in p.stdout and "newton" in p.stdout and "pooled-equivalent: AUC" in p.stdout
    res = json.loads((tmp_path / "m" / "result.json").read_text())
    rows = []
    with open(phenotypes_1126) as f:
        for r in csv.DictReader(f):
            if all(r[c] not in ("", "NA") for c in ("status", "age", "bmi")):
                rows.append(r)
    X = np.array([[float(r["age"]), float(r["bmi"])] for r in rows])
    y = np.array([float(r["status"]) for r in rows])
    ref = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose([res["coefficients"]["age"], res["coefficients"]["bmi"]], ref.coef_[0], atol=1e-4, rtol=0)
    assert f"{res['coefficients']['age']: .6f}".strip() in p.stdout
