-- Per-minute rollups for long time ranges. min, max and last are exact even when a batch was
-- replayed; count and sum count a replayed batch twice until the raw table is read instead.

CREATE TABLE IF NOT EXISTS metrics_1m
(
    project  LowCardinality(String),
    run_id   String,
    name     LowCardinality(String),
    rank     UInt32,
    minute   DateTime('UTC'),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    sum_value   SimpleAggregateFunction(sum, Float64),
    count       SimpleAggregateFunction(sum, UInt64),
    last_value  AggregateFunction(argMax, Float64, DateTime64(3, 'UTC')),
    max_step    SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (project, run_id, name, rank, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_1m_mv TO metrics_1m AS
SELECT
    project, run_id, name, rank,
    toStartOfMinute(ts) AS minute,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(value) AS sum_value,
    count() AS count,
    argMaxState(value, ts) AS last_value,
    max(step) AS max_step
FROM metrics
GROUP BY project, run_id, name, rank, minute;

CREATE TABLE IF NOT EXISTS gpu_samples_1m
(
    project   LowCardinality(String),
    host      LowCardinality(String),
    gpu_uuid  LowCardinality(String),
    minute    DateTime('UTC'),
    max_temperature_c      SimpleAggregateFunction(max, Float64),
    max_memory_used_bytes  SimpleAggregateFunction(max, Float64),
    memory_total_bytes     SimpleAggregateFunction(max, Float64),
    max_power_w            SimpleAggregateFunction(max, Float64),
    sum_gpu_utilization    SimpleAggregateFunction(sum, Float64),
    samples                SimpleAggregateFunction(sum, UInt64),
    throttle_reasons_any   SimpleAggregateFunction(groupBitOr, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (project, host, gpu_uuid, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS gpu_samples_1m_mv TO gpu_samples_1m AS
SELECT
    project, host, gpu_uuid,
    toStartOfMinute(ts) AS minute,
    max(temperature_c) AS max_temperature_c,
    max(memory_used_bytes) AS max_memory_used_bytes,
    max(memory_total_bytes) AS memory_total_bytes,
    max(power_w) AS max_power_w,
    sum(gpu_utilization_pct) AS sum_gpu_utilization,
    count() AS samples,
    groupBitOr(throttle_reasons) AS throttle_reasons_any
FROM gpu_samples
GROUP BY project, host, gpu_uuid, minute;
