"""The MLflow tracking endpoints over runwire (I/O shell around runwire.ingest.mlflow.protocol).

Writes of params, tags, metrics and run start/end become Envelopes handed to the gateway's sink
(Kafka with acks=all in production, the ingest writer in embedded mode); a request is answered
once the sink acknowledged every envelope of it, as the gateway answers the emitter. Experiment
and run metadata (ids, names, lifecycle, MLflow status, dataset inputs) go straight to their
tables (runwire.storage.mlflow_meta) so the client reads them back at once. Reads go through
runwire.storage.query.RunQueries.

Consistency: run and experiment metadata are read-your-writes. Params, tags and metrics become
visible once ingest has stored them (well under a second on a healthy pipeline), as for every
runwire run; MLflow's check that a param is never changed is not made (it would need that read).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid

from runwire.ingest import codec
from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.protocol import MlflowError, invalid, missing
from runwire.ingest.validate import InvalidEnvelope, validate
from runwire.storage.filters import FilterError
from runwire.storage.mlflow_meta import ACTIVE, DELETED, DELETED_TAG, MlflowMetaWriter
from runwire.storage.query import QueryError, RunQueries

log = logging.getLogger("runwire.mlflow")

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
_VIEW_TYPES = {"ACTIVE_ONLY": (ACTIVE,), "DELETED_ONLY": (DELETED,), "ALL": (ACTIVE, DELETED),
               "1": (ACTIVE,), "2": (DELETED,), "3": (ACTIVE, DELETED)}
_SINK_CODES = {"RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT": "INVALID_PARAMETER_VALUE"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Ttl:
    """A small cache whose entries live ``ttl_s`` seconds (other servers may change them)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict = {}
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
        if item is None or time.monotonic() - item[0] > self.ttl_s:
            return None
        return item[1]

    def put(self, key, value) -> None:
        with self._lock:
            if len(self._items) > 100_000:
                self._items.clear()
            self._items[key] = (time.monotonic(), value)

    def drop(self, key) -> None:
        with self._lock:
            self._items.pop(key, None)


class MlflowService:
    """The endpoints as methods: (request body dict, raw body bytes, allowed projects or None)
    -> response dict, or MlflowError."""

    def __init__(self, queries: RunQueries, meta: MlflowMetaWriter, sink, tokens: dict[str, str] | None = None,
                 ack_timeout_s: float = 30.0, cache_ttl_s: float = 5.0, artifact_root: str = "") -> None:
        self.queries = queries
        self.meta = meta
        self.sink = sink
        self.tokens = dict(tokens or {})
        self.ack_timeout_s = ack_timeout_s
        self.artifact_root = artifact_root.rstrip("/") or "mlflow-artifacts:"
        self._runs = _Ttl(cache_ttl_s)   # run_id -> info row, for the write path's checks
        self._experiments = _Ttl(cache_ttl_s)
        self._create_lock = threading.Lock()
        self.counters = {"envelopes": 0, "points": 0}
        self.artifacts = None  # the mlflow-artifacts proxy (runwire.ingest.mlflow.artifacts), when served
        self.registry = None   # the registry endpoints (runwire.ingest.mlflow.registry), when served
        from runwire.ingest.mlflow.logged_models import LoggedModels

        self.logged_models = LoggedModels(self)

    # --- authentication: the gateway's tokens (project -> bearer token) ------------------------

    def allowed_projects(self, authorization: str | None) -> set[str] | None:
        """Projects the caller may touch; None when authentication is off."""
        if not self.tokens:
            return None
        token = ""
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        allowed = {p for p, t in self.tokens.items() if token and hmac.compare_digest(t.encode(), token.encode())}
        if not allowed:
            raise MlflowError("UNAUTHENTICATED", "missing or invalid bearer token")
        return allowed

    @staticmethod
    def _check_project(allowed: set[str] | None, project: str) -> None:
        if allowed is not None and project not in allowed:
            raise MlflowError("PERMISSION_DENIED", f"the token is not valid for project {project!r}")

    # --- the sink ----------------------------------------------------------------------------

    def _send(self, envelopes: list) -> None:
        """Hand envelopes to the sink and wait until it acknowledged all of them."""
        encoded = []
        for envelope in envelopes:
            try:
                validate(envelope)
            except InvalidEnvelope as exc:
                raise invalid(str(exc)) from None
            encoded.append(codec.encode_envelope(envelope, time.time_ns()))
        remaining = [len(encoded)]
        errors: list = []
        finished = threading.Event()
        lock = threading.Lock()

        def done(error: Exception | None = None, code: str = "UNAVAILABLE") -> None:
            with lock:
                if error is not None:
                    errors.append((code, error))
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

        for kind, key, value in encoded:
            self.sink.submit(kind, key, value, done)
        if not finished.wait(self.ack_timeout_s):
            raise MlflowError("TEMPORARILY_UNAVAILABLE", "the pipeline did not acknowledge in time, retry")
        if errors:
            code, error = errors[0]
            log.warning("sink refused an MLflow write (%s): %s", code, error)
            raise MlflowError(_SINK_CODES.get(code, "TEMPORARILY_UNAVAILABLE"), f"{code}: {str(error)[:300]}")
        self.counters["envelopes"] += len(envelopes)

    # --- experiments -------------------------------------------------------------------------

    def ensure_default_experiment(self) -> None:
        if not self.queries.mlflow_experiments(experiment_ids=[DEFAULT_EXPERIMENT_ID]):
            now = _now_ms()
            self.meta.put_experiment({
                "experiment_id": DEFAULT_EXPERIMENT_ID, "name": DEFAULT_EXPERIMENT_NAME,
                "project": DEFAULT_EXPERIMENT_NAME, "artifact_location": f"{self.artifact_root}/{DEFAULT_EXPERIMENT_ID}",
                "lifecycle_stage": ACTIVE, "tags": {}, "creation_time": now, "last_update_time": now})

    def _experiment(self, experiment_id, allowed=None) -> dict:
        experiment_id = str(experiment_id)
        found = self._experiments.get(experiment_id)
        if found is None:
            rows = self.queries.mlflow_experiments(experiment_ids=[experiment_id])
            if not rows:
                raise missing(f"No Experiment with id={experiment_id} exists")
            found = rows[0]
            self._experiments.put(experiment_id, found)
        self._check_project(allowed, found["project"])
        return found

    def _put_experiment(self, experiment: dict) -> None:
        self.meta.put_experiment(experiment)
        self._experiments.drop(experiment["experiment_id"])

    def create_experiment(self, body, raw, allowed):
        name = P.required(body, "name")
        if not isinstance(name, str) or len(name) > P.MAX_EXPERIMENT_NAME_LENGTH:
            raise invalid(f"Invalid experiment name: {name!r}")
        project = P.project_for(name)
        self._check_project(allowed, project)
        tags = {t["key"]: str(t.get("value", "")) for t in body.get("tags") or []}
        with self._create_lock:  # one server: no two experiments with one name
            if self.queries.mlflow_experiments(names=[name]):
                raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) already exists.")
            experiment_id = str(uuid.uuid4().int % 10**18 + 10**18)  # numeric, as MLflow's stores use
            now = _now_ms()
            self._put_experiment({
                "experiment_id": experiment_id, "name": name, "project": project,
                "artifact_location": body.get("artifact_location") or f"{self.artifact_root}/{experiment_id}",
                "lifecycle_stage": ACTIVE, "tags": tags, "creation_time": now, "last_update_time": now})
        return {"experiment_id": experiment_id}

    def get_experiment(self, body, raw, allowed):
        experiment = self._experiment(P.required(body, "experiment_id"), allowed)
        return {"experiment": P.experiment_json(experiment)}

    def get_experiment_by_name(self, body, raw, allowed):
        name = P.required(body, "experiment_name")
        rows = self.queries.mlflow_experiments(names=[name])
        if not rows:
            raise missing(f"Could not find experiment with name '{name}'")
        self._check_project(allowed, rows[0]["project"])
        return {"experiment": P.experiment_json(rows[0])}

    def search_experiments(self, body, raw, allowed):
        stages, max_results = _search_scope(body, "view_type")
        matches = _experiment_matcher(body.get("filter") or "")
        rows = [e for e in self.queries.mlflow_experiments() if e["lifecycle_stage"] in stages and matches(e)
                and (allowed is None or e["project"] in allowed)]
        _sort_experiments(rows, list(body.get("order_by") or []))
        offset = P.decode_page_token(body.get("page_token"))
        page = rows[offset:offset + max_results]
        out: dict = {"experiments": [P.experiment_json(e) for e in page]}
        if offset + max_results < len(rows):
            out["next_page_token"] = P.encode_page_token(offset + max_results)
        return out

    def update_experiment(self, body, raw, allowed):
        experiment = dict(self._experiment(P.required(body, "experiment_id"), allowed))
        new_name = body.get("new_name")
        if new_name:
            if experiment["lifecycle_stage"] != ACTIVE:
                raise invalid("Cannot rename a non-active experiment.")
            if new_name != experiment["name"] and self.queries.mlflow_experiments(names=[new_name]):
                raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={new_name}) already exists.")
            experiment.update(name=new_name, last_update_time=_now_ms())
            self._put_experiment(experiment)  # the project stays: runs keep where they are stored
        return {}

    def set_experiment_tag(self, body, raw, allowed):
        experiment = dict(self._experiment(P.required(body, "experiment_id"), allowed))
        key = P.check_key("Tag", P.required(body, "key"))
        experiment["tags"] = {**experiment["tags"], key: P.check_value("Tag", key, body.get("value"),
                                                                        P.MAX_TAG_VALUE_LENGTH)}
        experiment["last_update_time"] = _now_ms()
        self._put_experiment(experiment)
        return {}

    def _set_experiment_stage(self, body, allowed, stage: str) -> dict:
        experiment = dict(self._experiment(P.required(body, "experiment_id"), allowed))
        if experiment["experiment_id"] == DEFAULT_EXPERIMENT_ID and stage == DELETED:
            raise invalid("Cannot delete the default experiment '0'. This is an internally reserved experiment.")
        now = _now_ms()
        experiment.update(lifecycle_stage=stage, last_update_time=now)
        self._put_experiment(experiment)
        # As MLflow's SQL store: the experiment's runs follow it.
        runs = [r for r in self.queries.mlflow_search_runs([experiment["project"]], lifecycle_stages=(ACTIVE, DELETED),
                                                            limit=10**9, deleted_tag=DELETED_TAG)
                if r["experiment_id"] == experiment["experiment_id"]]
        for run in runs:
            run.update(lifecycle_stage=stage, deleted_time=now if stage == DELETED else None)
            self._runs.drop(run["run_id"])
        self.meta.put_runs(runs)
        return {}

    def delete_experiment(self, body, raw, allowed):
        return self._set_experiment_stage(body, allowed, DELETED)

    def restore_experiment(self, body, raw, allowed):
        return self._set_experiment_stage(body, allowed, ACTIVE)

    # --- runs --------------------------------------------------------------------------------

    def _run(self, run_id: str, allowed, cached: bool = False) -> dict:
        info = self._runs.get(run_id) if cached else None
        if info is None:
            info = self.queries.mlflow_runs([run_id]).get(run_id)
            if info is None:
                raise missing(f"Run with id={run_id} not found")
            self._runs.put(run_id, info)
        self._check_project(allowed, info["project"])
        return info

    def _active_run(self, body, allowed) -> dict:
        info = self._run(P.run_id_of(body), allowed, cached=True)
        if info["lifecycle_stage"] != ACTIVE:
            raise invalid(f"The run {info['run_id']} must be in the 'active' state. "
                          f"Current state is {info['lifecycle_stage']}.")
        return info

    def _put_run(self, info: dict) -> None:
        self.meta.put_runs([info])
        self._runs.put(info["run_id"], info)

    def create_run(self, body, raw, allowed):
        experiment = self._experiment(body.get("experiment_id") or DEFAULT_EXPERIMENT_ID, allowed)
        if experiment["lifecycle_stage"] != ACTIVE:
            raise invalid(f"The experiment {experiment['experiment_id']} must be in the 'active' state. "
                          f"Current state is {experiment['lifecycle_stage']}.")
        tags = {}
        for tag in body.get("tags") or []:
            key = P.check_key("Tag", tag.get("key"))
            tags[key] = P.check_value("Tag", key, tag.get("value"), P.MAX_TAG_VALUE_LENGTH)
        run_name, name_tag = body.get("run_name") or "", tags.get(P.RUN_NAME_TAG)
        if run_name and name_tag and run_name != name_tag:
            raise invalid("Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different "
                          f"values (run_name='{run_name}', mlflow.runName='{name_tag}').")
        run_name = run_name or name_tag or P.random_run_name()
        tags[P.RUN_NAME_TAG] = run_name
        run_id = uuid.uuid4().hex
        start = P.as_int(body.get("start_time"), "start_time") or _now_ms()
        info = {"run_id": run_id, "project": experiment["project"], "experiment_id": experiment["experiment_id"],
                "name": run_name, "user_id": body.get("user_id") or "", "status": "RUNNING", "start_time": start,
                "end_time": None, "artifact_uri": f"{experiment['artifact_location']}/{run_id}/artifacts",
                "lifecycle_stage": ACTIVE, "deleted_time": None}
        self._put_run(info)
        ident = P.identity(info["project"], run_id, P.stream_id("create", run_id, raw))
        self._send([P.run_start(ident, run_name, start, tags)])
        return {"run": P.run_json(info, {"tags": tags})}

    def get_run(self, body, raw, allowed):
        info = self._run(P.run_id_of(body), allowed)
        data = self.queries.mlflow_run_data([(info["project"], info["run_id"])], DELETED_TAG)[info["run_id"]]
        return {"run": P.run_json(info, data)}

    def update_run(self, body, raw, allowed):
        info = dict(self._run(P.run_id_of(body), allowed))
        if info["lifecycle_stage"] != ACTIVE:
            raise invalid(f"The run {info['run_id']} must be in the 'active' state. "
                          f"Current state is {info['lifecycle_stage']}.")
        status = body.get("status")
        if status is not None and status not in P.RUN_STATUSES:
            raise invalid(f"Invalid value {status!r} for parameter 'status'")
        end_time = P.as_int(body.get("end_time"), "end_time")
        run_name = body.get("run_name")
        envelopes = []
        ident = P.identity(info["project"], info["run_id"], P.stream_id("update", info["run_id"], raw))
        if status:
            info["status"] = status
        if end_time is not None:
            info["end_time"] = end_time
        if run_name:
            info["name"] = run_name
            envelopes.append(P.tags_envelope(ident, 1, {P.RUN_NAME_TAG: run_name}))
        if status in P.TERMINAL:
            if info["end_time"] is None:
                info["end_time"] = _now_ms()
            envelope = P.run_end(ident, status, info["end_time"])
            envelope.seq = len(envelopes) + 1
            envelopes.append(envelope)
        self._put_run(info)
        if envelopes:
            self._send(envelopes)
        return {"run_info": P.run_json(info, {})["info"]}

    def _set_run_stage(self, body, allowed, stage: str) -> dict:
        info = dict(self._run(P.run_id_of(body), allowed))
        info.update(lifecycle_stage=stage, deleted_time=_now_ms() if stage == DELETED else None)
        self._put_run(info)
        return {}

    def delete_run(self, body, raw, allowed):
        return self._set_run_stage(body, allowed, DELETED)

    def restore_run(self, body, raw, allowed):
        return self._set_run_stage(body, allowed, ACTIVE)

    def search_runs(self, body, raw, allowed):
        stages, max_results = _search_scope(body, "run_view_type")
        experiments = [self._experiment(e, allowed) for e in body.get("experiment_ids") or []]
        projects = sorted({e["project"] for e in experiments})
        offset = P.decode_page_token(body.get("page_token"))
        if not projects:
            return {}
        try:
            found = self.queries.mlflow_search_runs(
                projects, body.get("filter") or "", list(body.get("order_by") or []), stages,
                limit=max_results, offset=offset, deleted_tag=DELETED_TAG)
        except FilterError as exc:
            raise invalid(f"Invalid filter or order_by: {exc.reason} (position {exc.position}) in {exc.text!r}") from None
        except QueryError as exc:
            raise invalid(str(exc)) from None
        wanted = {e["experiment_id"] for e in experiments}
        rows = [r for r in found if r["experiment_id"] in wanted]
        data = self.queries.mlflow_run_data([(r["project"], r["run_id"]) for r in rows], DELETED_TAG)
        out: dict = {"runs": [P.run_json(r, data[r["run_id"]]) for r in rows]}
        if len(found) == max_results:
            out["next_page_token"] = P.encode_page_token(offset + max_results)
        return out

    # --- logging -----------------------------------------------------------------------------

    def log_metric(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        metric = {"key": P.required(body, "key"), "value": body.get("value"), "timestamp": body.get("timestamp"),
                  "step": body.get("step")}
        points = P.metric_points([metric])
        ident = P.identity(info["project"], info["run_id"], P.stream_id("metric", info["run_id"], raw))
        self._send([P.metric_envelope(ident, 1, points)])
        self.counters["points"] += 1
        return {}

    def log_param(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        key = P.check_key("Param", P.required(body, "key"))
        value = P.check_value("Param", key, body.get("value"), P.MAX_PARAM_VALUE_LENGTH)
        ident = P.identity(info["project"], info["run_id"], P.stream_id("param", info["run_id"], raw))
        self._send([P.params_envelope(ident, 1, {key: value})])
        return {}

    def set_tag(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        key = P.check_key("Tag", P.required(body, "key"))
        value = P.check_value("Tag", key, body.get("value"), P.MAX_TAG_VALUE_LENGTH)
        ident = P.identity(info["project"], info["run_id"], P.stream_id("tag", info["run_id"], raw))
        self._send([P.tags_envelope(ident, 1, {key: value})])
        if key == P.RUN_NAME_TAG and value != info["name"]:  # as MLflow: the tag renames the run
            self._put_run({**info, "name": value})
        return {}

    def delete_tag(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        key = P.required(body, "key")
        ident = P.identity(info["project"], info["run_id"], P.stream_id("untag", info["run_id"], raw))
        self._send([P.tags_envelope(ident, 1, {key: DELETED_TAG})])
        return {}

    def log_batch(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        metrics, params, tags = body.get("metrics") or [], body.get("params") or [], body.get("tags") or []
        if len(metrics) > P.MAX_METRICS_PER_BATCH or len(params) > P.MAX_PARAMS_TAGS_PER_BATCH \
                or len(tags) > P.MAX_PARAMS_TAGS_PER_BATCH or len(metrics) + len(params) + len(tags) > P.MAX_ENTITIES_PER_BATCH:
            raise invalid(f"A batch logging request can contain at most {P.MAX_METRICS_PER_BATCH} metrics, "
                          f"{P.MAX_PARAMS_TAGS_PER_BATCH} params, {P.MAX_PARAMS_TAGS_PER_BATCH} tags and "
                          f"{P.MAX_ENTITIES_PER_BATCH} entities in total. Got {len(metrics)} metrics, {len(params)} "
                          f"params and {len(tags)} tags.")
        param_map: dict[str, str] = {}
        for p in params:
            key = P.check_key("Param", p.get("key"))
            value = P.check_value("Param", key, p.get("value"), P.MAX_PARAM_VALUE_LENGTH)
            if param_map.get(key, value) != value:
                raise invalid(f"Duplicate parameter keys have been submitted: {[key]}. Please ensure the request "
                              "contains only one param value per param key.")
            param_map[key] = value
        tag_map = {}
        for t in tags:
            key = P.check_key("Tag", t.get("key"))
            tag_map[key] = P.check_value("Tag", key, t.get("value"), P.MAX_TAG_VALUE_LENGTH)
        ident = P.identity(info["project"], info["run_id"], P.stream_id("batch", info["run_id"], raw))
        envelopes = []
        if param_map:
            envelopes.append(P.params_envelope(ident, len(envelopes) + 1, param_map))
        if tag_map:
            envelopes.append(P.tags_envelope(ident, len(envelopes) + 1, tag_map))
        if metrics:
            envelopes.append(P.metric_envelope(ident, len(envelopes) + 1, P.metric_points(metrics)))
        if envelopes:
            self._send(envelopes)
        self.counters["points"] += len(metrics)
        if P.RUN_NAME_TAG in tag_map and tag_map[P.RUN_NAME_TAG] != info["name"]:
            self._put_run({**info, "name": tag_map[P.RUN_NAME_TAG]})
        return {}

    def log_inputs(self, body, raw, allowed):
        info = self._active_run(body, allowed)
        rows = []
        for item in body.get("datasets") or []:
            dataset = item.get("dataset") or {}
            input_tags = {t["key"]: str(t.get("value", "")) for t in item.get("tags") or []}
            for field in ("name", "digest", "source_type", "source"):
                if not dataset.get(field):
                    raise invalid(f"Missing value for required parameter 'datasets.dataset.{field}'.")
            rows.append({"run_id": info["run_id"], "name": dataset["name"], "digest": dataset["digest"],
                         "source_type": dataset["source_type"], "source": dataset["source"],
                         "schema": dataset.get("schema") or "", "profile": dataset.get("profile") or "",
                         "input_tags": input_tags, "context": input_tags.get(P.CONTEXT_TAG, "")})
        self.meta.put_inputs(rows)
        return {}

    def log_outputs(self, body, raw, allowed):
        """The run's output models: checked, not kept (runwire links a logged model to its run by
        the model's source_run_id)."""
        self._active_run(body, allowed)
        for item in body.get("models") or []:
            self.logged_models.get(P.required(item, "model_id"), allowed)
        return {}

    # --- metric history ----------------------------------------------------------------------

    def get_metric_history(self, body, raw, allowed):
        info = self._run(P.run_id_of(body), allowed)
        key = P.required(body, "metric_key")
        points = self.queries.mlflow_metric_history(info["project"], info["run_id"], key)
        max_results = P.as_int(body.get("max_results"), "max_results")
        offset = P.decode_page_token(body.get("page_token"))
        if max_results is not None:
            page = points[offset:offset + max_results]
        else:
            page = points[offset:]
        out: dict = {"metrics": [{"key": key, "value": P.json_value(p["value"]), "timestamp": p["timestamp"],
                                  "step": p["step"]} for p in page]}
        if max_results is not None and offset + max_results < len(points):
            out["next_page_token"] = P.encode_page_token(offset + max_results)
        return out

    def get_metric_history_bulk_interval(self, body, raw, allowed):
        run_ids = body.get("run_ids") or []
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise invalid("Missing value for required parameter 'run_ids'.")
        if len(run_ids) > 100:
            raise invalid(f"GetMetricHistoryBulkInterval request must specify at most 100 run_ids. "
                          f"Received {len(run_ids)} run_ids.")
        key = P.required(body, "metric_key")
        max_results = P.as_int(body.get("max_results"), "max_results", 320)
        if not 1 <= max_results <= 320:
            raise invalid("max_results must be between 1 and 320.")
        start, end = P.as_int(body.get("start_step"), "start_step"), P.as_int(body.get("end_step"), "end_step")
        if (start is None) != (end is None):
            raise invalid("If either start step or end step are specified, both must be specified.")
        if start is not None and start > end:
            raise invalid(f"end_step must be greater than start_step. Found start_step={start} and end_step={end}.")
        out = []
        for run_id in run_ids:
            info = self._run(run_id, allowed)
            history = self.queries.mlflow_metric_history(info["project"], run_id, key)
            out.extend({"key": key, "value": P.json_value(p["value"]), "timestamp": p["timestamp"], "step": p["step"],
                        "run_id": run_id} for p in sample_bulk_interval(history, max_results, start, end))
        return {"metrics": out}


def _search_scope(body: dict, view_field: str) -> tuple[tuple[str, ...], int]:
    """A search request's lifecycle stages (from ``view_field``) and max_results, checked as MLflow does."""
    stages = _VIEW_TYPES.get(str(body.get(view_field) or "ACTIVE_ONLY"))
    if stages is None:
        raise invalid(f"Invalid {view_field} {body.get(view_field)!r}")
    max_results = P.as_int(body.get("max_results"), "max_results", 1000)
    if not 0 < max_results <= P.MAX_SEARCH_RESULTS:
        raise invalid(f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at most "
                      f"{P.MAX_SEARCH_RESULTS}")
    return stages, max_results


def sample_bulk_interval(history: list[dict], max_results: int, start: int | None, end: int | None) -> list[dict]:
    """MLflow's sampling for the UI's charts (its SQL store, _sample_metric_history_single_run):
    the points in step order (then time, value), split into ``max_results`` NTILE buckets, the
    first point of each, and the very last point in place of (or after) the final one."""
    points = sorted((p for p in history if start is None or start <= p["step"] <= end),
                    key=lambda p: (p["step"], p["timestamp"], p["value"]))
    n = len(points)
    if not n:
        return []
    # NTILE(k): the first n % k buckets hold one row more than the others.
    size, extra = divmod(n, max_results)
    firsts, i = [], 0
    for bucket in range(min(max_results, n)):
        firsts.append(points[i])
        i += size + (1 if bucket < extra else 0)
    if firsts[-1] is not points[-1]:
        if len(firsts) >= max_results:
            firsts[-1] = points[-1]
        else:
            firsts.append(points[-1])
    return firsts


def _experiment_matcher(filter_string: str):
    """A predicate over experiment rows for search_experiments' filter: ``name`` (=, !=, LIKE,
    ILIKE) and ``tags.KEY`` comparisons joined by AND."""
    return record_matcher(filter_string, {"name": lambda e: e["name"]}, "search_experiments")


def record_matcher(filter_string: str, attributes: dict, what: str, absent_tag_differs: bool = False):
    """A predicate over rows (dicts with a ``tags`` dict) for a search filter: the given
    attributes (name -> getter) and ``tags.KEY``, string comparisons joined by AND.
    absent_tag_differs: ``tags.K != 'v'`` holds for a row without the tag (MLflow's registry
    searches: its client adds ``tag.`mlflow.prompt.is_prompt` != 'true'`` to every search)."""
    from runwire.storage import filters

    try:
        node = filters.parse_filter(filter_string)
    except FilterError as exc:
        raise invalid(f"Invalid filter: {exc.reason}") from None
    terms = [] if node is None else list(node.terms) if isinstance(node, filters.And) else [node]
    checks = []
    for term in terms:
        if not isinstance(term, filters.Comparison) or isinstance(term.value, float):
            raise invalid(f"{what} filters support {', '.join(attributes)} and tags.KEY string comparisons "
                          "joined by AND")
        if term.key.entity == filters.ATTRIBUTES and term.key.key in attributes:
            checks.append((attributes[term.key.key], term))
        elif term.key.entity == filters.TAGS:
            checks.append(((lambda k: lambda e: e["tags"].get(k))(term.key.key), term))
        else:
            raise invalid(f"Invalid attribute key '{term.key.key}' specified for {what}")

    def holds(actual, term) -> bool:
        if actual is None and absent_tag_differs and term.op == "!=" and term.key.entity == filters.TAGS:
            return True
        return _compare(actual, term.op, term.value)

    def matches(row: dict) -> bool:
        return all(holds(get(row), term) for get, term in checks)

    return matches


def _compare(actual, op: str, value) -> bool:
    import re

    if op == "IS NULL":
        return actual is None
    if op == "IS NOT NULL":
        return actual is not None
    if actual is None:
        return False
    if op in ("IN", "NOT IN"):
        return (actual in value) == (op == "IN")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op.endswith("LIKE"):
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
        flags = re.IGNORECASE | re.DOTALL if "ILIKE" in op else re.DOTALL
        return bool(re.fullmatch(pattern, actual, flags)) != op.startswith("NOT")
    raise invalid(f"Invalid comparator '{op}' for experiment search")


def _sort_experiments(rows: list[dict], order_by: list[str]) -> None:
    """MLflow's experiment order_by, in place (default: creation_time DESC, then experiment_id)."""
    clauses = []
    for clause in order_by or ["creation_time DESC"]:
        parts = clause.strip().split()
        field = parts[0].split(".", 1)[-1].strip("`") if parts else ""
        if field not in ("name", "creation_time", "last_update_time", "experiment_id") or len(parts) > 2 \
                or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC")):
            raise invalid(f"Invalid order_by clause '{clause}'")
        clauses.append((field, len(parts) < 2 or parts[1].upper() == "ASC"))

    def value(e: dict, field: str):
        v = e[field]
        return (int(v), "") if field == "experiment_id" and v.isdigit() else (0, v) if field == "experiment_id" else v

    rows.sort(key=lambda e: value(e, "experiment_id"))  # the tie-breaker; later sorts are stable
    for field, ascending in reversed(clauses):
        rows.sort(key=lambda e: value(e, field), reverse=not ascending)
