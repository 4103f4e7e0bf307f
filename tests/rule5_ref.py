"""Rule 5's prediction for per-variant analyses, computed independently of genofed from the pooled
genotypes (numpy): which variants a federation must withhold because a released cell rests on
fewer than k carriers of an allele, or an allele count is below the minimum (default k)."""

from __future__ import annotations

import numpy as np


def carriers(g: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per variant, the people in ``cell`` carrying the ALT allele and the REF allele (diploid calls)."""
    x = g[:, cell]
    return (x >= 1).sum(axis=1), ((x <= 1) & ~np.isnan(x)).sum(axis=1)


def node_cells(y: np.ndarray, analysed: np.ndarray, here: np.ndarray) -> list[np.ndarray]:
    """A node's two cells: its analysed people whose phenotype is not the node's lowest value,
    and those for whom it is not the highest (cases and controls for a 0/1 phenotype)."""
    m = analysed & here
    return [m & (y != np.min(y[m])), m & (y != np.max(y[m]))]


def lanes(g: np.ndarray, y: np.ndarray, analysed: np.ndarray, here: np.ndarray) -> list[np.ndarray]:
    """Rule 5's counts at one node, per variant: carriers of each allele in each cell, and the
    ALT and REF allele counts over the analysed people."""
    out = [c for cell in node_cells(y, analysed, here) for c in carriers(g, cell)]
    x = g[:, analysed & here]
    ac = np.nansum(x, axis=1)
    return [*out, ac, 2 * (~np.isnan(x)).sum(axis=1) - ac]


def rule5_withheld(g: np.ndarray, y: np.ndarray, analysed: np.ndarray, node: np.ndarray, mode: str, k: int = 5) -> np.ndarray:
    """Variants [rows of the dosage matrix ``g``: variants x samples, NaN missing] rule 5 withholds:
    every lane at least ``k`` (0 fails), on the federation-wide sums of the nodes' counts under
    mpc/he, on every node's own counts in plain mode (a variant one node withholds is withheld
    everywhere). ``y``, ``analysed`` and ``node`` are per sample."""
    per_node = [lanes(g, y, analysed, node == n) for n in np.unique(node) if (analysed & (node == n)).any()]
    if mode != "plain":
        return np.any([sum(ls) < k for ls in zip(*per_node, strict=True)], axis=0)
    return np.any([lane < k for ls in per_node for lane in ls], axis=0)


def predict_pooled(con, where: str, phenotype: str, covariates: list[str], mode: str, k: int = 5) -> dict[str, bool]:
    """{variant_id: withheld} for a per-variant analysis over the variants ``WHERE <where>`` of a
    pooled DuckDB (tables ``genotypes``, ``variants``, ``phenotypes`` and ``split(sample_id, node)``):
    ``phenotype`` and ``covariates`` are ``phenotypes`` columns (complete cases are analysed)."""
    ids = [r[0] for r in con.sql(f"SELECT variant_id FROM variants WHERE {where} ORDER BY pos, variant_id").fetchall()]
    cols = ", ".join(f"p.{c}" for c in [phenotype, *covariates])
    people = con.sql(f"SELECT p.sample_id, split.node, {cols} FROM phenotypes p JOIN split USING (sample_id) ORDER BY 1").fetchall()
    col = {r[0]: i for i, r in enumerate(people)}
    row = {v: i for i, v in enumerate(ids)}
    g = np.full((len(ids), len(people)), np.nan)
    for v, s, d in con.sql(f"SELECT g.variant_id, g.sample_id, g.dosage FROM genotypes g JOIN variants v USING (variant_id) "
                           f"WHERE {' AND '.join('v.' + c.strip() for c in where.split(' AND '))}").fetchall():
        if d is not None and s in col:
            g[row[v], col[s]] = d
    y = np.array([np.nan if r[2] is None else float(r[2]) for r in people])
    analysed = np.array([all(x is not None for x in r[2:]) for r in people])
    node = np.array([r[1] for r in people])
    return dict(zip(ids, (bool(w) for w in rule5_withheld(g, y, analysed, node, mode, k)), strict=True))


def cells_withheld(per_node, keys: list[str], mode: str, k: int = 5) -> set[tuple]:
    """Released SQL cells rule 5 withholds (allele counts of one variant per cell): ``per_node`` is
    a DataFrame with the cell ``keys``, ``node``, ``ac`` (ALT copies) and ``an`` (alleles called)
    of each cell's people at each node that has any. Under mpc/he a cell is withheld when its
    federation-wide ALT or REF count is below ``k`` (0 included); in plain mode when some node's
    own count is (that node withholds it, and the coordinator withholds it everywhere)."""
    d = per_node.assign(ref=per_node["an"] - per_node["ac"])
    if mode != "plain":
        s = d.groupby(keys)[["ac", "ref"]].sum()
        bad = s[(s["ac"] < k) | (s["ref"] < k)]
    else:
        bad = d[(d["ac"] < k) | (d["ref"] < k)].set_index(keys)
    return {tuple(i) if isinstance(i, tuple) else (i,) for i in bad.index}
