"""Pure-numpy models for federated learning of genetic risk models.

Every model's parameters are a ``list[np.ndarray]`` of float64 arrays, so they travel as Flower
NDArrays (or, flattened, as one vector of real sums through :mod:`genofed.federated.lanes`).

The module has four parts:

- **Trainable models** (:class:`LogisticModel`, :class:`MLPModel`, both satisfying the
  :class:`Model` protocol) for FedAvg / FedProx: each node runs :meth:`Model.fit` from the global
  parameters and the server averages the results weighted by sample size.
- **Exact federated logistic regression** by Newton–Raphson (IRLS): each node returns the *sums*
  :func:`logistic_newton_sums` over its rows; the server adds them and takes the pooled Newton
  step :func:`newton_update`. The converged coefficients equal logistic regression on the pooled
  data.
- **Standardisation** from summed moments (:class:`Standardizer`) and the conversion of logistic
  coefficients back to the original feature scale (:func:`unstandardize_logistic`).
- **Mergeable evaluation summaries** (:func:`eval_summary`, :func:`metrics_from_summary`): every
  node returns one vector of sums (counts, loss sums, score histograms per class, calibration
  bins); the sum over nodes gives pooled-equivalent metrics without any node sharing a score.

Penalty convention (used everywhere in this module)
---------------------------------------------------
The training objective is the *mean* binary cross-entropy over the rows plus
``(l2 / 2) * ||w||^2``, where ``w`` are the weights but not the intercept / biases. For the
logistic model this is the same optimum as scikit-learn's ``LogisticRegression(C=C)`` (which
minimises ``0.5 * ||w||^2 + C * sum(BCE)``) with ``C = 1 / (l2 * n)``, ``n`` the number of rows.
FedProx adds ``(mu / 2) * ||theta - theta_global||^2`` over *all* parameters during local
training only; :meth:`Model.loss` never includes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.special import expit

__all__ = [
    "CAL_BINS",
    "EVAL_BINS",
    "MODEL_NAMES",
    "LogisticModel",
    "MLPModel",
    "Model",
    "NewtonError",
    "SeparationError",
    "Standardizer",
    "auc_exact",
    "beta_to_logistic_params",
    "eval_summary",
    "logistic_newton_sums",
    "logistic_params_to_beta",
    "make_model",
    "metrics_from_summary",
    "newton_update",
    "summary_layout",
    "summary_length",
    "unstandardize_logistic",
]

Params = list[np.ndarray]

EVAL_BINS = 1000
"""Default number of equal-width bins of the predicted probability in the evaluation histograms."""

CAL_BINS = 10
"""Number of equal-width probability bins of the calibration table."""

MODEL_NAMES = ("logistic", "mlp")

_EPS = float(np.finfo(np.float64).eps)


# -- input checks and numerically stable pieces -------------------------------------------------------


def _as_X(X: Any, n_features: int | None = None) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"X must be a 2-D array (rows x features), got shape {A.shape}")
    if n_features is not None and A.shape[1] != n_features:
        raise ValueError(f"X has {A.shape[1]} features but the parameters expect {n_features}")
    if not np.isfinite(A).all():
        raise ValueError("X contains NaN or infinite values")
    return A


def _as_y(y: Any, n: int) -> np.ndarray:
    v = np.asarray(y, dtype=np.float64).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"y has {v.shape[0]} labels but X has {n} rows")
    if not np.isin(v, (0.0, 1.0)).all():
        raise ValueError("y must contain only 0/1 labels")
    return v


def _as_p(p: Any, n: int) -> np.ndarray:
    v = np.asarray(p, dtype=np.float64).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"p has {v.shape[0]} values but y has {n}")
    if not np.isfinite(v).all() or (v < 0.0).any() or (v > 1.0).any():
        raise ValueError("predicted probabilities must be finite and within [0, 1]")
    return v


def _as_params(params: Any) -> Params:
    return [np.array(a, dtype=np.float64, copy=True) for a in params]


def _bce_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy ``-(y log s(z) + (1-y) log(1-s(z)))``, stable for any ``z``."""
    return np.logaddexp(0.0, z) - y * z


def _check_fit_args(epochs: int, lr: float, l2: float, mu: float, batch_size: int | None) -> None:
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a non-negative number, got {l2!r}")
    if not (np.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be a non-negative number, got {mu!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def _batches(n: int, batch_size: int | None, rng: np.random.Generator) -> list[Any]:
    """Row selections of one epoch: everything (full batch) or a seeded permutation cut into batches."""
    if batch_size is None:
        return [slice(None)]
    perm = rng.permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


# -- the model interface ---------------------------------------------------------------------------------


@runtime_checkable
class Model(Protocol):
    """A binary classifier whose parameters are a list of float64 arrays.

    ``fit`` minimises ``mean BCE + (l2/2)*||weights||^2 + (mu/2)*||theta - theta_global||^2``
    (``theta_global`` = the parameters passed in) and returns new parameters; ``loss`` is the same
    objective without the proximal term.
    """

    name: str

    def init(self, n_features: int, seed: int) -> Params:
        """Initial parameters for ``n_features`` inputs."""
        ...

    def fit(self, params: Params, X: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, l2: float = 0.0, mu: float = 0.0,
            batch_size: int | None = None, seed: int = 0) -> Params:
        """Local training from ``params``; returns new parameters (the inputs are not modified)."""
        ...

    def predict_proba(self, params: Params, X: np.ndarray) -> np.ndarray:
        """Probability of class 1 for every row of ``X``."""
        ...

    def loss(self, params: Params, X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> float:
        """Mean binary cross-entropy plus ``(l2/2) * ||weights||^2``."""
        ...

    def n_params(self, n_features: int) -> int:
        """Number of real parameters for ``n_features`` inputs."""
        ...


class _GradientModel:
    """Shared training loop: (mini-)batch gradient descent on the penalised, proximal objective."""

    name: str = ""
    # indices into the parameter list of the arrays that are penalised by l2 (weights, not biases)
    _penalised: tuple[int, ...] = ()

    def _shapes(self, n_features: int) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _n_features(self, params: Params) -> int:
        """Input features: the first dimension of the first weight array (both models)."""
        return int(params[0].shape[0])

    def _logits(self, params: Params, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _data_grad(self, params: Params, X: np.ndarray, y: np.ndarray) -> Params:
        """Gradient of the mean BCE over the rows of ``X``."""
        raise NotImplementedError

    def n_params(self, n_features: int) -> int:
        """Number of real parameters for ``n_features`` inputs.

        Parameters
        ----------
        n_features : int
            Number of input features.

        Returns
        -------
        int
            Total size of all parameter arrays.
        """
        return int(sum(int(np.prod(s)) for s in self._shapes(n_features)))

    def _check_params(self, params: Any) -> Params:
        ps = _as_params(params)
        if not ps or ps[0].ndim < 1:
            raise ValueError(f"{self.name}: malformed parameter list")
        expected = self._shapes(self._n_features(ps))
        got = [p.shape for p in ps]
        if got != expected:
            raise ValueError(f"{self.name}: parameter shapes {got} do not match the expected {expected}")
        if not all(np.isfinite(p).all() for p in ps):
            raise ValueError(f"{self.name}: parameters contain NaN or infinite values")
        return ps

    def predict_proba(self, params: Params, X: np.ndarray) -> np.ndarray:
        """Probability of class 1.

        Parameters
        ----------
        params : list of numpy.ndarray
            Model parameters.
        X : numpy.ndarray
            Features, shape ``(n, n_features)``.

        Returns
        -------
        numpy.ndarray
            ``P(y = 1 | x)`` for every row, shape ``(n,)``.
        """
        ps = self._check_params(params)
        A = _as_X(X, self._n_features(ps))
        return np.asarray(expit(self._logits(ps, A)), dtype=np.float64)

    def loss(self, params: Params, X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> float:
        """Mean binary cross-entropy plus ``(l2/2) * ||weights||^2`` (biases not penalised).

        Parameters
        ----------
        params : list of numpy.ndarray
            Model parameters.
        X : numpy.ndarray
            Features, shape ``(n, n_features)`` with ``n >= 1``.
        y : numpy.ndarray
            0/1 labels, shape ``(n,)``.
        l2 : float, default 0
            Ridge strength on the weights.

        Returns
        -------
        float
            The objective value.
        """
        ps = self._check_params(params)
        A = _as_X(X, self._n_features(ps))
        t = _as_y(y, A.shape[0])
        if A.shape[0] == 0:
            raise ValueError(f"{self.name}: the loss of zero rows is undefined")
        data = float(np.mean(_bce_from_logits(self._logits(ps, A), t)))
        return data + 0.5 * float(l2) * sum(float(np.sum(ps[i] ** 2)) for i in self._penalised)

    def fit(self, params: Params, X: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, l2: float = 0.0, mu: float = 0.0,
            batch_size: int | None = None, seed: int = 0) -> Params:
        """Local training from ``params`` by gradient descent.

        Minimises ``mean BCE + (l2/2)*||weights||^2 + (mu/2)*||theta - params||^2`` (FedProx's
        proximal term over all parameters, anchored at the parameters passed in).

        Parameters
        ----------
        params : list of numpy.ndarray
            Starting (global) parameters; not modified.
        X : numpy.ndarray
            Features, shape ``(n, n_features)`` with ``n >= 1``.
        y : numpy.ndarray
            0/1 labels, shape ``(n,)``.
        epochs : int
            Passes over the data. With ``batch_size=None`` one epoch is one full-batch gradient
            step; otherwise one epoch visits every row once in a seeded random order.
        lr : float
            Step size.
        l2 : float, default 0
            Ridge strength on the weights (not biases); see the module's penalty convention.
        mu : float, default 0
            FedProx proximal strength (0 = FedAvg).
        batch_size : int or None, default None
            ``None`` for deterministic full-batch gradient descent, else mini-batch SGD.
        seed : int, default 0
            Seed of the mini-batch order (unused for full batch). Equal seeds give identical
            results.

        Returns
        -------
        list of numpy.ndarray
            The new parameters.
        """
        _check_fit_args(epochs, lr, l2, mu, batch_size)
        anchor = self._check_params(params)
        A = _as_X(X, self._n_features(anchor))
        t = _as_y(y, A.shape[0])
        if A.shape[0] == 0:
            raise ValueError(f"{self.name}: cannot train on zero rows")
        theta = [a.copy() for a in anchor]
        rng = np.random.default_rng(seed)
        for _ in range(int(epochs)):
            for idx in _batches(A.shape[0], batch_size, rng):
                grads = self._data_grad(theta, A[idx], t[idx])
                for i in self._penalised:
                    grads[i] = grads[i] + l2 * theta[i]
                if mu:
                    grads = [g + mu * (w - w0) for g, w, w0 in zip(grads, theta, anchor, strict=True)]
                theta = [w - lr * g for w, g in zip(theta, grads, strict=True)]
        if not all(np.isfinite(w).all() for w in theta):
            raise ValueError(f"{self.name}: training diverged (non-finite parameters); lower lr or standardise the features")
        return theta


class LogisticModel(_GradientModel):
    """Logistic regression. Parameters: ``[coef (n_features,), intercept (1,)]``."""

    name = "logistic"
    _penalised = (0,)

    def _shapes(self, n_features: int) -> list[tuple[int, ...]]:
        return [(n_features,), (1,)]

    def init(self, n_features: int, seed: int = 0) -> Params:
        """All-zero coefficients and intercept (``seed`` is unused).

        Parameters
        ----------
        n_features : int
            Number of input features.
        seed : int, default 0
            Ignored (kept for the :class:`Model` interface).

        Returns
        -------
        list of numpy.ndarray
            ``[zeros(n_features), zeros(1)]``.
        """
        if n_features < 0:
            raise ValueError("n_features must be non-negative")
        return [np.zeros(n_features), np.zeros(1)]

    def _logits(self, params: Params, X: np.ndarray) -> np.ndarray:
        return np.asarray(X @ params[0] + params[1][0], dtype=np.float64)

    def _data_grad(self, params: Params, X: np.ndarray, y: np.ndarray) -> Params:
        r = (expit(self._logits(params, X)) - y) / X.shape[0]
        return [X.T @ r, np.array([r.sum()])]


class MLPModel(_GradientModel):
    """One-hidden-layer perceptron with a sigmoid output.

    Parameters: ``[W1 (n_features, hidden), b1 (hidden,), w2 (hidden,), b2 (1,)]``; the logit is
    ``act(X @ W1 + b1) @ w2 + b2``. ``l2`` penalises ``W1`` and ``w2``.

    Parameters
    ----------
    hidden : int, default 16
        Number of hidden units.
    activation : {"tanh", "relu"}, default "tanh"
        Hidden-unit non-linearity.
    """

    name = "mlp"
    _penalised = (0, 2)

    def __init__(self, hidden: int = 16, activation: str = "tanh"):
        if int(hidden) != hidden or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        self.hidden = int(hidden)
        self.activation = activation

    def __repr__(self) -> str:
        return f"MLPModel(hidden={self.hidden}, activation={self.activation!r})"

    def _shapes(self, n_features: int) -> list[tuple[int, ...]]:
        h = self.hidden
        return [(n_features, h), (h,), (h,), (1,)]

    def init(self, n_features: int, seed: int = 0) -> Params:
        """Glorot-uniform weights (seeded) and zero biases.

        Parameters
        ----------
        n_features : int
            Number of input features.
        seed : int, default 0
            Seed of the random weights.

        Returns
        -------
        list of numpy.ndarray
            ``[W1, b1, w2, b2]``.
        """
        if n_features < 0:
            raise ValueError("n_features must be non-negative")
        rng = np.random.default_rng(seed)
        h = self.hidden
        a1 = np.sqrt(6.0 / (n_features + h)) if n_features + h else 0.0
        a2 = np.sqrt(6.0 / (h + 1))
        return [rng.uniform(-a1, a1, size=(n_features, h)), np.zeros(h), rng.uniform(-a2, a2, size=h), np.zeros(1)]

    def _hidden(self, params: Params, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = X @ params[0] + params[1]
        return a, (np.tanh(a) if self.activation == "tanh" else np.maximum(a, 0.0))

    def _logits(self, params: Params, X: np.ndarray) -> np.ndarray:
        _, h = self._hidden(params, X)
        return np.asarray(h @ params[2] + params[3][0], dtype=np.float64)

    def _data_grad(self, params: Params, X: np.ndarray, y: np.ndarray) -> Params:
        a, h = self._hidden(params, X)
        r = (expit(h @ params[2] + params[3][0]) - y) / X.shape[0]
        dh = np.outer(r, params[2])
        da = dh * (1.0 - h * h) if self.activation == "tanh" else dh * (a > 0.0)
        return [X.T @ da, da.sum(axis=0), h.T @ r, np.array([r.sum()])]


def make_model(name: str, **kw: Any) -> Model:
    """The model called ``name``.

    Parameters
    ----------
    name : str
        ``"logistic"`` or ``"mlp"``.
    **kw
        Constructor arguments (``hidden``, ``activation`` for the MLP).

    Returns
    -------
    Model
        A new model instance.

    Raises
    ------
    ValueError
        If ``name`` is not a known model.
    """
    key = str(name).strip().lower()
    if key == "logistic":
        return LogisticModel(**kw)
    if key == "mlp":
        return MLPModel(**kw)
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(repr(m) for m in MODEL_NAMES)}")


# -- exact federated logistic regression (Newton-Raphson / IRLS) ------------------------------------------


class NewtonError(np.linalg.LinAlgError):
    """A Newton step that cannot be taken (non-finite values). Also a ``ValueError``."""


class SeparationError(NewtonError):
    """The fitted probabilities are numerically 0 or 1: the classes are perfectly separated."""


SEPARATION_TOL = 1e-4
"""Unpenalised Newton raises :class:`SeparationError` when ``sum p(1-p)`` over all rows falls below this.

At a finite maximum-likelihood estimate the overlapping samples keep ``sum p(1-p)`` of order 0.1 or
more whatever the sample size; only separated data drive it towards 0."""


def logistic_params_to_beta(params: Params) -> np.ndarray:
    """LogisticModel parameters as one coefficient vector with the intercept first.

    Parameters
    ----------
    params : list of numpy.ndarray
        ``[coef (p,), intercept (1,)]``.

    Returns
    -------
    numpy.ndarray
        ``[intercept, coef_1, ..., coef_p]``.
    """
    if len(params) != 2 or np.asarray(params[1]).size != 1:
        raise ValueError("logistic parameters must be [coef (p,), intercept (1,)]")
    return np.concatenate([np.asarray(params[1], np.float64).reshape(1), np.asarray(params[0], np.float64).reshape(-1)])


def beta_to_logistic_params(beta: np.ndarray) -> Params:
    """A coefficient vector (intercept first) as LogisticModel parameters.

    Parameters
    ----------
    beta : numpy.ndarray
        ``[intercept, coef_1, ..., coef_p]``.

    Returns
    -------
    list of numpy.ndarray
        ``[coef (p,), intercept (1,)]``.
    """
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    if b.size < 1:
        raise ValueError("beta must hold at least the intercept")
    return [b[1:].copy(), b[:1].copy()]


def logistic_newton_sums(beta: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One node's additive Newton blocks of the logistic log-likelihood at ``beta``.

    With ``X1 = [1, X]``, ``p = sigmoid(X1 @ beta)`` and ``W = p (1 - p)``, returns SUMS over the
    node's rows (so blocks from several nodes add up to the pooled blocks).

    Parameters
    ----------
    beta : numpy.ndarray
        Coefficients, intercept first, shape ``(p + 1,)``.
    X : numpy.ndarray
        Features, shape ``(n, p)`` (``n`` may be 0).
    y : numpy.ndarray
        0/1 labels, shape ``(n,)``.

    Returns
    -------
    g : numpy.ndarray
        Score (gradient of the log-likelihood) ``X1' (y - p)``, shape ``(p + 1,)``.
    H : numpy.ndarray
        Fisher information ``X1' W X1``, shape ``(p + 1, p + 1)``.
    loglik : float
        Log-likelihood ``sum(y log p + (1 - y) log(1 - p))``.
    """
    A = _as_X(X)
    t = _as_y(y, A.shape[0])
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    if b.size != A.shape[1] + 1:
        raise ValueError(f"beta has {b.size} entries but X has {A.shape[1]} features (+1 intercept expected)")
    if not np.isfinite(b).all():
        raise ValueError("beta contains NaN or infinite values")
    X1 = np.hstack([np.ones((A.shape[0], 1)), A])
    eta = X1 @ b
    p = expit(eta)
    w = p * expit(-eta)  # p (1 - p) without cancellation for p near 1
    g = X1.T @ (t - p)
    H = (X1 * w[:, None]).T @ X1
    H = 0.5 * (H + H.T)
    ll = -float(np.sum(_bce_from_logits(eta, t)))
    return g, H, ll


def newton_update(beta: np.ndarray, g_sum: np.ndarray, H_sum: np.ndarray, l2: float = 0.0, n_total: float | None = None) -> np.ndarray:
    """One pooled Newton-Raphson step from the summed blocks.

    Maximises ``loglik(beta) - (lam / 2) * ||beta[1:]||^2`` with ``lam = l2 * n_total``: the same
    optimum as the mean-BCE objective ``mean BCE + (l2/2)*||w||^2`` of :class:`LogisticModel`, and as
    scikit-learn's ``LogisticRegression(C=1 / (l2 * n_total))``. The intercept is not penalised;
    ``l2 = 0`` gives the plain maximum-likelihood step
    ``beta + solve(H, g)``. In general the step is
    ``beta + solve(H + lam*D, g - lam*D*beta)`` with ``D = diag(0, 1, ..., 1)``.

    Parameters
    ----------
    beta : numpy.ndarray
        Current coefficients, intercept first, shape ``(q,)``.
    g_sum : numpy.ndarray
        Summed score over all nodes, shape ``(q,)``.
    H_sum : numpy.ndarray
        Summed information over all nodes, shape ``(q, q)``.
    l2 : float, default 0
        Ridge strength per row (see above).
    n_total : float, optional
        Total number of rows; required when ``l2 > 0``.

    Returns
    -------
    numpy.ndarray
        The updated coefficients.

    Raises
    ------
    NewtonError
        (a ``numpy.linalg.LinAlgError`` and ``ValueError``) on non-finite inputs or results.
    SeparationError
        Without a penalty, when ``sum p(1-p) = H_sum[0, 0]`` is below :data:`SEPARATION_TOL`, i.e.
        every fitted probability is numerically 0 or 1: the classes are perfectly separated and
        the maximum-likelihood estimate does not exist. Newton under separation grows the margins
        by about one unit per iteration, so this is reached only after roughly 15-30 iterations
        (more for larger samples); quasi-complete separation (for instance a rare variant seen
        only in cases) never reaches it and shows up as a coefficient that keeps growing — cap
        the iterations and report non-convergence.

    Notes
    -----
    The linear system is solved with ``numpy.linalg.solve``; a singular matrix (for instance
    collinear or constant features) falls back to the minimum-norm least-squares step.
    """
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    g = np.asarray(g_sum, dtype=np.float64).reshape(-1)
    H = np.asarray(H_sum, dtype=np.float64)
    q = b.size
    if g.size != q or H.shape != (q, q):
        raise ValueError(f"shapes do not match: beta {b.shape}, g {g.shape}, H {H.shape}")
    if not (np.isfinite(b).all() and np.isfinite(g).all() and np.isfinite(H).all()):
        raise NewtonError("Newton step: beta, gradient or information matrix contains NaN or infinite values")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a non-negative number, got {l2!r}")
    if l2 > 0 and (n_total is None or not n_total > 0):
        raise ValueError("newton_update: n_total (the total row count) is required when l2 > 0")
    if l2 == 0 and H[0, 0] < SEPARATION_TOL:
        raise SeparationError(
            f"perfect separation: the fitted probabilities are numerically 0 or 1 for every sample (sum of p(1-p) = {H[0, 0]:.3g}); "
            "the maximum-likelihood estimate does not exist — use l2 > 0 or remove the separating features")
    lam = float(l2) * float(n_total) if l2 > 0 and n_total is not None else 0.0
    d = np.ones(q)
    d[0] = 0.0
    M = H + lam * np.diag(d)
    rhs = g - lam * d * b
    try:
        step = np.linalg.solve(M, rhs)
        if not np.isfinite(step).all():
            raise np.linalg.LinAlgError("non-finite solution")
    except np.linalg.LinAlgError:
        step = np.linalg.lstsq(M, rhs, rcond=None)[0]
    new = b + step
    if not np.isfinite(new).all():
        raise NewtonError("Newton step produced non-finite coefficients (singular information matrix or perfect separation)")
    return np.asarray(new, dtype=np.float64)


# -- standardisation ------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """Centre and scale features: ``(X - mean) / sd``, with ``sd == 0`` columns divided by 1.

    Parameters
    ----------
    mean : numpy.ndarray
        Column means, shape ``(p,)``.
    sd : numpy.ndarray
        Column standard deviations, shape ``(p,)`` (0 for constant columns).
    """

    mean: np.ndarray
    sd: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.sd = np.asarray(self.sd, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.sd.shape:
            raise ValueError(f"mean {self.mean.shape} and sd {self.sd.shape} differ in shape")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.sd).all()) or (self.sd < 0).any():
            raise ValueError("mean and sd must be finite and sd non-negative")

    @property
    def scale(self) -> np.ndarray:
        """The divisor of every column: ``sd``, or 1 where ``sd == 0``."""
        return np.where(self.sd > 0, self.sd, 1.0)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised copy of ``X``.

        Parameters
        ----------
        X : numpy.ndarray
            Features, shape ``(n, p)``.

        Returns
        -------
        numpy.ndarray
            ``(X - mean) / scale``.
        """
        A = _as_X(X, self.mean.size)
        return (A - self.mean) / self.scale

    @classmethod
    def from_sums(cls, n: float, s1: np.ndarray, s2: np.ndarray, rel_tol: float = 1e-9) -> Standardizer:
        """Mean and sample standard deviation (``ddof=1``) from summed moments.

        Parameters
        ----------
        n : float
            Total number of rows (> 1).
        s1 : numpy.ndarray
            Column sums ``sum(X, axis=0)``.
        s2 : numpy.ndarray
            Column sums of squares ``sum(X**2, axis=0)``.
        rel_tol : float, default 1e-9
            A variance below ``rel_tol * mean(X**2)`` is rounding error of the one-pass formula
            (or of fixed-point secure sums) and is set to 0, so constant columns get ``sd == 0``.

        Returns
        -------
        Standardizer
            The pooled standardisation.
        """
        n = float(n)
        a1 = np.asarray(s1, dtype=np.float64).reshape(-1)
        a2 = np.asarray(s2, dtype=np.float64).reshape(-1)
        if a1.shape != a2.shape:
            raise ValueError("s1 and s2 differ in shape")
        if not n > 1:
            raise ValueError(f"need more than one row to estimate a standard deviation, got n = {n}")
        if not (np.isfinite(a1).all() and np.isfinite(a2).all()):
            raise ValueError("summed moments contain NaN or infinite values")
        mean = a1 / n
        css = a2 - a1 * mean  # sum of squared deviations
        var = css / (n - 1.0)
        var = np.where(var > rel_tol * (a2 / n), var, 0.0)
        return cls(mean=mean, sd=np.sqrt(var))


def unstandardize_logistic(beta_std: np.ndarray, standardizer: Standardizer) -> np.ndarray:
    """Logistic coefficients on the original feature scale.

    If ``logit = b0 + sum_j b_j (x_j - m_j) / s_j`` (``s_j`` = sd, or 1 where sd == 0) then on the
    original scale the coefficients are ``b_j / s_j`` and the intercept ``b0 - sum_j b_j m_j / s_j``:
    both give identical predictions.

    Parameters
    ----------
    beta_std : numpy.ndarray
        Coefficients on standardised features, intercept first.
    standardizer : Standardizer
        The standardisation they were fitted under.

    Returns
    -------
    numpy.ndarray
        Coefficients on the original scale, intercept first.
    """
    b = np.asarray(beta_std, dtype=np.float64).reshape(-1)
    if b.size != standardizer.mean.size + 1:
        raise ValueError(f"beta has {b.size} entries but the standardizer has {standardizer.mean.size} features (+1 intercept)")
    coef = b[1:] / standardizer.scale
    return np.concatenate([[b[0] - float(coef @ standardizer.mean)], coef])


# -- mergeable evaluation summaries ----------------------------------------------------------------------


def summary_length(bins: int = EVAL_BINS) -> int:
    """Length of the vector returned by :func:`eval_summary`: ``4 + 2 * bins + 3 * CAL_BINS``.

    Parameters
    ----------
    bins : int, default EVAL_BINS
        Histogram bins.

    Returns
    -------
    int
        The vector length.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return 4 + 2 * int(bins) + 3 * CAL_BINS


def summary_layout(bins: int = EVAL_BINS) -> dict[str, slice]:
    """Slices of the :func:`eval_summary` vector.

    Parameters
    ----------
    bins : int, default EVAL_BINS
        Histogram bins.

    Returns
    -------
    dict of str to slice
        ``n``, ``n_pos``, ``sum_log_loss``, ``sum_sq_error``, ``hist_pos``, ``hist_neg``,
        ``cal_count``, ``cal_sum_p``, ``cal_sum_y``.
    """
    B = int(bins)
    summary_length(B)
    h = 4 + 2 * B
    return {
        "n": slice(0, 1), "n_pos": slice(1, 2), "sum_log_loss": slice(2, 3), "sum_sq_error": slice(3, 4),
        "hist_pos": slice(4, 4 + B), "hist_neg": slice(4 + B, h),
        "cal_count": slice(h, h + CAL_BINS), "cal_sum_p": slice(h + CAL_BINS, h + 2 * CAL_BINS),
        "cal_sum_y": slice(h + 2 * CAL_BINS, h + 3 * CAL_BINS),
    }


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of every probability: ``[k/bins, (k+1)/bins)``, with p == 1 in the last bin."""
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def eval_summary(y: np.ndarray, p: np.ndarray, bins: int = EVAL_BINS) -> np.ndarray:
    """Additive evaluation summary of one node's predictions.

    Summaries of disjoint sets of rows add up (element-wise) to the summary of their union, so
    the sum over nodes gives pooled metrics through :func:`metrics_from_summary`.

    Layout (float64, length :func:`summary_length`; slices in :func:`summary_layout`)::

        [0]                     n            rows
        [1]                     n_pos        rows with y == 1
        [2]                     sum of log loss  -(y log p + (1-y) log(1-p)), p clipped to [eps, 1-eps]
        [3]                     sum of (p - y)^2 (Brier)
        [4 : 4+B]               histogram of p over B equal-width bins of [0, 1], rows with y == 1
        [4+B : 4+2B]            the same for rows with y == 0
        [4+2B : 4+2B+10]        calibration: rows in each of CAL_BINS = 10 equal-width bins of p
        [4+2B+10 : 4+2B+20]     calibration: sum of p in each bin
        [4+2B+20 : 4+2B+30]     calibration: sum of y in each bin

    Bin ``k`` holds ``k/B <= p < (k+1)/B`` (``p == 1`` is in the last bin).

    Parameters
    ----------
    y : numpy.ndarray
        0/1 labels.
    p : numpy.ndarray
        Predicted probabilities of class 1, within [0, 1].
    bins : int, default EVAL_BINS
        Number of histogram bins ``B``.

    Returns
    -------
    numpy.ndarray
        The summary vector.
    """
    v = np.zeros(summary_length(bins))
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    t = _as_y(t, t.shape[0])
    q = _as_p(p, t.shape[0])
    L = summary_layout(bins)
    pos = t == 1.0
    qc = np.clip(q, _EPS, 1.0 - _EPS)
    v[0] = t.size
    v[1] = float(pos.sum())
    v[2] = float(-np.sum(t * np.log(qc) + (1.0 - t) * np.log1p(-qc)))
    v[3] = float(np.sum((q - t) ** 2))
    k = _bin_index(q, int(bins))
    v[L["hist_pos"]] = np.bincount(k[pos], minlength=int(bins))
    v[L["hist_neg"]] = np.bincount(k[~pos], minlength=int(bins))
    c = _bin_index(q, CAL_BINS)
    v[L["cal_count"]] = np.bincount(c, minlength=CAL_BINS)
    v[L["cal_sum_p"]] = np.bincount(c, weights=q, minlength=CAL_BINS)
    v[L["cal_sum_y"]] = np.bincount(c, weights=t, minlength=CAL_BINS)
    return v


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC from per-group counts of positives/negatives (groups in increasing score order);
    pairs in the same group count 1/2."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    u2 = 2 * np.sum(pos * neg_below) + np.sum(pos * neg)  # twice the Mann-Whitney U
    return float(u2 / (2 * n_pos * n_neg))


def metrics_from_summary(vec: np.ndarray, bins: int = EVAL_BINS) -> dict[str, Any]:
    """Pooled metrics from a (summed) :func:`eval_summary` vector.

    Parameters
    ----------
    vec : numpy.ndarray
        One summary or the element-wise sum of several.
    bins : int, default EVAL_BINS
        Histogram bins it was built with.

    Returns
    -------
    dict
        ``n``, ``n_pos``, ``prevalence``; ``auc`` (Mann-Whitney on the score histograms, pairs in
        the same bin counted 1/2; NaN when a class is absent) and ``auc_max_error``, a bound on
        ``|auc - exact AUC|``: half the fraction of positive-negative pairs that share a bin;
        ``log_loss`` and ``brier`` (means); ``calibration``, a list of
        ``{"bin_lo", "bin_hi", "n", "p_mean", "y_mean"}`` for the non-empty of the 10 equal-width bins;
        ``ece`` (expected calibration error ``sum_k n_k/n |y_mean_k - p_mean_k|``) and
        ``calibration_in_the_large`` (mean y minus mean p). All values are Python floats.
    """
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    if v.size != summary_length(bins):
        raise ValueError(f"summary has {v.size} values, expected {summary_length(bins)} for bins={bins}")
    if not np.isfinite(v).all():
        raise ValueError("summary contains NaN or infinite values")
    L = summary_layout(bins)
    n, n_pos = float(v[0]), float(v[1])
    if not n > 0:
        raise ValueError("the summary covers no rows")
    hp, hn = v[L["hist_pos"]], v[L["hist_neg"]]
    n_neg = n - n_pos
    auc = _auc_from_counts(hp, hn)
    bound = float(np.sum(hp * hn) / (2 * n_pos * n_neg)) if n_pos > 0 and n_neg > 0 else float("nan")
    cnt, sp, sy = v[L["cal_count"]], v[L["cal_sum_p"]], v[L["cal_sum_y"]]
    table: list[dict[str, float]] = []
    ece = 0.0
    for k in range(CAL_BINS):
        if cnt[k] > 0:
            pm, ym = float(sp[k] / cnt[k]), float(sy[k] / cnt[k])
            table.append({"bin_lo": k / CAL_BINS, "bin_hi": (k + 1) / CAL_BINS, "n": float(cnt[k]), "p_mean": pm, "y_mean": ym})
            ece += float(cnt[k]) / n * abs(ym - pm)
    return {
        "n": n,
        "n_pos": n_pos,
        "prevalence": n_pos / n,
        "auc": auc,
        "auc_max_error": bound,
        "log_loss": float(v[2] / n),
        "brier": float(v[3] / n),
        "calibration": table,
        "ece": float(ece),
        "calibration_in_the_large": float(n_pos / n - sp.sum() / n),
    }


def auc_exact(y: np.ndarray, p: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U / (n_pos * n_neg)), tied scores counting 1/2.

    Parameters
    ----------
    y : numpy.ndarray
        0/1 labels.
    p : numpy.ndarray
        Scores (any real numbers; only their order matters).

    Returns
    -------
    float
        The AUC, or NaN when one class is absent.
    """
    s = np.asarray(p, dtype=np.float64).reshape(-1)
    t = _as_y(y, s.shape[0])
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    _, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv[t == 1.0], minlength=int(inv.max(initial=-1)) + 1).astype(np.int64)
    neg = np.bincount(inv[t == 0.0], minlength=int(inv.max(initial=-1)) + 1).astype(np.int64)
    return _auc_from_counts(pos, neg)
