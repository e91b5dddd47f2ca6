"""The read side (runwire.storage.query.RunQueries) against the in-process ClickHouse engine
(chDB), with data written through the real StorageWriter from decoded Kafka records.

chDB hosts one engine path per process: this module opens its own engine directory, gives
every data set its own database, and closes every client at the end so that another module
may open the engine at another path.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pytest

from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire import wire
from runwire.ingest import codec
from runwire.proto import telemetry_pb2 as pb
from runwire.storage import schema
from runwire.storage.client import connect
from runwire.storage.filters import FilterError
from runwire.storage.query import NotFound, QueryError, RunNotFound, RunQueries
from runwire.storage.writer import StorageWriter

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z in ns
SECOND = 10**9
MINUTE = 60 * SECOND
UTC = dt.timezone.utc


# --- records, built the way the gateway and ingest build them -------------------------------


def identity(project: str, run_id: str, rank: int = 0, world_size: int = 4, ranks_per_node: int = 2) -> pb.Identity:
    return pb.Identity(project=project, run_id=run_id, rank=rank, local_rank=rank % ranks_per_node,
                       node_rank=rank // ranks_per_node, world_size=world_size, host=f"{run_id}-node-{rank // ranks_per_node}",
                       pid=1000 + rank, stream_id=f"{run_id}-stream-{rank}")


def decoded(env: pb.Envelope, received_ns: int = T0 + 10 * MINUTE) -> tuple[str, dict]:
    _, _, value = codec.encode_envelope(env, received_ns)
    return codec.decode(value)


def metric_record(project: str, run_id: str, rank: int, name: str, steps, values, ts=None, seq: int = 1,
                  world_size: int = 4):
    steps = np.asarray(steps, dtype=np.int64)
    ts = np.asarray(ts if ts is not None else T0 + steps * SECOND, dtype=np.int64)
    env = pb.Envelope(seq=seq, identity=identity(project, run_id, rank, world_size))
    env.metrics.CopyFrom(wire.metric_batch([name], np.zeros(len(steps), np.uint32), steps, ts,
                                           np.asarray(values, dtype=np.float64)))
    return decoded(env)


def run_start(project: str, run_id: str, rank: int, start_s: int, params: dict, tags: dict, world_size: int = 4,
              name: str | None = None):
    env = pb.Envelope(seq=100, identity=identity(project, run_id, rank, world_size))
    s = env.run_start
    s.name = name or f"{run_id}-name"
    s.start_time_ns = T0 + start_s * SECOND
    s.git_commit = "c0ffee"
    s.launcher = "torchrun"
    s.params.update(params)
    s.tags.update(tags)
    return decoded(env, T0 + start_s * SECOND)


def run_end(project: str, run_id: str, rank: int, end_s: int, exit_code: int, world_size: int = 4):
    env = pb.Envelope(seq=200, identity=identity(project, run_id, rank, world_size))
    env.run_end.end_time_ns = T0 + end_s * SECOND
    env.run_end.exit_code = exit_code
    env.run_end.summary.update({"runwire.points": 10.0})
    return decoded(env, T0 + end_s * SECOND)


def gpu_record(project: str, run_id: str, rank: int, host: str, samples, seq: int = 50):
    """samples: (uuid, ts_ns, temperature_c, memory_used_bytes, utilization_pct, throttle)."""
    env = pb.Envelope(seq=seq, identity=identity(project, run_id, rank))
    env.identity.host = host
    g = env.gpu
    uuids = sorted({s[0] for s in samples})
    g.gpu_uuids.extend(uuids)
    g.pci_bus_ids.extend(f"00000000:{17 + i:02x}:00.0" for i in range(len(uuids)))
    g.gpu_indexes.extend(range(len(uuids)))
    g.gpu_names.extend("NVIDIA H100 80GB HBM3" for _ in uuids)
    for uuid, ts, temperature, memory, utilization, throttle in samples:
        g.gpu_ref.append(uuids.index(uuid))
        g.timestamps_ns.append(ts)
        for column in GPU_FLOAT_FIELDS:
            value = {"temperature_c": temperature, "memory_used_bytes": memory, "memory_total_bytes": 80e9,
                     "gpu_utilization_pct": utilization, "power_w": 300.0 + temperature}.get(column, 1.0)
            getattr(g, column).append(value)
        g.throttle_reasons.append(throttle)
        g.xid.append(0)
    return decoded(env)


# --- engine and data sets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def new_client(tmp_path_factory):
    url = f"chdb://{tmp_path_factory.mktemp('chdb-query')}/engine"
    clients = []
    numbers = itertools.count()

    def make(prefix: str = "q", migrate: bool = True, database: str | None = None):
        client = connect(url, database or f"{prefix}{next(numbers)}", create=database is None)
        if migrate and database is None:
            schema.migrate(client)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


RUNS = {
    # run_id: (project, start_s, params, tags, exit_code or None (running), val_loss series)
    "a": ("nlp", 100, {"lr": "0.001", "batch": "32", "model": "gpt", "optimizer": "adam"}, {"team": "nlp"}, 0,
          [0.9, 0.5, 0.3, 0.25]),
    "b": ("nlp", 200, {"lr": "0.01", "batch": "32", "model": "gpt", "optimizer": "adam"}, {"team": "nlp"}, 0,
          [0.9, 0.6, 0.4]),
    "c": ("nlp", 300, {"lr": "0.001", "batch": "64", "model": "bert", "optimizer": "adam"}, {"team": "speech"}, 1,
          [0.7, 0.2]),
    "d": ("nlp", 400, {"lr": "0.001", "batch": "32", "model": "it's \"quoted\"", "optimizer": "adam"},
          {"team": "nlp", "note": "no metrics yet"}, None, None),
    "v1": ("vision", 500, {"lr": "0.1", "batch": "256", "model": "vit", "optimizer": "sgd"}, {"team": "vision"}, 0,
           [0.5, 0.1]),
}
SPIKE_STEP, SPIKE, DIP_STEP, DIP = 31_337, 1000.0, 77_777, -50.0
N_SPIKY = 100_000


def _dataset() -> list[tuple[str, dict]]:
    records = []
    for run_id, (project, start, params, tags, exit_code, val_loss) in RUNS.items():
        records += [run_start(project, run_id, rank, start, params, tags) for rank in range(2)]
        if val_loss is not None:
            # rank 0 logs every step; rank 1 stops one step earlier with other values, so the
            # last value (highest step, any rank) is rank 0's.
            steps = np.arange(len(val_loss)) * 10
            records.append(metric_record(project, run_id, 0, "val_loss", steps, val_loss, ts=T0 + (start + steps) * SECOND))
            records.append(metric_record(project, run_id, 1, "val_loss", steps[:-1], np.array(val_loss[:-1]) + 5,
                                         ts=T0 + (start + steps[:-1]) * SECOND))
        if exit_code is not None:
            records += [run_end(project, run_id, rank, start + 3600, exit_code) for rank in range(2)]
    # a run whose loss has one spike and one dip in 100,000 points
    steps = np.arange(N_SPIKY)
    values = 1.0 + 0.001 * np.sin(steps / 50.0)
    values[SPIKE_STEP], values[DIP_STEP] = SPIKE, DIP
    records.append(run_start("nlp", "spiky", 0, 600, {"lr": "0.001"}, {"team": "nlp"}, world_size=1))
    # 10 ms apart (1,000 s in all), in two batches
    ts = T0 + 600 * SECOND + steps * 10_000_000
    records.append(metric_record("nlp", "spiky", 0, "loss", steps[:60_000], values[:60_000], ts[:60_000], seq=1, world_size=1))
    records.append(metric_record("nlp", "spiky", 0, "loss", steps[60_000:], values[60_000:], ts[60_000:], seq=2, world_size=1))
    # four ranks: value = rank + step / 1000; step time with one slow rank
    records += [run_start("nlp", "band", rank, 700, {"lr": "0.001"}, {"team": "nlp"}) for rank in range(4)]
    for rank in range(4):
        steps = np.arange(1000)
        records.append(metric_record("nlp", "band", rank, "band", steps, rank + steps / 1000, seq=rank + 1))
        step_time = np.full(200, 2.0 if rank == 2 else 1.0) + (np.arange(200) % 5) * 0.01
        records.append(metric_record("nlp", "band", rank, "step_time_s", np.arange(200), step_time, seq=10 + rank))
    return records


def _gpu_dataset() -> list[tuple[str, dict]]:
    """Hosts g-0 (GPU-a, GPU-b) and g-1 (GPU-c, GPU-d), 1 Hz for ten minutes from T0 + 1 h;
    GPU-c's heat is older than the hour before UNTIL."""
    start = T0 + 3600 * SECOND
    records = []
    for gpu, host, run_id, temperature, memory, util, throttle, offset in [
        ("GPU-a", "g-0", "a", 70.0, 79e9, 50.0, 0, 0), ("GPU-b", "g-0", "a", 85.0, 40e9, 90.0, 4, 0),
        ("GPU-c", "g-1", "c", 92.0, 10e9, 20.0, 0, -2 * 3600), ("GPU-d", "g-1", "c", 80.0, 60e9, 70.0, 0, 0),
    ]:
        samples = []
        for k in range(600):
            ts = start + (offset + k) * SECOND
            heat = temperature if k == 300 else temperature - 10  # the peak: one sample
            samples.append((gpu, ts, heat, memory if k == 450 else memory / 2, util, throttle if k == 100 else 0))
        records.append(gpu_record("nlp", run_id, 0, host, samples, seq=hash(gpu) % 1000))
    # GPU-b, later in the window, used by run b: its last run
    records.append(gpu_record("nlp", "b", 1, "g-0", [("GPU-b", start + 900 * SECOND, 60.0, 1e9, 10.0, 1)], seq=77))
    return records


UNTIL = dt.datetime.fromtimestamp((T0 + 3600 * SECOND + 1000 * SECOND) / 1e9, tz=UTC)


def _load(client):
    writer = StorageWriter(client)
    records = _dataset()
    writer.write(records)
    writer.write(records[-3:])  # a replay: nothing may count twice
    writer.write(_gpu_dataset())
    return client


@pytest.fixture(scope="module")
def data(new_client):
    """The data set in a database laid out by `runwire migrate`."""
    return _load(new_client("data"))


@pytest.fixture
def q(data):
    return RunQueries(data)


# --- runs ------------------------------------------------------------------------------------


def test_list_runs_newest_first_with_hosts_and_filters(q):
    runs = q.list_runs()
    assert [r["run_id"] for r in runs] == ["band", "spiky", "v1", "d", "c", "b", "a"]
    a = next(r for r in runs if r["run_id"] == "a")
    assert a["project"] == "nlp" and a["name"] == "a-name" and a["status"] == "FINISHED" and a["world_size"] == 4
    assert a["hosts"] == ["a-node-0"] and a["ranks"] == 2
    assert a["start_time"] == dt.datetime.fromtimestamp(T0 / 1e9 + 100, tz=UTC)
    assert a["end_time"] == dt.datetime.fromtimestamp(T0 / 1e9 + 3700, tz=UTC)
    band = runs[0]
    assert band["hosts"] == ["band-node-0", "band-node-1"] and band["ranks"] == 4 and band["status"] == "RUNNING"
    assert [r["run_id"] for r in q.list_runs(project="vision")] == ["v1"]
    assert [r["run_id"] for r in q.list_runs(project="nlp", status="finished")] == ["b", "a"]
    assert [r["run_id"] for r in q.list_runs(status="FAILED")] == ["c"]
    assert len(q.list_runs(limit=2)) == 2
    assert q.list_runs(project="nope") == []


def test_get_run_has_params_tags_ranks_hosts_and_metric_summary(q):
    run = q.get_run("a")
    assert run["project"] == "nlp" and run["status"] == "FINISHED" and run["exit_code"] == 0
    assert run["params"] == {"batch": "32", "lr": "0.001", "model": "gpt", "optimizer": "adam"}
    assert run["tags"] == {"team": "nlp"}
    assert run["summary"] == {"runwire.points": 10.0}
    assert [(k["rank"], k["local_rank"], k["node_rank"], k["host"], k["status"]) for k in run["ranks"]] == [
        (0, 0, 0, "a-node-0", "FINISHED"), (1, 1, 0, "a-node-0", "FINISHED")]
    assert run["hosts"] == ["a-node-0"]
    assert run["metrics"]["val_loss"] == {"last": 0.25, "step": 30, "min": 0.25, "max": 5.9}
    assert q.get_run("v1", project="vision")["params"]["model"] == "vit"
    assert q.get_run("d")["params"]["model"] == "it's \"quoted\""


def test_unknown_runs_raise_run_not_found(q):
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        q.get_run("nope")
    with pytest.raises(RunNotFound, match="in project 'vision'"):
        q.get_run("a", project="vision")
    with pytest.raises(RunNotFound, match="'zzz'"):
        q.compare(["a", "zzz"])
    with pytest.raises(RunNotFound):
        q.curve("nope", "loss")


def test_metric_names(q):
    assert q.metric_names("band") == ["band", "step_time_s"]
    assert q.metric_names("d") == []


# --- curves ----------------------------------------------------------------------------------


def test_a_single_spike_in_100k_points_survives_a_1000_bucket_curve(q):
    rows = q.curve("spiky", "loss", buckets=1000)
    assert len(rows) == 1000
    assert [r["bucket_start"] for r in rows] == list(range(0, N_SPIKY, 100))
    assert {r["rank"] for r in rows} == {0}
    assert sum(r["count"] for r in rows) == N_SPIKY          # replayed batch not counted twice
    spike = rows[SPIKE_STEP // 100]
    assert spike["max"] == SPIKE and spike["bucket_start"] <= SPIKE_STEP < spike["bucket_start"] + 100
    dip = rows[DIP_STEP // 100]
    assert dip["min"] == DIP
    assert max(r["max"] for r in rows) == SPIKE and min(r["min"] for r in rows) == DIP
    others = [r for i, r in enumerate(rows) if i not in (SPIKE_STEP // 100, DIP_STEP // 100)]
    assert all(0.998 < r["min"] <= r["max"] < 1.002 for r in others)
    # last: the value at the bucket's highest step
    assert rows[5]["last"] == pytest.approx(1.0 + 0.001 * math.sin(599 / 50.0))
    # a wider bucket count than points: one point per bucket
    assert len(q.curve("spiky", "loss", buckets=10)) == 10


def test_time_curves_keep_the_spike_on_the_raw_and_the_rollup_path(q):
    fine = q.curve("spiky", "loss", x="time", buckets=1000)  # 1 s buckets: raw points
    assert len(fine) <= 1000 and sum(r["count"] for r in fine) == N_SPIKY
    assert max(r["max"] for r in fine) == SPIKE and min(r["min"] for r in fine) == DIP
    assert all(isinstance(r["bucket_start"], dt.datetime) and r["bucket_start"].tzinfo is not None for r in fine)
    assert fine[0]["bucket_start"] == dt.datetime.fromtimestamp(T0 / 1e9 + 600, tz=UTC)
    spike_ts = dt.datetime.fromtimestamp((T0 + 600 * SECOND + SPIKE_STEP * 10_000_000) / 1e9, tz=UTC)
    hit = [r for r in fine if r["max"] == SPIKE]
    assert len(hit) == 1 and hit[0]["bucket_start"] <= spike_ts < hit[0]["bucket_start"] + dt.timedelta(seconds=1)

    coarse = q.curve("spiky", "loss", x="time", buckets=5)  # >= 1 minute per bucket: the rollup
    assert 1 <= len(coarse) <= 5
    assert all(r["bucket_start"].second == 0 for r in coarse)  # whole rollup minutes
    assert max(r["max"] for r in coarse) == SPIKE and min(r["min"] for r in coarse) == DIP
    assert coarse[-1]["last"] == pytest.approx(1.0 + 0.001 * math.sin((N_SPIKY - 1) / 50.0))


def test_curves_are_deterministic_whatever_the_insert_order_and_replays(q, new_client):
    first = q.curve("band", "band", buckets=7)
    assert q.curve("band", "band", buckets=7) == first
    other = new_client("order")
    records = [r for r in _dataset() if r[1]["run_id"] == "band"]
    writer = StorageWriter(other)
    for record in reversed(records):
        writer.write([record])
    writer.write(records[:3])
    again = RunQueries(other)
    assert again.curve("band", "band", buckets=7) == first
    assert again.curve("band", "band", buckets=7, across_ranks=True) == q.curve("band", "band", buckets=7, across_ranks=True)


def test_per_rank_and_across_rank_curves(q):
    rows = q.curve("band", "band", buckets=10)
    assert len(rows) == 40 and [r["rank"] for r in rows[::10]] == [0, 1, 2, 3]
    assert rows[10] == {"bucket_start": 0, "rank": 1, "min": 1.0, "max": 1.099, "last": 1.099, "count": 100}
    only = q.curve("band", "band", buckets=10, ranks=[3, 1])
    assert {r["rank"] for r in only} == {1, 3} and len(only) == 20

    band = q.curve("band", "band", buckets=10, across_ranks=True)
    assert len(band) == 10
    b = band[2]  # steps 200..299 of four ranks
    assert b["bucket_start"] == 200 and b["rank"] is None and b["ranks"] == 4 and b["count"] == 400
    assert b["min"] == pytest.approx(0.2) and b["max"] == pytest.approx(3.299)
    assert b["mean"] == pytest.approx(1.5 + 0.299)
    assert b["last"] == pytest.approx(0.299)  # the highest step, lowest rank on the tie
    subset = q.curve("band", "band", buckets=10, across_ranks=True, ranks=2)
    assert subset[0]["ranks"] == 1 and subset[0]["min"] == 2.0


def test_curve_arguments_are_checked(q):
    with pytest.raises(QueryError, match="x must be"):
        q.curve("band", "band", x="epoch")
    with pytest.raises(QueryError, match="buckets"):
        q.curve("band", "band", buckets=0)
    with pytest.raises(QueryError, match="ranks"):
        q.curve("band", "band", ranks=[-1])
    assert q.curve("band", "no-such-metric") == []
    assert q.curve("band", "no-such-metric", x="time") == []


def test_history_returns_every_point_once(q):
    points = q.history("a", "val_loss")
    assert [(p["rank"], p["step"], p["value"]) for p in points] == [
        (0, 0, 0.9), (0, 10, 0.5), (0, 20, 0.3), (0, 30, 0.25), (1, 0, 5.9), (1, 10, 5.5), (1, 20, 5.3)]
    assert len(q.history("spiky", "loss")) == N_SPIKY


# --- compare and search ----------------------------------------------------------------------


def test_compare_shows_only_differing_params_and_metric_summaries(q):
    out = q.compare(["a", "b", "c"])
    assert out["params"] == {"batch": {"a": "32", "b": "32", "c": "64"}, "lr": {"a": "0.001", "b": "0.01", "c": "0.001"},
                             "model": {"a": "gpt", "b": "gpt", "c": "bert"}}
    assert out["all_params"]["optimizer"] == {"a": "adam", "b": "adam", "c": "adam"}
    assert out["metrics"]["val_loss"] == {
        "a": {"last": 0.25, "step": 30, "min": 0.25, "max": 5.9},
        "b": {"last": 0.4, "step": 20, "min": 0.4, "max": 5.9},
        "c": {"last": 0.2, "step": 10, "min": 0.2, "max": 5.7}}
    assert out["runs"]["c"] == {"project": "nlp", "name": "c-name", "status": "FAILED"}
    # across projects; a key only one run has differs (None elsewhere); metrics narrowed
    cross = q.compare(["a", "v1", "d"], metrics=["nothing"])
    assert cross["params"]["optimizer"] == {"a": "adam", "v1": "sgd", "d": "adam"}
    assert cross["metrics"] == {}
    # ranks tie at the last step: the lowest rank's value
    assert q.compare(["band"])["metrics"]["band"]["band"] == {"last": 0.999, "step": 999, "min": 0.0, "max": 3.999}
    same = q.compare(["a", "a"])
    assert same["params"] == {} and list(same["runs"]) == ["a"]


def test_last_min_max_stay_exact_when_every_record_is_written_twice(new_client):
    """metrics_summary is filled by its materialized view on every insert into metrics, so a
    replayed batch lands there twice: compare, get_run and search must still answer exactly,
    before and after the table merges."""
    records = [r for r in _dataset() if r[1]["run_id"] in ("a", "b", "c", "band")]
    once = new_client("once")
    StorageWriter(once).write(records)
    twice = new_client("twice")
    twice.command("SYSTEM STOP MERGES metrics_summary")  # keep the duplicates in their own parts
    writer = StorageWriter(twice)
    writer.write(records)
    writer.write(records)                                 # the whole batch replayed
    for record in reversed(records):                      # and each record again, newest first
        writer.write([record])
    rows, keys = twice.query("SELECT count(), uniqExact(project, run_id, name) FROM metrics_summary").result_rows[0]
    assert rows > keys  # the replays are really there, not merged away

    expected = {"a": {"last": 0.25, "step": 30, "min": 0.25, "max": 5.9},
                "b": {"last": 0.4, "step": 20, "min": 0.4, "max": 5.9},
                "c": {"last": 0.2, "step": 10, "min": 0.2, "max": 5.7}}
    band = {"band": {"last": 0.999, "step": 999, "min": 0.0, "max": 3.999},
            "step_time_s": {"last": 1.04, "step": 199, "min": 1.0, "max": 2.04}}

    def answers(client):
        queries = RunQueries(client)
        search = queries.search_runs("metrics.val_loss < 0.3 or metrics.band > 0.5", order_by=["metrics.val_loss ASC"])
        return {"compare": queries.compare(["a", "b", "c", "band"])["metrics"],
                "get_run": {r: queries.get_run(r)["metrics"] for r in ("a", "b", "c", "band")},
                "search": [(r["run_id"], r["metrics.val_loss"], r["metrics.band"]) for r in search]}

    for client in (once, twice):
        got = answers(client)
        assert got["compare"]["val_loss"] == expected
        assert {name: values["band"] for name, values in got["compare"].items() if name != "val_loss"} == band
        assert got["get_run"]["a"] == {"val_loss": expected["a"]} and got["get_run"]["band"] == band
        assert got["search"] == [("c", 0.2, None), ("a", 0.25, None), ("band", None, 0.999)]
    assert answers(twice) == answers(once)
    twice.command("SYSTEM START MERGES metrics_summary")
    twice.command("OPTIMIZE TABLE metrics_summary FINAL")
    assert twice.query("SELECT count() FROM metrics_summary").result_rows[0][0] == keys
    assert answers(twice) == answers(once)


def _ids(rows):
    return [r["run_id"] for r in rows]


@pytest.mark.parametrize("filter_string, expected", [
    ("", ["band", "spiky", "v1", "d", "c", "b", "a"]),
    ("metrics.val_loss < 0.3 and params.lr = '0.001'", ["c", "a"]),
    ("metrics.val_loss < 0.3 or params.batch = '64'", ["v1", "c", "a"]),
    ("metrics.val_loss <= 0.25", ["v1", "c", "a"]),
    ("metrics.val_loss >= 0.25 and metrics.val_loss != 0.4", ["a"]),
    ("metrics.val_loss > 0.25", ["b"]),
    ("metrics.val_loss = 0.2", ["c"]),
    # and binds tighter than or; parentheses change it
    ("tags.team = 'vision' or tags.team = 'nlp' and attributes.status = 'FINISHED'", ["v1", "b", "a"]),
    ("(tags.team = 'vision' or tags.team = 'nlp') and attributes.status = 'FINISHED'", ["v1", "b", "a"]),
    ("(tags.team = 'speech' or tags.team = 'nlp') and (attributes.status = 'FAILED' or metrics.val_loss > 0.3)",
     ["c", "b"]),
    ("tags.team = 'speech' or (tags.team = 'nlp' and attributes.status = 'FAILED')", ["c"]),
    ("params.lr != '0.001'", ["v1", "b"]),
    ("params.model IN ('bert', 'vit')", ["v1", "c"]),
    ("params.model NOT IN ('bert', 'vit')", ["d", "b", "a"]),
    ("params.model LIKE 'g%'", ["b", "a"]),
    ("params.model ILIKE 'G%'", ["b", "a"]),
    ("params.model = 'it''s \"quoted\"'", ["d"]),
    ("params.lr < 0.005", ["band", "spiky", "d", "c", "a"]),  # numeric comparison of a param
    ("tags.note IS NOT NULL", ["d"]),
    ("metrics.val_loss IS NULL and attributes.project = 'nlp'", ["band", "spiky", "d"]),
    ("attributes.status = 'RUNNING' and attributes.end_time IS NULL", ["band", "spiky", "d"]),
    ("attributes.run_name = 'b-name'", ["b"]),
    ("attributes.run_id IN ('a', 'v1', 'zzz')", ["v1", "a"]),
    (f"attributes.start_time > {(T0 // 10**6) + 350_000}", ["band", "spiky", "v1", "d"]),
    ("attributes.start_time < '2025-01-01T00:05:01Z' AND attributes.start_time >= '2025-01-01 00:01:40'", ["c", "b", "a"]),
    # injection attempts are values, never SQL
    ("params.lr = '0.001'' OR 1=1 --'", []),
    ("params.`lr\") OR 1=1 --` = '0.001'", []),
    ('tags."team\'] OR 1 --" = \'nlp\'', []),
    ("attributes.status = 'x'' OR ''1''=''1'", []),
])
def test_search_runs_filters(q, filter_string, expected):
    assert _ids(q.search_runs(filter_string)) == expected


def test_search_runs_columns_ordering_and_limits(q):
    rows = q.search_runs("tags.team = 'nlp' and metrics.val_loss IS NOT NULL", order_by=["metrics.val_loss ASC"])
    assert _ids(rows) == ["a", "b"]
    a = rows[0]
    assert list(a)[:6] == ["run_id", "project", "name", "status", "start_time", "end_time"]
    assert a["metrics.val_loss"] == 0.25 and a["params.lr"] == "0.001" and a["tags.team"] == "nlp"
    assert a["start_time"].tzinfo is not None
    # order by a metric: runs without it last, in either direction
    assert _ids(q.search_runs("attributes.project = 'nlp'", order_by=["metrics.val_loss DESC"]))[:3] == ["b", "a", "c"]
    assert _ids(q.search_runs("attributes.project = 'nlp'", order_by=["metrics.val_loss ASC"])) == [
        "c", "a", "b", "band", "spiky", "d"]
    assert _ids(q.search_runs("", order_by=["params.batch DESC", "attributes.run_id ASC"])) == [
        "c", "a", "b", "d", "v1", "band", "spiky"]
    assert _ids(q.search_runs("", order_by=["attributes.start_time ASC"], max_results=2)) == ["a", "b"]
    assert _ids(q.search_runs("", project="vision")) == ["v1"]
    # a run lacking a key gets None in that column
    mixed = {r["run_id"]: r for r in q.search_runs("attributes.run_id IN ('a', 'd')")}
    assert mixed["d"]["metrics.val_loss"] is None and mixed["d"]["tags.note"] == "no metrics yet"
    assert mixed["a"]["tags.note"] is None


def test_search_runs_as_pandas(q):
    frame = q.search_runs("params.optimizer = 'adam'", output="pandas")
    assert list(frame["run_id"]) == ["d", "c", "b", "a"]
    assert {"run_id", "status", "start_time", "end_time", "metrics.val_loss", "params.lr", "params.model",
            "tags.team"} <= set(frame.columns)
    assert frame.set_index("run_id").loc["c", "metrics.val_loss"] == 0.2
    assert math.isnan(frame.set_index("run_id").loc["d", "metrics.val_loss"])
    assert str(frame["start_time"].dtype).startswith("datetime64")
    empty = q.search_runs("params.lr = 'none'", output="pandas")
    assert len(empty) == 0 and "run_id" in empty.columns


def test_search_runs_rejects_bad_filters_with_the_position(q):
    with pytest.raises(FilterError) as err:
        q.search_runs("metrics.val_loss < 0.3 and (params.lr = '0.1'")
    assert err.value.position == len("metrics.val_loss < 0.3 and (params.lr = '0.1'")
    with pytest.raises(FilterError) as err:
        q.search_runs("", order_by=["metrics.val_loss sideways"])
    assert err.value.position == len("metrics.val_loss ")
    with pytest.raises(QueryError):
        q.search_runs("", output="arrow")


# --- stragglers ------------------------------------------------------------------------------


def test_stragglers_flag_the_slow_rank_and_ignore_replays(q, data):
    # replay rank 2's batch twice more: FINAL keeps the medians exact
    slow = [r for r in _dataset() if r[1]["run_id"] == "band" and r[1].get("seq") == 12]
    StorageWriter(data).write(slow * 2)
    rows = q.stragglers("band")
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    assert [r["straggler"] for r in rows] == [False, False, True, False]
    assert rows[2]["median"] == pytest.approx(2.02) and rows[0]["median"] == pytest.approx(1.02)
    # pooled over ranks: 600 points of 1.00..1.04 and 200 of 2.00..2.04 (not 600: replays)
    assert all(r["run_median"] == pytest.approx(1.03) for r in rows)
    assert rows[2]["ratio"] == pytest.approx(2.02 / 1.03) and rows[2]["points"] == 200
    assert rows[2]["host"] == "band-node-1" and rows[0]["host"] == "band-node-0"
    assert not any(r["straggler"] for r in q.stragglers("band", min_ratio=2.5))
    assert q.stragglers("band", metric="missing") == []


# --- GPUs ------------------------------------------------------------------------------------


def test_hottest_gpus_in_the_window(q):
    rows = q.hottest_gpus(window_s=3600, limit=10, until=UNTIL)
    assert [(r["gpu_uuid"], r["max_temperature_c"]) for r in rows] == [("GPU-b", 85.0), ("GPU-d", 80.0), ("GPU-a", 70.0)]
    b = rows[0]
    assert b["host"] == "g-0" and b["last_run_id"] == "b" and b["last_rank"] == 1 and b["project"] == "nlp"
    assert b["gpu_name"] == "NVIDIA H100 80GB HBM3" and b["last_seen"].tzinfo is not None
    assert [r["gpu_uuid"] for r in q.hottest_gpus(window_s=4 * 3600, limit=2, until=UNTIL)] == ["GPU-c", "GPU-b"]
    assert q.hottest_gpus(until=UNTIL, project="vision") == []
    assert q.hottest_gpus() == []  # nothing in the hour before now


def test_memory_headroom_fullest_first(q):
    rows = q.memory_headroom(window_s=3600, until=UNTIL)
    assert [r["gpu_uuid"] for r in rows] == ["GPU-a", "GPU-d", "GPU-b"]
    assert rows[0]["used_fraction"] == pytest.approx(79 / 80) and rows[0]["headroom_bytes"] == pytest.approx(1e9)
    assert rows[0]["memory_total_bytes"] == 80e9 and rows[0]["last_run_id"] == "a"


def test_gpu_timeline_raw_and_rollup(q):
    start = dt.datetime.fromtimestamp(T0 / 1e9 + 3600, tz=UTC)
    fine = q.gpu_timeline("GPU-b", since=start, until=start + dt.timedelta(seconds=600), buckets=60)  # 10 s
    assert len(fine) == 60 and fine[0]["bucket_start"] == start
    assert sum(r["samples"] for r in fine) == 600
    peak = fine[30]
    assert peak["max_temperature_c"] == 85.0 and all(r["max_temperature_c"] == 75.0 for r in fine if r is not peak)
    assert fine[10]["throttle_reasons"] == 4 and fine[11]["throttle_reasons"] == 0
    assert fine[0]["mean_gpu_utilization_pct"] == 90.0 and fine[0]["memory_total_bytes"] == 80e9
    whole = q.gpu_timeline("GPU-b", buckets=3)  # its whole history, per-minute rollup
    assert 1 <= len(whole) <= 3 and max(r["max_temperature_c"] for r in whole) == 85.0
    assert sum(r["samples"] for r in whole) == 601
    assert whole[0]["bucket_start"] == start and whole[0]["throttle_reasons"] == 4
    with pytest.raises(NotFound):
        q.gpu_timeline("GPU-zzz")


def test_gpu_series_per_gpu_of_a_run(q):
    rows = q.gpu_series("a", "temperature_c", buckets=10)
    assert {r["gpu_uuid"] for r in rows} == {"GPU-a", "GPU-b"}
    a = [r for r in rows if r["gpu_uuid"] == "GPU-a"]
    assert len(a) == 10 and a[0]["host"] == "g-0" and max(r["max"] for r in a) == 70.0
    assert min(r["min"] for r in a) == 60.0 and a[-1]["last"] == 60.0
    with pytest.raises(QueryError, match="unknown GPU field"):
        q.gpu_series("a", "temperature_c; DROP TABLE metrics")


# --- read-only SQL ---------------------------------------------------------------------------


def test_read_only_query_reads_and_refuses_writes(new_client, data):
    # A client of its own: on chDB a refused statement leaves the client's session read-only.
    ro = RunQueries(new_client(database=data.database))
    result = ro.read_only_query("SELECT run_id, status FROM runs FINAL WHERE project = {p:String} ORDER BY run_id",
                                parameters={"p": "vision"})
    assert result["columns"] == ["run_id", "status"] and result["rows"] == [("v1", "FINISHED")]
    assert result["truncated"] is False
    capped = ro.read_only_query("SELECT number FROM system.numbers LIMIT 100000", max_rows=10)
    assert len(capped["rows"]) == 10 and capped["truncated"] is True
    before = data.query("SELECT count() FROM metrics").result_rows
    for statement in ["INSERT INTO metrics SELECT * FROM metrics LIMIT 1", "DROP TABLE metrics",
                      "ALTER TABLE metrics DELETE WHERE 1", "CREATE TABLE evil (a Int8) ENGINE = Memory"]:
        with pytest.raises(QueryError, match="readonly|READONLY|read-only"):
            ro.read_only_query(statement)
    assert data.query("SELECT count() FROM metrics").result_rows == before
    assert "metrics" in {r[0] for r in data.query("SHOW TABLES").result_rows}
    with pytest.raises(QueryError, match="UNKNOWN_TABLE|Unknown table"):
        ro.read_only_query("SELECT * FROM no_such_table")
