-- Core tables. Every table that receives replayed batches is a ReplacingMergeTree whose sorting
-- key identifies a point, so a batch delivered twice (emitter resend, ingest crash before the
-- offset commit) collapses to one row on merge; exact reads use FINAL.

-- Codecs measured on float32-precision training curves (bench/e2e.py curves): Gorilla+ZSTD
-- beat ZSTD, FPC and Gorilla alone for values; millisecond timestamps (MLflow's resolution;
-- step orders the points) with DoubleDelta cost next to nothing, microseconds about 1.1 B.
CREATE TABLE IF NOT EXISTS metrics
(
    project   LowCardinality(String),
    run_id    LowCardinality(String),
    name      LowCardinality(String),
    rank      UInt32                  CODEC(ZSTD(1)),
    step      Int64                   CODEC(DoubleDelta, ZSTD(1)),
    ts        DateTime64(3, 'UTC')    CODEC(DoubleDelta, ZSTD(1)),
    value     Float64                 CODEC(Gorilla, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (project, run_id, name, rank, step, ts);

CREATE TABLE IF NOT EXISTS gpu_samples
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (project, run_id, host, gpu_uuid, ts, rank);

-- One row per run, written from rank 0's start and end; the newest version wins.
CREATE TABLE IF NOT EXISTS runs
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id);

-- One row per rank: the rank layout and hosts of a run.
CREATE TABLE IF NOT EXISTS run_ranks
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id, rank);

CREATE TABLE IF NOT EXISTS params
(
    project     LowCardinality(String),
    run_id      String,
    key         String,
    value       String,
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id, key);

CREATE TABLE IF NOT EXISTS tags
(
    project     LowCardinality(String),
    run_id      String,
    key         String,
    value       String,
    updated_at  DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id, key);

-- Alert lifecycle (pending -> firing -> resolved); one row per state change, newest wins.
CREATE TABLE IF NOT EXISTS alerts
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
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(started_at)
ORDER BY (project, alert_id);
