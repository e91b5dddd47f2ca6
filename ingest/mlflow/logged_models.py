"""MLflow 3's logged models (`/api/2.0/mlflow/logged-models/...`): what `mlflow.<flavor>.log_model`
creates, and what the client searches when it resolves ``runs:/<run>/<path>``.

A logged model's metadata is a row of mlflow_logged_models (runwire.storage.mlflow_meta), like
experiments and runs. Its artifact location is ``mlflow-artifacts:/<experiment>/models/<id>/artifacts``
as in MLflow; the proxy keeps its files as artifacts of the model's source run (under
``mlflow-logged-models/<id>/``), so `runwire artifacts ls RUN` shows the run's models. A logged
model without a source run has nowhere to keep files in runwire: uploads to it are refused.
"""

from __future__ import annotations

import threading
import time
import uuid

from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.protocol import invalid, missing
from runwire.storage.mlflow_meta import ACTIVE, DELETED

STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")
_STATUS_NUMBERS = {"1": STATUSES[0], "2": STATUSES[1], "3": STATUSES[2]}


def _kv(items) -> dict[str, str]:
    return {P.required(i, "key"): str(i.get("value", "")) for i in items or []}


def model_json(m: dict) -> dict:
    info = {"model_id": m["model_id"], "experiment_id": m["experiment_id"], "name": m["name"],
            "creation_timestamp_ms": m["creation_time"], "last_updated_timestamp_ms": m["last_update_time"],
            "artifact_uri": m["artifact_location"], "status": m["status"], "model_type": m["model_type"],
            "source_run_id": m["source_run_id"], "status_message": m["status_message"]}
    if m["tags"]:
        info["tags"] = [{"key": k, "value": v} for k, v in sorted(m["tags"].items())]
    out: dict = {"info": info, "data": {}}
    if m["params"]:
        out["data"]["params"] = [{"key": k, "value": v} for k, v in sorted(m["params"].items())]
    return out


class LoggedModels:
    """The logged-model endpoints: (body, raw, allowed) -> response dict, or MlflowError."""

    def __init__(self, service) -> None:
        self.service = service
        self._recent: dict[str, dict] = {}  # this server's writes, read back before storage merged them
        self._lock = threading.Lock()

    def get(self, model_id: str, allowed, deleted: bool = False) -> dict:
        rows = self.service.queries.mlflow_logged_models(model_ids=[model_id])
        with self._lock:
            found = self._recent.get(model_id)
        row = found if found is not None else rows[0] if rows else None
        if row is None or (row["lifecycle_stage"] != ACTIVE and not deleted):
            raise missing(f"Logged model with ID '{model_id}' not found.")
        self.service._experiment(row["experiment_id"], allowed)  # the caller's project
        return row

    def _put(self, model: dict) -> None:
        model["last_update_time"] = int(time.time() * 1000)
        self.service.meta.put_logged_model(model)
        with self._lock:
            if len(self._recent) > 10_000:
                self._recent.clear()
            self._recent[model["model_id"]] = model

    # --- endpoints ---------------------------------------------------------------------------

    def create(self, body, raw, allowed):
        experiment = self.service._experiment(P.required(body, "experiment_id"), allowed)
        run_id = body.get("source_run_id") or ""
        if run_id:
            self.service._run(run_id, allowed)
        model_id = f"m-{uuid.uuid4().hex}"
        now = int(time.time() * 1000)
        model = {"model_id": model_id, "experiment_id": experiment["experiment_id"],
                 "name": body.get("name") or P.random_run_name(),
                 "artifact_location": f"{experiment['artifact_location']}/models/{model_id}/artifacts",
                 "source_run_id": run_id, "model_type": body.get("model_type") or "", "status": STATUSES[0],
                 "status_message": "", "tags": _kv(body.get("tags")), "params": _kv(body.get("params")),
                 "creation_time": now, "lifecycle_stage": ACTIVE}
        self._put(model)
        return {"model": model_json(model)}

    def get_model(self, body, raw, allowed):
        return {"model": model_json(self.get(P.required(body, "model_id"), allowed))}

    def _update(self, body, allowed, change) -> dict:
        """Read the model, ``change`` a copy of it, store that; the new row."""
        model = dict(self.get(P.required(body, "model_id"), allowed))
        change(model)
        self._put(model)
        return model

    def finalize(self, body, raw, allowed):
        status = str(P.required(body, "status"))
        status = _STATUS_NUMBERS.get(status, status)
        if status not in STATUSES:
            raise invalid(f"Invalid logged model status {status!r}")
        return {"model": model_json(self._update(body, allowed, lambda m: m.update(status=status)))}

    def delete(self, body, raw, allowed):
        self._update(body, allowed, lambda m: m.update(lifecycle_stage=DELETED))
        return {}

    def set_tags(self, body, raw, allowed):
        self._update(body, allowed, lambda m: m.update(tags={**m["tags"], **_kv(body.get("tags"))}))
        return {}

    def delete_tag(self, body, raw, allowed):
        key = P.required(body, "tag_key")

        def drop(model: dict) -> None:
            if key not in model["tags"]:
                raise missing(f"No tag with key {key!r} found for logged model {model['model_id']}.")
            model["tags"] = {k: v for k, v in model["tags"].items() if k != key}

        self._update(body, allowed, drop)
        return {}

    def log_params(self, body, raw, allowed):
        self._update(body, allowed, lambda m: m.update(params={**m["params"], **_kv(body.get("params"))}))
        return {}

    def search(self, body, raw, allowed):
        from runwire.ingest.mlflow.service import record_matcher

        experiment_ids = [self.service._experiment(e, allowed)["experiment_id"] for e in body.get("experiment_ids") or []]
        matches = record_matcher(body.get("filter") or "", {"name": lambda m: m["name"]}, "search_logged_models")
        rows = {m["model_id"]: m for m in self.service.queries.mlflow_logged_models(experiment_ids=experiment_ids)}
        with self._lock:
            rows.update({k: m for k, m in self._recent.items() if m["experiment_id"] in experiment_ids})
        found = sorted((m for m in rows.values() if m["lifecycle_stage"] == ACTIVE and matches(m)),
                       key=lambda m: (-m["creation_time"], m["model_id"]))  # MLflow's default: newest first
        return P.page([model_json(m) for m in found], body, 100, "models")


# path (after the prefix) -> {HTTP method: LoggedModels method}; path parameters join the body.
ROUTES = {
    "/logged-models": {"POST": "create"},
    "/logged-models/search": {"POST": "search"},
    "/logged-models/{model_id}": {"GET": "get_model", "PATCH": "finalize", "DELETE": "delete"},
    "/logged-models/{model_id}/tags": {"PATCH": "set_tags"},
    "/logged-models/{model_id}/tags/{tag_key}": {"DELETE": "delete_tag"},
    "/logged-models/{model_id}/params": {"POST": "log_params"},
}
