-- name: allele_freq_by_pop
-- title: Allele frequency by population
-- description: Per-variant ALT allele count, allele number and frequency in each population
--   (samples.pop, with its super_pop), for the variants of one chromosome region whose
--   federation-wide ALT allele count is at least min_ac.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20020000  -- last position (inclusive)
-- param: min_ac BIGINT = 1  -- minimum ALT allele count of a (variant, population) row
SELECT
    g.variant_id,
    g.pos,
    s.super_pop,
    s.pop,
    allele_count(g.dosage) AS ac,
    allele_number(g.dosage) AS an,
    allele_freq(g.dosage) AS af
FROM genotypes AS g
JOIN samples AS s USING (sample_id)
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop
GROUP BY g.variant_id, g.pos, s.super_pop, s.pop
HAVING allele_count(g.dosage) >= :min_ac
ORDER BY g.pos, g.variant_id, s.super_pop, s.pop
