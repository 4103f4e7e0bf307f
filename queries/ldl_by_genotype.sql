-- name: ldl_by_genotype
-- title: LDL cholesterol by genotype at one variant
-- description: Number of samples, mean and standard deviation of LDL (phenotypes.ldl, mg/dL)
--   and mean age for each ALT dosage (0, 1, 2) at one variant; missing genotype calls and
--   missing LDL values are left out. The default variant is a planted LDL locus of the default
--   demo cohort (seed 1).
-- param: variant_id VARCHAR = '22:20255960:T:A'  -- variant as chrom:pos:ref:alt
SELECT
    g.dosage,
    COUNT(*) AS n,
    AVG(p.ldl) AS mean_ldl,
    STDDEV_SAMP(p.ldl) AS sd_ldl,
    AVG(p.age) AS mean_age
FROM genotypes AS g
JOIN phenotypes AS p USING (sample_id)
WHERE g.variant_id = :variant_id AND g.dosage IS NOT NULL AND p.ldl IS NOT NULL
GROUP BY g.dosage
ORDER BY g.dosage
