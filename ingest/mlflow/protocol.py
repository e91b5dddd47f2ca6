"""MLflow's wire format on one side, runwire's records on the other (pure, no I/O).

Writes become the same protobuf Envelopes the emitter sends (RunStart, Params, Tags,
MetricBatch, RunEnd) for rank 0 of a one-rank run. Each request's envelopes carry a stream id
derived from the request itself and sequence numbers 1, 2, ...: a client retrying a request
sends the same points with the same keys again, and storage keeps one copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct

from runwire.proto import telemetry_pb2 as pb

# MLflow's limits (mlflow.utils.validation), so the client sees the errors it knows.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_SEARCH_RESULTS = 50000
MAX_PROJECT_LENGTH = 128  # runwire.ingest.validate.MAX_ID_LEN

RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# RunEnd carries an exit code; storage shows 0 as FINISHED and anything else as FAILED. MLflow's
# own status (KILLED included) is kept in mlflow_runs.
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 137}
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
CONTEXT_TAG = "mlflow.data.context"

# MLflow's key rule (mlflow.utils.validation._validate_param_name and friends).
_KEY = re.compile(r"^[/\w.\- :]*$")

HTTP_STATUS = {
    "INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400, "MALFORMED_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
    "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "INTERNAL_ERROR": 500,
    "TEMPORARILY_UNAVAILABLE": 503, "INVALID_STATE": 500,
}


class MlflowError(Exception):
    """An error MLflow's server would return: ``error_code`` (its name) and the message."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.error_code, 500)

    def body(self) -> dict:
        return {"error_code": self.error_code, "message": self.message}


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def missing(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)


# --- request fields ------------------------------------------------------------------------


def required(body: dict, name: str):
    value = body.get(name)
    if value is None or value == "":
        raise invalid(f"Missing value for required parameter '{name}'. See the API docs for more information "
                      "about request parameters.")
    return value


def run_id_of(body: dict) -> str:
    run_id = body.get("run_id") or body.get("run_uuid")
    if not run_id:
        raise invalid("Missing value for required parameter 'run_id'. See the API docs for more information "
                      "about request parameters.")
    return str(run_id)


def as_int(value, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer")
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer") from None


_SPECIAL = {"NaN": math.nan, "nan": math.nan, "Infinity": math.inf, "inf": math.inf,
            "-Infinity": -math.inf, "-inf": -math.inf}


def as_float(value, name: str) -> float:
    """A metric value: a JSON number, or the strings protobuf's JSON uses for NaN and infinities."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in _SPECIAL:
            return _SPECIAL[value]
        try:
            return float(value)
        except ValueError:
            pass
    raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected a number")


def check_key(kind: str, key) -> str:
    if not isinstance(key, str) or not key:
        raise invalid(f"Missing value for required parameter '{kind} key'.")
    if len(key) > MAX_KEY_LENGTH:
        raise invalid(f"{kind} key '{key[:40]}...' had length {len(key)}, which exceeded length limit of "
                      f"{MAX_KEY_LENGTH}")
    if not _KEY.match(key) or ".." in key.split("/") or key.startswith("/"):
        raise invalid(f"Invalid {kind.lower()} name: '{key}'. Names may only contain alphanumerics, underscores "
                      "(_), dashes (-), periods (.), spaces ( ), colons(:) and slashes (/).")
    return key


def check_value(kind: str, key: str, value, limit: int) -> str:
    value = "" if value is None else str(value)
    if len(value) > limit:
        raise invalid(f"{kind} '{key}' had length {len(value)}, which exceeded length limit of {limit}")
    return value


def json_value(value: float):
    """A float as protobuf's JSON writes it (NaN and infinities as strings)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# --- page tokens ---------------------------------------------------------------------------


def encode_page_token(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.b64decode(token))["offset"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except Exception:  # noqa: BLE001 - any malformed token gets the same answer
        pass
    raise invalid("Invalid page token, could not base64-decode")


# --- ids and names -------------------------------------------------------------------------


def page(rows: list, body: dict, default_max: int, key: str) -> dict:
    """One page of ``rows`` under ``key`` (left out when empty, as MLflow's JSON leaves empty
    lists out) for the request's max_results and page_token, and the next page's token."""
    max_results = as_int(body.get("max_results"), "max_results", default_max)
    if not 0 < max_results <= MAX_SEARCH_RESULTS:
        raise invalid(f"Invalid value for max_results. It must be at most {MAX_SEARCH_RESULTS}, "
                      f"but got value {max_results}")
    offset = decode_page_token(body.get("page_token"))
    out: dict = {}
    if rows[offset:offset + max_results]:
        out[key] = rows[offset:offset + max_results]
    if offset + max_results < len(rows):
        out["next_page_token"] = encode_page_token(offset + max_results)
    return out


def project_for(experiment_name: str) -> str:
    """The runwire project of a new experiment: its name, shortened with a digest when longer
    than a project may be."""
    if len(experiment_name) <= MAX_PROJECT_LENGTH and not any(ord(c) < 32 for c in experiment_name):
        return experiment_name
    digest = hashlib.sha256(experiment_name.encode()).hexdigest()[:16]
    clean = "".join(c if ord(c) >= 32 else " " for c in experiment_name)
    return f"{clean[:MAX_PROJECT_LENGTH - 17]}-{digest}"


_ADJECTIVES = ("able", "bold", "brave", "bright", "calm", "clever", "crisp", "eager", "fair", "fast", "gentle",
               "glad", "grand", "keen", "kind", "lively", "lucky", "merry", "neat", "noble", "proud", "quick",
               "quiet", "rare", "sharp", "shy", "sleek", "smart", "swift", "warm", "wise", "witty")
_NOUNS = ("ant", "bat", "bear", "bee", "cat", "crane", "crow", "deer", "dove", "eel", "elk", "finch", "fox", "frog",
          "goat", "hawk", "hen", "horse", "lamb", "lark", "lynx", "mole", "moth", "newt", "owl", "ox", "ram",
          "seal", "snail", "swan", "toad", "wolf")


def random_run_name() -> str:
    """A run name like MLflow's own (adjective-animal-number) for runs created without one."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randint(0, 999)}"


def stream_id(method: str, run_id: str, raw_body: bytes) -> str:
    """The same request (a client's retry) always yields the same stream id."""
    digest = hashlib.sha256(method.encode() + b"\0" + run_id.encode() + b"\0" + raw_body).hexdigest()
    return f"mlflow-{digest[:32]}"


# --- envelopes -----------------------------------------------------------------------------


def identity(project: str, run_id: str, stream: str) -> pb.Identity:
    return pb.Identity(project=project, run_id=run_id, rank=0, local_rank=0, node_rank=0, world_size=1,
                       stream_id=stream)


def run_start(ident: pb.Identity, name: str, start_ms: int, tags: dict[str, str]) -> pb.Envelope:
    return pb.Envelope(seq=1, identity=ident, run_start=pb.RunStart(
        name=name, start_time_ns=start_ms * 1_000_000, tags=tags, launcher="mlflow"))


def run_end(ident: pb.Identity, status: str, end_ms: int) -> pb.Envelope:
    return pb.Envelope(seq=1, identity=ident, run_end=pb.RunEnd(end_time_ns=end_ms * 1_000_000,
                                                                exit_code=EXIT_CODES[status]))


def metric_points(metrics: list) -> tuple[list[str], list[int], list[int], list[int], list[float]]:
    """Parsed MLflow metrics [{key, value, timestamp, step}] -> (names, name_index, steps,
    timestamps_ns, values) as lists, validated as MLflow's server does."""
    names: dict[str, int] = {}
    index, steps, stamps, values = [], [], [], []
    for m in metrics:
        if not isinstance(m, dict):
            raise invalid("Invalid value for parameter 'metrics': expected a list of metric objects")
        key = m.get("key")
        position = names.get(key)
        if position is None:
            position = names[check_key("Metric", key)] = len(names)
        index.append(position)
        value = m.get("value")
        if value is None:
            raise invalid(f"Got invalid value None for metric '{key}' (timestamp={m.get('timestamp')}). Please "
                          "specify value as a valid double (64-bit floating point)")
        values.append(float(value) if type(value) in (int, float) else as_float(value, "value"))
        timestamp = m.get("timestamp")
        if type(timestamp) is not int:
            timestamp = as_int(timestamp, "timestamp")
            if timestamp is None:
                raise invalid(f"Got invalid timestamp None for metric '{key}' (value={value}). Timestamp must "
                              "be a nonnegative long (64-bit integer) ")
        stamps.append(timestamp * 1_000_000)
        step = m.get("step", 0)
        steps.append(step if type(step) is int else as_int(step, "step", 0))
    return list(names), index, steps, stamps, values


def metric_envelope(ident: pb.Identity, seq: int, points) -> pb.Envelope:
    """The MetricBatch's packed little-endian columns (uint32, int64, int64, float64; the
    contract's layout, runwire.ingest.codec.METRIC_COLUMNS)."""
    names, index, steps, stamps, values = points
    n = len(values)
    return pb.Envelope(seq=seq, identity=ident, metrics=pb.MetricBatch(
        names=names, name_index=struct.pack(f"<{n}I", *index), steps=struct.pack(f"<{n}q", *steps),
        timestamps_ns=struct.pack(f"<{n}q", *stamps), values=struct.pack(f"<{n}d", *values)))


def params_envelope(ident: pb.Identity, seq: int, params: dict[str, str]) -> pb.Envelope:
    return pb.Envelope(seq=seq, identity=ident, params=pb.Params(params=params))


def tags_envelope(ident: pb.Identity, seq: int, tags: dict[str, str]) -> pb.Envelope:
    return pb.Envelope(seq=seq, identity=ident, tags=pb.Tags(tags=tags))


# --- responses -----------------------------------------------------------------------------


def experiment_json(e: dict) -> dict:
    return {"experiment_id": e["experiment_id"], "name": e["name"], "artifact_location": e["artifact_location"],
            "lifecycle_stage": e["lifecycle_stage"], "last_update_time": e["last_update_time"],
            "creation_time": e["creation_time"], "tags": [{"key": k, "value": v} for k, v in sorted(e["tags"].items())]}


def run_json(info: dict, data: dict) -> dict:
    run_info = {"run_id": info["run_id"], "run_uuid": info["run_id"], "run_name": info["name"],
                "experiment_id": info["experiment_id"], "user_id": info["user_id"], "status": info["status"],
                "start_time": info["start_time"], "artifact_uri": info["artifact_uri"],
                "lifecycle_stage": info["lifecycle_stage"]}
    if info.get("end_time") is not None:
        run_info["end_time"] = info["end_time"]
    inputs = []
    for d in data.get("inputs", []):
        tags = [{"key": k, "value": v} for k, v in sorted(d["input_tags"].items())]
        dataset = {"name": d["name"], "digest": d["digest"], "source_type": d["source_type"], "source": d["source"]}
        if d["schema"]:
            dataset["schema"] = d["schema"]
        if d["profile"]:
            dataset["profile"] = d["profile"]
        inputs.append({"tags": tags, "dataset": dataset})
    return {
        "info": run_info,
        "data": {
            "metrics": [{"key": k, "value": json_value(m["value"]), "timestamp": m["timestamp"], "step": m["step"]}
                        for k, m in sorted(data.get("metrics", {}).items())],
            "params": [{"key": k, "value": v} for k, v in sorted(data.get("params", {}).items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(data.get("tags", {}).items())],
        },
        "inputs": {"dataset_inputs": inputs},
    }
