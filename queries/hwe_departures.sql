-- name: hwe_departures
-- title: Variants departing from Hardy-Weinberg equilibrium
-- description: The exact HWE test (Wigginton 2005) on the federation-wide diploid genotype
--   counts per variant (hwe_p, as plink2 --hardy), with the counts and observed/expected
--   heterozygosity; the variants with p below max_p.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 22000000  -- last position (inclusive)
-- param: max_p DOUBLE = 1e-6  -- report variants with p below this
SELECT
    variant_id,
    hom_ref_count(dosage) AS hom_ref,
    het_count(dosage) AS het,
    hom_alt_diploid_count(dosage) AS hom_alt,
    het_count(dosage) / (hom_ref_count(dosage) + het_count(dosage) + hom_alt_diploid_count(dosage)) AS het_observed,
    hwe_p(dosage) AS p
FROM genotypes
WHERE chrom = :chrom AND pos BETWEEN :start AND :stop
GROUP BY variant_id
HAVING hwe_p(dosage) < :max_p
ORDER BY p, variant_id
