"""genofed.federated.models: pure-numpy FL models, exact federated Newton, mergeable metrics.

Every check compares against an independent computation: scikit-learn on the pooled data,
finite differences, or plain numpy on the pooled rows. Synthetic data: a logistic model with an
intercept and 6 features (3 genotype dosages, 3 continuous covariates), n = 2000, split into 3
nodes of unequal size.

scikit-learn >= 1.8 deprecates ``penalty=None``; its replacement ``C=np.inf`` is used for the
unpenalised fit. The L2 mapping: ``models`` minimises ``mean BCE + (l2/2)*||w||^2`` and sklearn
``0.5*||w||^2 + C*sum BCE``, so ``C = 1 / (l2 * n)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from genofed.federated.models import (
    CAL_BINS,
    EVAL_BINS,
    LogisticModel,
    MLPModel,
    Model,
    NewtonError,
    SeparationError,
    Standardizer,
    auc_exact,
    beta_to_logistic_params,
    eval_summary,
    logistic_newton_sums,
    logistic_params_to_beta,
    make_model,
    metrics_from_summary,
    newton_update,
    summary_layout,
    summary_length,
)

N = 2000
SIZES = (1000, 650, 350)
TRUE_BETA = np.array([-0.7, 0.6, -0.4, 0.3, 0.8, -0.5, 0.25])  # intercept first


def _make_data(seed: int = 20240611) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maf = np.array([0.3, 0.15, 0.45])
    G = rng.binomial(2, maf, size=(N, 3)).astype(np.float64)
    C = np.column_stack([rng.normal(50, 10, N), rng.normal(0, 1, N), rng.binomial(1, 0.5, N)])
    X = np.hstack([G, C])
    Xc = (X - X.mean(0)) / X.std(0)
    eta = TRUE_BETA[0] + Xc @ TRUE_BETA[1:]
    y = (rng.random(N) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    return X, y


X_RAW, Y = _make_data()


def _split(X: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    cuts = np.cumsum(SIZES)[:-1]
    return list(zip(np.split(X, cuts), np.split(y, cuts), strict=True))


NODES_RAW = _split(X_RAW, Y)


def _pooled_standardizer() -> Standardizer:
    # what the federation does: sum n, sum x, sum x^2 over nodes
    n = sum(len(yk) for _, yk in NODES_RAW)
    s1 = sum(Xk.sum(0) for Xk, _ in NODES_RAW)
    s2 = sum((Xk ** 2).sum(0) for Xk, _ in NODES_RAW)
    return Standardizer.from_sums(n, s1, s2)


STD = _pooled_standardizer()
X_STD = STD.transform(X_RAW)
NODES_STD = [(STD.transform(Xk), yk) for Xk, yk in NODES_RAW]


def _federated_newton(nodes: list[tuple[np.ndarray, np.ndarray]], l2: float = 0.0, max_iter: int = 50) -> np.ndarray:
    p = nodes[0][0].shape[1]
    n_total = float(sum(len(yk) for _, yk in nodes))
    beta = np.zeros(p + 1)
    for _ in range(max_iter):
        g = np.zeros(p + 1)
        H = np.zeros((p + 1, p + 1))
        for Xk, yk in nodes:
            gk, Hk, _ = logistic_newton_sums(beta, Xk, yk)
            g += gk
            H += Hk
        new = newton_update(beta, g, H, l2=l2, n_total=n_total)
        step = np.max(np.abs(new - beta))
        beta = new
        if step < 1e-12:
            return beta
    raise AssertionError("federated Newton did not converge")


def _sk_fit(X: np.ndarray, y: np.ndarray, C: float) -> np.ndarray:
    m = LogisticRegression(C=C, solver="newton-cg", tol=1e-12, max_iter=10000).fit(X, y)
    return np.concatenate([m.intercept_, m.coef_.ravel()])


# -- exact Newton ----------------------------------------------------------------------------------------


def test_newton_blocks_add_up_to_pooled_and_match_finite_differences() -> None:
    beta = np.array([0.1, -0.2, 0.3, 0.05, -0.1, 0.2, 0.15])
    parts = [logistic_newton_sums(beta, Xk, yk) for Xk, yk in NODES_STD]
    g_sum = sum(p[0] for p in parts)
    H_sum = sum(p[1] for p in parts)
    ll_sum = sum(p[2] for p in parts)
    g, H, ll = logistic_newton_sums(beta, X_STD, Y)
    np.testing.assert_allclose(g_sum, g, rtol=0, atol=1e-9)
    np.testing.assert_allclose(H_sum, H, rtol=0, atol=1e-9)
    assert abs(ll_sum - ll) < 1e-9

    # independent: the log-likelihood by sklearn's log loss, its gradient and Hessian by finite differences
    X1 = np.hstack([np.ones((N, 1)), X_STD])

    def loglik(b: np.ndarray) -> float:
        return -N * log_loss(Y, 1.0 / (1.0 + np.exp(-(X1 @ b))))

    assert abs(ll - loglik(beta)) < 1e-8
    h = 1e-5
    eye = np.eye(beta.size)
    g_fd = np.array([(loglik(beta + h * e) - loglik(beta - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-5)
    # the information is minus the Hessian of the log-likelihood: differences of the score
    H_fd = -np.array([(logistic_newton_sums(beta + h * e, X_STD, Y)[0] - logistic_newton_sums(beta - h * e, X_STD, Y)[0]) / (2 * h)
                      for e in eye])
    np.testing.assert_allclose(H, H_fd, rtol=1e-6, atol=1e-5)


def test_exact_newton_equals_sklearn_mle_on_pooled_raw_data() -> None:
    beta = _federated_newton(NODES_RAW)
    ref = _sk_fit(X_RAW, Y, C=np.inf)
    np.testing.assert_allclose(beta, ref, rtol=0, atol=1e-6)
    # and the round trip to LogisticModel parameters predicts the same as sklearn
    params = beta_to_logistic_params(beta)
    p_fed = LogisticModel().predict_proba(params, X_RAW)
    p_sk = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10000).fit(X_RAW, Y).predict_proba(X_RAW)[:, 1]
    np.testing.assert_allclose(p_fed, p_sk, atol=1e-7)


@pytest.mark.parametrize("l2", [0.01, 0.2])
def test_exact_newton_l2_equals_sklearn_with_c_one_over_l2_n(l2: float) -> None:
    beta = _federated_newton(NODES_STD, l2=l2)
    ref = _sk_fit(X_STD, Y, C=1.0 / (l2 * N))
    np.testing.assert_allclose(beta, ref, rtol=0, atol=1e-6)
    # the penalty shrinks: the coefficients differ from the MLE
    assert np.max(np.abs(beta - _federated_newton(NODES_STD))) > 1e-3
    # the same l2 is the optimum of LogisticModel.loss: its gradient vanishes there
    params = beta_to_logistic_params(beta)
    m = LogisticModel()
    step = m.fit(params, X_STD, Y, epochs=1, lr=1.0, l2=l2)
    np.testing.assert_allclose(logistic_params_to_beta(step), beta, atol=1e-9)


def test_newton_collinear_features_fall_back_to_least_squares() -> None:
    nodes = [(np.hstack([Xk, Xk[:, :1]]), yk) for Xk, yk in NODES_STD]  # a duplicated column: H is singular
    beta = _federated_newton(nodes)
    ref = _federated_newton(NODES_STD)
    # minimum-norm split of the duplicated coefficient; same linear predictor
    assert abs(beta[1] - beta[-1]) < 1e-8
    np.testing.assert_allclose(beta[1] + beta[-1], ref[1], atol=1e-8)
    np.testing.assert_allclose(beta[2:-1], ref[2:], atol=1e-8)


def test_newton_perfect_separation_and_non_finite_raise() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)
    beta = np.zeros(3)
    with pytest.raises(SeparationError, match="separat") as info:
        for _ in range(200):
            g, H, _ = logistic_newton_sums(beta, X, y)
            beta = newton_update(beta, g, H)
    assert isinstance(info.value, np.linalg.LinAlgError) and isinstance(info.value, ValueError)
    # with a ridge penalty the same data have a finite optimum (matching sklearn)
    Xn = [(X[:150], y[:150]), (X[150:], y[150:])]
    np.testing.assert_allclose(_federated_newton(Xn, l2=0.01), _sk_fit(X, y, C=1.0 / (0.01 * 300)), atol=1e-6)
    g, H, _ = logistic_newton_sums(np.zeros(3), X, y)
    with pytest.raises(NewtonError, match="NaN or infinite"):
        newton_update(np.zeros(3), np.array([np.nan, 0, 0]), H)
    with pytest.raises(ValueError, match="n_total"):
        newton_update(np.zeros(3), g, H, l2=0.1)


def test_beta_params_round_trip() -> None:
    beta = np.arange(7.0)
    params = beta_to_logistic_params(beta)
    assert [a.shape for a in params] == [(6,), (1,)] and params[1][0] == 0.0
    np.testing.assert_array_equal(logistic_params_to_beta(params), beta)


# -- gradients of local training -------------------------------------------------------------------------


def _numeric_grad(f: Callable[[list[np.ndarray]], float], params: list[np.ndarray], h: float = 1e-6) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(params):
        g = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            up = [q.copy() for q in params]
            dn = [q.copy() for q in params]
            up[i][j] += h
            dn[i][j] -= h
            g[j] = (f(up) - f(dn)) / (2 * h)
        out.append(g)
    return out


@pytest.mark.parametrize("model", [LogisticModel(), MLPModel(hidden=4), MLPModel(hidden=3, activation="relu")], ids=repr)
def test_fit_steps_follow_finite_difference_gradient(model: Model) -> None:
    X, y = X_STD[:200], Y[:200]
    w0 = model.init(X.shape[1], seed=1)
    w0 = [a + 0.1 * np.random.default_rng(i).normal(size=a.shape) for i, a in enumerate(w0)]  # not at a symmetric point
    l2, mu, lr = 0.05, 0.3, 0.4
    # one full-batch epoch = one gradient step of loss (no proximal term at the anchor)
    g = _numeric_grad(lambda q: model.loss(q, X, y, l2=l2), w0)
    one = model.fit(w0, X, y, epochs=1, lr=lr, l2=l2, mu=mu)
    for a, b, gi in zip(one, w0, g, strict=True):
        np.testing.assert_allclose(a, b - lr * gi, atol=1e-8)
    # the second step includes the FedProx pull towards w0
    def prox(q: list[np.ndarray]) -> float:
        return model.loss(q, X, y, l2=l2) + 0.5 * mu * sum(float(np.sum((a - b) ** 2)) for a, b in zip(q, w0, strict=True))

    g1 = _numeric_grad(prox, one)
    two = model.fit(w0, X, y, epochs=2, lr=lr, l2=l2, mu=mu)
    for a, b, gi in zip(two, one, g1, strict=True):
        np.testing.assert_allclose(a, b - lr * gi, atol=1e-8)
    # and loss is the mean BCE plus the l2 term on weights only
    p = model.predict_proba(w0, X)
    weights = [w0[0]] if model.name == "logistic" else [w0[0], w0[2]]
    expected = log_loss(y, p) + 0.5 * l2 * sum(float(np.sum(w ** 2)) for w in weights)
    assert abs(model.loss(w0, X, y, l2=l2) - expected) < 1e-12


# -- FedAvg / FedProx in process -------------------------------------------------------------------------


def _fedavg(model: Model, rounds: int, epochs: int, lr: float, mu: float = 0.0, l2: float = 0.0) -> list[np.ndarray]:
    params = model.init(X_STD.shape[1], seed=7)
    n_total = sum(len(yk) for _, yk in NODES_STD)
    for r in range(rounds):
        updates = [(len(yk), model.fit(params, Xk, yk, epochs=epochs, lr=lr, l2=l2, mu=mu, seed=r)) for Xk, yk in NODES_STD]
        params = [sum(n * u[i] for n, u in updates) / n_total for i in range(len(params))]
    return params


@pytest.mark.parametrize(("model", "mu"),
                         [(LogisticModel(), 0.0), (MLPModel(hidden=8), 0.0), (LogisticModel(), 0.1), (MLPModel(hidden=8), 0.1)],
                         ids=["logistic-fedavg", "mlp-fedavg", "logistic-fedprox", "mlp-fedprox"])
def test_federated_training_matches_pooled_training(model: Model, mu: float) -> None:
    rounds, epochs, lr, l2 = 40, 5, 0.5, 1e-3
    fed = _fedavg(model, rounds, epochs, lr, mu=mu, l2=l2)
    pooled = model.fit(model.init(X_STD.shape[1], seed=7), X_STD, Y, epochs=rounds * epochs, lr=lr, l2=l2)
    auc_fed = roc_auc_score(Y, model.predict_proba(fed, X_STD))
    auc_pooled = roc_auc_score(Y, model.predict_proba(pooled, X_STD))
    auc_mle = roc_auc_score(Y, X_STD @ _federated_newton(NODES_STD)[1:])
    assert abs(auc_fed - auc_pooled) < 0.01
    assert auc_fed > auc_mle - 0.01  # both actually learned the signal
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in fed)


# -- evaluation summaries ---------------------------------------------------------------------------------


def _probs() -> np.ndarray:
    return LogisticModel().predict_proba(beta_to_logistic_params(_federated_newton(NODES_STD)), X_STD)


def test_summaries_add_up_and_give_pooled_metrics() -> None:
    p = _probs()
    cuts = np.cumsum(SIZES)[:-1]
    parts = [eval_summary(yk, pk) for yk, pk in zip(np.split(Y, cuts), np.split(p, cuts), strict=True)]
    total = parts[0] + parts[1] + parts[2]
    pooled = eval_summary(Y, p)
    assert total.shape == (summary_length(EVAL_BINS),) == (4 + 2 * EVAL_BINS + 3 * CAL_BINS,)
    L = summary_layout()
    for key in ("n", "n_pos", "hist_pos", "hist_neg", "cal_count"):  # counts: exactly equal
        np.testing.assert_array_equal(total[L[key]], pooled[L[key]])
    np.testing.assert_allclose(total, pooled, rtol=1e-12, atol=1e-12)  # float sums: up to summation order

    m, mp = metrics_from_summary(total), metrics_from_summary(pooled)
    assert m["auc"] == mp["auc"] and m["n"] == N and m["n_pos"] == Y.sum()
    assert [r["n"] for r in m["calibration"]] == [r["n"] for r in mp["calibration"]]
    for k in ("log_loss", "brier", "ece", "calibration_in_the_large", "prevalence"):
        assert abs(m[k] - mp[k]) < 1e-12

    # against sklearn / numpy on the pooled scores
    auc = roc_auc_score(Y, p)
    assert abs(m["auc"] - auc) < 2e-3
    assert abs(m["auc"] - auc) <= m["auc_max_error"] + 1e-15
    assert abs(m["log_loss"] - log_loss(Y, p)) < 1e-9
    assert abs(m["brier"] - brier_score_loss(Y, p)) < 1e-9
    assert abs(m["prevalence"] - Y.mean()) < 1e-15
    assert abs(m["calibration_in_the_large"] - (Y.mean() - p.mean())) < 1e-12
    # the histogram AUC is the exact AUC of the binned scores
    assert abs(m["auc"] - roc_auc_score(Y, np.minimum(np.floor(p * EVAL_BINS), EVAL_BINS - 1))) < 1e-12
    # calibration table and ECE from masks
    k = np.minimum(np.floor(p * 10), 9).astype(int)
    table = [(int((k == b).sum()), p[k == b].mean(), Y[k == b].mean()) for b in range(10) if (k == b).any()]
    assert len(table) == len(m["calibration"])
    for (cnt, pm, ym), row in zip(table, m["calibration"], strict=True):
        assert row["n"] == cnt and abs(row["p_mean"] - pm) < 1e-12 and abs(row["y_mean"] - ym) < 1e-12
    ece = sum(cnt / N * abs(ym - pm) for cnt, pm, ym in table)
    assert abs(m["ece"] - ece) < 1e-12


def test_summary_edge_cases() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 1.0, 0.3, 0.3, 0.999])  # p = 0 and 1 are clipped in the log loss, p = 1 is in the last bin
    m = metrics_from_summary(eval_summary(y, p, bins=10), bins=10)
    assert abs(m["log_loss"] - log_loss(y, p)) < 1e-9
    assert m["auc"] == roc_auc_score(y, p)  # here no pair of different scores shares a bin
    one_class = metrics_from_summary(eval_summary(np.ones(3), np.array([0.2, 0.5, 0.9])))
    assert np.isnan(one_class["auc"])
    with pytest.raises(ValueError):
        eval_summary(y, np.array([0.1, 0.2, 1.5, 0.3, 0.4]))
    with pytest.raises(ValueError):
        eval_summary(np.array([0, 2, 1, 0, 1]), p)
    with pytest.raises(ValueError, match="expected"):
        metrics_from_summary(np.zeros(10))


def test_auc_exact_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(11)
    p = _probs()
    for scores in (p, np.round(p, 2), np.round(p, 1), rng.integers(0, 4, N).astype(float)):
        assert abs(auc_exact(Y, scores) - roc_auc_score(Y, scores)) < 1e-12
    # hand-computed case with ties: pairs (pos > neg) = 1 + 1 + 0.5 + 1 ... over 2*2 pairs
    assert auc_exact(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.9])) == 0.875
    assert np.isnan(auc_exact(np.zeros(4), np.arange(4.0)))


# -- standardisation ---------------------------------------------------------------------------------------


def test_standardizer_from_sums_equals_pooled_numpy() -> None:
    np.testing.assert_allclose(STD.mean, X_RAW.mean(0), rtol=1e-12)
    np.testing.assert_allclose(STD.sd, X_RAW.std(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(X_STD, (X_RAW - X_RAW.mean(0)) / X_RAW.std(0, ddof=1), atol=1e-8)
    # a constant column gets sd 0 and is only centred
    Xc = np.column_stack([X_RAW[:, 0], np.full(N, 3.7)])
    s = Standardizer.from_sums(N, Xc.sum(0), (Xc ** 2).sum(0))
    assert s.sd[1] == 0.0 and s.sd[0] > 0
    np.testing.assert_allclose(s.transform(Xc)[:, 1], Xc[:, 1] - s.mean[1], atol=0)
    with pytest.raises(ValueError):
        Standardizer.from_sums(1, np.zeros(2), np.zeros(2))


def test_unstandardize_logistic_predicts_the_same_on_the_original_scale() -> None:
    from genofed.federated.models import unstandardize_logistic

    b_std = _federated_newton(NODES_STD)
    b_raw = unstandardize_logistic(b_std, STD)
    m = LogisticModel()
    np.testing.assert_allclose(m.predict_proba(beta_to_logistic_params(b_raw), X_RAW),
                               m.predict_proba(beta_to_logistic_params(b_std), X_STD), atol=1e-12)
    # and it is the MLE fitted directly on the raw features
    np.testing.assert_allclose(b_raw, _sk_fit(X_RAW, Y, C=np.inf), atol=1e-6)


# -- determinism and the factory -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [LogisticModel(), MLPModel(hidden=8)], ids=repr)
def test_fit_is_deterministic_for_a_seed(model: Model) -> None:
    w0 = model.init(X_STD.shape[1], seed=5)
    for bs in (None, 64):
        a = model.fit(w0, X_STD, Y, epochs=3, lr=0.1, l2=0.01, mu=0.1, batch_size=bs, seed=42)
        b = model.fit(w0, X_STD, Y, epochs=3, lr=0.1, l2=0.01, mu=0.1, batch_size=bs, seed=42)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
    c = model.fit(w0, X_STD, Y, epochs=3, lr=0.1, batch_size=64, seed=43)
    d = model.fit(w0, X_STD, Y, epochs=3, lr=0.1, batch_size=64, seed=42)
    assert any(not np.array_equal(u, v) for u, v in zip(c, d, strict=True))  # the seed drives the batch order
    # the inputs are not modified
    np.testing.assert_array_equal(w0[0], model.init(X_STD.shape[1], seed=5)[0])


def test_make_model() -> None:
    with pytest.raises(ValueError, match="logistic") as info:
        make_model("xgboost")
    assert "mlp" in str(info.value)
    lm, mm = make_model("logistic"), make_model("mlp", hidden=8)
    assert isinstance(lm, LogisticModel) and lm.name == "logistic" and isinstance(lm, Model)
    assert isinstance(mm, MLPModel) and mm.name == "mlp" and mm.hidden == 8
    assert lm.n_params(6) == 7 == sum(a.size for a in lm.init(6, 0))
    assert mm.n_params(6) == 6 * 8 + 8 + 8 + 1 == sum(a.size for a in mm.init(6, 0))
    assert all(np.all(a == 0) for a in lm.init(6, 0))
    np.testing.assert_array_equal(mm.init(6, 3)[0], mm.init(6, 3)[0])
    assert not np.array_equal(mm.init(6, 3)[0], mm.init(6, 4)[0])
