"""Envelope validation: every rule rejects with a message that starts with the offending field."""

from __future__ import annotations

import pytest

from runwire.proto import contract
from runwire.ingest import validate as v
from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire.ingest.validate import InvalidEnvelope, validate
from runwire import wire
from runwire.proto import telemetry_pb2 as pb


def identity(**overrides) -> pb.Identity:
    fields = dict(project="vision", run_id="run-42", rank=1, local_rank=1, node_rank=0, world_size=8,
                  host="node-a", pid=1234, stream_id="s-1")
    fields.update(overrides)
    return pb.Identity(**fields)


def metrics(n: int = 3, **ident) -> pb.Envelope:
    env = pb.Envelope(seq=1, identity=identity(**ident))
    env.metrics.CopyFrom(wire.metric_batch(
        ["loss", "lr"], [i % 2 for i in range(n)], list(range(n)), list(range(1_000, 1_000 + n)),
        [float("nan"), float("inf"), float("-inf")][:n] + [0.5] * max(0, n - 3)))
    return env


def drop_last(env: pb.Envelope, column: str) -> None:
    """Remove the last point of one packed metric column."""
    raw = getattr(env.metrics, column)
    setattr(env.metrics, column, raw[: len(raw) - contract.METRIC_COLUMNS[column].size])


def gpu(n: int = 2) -> pb.Envelope:
    env = pb.Envelope(seq=2, identity=identity())
    g = env.gpu
    g.gpu_uuids.extend(["GPU-a", "GPU-b"])
    g.pci_bus_ids.extend(["00000000:17:00.0", "00000000:65:00.0"])
    g.gpu_indexes.extend([0, 1])
    g.gpu_names.extend(["H100", "H100"])
    g.gpu_ref.extend([i % 2 for i in range(n)])
    g.timestamps_ns.extend(range(n))
    for name in GPU_FLOAT_FIELDS:
        getattr(g, name).extend([float("nan")] * n)
    g.throttle_reasons.extend([0] * n)
    g.xid.extend([0] * n)
    return env


def run_start() -> pb.Envelope:
    env = pb.Envelope(seq=3, identity=identity(rank=0))
    env.run_start.name = "baseline"
    env.run_start.start_time_ns = 1
    env.run_start.params.update({"optimizer.lr": "0.1", "notes": "multi\nline values are fine"})
    env.run_start.tags.update({"team": "vision"})
    env.run_start.launcher = "torchrun"
    return env


def params() -> pb.Envelope:
    env = pb.Envelope(seq=4, identity=identity())
    env.params.params.update({"batch_size": "256"})
    return env


def tags() -> pb.Envelope:
    env = pb.Envelope(seq=5, identity=identity())
    env.tags.tags.update({"stage": "pretrain"})
    return env


def run_end() -> pb.Envelope:
    env = pb.Envelope(seq=6, identity=identity())
    env.run_end.end_time_ns = 2
    env.run_end.exit_code = 1
    env.run_end.summary.update({"runwire.dropped": 0.0, "loss": float("nan")})
    return env


def rejects(env: pb.Envelope, field: str) -> str:
    with pytest.raises(InvalidEnvelope) as info:
        validate(env)
    message = str(info.value)
    assert message.startswith(field), f"{message!r} does not name {field!r}"
    return message


# --- valid envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [metrics, gpu, run_start, params, tags, run_end])
def test_valid_envelopes_of_every_kind_pass(make):
    validate(make())


def test_valid_edge_cases_pass():
    empty = pb.Envelope(seq=1, identity=identity())
    empty.metrics.SetInParent()  # a batch with no points
    validate(empty)
    validate(metrics(host=""))  # host may be empty
    validate(metrics(world_size=0, rank=7))  # world size unknown: rank not checked
    validate(metrics(project="p" * 128, run_id="r" * 128, stream_id="s" * 128, host="h" * 255))
    env = metrics()
    env.metrics.names[0] = "n" * 256
    validate(env)
    env = params()
    env.params.params["k" * 256] = "v" * 8192
    validate(env)
    env = run_start()
    env.run_start.name = ""
    validate(env)
    env = pb.Envelope(seq=2**63 - 1, identity=identity())  # the largest an Avro long holds
    env.tags.SetInParent()
    validate(env)


def test_values_beyond_avro_int_and_long_are_rejected():
    env = pb.Envelope(seq=2**63, identity=identity())
    env.tags.SetInParent()
    with pytest.raises(InvalidEnvelope, match=r"^seq: "):
        validate(env)
    env = metrics()
    env.identity.rank = 2**31
    env.identity.world_size = 0
    with pytest.raises(InvalidEnvelope, match=r"^identity.rank: "):
        validate(env)


def test_exactly_max_rows_passes_and_one_more_is_rejected():
    n = contract.MAX_ROWS
    env = pb.Envelope(seq=1, identity=identity())
    env.metrics.CopyFrom(wire.metric_batch(["loss"], [0] * n, [0] * n, [0] * n, [0.0] * n))
    validate(env)
    m = env.metrics
    for column in ("name_index", "steps", "timestamps_ns", "values"):
        setattr(m, column, getattr(m, column) + wire.pack(column, [0]))
    rejects(env, "metrics:")


# --- envelope and identity -----------------------------------------------------------------


def test_seq_zero_is_rejected():
    env = metrics()
    env.seq = 0
    rejects(env, "seq:")


def test_missing_identity_is_rejected():
    env = metrics()
    env.ClearField("identity")
    rejects(env, "identity:")


@pytest.mark.parametrize("field", ["project", "run_id", "stream_id"])
@pytest.mark.parametrize("bad", ["", "x" * 129, "run\x00id", "a\nb", "tab\there", "\x1f"])
def test_identity_ids_are_checked(field, bad):
    rejects(metrics(**{field: bad}), f"identity.{field}:")


@pytest.mark.parametrize("bad", ["h" * 256, "host\r", "\x07"])
def test_identity_host_is_checked(bad):
    rejects(metrics(host=bad), "identity.host:")


@pytest.mark.parametrize("rank, world_size", [(8, 8), (9, 8), (1, 1)])
def test_rank_must_be_below_world_size(rank, world_size):
    message = rejects(metrics(rank=rank, world_size=world_size), "identity.rank:")
    assert str(world_size) in message


def test_missing_body_is_rejected():
    rejects(pb.Envelope(seq=1, identity=identity()), "body:")


# --- metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["name_index", "steps", "timestamps_ns"])
def test_metric_columns_must_have_equal_lengths(column):
    env = metrics()
    setattr(env.metrics, column, getattr(env.metrics, column) + wire.pack(column, [0]))
    rejects(env, f"metrics.{column}:")
    env = metrics()
    drop_last(env, column)
    rejects(env, f"metrics.{column}:")


def test_metric_values_column_shorter_than_the_others_is_rejected():
    env = metrics()
    drop_last(env, "values")
    with pytest.raises(InvalidEnvelope, match=r"^metrics\.(name_index|steps|timestamps_ns): .*metrics\.values"):
        validate(env)


def test_too_many_metric_points_are_rejected(monkeypatch):
    monkeypatch.setattr(v, "MAX_ROWS", 2)
    rejects(metrics(n=3), "metrics:")
    validate(metrics(n=2))


@pytest.mark.parametrize("bad, index", [("", 1), ("n" * 257, 1), ("loss\n", 0), ("a\x00b", 1)])
def test_metric_names_are_checked(bad, index):
    env = metrics()
    env.metrics.names[index] = bad
    rejects(env, f"metrics.names[{index}]:")


def test_name_index_past_names_is_rejected():
    env = metrics()
    env.metrics.name_index = wire.pack("name_index", [0, 2, 0])
    rejects(env, "metrics.name_index:")
    env = metrics()
    del env.metrics.names[:]
    rejects(env, "metrics.name_index:")


# --- GPU samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("column", [c for c in list(contract.GPU_COLUMNS) if c != "gpu_ref"])
def test_gpu_sample_columns_must_have_equal_lengths(column):
    env = gpu()
    del getattr(env.gpu, column)[-1]
    rejects(env, f"gpu.{column}:")


def test_gpu_sample_columns_cover_the_contract():
    sample_fields = {f.name for f in pb.GpuBatch.DESCRIPTOR.fields if f.number >= 10}
    assert set(list(contract.GPU_COLUMNS)) == sample_fields
    metric_fields = {f.name for f in pb.MetricBatch.DESCRIPTOR.fields if f.name != "names"}
    assert set(list(contract.METRIC_COLUMNS)) == metric_fields


def test_too_many_gpu_samples_are_rejected(monkeypatch):
    monkeypatch.setattr(v, "MAX_ROWS", 1)
    rejects(gpu(n=2), "gpu:")
    validate(gpu(n=1))


@pytest.mark.parametrize("field", ["pci_bus_ids", "gpu_indexes", "gpu_names"])
def test_gpu_dictionaries_must_be_parallel(field):
    env = gpu()
    del getattr(env.gpu, field)[-1]
    rejects(env, f"gpu.{field}:")


def test_gpu_ref_past_gpus_is_rejected():
    env = gpu()
    env.gpu.gpu_ref[0] = 2
    rejects(env, "gpu.gpu_ref:")


# --- run lifecycle, params and tags ---------------------------------------------------------


@pytest.mark.parametrize("bad", ["n" * 257, "name\x1b[31m"])
def test_run_name_is_checked(bad):
    env = run_start()
    env.run_start.name = bad
    rejects(env, "run_start.name:")


def _map_of(env: pb.Envelope, field: str):
    message, name = field.split(".")
    return getattr(getattr(env, message), name)


MAP_FIELDS = [(run_start, "run_start.params"), (run_start, "run_start.tags"), (params, "params.params"),
              (tags, "tags.tags")]


@pytest.mark.parametrize("make, field", MAP_FIELDS)
@pytest.mark.parametrize("bad_key", ["", "k" * 257, "key\n", "\x00"])
def test_map_keys_are_checked(make, field, bad_key):
    env = make()
    _map_of(env, field)[bad_key] = "value"
    rejects(env, f"{field} key")


@pytest.mark.parametrize("make, field", MAP_FIELDS)
def test_map_values_are_limited(make, field):
    env = make()
    _map_of(env, field)["big"] = "v" * (contract.MAX_VALUE_LEN + 1)
    message = rejects(env, f"{field}['big']:")
    assert str(contract.MAX_VALUE_LEN) in message


def test_long_map_key_is_shortened_in_the_message():
    env = params()
    env.params.params["k" * 1000] = "v"
    message = rejects(env, "params.params key")
    assert len(message) < 200


def test_packed_column_with_a_torn_value_is_rejected():
    env = metrics()
    env.metrics.values = env.metrics.values + b"\x00"
    rejects(env, "metrics.values:")
