-- name: carriers_by_super_pop
-- title: Carriers of ALT alleles in a region, by super-population
-- description: Number of distinct samples that carry at least one ALT allele (dosage >= 1) at
--   any variant of one chromosome region, and the number of carrier genotype calls and ALT
--   copies they hold, per super-population. Compare with sample_counts_by_pop_sex for the
--   group sizes.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20001000  -- last position (inclusive)
SELECT
    s.super_pop,
    COUNT(DISTINCT g.sample_id) AS n_carriers,
    COUNT(*) AS n_carrier_calls,
    SUM(g.dosage) AS alt_copies,
    SUM(CASE WHEN g.dosage = 2 THEN 1 ELSE 0 END) AS n_hom_alt_calls
FROM genotypes AS g
JOIN samples AS s USING (sample_id)
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop AND g.dosage >= 1
GROUP BY s.super_pop
ORDER BY s.super_pop
