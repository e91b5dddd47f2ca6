-- A run's summary per metric: min, max and the last value (highest step, then lowest rank,
-- then latest time), exact under replays. One row per run and metric once merged.
CREATE TABLE IF NOT EXISTS metrics_summary
(
    project     LowCardinality(String),
    run_id      String,
    name        LowCardinality(String),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    last_step   SimpleAggregateFunction(max, Int64),
    last_value  AggregateFunction(argMax, Float64, Tuple(Int64, Int64, DateTime64(3, 'UTC')))
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, name);

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_summary_mv TO metrics_summary AS
SELECT project, run_id, name,
       min(value) AS min_value, max(value) AS max_value, max(step) AS last_step,
       argMaxState(value, (step, -toInt64(rank), ts)) AS last_value
FROM metrics
GROUP BY project, run_id, name;

-- Backfill what was stored before the view existed (run once, by the migration).
INSERT INTO metrics_summary
SELECT project, run_id, name, min(value), max(value), max(step), argMaxState(value, (step, -toInt64(rank), ts))
FROM metrics
GROUP BY project, run_id, name;
