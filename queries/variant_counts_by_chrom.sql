-- name: variant_counts_by_chrom
-- title: Variant counts and call rate by chromosome
-- description: Per chromosome: number of variants (genotype rows per sample, which is exact
--   because genotypes has one row per sample and variant and the nodes share one site list),
--   number of samples, allele number (called alleles) and the overall call rate. COUNT(DISTINCT
--   variant_id) is not a federated aggregate, so the variant count is derived from row counts.
--   Allele counts summed over a whole chromosome are not asked here: a sum over many variants
--   rests on each of them, and rule 5 withholds it when any has fewer than min_mac copies of an
--   allele (allele_freq_by_super_pop and variant_qc give them per variant).
SELECT
    g.chrom,
    CAST(ROUND(COUNT(*) / COUNT(DISTINCT g.sample_id)) AS BIGINT) AS n_variants,
    COUNT(DISTINCT g.sample_id) AS n_samples,
    allele_number(g.dosage) AS an,
    call_rate(g.dosage) AS call_rate
FROM genotypes AS g
GROUP BY g.chrom
ORDER BY g.chrom
