-- name: t2d_assoc_case_control
-- title: Allelic case/control association for type 2 diabetes
-- description: Allelic chi-square and Fisher's exact test per variant from the federation-wide
--   2x2 ALT/REF allele counts in t2d cases and controls (assoc_case_control), with allele
--   frequencies and the allelic odds ratio; variants with ALT count at least min_ac.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
-- param: top_n BIGINT = 20  -- number of variants returned, strongest first
SELECT variant_id, pos, n_case, n_control, alt_freq_case, alt_freq_control, odds_ratio, chi2, p, p_fisher
FROM assoc_case_control(phenotype => 'phenotypes.t2d', chrom => :chrom, start => :start, stop => :stop)
ORDER BY p, variant_id
LIMIT :top_n
