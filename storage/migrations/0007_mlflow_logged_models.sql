-- MLflow 3's logged models (mlflow.<flavor>.log_model creates one; its files are artifacts of its
-- source run, see runwire.ingest.mlflow.artifacts). Written directly by the MLflow API server, as
-- mlflow_experiments and mlflow_runs are; newest version wins. Times in milliseconds.
CREATE TABLE IF NOT EXISTS mlflow_logged_models
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY model_id;
