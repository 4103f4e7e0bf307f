-- name: heterozygosity_by_super_pop
-- title: Observed and expected heterozygosity by super-population
-- description: Per super-population, the mean observed and expected (scikit-allel) heterozygosity
--   and inbreeding coefficient over the variants of one region (heterozygosity).
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
SELECT population AS super_pop, count(*) AS variants, avg(het_observed) AS het_observed,
       avg(het_expected) AS het_expected, 1 - avg(het_observed) / avg(het_expected) AS f
FROM heterozygosity(population => 'super_pop', chrom => :chrom, start => :start, stop => :stop)
GROUP BY population
ORDER BY population
