"""Pure codec between the wire contract and Kafka records (no I/O).

Kafka records are Avro single-object encoded: ``C3 01`` + the CRC-64-AVRO fingerprint of the
writer schema (8 bytes, little-endian) + the Avro binary body, so readers find the writer schema
by fingerprint and schemas can evolve. Numeric columns travel as packed little-endian arrays in
``bytes`` fields (see proto/avro/*.avsc for why).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from runwire.proto import telemetry_pb2 as pb

from runwire.proto.contract import (GPU, GPU_COLUMNS, GPU_FLOAT_FIELDS, IDENTITY_FIELDS as _IDENTITY_FIELDS,
                                    IDENTITY_UINT32_FIELDS as _UINT32_FIELDS, KINDS, METRICS, RUNS)
from runwire.proto.contract import METRIC_COLUMNS as _METRIC_COLUMNS

MAGIC = b"\xc3\x01"

# Packed column dtypes, shared by the encoder and the decoder so they cannot drift apart.
METRIC_COLUMNS = {name: column.dtype for name, column in _METRIC_COLUMNS.items()}


class PoisonRecord(ValueError):
    """A Kafka record that can never be decoded; it belongs in the dead-letter topic."""


@dataclass(frozen=True)
class _Schema:
    kind: str
    parsed: dict
    header: bytes  # MAGIC + fingerprint


def _load_schema(kind: str, filename: str) -> _Schema:
    text = resources.files("runwire.proto").joinpath("avro", filename).read_text()
    parsed = fastavro.parse_schema(json.loads(text))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    # The spec stores the 64-bit fingerprint little-endian, and fastavro's CRC-64-AVRO hex is
    # already those bytes in that order ("null" -> 8a8f25cce724dd63 for 0x63dd24e7cc258f8a).
    return _Schema(kind, parsed, MAGIC + fp)


_SCHEMAS = {
    METRICS: _load_schema(METRICS, "metric_batch.avsc"),
    GPU: _load_schema(GPU, "gpu_batch.avsc"),
    RUNS: _load_schema(RUNS, "run_event.avsc"),
}
_BY_HEADER = {s.header: s for s in _SCHEMAS.values()}


def _pack(values: Any, dtype: str) -> bytes:
    return np.asarray(values, dtype=dtype).tobytes()


def kind_of(envelope: pb.Envelope) -> str:
    body = envelope.WhichOneof("body")
    if body == "metrics":
        return METRICS
    if body == "gpu":
        return GPU
    return RUNS


def to_record(envelope: pb.Envelope, received_ns: int) -> dict:
    """The Avro record (as a dict) for a validated envelope."""
    ident = envelope.identity
    record: dict[str, Any] = {name: getattr(ident, name) for name in _IDENTITY_FIELDS}
    record["seq"] = envelope.seq
    record["received_ns"] = received_ns
    body = envelope.WhichOneof("body")
    if body == "metrics":
        m = envelope.metrics
        record["names"] = list(m.names)
        for name in METRIC_COLUMNS:
            record[name] = getattr(m, name)  # already packed little-endian on the wire
    elif body == "gpu":
        g = envelope.gpu
        record["gpu_uuids"] = list(g.gpu_uuids)
        record["pci_bus_ids"] = list(g.pci_bus_ids)
        record["gpu_indexes"] = list(g.gpu_indexes)
        record["gpu_names"] = list(g.gpu_names)
        for name, dtype in GPU_COLUMNS.items():
            record[name] = _pack(getattr(g, name), dtype)
    elif body == "run_start":
        s = envelope.run_start
        record["body"] = ("runwire.v1.RunStart", {
            "name": s.name, "start_time_ns": s.start_time_ns, "git_commit": s.git_commit,
            "params": dict(s.params), "tags": dict(s.tags), "launcher": s.launcher})
    elif body == "params":
        record["body"] = ("runwire.v1.Params", {"params": dict(envelope.params.params)})
    elif body == "tags":
        record["body"] = ("runwire.v1.Tags", {"tags": dict(envelope.tags.tags)})
    elif body == "run_end":
        e = envelope.run_end
        record["body"] = ("runwire.v1.RunEnd", {
            "end_time_ns": e.end_time_ns, "exit_code": e.exit_code, "summary": dict(e.summary)})
    else:
        raise ValueError(f"envelope has no body: {body!r}")
    return record


def encode(kind: str, record: dict) -> bytes:
    schema = _SCHEMAS[kind]
    out = io.BytesIO()
    out.write(schema.header)
    fastavro.schemaless_writer(out, schema.parsed, record)
    return out.getvalue()


def encode_envelope(envelope: pb.Envelope, received_ns: int) -> tuple[str, bytes, bytes]:
    """(kind, key, value) of the Kafka record for an envelope. Keyed by run so a run stays ordered."""
    kind = kind_of(envelope)
    key = f"{envelope.identity.project}/{envelope.identity.run_id}".encode()
    return kind, key, encode(kind, to_record(envelope, received_ns))


def decode(value: bytes | None) -> tuple[str, dict]:
    """(kind, record) of a Kafka record value; raises PoisonRecord with the reason."""
    if value is None or len(value) < 10:
        raise PoisonRecord("record shorter than the Avro single-object header")
    if value[:2] != MAGIC:
        raise PoisonRecord(f"not Avro single-object encoding (first bytes {value[:2].hex()})")
    schema = _BY_HEADER.get(value[:10])
    if schema is None:
        raise PoisonRecord(f"unknown writer schema fingerprint {value[2:10][::-1].hex()}")
    try:
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema.parsed, schema.parsed, return_record_name=True)
    except Exception as exc:  # fastavro raises several types for truncated or corrupt input
        raise PoisonRecord(f"Avro body does not decode as {schema.kind}: {exc!r}") from exc
    # Avro int is signed and unbounded in fastavro; the contract's fields are uint32 and the
    # storage columns unsigned, so an out-of-range value would fail in the writer (and be retried
    # forever) instead of being dead-lettered here.
    for name in _UINT32_FIELDS:
        if not 0 <= record[name] <= 0xFFFFFFFF:
            raise PoisonRecord(f"{name} {record[name]} is outside the uint32 range")
    if schema.kind == METRICS:
        _unpack_columns(record, METRIC_COLUMNS)
        if len(record["names"]) == 0 and len(record["values"]) > 0:
            raise PoisonRecord("metric batch has points but no names")
        if len(record["name_index"]) and int(record["name_index"].max()) >= len(record["names"]):
            raise PoisonRecord("metric batch name_index points past names")
    elif schema.kind == GPU:
        _unpack_columns(record, GPU_COLUMNS)
        n_gpus = len(record["gpu_uuids"])
        for name in ("pci_bus_ids", "gpu_indexes", "gpu_names"):
            if len(record[name]) != n_gpus:
                raise PoisonRecord(f"GPU batch {name} has {len(record[name])} entries, gpu_uuids has {n_gpus}")
        if any(not 0 <= i <= 0xFFFF for i in record["gpu_indexes"]):
            raise PoisonRecord("GPU batch gpu_indexes outside 0..65535")
        if len(record["gpu_ref"]) and int(record["gpu_ref"].max()) >= len(record["gpu_uuids"]):
            raise PoisonRecord("GPU batch gpu_ref points past gpu_uuids")
    return schema.kind, record


def _unpack_columns(record: dict, columns: dict[str, str]) -> None:
    lengths = set()
    for name, dtype in columns.items():
        raw = record[name]
        if len(raw) % np.dtype(dtype).itemsize:
            raise PoisonRecord(f"column {name} has {len(raw)} bytes, not a whole number of {dtype}")
        record[name] = np.frombuffer(raw, dtype=dtype)
        lengths.add(len(record[name]))
    if len(lengths) > 1:
        raise PoisonRecord(f"columns have different lengths {sorted(lengths)}")


def row_count(kind: str, record: dict) -> int:
    if kind == METRICS:
        return len(record["values"])
    if kind == GPU:
        return len(record["gpu_ref"])
    return 1


def header_fingerprints() -> dict[str, str]:
    """Schema fingerprints by kind (hex, as the spec writes them), for docs and debugging."""
    return {kind: s.header[2:][::-1].hex() for kind, s in _SCHEMAS.items()}

