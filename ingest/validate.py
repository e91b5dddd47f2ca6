"""Validation of incoming envelopes (pure). Each error names the offending field.

Limits (documented in the README):
- project, run_id: 1-128 characters; host 0-255.
- metric names: 1-256 characters, no control characters.
- param and tag keys: 1-256 characters; values up to 8,192 characters.
- one envelope: up to 1,000,000 points or GPU samples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import (GPU, METRICS, GPU_COLUMNS, GPU_DEVICE_FIELDS, IDENTITY_UINT32_FIELDS, MAX_HOST_LEN, MAX_ID_LEN,
                                    MAX_INT32, MAX_INT64, MAX_KEY_LEN, MAX_NAME_LEN, MAX_ROWS, MAX_VALUE_LEN,
                                    METRIC_COLUMNS, text_problem)
from runwire.ingest.codec import RUN_BODIES


class InvalidEnvelope(ValueError):
    """An envelope that must be rejected with INVALID_ARGUMENT; the message names the field."""


def _check_text(field: str, value: str, min_len: int, max_len: int) -> None:
    problem = text_problem(value, min_len, max_len)
    if problem:
        raise InvalidEnvelope(f"{field}: {problem}")


def _check_map(field: str, mapping) -> None:
    for key, value in mapping.items():
        _check_text(f"{field} key {key[:40]!r}", key, 1, MAX_KEY_LEN)
        if len(value) > MAX_VALUE_LEN:
            raise InvalidEnvelope(f"{field}[{key[:40]!r}]: value longer than {MAX_VALUE_LEN} characters")


def _check_counts(field: str, counts: dict[str, int]) -> int:
    """The common row count of a batch's per-row columns (the first column is the reference)."""
    first, n = next(iter(counts.items()))
    for name, count in counts.items():
        if count != n:
            raise InvalidEnvelope(f"{field}.{name}: has {count} entries, {field}.{first} has {n}")
    if n > MAX_ROWS:
        raise InvalidEnvelope(f"{field}: {n} rows, more than {MAX_ROWS} in one envelope")
    return n


def _check_columns(field: str, message, columns: tuple[str, ...]) -> int:
    return _check_counts(field, {name: len(getattr(message, name)) for name in columns})


def _check_packed_columns(m) -> int:
    """Number of points in a MetricBatch; every packed column must hold whole values, equally many."""
    counts = {}
    # The values column is the reference, so a short index, step or time column is the one named.
    for column in sorted(METRIC_COLUMNS, key=lambda name: name != "values"):
        size = METRIC_COLUMNS[column].size
        raw = len(getattr(m, column))
        if raw % size:
            raise InvalidEnvelope(f"metrics.{column}: {raw} bytes is not a whole number of {size}-byte values")
        counts[column] = raw // size
    return _check_counts("metrics", counts)


def _check_seq(seq: int) -> None:
    if seq < 1:  # uint64 on the wire, but a record written straight to Kafka carries an Avro long
        raise InvalidEnvelope("seq: must be >= 1")
    if seq > MAX_INT64:
        raise InvalidEnvelope(f"seq: {seq} is above {MAX_INT64}")


def _check_identity(get: Callable[[str], Any]) -> None:
    """The identity rules; `get(field)` reads an Identity field (protobuf or decoded record)."""
    _check_text("identity.project", get("project"), 1, MAX_ID_LEN)
    _check_text("identity.run_id", get("run_id"), 1, MAX_ID_LEN)
    _check_text("identity.stream_id", get("stream_id"), 1, MAX_ID_LEN)
    _check_text("identity.host", get("host"), 0, MAX_HOST_LEN)
    for name in IDENTITY_UINT32_FIELDS:
        if get(name) > MAX_INT32:  # stored as Avro int
            raise InvalidEnvelope(f"identity.{name}: {get(name)} is above {MAX_INT32}")
    if get("world_size") and get("rank") >= get("world_size"):
        raise InvalidEnvelope(f"identity.rank: {get('rank')} is not below world_size {get('world_size')}")


def _check_metric_names(names) -> None:
    for i, name in enumerate(names):
        _check_text(f"metrics.names[{i}]", name, 1, MAX_NAME_LEN)


def _check_run_body(body: str, get: Callable[[str], Any]) -> None:
    """Rules of the run events (body: the Envelope oneof name); `get(field)` reads the body."""
    if body == "run_start":
        _check_text("run_start.name", get("name"), 0, MAX_NAME_LEN)
        _check_map("run_start.params", get("params"))
        _check_map("run_start.tags", get("tags"))
    elif body == "run_end":
        for key in get("summary"):
            _check_text(f"run_end.summary key {key[:40]!r}", key, 1, MAX_KEY_LEN)
    elif body == "params":
        _check_map("params.params", get("params"))
    elif body == "tags":
        _check_map("tags.tags", get("tags"))


def validate(envelope: pb.Envelope) -> None:
    """Raise InvalidEnvelope if the envelope must not be stored."""
    _check_seq(envelope.seq)
    if not envelope.HasField("identity"):
        raise InvalidEnvelope("identity: missing")
    _check_identity(partial(getattr, envelope.identity))

    body = envelope.WhichOneof("body")
    if body is None:
        raise InvalidEnvelope("body: missing (one of run_start, metrics, gpu, params, tags, run_end)")
    if body == "metrics":
        m = envelope.metrics
        n = _check_packed_columns(m)
        _check_metric_names(m.names)
        if n:
            highest = int(np.frombuffer(m.name_index, dtype=METRIC_COLUMNS["name_index"].dtype).max())
            if highest >= len(m.names):
                raise InvalidEnvelope(f"metrics.name_index: {highest} points past {len(m.names)} names")
    elif body == "gpu":
        g = envelope.gpu
        _check_columns("gpu", g, tuple(GPU_COLUMNS))
        n_gpus = len(g.gpu_uuids)
        for name in GPU_DEVICE_FIELDS[1:]:
            if len(getattr(g, name)) != n_gpus:
                raise InvalidEnvelope(f"gpu.{name}: has {len(getattr(g, name))} entries, gpu.gpu_uuids has {n_gpus}")
        if g.gpu_indexes and max(g.gpu_indexes) > 65535:
            raise InvalidEnvelope(f"gpu.gpu_indexes: {max(g.gpu_indexes)} is above 65535")
        if g.gpu_ref and max(g.gpu_ref) >= n_gpus:
            raise InvalidEnvelope(f"gpu.gpu_ref: {max(g.gpu_ref)} points past {n_gpus} GPUs")
    else:
        _check_run_body(body, partial(getattr, getattr(envelope, body)))


def validate_record(kind: str, record: dict) -> None:
    """The same rules for a record decoded from Kafka (runwire.ingest.codec.decode): anything
    that can write to the topics can bypass the gateway. The codec has already checked what
    decoding needs (column lengths, indexes in range); this checks the rest."""
    _check_identity(record.__getitem__)
    _check_seq(record["seq"])
    if kind == METRICS:
        _check_counts("metrics", {"values": len(record["values"])})
        _check_metric_names(record["names"])
    elif kind == GPU:
        _check_counts("gpu", {"gpu_ref": len(record["gpu_ref"])})
    else:
        name, body = record["body"]
        _check_run_body(RUN_BODIES[name], body.__getitem__)
