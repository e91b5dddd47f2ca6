"""Alerting against a real ClickHouse server and a local HTTP receiver: stream rules fire and
resolve through the webhook and the alerts table; a slow receiver never blocks observe(); a
failing one is retried; straggler and heartbeat come from the periodic evaluator's SQL."""

from __future__ import annotations

import argparse
import json
import math
import time

import pytest

from runwire.ingest.alerts import commands
from runwire.ingest.alerts.engine import AlertConfig, build_engine
from runwire.ingest.alerts.receiver import WebhookReceiver
from runwire.testing.records import (
    GIB, gpu_record, gpu_sample, metric_record, run_end_record, run_start_record,
)
from runwire.ingest.alerts.rules import parse_rules
from runwire.ingest.alerts.store import query_alerts
from runwire.storage.client import connect
from runwire.storage.schema import migrate
from runwire.storage.writer import StorageWriter

pytestmark = pytest.mark.timeout(120)

S = 1_000_000_000

# Short durations so the test runs in seconds; the semantics are those of the defaults.
RULES = parse_rules({"rules": {
    "gpu_temperature_critical": {"for_s": 2, "clear_s": 2},
    "gpu_temperature_warning": {"enabled": False},
    "gpu_memory_near_oom": {"for_s": 1, "clear_s": 1},
    "gpu_xid": {"clear_s": 5},
    "loss_nonfinite": {"clear_s": 2},
    "straggler": {"for_s": 10, "clear_s": 0, "window_s": 60},
    "heartbeat": {"threshold": 120},
}})


@pytest.fixture
def db(clickhouse_url, fresh_database):
    client = connect(clickhouse_url, fresh_database)
    migrate(client)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def receiver():
    rx = WebhookReceiver().start()
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture
def engines(clickhouse_url, fresh_database):
    """Factory for started engines with their own ClickHouse client; all stopped after."""
    made = []

    def make(webhook_url: str = "", clock=time.time_ns, **config):
        cfg = AlertConfig.from_settings(webhook_url=webhook_url, log=False, **config)
        engine = build_engine(cfg, lambda: connect(clickhouse_url, fresh_database), rules=RULES, clock=clock)
        made.append(engine)
        return engine.start()

    try:
        yield make
    finally:
        for e in made:
            e.stop(timeout=5)



def statuses(rx, rule):
    return [(p["status"], p["event"]) for p in rx.payloads() if p["alert"]["rule"] == rule]


def final(db, rule):
    return [a for a in query_alerts(db, rule=rule)]


def test_stream_alerts_fire_and_resolve_through_webhook_and_table(db, receiver, engines, clickhouse_url):
    engine = engines(receiver.url, periodic=False)
    t0 = time.time_ns()
    ident = dict(project="llm", run_id="run-a", host="node-1", rank=3)

    # Overheating: pending first (for_s = 2 s of sample time) ...
    engine.observe(*gpu_record([gpu_sample(t0, temperature_c=91.0)], **ident))
    assert engine.flush(10)
    (a,) = final(db, "gpu_temperature_critical")
    assert (a.state, a.project, a.run_id, a.host, a.gpu_uuid, a.rank) == ("pending", "llm", "run-a", "node-1",
                                                                           "GPU-0000", 3)
    # ... firing once it held for 2 s ...
    for i in range(1, 4):
        engine.observe(*gpu_record([gpu_sample(t0 + i * S, temperature_c=91.0)], **ident))
    assert receiver.wait_for(lambda got: any(p["status"] == "firing" for p in got), timeout=10)
    assert engine.flush(10)
    (b,) = final(db, "gpu_temperature_critical")
    assert (b.alert_id, b.state, b.severity) == (a.alert_id, "firing", "critical") and b.value == 91.0
    # ... resolved after 2 s below the clear level.
    for i in range(4, 8):
        engine.observe(*gpu_record([gpu_sample(t0 + i * S, temperature_c=60.0)], **ident))
    assert receiver.wait_for(lambda got: any(p["status"] == "resolved" for p in got), timeout=10)
    assert engine.flush(10)
    (c,) = final(db, "gpu_temperature_critical")
    assert (c.alert_id, c.state) == (a.alert_id, "resolved")
    assert c.started_ns // 1000 == t0 // 1000 and c.resolved_ns // 1000 == (t0 + 6 * S) // 1000
    assert statuses(receiver, "gpu_temperature_critical") == [("firing", "firing"), ("resolved", "resolved")]
    fired = next(p for p in receiver.payloads() if p["status"] == "firing")
    assert fired["alert"]["id"] == a.alert_id and fired["alert"]["observed_at_ns"] == t0 + 2 * S

    # Near-OOM, an uncorrected ECC error, an XID and a NaN loss on other entities.
    samples = [gpu_sample(t0 + i * S, "GPU-1111", 1, memory_used_bytes=79.0 * GIB,
                          ecc_uncorrected=float(i >= 2), xid=79 if i == 2 else 0) for i in range(3)]
    engine.observe(*gpu_record(samples, **ident))
    engine.observe(*metric_record([("loss", 10, t0, 2.0), ("loss", 11, t0 + S, math.nan)], **ident))
    want = {"gpu_memory_near_oom", "gpu_ecc_uncorrected", "gpu_xid", "loss_nonfinite"}
    assert receiver.wait_for(lambda got: want <= {p["alert"]["rule"] for p in got if p["status"] == "firing"}, 10)
    assert engine.flush(10)
    firing = {a.rule: a for a in query_alerts(db, firing_only=True)}
    assert set(firing) == want
    assert firing["gpu_xid"].value == 79 and firing["loss_nonfinite"].rank == 3
    assert "step 11" in firing["loss_nonfinite"].message

    # `runwire alerts ls --firing --json` reads the same table.
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["alerts", "ls", "--firing", "--json", "--clickhouse-url", clickhouse_url,
                              "--database", db.database])
    return_code, out = run_cli(args)
    assert return_code == 0
    assert {json.loads(line)["rule"] for line in out.splitlines()} == want


def run_cli(args):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = args.func(args)
    return rc, buf.getvalue()


def test_slow_receiver_does_not_block_observe(db, engines):
    with WebhookReceiver(delay_s=3.0) as slow:
        engine = engines(slow.url, periodic=False)
        t0 = time.time_ns()
        records = [gpu_record([gpu_sample(t0 + i * S, f"GPU-{g}", g, xid=31 + i)], run_id="run-slow")
                   for i in range(20) for g in range(5)]
        start = time.perf_counter()
        for rec in records:
            engine.observe(*rec)
        assert time.perf_counter() - start < 0.5  # 100 records, 5 alerts to a receiver that takes 3 s each
        # Evaluation and the table do not wait for the receiver either.
        deadline = time.monotonic() + 10
        while len(query_alerts(db, rule="gpu_xid", firing_only=True)) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(query_alerts(db, rule="gpu_xid", firing_only=True)) == 5
        assert slow.wait_for(lambda got: len(got) >= 1, timeout=10)
        engine.stop(timeout=1)  # gives the slow receiver 1 s, then drops (and counts) the rest


def test_failing_receiver_is_retried(db, engines):
    with WebhookReceiver(fail_first=3) as flaky:
        engine = engines(flaky.url, periodic=False)
        engine.observe(*gpu_record([gpu_sample(time.time_ns(), xid=48)], run_id="run-flaky"))
        assert flaky.wait_for(lambda got: len(got) == 1, timeout=30)
        assert flaky.requests == 4
        assert engine.stats()["notifiers"]["webhook"]["retries"] == 3


def _store(db, records):
    StorageWriter(db).write(records)


def test_straggler_and_heartbeat_from_clickhouse(db, receiver, engines):
    now = [time.time_ns()]
    engine = engines(receiver.url, clock=lambda: now[0], interval_s=3600)  # evaluated on demand only
    t = now[0]
    records = []
    # run-s: 4 ranks, rank 2 takes 2x the others' step time over the last minute.
    for rank in range(4):
        records.append(run_start_record(t - 300 * S, project="llm", run_id="run-s", rank=rank, host=f"node-{rank // 2}",
                                        world_size=4))
        step_s = 2.0 if rank == 2 else 1.0
        records.append(metric_record([("step_time_s", s, t - (50 - s) * S, step_s + 0.01 * (s % 3))
                                      for s in range(50)], project="llm", run_id="run-s", rank=rank,
                                     host=f"node-{rank // 2}", world_size=4))
    # run-quiet: RUNNING, nothing for 5 minutes. run-done: silent too, but finished. run-new: just started.
    records.append(run_start_record(t - 600 * S, project="llm", run_id="run-quiet"))
    records.append(metric_record([("loss", 1, t - 300 * S, 1.0)], project="llm", run_id="run-quiet"))
    records.append(run_start_record(t - 600 * S, project="llm", run_id="run-done"))
    records.append(metric_record([("loss", 1, t - 300 * S, 1.0)], project="llm", run_id="run-done"))
    records.append(run_start_record(t - 10 * S, project="llm", run_id="run-new"))
    _store(db, records)
    _store(db, [run_end_record(t - 299 * S, project="llm", run_id="run-done")])

    engine.evaluate_periodic()
    assert engine.flush(20)
    alerts = {(a.rule, a.run_id, a.rank): a for a in query_alerts(db, open_only=True)}
    assert set(alerts) == {("straggler", "run-s", 2), ("heartbeat", "run-quiet", None)}
    assert alerts[("straggler", "run-s", 2)].state == "pending"       # for_s = 10 s of evaluation time
    assert alerts[("straggler", "run-s", 2)].host == "node-1"
    hb = alerts[("heartbeat", "run-quiet", None)]
    assert hb.state == "firing" and hb.value >= 120

    now[0] += 10 * S
    engine.evaluate_periodic()
    assert receiver.wait_for(lambda got: {("straggler", "firing"), ("heartbeat", "firing")}
                             <= {(p["alert"]["rule"], p["status"]) for p in got}, timeout=20)
    assert engine.flush(20)
    (st,) = query_alerts(db, rule="straggler")
    assert st.state == "firing" and st.value == pytest.approx(2.01 / 1.01, rel=0.02)

    # run-quiet speaks again; rank 2 catches up: both resolve on the next evaluation.
    now[0] += 61 * S  # the old step times leave the 60 s window; only the new ones count
    _store(db, [metric_record([("step_time_s", 200 + s, now[0] - (5 - s) * S, 1.0) for s in range(5)],
                              project="llm", run_id="run-s", rank=r) for r in range(4)])
    _store(db, [metric_record([("loss", 3, now[0] - S, 1.0)], project="llm", run_id="run-quiet")])
    engine.evaluate_periodic()
    assert receiver.wait_for(lambda got: {("straggler", "resolved"), ("heartbeat", "resolved")}
                             <= {(p["alert"]["rule"], p["status"]) for p in got}, timeout=20)
    assert engine.flush(20)
    assert query_alerts(db, open_only=True) == []
    assert engine.stats()["periodic"]["errors"] == 0


def test_engine_as_ingest_worker_observer_through_kafka(kafka_bootstrap, clickhouse_url, fresh_database, db,
                                                        receiver, engines):
    """The wiring the ingest path uses: IngestWorker(..., observers=[engine.observe])."""
    import threading
    import uuid

    from kafka import KafkaAdminClient

    from runwire.ingest import codec
    from runwire.ingest.kafka_io import make_producer, topic_names
    from runwire.ingest.worker import IngestConfig, IngestWorker
    from runwire.proto import telemetry_pb2 as pb
    from runwire.gpu_wire import encode_gpu_batch
    from runwire.testing.records import identity

    engine = engines(receiver.url, periodic=False)
    prefix = f"alerts-{uuid.uuid4().hex[:8]}."
    config = IngestConfig.from_settings(kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                                        clickhouse_database=fresh_database, topic_prefix=prefix,
                                        topic_partitions=1, group_id=f"g-{prefix}", batch_interval_s=0.2)
    # The worker inserts from its own thread: its own client, as create_worker() gives it
    # (a clickhouse-connect client is one session, and sessions take one query at a time).
    worker_client = connect(clickhouse_url, fresh_database)
    worker = IngestWorker(config, StorageWriter(worker_client), observers=[engine.observe])
    thread = threading.Thread(target=worker.run, name="test-ingest-worker", daemon=True)
    thread.start()
    producer = make_producer(kafka_bootstrap)
    try:
        t0 = time.time_ns()
        topic = topic_names(prefix)["gpu"]
        for i in range(4):
            env = pb.Envelope(seq=i + 1, identity=identity(project="llm", run_id="run-k", host="node-9"),
                              gpu=encode_gpu_batch([gpu_sample(t0 + i * S, temperature_c=96.0)]))
            kind, key, value = codec.encode_envelope(env, time.time_ns())
            producer.send(topic, key=key, value=value).get(timeout=30)
        assert receiver.wait_for(lambda got: any(p["alert"]["rule"] == "gpu_temperature_critical"
                                                 and p["status"] == "firing" for p in got), timeout=60)
        assert engine.flush(10)
        (a,) = query_alerts(db, rule="gpu_temperature_critical")
        assert (a.state, a.run_id, a.host) == ("firing", "run-k", "node-9")
        # The worker stores the samples as well (the alert came first: observers see records
        # as they arrive, before the batched insert).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stored = db.query("SELECT count() FROM gpu_samples WHERE run_id = 'run-k'").result_rows[0][0]
            if stored == 4:
                break
            time.sleep(0.2)
        assert stored == 4
    finally:
        producer.close(timeout=10)
        worker.stop()
        thread.join(30)
        worker_client.close()
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="runwire-tests")
        try:
            admin.delete_topics(list(topic_names(prefix).values()), timeout_ms=30_000)
        except Exception:  # noqa: BLE001 - best effort
            pass
        finally:
            admin.close()
