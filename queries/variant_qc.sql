-- name: variant_qc
-- title: Per-variant call rate and genotype counts
-- description: For each variant of one chromosome region: number of genotype rows, call rate,
--   allele number, ALT allele count and frequency, heterozygous and homozygous-ALT call counts,
--   and observed against expected (2pq) heterozygosity among called genotypes.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20020000  -- last position (inclusive)
SELECT
    g.variant_id,
    g.pos,
    COUNT(*) AS n_rows,
    call_rate(g.dosage) AS call_rate,
    allele_number(g.dosage) AS an,
    allele_count(g.dosage) AS ac,
    allele_freq(g.dosage) AS af,
    het_count(g.dosage) AS n_het,
    hom_alt_count(g.dosage) AS n_hom_alt,
    CAST(het_count(g.dosage) AS DOUBLE) / NULLIF(COUNT(g.dosage), 0) AS obs_het,
    2 * allele_freq(g.dosage) * (1 - allele_freq(g.dosage)) AS exp_het
FROM genotypes AS g
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop
GROUP BY g.variant_id, g.pos
ORDER BY g.pos, g.variant_id
