"""MLflow API metadata in ClickHouse (migration 0005_mlflow.sql): the rows the MLflow server
writes directly, and the names both sides share (thin I/O, no queries: reads are in
runwire.storage.query.RunQueries, the mlflow_* methods).

Why direct writes: experiments, lifecycle stages and dataset inputs are not telemetry, the
emitter's contract has no record for them, and MLflow clients read them back at once
(``start_run`` then ``get_run``). Params, tags and metrics never come here.
"""

from __future__ import annotations

import time

EXPERIMENT_COLUMNS = ["experiment_id", "name", "project", "artifact_location", "lifecycle_stage", "tags",
                      "creation_time", "last_update_time", "updated_at"]
RUN_COLUMNS = ["run_id", "project", "experiment_id", "name", "user_id", "status", "start_time", "end_time",
               "artifact_uri", "lifecycle_stage", "deleted_time", "updated_at"]
LOGGED_MODEL_COLUMNS = ["model_id", "experiment_id", "name", "artifact_location", "source_run_id", "model_type",
                        "status", "status_message", "tags", "params", "creation_time", "last_update_time",
                        "lifecycle_stage", "updated_at"]
INPUT_COLUMNS = ["run_id", "name", "digest", "source_type", "source", "schema", "profile", "input_tags",
                 "context", "updated_at"]

ACTIVE, DELETED = "active", "deleted"

# MLflow deletes a run's tag; the tags table only ever gains versions (ReplacingMergeTree, newest
# wins), so a deletion is a newer version holding this value, which the MLflow reads leave out.
# A control character: validation keeps them out of keys, and no client sends one in a value.
DELETED_TAG = "\x00runwire:deleted"


def _version() -> int:
    """updated_at in nanoseconds: the newest write wins."""
    return time.time_ns()


class MlflowMetaWriter:
    """Inserts versions of experiment, run and dataset-input rows (a row restates the whole
    record; the caller read the current one first)."""

    def __init__(self, client) -> None:
        self.client = client

    def _insert(self, table: str, columns: list[str], rows: list[dict]) -> None:
        if rows:
            version = _version()
            self.client.insert(table, [[r.get(c) if c != "updated_at" else version for c in columns] for r in rows],
                               column_names=columns)

    def put_experiment(self, experiment: dict) -> None:
        self._insert("mlflow_experiments", EXPERIMENT_COLUMNS, [experiment])

    def put_runs(self, runs: list[dict]) -> None:
        self._insert("mlflow_runs", RUN_COLUMNS, runs)

    def put_logged_model(self, model: dict) -> None:
        self._insert("mlflow_logged_models", LOGGED_MODEL_COLUMNS, [model])

    def put_inputs(self, inputs: list[dict]) -> None:
        self._insert("mlflow_inputs", INPUT_COLUMNS, inputs)
