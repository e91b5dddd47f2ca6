"""MLflow's `mlflow-artifacts` proxy (what `mlflow server --serve-artifacts` serves), over runwire's
artifact store.

A run's ``artifact_uri`` is ``mlflow-artifacts:/<experiment>/<run>/artifacts``; the client turns
it into ``/api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/<path>``. Each file
uploaded there becomes one runwire artifact of the run, named by its path (``model/MLmodel``),
type ``mlflow``: its bytes go to the content-addressed store (a blob already stored is not sent
again) and its record travels through the pipeline as the tag ``runwire.artifact.<path>``, like
every artifact the emitter logs, so `runwire artifacts ls RUN` and the UI list it. Artifacts the
emitter logged (directories) show as directories holding their manifest's files.

Consistency: ingest stores a record well under a second after it was acknowledged; until then
this server answers from the records it wrote itself (read-your-writes on one server).

The store and the record format are the training side's (runwire.stores, runwire.artifacts),
which ingest may not import: they come in as ``backend`` (runwire.deploy.mlflow_backends).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import PurePosixPath
from urllib.parse import unquote

from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.protocol import MlflowError, invalid, missing
from runwire.storage.mlflow_meta import ACTIVE, DELETED_TAG

MLFLOW_TYPE = "mlflow"  # the artifact type of a file uploaded through this proxy
_RUN_PATH = re.compile(r"^(?P<experiment>[^/]+)/(?P<run>[0-9a-f]{32})/artifacts(?:/(?P<rel>.*))?$")
_MODEL_PATH = re.compile(r"^(?P<experiment>[^/]+)/models/(?P<model>m-[0-9a-f]{32})/artifacts(?:/(?P<rel>.*))?$")
LOGGED_MODELS = "mlflow-logged-models"  # a logged model's files: artifacts of its source run under this name
_RECENT_S = 300.0  # how long this server's own writes override what storage shows


def safe_path(path: str) -> str:
    """MLflow's validate_path_is_safe: a relative '/'-separated path without '..', '#' or
    backslashes, decoded as often as it is encoded; else INVALID_PARAMETER_VALUE "Invalid path"."""
    for _ in range(10):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    if ("#" in path or "\\" in path or ".." in path.split("/") or path.startswith("/")
            or re.match(r"^[A-Za-z]:", path) or "\x00" in path):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Invalid path")
    return path


def split_run_path(path: str) -> tuple[str, str, str] | None:
    """(experiment_id, run_id, path below the run's artifact root) for a path under a run's
    artifact root, else None."""
    match = _RUN_PATH.match(path.strip("/"))
    if match is None:
        return None
    return match["experiment"], match["run"], (match["rel"] or "").strip("/")


def children(files: dict[str, int], directory: str) -> list[dict]:
    """MLflow FileInfo JSON for the entries directly under ``directory`` ('' is the root), given
    every file's path -> size: name only (as the proxy answers), directories without a size,
    sorted by name. A path that is a file, or that holds nothing, has no children."""
    prefix = f"{directory}/" if directory else ""
    found: dict[str, dict] = {}
    for path, size in files.items():
        if not path.startswith(prefix):
            continue
        head, sep, _ = path[len(prefix):].partition("/")
        if sep:
            found[head] = {"path": head, "is_dir": True}
        else:
            found.setdefault(head, {"path": head, "is_dir": False, "file_size": int(size)})
    return [found[name] for name in sorted(found)]


class ArtifactProxy:
    """The artifact endpoints. ``service``: the MlflowService (its runs, sink and queries);
    ``backend``: upload_file(name, path) -> record tags, manifest(record) -> files,
    download(record, sha256, dest), tag_prefix."""

    def __init__(self, service, backend) -> None:
        self.service = service
        self.backend = backend
        self._recent: dict[str, dict[str, tuple[float, dict | None]]] = {}  # run -> name -> (when, record)
        self._manifests: dict[str, list[dict]] = {}  # digest -> files (content-addressed: never changes)
        self._lock = threading.Lock()

    # --- the run's file tree -----------------------------------------------------------------

    def _owner(self, path: str, allowed) -> tuple[dict, str, str]:
        """(the run holding the files, the name prefix of its records that is this root, the
        path below the root) for a run's or a logged model's artifact path."""
        model = _MODEL_PATH.match(path.strip("/"))
        if model is not None:
            logged = self.service.logged_models.get(model["model"], allowed)
            if not logged["source_run_id"]:
                raise invalid(f"Logged model {logged['model_id']} has no source run: runwire keeps a logged "
                              "model's files with its run")
            info = self.service._run(logged["source_run_id"], allowed)
            return info, f"{LOGGED_MODELS}/{logged['model_id']}/", (model["rel"] or "").strip("/")
        parts = split_run_path(path)
        if parts is None:
            raise missing(f"No run or logged model artifact root in path '{path}': runwire serves "
                          "<experiment_id>/<run_id>/artifacts/<path> and <experiment_id>/models/<model_id>/artifacts/<path>")
        experiment_id, run_id, rel = parts
        info = self.service._run(run_id, allowed)
        if info["experiment_id"] != experiment_id:
            raise missing(f"Run {run_id} is not in experiment {experiment_id}")
        return info, "", rel

    def owns(self, path: str) -> bool:
        return split_run_path(path) is not None or _MODEL_PATH.match(path.strip("/")) is not None

    def _records(self, info: dict) -> dict[str, dict]:
        """The run's artifact records by name: storage's, then this server's recent writes."""
        records = {r["name"]: r for r in self.service.queries.run_artifacts(info["project"], info["run_id"])}
        now = time.monotonic()
        with self._lock:
            recent = self._recent.get(info["run_id"], {})
            for name, (when, record) in list(recent.items()):
                if now - when > _RECENT_S:
                    del recent[name]
                elif record is None:
                    records.pop(name, None)
                else:
                    records[name] = record
        return records

    def _manifest(self, record: dict) -> list[dict]:
        digest = record["digest"]
        files = self._manifests.get(digest)
        if files is None:
            files = self.backend.manifest(record)
            with self._lock:
                if len(self._manifests) > 10_000:
                    self._manifests.clear()
                self._manifests[digest] = files
        return files

    def _files(self, info: dict, prefix: str = "") -> dict[str, tuple[dict, dict | None]]:
        """path below the root (the run's, or a logged model's at ``prefix``) -> (record, manifest
        entry or None for an MLflow file)."""
        out: dict[str, tuple[dict, dict | None]] = {}
        for name, record in self._records(info).items():
            if not name.startswith(prefix) or (not prefix and name.startswith(LOGGED_MODELS + "/")):
                continue
            name = name[len(prefix):]
            if record.get("type") == MLFLOW_TYPE:
                out[name] = (record, None)
            else:
                for entry in self._manifest(record):
                    out[f"{name}/{entry['path']}"] = (record, entry)
        return out

    @staticmethod
    def _size(record: dict, entry: dict | None) -> int:
        return int(entry["size"] if entry is not None else record.get("size_bytes", record.get("size", 0)))

    def _remember(self, run_id: str, name: str, record: dict | None) -> None:
        with self._lock:
            if run_id not in self._recent and len(self._recent) > 10_000:  # bounded: drop what has expired
                cutoff = time.monotonic() - _RECENT_S
                self._recent = {r: names for r, names in self._recent.items()
                                if any(when > cutoff for when, _ in names.values())}
            self._recent.setdefault(run_id, {})[name] = (time.monotonic(), record)

    def _send_record(self, info: dict, name: str, value: str) -> None:
        # A stream of its own per request: an upload after a delete of the same bytes must not
        # collapse into the first upload's batch (a retried PUT stores the same value again: harmless).
        ident = P.identity(info["project"], info["run_id"], f"mlflow-artifact-{uuid.uuid4().hex}")
        self.service._send([P.tags_envelope(ident, 1, {self.backend.tag_prefix + name: value})])

    # --- endpoints -----------------------------------------------------------------------------

    def upload(self, path: str, source: str, allowed) -> dict:
        """PUT: ``source`` is a local file holding the request's body."""
        import json

        info, prefix, rel = self._owner(safe_path(path), allowed)
        if not rel:
            raise invalid("Invalid path: an artifact needs a file name below the artifact root")
        rel = prefix + rel
        if info["lifecycle_stage"] != ACTIVE:
            raise invalid(f"The run {info['run_id']} must be in the 'active' state. "
                          f"Current state is {info['lifecycle_stage']}.")
        if len(self.backend.tag_prefix + rel) > P.MAX_KEY_LENGTH:
            raise invalid(f"Invalid path: artifact paths are at most {P.MAX_KEY_LENGTH - len(self.backend.tag_prefix)} "
                          "characters in runwire")
        try:
            tags = self.backend.upload_file(rel, source, MLFLOW_TYPE)
        except ValueError as exc:  # a name runwire's artifact records refuse
            raise invalid(f"Invalid path: {exc}") from None
        [value] = tags.values()
        self._send_record(info, rel, value)
        record = json.loads(value)
        self._remember(info["run_id"], rel, {**record, "name": rel, "size_bytes": record["size"]})
        return {}

    def download(self, path: str, allowed) -> tuple[str, str]:
        """GET: (a temporary directory, the file in it holding the artifact's bytes); the caller
        removes the directory."""
        info, prefix, rel = self._owner(safe_path(path), allowed)
        found = self._files(info, prefix).get(rel)
        if found is None:
            raise missing(f"No such file or directory: '{rel}'")
        record, entry = found
        if entry is None:
            [entry] = self._manifest(record)
        tmp = tempfile.mkdtemp(prefix="runwire-mlflow-")
        dest = os.path.join(tmp, PurePosixPath(rel).name)
        self.backend.download(record, entry["sha256"], dest)
        return tmp, dest

    def list(self, path: str | None, allowed) -> dict:
        """GET ?path=: the entries directly below ``path``."""
        path = safe_path(path or "")
        if not self.owns(path):
            return {}  # not below a run's or a logged model's artifact root: nothing runwire stores there
        info, prefix, rel = self._owner(path, allowed)
        files = {p: self._size(record, entry) for p, (record, entry) in self._files(info, prefix).items()}
        out = children(files, rel)
        return {"files": out} if out else {}

    def list_for_run(self, run_id: str, path: str | None, allowed) -> dict:
        """The tracking API's artifacts/list (run_id, path): paths relative to the run's root."""
        info = self.service._run(run_id, allowed)
        rel = safe_path(path or "").strip("/")
        files = {p: self._size(record, entry) for p, (record, entry) in self._files(info).items()}
        out = [{**f, "path": f"{rel}/{f['path']}" if rel else f["path"]} for f in children(files, rel)]
        result: dict = {"root_uri": info["artifact_uri"]}
        if out:
            result["files"] = out
        return result

    def delete(self, path: str, allowed) -> dict:
        """DELETE: the file, or everything below the directory, at ``path``."""
        info, prefix, rel = self._owner(safe_path(path), allowed)
        records = {n: r for n, r in self._records(info).items() if n.startswith(prefix)
                   and (prefix or not n.startswith(LOGGED_MODELS + "/"))}
        rel = prefix + rel if rel else prefix.rstrip("/")
        names = [n for n in records if not rel or n == rel or n.startswith(rel + "/")]
        if not names and any(rel.startswith(n + "/") for n in records):
            raise invalid(f"'{rel}' is inside the artifact '{next(n for n in records if rel.startswith(n + '/'))}' "
                          "logged by runwire: delete the whole artifact")
        for name in names:
            self._send_record(info, name, DELETED_TAG)
            self._remember(info["run_id"], name, None)
        return {}
