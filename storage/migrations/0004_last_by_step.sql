-- "Last" is the value at the highest step; ties: the latest timestamp, then the lowest rank.
--
-- Until now metrics_1m kept argMax(value, ts): in a fast loop many steps share one millisecond,
-- so the "last" of a minute could be any of them (the step-0 value, in practice), and
-- metrics_summary, built from it, showed that value in runs show/compare/search and the report.
-- Both now order points by the key step * 2^48 + the timestamp in milliseconds (an Int128: no
-- Int64 step overflows it, and milliseconds stay below 2^48 until the year 10889), so the
-- highest key is the highest step and, among equal steps, the latest timestamp. metrics_1m keeps
-- argMax(value, key) and max(key) per rank and minute; metrics_summary keeps the tuple
-- (key, -rank, step, value) under max() per run and metric: max() of a tuple compares left to
-- right, so a tie on the key goes to the lowest rank. Replays cannot change either. (The
-- scalar key is for speed: max((step, ts, value)) per raw point cost the insert about three
-- times the extra CPU of this key.)
--
-- Existing data: metrics_1m keeps its rows. Its new last_point is backfilled from the raw
-- points of every minute still stored; minutes whose raw points the TTL already removed keep
-- their previous last value (the value at the minute's latest timestamp: the highest step
-- unless several steps shared that millisecond), the best that is left of them. metrics_summary is rebuilt from metrics_1m.
-- Run `runwire migrate` with ingest stopped: between dropping and re-creating a view, points
-- inserted elsewhere would not reach the rollups. The backfill reads the whole metrics table.
--
-- Replays: an insert of the same batches again (a retried insert whose first attempt was
-- stored, the same Kafka records inserted again after a crash) is dropped by ClickHouse's insert
-- deduplication, in these tables and in the views that feed the rollups (the writer names each
-- insert by its batches' ids with insert_deduplication_token and sets
-- deduplicate_blocks_in_dependent_materialized_views). A replay whose points arrive inside a
-- differently composed insert is not: the raw tables collapse it on merge and min, max and last
-- stay exact, but the rollups' count and sum (and means built from them) count it again.
-- README "Replays" says which reads are exact.

ALTER TABLE metrics MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE gpu_samples MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE metrics_1m MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE gpu_samples_1m MODIFY SETTING non_replicated_deduplication_window = 1000;

ALTER TABLE metrics_1m ADD COLUMN IF NOT EXISTS last_key SimpleAggregateFunction(max, Int128) AFTER count;
ALTER TABLE metrics_1m ADD COLUMN IF NOT EXISTS last_point AggregateFunction(argMax, Float64, Int128) AFTER last_key;

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
    max(toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)) AS last_key,
    argMaxState(value, toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)) AS last_point,
    max(step) AS max_step
FROM metrics
GROUP BY project, run_id, name, rank, minute;

-- The previous last of every stored minute, one millisecond before the minute so that a raw
-- point of the same step wins; sum and count 0 leave them as they are.
INSERT INTO metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_key,
                        last_point, max_step)
SELECT project, run_id, name, rank, minute, lo, hi, 0, 0, k, initializeAggregation('argMaxState', v, k), s
FROM (SELECT project, run_id, name, rank, minute, min(min_value) AS lo, max(max_value) AS hi, max(max_step) AS s,
             argMaxMerge(last_value) AS v,
             toInt128(s) * 281474976710656 + toInt64(toUnixTimestamp(minute)) * 1000 - 1 AS k
      FROM metrics_1m GROUP BY project, run_id, name, rank, minute);

-- The exact last point of every minute whose raw points are still stored.
INSERT INTO metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_key,
                        last_point, max_step)
SELECT project, run_id, name, rank, toStartOfMinute(ts) AS minute, min(value), max(value), 0, 0,
       max(toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)),
       argMaxState(value, toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)), max(step)
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
    last_point  SimpleAggregateFunction(max, Tuple(Int128, Int64, Int64, Float64))   -- (key, -rank, step, value)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, name)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_summary_mv TO metrics_summary AS
SELECT project, run_id, name, min(min_value) AS min_value, max(max_value) AS max_value,
       max((last_key, -toInt64(rank), max_step, finalizeAggregation(last_point))) AS last_point
FROM metrics_1m
GROUP BY project, run_id, name;

INSERT INTO metrics_summary
SELECT project, run_id, name, min(min_value), max(max_value), max((k, -toInt64(rank), s, v))
FROM (SELECT project, run_id, name, rank, min(min_value) AS min_value, max(max_value) AS max_value,
             max(last_key) AS k, max(max_step) AS s, argMaxMerge(last_point) AS v
      FROM metrics_1m GROUP BY project, run_id, name, rank, minute)
GROUP BY project, run_id, name;
