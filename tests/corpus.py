"""Hand-written SQL corpus for federated-vs-pooled equivalence tests.

Setting: the 1000 Genomes 1126-sample set split over three nodes
(``suggested_3node_split.tsv``), sample sheet ``samples_1126.tsv`` ingested as ``samples``
(columns ``sample_id, family_id, population, population_description, sex ('M'/'F'),
outcome DOUBLE, status BIGINT 0/1``), genotypes/variants from the VCF, and the clinical table
``phenotypes`` written by ``fixtures_data.make_phenotypes_1126`` (``sample_id, age, bmi, ldl,
smoker, outcome, status``; ``bmi`` and ``ldl`` have ~2 % NULLs).

``CORPUS``
    (id, SQL) pairs; every query is an aggregate query genofed should answer.  Run federated,
    each must equal the pooled oracle's answer to ``oracle.to_pooled_sql(sql)`` (floating
    results up to rounding).  Any ``ORDER BY ... LIMIT`` is fully deterministic (ties are
    broken by the group keys).  Each returns at least one row on the pooled oracle, except the
    ids in ``EMPTY_RESULT_IDS``.
    Genotype queries are restricted to a chromosome or region to stay fast.
    Queries over ``variants`` alone are deliberately absent: every node holds the same sites,
    so their federated meaning (replicated table vs. per-node sum) is a separate decision.

``CORPUS_REFUSED``
    (id, SQL, expected error class name from ``genofed.engine.errors``).  The MIN/MAX entries
    assume a policy that disallows extreme values (the default for 1126 tests).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CORPUS",
    "CORPUS_REFUSED",
    "EMPTY_RESULT_IDS",
    "GLOBAL_ON_EMPTY_IDS",
    "MULTIALLELIC_22",
    "check_corpus",
]

#: chr22 positions of multi-allelic records in the 1126 set (split into several variants rows).
MULTIALLELIC_22: tuple[int, ...] = (22085620, 23016531, 38398934, 48980315)

_AFR = "('YRI', 'LWK', 'ACB', 'ASW')"
_EAS = "('CHB', 'JPT')"
_EUR = "('CEU', 'GBR')"
_AMR = "('CLM', 'MXL', 'PUR')"

CORPUS: list[tuple[str, str]] = [
    # ---------------------------------------------------------------- samples only
    ("s_count", "SELECT count(*) AS n FROM samples"),
    (
        "s_by_population",
        "SELECT population, count(*) AS n, avg(outcome) AS mean_outcome "
        "FROM samples GROUP BY population ORDER BY population",
    ),
    (
        "s_by_population_sex",
        "SELECT population, sex, count(*) AS n, sum(status) AS cases, avg(outcome) AS mean_outcome "
        "FROM samples GROUP BY population, sex ORDER BY population, sex",
    ),
    (
        "s_outcome_moments",
        "SELECT count(outcome) AS n, sum(outcome) AS s, avg(outcome) AS mean, "
        "var_samp(outcome) AS vs, var_pop(outcome) AS vp, "
        "stddev_samp(outcome) AS sds, stddev_pop(outcome) AS sdp FROM samples",
    ),
    (
        "s_where_in_list",
        f"SELECT sex, count(*) AS n, avg(outcome) AS mean_outcome FROM samples "
        f"WHERE population IN {_EUR} GROUP BY sex ORDER BY sex",
    ),
    (
        "s_case_super_pop_alias",
        f"SELECT CASE WHEN population IN {_AFR} THEN 'AFR' WHEN population IN {_EAS} THEN 'EAS' "
        f"WHEN population IN {_EUR} THEN 'EUR' WHEN population IN {_AMR} THEN 'AMR' "
        "ELSE 'SAS' END AS super_pop, count(*) AS n, avg(outcome) AS mean_outcome, "
        "sum(status) AS cases FROM samples GROUP BY super_pop ORDER BY super_pop",
    ),
    (
        "s_case_expression_group",
        f"SELECT CASE WHEN population IN {_AFR} THEN 'AFR' ELSE 'non-AFR' END AS afr, sex, "
        "count(*) AS n FROM samples "
        f"GROUP BY CASE WHEN population IN {_AFR} THEN 'AFR' ELSE 'non-AFR' END, sex "
        "ORDER BY afr, sex",
    ),
    (
        "s_having_count",
        "SELECT population, count(*) AS n FROM samples GROUP BY population "
        "HAVING count(*) >= 100 ORDER BY n DESC, population",
    ),
    (
        "s_having_avg",
        "SELECT population, avg(outcome) AS m, count(*) AS n FROM samples GROUP BY population "
        "HAVING avg(outcome) > 10 AND count(*) > 50 ORDER BY population",
    ),
    (
        "s_order_limit",
        "SELECT population, avg(outcome) AS m FROM samples GROUP BY population "
        "ORDER BY m DESC, population LIMIT 5",
    ),
    (
        "s_limit_offset",
        "SELECT population, count(*) AS n FROM samples GROUP BY population "
        "ORDER BY n DESC, population LIMIT 5 OFFSET 3",
    ),
    (
        "s_distinct_group",
        "SELECT DISTINCT sex, count(*) AS n FROM samples GROUP BY sex ORDER BY sex",
    ),
    (
        "s_count_distinct_sample",
        "SELECT population, count(DISTINCT sample_id) AS n_samples, count(family_id) AS n_fam "
        "FROM samples GROUP BY population ORDER BY population",
    ),
    (
        "s_arithmetic_over_aggregates",
        "SELECT sex, sum(status) * 1.0 / count(*) AS case_fraction, "
        "avg(outcome) - 10 AS centred_mean, 100.0 * count(*) / 1126 AS pct, "
        "sqrt(var_samp(outcome) / count(outcome)) AS se_mean "
        "FROM samples GROUP BY sex ORDER BY sex",
    ),
    (
        "s_bivariate",
        "SELECT corr(outcome, status) AS r, covar_samp(outcome, status) AS cs, "
        "covar_pop(outcome, status) AS cp, regr_slope(outcome, status) AS b1, "
        "regr_intercept(outcome, status) AS b0, regr_r2(outcome, status) AS r2 FROM samples",
    ),
    (
        "s_conditional_avg_diff",
        "SELECT avg(CASE WHEN sex = 'F' THEN outcome END) - "
        "avg(CASE WHEN sex = 'M' THEN outcome END) AS f_minus_m, "
        "sum(CASE WHEN status = 1 THEN 1 ELSE 0 END) AS cases FROM samples",
    ),
    (
        "s_empty_grouped",
        "SELECT population, count(*) AS n FROM samples WHERE population = 'XXX' "
        "GROUP BY population ORDER BY population",
    ),
    (
        "s_empty_global",
        "SELECT count(*) AS n, sum(outcome) AS s, avg(outcome) AS m FROM samples "
        "WHERE outcome > 1e9",
    ),
    # ---------------------------------------------------------------- phenotypes only
    (
        "p_summary_nulls",
        "SELECT count(*) AS n, count(bmi) AS n_bmi, count(ldl) AS n_ldl, avg(bmi) AS mean_bmi, "
        "avg(ldl) AS mean_ldl, stddev_samp(ldl) AS sd_ldl, sum(smoker) AS smokers "
        "FROM phenotypes",
    ),
    (
        "p_by_smoker",
        "SELECT smoker, count(*) AS n, avg(ldl) AS mean_ldl, var_pop(bmi) AS vp_bmi, "
        "var_samp(age) AS vs_age FROM phenotypes GROUP BY smoker ORDER BY smoker",
    ),
    (
        "p_regression_ldl_age",
        "SELECT regr_slope(ldl, age) AS b1, regr_intercept(ldl, age) AS b0, "
        "regr_r2(ldl, age) AS r2, corr(ldl, bmi) AS r_ldl_bmi, covar_pop(ldl, bmi) AS cov "
        "FROM phenotypes",
    ),
    (
        "p_age_decade",
        "SELECT floor(age / 10) * 10 AS decade, count(*) AS n, avg(ldl) AS mean_ldl "
        "FROM phenotypes GROUP BY floor(age / 10) * 10 ORDER BY decade",
    ),
    (
        "p_null_key_group",
        "SELECT CASE WHEN bmi >= 30 THEN 'obese' WHEN bmi < 30 THEN 'not_obese' END AS bmi_class, "
        "count(*) AS n, avg(ldl) AS mean_ldl, count(ldl) AS n_ldl FROM phenotypes "
        "GROUP BY CASE WHEN bmi >= 30 THEN 'obese' WHEN bmi < 30 THEN 'not_obese' END "
        "ORDER BY bmi_class NULLS LAST",
    ),
    (
        "p_is_null_group",
        "SELECT bmi IS NULL AS bmi_missing, count(*) AS n, avg(ldl) AS mean_ldl "
        "FROM phenotypes GROUP BY bmi IS NULL ORDER BY bmi_missing",
    ),
    (
        "p_coalesce_case_sum",
        "SELECT avg(coalesce(bmi, 27.0)) AS mean_bmi_imputed, "
        "sum(CASE WHEN ldl > 4 THEN 1 ELSE 0 END) AS high_ldl, count(*) AS n FROM phenotypes",
    ),
    (
        "p_where_is_null",
        "SELECT smoker, count(*) AS n FROM phenotypes WHERE ldl IS NULL OR bmi IS NULL "
        "GROUP BY smoker ORDER BY smoker",
    ),
    (
        "p_having_age",
        "SELECT age, count(*) AS n, avg(bmi) AS mean_bmi FROM phenotypes "
        "WHERE age BETWEEN 30 AND 60 GROUP BY age HAVING count(*) >= 20 ORDER BY age",
    ),
    # ---------------------------------------------------------------- samples x phenotypes
    (
        "sp_population_using",
        "SELECT s.population, count(*) AS n, avg(p.ldl) AS mean_ldl, avg(p.bmi) AS mean_bmi "
        "FROM samples s JOIN phenotypes p USING (sample_id) "
        "GROUP BY s.population ORDER BY s.population",
    ),
    (
        "sp_sex_smoker_on",
        "SELECT s.sex, p.smoker, count(*) AS n, avg(p.age) AS mean_age, stddev_pop(p.ldl) AS sd "
        "FROM samples s JOIN phenotypes p ON s.sample_id = p.sample_id "
        "GROUP BY s.sex, p.smoker ORDER BY s.sex, p.smoker",
    ),
    (
        "sp_regression_by_sex",
        "SELECT s.sex, regr_slope(p.ldl, p.age) AS b1, regr_intercept(p.ldl, p.age) AS b0, "
        "corr(p.bmi, s.outcome) AS r FROM samples s JOIN phenotypes p USING (sample_id) "
        "GROUP BY s.sex ORDER BY s.sex",
    ),
    (
        "sp_case_age_status",
        "SELECT CASE WHEN p.age < 40 THEN 'young' WHEN p.age < 60 THEN 'middle' ELSE 'old' END "
        "AS age_band, s.status, count(*) AS n, avg(s.outcome) AS mean_outcome "
        "FROM samples s JOIN phenotypes p USING (sample_id) "
        "GROUP BY age_band, s.status ORDER BY age_band, s.status",
    ),
    (
        "sp_in_subquery",
        "SELECT population, count(*) AS n, avg(outcome) AS mean_outcome FROM samples "
        "WHERE sample_id IN (SELECT sample_id FROM phenotypes WHERE smoker = 1) "
        "GROUP BY population ORDER BY population",
    ),
    (
        "sp_not_in_subquery",
        "SELECT sex, count(*) AS n FROM samples "
        "WHERE sample_id NOT IN (SELECT sample_id FROM phenotypes WHERE age >= 50) "
        "GROUP BY sex ORDER BY sex",
    ),
    (
        "sp_cte_nonaggregating",
        "WITH older AS (SELECT sample_id, ldl, bmi FROM phenotypes WHERE age >= 60) "
        "SELECT s.sex, count(*) AS n, avg(o.ldl) AS mean_ldl, var_samp(o.bmi) AS vs_bmi "
        "FROM older o JOIN samples s USING (sample_id) GROUP BY s.sex ORDER BY s.sex",
    ),
    # ---------------------------------------------------------------- genotypes (regions)
    (
        "g_count_chr22",
        "SELECT count(*) AS n_calls, count(dosage) AS n_called, sum(dosage) AS alt_alleles "
        "FROM genotypes WHERE chrom = '22'",
    ),
    (
        "g_af_region",
        "SELECT variant_id, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
        "allele_freq(dosage) AS af FROM genotypes "
        "WHERE chrom = '22' AND pos BETWEEN 16000000 AND 18000000 "
        "GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_het_hom_callrate",
        "SELECT variant_id, het_count(dosage) AS het, hom_alt_count(dosage) AS hom, "
        "call_rate(dosage) AS cr, count(*) AS n FROM genotypes "
        "WHERE chrom = '21' AND pos < 20000000 GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_population_x_variant",
        "SELECT s.population, g.variant_id, allele_count(g.dosage) AS ac, "
        "allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = '22' AND g.pos BETWEEN 17000000 AND 17500000 "
        "GROUP BY s.population, g.variant_id ORDER BY s.population, g.variant_id",
    ),
    (
        "g_population_x_variant_having_limit",
        "SELECT s.population, g.variant_id, allele_freq(g.dosage) AS af "
        "FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id "
        "WHERE g.chrom = '7' AND g.pos BETWEEN 100000000 AND 110000000 "
        "GROUP BY s.population, g.variant_id HAVING allele_count(g.dosage) >= 10 "
        "ORDER BY af DESC, s.population, g.variant_id LIMIT 20",
    ),
    (
        "g_chrX_by_sex",
        "SELECT s.sex, count(*) AS n, allele_count(g.dosage) AS ac, "
        "allele_number(g.dosage) AS an, allele_freq(g.dosage) AS af, "
        "het_count(g.dosage) AS het, hom_alt_count(g.dosage) AS hom "
        "FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = 'X' AND g.pos BETWEEN 3000000 AND 30000000 "
        "GROUP BY s.sex ORDER BY s.sex",
    ),
    (
        "g_chrX_par_vs_nonpar",
        "SELECT CASE WHEN g.pos < 2699520 THEN 'PAR1' ELSE 'nonPAR' END AS region, s.sex, "
        "allele_number(g.dosage) AS an, hom_alt_count(g.dosage) AS hom, "
        "het_count(g.dosage) AS het FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = 'X' AND g.pos < 10000000 "
        "GROUP BY CASE WHEN g.pos < 2699520 THEN 'PAR1' ELSE 'nonPAR' END, s.sex "
        "ORDER BY region, s.sex",
    ),
    (
        "g_chrX_ploidy",
        "SELECT ploidy, count(*) AS n, sum(dosage) AS s, avg(dosage) AS mean_dosage "
        "FROM genotypes WHERE chrom = 'X' GROUP BY ploidy ORDER BY ploidy",
    ),
    (
        "g_chrX_variant_af_by_sex",
        "SELECT g.variant_id, s.sex, allele_freq(g.dosage) AS af, allele_number(g.dosage) AS an "
        "FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = 'X' AND g.pos BETWEEN 60000000 AND 70000000 "
        "GROUP BY g.variant_id, s.sex ORDER BY g.variant_id, s.sex",
    ),
    (
        "g_multiallelic_sites",
        "SELECT variant_id, alt, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
        "het_count(dosage) AS het, hom_alt_count(dosage) AS hom FROM genotypes "
        f"WHERE chrom = '22' AND pos IN {MULTIALLELIC_22} "
        "GROUP BY variant_id, alt ORDER BY variant_id",
    ),
    (
        "g_multiallelic_per_site",
        "SELECT pos, count(*) AS n_rows, allele_count(dosage) AS ac_all_alts "
        f"FROM genotypes WHERE chrom = '22' AND pos IN {MULTIALLELIC_22} "
        "GROUP BY pos ORDER BY pos",
    ),
    (
        "g_variant_kind_join_variants",
        "SELECT CASE WHEN v.alt LIKE '<%' THEN 'symbolic' "
        "WHEN length(v.ref) = 1 AND length(v.alt) = 1 THEN 'snv' ELSE 'indel' END AS kind, "
        "count(*) AS n_calls, allele_count(g.dosage) AS ac, allele_freq(g.dosage) AS af "
        "FROM genotypes g JOIN variants v ON g.variant_id = v.variant_id "
        "WHERE g.chrom = '16' GROUP BY kind ORDER BY kind",
    ),
    (
        "g_symbolic_alts",
        "SELECT variant_id, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
        "het_count(dosage) AS het FROM genotypes "
        "WHERE chrom IN ('7', '8', '16') AND alt LIKE '<%' GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_megabase_bins",
        "SELECT floor(pos / 1e6) AS mb, count(*) AS n_calls, allele_count(dosage) AS ac, "
        "avg(dosage) AS mean_dosage FROM genotypes WHERE chrom = '21' "
        "GROUP BY floor(pos / 1e6) ORDER BY mb",
    ),
    (
        "g_having_af",
        "SELECT variant_id, allele_freq(dosage) AS af FROM genotypes "
        "WHERE chrom = '20' AND pos < 10000000 GROUP BY variant_id "
        "HAVING allele_freq(dosage) > 0.05 ORDER BY variant_id",
    ),
    (
        "g_top_af_limit",
        "SELECT variant_id, allele_freq(dosage) AS af, allele_count(dosage) AS ac "
        "FROM genotypes WHERE chrom = '19' GROUP BY variant_id "
        "ORDER BY af DESC, variant_id LIMIT 10",
    ),
    (
        "g_limit_offset",
        "SELECT variant_id, allele_count(dosage) AS ac FROM genotypes "
        "WHERE chrom = '18' AND pos < 20000000 GROUP BY variant_id "
        "ORDER BY ac DESC, variant_id LIMIT 5 OFFSET 5",
    ),
    (
        "g_case_control_counts",
        "SELECT g.variant_id, p.status, allele_count(g.dosage) AS ac, "
        "allele_number(g.dosage) AS an FROM genotypes g JOIN phenotypes p USING (sample_id) "
        "WHERE g.chrom = '22' AND g.pos BETWEEN 30000000 AND 31000000 "
        "GROUP BY g.variant_id, p.status ORDER BY g.variant_id, p.status",
    ),
    (
        "g_regression_ldl_dosage",
        "SELECT g.variant_id, regr_slope(p.ldl, g.dosage) AS beta, "
        "regr_intercept(p.ldl, g.dosage) AS b0, count(p.ldl) AS n "
        "FROM genotypes g JOIN phenotypes p USING (sample_id) "
        "WHERE g.chrom = '1' AND g.pos BETWEEN 1000000 AND 5000000 "
        "GROUP BY g.variant_id ORDER BY g.variant_id",
    ),
    (
        "g_corr_outcome_having",
        "SELECT g.variant_id, corr(g.dosage, s.outcome) AS r, regr_r2(s.outcome, g.dosage) AS r2 "
        "FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = '3' AND g.pos < 30000000 GROUP BY g.variant_id "
        "HAVING allele_count(g.dosage) >= 20 ORDER BY g.variant_id",
    ),
    (
        "g_three_way_join",
        "SELECT s.sex, p.smoker, allele_freq(g.dosage) AS af, "
        "count(DISTINCT g.sample_id) AS n_samples, count(*) AS n_calls "
        "FROM genotypes g JOIN samples s ON g.sample_id = s.sample_id "
        "JOIN phenotypes p ON p.sample_id = g.sample_id "
        "WHERE g.chrom = '22' AND g.pos BETWEEN 40000000 AND 42000000 "
        "GROUP BY s.sex, p.smoker ORDER BY s.sex, p.smoker",
    ),
    (
        "g_carriers_count_distinct",
        "SELECT s.population, count(DISTINCT g.sample_id) AS carriers "
        "FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = '22' AND g.pos BETWEEN 16000000 AND 20000000 AND g.dosage > 0 "
        "GROUP BY s.population ORDER BY s.population",
    ),
    (
        "g_in_subquery_smokers",
        "SELECT variant_id, allele_freq(dosage) AS af, count(*) AS n FROM genotypes "
        "WHERE chrom = '22' AND pos BETWEEN 20000000 AND 21000000 "
        "AND sample_id IN (SELECT sample_id FROM phenotypes WHERE smoker = 1) "
        "GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_phased_chrX",
        "SELECT phased, ploidy, count(*) AS n FROM genotypes WHERE chrom = 'X' "
        "GROUP BY phased, ploidy ORDER BY phased, ploidy",
    ),
    (
        "g_dosage_distribution",
        "SELECT dosage, count(*) AS n FROM genotypes WHERE chrom = '22' AND pos < 20000000 "
        "GROUP BY dosage ORDER BY dosage NULLS FIRST",
    ),
    (
        "g_variance_per_variant",
        "SELECT variant_id, var_samp(dosage) AS vs, stddev_pop(dosage) AS sdp, "
        "avg(dosage) AS mean_dosage FROM genotypes "
        "WHERE chrom = '22' AND pos BETWEEN 25000000 AND 26000000 "
        "GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_expected_heterozygosity",
        "SELECT variant_id, het_count(dosage) * 1.0 / count(dosage) AS obs_het, "
        "2 * allele_freq(dosage) * (1 - allele_freq(dosage)) AS exp_het "
        "FROM genotypes WHERE chrom = '6' AND pos BETWEEN 30000000 AND 33000000 "
        "GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_join_variants_filter_qual",
        "SELECT v.chrom, v.rsid IS NULL AS no_rsid, count(*) AS n_calls, "
        "allele_freq(g.dosage) AS af, avg(v.qual) AS mean_qual "
        "FROM genotypes g JOIN variants v USING (variant_id) "
        "WHERE g.chrom IN ('21', '22') AND v.filter = 'PASS' AND v.qual >= 50 "
        "GROUP BY v.chrom, v.rsid IS NULL ORDER BY v.chrom, no_rsid",
    ),
    (
        "g_cte_sample_burden",
        "WITH per_sample AS (SELECT sample_id, sum(dosage) AS burden, count(*) AS n_var "
        "FROM genotypes WHERE chrom = '22' AND pos BETWEEN 20000000 AND 25000000 "
        "GROUP BY sample_id) "
        "SELECT s.population, count(*) AS n, avg(ps.burden) AS mean_burden, "
        "stddev_samp(ps.burden) AS sd_burden FROM per_sample ps JOIN samples s USING (sample_id) "
        "GROUP BY s.population ORDER BY s.population",
    ),
    (
        "g_cte_burden_regression",
        "WITH per_sample AS (SELECT sample_id, sum(dosage) AS burden FROM genotypes "
        "WHERE chrom = '2' AND pos < 50000000 GROUP BY sample_id) "
        "SELECT regr_slope(p.ldl, ps.burden) AS b1, regr_intercept(p.ldl, ps.burden) AS b0, "
        "corr(p.ldl, ps.burden) AS r, count(p.ldl) AS n "
        "FROM per_sample ps JOIN phenotypes p USING (sample_id)",
    ),
    (
        "g_cte_nonaggregating_region",
        "WITH region AS (SELECT * FROM genotypes WHERE chrom = '2' AND pos BETWEEN 1000000 AND "
        "10000000) SELECT variant_id, allele_freq(dosage) AS af, call_rate(dosage) AS cr "
        "FROM region GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_empty_grouped",
        "SELECT variant_id, allele_count(dosage) AS ac FROM genotypes "
        "WHERE chrom = '22' AND pos < 0 GROUP BY variant_id ORDER BY variant_id",
    ),
    (
        "g_empty_global_genomic",
        "SELECT count(*) AS n, allele_count(dosage) AS ac, allele_number(dosage) AS an, "
        "allele_freq(dosage) AS af, call_rate(dosage) AS cr FROM genotypes WHERE chrom = 'Y'",
    ),
]

#: Queries that must return zero rows (everything else must return at least one).
EMPTY_RESULT_IDS: frozenset[str] = frozenset({"s_empty_grouped", "g_empty_grouped"})

#: Global aggregates over an empty selection: exactly one row (count 0, sums 0/NULL).
GLOBAL_ON_EMPTY_IDS: frozenset[str] = frozenset({"s_empty_global", "g_empty_global_genomic"})

CORPUS_REFUSED: list[tuple[str, str, str]] = [
    ("r_select_star", "SELECT * FROM samples", "DisclosureError"),
    ("r_select_ids", "SELECT sample_id FROM samples", "DisclosureError"),
    (
        "r_genotype_rows",
        "SELECT sample_id, variant_id, dosage FROM genotypes WHERE chrom = '22'",
        "DisclosureError",
    ),
    ("r_phenotype_rows", "SELECT age, bmi FROM phenotypes WHERE smoker = 1", "DisclosureError"),
    (
        "r_group_by_sample_id",
        "SELECT sample_id, sum(dosage) AS burden FROM genotypes WHERE chrom = '22' "
        "GROUP BY sample_id",
        "DisclosureError",
    ),
    ("r_unknown_table", "SELECT count(*) FROM patients", "PlanningError"),
    ("r_unknown_column", "SELECT avg(height) FROM samples", "PlanningError"),
    (
        "r_unknown_qualified_column",
        "SELECT s.population, avg(p.weight) FROM samples s JOIN phenotypes p USING (sample_id) "
        "GROUP BY s.population",
        "PlanningError",
    ),
    ("r_median", "SELECT median(outcome) FROM samples", "UnsupportedError"),
    ("r_quantile", "SELECT quantile_cont(outcome, 0.5) FROM samples", "UnsupportedError"),
    ("r_list", "SELECT list(sample_id) FROM samples", "UnsupportedError"),
    # rule 1: identifiers are join keys only, never values in an expression (even against each other)
    (
        "r_family_kind",
        "SELECT CASE WHEN family_id = sample_id THEN 'own' ELSE 'shared' END AS fam, "
        "count(*) AS n FROM samples "
        "GROUP BY CASE WHEN family_id = sample_id THEN 'own' ELSE 'shared' END ORDER BY fam",
        "DisclosureError",
    ),
    ("r_string_agg", "SELECT string_agg(sample_id, ',') FROM samples", "UnsupportedError"),
    ("r_read_csv", "SELECT count(*) FROM read_csv('x')", "UnsupportedError"),
    (
        "r_scalar_subquery_global",
        "SELECT count(*) FROM samples WHERE outcome > (SELECT avg(outcome) FROM samples)",
        "PlanningError",
    ),
    (
        "r_cte_reaggregated",
        "WITH t AS (SELECT population, avg(outcome) AS m FROM samples GROUP BY population) "
        "SELECT avg(m) FROM t",
        "PlanningError",
    ),
    (
        "r_cte_reaggregated_variants",
        "WITH v AS (SELECT variant_id, allele_freq(dosage) AS af FROM genotypes "
        "WHERE chrom = '22' GROUP BY variant_id) SELECT avg(af) FROM v",
        "PlanningError",
    ),
    (
        "r_count_distinct_population",
        "SELECT count(DISTINCT population) FROM samples",
        "UnsupportedError",
    ),
    ("r_min", "SELECT min(outcome) FROM samples", "DisclosureError"),
    (
        "r_max_grouped",
        "SELECT sex, max(age) FROM phenotypes p JOIN samples s USING (sample_id) GROUP BY sex",
        "DisclosureError",
    ),
    ("r_syntax", "SELEC count(*) FROM samples", "ParseError"),
]


def check_corpus(con: Any) -> dict[str, int]:
    """Run every CORPUS query on a pooled oracle connection; return ``{id: row count}``.

    Raises ``AssertionError`` if a query returns no row (except ``EMPTY_RESULT_IDS``), or rows
    when it should be empty, or if an id is duplicated.
    """
    try:
        from oracle import to_pooled_sql  # type: ignore[import-not-found]
    except ImportError:  # tests/ imported as a package
        from .oracle import to_pooled_sql  # type: ignore[no-redef]

    ids = [i for i, _ in CORPUS] + [i for i, _, _ in CORPUS_REFUSED]
    if len(ids) != len(set(ids)):
        raise AssertionError("duplicate corpus ids")
    counts: dict[str, int] = {}
    for qid, sql in CORPUS:
        rows = con.execute(to_pooled_sql(sql)).fetchall()
        counts[qid] = len(rows)
        if qid in EMPTY_RESULT_IDS:
            if rows:
                raise AssertionError(f"{qid}: expected no row, got {len(rows)}")
        elif not rows:
            raise AssertionError(f"{qid}: returned no row on the pooled oracle")
        if qid in GLOBAL_ON_EMPTY_IDS and len(rows) != 1:
            raise AssertionError(f"{qid}: expected exactly one row")
    return counts


if __name__ == "__main__":
    import sys
    import time

    import duckdb

    db = sys.argv[1]  # a pooled oracle database built by oracle.build_pooled
    con = duckdb.connect(db, read_only=True)
    t0 = time.perf_counter()
    for qid, n in check_corpus(con).items():
        print(f"{qid:40s} {n}")
    print(f"{len(CORPUS)} queries, {len(CORPUS_REFUSED)} refused, {time.perf_counter() - t0:.1f} s")
