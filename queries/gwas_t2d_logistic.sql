-- name: gwas_t2d_logistic
-- title: Logistic GWAS of type 2 diabetes with covariates
-- description: Per-variant logistic regression of t2d (0/1) on ALT dosage, adjusted for age and
--   BMI, by federated Newton-Raphson over all variants at once (gwas_logistic). Returns the
--   variants with p below max_p, strongest first, with odds ratios.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
-- param: max_p DOUBLE = 5e-8  -- report variants with p below this
SELECT variant_id, chrom, pos, ref, alt, n, n_case, beta, odds_ratio, se, z, p, iterations
FROM gwas_logistic(phenotype => 'phenotypes.t2d', covariates => ['phenotypes.age', 'phenotypes.bmi'],
                   chrom => :chrom, start => :start, stop => :stop)
WHERE p < :max_p
ORDER BY p, variant_id
