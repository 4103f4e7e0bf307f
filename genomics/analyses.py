"""Federated analyses behind the SQL table functions: case/control association, linear and
logistic GWAS, LD, PCA and population-genetic statistics.

Each analysis is a sequence of *rounds*. In a round every node computes per-variant sums over
its own samples (never anything sample-sized), the sums are combined in the query's combine
mode (plain, MPC or HE), and the coordinator updates public state from the federation-wide sums
(e.g. Newton steps for logistic regression, a new subspace for PCA) for the next round.

Node side: :meth:`Analysis.node_fragment` re-validates a round request against the node's
catalog and policy; :meth:`Analysis.node_round` computes the partial table.
Coordinator side: :meth:`Analysis.drive` runs the rounds through a :class:`RoundRunner` and
finishes the result table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from sqlglot import exp

from ..engine.analysis import (
    AnalysisFragment,
    check_name,
    parse_expression,
    sample_query,
    variant_query,
)
from ..engine.errors import DisclosureError, FragmentError, PlanningError
from ..engine.protocol import N_COLUMN
from . import stats as S
from .kernels import group_counts
from .store import pack_mask

KEY = "_k0"
KEY_B = "_k1"
COUNT, REAL = "count", "real"

# model-disclosure policy defaults (DataSHIELD's nfilter.glm is the anchor for the ratio)
DEFAULT_MODEL_POLICY = {"min_cases": 5, "min_controls": 5, "glm_max_param_ratio": 0.33}


class RoundRunner(Protocol):
    """What an analysis driver needs from the coordinator."""

    def round(self, fn: str, args: dict[str, Any], round_: str, state: dict[str, Any], keys: list[str],
              layout: list[tuple[str, str]]) -> pa.Table:
        """Run one round at every node, combine, apply disclosure control; the released table."""

    def sql(self, query: str) -> pa.Table:
        """Run an ordinary federated SQL query in the same combine mode."""

    def model_policy(self) -> dict[str, float]:
        """The strictest model-disclosure policy announced by the nodes."""

    def note(self, key: str, value: Any) -> None:
        """Record a detail for the result's provenance."""


@dataclass
class Param:
    kind: str  # str | strlist | int | float | bool
    default: Any = None
    doc: str = ""
    required: bool = False


COMMON = {
    "variants": Param("str", None, "SQL predicate over variants columns (chrom, pos, ref, alt, rsid, qual, filter, variant_id)"),
    "samples": Param("str", None, "SQL predicate over samples and clinical tables"),
    "chrom": Param("str", None, "restrict to one chromosome"),
    "start": Param("int", None, "first position (inclusive)"),
    "stop": Param("int", None, "last position (inclusive)"),
}


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class Analysis:
    """One table function."""

    name = ""
    doc = ""
    params: dict[str, Param] = {}
    reads_samples = True
    phenotype = False
    covariates = False

    # -- arguments (both sides) ------------------------------------------------------------
    def parse_args(self, given: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise the user's named arguments; ``chrom``/``start``/``stop`` fold into
        the ``variants`` predicate."""
        spec = {**COMMON, **self.params}
        unknown = sorted(set(given) - set(spec))
        if unknown:
            raise PlanningError(f"{self.name}() has no argument {unknown[0]!r}; arguments: {', '.join(spec)}")
        out: dict[str, Any] = {}
        for k, p in spec.items():
            v = given.get(k, p.default)
            if v is None:
                if p.required:
                    raise PlanningError(f"{self.name}() needs the argument {k} => ...")
                out[k] = None
                continue
            out[k] = _coerce(self.name, k, p, v)
        preds = []
        if out.pop("chrom", None) is not None:
            preds.append(f"chrom = {_sql_str(str(given['chrom']))}")
        start, stop = out.pop("start", None), out.pop("stop", None)
        if start is not None:
            preds.append(f"pos >= {int(start)}")
        if stop is not None:
            preds.append(f"pos <= {int(stop)}")
        if out.get("variants"):
            preds.append(f"({out['variants']})")
        out["variants"] = " AND ".join(preds) if preds else None
        return out

    def check_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """A node's check of normalised arguments received from a coordinator."""
        spec = {**COMMON, **self.params}
        spec = {k: v for k, v in spec.items() if k not in ("chrom", "start", "stop")}
        unknown = sorted(set(args) - set(spec))
        if unknown:
            raise PlanningError(f"unknown argument {unknown[0]!r}")
        return {k: (None if args.get(k) is None else _coerce(self.name, k, p, args[k])) for k, p in spec.items()}

    # -- node side ---------------------------------------------------------------------------
    def layout(self, args: dict[str, Any], round_: str) -> tuple[list[str], list[tuple[str, str]]]:
        """Keys and ``(partial, count|real)`` columns of one round's partial table."""
        raise NotImplementedError

    def node_fragment(self, args: dict[str, Any], round_: str, state: dict[str, Any], catalog: Any, policy: Any) -> AnalysisFragment:
        args = self.check_args(args)
        keys, cols = self.layout(args, round_)
        sample_sql, tables = None, ["variants"]
        if self.reads_samples:
            sample_sql, st = sample_query(args.get("phenotype") if self.phenotype else None,
                                          list(args.get("covariates") or []) if self.covariates else [],
                                          args.get("samples"), catalog)
            tables = [*st, "genotypes", "variants"]
        return AnalysisFragment(
            fn=self.name, args=args, round=round_, state=state, keys=keys, partials=[c for c, _ in cols],
            counts=[c for c, k in cols if k == COUNT], finite=[c for c, k in cols if k == REAL],
            sample_sql=sample_sql, variant_sql=variant_query(args.get("variants"), catalog), tables=set(tables),
            policy=policy,
        )

    def node_round(self, frag: AnalysisFragment, data: Any) -> pa.Table:
        raise NotImplementedError

    # -- coordinator side ----------------------------------------------------------------------
    def drive(self, args: dict[str, Any], run: RoundRunner) -> pa.Table:
        raise NotImplementedError


def _coerce(fn: str, k: str, p: Param, v: Any) -> Any:
    bad = PlanningError(f"{fn}(): argument {k} must be {_KIND_DOC[p.kind]}, got {v!r}")
    if p.kind == "str":
        if not isinstance(v, str):
            raise bad
        return v
    if p.kind == "strlist":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad
        return list(v)
    if p.kind == "int":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise bad
        return int(v)
    if p.kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise bad
        return float(v)
    if p.kind == "bool":
        if not isinstance(v, bool):
            raise bad
        return v
    raise bad


_KIND_DOC = {"str": "a string", "strlist": "a list of strings", "int": "an integer", "float": "a number", "bool": "true or false"}


# -- helpers -------------------------------------------------------------------------------------------

def _tri_names(prefix: str, q: int) -> list[str]:
    return [f"{prefix}{a}_{b}" for a in range(q) for b in range(a, q)]


def _products(c: np.ndarray) -> np.ndarray:
    """[n, q(q+1)/2] products c_a·c_b (a ≤ b), in :func:`stats.unpack_sym` order."""
    q = c.shape[1]
    iu = np.triu_indices(q)
    return c[:, iu[0]] * c[:, iu[1]]


def _design(samples: Any) -> np.ndarray:
    """Intercept plus covariates."""
    return np.column_stack([np.ones(len(samples.sidx)), samples.covariates])


def _table(keys: dict[str, Any], cols: dict[str, np.ndarray], n: np.ndarray, layout: list[tuple[str, str]],
           guards: dict[str, np.ndarray] | None = None) -> pa.Table:
    out: dict[str, Any] = dict(keys)
    for name, kind in layout:
        x = np.asarray(cols[name])
        out[name] = pa.array(np.rint(x).astype(np.int64) if kind == COUNT else x.astype(np.float64))
    out[N_COLUMN] = pa.array(np.asarray(n, np.int64))
    for name, x in (guards or {}).items():
        out[name] = pa.array(np.asarray(x, np.int64))
    return pa.table(out)


# -- disclosure rule 5: minor-allele carriers in every released cell ----------------------------------

def cell_counts(data: Any, vidx: np.ndarray, cells: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-variant call counts [len(vidx), 3] in the two cells of a per-variant release (sample
    rows ``cells``) and, third, over every analysed person: ``alt1`` (calls with an ALT copy:
    the ALT allele's carriers), ``alt2``, ``called``, ``diploid``, ``hap_alt``."""
    store = data.store
    n_samples = store.manifest.n_samples
    masks = np.stack([pack_mask(cells[0], n_samples), pack_mask(cells[1], n_samples), pack_mask(data.samples.sidx, n_samples)])
    return group_counts(store.planes, np.asarray(vidx, np.int64), masks, ("alt1", "alt2", "called", "diploid", "hap_alt"),
                        complete=store.complete)


def rule5_guards(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The guard columns of disclosure rule 5 from :func:`cell_counts`: per cell the people
    carrying the ALT allele (``_ng0``, ``_ng2``) and the REF allele (``_ng1``, ``_ng3``), and over
    the analysed people the ALT and REF allele counts (``_nm0``, ``_nm1``). Testing both alleles
    needs no decision on which one is minor (a REF allele at frequency 1% is the minor one).

    They never leave a node as values: in plain mode the node withholds a variant whose own
    counts fail (:func:`genofed.privacy.rules.guard_small`), under MPC and HE they are count
    lanes whose federation-wide sums are tested inside the secure combine
    (:func:`genofed.privacy.secure.layout.lane_small`)."""
    ref_carriers = c["called"] - c["alt2"] - c["hap_alt"]  # a call with a REF copy: diploid 0/1 copies of ALT, haploid REF
    ac = c["alt1"][:, 2] + c["alt2"][:, 2]
    an = c["called"][:, 2] + c["diploid"][:, 2]
    return {"_ng0": c["alt1"][:, 0], "_ng1": ref_carriers[:, 0], "_ng2": c["alt1"][:, 1], "_ng3": ref_carriers[:, 1],
            "_nm0": ac, "_nm1": an - ac}


def _binary_cells(s: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cases and controls."""
    return s.sidx[y == 1], s.sidx[y == 0]


def _quantitative_cells(s: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The analysed people whose phenotype is not this node's lowest value, and those whose
    phenotype is not its highest: for a 0/1 phenotype the cases and the controls (so a linear
    GWAS of a case status cannot tell a carrier's status either), for a continuous one nearly
    every analysed person twice."""
    if not len(y):
        return s.sidx[:0], s.sidx[:0]
    return s.sidx[y != y.min()], s.sidx[y != y.max()]


def _check_params(n_params: int, n: int, policy: Any) -> None:
    ratio = float(getattr(policy, "glm_max_param_ratio", DEFAULT_MODEL_POLICY["glm_max_param_ratio"]))
    if n and n_params > ratio * n:
        raise DisclosureError(
            f"the model has {n_params} parameters, more than this node's policy allows for its sample size "
            f"(parameters ≤ {ratio:g} × samples, as DataSHIELD's nfilter.glm); use fewer covariates or more samples",
            rule="glm_params",
        )


_CHROM_ORDER = {str(i): i for i in range(1, 23)} | {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}


def chrom_rank(c: str) -> int:
    c = c[3:] if c.lower().startswith("chr") else c
    return _CHROM_ORDER.get(c.upper(), 100)


def variant_columns(ids: list[str] | pa.Array) -> dict[str, pa.Array]:
    """``variant_id, chrom, pos, ref, alt`` from ``chrom:pos:ref:alt`` ids (vectorised)."""
    import pyarrow.compute as pc

    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    parts = pc.split_pattern(arr, ":", max_splits=3)
    field = [pc.list_element(parts, i) for i in range(4)]
    return {
        "variant_id": arr.cast(pa.string()),
        "chrom": field[0].cast(pa.string()),
        "pos": pc.cast(field[1], pa.int64()),
        "ref": field[2].cast(pa.string()),
        "alt": field[3].cast(pa.string()),
    }


def genome_order(ids: list[str] | pa.Array) -> np.ndarray:
    """Indices sorting variant ids by chromosome (1..22, X, Y, MT, others), position, REF, ALT."""
    if not len(ids):
        return np.zeros(0, np.int64)
    cols = variant_columns(ids)
    chroms = cols["chrom"].to_pylist()
    rank_of = {c: chrom_rank(c) for c in set(chroms)}
    rank = np.array([rank_of[c] for c in chroms], np.int64)
    t = pa.table({"r": rank, "c": cols["chrom"], "p": cols["pos"], "ref": cols["ref"], "alt": cols["alt"]})
    import pyarrow.compute as pc

    return pc.sort_indices(t, sort_keys=[("r", "ascending"), ("c", "ascending"), ("p", "ascending"),
                                         ("ref", "ascending"), ("alt", "ascending")]).to_numpy().astype(np.int64)


def _finish(ids: list[str], cols: dict[str, Any], keep: np.ndarray | None = None) -> pa.Table:
    """A result table in genome order with the standard leading columns."""
    idx = genome_order(ids)
    if keep is not None:
        idx = idx[np.asarray(keep)[idx]]
    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids, pa.string())
    base = variant_columns(arr.take(pa.array(idx, pa.int64())))
    out = dict(base)
    take = pa.array(idx, pa.int64())
    for k, v in cols.items():
        arr = v.take(take) if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(v)[idx])
        if pa.types.is_floating(arr.type):
            arr = _nullable(arr.to_numpy(zero_copy_only=False))
        out[k] = arr
    return pa.table(out)


def _nullable(x: np.ndarray) -> pa.Array:
    """Floats with NaN (undefined statistics, e.g. a monomorphic variant) as NULL."""
    x = np.asarray(x, np.float64)
    return pa.array(x, mask=np.isnan(x))


def _positions(keys: Any, ids: list[str]) -> np.ndarray:
    """Index in ``ids`` of each key (all keys must be in ``ids``)."""
    import pyarrow.compute as pc

    pos = pc.index_in(keys, value_set=pa.array(ids, pa.string()))
    if pos.null_count:
        raise FragmentError("a round returned a variant outside the analysis")
    return pos.to_numpy(zero_copy_only=False).astype(np.int64)


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False)


def _ids(t: pa.Table, key: str = KEY) -> list[str]:
    return t.column(key).to_pylist()


def _binary(y: np.ndarray) -> np.ndarray:
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise FragmentError("the phenotype must be 0/1 (control/case) or boolean; recode it, e.g. phenotype => 'status = 2'")
    return y


# -- assoc_case_control ----------------------------------------------------------------------------

class AssocCaseControl(Analysis):
    name = "assoc_case_control"
    doc = "allelic chi-square and Fisher's exact test per variant from federation-wide 2×2 allele counts"
    phenotype = True
    params = {"phenotype": Param("str", None, "0/1 or boolean case status expression", required=True)}
    LAYOUT = [("ac_case", COUNT), ("an_case", COUNT), ("ac_ctrl", COUNT), ("an_ctrl", COUNT), ("n_case", COUNT), ("n_ctrl", COUNT)]

    def layout(self, args, round_):
        if round_ != "counts":
            raise PlanningError(f"unknown round {round_!r}")
        return [KEY], self.LAYOUT

    def node_round(self, frag, data):
        s = data.samples
        y = _binary(s.y)
        v = data.variants
        vidx = v.column("vidx").to_numpy().astype(np.int64)
        c = cell_counts(data, vidx, _binary_cells(s, y))
        ac = c["alt1"] + c["alt2"]
        an = c["called"] + c["diploid"]
        cols = {"ac_case": ac[:, 0], "an_case": an[:, 0], "ac_ctrl": ac[:, 1], "an_ctrl": an[:, 1],
                "n_case": c["called"][:, 0], "n_ctrl": c["called"][:, 1]}
        return _table({KEY: v.column("variant_id")}, cols, c["called"][:, :2].sum(axis=1), self.LAYOUT, rule5_guards(c))

    def drive(self, args, run):
        t = run.round(self.name, args, "counts", {}, [KEY], self.LAYOUT)
        pol = run.model_policy()
        n_case, n_ctrl = _col(t, "n_case"), _col(t, "n_ctrl")
        keep = (n_case >= pol["min_cases"]) & (n_ctrl >= pol["min_controls"])
        run.note("withheld_min_cases_controls", int((~keep).sum()))
        a, an1, c, an2 = (_col(t, k).astype(np.float64) for k in ("ac_case", "an_case", "ac_ctrl", "an_ctrl"))
        b, d = an1 - a, an2 - c
        chi2, p = S.allelic_chi2(a, b, c, d)
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = (a * d) / (b * c)
            f1, f2 = a / an1, c / an2
        return _finish(_ids(t), {
            "n": (n_case + n_ctrl).astype(np.int64), "n_case": n_case.astype(np.int64), "n_control": n_ctrl.astype(np.int64),
            "alt_freq_case": f1, "alt_freq_control": f2, "odds_ratio": odds, "chi2": chi2, "p": p,
            "p_fisher": S.fisher_exact_2x2(a, b, c, d),
        }, keep)


# -- gwas_linear -----------------------------------------------------------------------------------

class GwasLinear(Analysis):
    name = "gwas_linear"
    doc = "per-variant OLS y ~ genotype + covariates, exact, from combined sufficient statistics"
    phenotype = covariates = True
    params = {
        "phenotype": Param("str", None, "quantitative phenotype expression", required=True),
        "covariates": Param("strlist", [], "covariate expressions (numeric)"),
    }

    def _layout(self, q: int) -> list[tuple[str, str]]:
        cols = [("n", COUNT), ("sgg", COUNT)]
        cols += [(f"gc{j}", REAL) for j in range(q)] + [("gy", REAL)]
        cols += [(c, REAL) for c in _tri_names("cc", q)] + [(f"cy{j}", REAL) for j in range(q)] + [("yy", REAL)]
        return cols

    def _global_layout(self, q: int) -> list[tuple[str, str]]:
        cols = [("n", COUNT), ("incomplete", COUNT)]
        return cols + [(c, REAL) for c in _tri_names("cc", q)] + [(f"cy{j}", REAL) for j in range(q)] + [("yy", REAL)]

    def layout(self, args, round_):
        q = 1 + len(args.get("covariates") or [])
        if round_ == "stats":  # per variant, covariate blocks included (some calls are missing)
            return [KEY], self._layout(q)
        if round_ == "global":  # once: the covariate block, and whether any variant has a missing call
            return [], self._global_layout(q)
        if round_ == "gstats":  # per variant, genotype sums only (no call is missing anywhere)
            return [KEY], self._layout(q)[: q + 3]
        raise PlanningError(f"unknown round {round_!r}")

    def node_round(self, frag, data):
        from .glm_kernels import linear_sums, missing_sums, row_map

        s = data.samples
        c = _design(s)
        y = s.y
        n_all, q = c.shape
        _check_params(q + 1, n_all, data.fragment.policy)
        if frag.round == "global":
            complete = data.store.complete
            vidx = data.variants.column("vidx").to_numpy().astype(np.int64)
            incomplete = len(vidx) if complete is None else int((~np.asarray(complete)[vidx].astype(bool)).sum())
            prods = _products(c)
            tri = prods.sum(axis=0)
            cols = {"n": np.array([n_all]), "incomplete": np.array([incomplete]), "yy": np.array([float(y @ y)])}
            cols |= {nm: np.array([tri[j]]) for j, nm in enumerate(_tri_names("cc", q))}
            cols |= {f"cy{j}": np.array([float(c[:, j] @ y)]) for j in range(q)}
            return _table({}, cols, np.array([n_all]), self._global_layout(q))
        layout = self._layout(q) if frag.round == "stats" else self._layout(q)[: q + 3]
        v = data.variants
        vidx = v.column("vidx").to_numpy().astype(np.int64)
        prods = _products(c)
        cy_i = c * y[:, None]
        t_n = prods.shape[1]
        w = np.column_stack([prods, cy_i, y * y])  # what a missing call removes from the sums
        glob = w.sum(axis=0)
        zc = np.ascontiguousarray(np.column_stack([c, y]))
        rows = row_map(s.sidx, data.store.manifest.width)
        sidx = np.ascontiguousarray(s.sidx)
        nv = len(vidx)
        gz, gg = np.zeros((nv, q + 1)), np.zeros(nv)
        rest, n = np.broadcast_to(glob, (nv, len(glob))).copy(), np.full(nv, float(n_all))
        for off, alt1, alt2, called in data.plane_chunks(vidx):
            sl = slice(off, off + len(alt1))
            gz[sl], gg[sl] = linear_sums(alt1, alt2, rows, zc)
            if called is not None:
                miss, cnt = missing_sums(called, sidx, w)
                rest[sl] -= miss
                n[sl] -= cnt
        cols: dict[str, np.ndarray] = {"n": n, "sgg": gg, "gy": gz[:, q], "yy": rest[:, -1]}
        for j in range(q):
            cols[f"gc{j}"] = gz[:, j]
            cols[f"cy{j}"] = rest[:, t_n + j]
        for j, name in enumerate(_tri_names("cc", q)):
            cols[name] = rest[:, j]
        if frag.round == "gstats" and (n != n_all).any():
            raise FragmentError("a variant has a missing call, but the coordinator asked for genotype sums only; rerun the query")
        guards = rule5_guards(cell_counts(data, vidx, _quantitative_cells(s, y)))
        return _table({KEY: v.column("variant_id")}, {k: cols[k] for k, _ in layout}, n, layout, guards)

    def drive(self, args, run):
        q = 1 + len(args.get("covariates") or [])
        layout = self._layout(q)
        # one combine of the covariate block; when no analysis variant has a missing call at
        # any node, the per-variant round carries genotype sums only (a third of the lanes)
        tg = run.round(self.name, args, "global", {}, [], self._global_layout(q))
        if tg.num_rows != 1:
            raise DisclosureError("the analysis samples were withheld by disclosure control (too few samples)", rule="min_count")
        complete = int(_col(tg, "incomplete")[0]) == 0
        run.note("compact_round", complete)
        t = run.round(self.name, args, "gstats" if complete else "stats", {}, [KEY], layout[: q + 3] if complete else layout)
        r = t.num_rows
        n = _col(t, "n").astype(np.int64)
        gc = np.column_stack([_col(t, f"gc{j}") for j in range(q)]) if r else np.zeros((0, q))
        if complete:
            blk = {k: _col(tg, k)[0] for k, _ in self._global_layout(q)}
            cc1 = S.unpack_sym(np.array([[blk[nm] for nm in _tri_names("cc", q)]], np.float64), q)[0]
            cc = np.broadcast_to(cc1, (r, q, q))
            cy = np.broadcast_to(np.array([blk[f"cy{j}"] for j in range(q)], np.float64), (r, q))
            yy = np.full(r, float(blk["yy"]))
        else:
            cc = S.unpack_sym(np.column_stack([_col(t, nm) for nm in _tri_names("cc", q)]) if r else np.zeros((0, q * (q + 1) // 2)), q)
            cy = np.column_stack([_col(t, f"cy{j}") for j in range(q)]) if r else np.zeros((0, q))
            yy = _col(t, "yy").astype(np.float64)
        fast = S.ols_genotype_effect(_col(t, "sgg").astype(np.float64), gc, _col(t, "gy"), cc, cy, yy, n)
        if fast is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                af = gc[:, 0] / (2.0 * n)
            return _finish(t.column(KEY), {"n": n, "alt_freq": af, **{k: fast[k] for k in ("beta", "se", "t", "p")}})
        xtx = np.zeros((r, q + 1, q + 1))
        xtx[:, 0, 0] = _col(t, "sgg")
        for j in range(q):
            xtx[:, 0, j + 1] = xtx[:, j + 1, 0] = _col(t, f"gc{j}")
        xtx[:, 1:, 1:] = S.unpack_sym(np.column_stack([_col(t, n) for n in _tri_names("cc", q)]) if r else np.zeros((0, q * (q + 1) // 2)), q)
        xty = np.column_stack([_col(t, "gy"), *[_col(t, f"cy{j}") for j in range(q)]]) if r else np.zeros((0, q + 1))
        n = _col(t, "n").astype(np.int64)
        fit = S.ols_from_stats(xtx, xty, _col(t, "yy").astype(np.float64), n, coef=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            af = _col(t, "gc0") / (2.0 * n)
        return _finish(_ids(t), {"n": n, "alt_freq": af, "beta": fit["beta"], "se": fit["se"], "t": fit["t"], "p": fit["p"]})


# -- gwas_logistic ---------------------------------------------------------------------------------

class GwasLogistic(Analysis):
    name = "gwas_logistic"
    doc = "per-variant logistic regression by federated Newton–Raphson (all variants per round)"
    phenotype = covariates = True
    params = {
        "phenotype": Param("str", None, "0/1 or boolean case status expression", required=True),
        "covariates": Param("strlist", [], "covariate expressions (numeric)"),
        "max_iter": Param("int", 25, "Newton iterations at most"),
        "tol": Param("float", 1e-8, "convergence: largest coefficient step"),
    }

    def _layout(self, q: int) -> list[tuple[str, str]]:
        cols = [("n", COUNT), ("n_case", COUNT)]
        cols += [(f"grad{j}", REAL) for j in range(q)] + [(c, REAL) for c in _tri_names("h", q)] + [("ll", REAL)]
        return cols

    def layout(self, args, round_):
        q = 1 + len(args.get("covariates") or [])
        if round_ == "counts":
            return [KEY], AssocCaseControl.LAYOUT
        if round_ == "null":
            return [], self._layout(q)
        if round_ == "fit":
            return [KEY], self._layout(q + 1)
        raise PlanningError(f"unknown round {round_!r}")

    def node_round(self, frag, data):
        s = data.samples
        c = _design(s)
        y = _binary(s.y)
        n_all, q = c.shape
        _check_params(q + 1, n_all, data.fragment.policy)
        if frag.round == "counts":  # allele counts in cases and controls: separation, min cases
            return ANALYSES["assoc_case_control"].node_round(frag, data)
        if frag.round == "null":
            beta = frag.array("beta").reshape(-1)
            if beta.shape != (q,):
                raise FragmentError("analysis state 'beta' has the wrong shape")
            eta = c @ beta
            p = _expit(eta)
            w, r = p * (1 - p), y - p
            h = _products(c).T @ w
            cols = {"n": n_all, "n_case": y.sum(), "ll": float(np.sum(y * eta - np.logaddexp(0, eta)))}
            cols |= {f"grad{j}": float(c[:, j] @ r) for j in range(q)}
            cols |= {name: float(h[j]) for j, name in enumerate(_tri_names("h", q))}
            layout = self._layout(q)
            return _table({}, {k: np.array([cols[k]]) for k, _ in layout}, np.array([n_all]), layout)
        layout = self._layout(q + 1)
        if "ids" in frag.state:
            ids = frag.state["ids"]
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise FragmentError("analysis state 'ids' must be a list of variant ids")
            v, pos = data.restrict(ids)
            if "start" in frag.state:  # every listed variant starts at the same point
                start = frag.array("start").reshape(-1)
                if start.shape != (q + 1,):
                    raise FragmentError("analysis state 'start' has the wrong shape")
                b = np.broadcast_to(start, (len(pos), q + 1))
            else:
                beta = frag.array("beta")
                if beta.shape != (len(ids), q + 1):
                    raise FragmentError("analysis state 'beta' has the wrong shape")
                b = beta[pos]
        else:
            start = frag.array("start").reshape(-1)
            if start.shape != (q + 1,):
                raise FragmentError("analysis state 'start' has the wrong shape")
            v = data.variants
            b = np.broadcast_to(start, (v.num_rows, q + 1))
        from .glm_kernels import logistic_sums

        vidx = v.column("vidx").to_numpy().astype(np.int64)
        nv = len(vidx)
        prods = np.ascontiguousarray(_products(c))
        cc = np.ascontiguousarray(c)
        sidx = np.ascontiguousarray(data.samples.sidx)
        b = np.ascontiguousarray(b)
        cols = {name: np.zeros(nv) for name, _ in layout}
        for off, alt1, alt2, called in data.plane_chunks(vidx, rows=1024):
            sl = slice(off, off + len(alt1))
            has = called is not None
            grad, hg, hcc, ll, cnt = logistic_sums(alt1, alt2, called if has else alt1, has, sidx, cc, y, prods, b[sl])
            cols["n"][sl], cols["n_case"][sl] = cnt[:, 0], cnt[:, 1]
            cols["ll"][sl] = ll
            for j in range(q + 1):
                cols[f"grad{j}"][sl] = grad[:, j]
                cols[f"h0_{j}"][sl] = hg[:, j]
            k = 0
            for a in range(q):
                for bb in range(a, q):
                    cols[f"h{a + 1}_{bb + 1}"][sl] = hcc[:, k]
                    k += 1
        return _table({KEY: v.column("variant_id")}, cols, cols["n"], layout, rule5_guards(cell_counts(data, vidx, _binary_cells(s, y))))

    def drive(self, args, run):
        from ..engine.analysis import pack_array

        q = 1 + len(args.get("covariates") or [])
        max_iter, tol = int(args.get("max_iter") or 25), float(args.get("tol") or 1e-8)
        pol = run.model_policy()
        # 1. the covariates-only model: every variant's Newton iteration starts from it
        beta0 = np.zeros(q)
        it = 0
        while it < max_iter:
            it += 1
            t = run.round(self.name, args, "null", {"beta": pack_array(beta0)}, [], self._layout(q))
            if t.num_rows != 1:
                raise DisclosureError("the null model was withheld by disclosure control (too few samples)", rule="min_count")
            grad = np.array([_col(t, f"grad{j}")[0] for j in range(q)], np.float64)
            h = S.unpack_sym(np.array([[_col(t, n)[0] for n in _tri_names("h", q)]], np.float64), q)
            step, ok, _ = S.sym_solve(h, grad[None, :])
            if not ok[0]:
                raise PlanningError("the covariates-only logistic model is singular (collinear or constant covariates)")
            beta0 = beta0 + step[0]
            if np.max(np.abs(step)) < tol:
                break
        run.note("null_model_iterations", it)
        # 2. allele counts in cases and controls: variants below the minimum cases/controls and
        # variants with separation (an allele only in cases or only in controls: no MLE) are
        # settled without fitting
        tc = run.round(self.name, args, "counts", {}, [KEY], AssocCaseControl.LAYOUT)
        ids = _ids(tc)
        nv = len(ids)
        n_case, n = _col(tc, "n_case").astype(np.int64), (_col(tc, "n_case") + _col(tc, "n_ctrl")).astype(np.int64)
        ac1, an1, ac0, an0 = (_col(tc, k).astype(np.int64) for k in ("ac_case", "an_case", "ac_ctrl", "an_ctrl"))
        ok_counts = (n_case >= pol["min_cases"]) & (n - n_case >= pol["min_controls"])
        run.note("withheld_min_cases_controls", int((~ok_counts).sum()))
        separated = (ac1 == 0) | (ac0 == 0) | (ac1 == an1) | (ac0 == an0)
        # 3. the other variants at once, each round one combine of gradients and Hessians
        qq = q + 1
        lay = self._layout(qq)
        names = _tri_names("h", qq)
        beta = np.tile(np.concatenate([[0.0], beta0]), (nv, 1))
        se = np.full(nv, np.nan)
        iters = np.zeros(nv, np.int64)
        conv = np.zeros(nv, bool)
        done = ~ok_counts | separated
        prev_ll = np.full(nv, -np.inf)
        prev_step = np.zeros((nv, qq))
        active = np.flatnonzero(~done)
        state: dict[str, Any] = {"ids": [ids[i] for i in active], "start": pack_array(np.concatenate([[0.0], beta0]))}
        it = 0
        while len(active) and it < 4 * max_iter:
            it += 1
            t = run.round(self.name, args, "fit", state, [KEY], lay)
            rows = _positions(t.column(KEY), ids)
            done[np.setdiff1d(active, rows)] = True  # withheld this round: no estimate
            sel = ~done[rows]
            rows = rows[sel]
            if not len(rows):
                break
            ll = _col(t, "ll")[sel]
            # damped Newton: a step that lowered the likelihood is halved and re-evaluated
            worse = ll < prev_ll[rows] - 1e-10 * np.abs(prev_ll[rows])
            back = rows[worse]
            prev_step[back] /= 2
            beta[back] -= prev_step[back]
            stuck = back[np.max(np.abs(prev_step[back]), axis=1) < 1e-12] if len(back) else back
            done[stuck] = True
            fresh = rows[~worse]
            grad = np.column_stack([_col(t, f"grad{j}") for j in range(qq)])[sel][~worse]
            h = S.unpack_sym(np.column_stack([_col(t, nm) for nm in names])[sel][~worse], qq)
            step, ok, hinv = S.sym_solve(h, grad)
            iters[fresh] += 1
            prev_ll[fresh] = ll[~worse]
            done[fresh[~ok]] = True
            good = fresh[ok]
            beta[good] += step[ok]
            prev_step[good] = step[ok]
            if ok.any():
                se[good] = np.sqrt(hinv[ok][:, 0, 0])
            small = np.max(np.abs(step[ok]), axis=1) < tol * np.maximum(1.0, np.max(np.abs(beta[good]), axis=1))
            diverged = (np.max(np.abs(beta[good]), axis=1) > 1e4) | (iters[good] >= max_iter)
            conv[good[small & ~diverged]] = True
            done[good[small | diverged]] = True
            active = np.flatnonzero(~done)
            if not len(active):
                break
            state = {"ids": [ids[i] for i in active], "beta": pack_array(beta[active])}
        run.note("newton_rounds", int(it))
        status = np.where(conv, "ok", np.where(iters >= max_iter, "not_converged", "singular_or_diverged")).astype(object)
        if len(ids):
            status[separated] = "separation"
        b = np.where(conv, beta[:, 0] if len(beta) else np.zeros(0), np.nan)
        s = np.where(conv, se, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = b / s
        from scipy import stats as sps

        keep = n_case >= 0
        if len(ids):
            keep = (n_case >= pol["min_cases"]) & (n - n_case >= pol["min_controls"])
        return _finish(ids, {
            "n": n, "n_case": n_case, "beta": b, "odds_ratio": np.exp(b), "se": s, "z": z,
            "p": 2 * sps.norm.sf(np.abs(z)), "iterations": iters, "converged": conv, "status": pa.array(list(status), pa.string()),
        }, keep)


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# -- ld_r2 -----------------------------------------------------------------------------------------

class LdR2(Analysis):
    name = "ld_r2"
    doc = "pairwise genotype correlation r² between variants within a window, from combined sums"
    params = {
        "window_kb": Param("float", 250.0, "largest distance between the two variants, in kb"),
        "min_r2": Param("float", 0.0, "report pairs with r² at least this"),
        "max_pairs": Param("int", 2_000_000, "refuse windows with more pairs than this"),
    }
    LAYOUT = [("n", COUNT), ("sa", COUNT), ("sb", COUNT), ("saa", COUNT), ("sbb", COUNT), ("sab", COUNT)]

    def layout(self, args, round_):
        if round_ != "pairs":
            raise PlanningError(f"unknown round {round_!r}")
        return [KEY, KEY_B], self.LAYOUT

    def node_round(self, frag, data):
        window = int(round(float(frag.args["window_kb"]) * 1000))
        v = data.variants
        chrom = np.array(v.column("chrom").to_pylist(), dtype=object)
        posv = v.column("pos").to_numpy().astype(np.int64)
        vidx = v.column("vidx").to_numpy().astype(np.int64)
        vids = v.column("variant_id").to_pylist()
        n_pairs = 0
        plan = []
        for ch in dict.fromkeys(chrom.tolist()):
            rows = np.flatnonzero(chrom == ch)
            rows = rows[np.argsort(posv[rows], kind="stable")]
            p = posv[rows]
            hi = np.searchsorted(p, p + window, side="right")
            n_pairs += int((hi - np.arange(len(p)) - 1).sum())
            plan.append((rows, hi))
        if n_pairs > int(frag.args["max_pairs"]):
            raise FragmentError(f"ld_r2 would compute {n_pairs:,} pairs, over max_pairs; narrow the region or the window")
        out: dict[str, list] = {k: [] for k in ("a", "b", *[c for c, _ in self.LAYOUT])}
        block = 256
        for rows, hi in plan:
            for s0 in range(0, len(rows), block):
                s1 = min(len(rows), s0 + block)
                e = int(hi[s1 - 1])
                idx = rows[s0:e]
                order = np.argsort(vidx[idx], kind="stable")
                g = np.zeros((len(idx), len(data.samples.sidx)))
                m = np.ones_like(g, dtype=bool)
                for off, gg, called in data.dosage_chunks(vidx[idx][order]):
                    g[order[off:off + len(gg)]] = gg
                    if called is not None:
                        m[order[off:off + len(gg)]] = called
                mf = m.astype(np.float64)
                ga, ma = g[: s1 - s0], mf[: s1 - s0]
                mats = {"n": ma @ mf.T, "sa": ga @ mf.T, "sb": ma @ g.T, "saa": (ga * ga) @ mf.T,
                        "sbb": ma @ (g * g).T, "sab": ga @ g.T}
                i, j = np.nonzero((np.arange(e - s0)[None, :] > np.arange(s1 - s0)[:, None])
                                  & (np.arange(e - s0)[None, :] < (hi[s0:s1] - s0)[:, None]))
                out["a"] += [vids[x] for x in rows[s0 + i]]
                out["b"] += [vids[x] for x in rows[s0 + j]]
                for k, mat in mats.items():
                    out[k].append(mat[i, j])
        cols = {k: np.concatenate(out[k]) if out[k] else np.zeros(0) for k, _ in self.LAYOUT}
        return _table({KEY: pa.array(out["a"], pa.string()), KEY_B: pa.array(out["b"], pa.string())}, cols, cols["n"], self.LAYOUT)

    def drive(self, args, run):
        t = run.round(self.name, args, "pairs", {}, [KEY, KEY_B], self.LAYOUT)
        n, sa, sb, saa, sbb, sab = (_col(t, k).astype(np.float64) for k, _ in self.LAYOUT)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (n * sab - sa * sb) / np.sqrt((n * saa - sa * sa) * (n * sbb - sb * sb))
        a, b = _ids(t, KEY), _ids(t, KEY_B)
        va, vb = variant_columns(a), variant_columns(b)
        pa_, pb_ = va["pos"].to_numpy(), vb["pos"].to_numpy()
        min_r2 = float(args.get("min_r2") or 0.0)
        keep = (r * r >= min_r2) if min_r2 > 0 else np.ones(len(r), bool)
        order = np.array(sorted(range(len(a)), key=lambda i: (chrom_rank(a[i].split(":")[0]), pa_[i], pb_[i])), np.int64)
        order = order[keep[order]] if len(order) else order
        tk = pa.array(order, pa.int64())
        return pa.table({
            "variant_id_a": pa.array(a, pa.string()).take(tk), "variant_id_b": pa.array(b, pa.string()).take(tk),
            "chrom": va["chrom"].take(tk), "pos_a": va["pos"].take(tk), "pos_b": vb["pos"].take(tk),
            "distance": pa.array(np.abs(pb_ - pa_)[order] if len(order) else np.zeros(0, np.int64)),
            "n": pa.array(n[order].astype(np.int64)), "r": _nullable(r[order]), "r2": _nullable((r * r)[order]),
        })


# -- pca -------------------------------------------------------------------------------------------

class Pca(Analysis):
    name = "pca"
    doc = ("federated PCA by subspace iteration: each round combines the nodes' GᵢᵀGᵢV; scores stay "
           "at each node as table `name` (sample_id, pc1..pck), usable as covariates")
    params = {
        "k": Param("int", 10, "number of components"),
        "name": Param("str", "pca", "table that keeps each node's sample scores at the node"),
        "min_maf": Param("float", 0.01, "use variants with minor allele frequency at least this"),
        "max_iter": Param("int", 60, "subspace iterations at most"),
        "tol": Param("float", 1e-9, "convergence: relative change of the top eigenvalues"),
        "seed": Param("int", 1, "seed of the starting subspace"),
        "prune_r2": Param("float", None, "LD-prune first: drop one variant of each pair with r² above this"),
        "prune_window_kb": Param("float", 250.0, "window of the LD pruning (kb)"),
    }
    FREQ = [("n", COUNT), ("sg", COUNT), ("sgg", COUNT)]

    def layout(self, args, round_):
        if round_ == "freq":
            return [KEY], self.FREQ
        if round_ == "power":
            return [KEY], [("n", COUNT), *[(f"z{j}", REAL) for j in range(self._width(args))]]
        if round_ == "project":
            return [], [("n", COUNT)]
        raise PlanningError(f"unknown round {round_!r}")

    @staticmethod
    def _width(args):
        k = int(args.get("k") or 10)
        return k + max(10, k)

    def node_fragment(self, args, round_, state, catalog, policy):
        check_name(args.get("name"), "pca name")
        return super().node_fragment(args, round_, state, catalog, policy)

    def _standardized(self, frag, data):
        ids = frag.state.get("ids")
        if not isinstance(ids, list):
            raise FragmentError("analysis state 'ids' must be a list of variant ids")
        mu, scale = frag.array("mu"), frag.array("scale")
        basis = frag.array("basis")
        if not (mu.shape == scale.shape == (len(ids),) and basis.ndim == 2 and basis.shape[0] == len(ids)) or (scale <= 0).any():
            raise FragmentError("analysis state of the PCA round has inconsistent shapes")
        v, pos = data.restrict(ids)
        return v, mu[pos], scale[pos], basis[pos]

    def _chunks(self, data, v, mu, scale):
        vidx = v.column("vidx").to_numpy().astype(np.int64)
        for off, g, called in data.dosage_chunks(vidx):
            x = (g - mu[off:off + len(g), None]) / scale[off:off + len(g), None]
            if called is not None:
                x *= called
            yield off, x, called

    def node_round(self, frag, data):
        if frag.round == "freq":
            v = data.variants
            vidx = v.column("vidx").to_numpy().astype(np.int64)
            cols = {k: np.zeros(len(vidx)) for k, _ in self.FREQ}
            for off, g, called in data.dosage_chunks(vidx):
                sl = slice(off, off + len(g))
                cols["n"][sl] = len(data.samples.sidx) if called is None else called.sum(axis=1)
                cols["sg"][sl] = g.sum(axis=1)
                cols["sgg"][sl] = np.einsum("ij,ij->i", g, g)
            return _table({KEY: v.column("variant_id")}, cols, cols["n"], self.FREQ)
        v, mu, scale, basis = self._standardized(frag, data)
        ns = len(data.samples.sidx)
        y = np.zeros((ns, basis.shape[1]))
        # two passes over the standardized genotypes; keep them in memory when they are small
        chunks = self._chunks(data, v, mu, scale)
        if v.num_rows * ns * 8 <= 256 << 20:
            chunks = list(chunks)
        for off, x, _ in chunks:
            y += x.T @ basis[off:off + len(x)]
        if frag.round == "project":
            k = basis.shape[1]
            name = check_name(frag.args["name"], "pca name")
            scores = {"sample_id": data.samples.sample_id, **{f"pc{j + 1}": pa.array(y[:, j]) for j in range(k)}}
            data.save_table(name, pa.table(scores))
            return _table({}, {"n": np.array([ns])}, np.array([ns]), [("n", COUNT)])
        z = np.zeros((v.num_rows, basis.shape[1]))
        n = np.zeros(v.num_rows)
        for off, x, called in (chunks if isinstance(chunks, list) else self._chunks(data, v, mu, scale)):
            z[off:off + len(x)] = x @ y
            n[off:off + len(x)] = ns if called is None else called.sum(axis=1)
        lay = self.layout(frag.args, "power")[1]
        return _table({KEY: v.column("variant_id")}, {"n": n, **{f"z{j}": z[:, j] for j in range(z.shape[1])}}, n, lay)

    @staticmethod
    def _prune(args, run, ids_all, use, maf):
        """Greedy LD pruning on federation-wide r² (as plink's --indep-pairwise, by distance):
        in genome order, of each pair above ``prune_r2`` the variant with the lower minor allele
        frequency is dropped."""
        ld = ANALYSES["ld_r2"]
        ld_args = ld.parse_args({"variants": args.get("variants"), "samples": args.get("samples"),
                                 "window_kb": float(args["prune_window_kb"])})
        t = run.round(ld.name, ld_args, "pairs", {}, [KEY, KEY_B], LdR2.LAYOUT)
        n, sa, sb, saa, sbb, sab = (_col(t, c).astype(np.float64) for c, _ in LdR2.LAYOUT)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = (n * sab - sa * sb) ** 2 / ((n * saa - sa * sa) * (n * sbb - sb * sb))
        where = {vid: i for i, vid in enumerate(ids_all)}
        keep = np.zeros(len(ids_all), bool)
        keep[use] = True
        a = np.array([where.get(v, -1) for v in _ids(t, KEY)], np.int64)
        b = np.array([where.get(v, -1) for v in _ids(t, KEY_B)], np.int64)
        hi = (r2 > float(args["prune_r2"])) & (a >= 0) & (b >= 0)
        order = genome_order([ids_all[i] for i in a[hi]]) if hi.any() else np.zeros(0, np.int64)
        for x, y in zip(a[hi][order], b[hi][order]):
            if keep[x] and keep[y]:
                keep[y if maf[y] < maf[x] or (maf[y] == maf[x] and y > x) else x] = False
        return np.flatnonzero(keep)

    def drive(self, args, run):
        from ..engine.analysis import pack_array

        k = int(args["k"])
        if k < 1:
            raise PlanningError("pca(): k must be at least 1")
        t = run.round(self.name, args, "freq", {}, [KEY], self.FREQ)
        ids_all = _ids(t)
        n, sg, sgg = (_col(t, c).astype(np.float64) for c in ("n", "sg", "sgg"))
        with np.errstate(divide="ignore", invalid="ignore"):
            p = sg / (2 * n)
        maf = np.minimum(p, 1 - p)
        use = np.flatnonzero((n > 0) & (maf >= max(float(args["min_maf"]), 1e-12)))
        m = self._width(args)
        if len(use) < m:
            raise PlanningError(f"pca(): only {len(use)} variants pass min_maf; k = {k} needs at least {m}")
        if args.get("prune_r2") is not None:
            use = self._prune(args, run, ids_all, use, maf)
            run.note("ld_pruned_variants", int(len(use)))
            if len(use) < m:
                raise PlanningError(f"pca(): only {len(use)} variants remain after LD pruning; k = {k} needs at least {m}")
        ids = [ids_all[i] for i in use]
        mu, scale = 2 * p[use], np.sqrt(p[use] * (1 - p[use]))
        total = float(np.sum((sgg[use] - 2 * mu * sg[use] + n[use] * mu * mu) / scale**2))
        rng = np.random.default_rng(int(args["seed"]))
        basis, _ = np.linalg.qr(rng.standard_normal((len(use), m)))
        lay = self.layout(args, "power")[1]
        base = {"ids": ids, "mu": pack_array(mu), "scale": pack_array(scale)}
        prev = None
        evals = np.zeros(m)
        it = 0
        while it < int(args["max_iter"]):
            it += 1
            tz = run.round(self.name, args, "power", {**base, "basis": pack_array(basis)}, [KEY], lay)
            where = {vid: i for i, vid in enumerate(_ids(tz))}
            if len(where) != len(ids):
                raise DisclosureError("some PCA variants were withheld by disclosure control; restrict the variants or samples", rule="min_count")
            rows = np.array([where[v] for v in ids], np.int64)
            z = np.column_stack([_col(tz, f"z{j}") for j in range(m)])[rows]
            tmat = basis.T @ z
            tmat = (tmat + tmat.T) / 2
            evals, w = np.linalg.eigh(tmat)
            order = np.argsort(evals)[::-1]
            evals, w = evals[order], w[:, order]
            basis_r, z_r = basis @ w, z @ w
            if prev is not None and np.all(np.abs(evals[:k] - prev) <= float(args["tol"]) * np.abs(evals[0])):
                basis = basis_r
                break
            prev = evals[:k].copy()
            basis, _ = np.linalg.qr(z_r)
        run.note("pca_iterations", it)
        vk = basis[:, :k]
        # orient each component so its largest loading is positive (a stable sign convention)
        flip = np.sign(vk[np.argmax(np.abs(vk), axis=0), np.arange(k)])
        vk = vk * flip
        run.round(self.name, args, "project", {**base, "basis": pack_array(vk)}, [], [("n", COUNT)])
        nsamp = float(np.max(n[use]))
        ev = evals[:k] / nsamp
        run.note("eigenvalues", [float(x) for x in evals[:k]])
        run.note("explained_variance", [float(x) for x in ev])
        run.note("explained_variance_ratio", [float(x) for x in evals[:k] / total])
        run.note("scores_table", args["name"])
        keep = np.zeros(len(ids_all), bool)
        keep[use] = True
        load = np.zeros((len(ids_all), k))
        load[use] = vk
        cols = {"n": n.astype(np.int64), "alt_freq": p}
        cols |= {f"pc{j + 1}": load[:, j] for j in range(k)}
        return _finish(ids_all, cols, keep)


# -- population genetics (composed from SQL aggregates) --------------------------------------------

def _genotype_sql(select: list[str], args: dict[str, Any], extra_where: list[str], group: list[str], catalog: Any = None) -> str:
    """A federated SQL query over genotypes joined to variants, samples and the clinical tables
    the arguments mention."""
    from ..engine.sqlcheck import DIALECT

    conds = list(extra_where)
    tables: list[str] = []
    if args.get("variants"):
        e = parse_expression(args["variants"], "variants filter")
        for c in e.find_all(exp.Column):
            c.set("table", exp.to_identifier("v"))
        conds.append(e.sql(DIALECT))
    exprs = [x for x in [args.get("samples"), args.get("population")] if x]
    for x in exprs:
        for c in parse_expression(x, "expression").find_all(exp.Column):
            if c.table and c.table not in tables and c.table != "samples":
                tables.append(c.table)
    q = f"SELECT {', '.join(select)} FROM genotypes g JOIN variants v USING (variant_id) JOIN samples USING (sample_id)"
    for t in tables:
        q += f" JOIN {t} USING (sample_id)"
    if args.get("samples"):
        conds.append(f"({args['samples']})")
    if conds:
        q += " WHERE " + " AND ".join(conds)
    return q + " GROUP BY " + ", ".join(group)


class Fst(Analysis):
    name = "fst"
    doc = "Hudson's Fst between two populations per variant (scikit-allel's estimator on combined allele counts)"
    reads_samples = False
    params = {
        "population": Param("str", "super_pop", "expression naming each sample's population"),
        "pop1": Param("str", None, "first population", required=True),
        "pop2": Param("str", None, "second population", required=True),
        "window_kb": Param("float", None, "report windowed Fst (ratio of sums per window of this size) instead of per variant"),
    }

    def layout(self, args, round_):
        raise PlanningError("fst runs as SQL aggregates")

    def drive(self, args, run):
        import allel

        pop = args["population"]
        parse_expression(pop, "population")
        q = _genotype_sql(
            ["g.variant_id AS variant_id", f"({pop}) AS pop", "allele_count(g.dosage) AS ac", "allele_number(g.dosage) AS an"],
            args, [f"({pop}) IN ({_sql_str(args['pop1'])}, {_sql_str(args['pop2'])})"], ["g.variant_id", f"({pop})"])
        t = run.sql(q)
        ids, pops = t.column("variant_id").to_pylist(), t.column("pop").to_pylist()
        ac, an = _col(t, "ac").astype(np.int64), _col(t, "an").astype(np.int64)
        both: dict[str, dict[str, tuple[int, int]]] = {}
        for vid, pp, a, b in zip(ids, pops, ac, an):
            both.setdefault(vid, {})[pp] = (int(a), int(b))
        vids = [v for v, d in both.items() if args["pop1"] in d and args["pop2"] in d]
        ac1 = np.array([[both[v][args["pop1"]][1] - both[v][args["pop1"]][0], both[v][args["pop1"]][0]] for v in vids], np.int64).reshape(-1, 2)
        ac2 = np.array([[both[v][args["pop2"]][1] - both[v][args["pop2"]][0], both[v][args["pop2"]][0]] for v in vids], np.int64).reshape(-1, 2)
        num, den = allel.hudson_fst(ac1, ac2) if len(vids) else (np.zeros(0), np.zeros(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            fst = num / den
        run.note("fst_hudson_overall", float(np.nansum(num) / np.nansum(den)) if len(vids) else None)
        if args.get("window_kb"):
            return _windows(vids, num, den, float(args["window_kb"]))
        return _finish(vids, {
            "n": (ac1.sum(axis=1) + ac2.sum(axis=1)).astype(np.int64), "alt_freq_1": ac1[:, 1] / ac1.sum(axis=1),
            "alt_freq_2": ac2[:, 1] / ac2.sum(axis=1), "fst": fst, "num": num, "den": den,
        })


def _windows(vids: list[str], num: np.ndarray, den: np.ndarray, window_kb: float) -> pa.Table:
    """Windowed Hudson Fst as scikit-allel's ``windowed_hudson_fst``: per window of
    ``window_kb`` (1-based, starting at position 1), sum(num) / sum(den)."""
    size = int(round(window_kb * 1000))
    cols = variant_columns(vids)
    chrom = cols["chrom"].to_pylist()
    pos = cols["pos"].to_numpy()
    acc: dict[tuple[str, int], list[float]] = {}
    for c, p, a, b in zip(chrom, pos, num, den):
        w = acc.setdefault((c, (int(p) - 1) // size), [0.0, 0.0, 0])
        w[0] += a
        w[1] += b
        w[2] += 1
    keys = sorted(acc, key=lambda k: (chrom_rank(k[0]), k[1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        fst = np.array([acc[k][0] / acc[k][1] for k in keys]) if keys else np.zeros(0)
    return pa.table({
        "chrom": pa.array([k[0] for k in keys], pa.string()),
        "start": pa.array([k[1] * size + 1 for k in keys], pa.int64()),
        "stop": pa.array([(k[1] + 1) * size for k in keys], pa.int64()),
        "n_variants": pa.array([acc[k][2] for k in keys], pa.int64()),
        "fst": _nullable(fst),
    })


class Heterozygosity(Analysis):
    name = "heterozygosity"
    doc = "observed and expected heterozygosity per variant (optionally per population), scikit-allel estimators"
    reads_samples = False
    params = {"population": Param("str", None, "optional expression naming each sample's population")}

    def layout(self, args, round_):
        raise PlanningError("heterozygosity runs as SQL aggregates")

    def drive(self, args, run):
        import allel

        pop = args.get("population")
        sel = ["g.variant_id AS variant_id", "allele_count(g.dosage) AS ac", "allele_number(g.dosage) AS an",
               "het_count(g.dosage) AS het",
               "het_count(g.dosage) + hom_ref_count(g.dosage) + hom_alt_diploid_count(g.dosage) AS n_diploid"]
        group = ["g.variant_id"]
        if pop:
            parse_expression(pop, "population")
            sel.insert(1, f"({pop}) AS population")
            group.append(f"({pop})")
        t = run.sql(_genotype_sql(sel, args, [], group))
        ids = t.column("variant_id").to_pylist()
        ac, an = _col(t, "ac").astype(np.int64), _col(t, "an").astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            af = np.column_stack([1 - ac / an, ac / an])
            he = allel.heterozygosity_expected(af, ploidy=2)
            nd = _col(t, "n_diploid").astype(np.float64)
            ho = _col(t, "het") / nd
            f = 1 - ho / he
        cols: dict[str, Any] = {}
        if pop:
            cols["population"] = t.column("population")
        cols |= {"n": _col(t, "n_diploid").astype(np.int64), "alt_freq": af[:, 1], "het_observed": ho, "het_expected": he, "f": f}
        return _finish(ids, cols)


ANALYSES: dict[str, Analysis] = {a.name: a for a in (AssocCaseControl(), GwasLinear(), GwasLogistic(), LdR2(), Pca(), Fst(), Heterozygosity())}

# the synthetic-data rounds (genomics/synth.py) are analyses too, validated and run like these:
# that module registers them here when it is imported
from . import synth as _synth  # noqa: E402, F401
