-- "Last" is the value at the highest step; ties: the latest timestamp, then the lowest rank.
--
-- Until now metrics_1m kept argMax(value, ts): in a fast loop many steps share one millisecond,
-- so the "last" of a minute could be any of them (the step-0 value, in practice), and
-- metrics_summary, built from it, showed that value in runs show/compare/search and the report.
-- Both now keep the last point as a plain tuple under max(): (step, ts, value) per rank and
-- minute, (step, ts, -rank, value) per run and metric. max() of a tuple compares left to right,
-- so the order of the tuple is the rule above, and replays cannot change it.
--
-- Existing data: metrics_1m keeps its rows. Its new last_point is backfilled from the raw
-- points of every minute still stored; minutes whose raw points the TTL already removed keep
-- their previous last value (the latest timestamp of the minute, at the minute's highest step),
-- the best that is left of them. metrics_summary is rebuilt from metrics_1m.
-- Run `runwire migrate` with ingest stopped: between dropping and re-creating a view, points
-- inserted elsewhere would not reach the rollups. The backfill reads the whole metrics table.
--
-- Replays: a batch inserted twice with identical content (a retried insert whose first
-- attempt was stored, the same Kafka records re-inserted after a crash) is dropped by
-- ClickHouse's insert deduplication, in these tables and in the views that feed the rollups
-- (the writer sets deduplicate_blocks_in_dependent_materialized_views). A replay whose points
-- arrive inside a differently composed insert is not: the raw tables collapse it on merge and
-- min, max and last stay exact, but the rollups' count and sum (and means built from them)
-- count it again. README "Replays" says which reads are exact.

ALTER TABLE metrics MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE gpu_samples MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE metrics_1m MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE gpu_samples_1m MODIFY SETTING non_replicated_deduplication_window = 1000;

ALTER TABLE metrics_1m ADD COLUMN IF NOT EXISTS
    last_point SimpleAggregateFunction(max, Tuple(Int64, DateTime64(3, 'UTC'), Float64)) AFTER count;

DROP VIEW IF EXISTS metrics_summary_mv;
DROP VIEW IF EXISTS metrics_1m_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_1m_mv TO metrics_1m AS
SELECT
    project, run_id, name, rank,
    toStartOfMinute(ts) AS minute,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(value) AS sum_value,
    count() AS count,
    max((step, ts, value)) AS last_point,
    max(step) AS max_step
FROM metrics
GROUP BY project, run_id, name, rank, minute;

-- The previous last of every stored minute, one millisecond before the minute so that a raw
-- point of the same step wins; sum and count 0 leave them as they are.
INSERT INTO metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_point, max_step)
SELECT project, run_id, name, rank, minute, min(min_value), max(max_value), 0, 0,
       (max(max_step), toDateTime64(minute, 3, 'UTC') - toIntervalMillisecond(1), argMaxMerge(last_value)),
       max(max_step)
FROM metrics_1m
GROUP BY project, run_id, name, rank, minute;

-- The exact last point of every minute whose raw points are still stored.
INSERT INTO metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_point, max_step)
SELECT project, run_id, name, rank, toStartOfMinute(ts) AS minute, min(value), max(value), 0, 0,
       max((step, ts, value)), max(step)
FROM metrics
GROUP BY project, run_id, name, rank, minute;

ALTER TABLE metrics_1m DROP COLUMN IF EXISTS last_value;

DROP TABLE IF EXISTS metrics_summary;

CREATE TABLE IF NOT EXISTS metrics_summary
(
    project     LowCardinality(String),
    run_id      String,
    name        LowCardinality(String),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    last_point  SimpleAggregateFunction(max, Tuple(Int64, DateTime64(3, 'UTC'), Int64, Float64))
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, name)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_summary_mv TO metrics_summary AS
SELECT project, run_id, name, min(min_value) AS min_value, max(max_value) AS max_value,
       max((last_point.1, last_point.2, -toInt64(rank), last_point.3)) AS last_point
FROM metrics_1m
GROUP BY project, run_id, name;

INSERT INTO metrics_summary
SELECT project, run_id, name, min(min_value), max(max_value),
       max((last_point.1, last_point.2, -toInt64(rank), last_point.3))
FROM metrics_1m
GROUP BY project, run_id, name;
