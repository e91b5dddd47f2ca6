-- What MLflow's tracking API keeps about experiments and runs that the telemetry tables have no
-- place for: experiment ids and names, lifecycle stages (deleted/active), the user, artifact
-- URIs, MLflow's own run status (KILLED, SCHEDULED) and dataset inputs. Written directly by the
-- MLflow API server (runwire.ingest.mlflow) when a client creates, updates, deletes or restores
-- something, so the next call reads it back (MLflow clients read their own writes: start_run then
-- get_run). Params, tags and metrics are NOT here: they travel the emitter's path (Kafka ->
-- ingest) into params, tags and metrics like any run's. Times are milliseconds since the epoch,
-- MLflow's unit, stored exactly. Few rows per run: newest version wins.

-- An experiment maps to one runwire project, fixed at creation (a rename keeps the project).
CREATE TABLE IF NOT EXISTS mlflow_experiments
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY experiment_id;

CREATE TABLE IF NOT EXISTS mlflow_runs
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY run_id;

-- log_input: one row per (run, dataset); context is the input's mlflow.data.context tag.
CREATE TABLE IF NOT EXISTS mlflow_inputs
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (run_id, name, digest);
