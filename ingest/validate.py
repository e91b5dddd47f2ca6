"""Validation of incoming envelopes (pure). Each error names the offending field.

Limits (documented in the README):
- project, run_id: 1-128 characters; host 0-255.
- metric names: 1-256 characters, no control characters.
- param and tag keys: 1-256 characters; values up to 8,192 characters.
- one envelope: up to 1,000,000 points or GPU samples.
"""

from __future__ import annotations

import numpy as np

from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import (GPU_COLUMNS, GPU_DEVICE_FIELDS, IDENTITY_UINT32_FIELDS, MAX_HOST_LEN, MAX_ID_LEN,
                                    MAX_INT32, MAX_INT64, MAX_KEY_LEN, MAX_NAME_LEN, MAX_ROWS, MAX_VALUE_LEN,
                                    METRIC_COLUMNS, text_problem)


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


def validate(envelope: pb.Envelope) -> None:
    """Raise InvalidEnvelope if the envelope must not be stored."""
    if envelope.seq == 0:
        raise InvalidEnvelope("seq: must be >= 1")
    if not envelope.HasField("identity"):
        raise InvalidEnvelope("identity: missing")
    ident = envelope.identity
    _check_text("identity.project", ident.project, 1, MAX_ID_LEN)
    _check_text("identity.run_id", ident.run_id, 1, MAX_ID_LEN)
    _check_text("identity.stream_id", ident.stream_id, 1, MAX_ID_LEN)
    _check_text("identity.host", ident.host, 0, MAX_HOST_LEN)
    for name in IDENTITY_UINT32_FIELDS:
        if getattr(ident, name) > MAX_INT32:  # stored as Avro int
            raise InvalidEnvelope(f"identity.{name}: {getattr(ident, name)} is above {MAX_INT32}")
    if envelope.seq > MAX_INT64:
        raise InvalidEnvelope(f"seq: {envelope.seq} is above {MAX_INT64}")
    if ident.world_size and ident.rank >= ident.world_size:
        raise InvalidEnvelope(f"identity.rank: {ident.rank} is not below world_size {ident.world_size}")

    body = envelope.WhichOneof("body")
    if body is None:
        raise InvalidEnvelope("body: missing (one of run_start, metrics, gpu, params, tags, run_end)")
    if body == "metrics":
        m = envelope.metrics
        n = _check_packed_columns(m)
        for i, name in enumerate(m.names):
            _check_text(f"metrics.names[{i}]", name, 1, MAX_NAME_LEN)
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
    elif body == "run_start":
        _check_text("run_start.name", envelope.run_start.name, 0, MAX_NAME_LEN)
        _check_map("run_start.params", envelope.run_start.params)
        _check_map("run_start.tags", envelope.run_start.tags)
    elif body == "run_end":
        for key in envelope.run_end.summary:
            _check_text(f"run_end.summary key {key[:40]!r}", key, 1, MAX_KEY_LEN)
    elif body == "params":
        _check_map("params.params", envelope.params.params)
    elif body == "tags":
        _check_map("tags.tags", envelope.tags.tags)
