"""Storage against the in-process ClickHouse engine (chDB): migrations, TTL, writer, replay dedup.

chDB hosts one engine path per process, so the whole module shares one engine directory and
every test gets its own database; the fixture closes every client at the end so that a later
module may open the engine at another path.
"""

from __future__ import annotations

import itertools
import math

import pytest

from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire import wire
from runwire.ingest import codec
from runwire.proto import telemetry_pb2 as pb
from runwire.storage import schema
from runwire.storage.client import connect
from runwire.storage.writer import StorageWriter

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z in ns
MINUTE = 60_000_000_000


@pytest.fixture(scope="module")
def new_client(tmp_path_factory):
    url = f"chdb://{tmp_path_factory.mktemp('chdb')}/engine"
    clients = []
    numbers = itertools.count()

    def make(prefix: str = "t"):
        client = connect(url, f"{prefix}{next(numbers)}")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def db(new_client):
    client = new_client("w")
    schema.migrate(client)
    return client


def rows_of(client, sql: str, **parameters):
    return client.query(sql, parameters=parameters).result_rows


# --- migrations and TTL ------------------------------------------------------------------


TABLES = {"schema_migrations", "metrics", "gpu_samples", "runs", "run_ranks", "params", "tags", "alerts",
          "metrics_1m", "metrics_1m_mv", "gpu_samples_1m", "gpu_samples_1m_mv"}


def test_migrate_applies_every_migration_once_and_is_idempotent(new_client):
    client = new_client("m")
    versions = [v for v, _, _ in schema.migrations()]
    assert schema.migrate(client) == versions
    assert schema.migrate(client) == []
    assert schema.migrate(client) == []
    tables = {r[0] for r in rows_of(client, "SHOW TABLES")}
    assert TABLES <= tables
    recorded = rows_of(client, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded == [(v, n) for v, n, _ in schema.migrations()]  # one row each, no FINAL needed


def test_migrate_only_touches_its_own_database(new_client):
    a, b = new_client("iso"), new_client("iso")
    schema.migrate(a)
    assert rows_of(b, "SHOW TABLES") == []
    assert schema.migrate(b) == [v for v, _, _ in schema.migrations()]


def _ttl_clause(client, table: str) -> str | None:
    ddl = rows_of(client, f"SHOW CREATE TABLE {table}")[0][0]
    lines = [line.strip() for line in ddl.splitlines() if line.strip().startswith("TTL ")]
    return lines[0] if lines else None


def test_apply_ttl_sets_and_removes_the_ttl(new_client):
    client = new_client("ttl")
    schema.migrate(client, ttl_days=30)
    for table, column in schema.TIME_SERIES_TABLES.items():
        assert _ttl_clause(client, table) == f"TTL toDateTime({column}) + toIntervalDay(30)"
    schema.apply_ttl(client, 7)
    for table in schema.TIME_SERIES_TABLES:
        assert _ttl_clause(client, table) == "TTL toDateTime(ts) + toIntervalDay(7)"
    for rollup in ("metrics_1m", "gpu_samples_1m", "runs"):
        assert _ttl_clause(client, rollup) is None  # rollups and runs keep their data
    schema.apply_ttl(client, 0)
    for table in schema.TIME_SERIES_TABLES:
        assert _ttl_clause(client, table) is None
    with pytest.raises(ValueError, match="ttl_days"):
        schema.apply_ttl(client, -1)


# --- writer --------------------------------------------------------------------------------


def identity(run_id: str, rank: int = 0, **overrides) -> pb.Identity:
    fields = dict(project="vision", run_id=run_id, rank=rank, local_rank=rank % 4, node_rank=rank // 4,
                  world_size=4, host=f"node-{rank // 4}", pid=1000 + rank, stream_id=f"stream-{rank}")
    fields.update(overrides)
    return pb.Identity(**fields)


def decoded(env: pb.Envelope, received_ns: int) -> tuple[str, dict]:
    _, _, value = codec.encode_envelope(env, received_ns)
    return codec.decode(value)


def metrics(run_id: str, rank: int, names: list[str], points, seq: int = 1) -> tuple[str, dict]:
    env = pb.Envelope(seq=seq, identity=identity(run_id, rank))
    env.metrics.CopyFrom(wire.metric_batch(
        names, [names.index(p[0]) for p in points], [p[1] for p in points], [p[2] for p in points],
        [p[3] for p in points]))
    return decoded(env, T0 + 10 * MINUTE)


def gpu(run_id: str, rank: int, samples, seq: int = 2) -> tuple[str, dict]:
    """samples: (uuid, ts_ns, temperature_c, throttle)."""
    env = pb.Envelope(seq=seq, identity=identity(run_id, rank))
    g = env.gpu
    g.gpu_uuids.extend(["GPU-a", "GPU-b"])
    g.pci_bus_ids.extend(["00000000:17:00.0", "00000000:65:00.0"])
    g.gpu_indexes.extend([2, 3])
    g.gpu_names.extend(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    for k, (uuid, ts, temperature, throttle) in enumerate(samples):
        g.gpu_ref.append(["GPU-a", "GPU-b"].index(uuid))
        g.timestamps_ns.append(ts)
        for column in GPU_FLOAT_FIELDS:
            getattr(g, column).append(temperature if column == "temperature_c" else float("nan") if k == 1 else 100.0 + k)
        g.throttle_reasons.append(throttle)
        g.xid.append(79 if k == 2 else 0)
    return decoded(env, T0 + 10 * MINUTE)


METRIC_POINTS = [
    # name, step, ts, value: two minutes of "loss" and some special values in "odd"
    ("loss", 1, T0 + 1_234_567, 4.0),
    ("loss", 2, T0 + 20 * 10**9, 1.0),
    ("loss", 3, T0 + 40 * 10**9, 2.5),
    ("loss", 4, T0 + MINUTE + 5 * 10**9, 9.0),
    ("loss", 5, T0 + MINUTE + 50 * 10**9, 3.0),
    ("odd", 1, T0 + 1_000, float("nan")),
    ("odd", 2, T0 + 2_000, float("inf")),
    ("odd", 3, T0 + 3_000, float("-inf")),
]


def _write_metrics(db, run_id: str):
    records = [metrics(run_id, 0, ["odd", "loss"], METRIC_POINTS[:3] + METRIC_POINTS[5:]),
               metrics(run_id, 1, ["loss"], METRIC_POINTS[3:5], seq=5)]
    return records, StorageWriter(db).write(records)


def test_write_inserts_metrics_with_exact_values(db):
    _, written = _write_metrics(db, "m1")
    assert written == {"metrics": 8}
    # Metric timestamps are stored in milliseconds.
    got = rows_of(db, "SELECT name, rank, step, toUnixTimestamp64Milli(ts), value, isNaN(value), isInfinite(value) "
                      "FROM metrics FINAL WHERE run_id = {r:String} ORDER BY name, rank, step", r="m1")
    assert len(got) == 8
    loss = [r for r in got if r[0] == "loss"]
    assert [(r[1], r[2], r[3], r[4]) for r in loss] == [
        (0, 1, (T0 + 1_234_567) // 10**6, 4.0), (0, 2, (T0 + 20 * 10**9) // 10**6, 1.0),
        (0, 3, (T0 + 40 * 10**9) // 10**6, 2.5), (1, 4, (T0 + MINUTE + 5 * 10**9) // 10**6, 9.0),
        (1, 5, (T0 + MINUTE + 50 * 10**9) // 10**6, 3.0)]
    odd = [r for r in got if r[0] == "odd"]
    assert [(r[2], r[5], r[6]) for r in odd] == [(1, 1, 0), (2, 0, 1), (3, 0, 1)]
    assert math.isnan(odd[0][4]) and odd[1][4] == math.inf and odd[2][4] == -math.inf
    assert rows_of(db, "SELECT DISTINCT project FROM metrics") == [("vision",)]


def test_replayed_metrics_collapse_under_final_and_the_rollup_stays_exact(db):
    records, _ = _write_metrics(db, "m2")
    StorageWriter(db).write(records)  # the same batch again: emitter resend or ingest replay
    assert rows_of(db, "SELECT count() FROM metrics FINAL WHERE run_id = {r:String}", r="m2") == [(8,)]
    distinct = rows_of(db, "SELECT name, rank, step, ts, toString(value) FROM metrics FINAL WHERE run_id = {r:String} "
                           "ORDER BY ALL", r="m2")
    assert len(set(distinct)) == 8

    rollup = rows_of(db, """
        SELECT rank, toUnixTimestamp(minute), min(min_value), max(max_value), argMaxMerge(last_value),
               max(max_step), sum(count)
        FROM metrics_1m WHERE run_id = {r:String} AND name = 'loss'
        GROUP BY rank, minute ORDER BY rank, minute""", r="m2")
    minute0 = T0 // 10**9
    assert rollup == [
        (0, minute0, 1.0, 4.0, 2.5, 3, 6),       # count is doubled by the replay, as documented
        (1, minute0 + 60, 3.0, 9.0, 3.0, 5, 4),
    ]


def test_write_inserts_gpu_samples(db):
    samples = [("GPU-b", T0 + 1_000_000, 61.5, 0), ("GPU-a", T0 + 2_000_000, float("nan"), 2**63 + 4),
               ("GPU-b", T0 + 3_000_000, 62.0, 4)]
    records = [gpu("g1", 0, samples), gpu("g1", 1, samples[:1], seq=7)]
    assert StorageWriter(db).write(records) == {"gpu_samples": 4}
    StorageWriter(db).write(records)  # replay
    got = rows_of(db, """
        SELECT rank, host, node_rank, gpu_uuid, pci_bus_id, gpu_index, gpu_name, toUnixTimestamp64Micro(ts),
               temperature_c, isNaN(temperature_c), isNaN(power_w), power_w, throttle_reasons, xid
        FROM gpu_samples FINAL WHERE run_id = {r:String} ORDER BY gpu_uuid, ts, rank""", r="g1")
    # The replay collapses; two ranks sampling one GPU at one instant stay two samples.
    assert [(r[3], r[7], r[0]) for r in got] == [
        ("GPU-a", T0 // 1000 + 2000, 0), ("GPU-b", T0 // 1000 + 1000, 0), ("GPU-b", T0 // 1000 + 1000, 1),
        ("GPU-b", T0 // 1000 + 3000, 0)]
    a, b1, b1_rank1, b3 = got
    assert b1_rank1[8] == 61.5
    assert a[4:7] == ("00000000:17:00.0", 2, "NVIDIA H100 80GB HBM3")
    assert b1[4:7] == ("00000000:65:00.0", 3, "NVIDIA H100 80GB HBM3")
    assert a[9] == 1 and a[10] == 1 and a[12] == 2**63 + 4
    assert b1[8] == 61.5 and b1[11] == 100.0 and b1[12] == 0 and b1[13] == 0
    assert b3[8] == 62.0 and b3[12] == 4 and b3[13] == 79
    assert all(r[1] == "node-0" and r[2] == 0 for r in got)
    assert a[0] == 0 and b3[0] == 0


def test_write_mixed_batch_returns_counts_per_table(db):
    records = [metrics("x1", 0, ["loss"], METRIC_POINTS[:2]), gpu("x1", 0, [("GPU-a", T0, 50.0, 0)]),
               run_start("x1", 0, T0 + 1), run_params("x1", T0 + 2, {"a": "1"})]
    written = StorageWriter(db).write(records)
    assert written == {"metrics": 2, "gpu_samples": 1, "runs": 1, "run_ranks": 1, "params": 3, "tags": 1}
    assert StorageWriter(db).write([]) == {}


# --- runs ----------------------------------------------------------------------------------


def run_start(run_id: str, rank: int, received_ns: int, world_size: int = 4) -> tuple[str, dict]:
    env = pb.Envelope(seq=1, identity=identity(run_id, rank, world_size=world_size))
    s = env.run_start
    s.name = f"{run_id}-name"
    s.start_time_ns = T0 + 123_456_789
    s.git_commit = "deadbeef"
    s.params.update({"optimizer.lr": "0.1", "model.depth": "50"})
    s.tags.update({"team": "vision"})
    s.launcher = "torchrun"
    return decoded(env, received_ns)


def run_params(run_id: str, received_ns: int, values: dict[str, str]) -> tuple[str, dict]:
    env = pb.Envelope(seq=3, identity=identity(run_id, 0))
    env.params.params.update(values)
    return decoded(env, received_ns)


def run_end(run_id: str, rank: int, received_ns: int, exit_code: int) -> tuple[str, dict]:
    env = pb.Envelope(seq=9, identity=identity(run_id, rank))
    e = env.run_end
    e.end_time_ns = T0 + 3600 * 10**9 + 999
    e.exit_code = exit_code
    e.summary.update({"loss": 0.25, "runwire.dropped": 2.0, "best": float("nan")})
    return decoded(env, received_ns)


RUN_SELECT = """
    SELECT name, status, toUnixTimestamp64Micro(start_time), toUnixTimestamp64Micro(end_time), exit_code,
           git_commit, launcher, world_size, summary
    FROM runs FINAL WHERE project = 'vision' AND run_id = {r:String}"""


@pytest.mark.parametrize("exit_code, status", [(0, "FINISHED"), (1, "FAILED")])
def test_run_start_then_end_yields_one_run_row(db, exit_code, status):
    run_id = f"run-exit-{exit_code}"
    writer = StorageWriter(db)
    writer.write([run_start(run_id, 0, T0 + 1_000), run_start(run_id, 1, T0 + 1_500)])
    assert rows_of(db, RUN_SELECT, r=run_id)[0][1] == "RUNNING"
    writer.write([run_end(run_id, 1, T0 + 5_000, 0), run_end(run_id, 0, T0 + 6_000, exit_code)])

    got = rows_of(db, RUN_SELECT, r=run_id)
    assert len(got) == 1
    name, got_status, start_us, end_us, got_exit, commit, launcher, world_size, summary = got[0]
    assert (name, got_status, got_exit) == (f"{run_id}-name", status, exit_code)
    assert start_us == (T0 + 123_456_789) // 1000  # start fields kept
    assert end_us == (T0 + 3600 * 10**9 + 999) // 1000
    assert (commit, launcher, world_size) == ("deadbeef", "torchrun", 4)
    assert summary["loss"] == 0.25 and summary["runwire.dropped"] == 2.0 and math.isnan(summary["best"])

    ranks = rows_of(db, """
        SELECT rank, local_rank, node_rank, world_size, host, pid, stream_id, status, exit_code,
               toUnixTimestamp64Micro(start_time)
        FROM run_ranks FINAL WHERE run_id = {r:String} ORDER BY rank""", r=run_id)
    assert ranks == [
        (0, 0, 0, 4, "node-0", 1000, "stream-0", status, exit_code, (T0 + 123_456_789) // 1000),
        (1, 1, 0, 4, "node-0", 1001, "stream-1", "FINISHED", 0, (T0 + 123_456_789) // 1000),
    ]


def test_run_start_and_end_in_one_batch(db):
    StorageWriter(db).write([run_start("same-batch", 0, T0 + 1_000), run_end("same-batch", 0, T0 + 2_000, 0)])
    got = rows_of(db, RUN_SELECT, r="same-batch")
    assert len(got) == 1
    assert got[0][0:3] == ("same-batch-name", "FINISHED", (T0 + 123_456_789) // 1000)


def test_replayed_run_events_do_not_duplicate_or_regress(db):
    events = [run_start("replay", 0, T0 + 1_000), run_end("replay", 0, T0 + 2_000, 1)]
    writer = StorageWriter(db)
    writer.write(events)
    writer.write(events)  # Kafka replay: same records, same receive times
    got = rows_of(db, RUN_SELECT, r="replay")
    assert len(got) == 1 and got[0][1] == "FAILED"
    assert rows_of(db, "SELECT count() FROM run_ranks FINAL WHERE run_id = 'replay'") == [(1,)]


def test_run_ranks_has_a_row_per_rank(db):
    writer = StorageWriter(db)
    writer.write([run_start("ranks", rank, T0 + 1_000 + rank, world_size=8) for rank in range(8)])
    got = rows_of(db, "SELECT rank, node_rank, host, status FROM run_ranks FINAL WHERE run_id = 'ranks' ORDER BY rank")
    assert got == [(k, k // 4, f"node-{k // 4}", "RUNNING") for k in range(8)]
    assert rows_of(db, "SELECT count(), any(world_size) FROM runs FINAL WHERE run_id = 'ranks'") == [(1, 8)]


def test_later_params_replace_earlier_values(db):
    writer = StorageWriter(db)
    writer.write([run_start("params", 0, T0 + 1_000)])
    writer.write([run_params("params", T0 + 3_000, {"optimizer.lr": "0.05", "new": "x"})])
    writer.write([run_params("params", T0 + 2_000, {"optimizer.lr": "0.07"})])  # older, arrives late
    got = rows_of(db, "SELECT key, value FROM params FINAL WHERE run_id = 'params' ORDER BY key")
    assert got == [("model.depth", "50"), ("new", "x"), ("optimizer.lr", "0.05")]
    assert rows_of(db, "SELECT key, value FROM tags FINAL WHERE run_id = 'params'") == [("team", "vision")]


def test_cluster_form_of_the_schema_is_fresh_and_parses(db):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_cluster_sql", root / "scripts" / "gen_cluster_sql.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    text = generator.cluster_sql()
    assert (root / "deploy" / "clickhouse" / "cluster.sql").read_text() == text, "run scripts/gen_cluster_sql.py"
    statements = schema.split_statements(text)
    assert sum("Distributed(runwire, runwire, metrics_local, cityHash64(project, run_id))" in s for s in statements) == 1
    for statement in statements:
        # formatQuery parses without executing: ON CLUSTER needs no cluster here.
        assert db.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
