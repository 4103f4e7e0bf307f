"""The federated schema (a contract) and the catalog the nodes report."""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLE_ID = "sample_id"
VARIANT_ID = "variant_id"

CORE_TABLES: dict[str, dict[str, str]] = {
    "samples": {"sample_id": "VARCHAR"},
    "variants": {
        "variant_id": "VARCHAR",
        "chrom": "VARCHAR",
        "pos": "BIGINT",
        "ref": "VARCHAR",
        "alt": "VARCHAR",
        "rsid": "VARCHAR",
        "qual": "DOUBLE",
        "filter": "VARCHAR",
    },
    "genotypes": {
        "sample_id": "VARCHAR",
        "variant_id": "VARCHAR",
        "chrom": "VARCHAR",
        "pos": "BIGINT",
        "ref": "VARCHAR",
        "alt": "VARCHAR",
        "dosage": "TINYINT",
        "phased": "BOOLEAN",
        "ploidy": "TINYINT",
    },
}

# columns of `genotypes` that describe the variant, not the call
GENOTYPE_VARIANT_COLUMNS = ("variant_id", "chrom", "pos", "ref", "alt")

# genomic aggregate functions (SQL names, lower case) and what they mean
GENOMIC_AGGREGATES: dict[str, str] = {
    "allele_count": "copies of the ALT allele among called alleles",
    "allele_number": "called alleles (ploidy-aware; missing calls excluded)",
    "allele_freq": "allele_count / allele_number",
    "het_count": "diploid calls with exactly one ALT copy",
    "hom_alt_count": "calls whose every called allele is this ALT",
    "hom_ref_count": "diploid calls with no copy of this ALT",
    "hom_alt_diploid_count": "diploid calls with two copies of this ALT",
    "hwe_p": "exact Hardy–Weinberg p (Wigginton 2005) on the federation-wide diploid genotype counts",
    "call_rate": "count(dosage) / count(*)",
}


@dataclass
class Catalog:
    """Tables and column types every node of a federation exposes.

    ``tables`` maps a table name to ``{column: duckdb type}``. ``variants_digest`` maps node name
    to a digest of that node's variant list (used for queries over ``variants`` alone).
    """

    tables: dict[str, dict[str, str]]
    variants_digest: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    policies: dict[str, dict] = field(default_factory=dict)  # node -> announced model policy

    def sample_tables(self) -> set[str]:
        """Tables holding one or more rows per sample (everything but ``variants``)."""
        return {t for t, cols in self.tables.items() if SAMPLE_ID in cols}

    @classmethod
    def merge(cls, per_node: dict[str, dict]) -> Catalog:
        """The catalog of a federation: tables and columns present, with one type, at every node."""
        names = list(per_node)
        if not names:
            return cls({})
        first = per_node[names[0]]["tables"]
        tables: dict[str, dict[str, str]] = {}
        notes: list[str] = []
        for t, cols in first.items():
            if not all(t in per_node[n]["tables"] for n in names):
                notes.append(f"table {t!r} is not at every node and is not queryable")
                continue
            merged = {}
            for c, typ in cols.items():
                types = {per_node[n]["tables"][t].get(c) for n in names}
                if types == {typ}:
                    merged[c] = typ
                else:
                    notes.append(f"column {t}.{c} differs between nodes ({sorted(map(str, types))}) and is not queryable")
            tables[t] = merged
        digests = {n: per_node[n].get("variants_digest", "") for n in names}
        policies = {n: dict(per_node[n].get("model_policy") or {}) for n in names}
        return cls(tables, digests, notes, policies)

    def model_policy(self) -> dict[str, float]:
        """The strictest model-disclosure rules the nodes announced (defaults where none did)."""
        out: dict[str, float] = {}
        for p in self.policies.values():
            for k in ("min_cases", "min_controls"):
                if k in p:
                    out[k] = max(out.get(k, 0.0), float(p[k]))
            if "glm_max_param_ratio" in p:
                out["glm_max_param_ratio"] = min(out.get("glm_max_param_ratio", 1.0), float(p["glm_max_param_ratio"]))
        return {"min_cases": 5.0, "min_controls": 5.0, "glm_max_param_ratio": 0.33} | out
