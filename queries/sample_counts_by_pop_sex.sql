-- name: sample_counts_by_pop_sex
-- title: Sample counts by population and sex
-- description: Number of samples in each super-population, population and sex of the sample
--   sheet (samples.super_pop, samples.pop, samples.sex).
SELECT
    super_pop,
    pop,
    sex,
    COUNT(*) AS n_samples
FROM samples
GROUP BY super_pop, pop, sex
ORDER BY super_pop, pop, sex
