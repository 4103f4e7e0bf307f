"""genofed's Flower apps: the ClientApp each node runs and the ServerApp at the analyst's side.

A training run is a sequence of *sum rounds*. In each, every node turns its local data into one
vector of real sums (see :mod:`genofed.federated.lanes`) and the server learns only the sum over
nodes:

- ``stats``: sample count, cases, and the first two moments of every feature (the federation's
  standardisation);
- ``train`` (FedAvg / FedProx): local epochs from the global model, returning ``n·w`` and ``n``
  (and ``n·loss``), so the server's weighted average is the FedAvg model;
- ``newton`` (exact logistic regression): the gradient and information matrix of the
  log-likelihood at the current coefficients; the server's Newton step is the pooled one, so the
  converged model equals logistic regression on the pooled data;
- ``eval``: additive evaluation summaries (score histograms per class, calibration bins, log loss,
  Brier), from which the server computes pooled-equivalent AUC and calibration.

Sum rounds run under Flower's SecAgg+ (``SecAggPlusWorkflow`` at the server, ``secaggplus_mod`` at
the node) unless the run asks for plain FedAvg and every node's policy allows it. Before the first
round the server sends a plain ``check`` (an evaluate message): each node evaluates its policy and
answers only pass or the rule that refused. At the end, nodes whose policy allows it report their
own metrics (AUC, Brier, log loss) in plain.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import lanes

if TYPE_CHECKING:
    from .features import FeatureSpec, NodeFeatures

RUN_FILE = "run.json"
NODE_CONFIG_KEY = "genofed-node"  # SuperNode --node-config 'genofed-node="/path/node.toml"'
STRATEGIES = ("fedavg", "fedprox", "exact")


@dataclass
class RunSettings:
    """Everything a run needs, shipped inside the FAB (``run.json``), identical at every party."""

    sql: str
    label: str
    variants: list[str] = field(default_factory=list)
    model: str = "logistic"
    strategy: str = "fedavg"
    rounds: int = 20
    local_epochs: int = 5
    lr: float = 0.5
    l2: float = 0.0
    mu: float = 0.0
    hidden: int = 16
    batch_size: int = 0  # 0: full batch
    seed: int = 0
    secagg: bool = True
    nodes: int = 2
    newton_tol: float = 1e-8
    newton_max_iter: int = 30
    timeout: float = 300.0
    poll_interval: float = 0.1
    name: str = "model"

    def spec(self) -> FeatureSpec:
        from .features import FeatureSpec

        return FeatureSpec(self.sql, self.label, tuple(self.variants))

    def check(self) -> None:
        from genofed.engine.errors import ConfigError

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.model not in ("logistic", "mlp"):
            raise ConfigError(f"unknown model {self.model!r}; choose logistic or mlp")
        if self.strategy == "exact" and self.model != "logistic":
            raise ConfigError("the exact strategy (federated Newton–Raphson) fits logistic regression only; use --model logistic")
        if self.strategy == "fedprox" and self.mu <= 0:
            self.mu = 0.01
        if self.secagg and self.nodes < 2:
            raise ConfigError("SecAgg+ needs at least two nodes (with one, the sum is that node's update)")
        if self.nodes > lanes.MAX_NODES:
            raise ConfigError(f"at most {lanes.MAX_NODES} nodes per run (the secure-sum lanes would overflow)")
        for k in ("rounds", "local_epochs", "newton_max_iter"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k.replace('_', '-')} must be ≥ 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        return cls(**json.loads(text))


def _make_model(s: RunSettings) -> Any:
    from .models import make_model

    return make_model(s.model, hidden=s.hidden) if s.model == "mlp" else make_model(s.model)


def _flatten(params: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in params]) if params else np.zeros(0)


def _unflatten(vec: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, i = [], 0
    for p in like:
        out.append(vec[i:i + p.size].reshape(p.shape).copy())
        i += p.size
    return out


# -- the node side -----------------------------------------------------------------------------------

_UNDER_SECAGG = threading.local()


def _secure_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
    """``secaggplus_mod`` for SecAgg+ rounds; other messages pass through (the node's policy then
    decides whether plain updates are allowed)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        _UNDER_SECAGG.on = True
        try:
            return secaggplus_mod(msg, ctxt, call_next)
        finally:
            _UNDER_SECAGG.on = False
    return call_next(msg, ctxt)


class NodeTrainer:
    """What one node computes for each stage (plain numpy; the Flower client wraps it)."""

    def __init__(self, settings: RunSettings, node_config: Any, token: str, run_id: str):
        self.s = settings
        self.config = node_config
        self.token = token
        self.run_id = run_id
        self._data: NodeFeatures | None = None
        self.researcher = ""
        self.model = _make_model(settings)

    def authorize(self, secure: bool) -> None:
        from .features import authorize

        self.researcher = authorize(self.config, self.token, secure=secure, rounds=self.s.rounds, run_id=self.run_id)

    @property
    def data(self) -> NodeFeatures:
        if self._data is None:
            from .features import load_features

            spec = self.s.spec()
            n_params = self.model.n_params(len(_feature_names(self.s)))
            self._data = load_features(self.config, spec, self.researcher, run_id=self.run_id, n_params=n_params)
        return self._data

    def _std(self, arrays: list[np.ndarray]) -> np.ndarray:
        mean, sd = arrays[0], arrays[1]
        sd = np.where(sd > 0, sd, 1.0)
        return (self.data.X - mean) / sd

    def contribution(self, stage: str, arrays: list[np.ndarray], round_: int) -> np.ndarray:
        """The real vector this node adds to the stage's sum."""
        d = self.data
        n = float(len(d.y))
        if stage == "check":
            return np.zeros(0)
        if stage == "stats":
            return np.concatenate([[n, float(d.y.sum())], d.X.sum(axis=0), (d.X ** 2).sum(axis=0)])
        Xs = self._std(arrays)
        params = [np.asarray(a, np.float64) for a in arrays[2:]]
        if stage == "train":
            new = self.model.fit(params, Xs, d.y, epochs=self.s.local_epochs, lr=self.s.lr, l2=self.s.l2, mu=self.s.mu,
                                 batch_size=self.s.batch_size or None, seed=self.s.seed * 100_003 + round_)
            loss = self.model.loss(new, Xs, d.y, l2=self.s.l2)
            return np.concatenate([n * _flatten(new), [n, n * loss]])
        if stage == "newton":
            from .models import logistic_newton_sums

            g, H, ll = logistic_newton_sums(params[0], Xs, d.y)
            iu = np.triu_indices(H.shape[0])
            return np.concatenate([g, H[iu], [ll]])
        if stage == "eval":
            from .models import eval_summary

            return eval_summary(d.y, self.model.predict_proba(params, Xs))
        raise ValueError(f"unknown stage {stage!r}")

    def node_metrics(self, arrays: list[np.ndarray]) -> dict[str, float]:
        """This node's own metrics of the final model (released only if its policy allows)."""
        from .models import eval_summary, metrics_from_summary

        if not self.config.training.release_node_metrics:
            return {"withheld": 1.0}
        d = self.data
        p = self.model.predict_proba([np.asarray(a) for a in arrays[2:]], self._std(arrays))
        m = metrics_from_summary(eval_summary(d.y, p))
        return {"auc": float(m["auc"]), "brier": float(m["brier"]), "log_loss": float(m["log_loss"]),
                "calibration_in_the_large": float(m["calibration_in_the_large"]),
                "n_rounded": float(round(len(d.y), -1))}


def _load_settings(path: Path) -> RunSettings:
    return RunSettings.from_json(path.read_text())


def make_client_app(run_file: Path) -> Any:
    """The ClientApp of a run (its settings travel in the FAB next to the app module)."""
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp

    class GenofedClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, context: Any):
            from genofed.connectors.config import NodeConfig

            from .features import TrainingRefused

            path = context.node_config.get(NODE_CONFIG_KEY)
            if not path:
                raise TrainingRefused(f"this SuperNode was started without --node-config '{NODE_CONFIG_KEY}=\"/path/node.toml\"'")
            settings = _load_settings(run_file)
            self.trainer = NodeTrainer(settings, NodeConfig.load(str(path)), str(context.run_config.get("token", "")),
                                       str(context.run_id))

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            secure = bool(getattr(_UNDER_SECAGG, "on", False))
            self.trainer.authorize(secure)
            vec = self.trainer.contribution(str(config["stage"]), parameters, int(config.get("round", 0)))
            return [lanes.encode(vec)], 1, {}

        def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
            stage = str(config.get("stage", "check"))
            self.trainer.authorize(bool(config.get("secure", True)))
            if stage == "check":
                _ = self.trainer.data  # evaluates the feature query and every policy rule
                return 0.0, 1, {"ok": 1}
            return 0.0, 1, self.trainer.node_metrics(parameters)

    def client_fn(context: Any) -> Any:
        return GenofedClient(context).to_client()

    return ClientApp(client_fn=client_fn, mods=[_secure_mod])


# -- the server side ---------------------------------------------------------------------------------

class PollingGrid:
    """A Grid whose ``send_and_receive`` polls for replies every ``interval`` seconds (Flower's
    own grid sleeps 3 s between polls), optionally recording every reply it receives."""

    def __init__(self, grid: Any, interval: float, recorder: list[Any] | None = None):
        self._grid = grid
        self._interval = interval
        self._recorder = recorder
        self.trace: list[dict[str, Any]] | None = [] if os.environ.get("GENOFED_FL_TRACE") else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        messages = list(messages)
        first_type = messages[0].metadata.message_type if messages else ""
        start = time.monotonic()
        ids = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        out: list[Any] = []
        while ids and time.monotonic() < end:
            got = list(self._grid.pull_messages(ids))
            out.extend(got)
            ids -= {m.metadata.reply_to_message_id for m in got}
            if ids:
                time.sleep(self._interval)
        if self._recorder is not None:  # snapshot now: Flower's compat layer consumes the content
            self._recorder.extend(_snapshot(m) for m in out)
        if self.trace is not None:
            self.trace.append({"kind": str(first_type), "n": len(out), "seconds": round(time.monotonic() - start, 3)})
        return out


class SumStrategy:
    """A Flower legacy ``Strategy`` whose rounds are sums: it hands the stage's arrays and config to
    every node and keeps the decoded sum."""

    def __init__(self, secure: bool):
        self.secure = secure
        self.arrays: list[np.ndarray] = [np.zeros(1)]
        self.config: dict[str, Any] = {}
        self.result: tuple[np.ndarray, int] | None = None
        self.failures: list[str] = []

    # the Strategy interface
    def initialize_parameters(self, client_manager: Any) -> Any:
        return None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        from flwr.common import FitIns, ndarrays_to_parameters

        ins = FitIns(ndarrays_to_parameters(self.arrays), dict(self.config))
        return [(c, ins) for c in client_manager.all().values()]

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        from flwr.common import parameters_to_ndarrays

        self.failures = [_failure_text(f) for f in failures]
        if failures or not results:
            return None, {}
        k = len(results)
        if self.secure:  # every result carries the SecAgg+ aggregate: the mean of the encoded vectors
            total = parameters_to_ndarrays(results[0][1].parameters)[0] * k
        else:
            total = np.sum([parameters_to_ndarrays(r.parameters)[0] for _, r in results], axis=0)
        self.result = (lanes.decode_sum(total, k), k)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> tuple[Any, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Any) -> Any:
        return None


def _failure_text(f: Any) -> str:
    if isinstance(f, BaseException):
        err: Any = f.args[0] if f.args else None
        return _error_reason(err.reason) if hasattr(err, "reason") else str(f)
    try:
        return str(f[1].status.message)
    except Exception:  # noqa: BLE001
        return repr(f)


class RunFailed(RuntimeError):
    """A training run stopped (a node refused, a round failed or timed out)."""


class ServerRun:
    """The analyst-side control loop of one run."""

    def __init__(self, grid: Any, context: Any, settings: RunSettings, out: Path, recorder: list[Any] | None = None):
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.server_config import ServerConfig

        self.s = settings
        self.out = out
        self.grid = PollingGrid(grid, settings.poll_interval if settings.poll_interval > 0 else 3.0, recorder)
        self.strategy = SumStrategy(settings.secagg)
        self.ctx = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=self.strategy)  # type: ignore[arg-type]
        self.round = 0
        self.timings: list[dict[str, Any]] = []
        self.progress = out / "progress.jsonl"

    def log(self, **event: Any) -> None:
        event["t"] = round(time.time(), 3)
        with self.progress.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def _workflow(self) -> Any:
        if self.s.secagg:
            from flwr.server.workflow import SecAggPlusWorkflow

            return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.67, max_weight=1.0,
                                      clipping_range=lanes.CLIPPING_RANGE, quantization_range=lanes.QUANTIZATION_RANGE,
                                      modulus_range=lanes.MODULUS_RANGE, timeout=self.s.timeout)
        from flwr.server.workflow.default_workflows import default_fit_workflow

        return default_fit_workflow

    def sum_round(self, stage: str, arrays: list[np.ndarray]) -> np.ndarray:
        """One sum over the nodes (SecAgg+ or plain)."""
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        self.round += 1
        self.strategy.arrays = [np.asarray(a, np.float64) for a in arrays]
        self.strategy.config = {"stage": stage, "round": self.round}
        self.strategy.result = None
        state = self.ctx.state
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: self.round, Key.START_TIME: time.time()})
        state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        t0 = time.perf_counter()
        self._workflow()(self.grid, self.ctx)
        dt = time.perf_counter() - t0
        if self.strategy.result is None:
            why = "; ".join(sorted(set(self.strategy.failures))) or "a node did not answer in time or left the secure aggregation"
            raise RunFailed(f"round {self.round} ({stage}) did not complete: {why}")
        total, k = self.strategy.result
        if k != self.n_nodes:
            raise RunFailed(f"round {self.round} ({stage}): {k} of {self.n_nodes} nodes contributed; the run needs all of them")
        self.timings.append({"round": self.round, "stage": stage, "seconds": round(dt, 3)})
        return total

    def plain_evaluate(self, stage: str, arrays: list[np.ndarray]) -> list[dict[str, Any]]:
        """A plain evaluate message to every node (policy check, final per-node metrics)."""
        from flwr.app import Message
        from flwr.app.message_type import MessageType
        from flwr.common import EvaluateIns, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        ins = EvaluateIns(ndarrays_to_parameters([np.asarray(a, np.float64) for a in arrays]),
                          {"stage": stage, "secure": self.s.secagg})
        msgs = [Message(content=compat.evaluateins_to_recorddict(ins, True), dst_node_id=nid,
                        message_type=MessageType.EVALUATE, group_id=f"{stage}") for nid in self.node_ids]
        replies = list(self.grid.send_and_receive(msgs, timeout=self.s.timeout))
        out, errors = [], []
        for m in replies:
            if m.has_error():
                errors.append(_error_reason(m.error.reason))
            else:
                res = compat.recorddict_to_evaluateres(m.content)
                out.append(dict(res.metrics))
        if errors:
            raise RunFailed("; ".join(sorted(set(errors))))
        if len(out) != len(self.node_ids):
            raise RunFailed(f"{len(self.node_ids) - len(out)} node(s) did not answer the {stage} message within {self.s.timeout:.0f} s")
        return out

    def wait_for_nodes(self) -> None:
        end = time.monotonic() + self.s.timeout
        while True:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= self.s.nodes:
                self.node_ids = ids
                self.n_nodes = len(ids)
                return
            if time.monotonic() > end:
                raise RunFailed(f"only {len(ids)} of {self.s.nodes} nodes connected within {self.s.timeout:.0f} s")
            time.sleep(self.s.poll_interval if self.s.poll_interval > 0 else 3.0)

    def run(self) -> dict[str, Any]:
        from flwr.server.compat.app_utils import start_update_client_manager_thread

        from .models import Standardizer, metrics_from_summary

        s = self.s
        started = time.time()
        self.wait_for_nodes()
        thread, f_stop, c_done = start_update_client_manager_thread(self.grid, self.ctx.client_manager)  # type: ignore[arg-type]
        c_done.wait()
        try:
            self.log(event="start", nodes=self.n_nodes, secagg=s.secagg, strategy=s.strategy, model=s.model)
            self.plain_evaluate("check", [np.zeros(1)])
            stats = self.sum_round("stats", [np.zeros(1)])
            n_total, n_pos = stats[0], stats[1]
            p = (len(stats) - 2) // 2
            std = Standardizer.from_sums(n_total, stats[2:2 + p], stats[2 + p:])
            head = [std.mean, std.sd]
            self.log(event="round", round=self.round, stage="stats", seconds=self.timings[-1]["seconds"])
            model = _make_model(s)
            params = model.init(p, s.seed)
            history: list[dict[str, Any]] = []
            if s.strategy == "exact":
                from .models import beta_to_logistic_params, logistic_params_to_beta, newton_update

                beta = logistic_params_to_beta(params)
                if 0 < n_pos < n_total:  # start at the prevalence: one Newton step fewer
                    beta[0] = float(np.log(n_pos / (n_total - n_pos)))
                converged = False
                for it in range(s.newton_max_iter):
                    tot = self.sum_round("newton", [*head, beta])
                    q = p + 1
                    g = tot[:q]
                    H = np.zeros((q, q))
                    iu = np.triu_indices(q)
                    H[iu] = tot[q:q + len(iu[0])]
                    H = H + np.triu(H, 1).T
                    ll = float(tot[-1])
                    new = newton_update(beta, g, H, l2=s.l2, n_total=n_total)
                    step = float(np.max(np.abs(new - beta)))
                    beta = new
                    history.append({"round": self.round, "iteration": it + 1, "loglik": ll, "step": step,
                                    "seconds": self.timings[-1]["seconds"]})
                    self.log(event="round", stage="newton", **history[-1])
                    if step < s.newton_tol:
                        converged = True
                        break
                params = beta_to_logistic_params(beta)
                if not converged:
                    self.log(event="warning", message=f"Newton did not reach step < {s.newton_tol} in {s.newton_max_iter} iterations")
            else:
                for r in range(s.rounds):
                    tot = self.sum_round("train", [*head, *params])
                    n_sum = tot[-2]
                    params = _unflatten(tot[:-2] / n_sum, params)
                    history.append({"round": self.round, "epoch_round": r + 1, "train_loss": float(tot[-1] / n_sum),
                                    "seconds": self.timings[-1]["seconds"]})
                    self.log(event="round", stage="train", **history[-1])
            ev = self.sum_round("eval", [*head, *params])
            metrics = metrics_from_summary(ev)
            self.log(event="round", round=self.round, stage="eval", seconds=self.timings[-1]["seconds"], auc=metrics["auc"])
            node_metrics = self.plain_evaluate("metrics", [*head, *params])
            result = self._result(params, std, metrics, node_metrics, history, started, n_total, n_pos)
            self.log(event="done", auc=metrics["auc"])
            return result
        finally:
            f_stop.set()
            thread.join(timeout=10)

    def _result(self, params: list[np.ndarray], std: Any, metrics: dict[str, Any], node_metrics: list[dict[str, Any]],
                history: list[dict[str, Any]], started: float, n_total: float, n_pos: float) -> dict[str, Any]:
        import flwr

        import genofed

        s = self.s
        coef: dict[str, float] | None = None
        names = _feature_names(s)
        if s.model == "logistic":
            from .models import logistic_params_to_beta, unstandardize_logistic

            b = unstandardize_logistic(logistic_params_to_beta(params), std)
            coef = {"(intercept)": float(b[0]), **{nm: float(v) for nm, v in zip(names, b[1:], strict=True)}}
        _savez(self.out / "model.npz", {"mean": std.mean, "sd": std.sd, **{f"param{i}": a for i, a in enumerate(params)}})
        return {
            "ok": True,
            "name": s.name,
            "model": s.model,
            "strategy": s.strategy,
            "secagg": s.secagg,
            "features": names,
            "coefficients": coef,
            "metrics": {k: v for k, v in metrics.items() if k != "calibration"},
            "calibration": metrics.get("calibration"),
            "node_metrics": node_metrics,
            "history": history,
            "timings": self.timings,
            "n_total": int(round(n_total)),
            "n_cases": int(round(n_pos)),
            "provenance": {
                "genofed": getattr(genofed, "__version__", "?"), "flwr": flwr.__version__,
                "run_id": str(self.ctx.run_id), "started": started, "finished": time.time(),
                "settings": {k: v for k, v in asdict(s).items()}, "nodes": self.n_nodes,
                "feature_digest": s.spec().digest(),
                "aggregation": "SecAgg+ (exact fixed-point lanes)" if s.secagg else "plain (nodes allowed unprotected updates)",
            },
        }


def _feature_names(s: RunSettings) -> list[str]:
    from .features import check_feature_sql

    sel = check_feature_sql(s.sql)
    return [e.alias_or_name for e in sel.expressions if e.alias_or_name not in ("sample_id", s.label)] + list(s.variants)


def _error_reason(reason: str) -> str:
    """The useful line of a ClientApp exception reported by Flower."""
    lines = [ln.strip().strip("<>'\"") for ln in str(reason).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrainingRefused" in ln or "ConfigError" in ln or "LaneError" in ln:
            return ln.split(":", 1)[1].strip() if ":" in ln else ln
    return lines[-1] if lines else "a node failed"


def make_server_app(run_file: Path) -> Any:
    """The ServerApp of a run: writes ``progress.jsonl`` and ``result.json`` to ``run_config['out']``."""
    from flwr.server import ServerApp

    app = ServerApp()

    @app.main()  # type: ignore[untyped-decorator,misc]
    def main(grid: Any, context: Any) -> None:
        out = Path(str(context.run_config.get("out", "."))).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        # tests: keep every reply the server received (out/received.npz)
        recorder: list[Any] | None = [] if bool(context.run_config.get("record", False)) else None
        run = None
        try:
            settings = _load_settings(run_file)
            run = ServerRun(grid, context, settings, out, recorder)
            result = run.run()
        except Exception as e:  # noqa: BLE001 - every failure is reported to the analyst
            result = {"ok": False, "error": str(e) or type(e).__name__, "trace": traceback.format_exc(limit=5)}
        if recorder is not None:
            _dump_recording(recorder, out / "received.npz")
        if run is not None and run.grid.trace is not None:
            (out / "trace.json").write_text(json.dumps(run.grid.trace))
        tmp = out / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=_json_default))
        tmp.replace(out / "result.json")

    return app


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save: Any = np.savez
    save(path, **arrays)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _snapshot(m: Any) -> dict[str, np.ndarray]:
    """Every array in a received message (arrays, and byte fields such as SecAgg+'s masked vectors)."""
    arrays: dict[str, np.ndarray] = {}
    if m.has_error() or not m.has_content():
        return arrays
    for rname, rec in m.content.array_records.items():
        for k, arr in rec.items():
            arrays[f"{rname}/{k}"] = np.array(arr.numpy(), copy=True)
    for rname, crec in m.content.config_records.items():
        for k, v in crec.items():
            if isinstance(v, bytes):
                arrays[f"{rname}/{k}"] = np.frombuffer(v, dtype=np.uint8).copy()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                for j, b in enumerate(v):
                    arrays[f"{rname}/{k}/{j}"] = np.frombuffer(b, dtype=np.uint8).copy()
    return arrays


def _dump_recording(snapshots: list[dict[str, np.ndarray]], path: Path) -> None:
    """Every array the server received (tests check that no node's own contribution is among them)."""
    _savez(path, {f"m{i}/{k}": a for i, snap in enumerate(snapshots) for k, a in snap.items()})
