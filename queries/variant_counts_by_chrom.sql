-- name: variant_counts_by_chrom
-- title: Variant and genotype counts by chromosome
-- description: Per chromosome: number of variants (genotype rows per sample, which is exact
--   because genotypes has one row per sample and variant and the nodes share one site list),
--   number of samples, total ALT allele count and allele number, mean ALT frequency over all
--   alleles, heterozygous and homozygous-ALT calls, and the overall call rate. COUNT(DISTINCT
--   variant_id) is not a federated aggregate, so the variant count is derived from row counts.
SELECT
    g.chrom,
    CAST(ROUND(COUNT(*) / COUNT(DISTINCT g.sample_id)) AS BIGINT) AS n_variants,
    COUNT(DISTINCT g.sample_id) AS n_samples,
    allele_count(g.dosage) AS ac,
    allele_number(g.dosage) AS an,
    allele_freq(g.dosage) AS mean_af,
    het_count(g.dosage) AS n_het,
    hom_alt_count(g.dosage) AS n_hom_alt,
    call_rate(g.dosage) AS call_rate
FROM genotypes AS g
GROUP BY g.chrom
ORDER BY g.chrom
