"""The sample sets behind a fragment, for the node's differencing (tracker) defence.

A release is a function of *who* is counted: the set of samples behind each group (cell). The
node computes these sets itself, from the fragment's own FROM/JOIN/WHERE, and compares them with
the sets it has already released to the same researcher (:mod:`genofed.privacy.tracker`).

Each set comes with a *definition*: the canonical conjuncts that select it (the WHERE and join
conditions with table aliases replaced by table names, plus ``key = value`` for a group). Two
queries with the same definition select the same people by construction; two different
definitions that select the same people reveal that the difference between the predicates is
empty (everyone in a group shares a value), which the tracker treats as a difference of zero.

Variant-only conditions and group keys (``variant_id``, ``chrom``, ``pos``, ...) do not change
who is counted, so they are left out of the sets and definitions, unless the query also filters
or groups on genotype values (``dosage``, ...), when the set is the carriers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlglot import exp

from .schema import GENOTYPE_VARIANT_COLUMNS, SAMPLE_ID
from .sqlcheck import DIALECT

GENOTYPE_VALUE_COLUMNS = ("dosage", "phased", "ploidy")


@dataclass
class SampleSets:
    """Sample sets of one fragment: one per group of its sample-level keys (one in all when it
    has none), as sorted store row indices (``sidx``)."""

    keys: list[str]  # the fragment's sample-level key columns
    cells: list[tuple]  # key values of each set
    members: list[np.ndarray]  # sidx of each set
    base: list[str]  # canonical conjuncts shared by every set
    key_sql: dict[str, str] = field(default_factory=dict)  # key column -> canonical expression

    def definition(self, i: int) -> list[str]:
        """Canonical definition of set ``i``: the base conjuncts and its key values."""
        extra = []
        for name, value in zip(self.keys, self.cells[i], strict=True):
            expr = self.key_sql[name]
            extra.append(f"{expr} IS NULL" if value is None else f"{expr} = {exp.convert(value).sql(DIALECT)}")
        return sorted(set(self.base) | set(extra))

    def union(self) -> np.ndarray:
        return np.unique(np.concatenate(self.members)) if self.members else np.zeros(0, np.int64)


@dataclass
class SampleSetPlan:
    """How to compute a fragment's sample sets: the DISTINCT (keys, sample_id) query."""

    select: exp.Select  # SELECT DISTINCT <sample keys> AS _k.., <sample_id> AS _sid FROM ... WHERE ...
    keys: list[str]
    base: list[str]
    key_sql: dict[str, str]
    genotype_values: bool  # the set depends on genotype values: read every selected variant


def plan_sample_sets(select: exp.Select, keys: list[str], sample_id: exp.Column | None) -> SampleSetPlan | None:
    """The sample-set query of a validated fragment, or None when it reads no sample data."""
    if sample_id is None:
        return None
    sources = _sources(select)
    names = {alias: src.name if isinstance(src, exp.Table) else _subquery_name(src) for alias, src in sources.items()}
    g_aliases = {a for a, s in sources.items() if isinstance(s, exp.Table) and s.name == "genotypes"}
    v_aliases = {a for a, s in sources.items() if isinstance(s, exp.Table) and s.name == "variants"}
    nested_genotypes = any(t.name == "genotypes" for t in select.find_all(exp.Table)
                           if t.find_ancestor(exp.Select) is not select)

    def side(e: exp.Expression) -> str:
        """'v' variant-only, 'g' touches genotype values, 's' otherwise."""
        cols = list(e.find_all(exp.Column))
        if any(c.table in g_aliases and c.name in GENOTYPE_VALUE_COLUMNS for c in cols):
            return "g"
        if cols and all((c.table in g_aliases and c.name in GENOTYPE_VARIANT_COLUMNS) or c.table in v_aliases for c in cols):
            return "v"
        return "s"

    where = select.args.get("where")
    conjuncts = _conjuncts(where.this) if where is not None else []
    for j in select.args.get("joins") or []:
        on = j.args.get("on")
        if on is not None:
            conjuncts += [c for c in _conjuncts(on) if not _sample_id_equality(c)]
    key_exprs = {p.alias_or_name: p.unalias() for p in select.expressions if p.alias_or_name in keys}
    genotype_values = nested_genotypes or any(side(c) == "g" for c in conjuncts) or any(side(e) == "g" for e in key_exprs.values())
    base = sorted({_canonical(c, names) for c in conjuncts if genotype_values or side(c) != "v"})
    base += sorted(f"source {n}" for n in names.values() if n.startswith("subquery:"))
    skeys = [k for k in keys if side(key_exprs[k]) != "v"]
    q = select.copy()
    q.set("expressions", [exp.alias_(key_exprs[k].copy(), k) for k in skeys] + [exp.alias_(sample_id.copy(), "_sid")])
    q.set("group", None)
    q.set("distinct", exp.Distinct())
    return SampleSetPlan(q, skeys, base, {k: _canonical(key_exprs[k], names) for k in skeys}, genotype_values)


def _sources(select: exp.Select) -> dict[str, exp.Expression]:
    frm = select.args.get("from_") or select.args.get("from")
    out: dict[str, exp.Expression] = {}
    for src in ([frm.this] if frm is not None else []) + [j.this for j in select.args.get("joins") or []]:
        out[src.alias_or_name] = src
    ctes = {c.alias_or_name: c.this for c in select.find_all(exp.CTE)}
    for alias, src in list(out.items()):
        if isinstance(src, exp.Table) and src.name in ctes:
            out[alias] = exp.Subquery(this=ctes[src.name].copy())
    return out


def _subquery_name(src: exp.Expression) -> str:
    body = src.this if isinstance(src, exp.Subquery) else src
    return "subquery:" + _strip_aliases(body).sql(DIALECT)


def _strip_aliases(e: exp.Expression) -> exp.Expression:
    """A subquery body with table aliases replaced by table names (so alias choice does not
    change a definition)."""
    e = e.copy()
    for sel in e.find_all(exp.Select):
        names = {a: s.name for a, s in _sources(sel).items() if isinstance(s, exp.Table)}
        for c in sel.find_all(exp.Column):
            if c.table in names:
                c.set("table", exp.to_identifier(names[c.table]))
        for t in sel.find_all(exp.Table):
            t.set("alias", None)
    return e


def _canonical(e: exp.Expression, names: dict[str, str]) -> str:
    e = e.copy()
    for c in e.find_all(exp.Column):
        if c.table in names:
            c.set("table", exp.to_identifier(names[c.table]))
    return e.sql(DIALECT)


def _sample_id_equality(e: exp.Expression) -> bool:
    return (isinstance(e, exp.EQ) and isinstance(e.this, exp.Column) and isinstance(e.expression, exp.Column)
            and e.this.name == SAMPLE_ID and e.expression.name == SAMPLE_ID)


def _conjuncts(e: exp.Expression) -> list[exp.Expression]:
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    if isinstance(e, exp.Paren):
        return _conjuncts(e.this)
    return [e]


def referenced_columns(select: exp.Select) -> set[str]:
    """``table.column`` (lower case) of every catalog-table column a qualified fragment reads,
    in any of its scopes (CTEs and subqueries included)."""
    out: set[str] = set()
    for sel in [select, *(s for s in select.find_all(exp.Select) if s is not select)]:
        names = {a: s.name for a, s in _sources(sel).items() if isinstance(s, exp.Table)}
        for c in sel.find_all(exp.Column):
            if c.table in names and c.find_ancestor(exp.Select) is sel:
                out.add(f"{names[c.table]}.{c.name}".lower())
    return out
