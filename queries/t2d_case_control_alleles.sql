-- name: t2d_case_control_alleles
-- title: Type 2 diabetes case/control allele counts
-- description: For each variant of one chromosome region: ALT allele count and allele number
--   among t2d cases (phenotypes.t2d = 1) and controls (t2d = 0), the two ALT frequencies, the
--   allelic odds ratio and the allelic chi-square statistic (1 df; > 29.7 is p < 5e-8).
--   Variants with a federation-wide ALT count below min_ac are left out. Uses genotypes.ploidy
--   (called alleles per genotype) for the allele numbers.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20100000  -- last position (inclusive)
-- param: min_ac BIGINT = 20  -- minimum ALT allele count of a variant
SELECT
    g.variant_id,
    g.pos,
    SUM(CASE WHEN p.t2d = 1 THEN g.dosage END) AS ac_cases,
    SUM(CASE WHEN p.t2d = 1 THEN g.ploidy END) AS an_cases,
    SUM(CASE WHEN p.t2d = 0 THEN g.dosage END) AS ac_controls,
    SUM(CASE WHEN p.t2d = 0 THEN g.ploidy END) AS an_controls,
    CAST(SUM(CASE WHEN p.t2d = 1 THEN g.dosage END) AS DOUBLE)
        / NULLIF(SUM(CASE WHEN p.t2d = 1 THEN g.ploidy END), 0) AS af_cases,
    CAST(SUM(CASE WHEN p.t2d = 0 THEN g.dosage END) AS DOUBLE)
        / NULLIF(SUM(CASE WHEN p.t2d = 0 THEN g.ploidy END), 0) AS af_controls,
    CAST(SUM(CASE WHEN p.t2d = 1 THEN g.dosage END) AS DOUBLE)
        * (SUM(CASE WHEN p.t2d = 0 THEN g.ploidy END) - SUM(CASE WHEN p.t2d = 0 THEN g.dosage END))
        / NULLIF(
            CAST(SUM(CASE WHEN p.t2d = 0 THEN g.dosage END) AS DOUBLE)
            * (SUM(CASE WHEN p.t2d = 1 THEN g.ploidy END) - SUM(CASE WHEN p.t2d = 1 THEN g.dosage END)),
            0) AS odds_ratio,
    CAST(SUM(CASE WHEN p.t2d IN (0, 1) THEN g.ploidy END) AS DOUBLE)
        * POW(
            CAST(SUM(CASE WHEN p.t2d = 1 THEN g.dosage END) AS DOUBLE)
                * (SUM(CASE WHEN p.t2d = 0 THEN g.ploidy END) - SUM(CASE WHEN p.t2d = 0 THEN g.dosage END))
            - CAST(SUM(CASE WHEN p.t2d = 0 THEN g.dosage END) AS DOUBLE)
                * (SUM(CASE WHEN p.t2d = 1 THEN g.ploidy END) - SUM(CASE WHEN p.t2d = 1 THEN g.dosage END)),
            2)
        / NULLIF(
            CAST(SUM(CASE WHEN p.t2d = 1 THEN g.ploidy END) AS DOUBLE)
            * SUM(CASE WHEN p.t2d = 0 THEN g.ploidy END)
            * SUM(CASE WHEN p.t2d IN (0, 1) THEN g.dosage END)
            * (SUM(CASE WHEN p.t2d IN (0, 1) THEN g.ploidy END) - SUM(CASE WHEN p.t2d IN (0, 1) THEN g.dosage END)),
            0) AS chi2_allelic
FROM genotypes AS g
JOIN phenotypes AS p USING (sample_id)
WHERE g.chrom = :chrom AND g.pos BETWEEN :start AND :stop
GROUP BY g.variant_id, g.pos
HAVING allele_count(g.dosage) >= :min_ac
ORDER BY g.pos, g.variant_id
