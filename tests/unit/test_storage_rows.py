"""Decoded records -> Arrow tables and row lists; migration parsing; connection helpers."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire.ingest import codec
from runwire import wire
from runwire.proto import telemetry_pb2 as pb
from runwire.storage import rows
from runwire.storage.client import check_identifier, redact
from runwire.storage.schema import migrations, split_statements

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z in ns


def identity(rank: int, **overrides) -> pb.Identity:
    fields = dict(project="vision", run_id="run-1", rank=rank, local_rank=rank % 4, node_rank=rank // 4,
                  world_size=8, host=f"node-{rank // 4}", pid=100 + rank, stream_id=f"s{rank}")
    fields.update(overrides)
    return pb.Identity(**fields)


def decoded(env: pb.Envelope, received_ns: int = T0) -> dict:
    _, _, value = codec.encode_envelope(env, received_ns)
    return codec.decode(value)[1]


def metric_record(rank, names, points, **ident) -> dict:
    """points: (name, step, ts_ns, value); each record gets its own name dictionary order."""
    env = pb.Envelope(seq=1, identity=identity(rank, **ident))
    env.metrics.CopyFrom(wire.metric_batch(
        names, [names.index(p[0]) for p in points], [p[1] for p in points], [p[2] for p in points],
        [p[3] for p in points]))
    return decoded(env)


def test_metric_table_maps_each_records_name_dictionary():
    r1 = metric_record(0, ["loss", "lr"], [("loss", 1, T0 + 1_999, 2.5), ("lr", 1, T0 + 2_000, 0.1),
                                            ("loss", 2, T0 + 1_000_000_123, float("nan"))])
    r2 = metric_record(5, ["acc", "loss"], [("loss", 1, T0 + 5_000, float("inf")), ("acc", 1, T0 + 6_000, -0.0)],
                       run_id="run-2")
    r3 = metric_record(1, ["lr"], [])  # a batch with no points contributes nothing
    r4 = metric_record(7, ["z", "loss"], [("loss", -3, T0 - 1_500, float("-inf"))], project="audio")
    table = rows.metric_table([r1, r2, r3, r4])

    assert table.column_names == ["project", "run_id", "name", "rank", "step", "ts", "value"]
    assert table.num_rows == 6
    assert table.column("name").to_pylist() == ["loss", "lr", "loss", "loss", "acc", "loss"]
    assert table.column("project").to_pylist() == ["vision"] * 5 + ["audio"]
    assert table.column("run_id").to_pylist() == ["run-1"] * 3 + ["run-2"] * 2 + ["run-1"]
    assert table.column("rank").to_pylist() == [0, 0, 0, 5, 5, 7]
    assert table.column("step").to_pylist() == [1, 1, 2, 1, 1, -3]
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")  # metrics keep milliseconds
    ts_ms = table.column("ts").cast(pa.int64()).to_pylist()
    assert ts_ms == [(T0 + 1_999) // 10**6, (T0 + 2_000) // 10**6, (T0 + 1_000_000_123) // 10**6,
                     (T0 + 5_000) // 10**6, (T0 + 6_000) // 10**6, (T0 - 1_500) // 10**6]
    values = table.column("value").to_numpy()
    assert values[0] == 2.5 and values[1] == 0.1 and math.isnan(values[2])
    assert values[3] == math.inf and values[5] == -math.inf
    assert math.copysign(1.0, values[4]) == -1.0

    schema = table.schema
    assert pa.types.is_dictionary(schema.field("name").type)
    assert pa.types.is_dictionary(schema.field("project").type)
    assert schema.field("rank").type == pa.uint32()
    assert schema.field("step").type == pa.int64()
    assert schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("value").type == pa.float64()


def test_metric_table_of_no_records_is_empty():
    table = rows.metric_table([])
    assert table.num_rows == 0
    assert table.column_names == ["project", "run_id", "name", "rank", "step", "ts", "value"]


def gpu_record(rank, gpus, samples, received_ns=T0) -> dict:
    """gpus: (uuid, bus, index, name); samples: (uuid, ts_ns, temperature, throttle, xid)."""
    env = pb.Envelope(seq=1, identity=identity(rank))
    g = env.gpu
    for uuid, bus, index, name in gpus:
        g.gpu_uuids.append(uuid)
        g.pci_bus_ids.append(bus)
        g.gpu_indexes.append(index)
        g.gpu_names.append(name)
    uuids = [x[0] for x in gpus]
    for k, (uuid, ts, temperature, throttle, xid) in enumerate(samples):
        g.gpu_ref.append(uuids.index(uuid))
        g.timestamps_ns.append(ts)
        for j, column in enumerate(GPU_FLOAT_FIELDS):
            getattr(g, column).append(temperature if column == "temperature_c" else 1000.0 * j + k)
        g.throttle_reasons.append(throttle)
        g.xid.append(xid)
    return decoded(env, received_ns)


GPU_A = ("GPU-a", "00000000:17:00.0", 3, "NVIDIA H100")
GPU_B = ("GPU-b", "00000000:65:00.0", 0, "NVIDIA A100")
GPU_C = ("GPU-c", "00000000:b3:00.0", 1, "NVIDIA H100")


def test_gpu_table_maps_each_records_gpu_dictionary():
    r1 = gpu_record(0, [GPU_A, GPU_B], [("GPU-b", T0 + 1_001, 60.0, 0, 0), ("GPU-a", T0 + 2_000, float("nan"), 2**64 - 1, 79)])
    r2 = gpu_record(6, [GPU_C, GPU_B], [("GPU-b", T0 + 3_000, 70.5, 4, 0), ("GPU-c", T0 + 4_000, 71.0, 0, 2**63),
                                         ("GPU-c", T0 + 5_000, -1.0, 1, 0)])
    table = rows.gpu_table([r1, r2])

    assert table.num_rows == 5
    assert table.column("gpu_uuid").to_pylist() == ["GPU-b", "GPU-a", "GPU-b", "GPU-c", "GPU-c"]
    assert table.column("pci_bus_id").to_pylist() == [GPU_B[1], GPU_A[1], GPU_B[1], GPU_C[1], GPU_C[1]]
    assert table.column("gpu_index").to_pylist() == [0, 3, 0, 1, 1]
    assert table.column("gpu_name").to_pylist() == [GPU_B[3], GPU_A[3], GPU_B[3], GPU_C[3], GPU_C[3]]
    assert table.column("rank").to_pylist() == [0, 0, 6, 6, 6]
    assert table.column("node_rank").to_pylist() == [0, 0, 1, 1, 1]
    assert table.column("host").to_pylist() == ["node-0"] * 2 + ["node-1"] * 3
    assert table.column("project").to_pylist() == ["vision"] * 5
    assert table.column("run_id").to_pylist() == ["run-1"] * 5
    assert table.column("ts").cast(pa.int64()).to_pylist() == [
        (T0 + 1_001) // 1000, T0 // 1000 + 2, T0 // 1000 + 3, T0 // 1000 + 4, T0 // 1000 + 5]
    temperature = table.column("temperature_c").to_numpy()
    assert temperature[0] == 60.0 and math.isnan(temperature[1]) and temperature[4] == -1.0
    assert table.column("power_w").to_pylist() == [
        1000.0 * GPU_FLOAT_FIELDS.index("power_w") + k for k in (0, 1, 0, 1, 2)]
    assert table.column("throttle_reasons").to_pylist() == [0, 2**64 - 1, 4, 0, 1]
    assert table.column("xid").to_pylist() == [0, 79, 0, 2**63, 0]

    schema = table.schema
    assert schema.field("gpu_index").type == pa.uint16()
    assert schema.field("throttle_reasons").type == pa.uint64()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    for column in GPU_FLOAT_FIELDS:
        assert schema.field(column).type == pa.float64()
    assert set(table.column_names) == {
        "project", "run_id", "host", "node_rank", "rank", "gpu_uuid", "pci_bus_id", "gpu_index", "gpu_name",
        "ts", "throttle_reasons", "xid", *GPU_FLOAT_FIELDS}


def test_gpu_table_of_no_records_is_empty():
    assert rows.gpu_table([]).num_rows == 0


# --- run lifecycle rows --------------------------------------------------------------------


def run_event(env_body: str, rank: int, received_ns: int, **body) -> dict:
    env = pb.Envelope(seq=1, identity=identity(rank))
    message = getattr(env, env_body)
    for key, value in body.items():
        if isinstance(value, dict):
            getattr(message, key).update(value)
        else:
            setattr(message, key, value)
    if not body:
        message.SetInParent()
    return decoded(env, received_ns)


def start(rank: int, received_ns: int = T0 + 10) -> dict:
    return run_event("run_start", rank, received_ns, name="baseline", start_time_ns=T0, git_commit="abc123",
                     params={"lr": "0.1", "depth": "50"}, tags={"team": "vision"}, launcher="torchrun")


def test_run_start_from_rank_0_writes_run_rank_params_and_tags():
    out = rows.run_event_rows([start(0)])
    # Run rows are versioned by the emitter's start time, params and tags by receipt.
    assert out["runs"] == [["vision", "run-1", "baseline", "RUNNING", T0, None, None, "abc123", "torchrun", 8, {},
                            T0]]
    assert out["run_ranks"] == [["vision", "run-1", 0, 0, 0, 8, "node-0", 100, "s0", "RUNNING", T0, None, None, {},
                                 T0]]
    assert sorted(out["params"]) == [["vision", "run-1", "depth", "50", T0 + 10], ["vision", "run-1", "lr", "0.1", T0 + 10]]
    assert out["tags"] == [["vision", "run-1", "team", "vision", T0 + 10]]
    assert len(out["runs"][0]) == len(rows.RUN_COLUMNS)
    assert len(out["run_ranks"][0]) == len(rows.RUN_RANK_COLUMNS)
    assert len(out["params"][0]) == len(rows.KV_COLUMNS)
    assert "run_ends" not in out


def test_run_start_from_other_ranks_writes_no_runs_row():
    out = rows.run_event_rows([start(5)])
    assert out["runs"] == []
    assert [r[2:9] for r in out["run_ranks"]] == [[5, 1, 1, 8, "node-1", 105, "s5"]]


def test_params_and_tags_rows_carry_the_receive_time():
    out = rows.run_event_rows([
        run_event("params", 0, T0 + 20, params={"lr": "0.2"}),
        run_event("tags", 3, T0 + 30, tags={"stage": "b", "empty": ""}),
        run_event("params", 0, T0 + 40),
    ])
    assert out["params"] == [["vision", "run-1", "lr", "0.2", T0 + 20]]
    assert sorted(out["tags"]) == [["vision", "run-1", "empty", "", T0 + 30], ["vision", "run-1", "stage", "b", T0 + 30]]
    assert out["runs"] == [] and out["run_ranks"] == []


@pytest.mark.parametrize("exit_code, status", [(0, "FINISHED"), (1, "FAILED"), (-9, "FAILED"), (137, "FAILED")])
def test_run_end_status_follows_the_exit_code(exit_code, status):
    end = run_event("run_end", 2, T0 + 50, end_time_ns=T0 + 45, exit_code=exit_code,
                    summary={"runwire.dropped": 4.0})
    out = rows.run_event_rows([end])
    assert out["run_ends"] == [["vision", "run-1", 2, status, T0 + 45, exit_code, {"runwire.dropped": 4.0}, T0 + 50]]
    assert out["runs"] == [] and out["run_ranks"] == []


def test_run_events_keep_their_order():
    out = rows.run_event_rows([start(0), start(1), run_event("run_end", 1, T0 + 60, exit_code=0),
                               run_event("run_end", 0, T0 + 70, exit_code=1)])
    assert [r[2] for r in out["run_ranks"]] == [0, 1]
    assert [(e[2], e[3]) for e in out["run_ends"]] == [(1, "FINISHED"), (0, "FAILED")]


# --- migrations ----------------------------------------------------------------------------


def test_split_statements_drops_comments_and_joins_lines():
    sql = """-- leading comment; with a semicolon;
CREATE TABLE a
(
    x UInt8,   -- trailing comments stay inside the statement
    y String
)
ENGINE = Memory;

  -- indented comment
SELECT 1;
;
INSERT INTO a VALUES (1, 'x;y');
"""
    assert split_statements(sql) == [
        "CREATE TABLE a\n(\n    x UInt8,   -- trailing comments stay inside the statement\n    y String\n)\nENGINE = Memory",
        "SELECT 1",
        "INSERT INTO a VALUES (1, 'x;y')",
    ]


def test_split_statements_of_nothing():
    assert split_statements("") == []
    assert split_statements("-- only a comment\n\n   \n") == []


def test_split_statements_requires_a_final_semicolon():
    with pytest.raises(ValueError, match="no closing ';'"):
        split_statements("SELECT 1;\nSELECT\n  2\n")
    with pytest.raises(ValueError, match="no closing ';'"):
        split_statements("CREATE TABLE t (x UInt8) ENGINE = Memory")


def test_shipped_migrations_are_numbered_and_parse():
    found = migrations()
    assert [v for v, _, _ in found] == sorted(v for v, _, _ in found)
    assert [v for v, _, _ in found][:2] == [1, 2]
    for version, name, statements in found:
        assert name.startswith(f"{version:04d}_") and name.endswith(".sql")
        assert statements, name
        for statement in statements:
            assert not statement.endswith(";")
            assert "--" not in statement.splitlines()[0]
    first = found[0][2]
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS metrics\n") for s in first)


# --- connection helpers --------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("http://default:s3cret@ch.example:8123", "http://default:***@ch.example:8123"),
    ("https://user:p%40ss%3Aword@ch.example:8443/db?secure=true", "https://user:***@ch.example:8443/db?secure=true"),
    ("http://u:a:b:c@h:1", "http://u:***@h:1"),
    ("http://pw:pw@h:1", "http://pw:***@h:1"),
    ("http://u:@h", "http://u:***@h"),
])
def test_redact_hides_the_password(url, expected):
    assert redact(url) == expected


@pytest.mark.parametrize("url", ["http://ch.example:8123", "http://user@ch.example:8123/db", "chdb:///var/lib/runwire"])
def test_redact_leaves_urls_without_password_alone(url):
    assert redact(url) == url


@pytest.mark.parametrize("name", ["runwire", "_x", "A1_b", "t" * 63, "runwire_test_01"])
def test_check_identifier_accepts_plain_names(name):
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", [
    "x; DROP TABLE y", "x`; DROP TABLE y; --", "runwire--", "db.table", "a b", "a-b", "1abc", "", "t" * 64,
    "x\n", "x\nDROP TABLE y", "x'", 'x"', "x)", "ünï", "x\x00",
])
def test_check_identifier_rejects_anything_else(name):
    with pytest.raises(ValueError, match="database"):
        check_identifier(name, "database")
