"""The Kafka record codec: Avro single-object encoding, lossless round trips, poison records."""

from __future__ import annotations

import io
import json
import math
import random
import struct
from importlib import resources

import fastavro
import numpy as np
import pytest
from fastavro.schema import to_parsing_canonical_form

from runwire.ingest import codec
from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire.ingest.codec import GPU, METRICS, RUNS, PoisonRecord, decode
from runwire import wire
from runwire.proto import telemetry_pb2 as pb

RECEIVED_NS = 1_735_689_600_123_456_789

SCHEMA_FILES = {METRICS: "metric_batch.avsc", GPU: "gpu_batch.avsc", RUNS: "run_event.avsc"}

# --- an independent CRC-64-AVRO (the Avro specification's reference algorithm) ---------------

_EMPTY = 0xC15D213AA4D7A795
_MASK = (1 << 64) - 1


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp & _MASK)
    return table


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def test_independent_crc64_matches_the_avro_reference_vectors():
    # share/test/data/schema-tests.txt in apache/avro (values are Java signed longs).
    assert _signed(crc64_avro(b'"null"')) == 7195948357588979594
    assert _signed(crc64_avro(b'"int"')) == 8247732601305521295
    assert _signed(crc64_avro(b'{"name":"foo","type":"record","fields":[]}')) == -4824392279771201922
    assert _signed(crc64_avro(b'{"type":"map","values":"string"}')) == -8732877298790414990


# --- envelopes ---------------------------------------------------------------------------


def identity(rank: int = 3, **overrides) -> pb.Identity:
    fields = dict(project="vision", run_id="run-42", rank=rank, local_rank=rank % 8, node_rank=rank // 8,
                  world_size=16, host="node-a.example", pid=4242, stream_id="s-abc")
    fields.update(overrides)
    return pb.Identity(**fields)


SPECIAL = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308,
           struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0001))[0],  # NaN with a payload
           struct.unpack("<d", struct.pack("<Q", 0xFFF0_0000_0000_0002))[0],  # negative signalling NaN
           0.5]


def metrics_envelope(seq: int = 7, **ident) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity(**ident))
    n = len(SPECIAL)
    env.metrics.CopyFrom(wire.metric_batch(
        ["loss", "lr", "grad/norm ünï"], [i % 3 for i in range(n)], [-1, 0, 1, 2**62, 5, 6, 7, 8, -(2**63)],
        [RECEIVED_NS - i * 1_000_000_007 for i in range(n)], SPECIAL))
    return env


def gpu_envelope(seq: int = 8) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity())
    g = env.gpu
    g.gpu_uuids.extend(["GPU-aaaa", "GPU-bbbb"])
    g.pci_bus_ids.extend(["00000000:17:00.0", "00000000:65:00.0"])
    g.gpu_indexes.extend([4, 1])
    g.gpu_names.extend(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    g.gpu_ref.extend([1, 0, 1])
    g.timestamps_ns.extend([RECEIVED_NS, RECEIVED_NS + 1, RECEIVED_NS + 2])
    for k, name in enumerate(GPU_FLOAT_FIELDS):
        getattr(g, name).extend([k + 0.25, float("nan"), -(k + 1.5)])
    g.throttle_reasons.extend([0, 2**64 - 1, 0x40])
    g.xid.extend([0, 79, 2**63 + 1])
    return env


def run_start_envelope(seq: int = 1) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity(rank=0))
    s = env.run_start
    s.name = "resnet-baseline"
    s.start_time_ns = RECEIVED_NS - 10
    s.git_commit = "0123456789abcdef0123456789abcdef01234567"
    s.params.update({"optimizer.lr": "0.001", "model.depth": "50"})
    s.tags.update({"team": "vision"})
    s.launcher = "torchrun"
    return env


def params_envelope(seq: int = 2) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity())
    env.params.params.update({"optimizer.lr": "0.0005", "x": ""})
    return env


def tags_envelope(seq: int = 3) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity())
    env.tags.tags.update({"stage": "finetune"})
    return env


def run_end_envelope(seq: int = 9, exit_code: int = -9) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=identity())
    e = env.run_end
    e.end_time_ns = RECEIVED_NS + 99
    e.exit_code = exit_code
    e.summary.update({"runwire.dropped": 3.0, "best/acc": float("nan"), "loss": float("-inf")})
    return env


def roundtrip(envelope: pb.Envelope) -> tuple[str, bytes, dict]:
    kind, key, value = codec.encode_envelope(envelope, RECEIVED_NS)
    decoded_kind, record = decode(value)
    assert decoded_kind == kind
    return kind, key, record


def assert_identity(record: dict, envelope: pb.Envelope) -> None:
    ident = envelope.identity
    for name in ("project", "run_id", "rank", "local_rank", "node_rank", "world_size", "host", "pid", "stream_id"):
        assert record[name] == getattr(ident, name), name
    assert record["seq"] == envelope.seq
    assert record["received_ns"] == RECEIVED_NS


def bits(values) -> list[int]:
    return np.asarray(values, dtype="<f8").view("<u8").tolist()


# --- round trips -------------------------------------------------------------------------


def test_metrics_round_trip_keeps_nan_and_inf_bit_exact():
    env = metrics_envelope()
    kind, key, record = roundtrip(env)
    assert kind == METRICS
    assert key == b"vision/run-42"
    assert_identity(record, env)
    assert record["names"] == ["loss", "lr", "grad/norm ünï"]
    assert record["name_index"].dtype == np.uint32
    sent = wire.metric_columns(env.metrics)
    assert record["name_index"].tolist() == list(sent["name_index"])
    assert record["steps"].dtype == np.int64
    assert record["steps"].tolist() == list(sent["steps"])
    assert record["timestamps_ns"].tolist() == list(sent["timestamps_ns"])
    assert record["values"].dtype == np.float64
    assert bits(record["values"]) == bits(SPECIAL)
    values = record["values"]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
    assert math.copysign(1.0, values[3]) == -1.0
    assert codec.row_count(kind, record) == len(SPECIAL)


def test_empty_metric_batch_round_trips():
    env = pb.Envelope(seq=1, identity=identity())
    env.metrics.SetInParent()
    kind, _, record = roundtrip(env)
    assert kind == METRICS
    assert record["names"] == []
    for name in codec.METRIC_COLUMNS:
        assert len(record[name]) == 0
    assert codec.row_count(kind, record) == 0


def test_gpu_round_trip():
    env = gpu_envelope()
    kind, key, record = roundtrip(env)
    assert kind == GPU
    assert key == b"vision/run-42"
    assert_identity(record, env)
    g = env.gpu
    assert record["gpu_uuids"] == list(g.gpu_uuids)
    assert record["pci_bus_ids"] == list(g.pci_bus_ids)
    assert record["gpu_indexes"] == [4, 1]
    assert record["gpu_names"] == list(g.gpu_names)
    assert record["gpu_ref"].tolist() == [1, 0, 1]
    assert record["timestamps_ns"].tolist() == list(g.timestamps_ns)
    for name in GPU_FLOAT_FIELDS:
        assert record[name].dtype == np.float64
        assert bits(record[name]) == bits(getattr(g, name)), name
    assert record["throttle_reasons"].dtype == np.uint64
    assert record["throttle_reasons"].tolist() == [0, 2**64 - 1, 0x40]
    assert record["xid"].tolist() == [0, 79, 2**63 + 1]
    assert codec.row_count(kind, record) == 3


def test_run_start_round_trip():
    env = run_start_envelope()
    kind, key, record = roundtrip(env)
    assert kind == RUNS
    assert key == b"vision/run-42"
    assert_identity(record, env)
    assert record["body"] == ("runwire.v1.RunStart", {
        "name": "resnet-baseline", "start_time_ns": RECEIVED_NS - 10,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "params": {"optimizer.lr": "0.001", "model.depth": "50"}, "tags": {"team": "vision"},
        "launcher": "torchrun"})
    assert codec.row_count(kind, record) == 1


def test_params_and_tags_round_trip():
    kind, _, record = roundtrip(params_envelope())
    assert kind == RUNS
    assert record["body"] == ("runwire.v1.Params", {"params": {"optimizer.lr": "0.0005", "x": ""}})
    kind, _, record = roundtrip(tags_envelope())
    assert kind == RUNS
    assert record["body"] == ("runwire.v1.Tags", {"tags": {"stage": "finetune"}})


def test_run_end_round_trip():
    env = run_end_envelope(exit_code=-9)
    kind, _, record = roundtrip(env)
    assert kind == RUNS
    assert_identity(record, env)
    name, body = record["body"]
    assert name == "runwire.v1.RunEnd"
    assert body["end_time_ns"] == RECEIVED_NS + 99
    assert body["exit_code"] == -9
    assert body["summary"]["runwire.dropped"] == 3.0
    assert math.isnan(body["summary"]["best/acc"])
    assert body["summary"]["loss"] == -math.inf


def test_key_is_project_slash_run_id_for_every_kind():
    for env in (metrics_envelope(), gpu_envelope(), run_start_envelope(), params_envelope(),
                tags_envelope(), run_end_envelope()):
        _, key, _ = codec.encode_envelope(env, RECEIVED_NS)
        assert key == b"vision/run-42"
    env = metrics_envelope(project="p ü", run_id="r/1")
    _, key, _ = codec.encode_envelope(env, RECEIVED_NS)
    assert key == "p ü/r/1".encode()


def test_envelope_without_body_is_not_encoded():
    with pytest.raises(ValueError, match="no body"):
        codec.encode_envelope(pb.Envelope(seq=1, identity=identity()), RECEIVED_NS)


# --- the header is the Avro single-object encoding -----------------------------------------


def _schema_from_file(kind: str):
    text = resources.files("runwire.proto").joinpath("avro", SCHEMA_FILES[kind]).read_text()
    return fastavro.parse_schema(json.loads(text))


ENVELOPES = {METRICS: metrics_envelope, GPU: gpu_envelope, RUNS: run_start_envelope}


@pytest.mark.parametrize("kind", [METRICS, GPU, RUNS])
def test_header_is_avro_single_object_encoding(kind):
    parsed = _schema_from_file(kind)
    canonical = to_parsing_canonical_form(parsed)
    # Parsing Canonical Form: full names, no docs, no whitespace.
    assert '"doc"' not in canonical and " " not in canonical
    assert canonical.startswith('{"name":"runwire.v1.')
    fp = crc64_avro(canonical.encode())

    encoded_kind, _, value = codec.encode_envelope(ENVELOPES[kind](), RECEIVED_NS)
    assert encoded_kind == kind
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == fp.to_bytes(8, "little")  # the spec: 8-byte little-endian fingerprint
    assert codec.header_fingerprints()[kind] == f"{fp:016x}"
    # The body after the header is plain Avro binary for the schema in the file.
    body = fastavro.schemaless_reader(io.BytesIO(value[10:]), parsed, parsed)
    assert body["project"] == "vision" and body["received_ns"] == RECEIVED_NS


def test_fingerprints_differ_per_kind():
    fps = codec.header_fingerprints()
    assert set(fps) == {METRICS, GPU, RUNS}
    assert len(set(fps.values())) == 3


# --- schema evolution hook -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [METRICS, GPU, RUNS])
def test_record_encoded_with_each_schema_decodes(kind):
    record = codec.to_record(ENVELOPES[kind](), RECEIVED_NS)
    value = codec.encode(kind, record)
    decoded_kind, decoded = decode(value)
    assert decoded_kind == kind
    assert decoded["seq"] == record["seq"]


def test_decode_uses_the_writer_schema_found_by_fingerprint(monkeypatch):
    """A newer writer schema (one more field) decodes once its fingerprint is registered."""
    v2 = json.loads(resources.files("runwire.proto").joinpath("avro", "metric_batch.avsc").read_text())
    v2["fields"].append({"name": "sampling", "type": "string", "default": ""})
    parsed = fastavro.parse_schema(v2)
    header = b"\xc3\x01" + crc64_avro(to_parsing_canonical_form(parsed).encode()).to_bytes(8, "little")
    record = codec.to_record(metrics_envelope(), RECEIVED_NS)
    record["sampling"] = "every-step"
    out = io.BytesIO()
    out.write(header)
    fastavro.schemaless_writer(out, parsed, record)
    value = out.getvalue()

    with pytest.raises(PoisonRecord, match="unknown writer schema fingerprint"):
        decode(value)
    monkeypatch.setitem(codec._BY_HEADER, header, codec._Schema(METRICS, parsed, header))
    kind, decoded = decode(value)
    assert kind == METRICS
    assert decoded["sampling"] == "every-step"
    assert bits(decoded["values"]) == bits(SPECIAL)


# --- poison records ----------------------------------------------------------------------


def _encode(kind: str, record: dict) -> bytes:
    return codec.encode(kind, record)


def _metric_record(**changes) -> dict:
    record = codec.to_record(metrics_envelope(), RECEIVED_NS)
    record.update(changes)
    return record


def _gpu_record(**changes) -> dict:
    record = codec.to_record(gpu_envelope(), RECEIVED_NS)
    record.update(changes)
    return record


@pytest.mark.parametrize("value", [None, b"", b"\xc3", b"\xc3\x01", b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00"])
def test_too_short_or_missing_value_is_poison(value):
    with pytest.raises(PoisonRecord, match="shorter than"):
        decode(value)


def test_wrong_magic_is_poison():
    _, _, value = codec.encode_envelope(metrics_envelope(), RECEIVED_NS)
    for magic in (b"\x00\x01", b"\xc3\x00", b"\x01\xc3", b"{\""):
        with pytest.raises(PoisonRecord, match="not Avro single-object"):
            decode(magic + value[2:])
    with pytest.raises(PoisonRecord, match="not Avro single-object"):
        decode(b'{"project": "vision", "run_id": "run-42"}')


def test_unknown_fingerprint_is_poison():
    _, _, value = codec.encode_envelope(metrics_envelope(), RECEIVED_NS)
    flipped = value[:5] + bytes([value[5] ^ 0x01]) + value[6:]
    with pytest.raises(PoisonRecord, match="unknown writer schema fingerprint"):
        decode(flipped)
    # A big-endian fingerprint (the classic mistake) is not the same schema.
    big_endian = value[:2] + value[2:10][::-1] + value[10:]
    with pytest.raises(PoisonRecord, match="unknown writer schema fingerprint"):
        decode(big_endian)


@pytest.mark.parametrize("make", [metrics_envelope, gpu_envelope, run_start_envelope, params_envelope,
                                  tags_envelope, run_end_envelope])
def test_every_truncation_of_the_body_is_poison(make):
    _, _, value = codec.encode_envelope(make(), RECEIVED_NS)
    decode(value)
    for end in range(10, len(value)):
        with pytest.raises(PoisonRecord):
            decode(value[:end])


def test_garbage_body_is_poison():
    _, _, value = codec.encode_envelope(run_start_envelope(), RECEIVED_NS)
    with pytest.raises(PoisonRecord, match="does not decode"):
        decode(value[:10] + b"\xff" * 40)


@pytest.mark.parametrize("column", list(codec.METRIC_COLUMNS))
def test_metric_column_byte_length_not_a_multiple_of_its_dtype_is_poison(column):
    record = _metric_record()
    record[column] = record[column] + b"\x00"
    with pytest.raises(PoisonRecord, match=f"column {column} has"):
        decode(_encode(METRICS, record))


@pytest.mark.parametrize("column", ["gpu_ref", "timestamps_ns", "power_w", "throttle_reasons", "xid"])
def test_gpu_column_byte_length_not_a_multiple_of_its_dtype_is_poison(column):
    record = _gpu_record()
    record[column] = record[column][:-1]
    with pytest.raises(PoisonRecord, match=f"column {column} has"):
        decode(_encode(GPU, record))


@pytest.mark.parametrize("column", list(codec.METRIC_COLUMNS))
def test_metric_columns_with_different_lengths_are_poison(column):
    record = _metric_record()
    record[column] = record[column][: -np.dtype(codec.METRIC_COLUMNS[column]).itemsize]
    with pytest.raises(PoisonRecord, match="different lengths"):
        decode(_encode(METRICS, record))


def test_gpu_columns_with_different_lengths_are_poison():
    record = _gpu_record(temperature_c=np.array([1.0, 2.0], "<f8").tobytes())
    with pytest.raises(PoisonRecord, match="different lengths"):
        decode(_encode(GPU, record))


def test_name_index_past_names_is_poison():
    record = _metric_record(name_index=np.array([0, 1, 3, 0, 0, 0, 0, 0, 0], "<u4").tobytes())
    with pytest.raises(PoisonRecord, match="name_index points past names"):
        decode(_encode(METRICS, record))
    record = _metric_record(names=[])
    with pytest.raises(PoisonRecord, match="no names"):
        decode(_encode(METRICS, record))


def test_gpu_ref_past_gpu_uuids_is_poison():
    record = _gpu_record(gpu_ref=np.array([0, 2, 1], "<u4").tobytes())
    with pytest.raises(PoisonRecord, match="gpu_ref points past gpu_uuids"):
        decode(_encode(GPU, record))


@pytest.mark.parametrize("field", ["pci_bus_ids", "gpu_indexes", "gpu_names"])
def test_gpu_dictionaries_not_parallel_are_poison(field):
    record = _gpu_record()
    record[field] = record[field][:1]
    with pytest.raises(PoisonRecord, match=f"{field} has 1 entries"):
        decode(_encode(GPU, record))


def test_gpu_index_outside_storage_range_is_poison():
    with pytest.raises(PoisonRecord, match="gpu_indexes"):
        decode(_encode(GPU, _gpu_record(gpu_indexes=[4, -1])))
    with pytest.raises(PoisonRecord, match="gpu_indexes"):
        decode(_encode(GPU, _gpu_record(gpu_indexes=[4, 70000])))


@pytest.mark.parametrize("field", ["rank", "local_rank", "node_rank", "world_size", "pid"])
def test_identity_integer_outside_uint32_is_poison(field):
    with pytest.raises(PoisonRecord, match=field):
        decode(_encode(METRICS, _metric_record(**{field: -1})))
    with pytest.raises(PoisonRecord, match=field):
        decode(_encode(RUNS, {**codec.to_record(run_end_envelope(), RECEIVED_NS), field: 2**32}))
    assert decode(_encode(METRICS, _metric_record(**{field: 2**32 - 1})))[1][field] == 2**32 - 1


def test_corrupted_records_are_poison_or_usable():
    """Random byte damage after the header either decodes into a consistent record or is poison."""
    from runwire.storage import rows

    rng = random.Random(20240601)
    to_rows = {METRICS: lambda r: rows.metric_table([r]), GPU: lambda r: rows.gpu_table([r]),
               RUNS: lambda r: rows.run_event_rows([r])}
    for make in (metrics_envelope, gpu_envelope, run_start_envelope, run_end_envelope):
        _, _, value = codec.encode_envelope(make(), RECEIVED_NS)
        for _ in range(300):
            damaged = bytearray(value)
            for _ in range(rng.randint(1, 3)):
                damaged[rng.randrange(10, len(damaged))] = rng.randrange(256)
            try:
                kind, record = decode(bytes(damaged))
            except PoisonRecord:
                continue
            to_rows[kind](record)  # must not raise: decode let it through
