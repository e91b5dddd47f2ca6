-- Artifacts and datasets a run logged. The emitter sends each as a tag with a reserved prefix
-- (runwire.artifact.<name>, runwire.dataset.<name>; value: a JSON record), so it travels
-- through the pipeline with the tags' delivery guarantees; these views give them typed columns.
-- Replays collapse like the tags themselves (newest updated_at wins per run and name).

CREATE TABLE IF NOT EXISTS artifacts
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id, name);

CREATE MATERIALIZED VIEW IF NOT EXISTS artifacts_mv TO artifacts AS
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
FROM tags
WHERE startsWith(key, 'runwire.artifact.');

-- MLflow's dataset inputs (datasets.name, datasets.digest, datasets.context in search filters).
CREATE TABLE IF NOT EXISTS datasets
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
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run_id, name);

CREATE MATERIALIZED VIEW IF NOT EXISTS datasets_mv TO datasets AS
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
FROM tags
WHERE startsWith(key, 'runwire.dataset.');
