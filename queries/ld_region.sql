-- name: ld_region
-- title: Linkage disequilibrium (r squared) between nearby variants
-- description: Pairwise genotype correlation between variants at most window_kb apart in one
--   region, from combined sums (ld_r2); pairs with r squared at least min_r2. Plot with
--   `genofed plot ld-decay`.
-- param: chrom VARCHAR = '22'  -- chromosome
-- param: start BIGINT = 20000000  -- first position (inclusive)
-- param: stop BIGINT = 20020000  -- last position (inclusive)
-- param: window_kb DOUBLE = 10.0  -- largest distance between the two variants (kb)
-- param: min_r2 DOUBLE = 0.2  -- smallest r squared reported
SELECT variant_id_a, variant_id_b, chrom, pos_a, pos_b, distance, n, r2
FROM ld_r2(chrom => :chrom, start => :start, stop => :stop, window_kb => :window_kb, min_r2 => :min_r2)
ORDER BY pos_a, pos_b
