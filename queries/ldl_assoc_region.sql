-- name: ldl_assoc_region
-- title: Per-variant LDL association scan over a region
-- description: For each variant of one chromosome region with ALT allele count >= min_ac, the
--   least-squares slope of LDL (mg/dL) on ALT dosage, its intercept, r squared, the number of
--   samples with both values and the t statistic of the slope (no covariates;
--   |t| > 5.45 is p < 5e-8 for large n). The top_n strongest associations are returned.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
-- param: min_ac BIGINT = 20  -- minimum ALT allele count of a variant
-- param: top_n BIGINT = 20  -- number of variants returned, strongest first
SELECT
    g.variant_id,
    g.pos,
    COUNT(*) AS n,
    allele_freq(g.dosage) AS af,
    REGR_SLOPE(p.ldl, g.dosage) AS beta,
    REGR_INTERCEPT(p.ldl, g.dosage) AS intercept,
    REGR_R2(p.ldl, g.dosage) AS r2,
    CORR(p.ldl, g.dosage) * SQRT((COUNT(*) - 2) / NULLIF(1 - CORR(p.ldl, g.dosage) * CORR(p.ldl, g.dosage), 0)) AS t_stat
FROM genotypes AS g
JOIN phenotypes AS p USING (sample_id)
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop
    AND g.dosage IS NOT NULL AND p.ldl IS NOT NULL
GROUP BY g.variant_id, g.pos
HAVING allele_count(g.dosage) >= :min_ac
ORDER BY r2 DESC, g.variant_id
LIMIT :top_n
