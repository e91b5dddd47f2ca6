-- Cluster form of storage/migrations, written by scripts/gen_cluster_sql.py: do not edit.
CREATE DATABASE IF NOT EXISTS runwire ON CLUSTER runwire;

-- from 0001_core_tables.sql
CREATE TABLE IF NOT EXISTS runwire.metrics_local ON CLUSTER runwire
(
    project   LowCardinality(String),
    run_id    LowCardinality(String),
    name      LowCardinality(String),
    rank      UInt32                  CODEC(ZSTD(1)),
    step      Int64                   CODEC(DoubleDelta, ZSTD(1)),
    ts        DateTime64(3, 'UTC')    CODEC(DoubleDelta, ZSTD(1)),
    value     Float64                 CODEC(Gorilla, ZSTD(1))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/metrics', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (project, run_id, name, rank, step, ts);

CREATE TABLE IF NOT EXISTS runwire.metrics ON CLUSTER runwire AS runwire.metrics_local
ENGINE = Distributed(runwire, runwire, metrics_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.gpu_samples_local ON CLUSTER runwire
(
    project                LowCardinality(String),
    run_id                 LowCardinality(String),
    host                   LowCardinality(String),
    node_rank              UInt32                CODEC(ZSTD(1)),
    rank                   UInt32                CODEC(ZSTD(1)),
    gpu_uuid               LowCardinality(String),
    pci_bus_id             LowCardinality(String),
    gpu_index              UInt16                CODEC(ZSTD(1)),
    gpu_name               LowCardinality(String),
    ts                     DateTime64(6, 'UTC')  CODEC(DoubleDelta, ZSTD(1)),
    memory_used_bytes      Float64               CODEC(Gorilla, ZSTD(1)),
    memory_total_bytes     Float64               CODEC(Gorilla, ZSTD(1)),
    temperature_c          Float64               CODEC(Gorilla, ZSTD(1)),
    memory_temperature_c   Float64               CODEC(Gorilla, ZSTD(1)),
    gpu_utilization_pct    Float64               CODEC(Gorilla, ZSTD(1)),
    memory_utilization_pct Float64               CODEC(Gorilla, ZSTD(1)),
    power_w                Float64               CODEC(Gorilla, ZSTD(1)),
    power_limit_w          Float64               CODEC(Gorilla, ZSTD(1)),
    sm_clock_mhz           Float64               CODEC(Gorilla, ZSTD(1)),
    memory_clock_mhz       Float64               CODEC(Gorilla, ZSTD(1)),
    throttle_reasons       UInt64                CODEC(T64, ZSTD(1)),
    ecc_corrected          Float64               CODEC(Gorilla, ZSTD(1)),
    ecc_uncorrected        Float64               CODEC(Gorilla, ZSTD(1)),
    xid                    UInt64                CODEC(T64, ZSTD(1))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/gpu_samples', '{replica}')
PARTITION BY toYYYYMMDD(ts)
ORDER BY (project, run_id, host, gpu_uuid, ts, rank);

CREATE TABLE IF NOT EXISTS runwire.gpu_samples ON CLUSTER runwire AS runwire.gpu_samples_local
ENGINE = Distributed(runwire, runwire, gpu_samples_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.runs_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    name        String,
    status      LowCardinality(String),   -- RUNNING, FINISHED, FAILED
    start_time  DateTime64(6, 'UTC'),
    end_time    Nullable(DateTime64(6, 'UTC')),
    exit_code   Nullable(Int32),
    git_commit  String,
    launcher    LowCardinality(String),
    world_size  UInt32,
    summary     Map(String, Float64),
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/runs', '{replica}', updated_at)
ORDER BY (project, run_id);

CREATE TABLE IF NOT EXISTS runwire.runs ON CLUSTER runwire AS runwire.runs_local
ENGINE = Distributed(runwire, runwire, runs_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.run_ranks_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    rank        UInt32,
    local_rank  UInt32,
    node_rank   UInt32,
    world_size  UInt32,
    host        LowCardinality(String),
    pid         UInt32,
    stream_id   String,
    status      LowCardinality(String),
    start_time  DateTime64(6, 'UTC'),
    end_time    Nullable(DateTime64(6, 'UTC')),
    exit_code   Nullable(Int32),
    summary     Map(String, Float64),
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/run_ranks', '{replica}', updated_at)
ORDER BY (project, run_id, rank);

CREATE TABLE IF NOT EXISTS runwire.run_ranks ON CLUSTER runwire AS runwire.run_ranks_local
ENGINE = Distributed(runwire, runwire, run_ranks_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.params_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    key         String,
    value       String,
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/params', '{replica}', updated_at)
ORDER BY (project, run_id, key);

CREATE TABLE IF NOT EXISTS runwire.params ON CLUSTER runwire AS runwire.params_local
ENGINE = Distributed(runwire, runwire, params_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.tags_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    key         String,
    value       String,
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/tags', '{replica}', updated_at)
ORDER BY (project, run_id, key);

CREATE TABLE IF NOT EXISTS runwire.tags ON CLUSTER runwire AS runwire.tags_local
ENGINE = Distributed(runwire, runwire, tags_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.alerts_local ON CLUSTER runwire
(
    project      LowCardinality(String),
    alert_id     String,
    rule         LowCardinality(String),
    severity     LowCardinality(String),
    state        LowCardinality(String),
    run_id       String,
    host         LowCardinality(String),
    gpu_uuid     String,
    rank         Nullable(UInt32),
    value        Float64,
    message      String,
    started_at   DateTime64(6, 'UTC'),
    resolved_at  Nullable(DateTime64(6, 'UTC')),
    updated_at   DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/alerts', '{replica}', updated_at)
PARTITION BY toYYYYMM(started_at)
ORDER BY (project, alert_id);

CREATE TABLE IF NOT EXISTS runwire.alerts ON CLUSTER runwire AS runwire.alerts_local
ENGINE = Distributed(runwire, runwire, alerts_local, cityHash64(project, run_id));

-- from 0002_rollups.sql
CREATE TABLE IF NOT EXISTS runwire.metrics_1m_local ON CLUSTER runwire
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/runwire/metrics_1m', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (project, run_id, name, rank, minute);

CREATE TABLE IF NOT EXISTS runwire.metrics_1m ON CLUSTER runwire AS runwire.metrics_1m_local
ENGINE = Distributed(runwire, runwire, metrics_1m_local, cityHash64(project, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.metrics_1m_mv ON CLUSTER runwire TO runwire.metrics_1m_local AS
SELECT
    project, run_id, name, rank,
    toStartOfMinute(ts) AS minute,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(value) AS sum_value,
    count() AS count,
    argMaxState(value, ts) AS last_value,
    max(step) AS max_step
FROM runwire.metrics_local
GROUP BY project, run_id, name, rank, minute;

CREATE TABLE IF NOT EXISTS runwire.gpu_samples_1m_local ON CLUSTER runwire
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/runwire/gpu_samples_1m', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (project, host, gpu_uuid, minute);

CREATE TABLE IF NOT EXISTS runwire.gpu_samples_1m ON CLUSTER runwire AS runwire.gpu_samples_1m_local
ENGINE = Distributed(runwire, runwire, gpu_samples_1m_local, cityHash64(project, host));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.gpu_samples_1m_mv ON CLUSTER runwire TO runwire.gpu_samples_1m_local AS
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
FROM runwire.gpu_samples_local
GROUP BY project, host, gpu_uuid, minute;

-- from 0003_metrics_summary.sql
CREATE TABLE IF NOT EXISTS runwire.metrics_summary_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    name        LowCardinality(String),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    last_step   SimpleAggregateFunction(max, Int64),
    last_value  AggregateFunction(argMax, Float64, Tuple(Int64, Int64, DateTime('UTC')))
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/runwire/metrics_summary', '{replica}')
ORDER BY (project, run_id, name);

CREATE TABLE IF NOT EXISTS runwire.metrics_summary ON CLUSTER runwire AS runwire.metrics_summary_local
ENGINE = Distributed(runwire, runwire, metrics_summary_local, cityHash64(project, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.metrics_summary_mv ON CLUSTER runwire TO runwire.metrics_summary_local AS
SELECT project, run_id, name,
       min(min_value) AS min_value, max(max_value) AS max_value, max(max_step) AS last_step,
       argMaxState(finalizeAggregation(last_value), (max_step, -toInt64(rank), minute)) AS last_value
FROM runwire.metrics_1m_local
GROUP BY project, run_id, name;

INSERT INTO runwire.metrics_summary
SELECT project, run_id, name, min(min_value), max(max_value), max(max_step),
       argMaxState(finalizeAggregation(last_value), (max_step, -toInt64(rank), minute))
FROM runwire.metrics_1m
GROUP BY project, run_id, name;

-- from 0004_last_by_step.sql
ALTER TABLE runwire.metrics_1m_local ON CLUSTER runwire ADD COLUMN IF NOT EXISTS last_key SimpleAggregateFunction(max, Int128) AFTER count;

ALTER TABLE runwire.metrics_1m ON CLUSTER runwire ADD COLUMN IF NOT EXISTS last_key SimpleAggregateFunction(max, Int128) AFTER count;

ALTER TABLE runwire.metrics_1m_local ON CLUSTER runwire ADD COLUMN IF NOT EXISTS last_point AggregateFunction(argMax, Float64, Int128) AFTER last_key;

ALTER TABLE runwire.metrics_1m ON CLUSTER runwire ADD COLUMN IF NOT EXISTS last_point AggregateFunction(argMax, Float64, Int128) AFTER last_key;

DROP VIEW IF EXISTS runwire.metrics_summary_mv ON CLUSTER runwire SYNC;

DROP VIEW IF EXISTS runwire.metrics_1m_mv ON CLUSTER runwire SYNC;

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.metrics_1m_mv ON CLUSTER runwire TO runwire.metrics_1m_local AS
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
FROM runwire.metrics_local
GROUP BY project, run_id, name, rank, minute;

INSERT INTO runwire.metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_key,
                        last_point, max_step)
SELECT project, run_id, name, rank, minute, lo, hi, 0, 0, k, initializeAggregation('argMaxState', v, k), s
FROM (SELECT project, run_id, name, rank, minute, min(min_value) AS lo, max(max_value) AS hi, max(max_step) AS s,
             argMaxMerge(last_value) AS v,
             toInt128(s) * 281474976710656 + toInt64(toUnixTimestamp(minute)) * 1000 - 1 AS k
      FROM runwire.metrics_1m GROUP BY project, run_id, name, rank, minute);

INSERT INTO runwire.metrics_1m (project, run_id, name, rank, minute, min_value, max_value, sum_value, count, last_key,
                        last_point, max_step)
SELECT project, run_id, name, rank, toStartOfMinute(ts) AS minute, min(value), max(value), 0, 0,
       max(toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)),
       argMaxState(value, toInt128(step) * 281474976710656 + toUnixTimestamp64Milli(ts)), max(step)
FROM runwire.metrics
GROUP BY project, run_id, name, rank, minute;

ALTER TABLE runwire.metrics_1m_local ON CLUSTER runwire DROP COLUMN IF EXISTS last_value;

ALTER TABLE runwire.metrics_1m ON CLUSTER runwire DROP COLUMN IF EXISTS last_value;

DROP TABLE IF EXISTS runwire.metrics_summary ON CLUSTER runwire SYNC;

DROP TABLE IF EXISTS runwire.metrics_summary_local ON CLUSTER runwire SYNC;

CREATE TABLE IF NOT EXISTS runwire.metrics_summary_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    name        LowCardinality(String),
    min_value   SimpleAggregateFunction(min, Float64),
    max_value   SimpleAggregateFunction(max, Float64),
    last_point  SimpleAggregateFunction(max, Tuple(Int128, Int64, Int64, Float64))   -- (key, -rank, step, value)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/runwire/metrics_summary', '{replica}')
ORDER BY (project, run_id, name);

CREATE TABLE IF NOT EXISTS runwire.metrics_summary ON CLUSTER runwire AS runwire.metrics_summary_local
ENGINE = Distributed(runwire, runwire, metrics_summary_local, cityHash64(project, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.metrics_summary_mv ON CLUSTER runwire TO runwire.metrics_summary_local AS
SELECT project, run_id, name, min(min_value) AS min_value, max(max_value) AS max_value,
       max((last_key, -toInt64(rank), max_step, finalizeAggregation(last_point))) AS last_point
FROM runwire.metrics_1m_local
GROUP BY project, run_id, name;

INSERT INTO runwire.metrics_summary
SELECT project, run_id, name, min(min_value), max(max_value), max((k, -toInt64(rank), s, v))
FROM (SELECT project, run_id, name, rank, min(min_value) AS min_value, max(max_value) AS max_value,
             max(last_key) AS k, max(max_step) AS s, argMaxMerge(last_point) AS v
      FROM runwire.metrics_1m GROUP BY project, run_id, name, rank, minute)
GROUP BY project, run_id, name;

-- from 0005_mlflow.sql
CREATE TABLE IF NOT EXISTS runwire.mlflow_experiments_local ON CLUSTER runwire
(
    experiment_id      String,
    name               String,
    project            String,
    artifact_location  String,
    lifecycle_stage    LowCardinality(String),   -- active, deleted
    tags               Map(String, String),
    creation_time      Int64,
    last_update_time   Int64,
    updated_at         DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/mlflow_experiments', '{replica}', updated_at)
ORDER BY experiment_id;

CREATE TABLE IF NOT EXISTS runwire.mlflow_experiments ON CLUSTER runwire AS runwire.mlflow_experiments_local
ENGINE = Distributed(runwire, runwire, mlflow_experiments_local, cityHash64(experiment_id));

CREATE TABLE IF NOT EXISTS runwire.mlflow_runs_local ON CLUSTER runwire
(
    run_id           String,
    project          LowCardinality(String),
    experiment_id    String,
    name             String,
    user_id          String,
    status           LowCardinality(String),     -- RUNNING, SCHEDULED, FINISHED, FAILED, KILLED
    start_time       Int64,
    end_time         Nullable(Int64),
    artifact_uri     String,
    lifecycle_stage  LowCardinality(String),
    deleted_time     Nullable(Int64),
    updated_at       DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/mlflow_runs', '{replica}', updated_at)
ORDER BY run_id;

CREATE TABLE IF NOT EXISTS runwire.mlflow_runs ON CLUSTER runwire AS runwire.mlflow_runs_local
ENGINE = Distributed(runwire, runwire, mlflow_runs_local, cityHash64(project, run_id));

CREATE TABLE IF NOT EXISTS runwire.mlflow_inputs_local ON CLUSTER runwire
(
    run_id       String,
    name         String,
    digest       String,
    source_type  String,
    source       String,
    schema       String,
    profile      String,
    input_tags   Map(String, String),
    context      String,
    updated_at   DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/mlflow_inputs', '{replica}', updated_at)
ORDER BY (run_id, name, digest);

CREATE TABLE IF NOT EXISTS runwire.mlflow_inputs ON CLUSTER runwire AS runwire.mlflow_inputs_local
ENGINE = Distributed(runwire, runwire, mlflow_inputs_local, cityHash64(run_id));

-- from 0006_artifacts_datasets.sql
CREATE TABLE IF NOT EXISTS runwire.artifacts_local ON CLUSTER runwire
(
    project     LowCardinality(String),
    run_id      String,
    name        String,
    type        LowCardinality(String),
    digest      String,           -- SHA-256 of the manifest (what runwire.download_artifact takes)
    size_bytes  UInt64,
    files       UInt64,
    store       String,           -- directory or s3://bucket/prefix, no credentials
    endpoint    String,
    metadata    String,           -- JSON, '' when none
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/artifacts', '{replica}', updated_at)
ORDER BY (project, run_id, name);

CREATE TABLE IF NOT EXISTS runwire.artifacts ON CLUSTER runwire AS runwire.artifacts_local
ENGINE = Distributed(runwire, runwire, artifacts_local, cityHash64(project, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.artifacts_mv ON CLUSTER runwire TO runwire.artifacts_local AS
SELECT project, run_id,
       substring(key, 18) AS name,
       JSONExtractString(value, 'type') AS type,
       JSONExtractString(value, 'digest') AS digest,
       JSONExtractUInt(value, 'size') AS size_bytes,
       JSONExtractUInt(value, 'files') AS files,
       JSONExtractString(value, 'store') AS store,
       JSONExtractString(value, 'endpoint') AS endpoint,
       JSONExtractRaw(value, 'metadata') AS metadata,
       updated_at
FROM runwire.tags_local
WHERE startsWith(key, 'runwire.artifact.');

CREATE TABLE IF NOT EXISTS runwire.datasets_local ON CLUSTER runwire
(
    project      LowCardinality(String),
    run_id       String,
    name         String,
    digest       String,          -- SHA-256 over the files' paths and content hashes, or the user's
    source       String,          -- absolute path or URI
    source_type  LowCardinality(String),  -- local, s3, hf, ...
    context      LowCardinality(String),  -- training, eval, ... ('' when not given)
    size_bytes   Nullable(UInt64),
    files        Nullable(UInt64),
    schema       String,          -- JSON as given, '' when none
    profile      String,          -- JSON as given, '' when none
    updated_at   DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/datasets', '{replica}', updated_at)
ORDER BY (project, run_id, name);

CREATE TABLE IF NOT EXISTS runwire.datasets ON CLUSTER runwire AS runwire.datasets_local
ENGINE = Distributed(runwire, runwire, datasets_local, cityHash64(project, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.datasets_mv ON CLUSTER runwire TO runwire.datasets_local AS
SELECT project, run_id,
       substring(key, 17) AS name,
       JSONExtractString(value, 'digest') AS digest,
       JSONExtractString(value, 'source') AS source,
       JSONExtractString(value, 'source_type') AS source_type,
       JSONExtractString(value, 'context') AS context,
       if(JSONHas(value, 'size_bytes'), JSONExtractUInt(value, 'size_bytes'), NULL) AS size_bytes,
       if(JSONHas(value, 'files'), JSONExtractUInt(value, 'files'), NULL) AS files,
       JSONExtractString(value, 'schema') AS schema,
       JSONExtractString(value, 'profile') AS profile,
       updated_at
FROM runwire.tags_local
WHERE startsWith(key, 'runwire.dataset.');

-- from 0007_mlflow_logged_models.sql
CREATE TABLE IF NOT EXISTS runwire.mlflow_logged_models_local ON CLUSTER runwire
(
    model_id           String,
    experiment_id      String,
    name               String,
    artifact_location  String,
    source_run_id      String,
    model_type         String,
    status             LowCardinality(String),   -- LOGGED_MODEL_PENDING, LOGGED_MODEL_READY, LOGGED_MODEL_UPLOAD_FAILED
    status_message     String,
    tags               Map(String, String),
    params             Map(String, String),
    creation_time      Int64,
    last_update_time   Int64,
    lifecycle_stage    LowCardinality(String),   -- active, deleted
    updated_at         DateTime64(9, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/runwire/mlflow_logged_models', '{replica}', updated_at)
ORDER BY model_id;

CREATE TABLE IF NOT EXISTS runwire.mlflow_logged_models ON CLUSTER runwire AS runwire.mlflow_logged_models_local
ENGINE = Distributed(runwire, runwire, mlflow_logged_models_local, cityHash64(model_id));
