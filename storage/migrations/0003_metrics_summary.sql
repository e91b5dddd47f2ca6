-- A run's summary per metric: min, max and the last value (the highest step, then the lowest
-- rank, then the latest minute), exact under replays. One row per run and metric once merged.
--
-- Fed from the per-minute rollup rather than the raw points: each insert into metrics yields a
-- few rows per (metric, rank, minute) in metrics_1m, so this view costs next to nothing, where
-- aggregating the raw points a second time cost ~15% of ClickHouse's insert CPU at 1M points/s
-- (bench/e2e.py). metrics_1m's last_value is the latest point of its (rank, minute), which is
-- the point at its highest step whenever steps grow with time, as they do in training.
CREATE TABLE IF NOT EXISTS metrics_summary
(
    project     LowCardinality(String),
    run_id      String,
    name        LowCardinality(String),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    last_step   SimpleAggregateFunction(max, Int64),
    last_value  AggregateFunction(argMax, Float64, Tuple(Int64, Int64, DateTime('UTC')))
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, name);

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_summary_mv TO metrics_summary AS
SELECT project, run_id, name,
       min(min_value) AS min_value, max(max_value) AS max_value, max(max_step) AS last_step,
       argMaxState(finalizeAggregation(last_value), (max_step, -toInt64(rank), minute)) AS last_value
FROM metrics_1m
GROUP BY project, run_id, name;

-- Backfill what was stored before the view existed (run once, by the migration).
INSERT INTO metrics_summary
SELECT project, run_id, name, min(min_value), max(max_value), max(max_step),
       argMaxState(finalizeAggregation(last_value), (max_step, -toInt64(rank), minute))
FROM metrics_1m
GROUP BY project, run_id, name;
