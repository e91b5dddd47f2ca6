"""MLflow's model registry endpoints (registered models, model versions, aliases, stages, tags) over
runwire's registry (runwire.registry: SQLite, versions, aliases, stages, audit history, lineage).

The registry is the training side's module, which ingest may not import: it comes in as
``registry`` (runwire.deploy.mlflow_backends opens it). Where MLflow and runwire differ
(README, "Coming from MLflow"):
- a version's digest is the SHA-256 of a manifest of the files below its source when the source
  is a run's artifacts in runwire's store (so `runwire models` can download and verify it); for
  any other source (s3://, models:/...) it is the SHA-256 of the source URI, marked in lineage;
- versions and models are never deleted nor renamed (the registry keeps its audit history
  whole): those calls answer INVALID_PARAMETER_VALUE;
- search filters take name, run_id and tags.KEY (not source_path nor version_number).
"""

from __future__ import annotations

import hashlib

from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.artifacts import split_run_path
from runwire.ingest.mlflow.protocol import MlflowError, invalid, missing

ACTOR = "mlflow-api"          # who the audit history names for changes made through this API
SOURCE = "mlflow.source"      # lineage key: the version's MLflow source URI
SOURCE_ONLY = "mlflow.digest_of_source"  # lineage key: the digest is the source URI's, not of files
STORAGE_LOCATION = "mlflow.storage_location"  # lineage key: where a models:/m-... source's files are
_STAGES = ("None", "Staging", "Production", "Archived")


def _ms(seconds: float | None) -> int:
    return int(round((seconds or 0) * 1000))


def _tags_json(tags: dict) -> list[dict]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]


def version_json(v: dict) -> dict:
    out = {"name": v["model"], "version": str(v["version"]), "creation_timestamp": _ms(v["created_at"]),
           "last_updated_timestamp": _ms(v["updated_at"] or v["created_at"]), "current_stage": v["stage"],
           "description": v["description"], "source": v["lineage"].get(SOURCE, ""), "run_id": v["run_id"],
           "status": "READY"}
    if v["tags"]:
        out["tags"] = _tags_json(v["tags"])
    if v["aliases"]:
        out["aliases"] = list(v["aliases"])
    return out


def latest_versions(versions: list[dict], stages: list[str] | None = None) -> list[dict]:
    """The newest version in each stage (of ``stages``, default all), in version order."""
    newest: dict[str, dict] = {}
    for v in versions:
        if v["version"] > newest.get(v["stage"], {"version": 0})["version"]:
            newest[v["stage"]] = v
    wanted = {_stage(s) for s in stages} if stages else set(newest)
    return sorted((v for s, v in newest.items() if s in wanted), key=lambda v: v["version"])


def model_json(m: dict) -> dict:
    out: dict = {"name": m["name"], "creation_timestamp": _ms(m["created_at"]),
                 "last_updated_timestamp": _ms(m["updated_at"] or m["created_at"])}
    if m["description"]:
        out["description"] = m["description"]
    latest = latest_versions(m["versions"])
    if latest:
        out["latest_versions"] = [version_json(v) for v in latest]
    if m["tags"]:
        out["tags"] = _tags_json(m["tags"])
    if m["aliases"]:
        out["aliases"] = [{"alias": a, "version": str(n)} for a, n in m["aliases"].items()]
    return out


def _stage(name) -> str:
    for known in _STAGES:
        if str(name).lower() == known.lower():
            return known
    raise invalid(f"Invalid Model Version stage: {name}. Value must be one of {', '.join(_STAGES)}.")


def _version_number(body: dict) -> int:
    value = P.required(body, "version")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Parameter 'version' must be an integer, got '{value}'.") from None


def _sort(rows: list[dict], order_by: list[str], fields: dict, default: list[str]) -> None:
    """Sort JSON rows in place by MLflow order_by clauses over ``fields`` (clause name -> key)."""
    clauses = []
    for clause in order_by or default:
        parts = clause.strip().split()
        field = parts[0].split(".", 1)[-1].strip("`") if parts else ""
        if field not in fields or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC")):
            raise invalid(f"Invalid order_by clause '{clause}'")
        clauses.append((fields[field], len(parts) < 2 or parts[1].upper() == "ASC"))
    for key, ascending in reversed(clauses):
        rows.sort(key=key, reverse=not ascending)


class MlflowRegistry:
    """The registry endpoints: (body, raw, allowed) -> response dict, or MlflowError.
    ``artifacts``: the ArtifactProxy (to digest a source below a run's artifacts), or None."""

    def __init__(self, service, registry, artifacts=None) -> None:
        self.service = service
        self.registry = registry
        self.artifacts = artifacts

    # --- look-ups with MLflow's errors -----------------------------------------------------

    def _model(self, name) -> dict:
        if not isinstance(name, str) or not name:
            raise invalid("Registered model name cannot be empty.")
        try:
            return self.registry.get_model(name)
        except ValueError:
            raise missing(f"Registered Model with name={name} not found") from None

    def _version(self, name, number: int) -> dict:
        model = self._model(name)
        for v in model["versions"]:
            if v["version"] == number:
                return v
        raise missing(f"Model Version (name={name}, version={number}) not found")

    def _call(self, fn, *args, **kwargs):
        """A registry write; its errors (bad alias, tag key) are the caller's."""
        try:
            return fn(*args, actor=ACTOR, **kwargs)
        except ValueError as exc:
            raise invalid(str(exc)) from None

    # --- registered models -------------------------------------------------------------------

    def create_registered_model(self, body, raw, allowed):
        name = P.required(body, "name")
        try:
            self.registry.get_model(name)
        except ValueError:
            pass
        else:
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists.")
        self._call(self.registry.create_model, name, description=body.get("description") or "")
        for tag in body.get("tags") or []:
            self._call(self.registry.set_tag, name, P.required(tag, "key"), str(tag.get("value", "")))
        return {"registered_model": model_json(self._model(name))}

    def get_registered_model(self, body, raw, allowed):
        return {"registered_model": model_json(self._model(P.required(body, "name")))}

    def update_registered_model(self, body, raw, allowed):
        name = self._model(P.required(body, "name"))["name"]
        if "description" in body:
            self._call(self.registry.set_description, name, body.get("description") or "")
        return {"registered_model": model_json(self._model(name))}

    def unsupported(self, body, raw, allowed):
        raise invalid("runwire's registry keeps every model and version for its audit history: models and "
                      "versions are not deleted or renamed (archive a version with transition-stage)")

    def search_registered_models(self, body, raw, allowed):
        from runwire.ingest.mlflow.service import record_matcher

        matches = record_matcher(body.get("filter") or "", {"name": lambda m: m["name"]}, "search_registered_models",
                                 absent_tag_differs=True)
        rows = [model_json(self.registry.get_model(m["name"])) for m in self.registry.list_models()]
        rows = [r for r in rows if matches({"name": r["name"], "tags": {t["key"]: t["value"] for t in r.get("tags", [])}})]
        _sort(rows, list(body.get("order_by") or []),
              {"name": lambda r: r["name"], "timestamp": lambda r: r["creation_timestamp"],
               "creation_timestamp": lambda r: r["creation_timestamp"],
               "last_updated_timestamp": lambda r: r["last_updated_timestamp"]}, ["name ASC"])
        return P.page(rows, body, 100, "registered_models")

    def get_latest_versions(self, body, raw, allowed):
        model = self._model(P.required(body, "name"))
        stages = body.get("stages") or None
        if isinstance(stages, str):
            stages = [stages]
        latest = latest_versions(model["versions"], stages)
        return {"model_versions": [version_json(v) for v in latest]} if latest else {}

    def _set_tag(self, body, model: str, version: int | None = None) -> dict:
        key = P.check_key("Tag", P.required(body, "key"))
        self._call(self.registry.set_tag, model, key, str(body.get("value", "")), version=version)
        return {}

    def _delete_present(self, key: str, present: dict, delete, model: str, **kwargs) -> dict:
        """MLflow's deletes of a tag or an alias: nothing to do when it is not there."""
        if key in present:
            self._call(delete, model, key, **kwargs)
        return {}

    def set_registered_model_tag(self, body, raw, allowed):
        return self._set_tag(body, self._model(P.required(body, "name"))["name"])

    def delete_registered_model_tag(self, body, raw, allowed):
        model = self._model(P.required(body, "name"))
        return self._delete_present(P.required(body, "key"), model["tags"], self.registry.delete_tag, model["name"])

    # --- aliases ------------------------------------------------------------------------------

    def set_alias(self, body, raw, allowed):
        name, alias = P.required(body, "name"), P.required(body, "alias")
        number = _version_number(body)
        self._version(name, number)
        if alias.lower() == "latest" or (alias[:1] in "vV" and alias[1:].isdigit()):
            raise invalid(f"'{alias}' alias name (case insensitive) is reserved.")
        self._call(self.registry.set_alias, name, alias, number)
        return {}

    def delete_alias(self, body, raw, allowed):
        model = self._model(P.required(body, "name"))
        return self._delete_present(P.required(body, "alias"), model["aliases"], self.registry.delete_alias,
                                    model["name"])

    def get_model_version_by_alias(self, body, raw, allowed):
        model = self._model(P.required(body, "name"))
        alias = P.required(body, "alias")
        if alias not in model["aliases"]:
            raise invalid(f"Registered model alias {alias} not found.")  # MLflow's code for it, not 404
        return {"model_version": version_json(self._version(model["name"], model["aliases"][alias]))}

    # --- model versions -----------------------------------------------------------------------

    def create_model_version(self, body, raw, allowed):
        name = self._model(P.required(body, "name"))["name"]
        source = P.required(body, "source")
        run_id = body.get("run_id") or ""
        project = ""
        if body.get("model_id") and not source.startswith("models:/"):
            self.service.logged_models.get(body["model_id"], allowed)
        if run_id:
            project = self.service._run(run_id, allowed)["project"]
        digest, store, artifact, lineage = self._digest(source, allowed)
        lineage[SOURCE] = source
        version = self._call(self.registry.create_version, name, digest=digest, run_id=run_id, project=project,
                             artifact=artifact, store=store, lineage=lineage,
                             description=body.get("description") or "")
        for tag in body.get("tags") or []:
            self._call(self.registry.set_tag, name, P.required(tag, "key"), str(tag.get("value", "")),
                       version=version["version"])
        return {"model_version": version_json(self._version(name, version["version"]))}

    def _digest(self, source: str, allowed) -> tuple[str, str, str, dict]:
        """(digest, store, the artifact's name in the run, lineage) for a version's source: a
        manifest of the files below it when they are in runwire's store (a run's artifacts, a
        logged model's ``models:/m-...``)."""
        location, lineage = source, {}
        if source.startswith("models:/m-"):
            location = self.service.logged_models.get(source.removeprefix("models:/").strip("/"),
                                                      allowed)["artifact_location"]
            lineage[STORAGE_LOCATION] = location
        path = location.removeprefix("mlflow-artifacts:").lstrip("/") if location.startswith("mlflow-artifacts:") else None
        if path is not None and self.artifacts is not None and self.artifacts.owns(path):
            info, prefix, rel = self.artifacts._owner(path, allowed)
            below = f"{rel}/" if rel else ""
            files = []
            for file_path, (record, entry) in sorted(self.artifacts._files(info, prefix).items()):
                if file_path.startswith(below):
                    entry = entry if entry is not None else self.artifacts._manifest(record)[0]
                    files.append({"path": file_path[len(below):], "sha256": entry["sha256"], "size": entry["size"]})
            if files:
                manifest = self.artifacts.backend.put_manifest(files)
                return manifest["digest"], manifest["store"], (prefix + rel).rstrip("/"), lineage
        return hashlib.sha256(source.encode()).hexdigest(), "", "", {**lineage, SOURCE_ONLY: True}

    def get_model_version(self, body, raw, allowed):
        return {"model_version": version_json(self._version(P.required(body, "name"), _version_number(body)))}

    def update_model_version(self, body, raw, allowed):
        v = self._version(P.required(body, "name"), _version_number(body))
        if "description" in body:
            self._call(self.registry.set_description, v["model"], body.get("description") or "", version=v["version"])
        return {"model_version": version_json(self._version(v["model"], v["version"]))}

    def transition_model_version_stage(self, body, raw, allowed):
        v = self._version(P.required(body, "name"), _version_number(body))
        stage = _stage(P.required(body, "stage"))
        archive = str(body.get("archive_existing_versions", False)).lower() == "true"
        self._call(self.registry.transition, v["model"], v["version"], stage, archive_existing=archive)
        return {"model_version": version_json(self._version(v["model"], v["version"]))}

    def search_model_versions(self, body, raw, allowed):
        from runwire.ingest.mlflow.service import record_matcher

        matches = record_matcher(body.get("filter") or "", {"name": lambda v: v["model"], "run_id": lambda v: v["run_id"]},
                                 "search_model_versions", absent_tag_differs=True)
        versions = [v for m in self.registry.list_models() for v in self.registry.get_model(m["name"])["versions"]
                    if matches(v)]
        rows = [version_json(v) for v in versions]
        _sort(rows, list(body.get("order_by") or []),
              {"name": lambda r: r["name"], "version_number": lambda r: int(r["version"]),
               "creation_timestamp": lambda r: r["creation_timestamp"],
               "last_updated_timestamp": lambda r: r["last_updated_timestamp"]},
              ["name ASC", "version_number DESC"])
        return P.page(rows, body, 10_000, "model_versions")

    def get_model_version_download_uri(self, body, raw, allowed):
        v = self._version(P.required(body, "name"), _version_number(body))
        return {"artifact_uri": v["lineage"].get(STORAGE_LOCATION) or v["lineage"].get(SOURCE, "")}

    def set_model_version_tag(self, body, raw, allowed):
        v = self._version(P.required(body, "name"), _version_number(body))
        return self._set_tag(body, v["model"], v["version"])

    def delete_model_version_tag(self, body, raw, allowed):
        v = self._version(P.required(body, "name"), _version_number(body))
        return self._delete_present(P.required(body, "key"), v["tags"], self.registry.delete_tag, v["model"],
                                    version=v["version"])


# path (after the prefix) -> {HTTP method: MlflowRegistry method}
ROUTES = {
    "/registered-models/create": {"POST": "create_registered_model"},
    "/registered-models/get": {"GET": "get_registered_model"},
    "/registered-models/update": {"PATCH": "update_registered_model"},
    "/registered-models/rename": {"POST": "unsupported"},
    "/registered-models/delete": {"DELETE": "unsupported"},
    "/registered-models/search": {"GET": "search_registered_models"},
    "/registered-models/get-latest-versions": {"GET": "get_latest_versions", "POST": "get_latest_versions"},
    "/registered-models/set-tag": {"POST": "set_registered_model_tag"},
    "/registered-models/delete-tag": {"DELETE": "delete_registered_model_tag"},
    "/registered-models/alias": {"POST": "set_alias", "DELETE": "delete_alias", "GET": "get_model_version_by_alias"},
    "/model-versions/create": {"POST": "create_model_version"},
    "/model-versions/get": {"GET": "get_model_version"},
    "/model-versions/update": {"PATCH": "update_model_version"},
    "/model-versions/delete": {"DELETE": "unsupported"},
    "/model-versions/transition-stage": {"POST": "transition_model_version_stage"},
    "/model-versions/search": {"GET": "search_model_versions"},
    "/model-versions/get-download-uri": {"GET": "get_model_version_download_uri"},
    "/model-versions/set-tag": {"POST": "set_model_version_tag"},
    "/model-versions/delete-tag": {"DELETE": "delete_model_version_tag"},
}
