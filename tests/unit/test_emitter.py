"""The emitter's guarantees, against a real gateway (gRPC on 127.0.0.1) over an in-memory sink.

Every test drives one run the way a training process does (one run per process) and checks what
the gateway's sink received, decoded from the bytes Kafka would carry.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import runwire
from runwire import run as run_module
from runwire.ingest import codec
from runwire.spool import pending_envelopes, stream_dirs
from runwire.sync import sync

from gateway_helpers import RecordingSink, free_port, start_gateway

pytestmark = pytest.mark.timeout(60)

PROJECT = "emit"
RUNWIRE_THREADS = ("runwire-batcher", "runwire-sender")


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No RUNWIRE_* or launcher variables from the outside; no run or thread outlives a test."""
    for name in list(os.environ):
        if name.startswith(("RUNWIRE_", "SLURM_", "OMPI_", "PMIX_", "TORCHELASTIC_")) or name in (
                "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK"):
            monkeypatch.delenv(name)
    yield
    for run in list(run_module._live_runs):
        run.finish(timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name in RUNWIRE_THREADS and t.is_alive()]
        if not alive:
            break
        time.sleep(0.02)
    assert not alive, f"emitter threads still running after finish(): {alive}"


@pytest.fixture
def spool_dir(tmp_path) -> Path:
    return tmp_path / "spool"


def start(address: str, spool_dir: Path, **kwargs) -> runwire.Run:
    settings = dict(project=PROJECT, gpu=False, spool_dir=str(spool_dir), gateway=address,
                    flush_interval_s=0.05, finish_timeout_s=20, capture=False)  # metadata tags: test_repro_*
    settings.update(kwargs)
    return runwire.init(**settings)


def by_name_step(sink: RecordingSink) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for _, name, step, _, value in sink.points():
        out.setdefault((name, step), []).append(value)
    return out


def assert_delivered(summary: dict) -> None:
    assert summary["runwire.dropped"] == 0
    assert summary["runwire.unacked"] == 0
    assert summary["runwire.rejected"] == 0


# -- what users log arrives --------------------------------------------------------------


def test_points_arrive_with_names_steps_and_values(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir)
    run.log({"loss": 0.5, "nan": math.nan, "pinf": math.inf, "ninf": -math.inf}, step=3)
    run.log({"int": 7, "bool": True, "f32": np.float32(1.5), "i64": np.int64(-4), "f64": np.float64(2.25),
             "zero_d": np.array(9.0)}, step=4)
    summary = run.finish()

    got = by_name_step(sink)
    assert got[("loss", 3)] == [0.5]
    assert math.isnan(got[("nan", 3)][0])
    assert got[("pinf", 3)] == [math.inf] and got[("ninf", 3)] == [-math.inf]
    assert got[("int", 4)] == [7.0] and got[("bool", 4)] == [1.0] and got[("f32", 4)] == [1.5]
    assert got[("i64", 4)] == [-4.0] and got[("f64", 4)] == [2.25] and got[("zero_d", 4)] == [9.0]
    assert len(sink.points()) == 10

    record = sink.of_kind(codec.METRICS)[0]
    assert record["project"] == PROJECT and record["run_id"] == run.id
    assert (record["rank"], record["world_size"], record["pid"]) == (0, 1, os.getpid())
    assert summary["runwire.points"] == 10
    assert summary["runwire.invalid_values"] == 0 and summary["runwire.invalid_names"] == 0
    assert_delivered(summary)
    (end,) = sink.bodies("run_end")
    assert end["summary"]["loss"] == 0.5 and math.isnan(end["summary"]["nan"])  # last value of each metric


def test_a_busy_run_sends_full_envelopes_without_waiting_for_the_interval(gateway, sink, spool_dir):
    # An interval far longer than the test: with it alone, nothing would arrive before 30 s. A
    # busy run sends each envelope as it fills, so most points arrive while it is still logging
    # (a condition with a deadline, not a latency bound: it holds on a busy machine too).
    run = start(gateway.address, spool_dir, flush_interval_s=30.0, batch_points=500)
    step = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # ~10,000 points/s: an envelope's worth every 50 ms
        for _ in range(20):
            run.log({f"m{j}": 1.0 for j in range(10)}, step=step)
            step += 1
        time.sleep(0.02)
    logged = step * 10
    assert sink.wait_for(lambda s: s.point_count() >= logged - 500, timeout=20), (sink.point_count(), logged)
    assert time.monotonic() - started < 25  # well inside the 30 s interval
    assert_delivered(run.finish())
    # ... and it sends full envelopes only; the one it was filling goes at finish().
    sizes = [len(r["values"]) for r in sink.of_kind(codec.METRICS)]
    assert len(sink.points()) == logged
    assert len(sizes) > 20 and sum(size < 500 for size in sizes) <= 1, sizes


def test_a_quiet_run_sends_at_most_one_envelope_per_interval(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir, flush_interval_s=0.5, batch_points=500)
    for step in range(16):  # 10 points/s for 1.6 s
        run.log({"loss": 1.0}, step=step)
        time.sleep(0.1)
    assert 1 <= len(sink.of_kind(codec.METRICS)) <= 4
    assert_delivered(run.finish())
    assert len(sink.points()) == 16


def test_auto_step_increments_and_follows_explicit_steps(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir)
    for value in (1.0, 2.0, 3.0):
        run.log({"a": value})
    run.log({"a": 10.0}, step=10)
    run.log({"a": 11.0})
    runwire.log({"a": 12.0})
    runwire.log_metric("a", 13.0)
    assert_delivered(run.finish())
    assert sorted((step, value) for _, name, step, _, value in sink.points()) == [
        (0, 1.0), (1, 2.0), (2, 3.0), (10, 10.0), (11, 11.0), (12, 12.0), (13, 13.0)]
    # Points of one run keep their order of logging.
    timestamps = [ts for *_, ts, _ in sorted(sink.points(), key=lambda p: p[2])]
    assert timestamps == sorted(timestamps)


def test_bad_values_and_names_are_counted_warned_once_and_never_raise(gateway, sink, spool_dir, caplog):
    class Exploding:
        def __float__(self):
            raise RuntimeError("device lost")

    run = start(gateway.address, spool_dir)
    long_name = "n" * 257
    ok_name = "m" * 256  # the limit itself is fine
    caplog.set_level(logging.WARNING, logger="runwire")
    for step in range(2):
        run.log({"ok": float(step), "text": "abc", "none": None, "": 1.0, long_name: 2.0, ok_name: 3.0,
                 "huge": 10 ** 400, "exploding": Exploding(), 5: 4.0}, step=step)
    summary = run.finish()

    got = by_name_step(sink)
    assert got[("ok", 0)] == [0.0] and got[("ok", 1)] == [1.0]
    assert got[(ok_name, 0)] == [3.0] and got[(ok_name, 1)] == [3.0]
    assert {name for _, name, *_ in sink.points()} == {"ok", ok_name}
    assert summary["runwire.points"] == 4
    assert summary["runwire.invalid_values"] == 8  # text, none, huge, exploding, twice each
    assert summary["runwire.invalid_names"] == 6   # "", 257 characters, a non-string key, twice each
    assert_delivered(summary)

    warnings = [r.getMessage() for r in caplog.records if r.name == "runwire" and r.levelno == logging.WARNING]
    for needle in ("'text'", "'none'", "'huge'", "'exploding'", "''", "'nnnnnnnnnn"):
        assert sum(needle in message for message in warnings) == 1, (needle, warnings)


@pytest.mark.parametrize("data,step", [(None, None), ([1, 2], None), ("loss", None), ({"x": 1.0}, "7"),
                                       ({"x": 1.0}, 2.5), ({"x": 1.0}, 2 ** 70)])
def test_malformed_log_calls_never_raise(gateway, sink, spool_dir, data, step):
    run = start(gateway.address, spool_dir)
    run.log({"before": 1.0}, step=0)
    run.log(data, step=step)
    run.log({"after": 2.0}, step=1)
    summary = run.finish()
    got = by_name_step(sink)
    assert got[("before", 0)] == [1.0] and got[("after", 1)] == [2.0]
    assert summary["runwire.invalid_values"] >= 1
    assert_delivered(summary)


def test_strict_mode_raises_type_error(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir, strict=True)
    with pytest.raises(TypeError):
        run.log({"x": "abc"}, step=0)
    with pytest.raises(TypeError):
        runwire.log({"x": object()}, step=1)
    run.log({"x": 1.0}, step=2)
    assert_delivered(run.finish())
    assert sink.points()[0][1:3] == ("x", 2) and len(sink.points()) == 1


def test_ten_thousand_distinct_metric_names(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir)
    names = [f"layer{i}/grad_norm" for i in range(10_000)]
    run.log({name: float(i) for i, name in enumerate(names)}, step=0)
    run.log({name: -float(i) for i, name in enumerate(names)}, step=1)
    summary = run.finish()
    assert_delivered(summary)
    got = by_name_step(sink)
    assert len(got) == 20_000
    assert all(got[(name, 0)] == [float(i)] and got[(name, 1)] == [-float(i)] for i, name in enumerate(names))
    assert summary["runwire.points"] == 20_000


# -- params, tags, run start and end -----------------------------------------------------


def test_config_params_tags_and_run_end(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir, name="baseline",
                config={"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "batch": 32}, tags={"team": "vision"})
    run.config["warmup"] = 100
    run.config.dropout = 0.1
    run.config.update({"seed": 7})
    assert run.config["optim"]["lr"] == 0.001 and run.config.warmup == 100
    run.log_params({"data": {"path": "/d", "shards": 8}})
    runwire.log_param("single", "yes")
    run.set_tag("stage", "pretrain")
    runwire.set_tags({"owner": "me"})
    run.log({"loss": 1.0}, step=0)
    run.summary["best_loss"] = 0.25
    summary = run.finish(exit_code=3)
    assert_delivered(summary)

    (start_body,) = sink.bodies("run_start")
    assert start_body["name"] == "baseline"
    assert start_body["params"] == {"optim.lr": "0.001", "optim.betas": "[0.9, 0.99]", "batch": "32"}
    assert start_body["tags"] == {"team": "vision"}
    assert start_body["launcher"] == "local" and start_body["start_time_ns"] > 0

    params = {}
    for body in sink.bodies("params"):
        params.update(body["params"])
    assert params == {"warmup": "100", "dropout": "0.1", "seed": "7", "data.path": "/d", "data.shards": "8",
                      "single": "yes"}
    tags = {}
    for body in sink.bodies("tags"):
        tags.update(body["tags"])
    assert tags == {"stage": "pretrain", "owner": "me"}

    (end,) = sink.bodies("run_end")
    assert end["exit_code"] == 3 and end["end_time_ns"] >= start_body["start_time_ns"]
    assert end["summary"]["best_loss"] == 0.25 and end["summary"]["loss"] == 1.0
    assert end["summary"]["runwire.points"] == 1 and end["summary"]["runwire.dropped"] == 0
    assert summary["best_loss"] == 0.25 and summary["runwire.points"] == 1


def test_list_tags(gateway, sink, spool_dir):
    start(gateway.address, spool_dir, tags=["baseline", "ablation"]).finish()
    assert sink.bodies("run_start")[0]["tags"] == {"baseline": "", "ablation": ""}


def test_mlflow_style_aliases(gateway, sink, spool_dir):
    settings = dict(gpu=False, spool_dir=str(spool_dir), gateway=gateway.address, flush_interval_s=0.05,
                    finish_timeout_s=20)
    with runwire.start_run(run_name="mlflow-run", project=PROJECT, params={"lr": 0.1}, tags={"t": "1"},
                           **settings) as run:
        assert runwire.active_run() is run
        assert runwire.start_run(**settings) is run  # the active run, not a second one
        runwire.log_metric("loss", 0.5, step=1)
        runwire.log_metrics({"loss": 0.25, "acc": 0.75}, step=2)
        runwire.log_param("epochs", 3)
        runwire.log_params({"opt": "adam"})
        runwire.set_tag("phase", "train")
    assert runwire.active_run() is None
    assert run.summary["runwire.unacked"] == 0

    got = by_name_step(sink)
    assert got == {("loss", 1): [0.5], ("loss", 2): [0.25], ("acc", 2): [0.75]}
    start_body = sink.bodies("run_start")[0]
    assert start_body["name"] == "mlflow-run" and start_body["params"] == {"lr": "0.1"}
    assert {k: v for b in sink.bodies("params") for k, v in b["params"].items()} == {"epochs": "3", "opt": "adam"}
    assert sink.bodies("tags")[0]["tags"] == {"phase": "train"}
    assert [e["exit_code"] for e in sink.bodies("run_end")] == [0]

    # end_run() finishes, with a failure status mapping to exit code 1.
    second = runwire.start_run(run_name="second", project=PROJECT, **settings)
    assert second is not run
    runwire.end_run("FAILED")
    runwire.end_run()  # nothing active any more: a no-op
    assert sorted(e["exit_code"] for e in sink.bodies("run_end")) == [0, 1]


def test_exception_inside_start_run_ends_with_exit_code_1(gateway, sink, spool_dir):
    with pytest.raises(ZeroDivisionError):
        with runwire.start_run(project=PROJECT, gpu=False, spool_dir=str(spool_dir), gateway=gateway.address,
                               flush_interval_s=0.05):
            runwire.log_metric("loss", 1.0, step=0)
            1 / 0
    (end,) = sink.bodies("run_end")
    assert end["exit_code"] == 1
    assert by_name_step(sink) == {("loss", 0): [1.0]}


# -- the gateway is unreachable, restarts, stalls or refuses -----------------------------


def test_gateway_down_when_the_run_starts(sink, spool_dir):
    port = free_port()
    run = start(f"127.0.0.1:{port}", spool_dir)
    for step in range(200):
        run.log({"loss": float(step), "lr": 0.1}, step=step)
        if step % 20 == 0:
            time.sleep(0.01)
    gateway = start_gateway(sink, port=port)
    try:
        for step in range(200, 400):
            run.log({"loss": float(step), "lr": 0.1}, step=step)
        summary = run.finish(timeout=30)
    finally:
        gateway.stop(grace=0.5)
    assert_delivered(summary)
    assert summary["runwire.reconnects"] >= 1
    assert len(sink.unique_points()) == 800
    assert len(sink.points()) == 800  # nothing was delivered before, so nothing was resent
    assert {(name, step) for _, name, step, _ in sink.unique_points()} == {
        (name, step) for step in range(400) for name in ("loss", "lr")}
    assert len(sink.bodies("run_start")) == 1 and len(sink.bodies("run_end")) == 1
    assert pending_envelopes(spool_dir) == 0 and stream_dirs(spool_dir) == []


def test_gateway_restarted_mid_run_loses_nothing(sink, spool_dir):
    first = start_gateway(sink)
    port = first.port
    second = None
    try:
        run = start(first.address, spool_dir)
        for step in range(300):
            run.log({"loss": float(step)}, step=step)
            if step % 30 == 0:
                time.sleep(0.01)
        assert sink.wait_for(lambda s: s.point_count() > 0, timeout=10)
        first.stop(grace=0)
        for step in range(300, 600):
            run.log({"loss": float(step)}, step=step)
            if step % 30 == 0:
                time.sleep(0.01)
        second = start_gateway(sink, port=port)
        for step in range(600, 900):
            run.log({"loss": float(step)}, step=step)
        summary = run.finish(timeout=30)
    finally:
        first.stop(grace=0)
        if second is not None:
            second.stop(grace=0.5)
    assert_delivered(summary)
    assert summary["runwire.reconnects"] >= 1
    unique = sink.unique_points()
    assert {step for _, name, step, _ in unique} == set(range(900))
    assert all(value == float(step) for (_, _, step, _), value in unique.items())
    assert len(sink.bodies("run_end")) >= 1


def test_stalled_gateway_never_blocks_log_and_spools_the_rest(sink, spool_dir):
    sink.stall()
    stalled = start_gateway(sink)
    healthy_sink = RecordingSink()
    healthy = start_gateway(healthy_sink)
    try:
        run = start(stalled.address, spool_dir, max_queue=100, max_unacked_bytes=1, max_spool_bytes=0)
        calls = 20_000
        worst = 0.0
        for step in range(calls):
            began = time.perf_counter()
            run.log({"loss": float(step)})
            worst = max(worst, time.perf_counter() - began)
        assert worst < 0.05, f"log() blocked for {worst * 1000:.1f} ms"

        began = time.monotonic()
        summary = run.finish(timeout=1)
        assert time.monotonic() - began < 4
        assert summary["runwire.dropped"] > 0
        assert summary["runwire.dropped"] + summary["runwire.points"] == calls
        assert summary["runwire.unacked"] > 0
        unacked = pending_envelopes(spool_dir)
        assert unacked == summary["runwire.unacked"]
        assert run.finish(timeout=1) == summary  # twice is safe

        (report,) = sync(spool_dir, gateway=healthy.address, timeout_s=10)
        assert (report.envelopes_now, report.rejected, report.left) == (unacked, 0, 0)
        # Lost: exactly the dropped points; nothing was lost in memory.
        assert report.ended and report.lost == report.dropped == summary["runwire.dropped"]
        assert report.lost_steps is None
        assert pending_envelopes(spool_dir) == 0 and stream_dirs(spool_dir) == []
        assert healthy_sink.point_count() == summary["runwire.points"]
        # The newest points are the ones kept: the oldest were dropped.
        assert {step for _, _, step, _ in healthy_sink.unique_points()} == set(
            range(calls - summary["runwire.points"], calls))
        assert len(healthy_sink.bodies("run_start")) == 1
        (end,) = healthy_sink.bodies("run_end")
        assert end["summary"]["runwire.dropped"] == summary["runwire.dropped"]
    finally:
        sink.release()
        stalled.stop(grace=0.5)
        healthy.stop(grace=0.5)


def test_finish_on_a_full_spool_spools_the_whole_queue_before_returning(sink, spool_dir):
    """finish() times out while the batcher waits for spool space: the queue still goes to the
    spool before finish() returns, and the summary and RunEnd count it (nothing is written later)."""
    sink.stall()
    stalled = start_gateway(sink)
    healthy_sink = RecordingSink()
    healthy = start_gateway(healthy_sink)
    try:
        run = start(stalled.address, spool_dir, max_queue=20_000, batch_points=500, max_unacked_bytes=1,
                    max_spool_bytes=0)
        for step in range(20_000):
            run.log({"loss": float(step)}, step=step)
        summary = run.finish(timeout=0.3)
        files = pending_envelopes(spool_dir)
        assert summary["runwire.points"] == 20_000 and summary["runwire.dropped"] == 0
        assert files == summary["runwire.unacked"] >= 40
        time.sleep(0.3)
        assert pending_envelopes(spool_dir) == files
        (report,) = sync(spool_dir, gateway=healthy.address, timeout_s=10)
        assert (report.envelopes_now, report.rejected, report.left) == (files, 0, 0)
        assert {step for _, _, step, _ in healthy_sink.unique_points()} == set(range(20_000))
        (end,) = healthy_sink.bodies("run_end")
        assert end["summary"]["runwire.points"] == 20_000
    finally:
        sink.release()
        stalled.stop(grace=0.5)
        healthy.stop(grace=0.5)


def test_finish_against_a_dead_gateway_returns_in_time_and_spools(spool_dir):
    run = start(f"127.0.0.1:{free_port()}", spool_dir)
    for step in range(50):
        run.log({"loss": float(step)}, step=step)
    began = time.monotonic()
    assert run.flush(timeout=0.3) is False
    assert time.monotonic() - began < 2
    began = time.monotonic()
    summary = run.finish(timeout=1)
    assert time.monotonic() - began < 1 + 3
    assert summary["runwire.unacked"] >= 3  # run start, the metrics, run end
    assert summary["runwire.points"] == 50
    assert pending_envelopes(spool_dir) == summary["runwire.unacked"]
    began = time.monotonic()
    assert run.finish(timeout=1) == summary
    assert runwire.finish() == summary
    assert time.monotonic() - began < 0.5
    run.log({"after": 1.0})  # after finish: ignored, never raises
    runwire.log({"after": 1.0})


def test_invalid_argument_answer_is_dropped_and_counted(gateway, sink, spool_dir):
    sink.decide = lambda kind, record: ("INVALID_ARGUMENT" if kind == codec.METRICS and "poison" in record["names"]
                                        else None)
    run = start(gateway.address, spool_dir)
    run.log({"poison": 1.0}, step=0)
    assert run.flush(timeout=20)
    for step in range(1, 50):
        run.log({"good": float(step)}, step=step)
    summary = run.finish()
    assert summary["runwire.rejected"] == 1
    assert summary["runwire.unacked"] == 0
    assert [r["names"] for _, r, code in sink.answered] == [["poison"]]
    assert {name for _, name, *_ in sink.points()} == {"good"}
    assert {step for _, _, step, _ in sink.unique_points()} == set(range(1, 50))
    assert len(sink.bodies("run_end")) == 1


def test_unavailable_answer_is_resent(gateway, sink, spool_dir):
    answered = []

    def decide(kind, record):
        if kind == codec.METRICS and "flaky" in record["names"] and not answered:
            answered.append(record["seq"])
            return "UNAVAILABLE"
        return None

    sink.decide = decide
    run = start(gateway.address, spool_dir)
    run.log({"flaky": 1.0}, step=0)
    assert sink.wait_for(lambda s: bool(s.answered), timeout=10)
    for step in range(1, 50):
        run.log({"steady": float(step)}, step=step)
    summary = run.finish()
    assert_delivered(summary)
    assert summary["runwire.reconnects"] >= 1
    got = by_name_step(sink)
    assert got[("flaky", 0)][0] == 1.0  # arrived on the resend (duplicates allowed)
    assert {step for _, name, step, _ in sink.unique_points() if name == "steady"} == set(range(1, 50))
    assert [r["seq"] for k, r in sink.snapshot() if k == codec.METRICS and "flaky" in r["names"]][0] == answered[0]


def test_backpressure_answers_are_retried_with_growing_backoff(gateway, sink, spool_dir):
    """RESOURCE_EXHAUSTED is retried, but not in a tight loop: a busy gateway is not hammered by
    every rank resending everything it holds every few milliseconds."""
    busy_for = 1.5
    busy_until = [math.inf]
    sink.decide = lambda kind, record: "RESOURCE_EXHAUSTED" if time.monotonic() < busy_until[0] else None
    busy_until[0] = time.monotonic() + busy_for
    run = start(gateway.address, spool_dir)
    run.log({"x": 1.0}, step=0)
    time.sleep(max(0.0, busy_until[0] - time.monotonic()))
    # Every attempt resends everything unacknowledged, oldest (the run start, seq 1) first.
    attempts = sum(1 for _, record, _ in list(sink.answered) if record["seq"] == 1)
    summary = run.finish(timeout=30)
    assert_delivered(summary)
    assert by_name_step(sink) == {("x", 0): [1.0]}
    # Without backoff (a reconnect every 0-0.2 s) this is about 14; with it, rarely more than 5.
    assert 2 <= attempts <= 8, f"{attempts} attempts in {busy_for} s"


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_logs_nothing_and_does_not_hang(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir)
    for step in range(100):
        run.log({"loss": float(step)}, step=step)
    assert run.flush(timeout=20)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: everything is a no-op, and it must exit promptly
        code = 1
        try:
            os.close(read_end)
            runwire.log({"child": 1.0}, step=0)
            run.log({"child": 2.0}, step=1)
            run.log_params({"child": 1})
            assert runwire.flush(timeout=1) is True
            run.finish(timeout=1)
            runwire.finish()
            os.write(write_end, b"ok")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        for step in range(100, 200):
            run.log({"loss": float(step)}, step=step)
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in runwire calls")
        ready, _, _ = select.select([read_end], [], [], 1)
        message = os.read(read_end, 16) if ready else b""
    finally:
        os.close(read_end)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and message == b"ok"

    for step in range(200, 300):
        run.log({"loss": float(step)}, step=step)
    summary = run.finish()
    assert_delivered(summary)
    assert {step for _, name, step, _ in sink.unique_points()} == set(range(300))
    assert {name for _, name, *_ in sink.points()} == {"loss"}
    assert {record["pid"] for _, record in sink.snapshot()} == {os.getpid()}
    assert sink.bodies("params") == []
    assert len(sink.bodies("run_end")) == 1


def test_params_beyond_the_gateway_limits_are_cut_or_dropped_not_lost_with_the_rest(gateway, sink, spool_dir):
    run = start(gateway.address, spool_dir)
    run.log_params({"lr": 0.1, "notes": "x" * 10_000, "k" * 300: 1})
    run.finish(timeout=10)
    params = {}
    for body in sink.bodies("params"):
        params.update(body["params"])
    assert params["lr"] == "0.1"
    assert params["notes"] == "x" * 8192
    assert "k" * 300 not in params


def test_next_drain_wait_is_the_time_to_fill_an_envelope_within_bounds():
    from runwire.exporter import next_drain_wait

    assert next_drain_wait(0, 0.5, 8192, 0.5) == 0.5                         # nothing logged
    assert next_drain_wait(10, 0.5, 8192, 0.5) == 0.5                        # quiet: the interval
    assert next_drain_wait(125_000, 0.5, 8192, 0.5) == pytest.approx(8192 * 0.5 / 125_000)
    assert next_drain_wait(10_000_000, 0.5, 8192, 0.5) == 0.02               # floor: no busy loop


def test_unauthenticated_stops_retrying_says_so_once_and_keeps_everything(sink, spool_dir, caplog):
    caplog.set_level(logging.WARNING, logger="runwire")
    gw = start_gateway(sink, tokens={PROJECT: "the-right-token"})
    try:
        run = start(gw.address, spool_dir, token="a-wrong-token", flush_interval_s=0.05)
        for step in range(100):
            run.log({"loss": float(step)}, step=step)
        deadline = time.monotonic() + 20
        while not any("refused" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # time for retries, were there any
        began = time.monotonic()
        summary = run.finish(timeout=20)
        assert time.monotonic() - began < 5  # no waiting out the timeout: it cannot clear
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1
        assert "UNAUTHENTICATED" in refusals[0] and "RUNWIRE_TOKEN" in refusals[0] and "runwire sync" in refusals[0]
        assert "a-wrong-token" not in caplog.text
        assert summary["runwire.reconnects"] == 0 and summary["runwire.acked"] == 0
        assert pending_envelopes(spool_dir) == summary["runwire.unacked"] >= 3  # start, metrics, end
        assert sink.point_count() == 0
        (report,) = sync(spool_dir, gateway=gw.address, token="the-right-token", timeout_s=10)
        assert report.left == 0 and report.delivered == 100 and report.lost == 0
        assert len(sink.unique_points()) == 100
    finally:
        gw.stop(grace=0.5)
