"""The ingest path as operators meet it (real Kafka broker, real ClickHouse server): an unreachable
broker, records that bypass the gateway, partitions that appear after a worker joined, direct
mode's settings and observers, and how ClickHouse errors are classified."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import clickhouse_connect
import grpc
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewPartitions

from runwire import wire
from runwire.ingest import codec
from runwire.ingest.gateway import GatewayConfig, create_gateway
from runwire.ingest.worker import IngestConfig, create_worker
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import METRICS, PUBLISH_METHOD
from runwire.run import Run
from runwire.storage.client import connect
from runwire.storage.schema import migrate

pytestmark = [pytest.mark.infra, pytest.mark.timeout(240)]


def metric_envelope(seq: int = 1, project: str = "ops", run_id: str = "run-1", steps=(0,)) -> pb.Envelope:
    env = pb.Envelope(seq=seq, identity=pb.Identity(project=project, run_id=run_id, rank=0, world_size=1,
                                                     host="h", pid=1, stream_id="s-1"))
    env.metrics.CopyFrom(wire.metric_batch(["loss"], [0] * len(steps), list(steps),
                                           [1_700_000_000_000_000_000 + s for s in steps], [0.5] * len(steps)))
    return env


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def stored_points(client, run_id: str) -> int:
    return int(client.query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String}",
                            parameters={"r": run_id}).result_rows[0][0])


# -- an unreachable broker ---------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_broker_is_reported_and_emitters_refused_until_it_is_up(tmp_path):
    from runwire.deploy.local.kafka import KafkaServer

    kafka_port = free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "runwire.deploy.cli", "gateway", "--kafka-bootstrap", bootstrap, "--listen", "127.0.0.1:0"],
        env=dict(os.environ, RUNWIRE_TOPIC_PREFIX=f"u{uuid.uuid4().hex[:8]}."),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(gateway.stdout.readline, "")), daemon=True)
    reader.start()
    broker = None
    try:
        # Within seconds: the gateway serves, and says which broker it cannot reach.
        assert wait_until(lambda: any("listening on" in line for line in lines), 30), lines
        assert wait_until(lambda: any(f"cannot reach Kafka at {bootstrap}" in line for line in lines), 15), lines
        address = next(line for line in lines if "listening on" in line).split("listening on ")[1].split()[0]
        with grpc.insecure_channel(address) as channel:
            publish = channel.unary_unary(PUBLISH_METHOD)
            with pytest.raises(grpc.RpcError) as refused:
                publish(metric_envelope().SerializeToString(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert bootstrap in refused.value.details()
            # No flood of kafka-python reconnect lines while it waits.
            time.sleep(5)
            assert len(lines) <= 6, lines

            broker = KafkaServer(data_dir=tmp_path / "kafka", port=kafka_port).start()

            def accepted() -> bool:
                try:
                    ack = pb.Ack.FromString(publish(metric_envelope(seq=2).SerializeToString(), timeout=10))
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False
                return ack.code == "OK"

            assert wait_until(accepted, 60, interval=0.5), lines
        assert any(f"Kafka at {bootstrap} is reachable now" in line for line in lines), lines
    finally:
        gateway.terminate()
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        if broker is not None:
            broker.close()


# -- records that bypass the gateway ---------------------------------------------------------


@pytest.fixture
def ingest(caplog, kafka_bootstrap, clickhouse_url):
    """A worker on unique topics, group and database; yields (config, worker, ClickHouse client)."""
    caplog.set_level("INFO", logger="kafka.coordinator")
    suffix = uuid.uuid4().hex[:8]
    config = IngestConfig.from_settings(kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                                        clickhouse_database=f"ops_{suffix}", topic_prefix=f"o{suffix}.",
                                        topic_partitions=1, group_id=f"ops-{suffix}", batch_interval_s=0.1)
    worker = create_worker(config)
    thread = threading.Thread(target=worker.run, name="test-ingest", daemon=True)
    thread.start()
    client = connect(clickhouse_url, config.clickhouse_database)
    try:
        yield config, worker, client
    finally:
        worker.stop()
        thread.join(60)
        client.command(f"DROP DATABASE IF EXISTS {config.clickhouse_database}")
        client.close()


def dead_letters(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, group_id=None)
    try:
        out = []
        deadline = time.monotonic() + 60
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(message for batch in consumer.poll(timeout_ms=500).values() for message in batch)
        return out
    finally:
        consumer.close()


def test_records_that_bypass_the_gateway_are_validated_again(ingest, kafka_bootstrap):
    config, worker, client = ingest
    topic = f"{config.topic_prefix}{METRICS}"
    now = time.time_ns()
    good = codec.encode_envelope(metric_envelope(run_id="good"), now)[2]
    # What a producer that skips the gateway can write: the codec encodes it, the gateway would refuse it.
    no_project = codec.encode(METRICS, codec.to_record(metric_envelope(project="", run_id="no-project"), now))
    bad_name = metric_envelope(run_id="bad-name")
    bad_name.metrics.names[0] = "loss\n"
    bad_name = codec.encode(METRICS, codec.to_record(bad_name, now))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for value in (no_project, None, bad_name, good):
        producer.send(topic, key=b"ops/x", value=value).get(30)
    producer.close()

    assert wait_until(lambda: stored_points(client, "good") == 1, 60)
    letters = dead_letters(kafka_bootstrap, f"{config.topic_prefix}deadletter", 3)
    reasons = [dict(letter.headers)["runwire.reason"].decode() for letter in letters]
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("invalid record: identity.project: length 0"), reasons
    assert "tombstone" in reasons[1] and letters[1].value is None, reasons
    assert reasons[2].startswith("invalid record: metrics.names[0]: contains a non-printable"), reasons
    assert letters[0].value == no_project
    assert client.query("SELECT count() FROM metrics WHERE project = '' OR run_id IN ('no-project', 'bad-name')"
                        ).result_rows[0][0] == 0
    assert worker.counters["dead_letters"] == 3


# -- partitions a worker learns about after it joined -----------------------------------------


def test_a_worker_picks_up_partitions_that_appear_after_it_joined(caplog, ingest, kafka_bootstrap):
    """A member that joined before a topic's partitions were visible to it was assigned nothing
    for them until its next metadata refresh (kafka-python's default: 5 minutes)."""
    config, worker, client = ingest
    topic = f"{config.topic_prefix}{METRICS}"
    now = time.time_ns()

    def produce(run_id: str, partition: int) -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        try:
            producer.send(topic, value=codec.encode_envelope(metric_envelope(run_id=run_id), now)[2],
                          partition=partition).get(30)
        finally:
            producer.close()

    produce("first", 0)
    assert wait_until(lambda: stored_points(client, "first") == 1, 60)  # the worker has joined
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_partitions({topic: NewPartitions(total_count=2)})
        admin.wait_for_topics([topic])
    finally:
        admin.close()
    produce("later", 1)
    # Within two minutes on a very busy machine (seconds on a quiet one); kafka-python's default
    # metadata age alone took 5 minutes.
    assert wait_until(lambda: stored_points(client, "later") == 1, 120), \
        ["partition 1 was never assigned"] + [r.getMessage() for r in caplog.records if r.name.startswith("kafka.co")]
    # ... and at start-up the worker had every partition's metadata before it joined.
    unassigned = [r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase)
                  if "No partition metadata" in r.getMessage()]
    assert unassigned == []


# -- direct mode -------------------------------------------------------------------------------


def test_direct_mode_applies_ttl_days_and_feeds_observers_given_at_construction(clickhouse_url, tmp_path):
    database = f"direct_{uuid.uuid4().hex[:8]}"
    seen = []
    config = GatewayConfig.from_settings(listen="127.0.0.1:0", mode="direct", clickhouse_url=clickhouse_url,
                                         clickhouse_database=database, ttl_days=9)
    gateway = create_gateway(config, observers=[lambda kind, record: seen.append((kind, record["run_id"]))]).start()
    client = connect(clickhouse_url, database)
    try:
        ddl = client.query("SHOW CREATE TABLE metrics").result_rows[0][0]
        assert "toIntervalDay(9)" in ddl, ddl
        run = Run(project="ops", gateway=gateway.address, gpu=False, flush_interval_s=0.05,
                  spool_dir=str(tmp_path / "spool"), run_id="direct-run")
        for step in range(100):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        summary = run.finish(timeout=60)
        assert summary["runwire.unacked"] == 0, summary
        assert stored_points(client, "direct-run") == 100
        assert (METRICS, "direct-run") in seen
    finally:
        gateway.stop()
        client.command(f"DROP DATABASE IF EXISTS {database}")
        client.close()


# -- how ClickHouse errors are classified ------------------------------------------------------


def test_clickhouse_errors_are_classified_by_their_server_code_not_their_text(clickhouse_url, fresh_database):
    """Bad data is permanent even when the message carries no 'Code: N.' (show_clickhouse_errors
    off), and an unreachable server is not, whatever its message says."""
    from runwire.storage.client import is_permanent

    for show in (True, False):
        client = clickhouse_connect.get_client(dsn=clickhouse_url, database=fresh_database,
                                               show_clickhouse_errors=show)
        try:
            client.command("CREATE TABLE IF NOT EXISTS t (x UInt32) ENGINE = Memory")
            with pytest.raises(Exception) as bad:
                client.command("INSERT INTO t SELECT toUInt32('not a number')")
            assert is_permanent(bad.value), (show, bad.value)
            with pytest.raises(Exception) as missing:  # a missing table is not the data's fault
                client.command("INSERT INTO nowhere VALUES (1)")
            assert not is_permanent(missing.value)
        finally:
            client.close()
    with pytest.raises(Exception) as down:
        clickhouse_connect.get_client(host="127.0.0.1", port=free_port(), connect_timeout=2)
    assert not is_permanent(down.value)


# -- bad data: the shared write path isolates it, in both shells --------------------------------


def poison(client) -> None:
    """A CHECK constraint makes ClickHouse reject one run's rows as bad data (VIOLATED_CONSTRAINT)."""
    client.command("ALTER TABLE metrics ADD CONSTRAINT no_poison CHECK run_id != 'poisoned'")


def test_direct_mode_rejects_only_the_envelopes_clickhouse_refuses(clickhouse_url):
    database = f"direct_{uuid.uuid4().hex[:8]}"
    config = GatewayConfig.from_settings(listen="127.0.0.1:0", mode="direct", clickhouse_url=clickhouse_url,
                                         clickhouse_database=database)
    gateway = create_gateway(config).start()
    client = connect(clickhouse_url, database)
    try:
        poison(client)
        with grpc.insecure_channel(gateway.address) as channel:
            publish = channel.unary_unary(PUBLISH_METHOD)
            # Sent at once, so they share inserts: a bad envelope must not take the others down.
            runs = ["good-1", "poisoned", "good-2", "poisoned", "good-3"]
            calls = [publish.future(metric_envelope(seq=i + 1, run_id=run_id, steps=range(10)).SerializeToString(),
                                    timeout=60) for i, run_id in enumerate(runs)]
            outcomes = []
            for call in calls:
                try:
                    outcomes.append(pb.Ack.FromString(call.result()).code)
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
                    assert "ClickHouse" in exc.details() or "VIOLATED_CONSTRAINT" in exc.details(), exc.details()
        assert outcomes == ["OK", "INVALID_ARGUMENT", "OK", "INVALID_ARGUMENT", "OK"]
        for run_id in ("good-1", "good-2", "good-3"):
            assert stored_points(client, run_id) == 10
        assert stored_points(client, "poisoned") == 0
    finally:
        gateway.stop()
        client.command(f"DROP DATABASE IF EXISTS {database}")
        client.close()


def test_the_worker_dead_letters_only_the_records_clickhouse_refuses(ingest, kafka_bootstrap):
    config, worker, client = ingest
    poison(client)
    topic = f"{config.topic_prefix}{METRICS}"
    now = time.time_ns()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i, run_id in enumerate(["good-1", "poisoned", "good-2"]):
        producer.send(topic, value=codec.encode_envelope(metric_envelope(seq=i + 1, run_id=run_id, steps=range(10)),
                                                         now)[2])
    producer.flush(30)
    producer.close()
    assert wait_until(lambda: stored_points(client, "good-2") == 10, 60)
    assert stored_points(client, "good-1") == 10 and stored_points(client, "poisoned") == 0
    (letter,) = dead_letters(kafka_bootstrap, f"{config.topic_prefix}deadletter", 1)
    reason = dict(letter.headers)["runwire.reason"].decode()
    assert reason.startswith("ClickHouse rejected the record") and "VIOLATED_CONSTRAINT" in reason, reason
    kind, record = codec.decode(letter.value)  # the record itself, re-encoded, for a replay after the fix
    assert (kind, record["run_id"], len(record["values"])) == (METRICS, "poisoned", 10)
