-- name: allele_freq_by_super_pop
-- title: Allele frequency by super-population
-- description: Per-variant ALT allele count, allele number and frequency in each super-population
--   (samples.super_pop), for the variants of one chromosome region.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20020000  -- last position (inclusive)
SELECT
    g.variant_id,
    g.pos,
    s.super_pop,
    allele_count(g.dosage) AS ac,
    allele_number(g.dosage) AS an,
    allele_freq(g.dosage) AS af
FROM genotypes AS g
JOIN samples AS s USING (sample_id)
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop
GROUP BY g.variant_id, g.pos, s.super_pop
ORDER BY g.pos, g.variant_id, s.super_pop
