-- name: phenotypes_by_super_pop
-- title: Clinical summary by super-population
-- description: Per super-population: number of samples, mean age, mean and standard deviation
--   of BMI and LDL (NULLs left out, with the number of non-NULL values), and type 2 diabetes
--   cases and prevalence, joining the demo cohort's phenotypes table to samples.
SELECT
    s.super_pop,
    COUNT(*) AS n_samples,
    AVG(p.age) AS mean_age,
    COUNT(p.bmi) AS n_bmi,
    AVG(p.bmi) AS mean_bmi,
    STDDEV_SAMP(p.bmi) AS sd_bmi,
    COUNT(p.ldl) AS n_ldl,
    AVG(p.ldl) AS mean_ldl,
    STDDEV_SAMP(p.ldl) AS sd_ldl,
    SUM(p.t2d) AS t2d_cases,
    AVG(p.t2d) AS t2d_prevalence
FROM phenotypes AS p
JOIN samples AS s USING (sample_id)
GROUP BY s.super_pop
ORDER BY s.super_pop
