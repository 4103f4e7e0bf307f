"""Differential privacy at the node: which fragments can be noised, their sensitivity, the noise.

A node noises its own partial table before it leaves in any combine mode (in the clear for
``plain``, as secret shares for ``mpc``, encrypted for ``he``), so no party ever holds an
un-noised total, and each node's release is (ε, δ)-DP with respect to its own samples; the
federated sum is post-processing. The noise itself comes from OpenDP (:mod:`genofed.privacy.dp`).

Sensitivity: adding or removing one sample changes each partial by at most its per-row bound
``c`` (COUNT: 1, COUNT(DISTINCT sample_id): 1, SUM of a column clamped to the policy's bounds:
``max(|lo|, |hi|)``, allele counts: 2, genotype-class counts: 1; plus the node's own ``_n``: 1),
times the rows one sample can have: one per selected variant when genotypes are read, times the
most rows a sample has in each joined clinical table. When every row falls into its own
``variant_id`` group the L2 sensitivity is ``sqrt(V · Σc²)`` instead of ``V · Σc``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from genofed.engine.errors import ConfigError, DisclosureError
from genofed.engine.protocol import N_COLUMN

from .dp import Mechanism, add_noise, provenance
from .ledger import MAX_EPSILON

# per-row bound of each genomic aggregate (a diploid sample contributes at most this per variant)
_GENOMIC = {"allele_count": 2, "allele_number": 2, "het_count": 1, "hom_alt_count": 1, "hom_ref_count": 1,
            "hom_alt_diploid_count": 1, "call_count": 1, "missing_count": 1}


@dataclass
class DPPolicy:
    """``[dp]`` in node.toml."""

    required: bool = False  # every release is noised (queries without dp get the defaults)
    mechanism: str = "laplace"
    epsilon: float = 1.0  # default per release
    delta: float = 0.0
    max_epsilon: float = 1.0  # per release
    budget_epsilon: float = 10.0  # per researcher at this node
    budget_delta: float = 1e-6
    bounds: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # "table.column" -> (lo, hi)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> DPPolicy:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{where}: unknown [dp] keys {sorted(unknown)}; known: {sorted(known)}")
        bounds: dict[str, tuple[float, float]] = {}
        for col, b in (d.get("bounds") or {}).items():
            if (col.count(".") != 1 or not isinstance(b, list) or len(b) != 2
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in b) or not b[0] < b[1]):
                raise ConfigError(f"{where}: [dp] bounds: {col!r} must be \"table.column\" = [low, high] with low < high, got {b!r}")
            bounds[col.lower()] = (float(b[0]), float(b[1]))
        for key in ("epsilon", "max_epsilon", "budget_epsilon"):
            v = d.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v <= MAX_EPSILON):
                raise ConfigError(f"{where}: [dp] {key} must be a number in (0, {MAX_EPSILON:g}], got {v!r}")
        for key in ("delta", "budget_delta"):
            v = d.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 <= v < 1):
                raise ConfigError(f"{where}: [dp] {key} must be a number in [0, 1), got {v!r}")
        pol = cls(**{**{k: v for k, v in d.items() if k != "bounds"}, "bounds": bounds})
        try:
            Mechanism(pol.mechanism, pol.epsilon, pol.delta)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ConfigError(f"{where}: [dp] {e}") from None
        return pol

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        return d

    def mechanism_for(self, request: dict[str, Any] | None) -> Mechanism | None:
        """The mechanism for one release: the researcher's request (bounded by ``max_epsilon``),
        the defaults when the policy requires DP, or None (no noise)."""
        if not request and not self.required:
            return None
        req = request or {}
        if not isinstance(req, dict):
            raise DisclosureError("malformed dp request: expected {epsilon, delta, mechanism}", rule="dp_request")
        kind = req.get("mechanism", self.mechanism)
        eps = req.get("epsilon", self.epsilon)
        delta = req.get("delta", self.delta if kind == self.mechanism else (1e-6 if kind == "gaussian" else 0.0))
        try:
            mech = Mechanism(kind, eps, delta)
        except ConfigError as e:
            raise DisclosureError(f"dp request refused: {e}", rule="dp_request") from None
        if mech.epsilon > self.max_epsilon:
            raise DisclosureError(f"dp request refused: epsilon {mech.epsilon:g} is above this node's per-query maximum "
                                  f"{self.max_epsilon:g}", rule="dp_request")
        return mech


@dataclass
class DPPlan:
    fragment: Any  # the fragment with SUMs clamped to their bounds
    l1: int
    l2: float
    rows_per_sample: int


def plan_dp(frag: Any, policy: DPPolicy, variants_selected: int | None, clinical_multiplicity: dict[str, int]) -> DPPlan:
    """Sensitivity of a validated SQL fragment, and the fragment with SUMs clamped; raises
    :class:`DisclosureError` (rule ``dp_unsupported``) for what cannot be noised soundly."""
    if not hasattr(frag, "select"):
        from genofed.genomics.analyses import ANALYSES

        sens = getattr(ANALYSES.get(frag.fn), "dp_sensitivity", None)
        if sens is None:
            raise DisclosureError(f"differential privacy is not available for {frag.fn}() yet (only for synthetic-data "
                                  "training among the analyses); run it without dp at a node whose policy does not "
                                  "require it", rule="dp_unsupported")
        l1, l2 = sens(frag, variants_selected or 0)
        return DPPlan(frag, int(l1), float(l2), max(1, variants_selected or 0))
    sel = frag.select.copy()
    from genofed.engine.samplesets import _sources

    names = {a: s.name for a, s in _sources(sel).items() if isinstance(s, exp.Table)}
    g_aliases = {a for a, n in names.items() if n == "genotypes"}
    bounds_c: list[float] = []
    for p in sel.expressions:
        name = p.alias_or_name
        if name not in frag.partials:
            continue
        body = p.unalias()
        c, clamped = _per_row(body, names, g_aliases, policy)
        bounds_c.append(c)
        if clamped is not None:
            p.replace(exp.alias_(clamped, name))
    bounds_c.append(1.0)  # the node's own _n
    if any(s is not sel for s in sel.find_all(exp.Select)):
        raise DisclosureError("differential privacy needs a fragment without subqueries or CTEs (their rows per sample "
                              "cannot be bounded); rewrite the query as one SELECT", rule="dp_unsupported")
    _check_person_joins(sel, names)
    # rows one person can have in the join: the product over every table *occurrence* (a
    # self-join of genotypes repeats each genotype row once per row of the other copy)
    mult = 1
    v = max(1, variants_selected or 0)
    for n in names.values():
        if n == "genotypes":
            mult *= v
        elif n not in ("samples", "variants"):
            mult *= max(1, clinical_multiplicity.get(n, 1))
    per_variant = False
    if g_aliases:
        key_cols = [p.unalias() for p in sel.expressions if p.alias_or_name in frag.keys]
        per_variant = len(g_aliases) == 1 and any(isinstance(k, exp.Column) and k.name == "variant_id" for k in key_cols)
    c1 = sum(math.ceil(c) for c in bounds_c)
    l1 = int(mult * c1)
    if per_variant and mult > 1:
        l2 = math.sqrt(mult * sum(math.ceil(c) ** 2 for c in bounds_c))
    else:
        l2 = float(l1)
    return DPPlan(dataclasses.replace(frag, select=sel), l1, l2, mult)


def _check_person_joins(sel: exp.Select, names: dict[str, str]) -> None:
    """Rule 8: every table holding people's rows must be joined to the others on ``sample_id``
    (so a person's rows never meet other people's rows); ``variants`` joins a genotypes copy on
    ``variant_id``. Anything else (a join on a value, on ``variant_id`` between two genotype
    copies) repeats other people's rows into one person's contribution, beyond any bound the
    sensitivity could assume from the query's tables."""
    parent = {a: a for a in names}

    def find(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    conds: list[Any] = []  # sqlglot types flatten() as Iterator[Expr]
    where = sel.args.get("where")
    if where is not None:
        conds += list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    for j in sel.args.get("joins") or []:
        on = j.args.get("on")
        if on is not None:
            conds += list(on.flatten()) if isinstance(on, exp.And) else [on]
    variant_linked: set[str] = set()
    for c in conds:
        if isinstance(c, exp.EQ) and isinstance(c.this, exp.Column) and isinstance(c.expression, exp.Column):
            a, b = c.this.table, c.expression.table
            if a in names and b in names and c.this.name == c.expression.name == "sample_id":
                parent[find(a)] = find(b)
            elif a in names and b in names and c.this.name == c.expression.name == "variant_id":
                for x, y in ((a, b), (b, a)):
                    if names[x] == "variants" and names[y] == "genotypes":
                        variant_linked.add(x)
    people = [a for a, n in names.items() if n != "variants"]
    if len({find(a) for a in people}) > 1 or any(a not in variant_linked for a, n in names.items() if n == "variants" and people):
        raise DisclosureError("differential privacy needs every table joined on sample_id (and variants to genotypes on "
                              "variant_id): another join repeats other people's rows into one person's contribution, so no "
                              "sensitivity bound holds; join on sample_id", rule="dp_unsupported")


def _per_row(body: exp.Expression, names: dict[str, str], g_aliases: set[str], policy: DPPolicy) -> tuple[float, exp.Expression | None]:
    def unwrap(x: exp.Expression) -> exp.Expression:
        while isinstance(x, exp.Cast):
            x = x.this
        return x

    if isinstance(body, exp.Count):
        return 1.0, None
    if isinstance(body, exp.Anonymous) and body.name.lower() in _GENOMIC:
        return float(_GENOMIC[body.name.lower()]), None
    if isinstance(body, exp.Sum):
        arg = unwrap(body.this)
        if isinstance(arg, exp.Column) and arg.table in g_aliases and arg.name == "dosage":
            return 2.0, None
        if (isinstance(arg, exp.Mul) and all(isinstance(unwrap(x), exp.Column) and unwrap(x).name == "dosage" for x in (arg.this, arg.expression))):
            return 4.0, None
        left = unwrap(arg.this) if isinstance(arg, exp.Mul) else None
        right = unwrap(arg.expression) if isinstance(arg, exp.Mul) else None
        if (isinstance(left, exp.Column) and isinstance(right, exp.Column) and left.sql() == right.sql()
                and left.table in names):
            col_e = left
            col = f"{names[col_e.table]}.{col_e.name}".lower()
            if col in policy.bounds:  # a sum of squares (VAR/STDDEV): x² clamped through x's bounds
                lo, hi = policy.bounds[col]
                cl = exp.func("LEAST", exp.func("GREATEST", col_e.copy(), exp.convert(lo)), exp.convert(hi))
                sq = exp.Mul(this=cl, expression=cl.copy())
                return max(lo * lo, hi * hi) + 1.0, exp.Sum(this=exp.func("ROUND", sq))
        if isinstance(arg, exp.Column) and arg.table in names:
            col = f"{names[arg.table]}.{arg.name}".lower()
            if col in policy.bounds:
                lo, hi = policy.bounds[col]
                clamped = exp.func("LEAST", exp.func("GREATEST", arg.copy(), exp.convert(lo)), exp.convert(hi))
                # rounding each value to an integer changes a sum by at most 0.5 per row: +1 covers it
                return max(abs(lo), abs(hi)) + 1.0, exp.Sum(this=exp.func("ROUND", clamped))
            raise DisclosureError(f"differential privacy needs bounds for SUM/AVG of {col}: the data steward sets them in "
                                  "the node's [dp] bounds", rule="dp_unsupported")
    raise DisclosureError(f"differential privacy can noise COUNT, SUM/AVG of a bounded column and genomic counts, not "
                          f"{body.sql()[:80]}", rule="dp_unsupported")


def noise_table(table: pa.Table, frag: Any, mech: Mechanism, plan: DPPlan) -> tuple[pa.Table, dict[str, Any]]:
    """The partial table with every partial and ``_n`` noised in one OpenDP measurement (NULLs count
    as 0, counts are clipped at 0 afterwards: post-processing)."""
    cols = [c for c in [*frag.partials, N_COLUMN] if c in table.column_names]
    blocks = []
    for c in cols:
        col = table.column(c)
        arr = pc.fill_null(col, 0)
        if pa.types.is_floating(col.type):
            arr = pc.round(arr)
        blocks.append(np.asarray(pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False), np.int64))
    flat = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
    noisy = add_noise(flat, mech, plan.l1, plan.l2)
    out = table
    at = 0
    for c in cols:
        n = table.num_rows
        vals = noisy[at: at + n]
        at += n
        col = table.column(c)
        if hasattr(frag, "select"):
            body = next((p.unalias() for p in frag.select.expressions if p.alias_or_name == c), None)
            nonneg = isinstance(body, (exp.Count, exp.Anonymous))
        else:  # an analysis round: its count columns
            nonneg = c in frag.counts
        if c == N_COLUMN or nonneg:
            vals = np.maximum(vals, 0)
        new = pa.array(vals, pa.int64())
        out = out.set_column(out.column_names.index(c), c, new.cast(col.type, safe=False) if not pa.types.is_decimal(col.type) else new.cast(col.type))
    return out, provenance(mech, plan.l1, plan.l2)
