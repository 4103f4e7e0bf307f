-- name: gwas_ldl_linear
-- title: Linear GWAS of LDL with covariates
-- description: Exact per-variant least squares of LDL on ALT dosage, adjusted for age, sex and
--   BMI, from securely combined sufficient statistics (gwas_linear). Returns the variants with
--   p below max_p, strongest first. Samples with a missing LDL, age, sex or BMI are left out,
--   as plink2 --glm does.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
-- param: max_p DOUBLE = 5e-8  -- report variants with p below this
SELECT variant_id, chrom, pos, ref, alt, n, alt_freq, beta, se, t, p
FROM gwas_linear(phenotype => 'phenotypes.ldl',
                 covariates => ['phenotypes.age', 'phenotypes.sex', 'phenotypes.bmi'],
                 chrom => :chrom, start => :start, stop => :stop)
WHERE p < :max_p
ORDER BY p, variant_id
