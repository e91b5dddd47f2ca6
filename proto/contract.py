"""The wire contract's one home: what the emitter, the gateway, the ingest workers and storage
must agree on, derived from proto/telemetry.proto where the .proto says it, stated here once
where it does not. Every side imports it; nothing restates it.

Dependencies: the generated protobuf module only (no grpc, numpy or server packages), so the
training-side package and storage can both import it.
"""

from __future__ import annotations

from typing import NamedTuple

from runwire.proto import telemetry_pb2 as pb
from google.protobuf.descriptor import FieldDescriptor

# -- gRPC methods (from the service descriptor, never hand-typed) --------------------------------
_SERVICE = pb.DESCRIPTOR.services_by_name["Telemetry"]
SERVICE_NAME = _SERVICE.full_name  # runwire.v1.Telemetry
STREAM_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Stream'].name}"
PUBLISH_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Publish'].name}"
# The emitter pings its stream's connection this often when nothing arrives (HTTP/2 keepalive),
# to notice a dead gateway. The gateway must accept pings this frequent: gRPC servers answer more
# than two pings within 5 minutes on an idle stream with GOAWAY "too_many_pings".
KEEPALIVE_TIME_MS = 20_000

# -- record kinds: one Kafka topic and one set of tables each ---------------------------------
METRICS = "metrics"
GPU = "gpu"
RUNS = "runs"
KINDS = (METRICS, GPU, RUNS)

# -- packed metric columns (MetricBatch bytes fields, and the Avro records) -------------------


class PackedColumn(NamedTuple):
    typecode: str  # array module typecode (emitter, no numpy)
    dtype: str     # numpy dtype string, little-endian (server side)
    size: int      # bytes per value


METRIC_COLUMNS: dict[str, PackedColumn] = {
    "name_index": PackedColumn("I", "<u4", 4),
    "steps": PackedColumn("q", "<i8", 8),
    "timestamps_ns": PackedColumn("q", "<i8", 8),
    "values": PackedColumn("d", "<f8", 8),
}

# -- GPU sample columns (GpuBatch's repeated fields) ------------------------------------------
_GPU_FIELDS = pb.GpuBatch.DESCRIPTOR.fields
# Per-sample float readings, in .proto order: memory_used_bytes, temperature_c, ...
GPU_FLOAT_FIELDS: tuple[str, ...] = tuple(f.name for f in _GPU_FIELDS if f.type == FieldDescriptor.TYPE_DOUBLE)
# Per-sample columns and their packed dtypes in the Avro records.
GPU_COLUMNS: dict[str, str] = {"gpu_ref": "<u4", "timestamps_ns": "<i8", "throttle_reasons": "<u8", "xid": "<u8"}
GPU_COLUMNS.update({name: "<f8" for name in GPU_FLOAT_FIELDS})
# Per-GPU dictionary columns (gpu_ref indexes them).
GPU_DEVICE_FIELDS = ("gpu_uuids", "pci_bus_ids", "gpu_indexes", "gpu_names")

IDENTITY_FIELDS: tuple[str, ...] = tuple(f.name for f in pb.Identity.DESCRIPTOR.fields)
IDENTITY_UINT32_FIELDS: tuple[str, ...] = tuple(
    f.name for f in pb.Identity.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_UINT32)

# -- limits (README "Limits"; the emitter keeps within them, the gateway and ingest enforce) ---
MAX_ID_LEN = 128          # project, run_id, stream_id
MAX_HOST_LEN = 255
MAX_NAME_LEN = 256        # metric names, run name
MAX_KEY_LEN = 256         # param, tag and summary keys
MAX_VALUE_LEN = 8192      # param and tag values
MAX_ROWS = 1_000_000      # points or GPU samples in one envelope
DEFAULT_BATCH_POINTS = 8192  # what the emitter puts in one envelope
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


def text_problem(value: object, min_len: int, max_len: int) -> str | None:
    """Why `value` is not a valid name or key (None when it is): a str of min_len..max_len
    printable characters. The one character rule for metric names, ids and keys."""
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if not min_len <= len(value) <= max_len:
        return f"length {len(value)} is outside {min_len}..{max_len}"
    if value and not value.isprintable():
        return "contains a non-printable character"
    return None


def valid_metric_name(name: object) -> bool:
    """The emitter's fast check; the gateway applies the same rule through text_problem."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LEN and name.isprintable()


# -- gRPC status codes: what each answer means to a sender -------------------------------------
RETRY, REJECT, AUTH = "retry", "reject", "auth"

# The envelope itself is wrong: resending can never succeed, so it is dropped and counted.
REJECTED_GRPC_CODES = frozenset({"INVALID_ARGUMENT"})
# The credentials are wrong: nothing will clear this by itself. Stop retrying, keep the data
# (spool) and tell the user how to fix it.
AUTH_GRPC_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def classify_grpc(code: str) -> str:
    """RETRY, REJECT or AUTH for a gRPC status code name (an Ack's `code`, or
    `RpcError.code().name`). Everything else (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
    INTERNAL, ...) may clear: retry with backoff."""
    if code in REJECTED_GRPC_CODES:
        return REJECT
    if code in AUTH_GRPC_CODES:
        return AUTH
    return RETRY


# RunEnd.exit_code sent on behalf of a process that died without finishing (runwire sync found its
# spool): storage records the rank as CRASHED.
EXIT_CRASHED = -1
