-- name: fst_super_pops
-- title: Hudson's Fst between two super-populations
-- description: Per-variant Hudson Fst numerator, denominator and ratio between two
--   super-populations from their federation-wide allele counts (scikit-allel's estimator);
--   average the ratio of sums for a genome-wide value.
-- param: pop1 VARCHAR = 'AFR'  -- first super-population
-- param: pop2 VARCHAR = 'EUR'  -- second super-population
-- param: chrom VARCHAR = '22'  -- chromosome
SELECT count(*) AS variants, sum(num) / sum(den) AS fst_hudson, avg(fst) AS mean_per_variant_fst
FROM fst(population => 'super_pop', pop1 => :pop1, pop2 => :pop2, chrom => :chrom)
