"""Faults on the Kafka path (real broker, real ClickHouse engine): in every case, every point the
gateway acknowledged is stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from runwire.ingest.gateway import GatewayConfig, create_gateway
from runwire.ingest.worker import IngestConfig, create_worker
from runwire.run import Run
from runwire.storage.client import connect
from runwire.storage.schema import migrate

pytestmark = [pytest.mark.infra, pytest.mark.timeout(240)]


class Pipeline:
    """A gateway (Kafka mode) plus ingest workers on unique topics, group and database."""

    def __init__(self, kafka_bootstrap: str, clickhouse_url: str, tmp_path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.tmp_path = tmp_path
        self.settings = dict(kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                             clickhouse_database=f"faults_{suffix}", topic_prefix=f"f{suffix}.",
                             topic_partitions=4)
        self.group_id = f"faults-{suffix}"
        migrate(self.client())
        self.gateway = create_gateway(GatewayConfig.from_settings(listen="127.0.0.1:0", mode="kafka", **self.settings)).start()
        self.workers: list = []
        self.processes: list[subprocess.Popen] = []

    def start_worker(self, batch_rows: int = 20_000, wrap_writer=None):
        worker = create_worker(IngestConfig.from_settings(group_id=self.group_id, batch_rows=batch_rows,
                                                          batch_interval_s=0.2, **self.settings))
        if wrap_writer:
            worker.writer = wrap_writer(worker.writer)
        thread = threading.Thread(target=worker.run, name="test-ingest", daemon=True)
        thread.start()
        self.workers.append((worker, thread))
        return worker

    def stop_worker(self, worker) -> None:
        for w, thread in self.workers:
            if w is worker:
                w.stop()
                thread.join(60)
        self.workers = [(w, t) for w, t in self.workers if w is not worker]

    def start_worker_process(self, batch_rows: int = 5_000) -> subprocess.Popen:
        env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=self.settings["kafka_bootstrap"],
                   RUNWIRE_CLICKHOUSE_URL=self.settings["clickhouse_url"],
                   RUNWIRE_CLICKHOUSE_DATABASE=self.settings["clickhouse_database"],
                   RUNWIRE_TOPIC_PREFIX=self.settings["topic_prefix"], RUNWIRE_TOPIC_PARTITIONS="4",
                   RUNWIRE_GROUP_ID=self.group_id, RUNWIRE_BATCH_ROWS=str(batch_rows), RUNWIRE_BATCH_INTERVAL_S="0.2")
        proc = subprocess.Popen([sys.executable, "-m", "runwire.deploy.cli", "ingest"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(proc)
        return proc

    def run(self, **settings) -> Run:
        return Run(project="faults", gateway=self.gateway.address, gpu=False, flush_interval_s=0.05,
                   spool_dir=str(self.tmp_path / "spool"), run_id=f"r-{uuid.uuid4().hex[:8]}", **settings)

    def client(self):
        return connect(self.settings["clickhouse_url"], self.settings["clickhouse_database"])

    def stored(self, run_id: str) -> tuple[int, int]:
        """(rows as stored, distinct points): equal when nothing was duplicated."""
        row = self.client().query(
            "SELECT count(), uniqExact(name, rank, step, ts) FROM metrics FINAL WHERE run_id = {r:String}",
            parameters={"r": run_id}).result_rows[0]
        return int(row[0]), int(row[1])

    def wait_stored(self, run_id: str, expected: int, timeout: float = 90.0) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.stored(run_id)
            except Exception:  # ClickHouse coming back
                got = (-1, -1)
            if got[0] >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def close(self) -> None:
        self.gateway.stop()
        for worker, _ in list(self.workers):
            self.stop_worker(worker)
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        try:
            self.client().command(f"DROP DATABASE IF EXISTS {self.settings['clickhouse_database']}")
        except Exception:
            pass


@pytest.fixture
def pipeline(kafka_bootstrap, clickhouse_url, tmp_path):
    p = Pipeline(kafka_bootstrap, clickhouse_url, tmp_path)
    yield p
    p.close()


def log_points(run: Run, steps: int, metrics: int = 10, pause_every: int = 0, pause_s: float = 0.0) -> int:
    for step in range(steps):
        run.log({f"m{j}": step * 0.5 + j for j in range(metrics)}, step=step)
        if pause_every and step % pause_every == pause_every - 1:
            time.sleep(pause_s)
    return steps * metrics


def finish_delivered(run: Run, timeout: float = 90.0) -> None:
    summary = run.finish(timeout=timeout)
    assert summary["runwire.unacked"] == 0, summary
    assert summary["runwire.dropped"] == 0, summary


def test_ingest_worker_sigkilled_mid_batch_and_restarted(pipeline):
    run = pipeline.run(max_queue=200_000)  # a burst this size would otherwise drop its oldest points
    expected = log_points(run, 100_000)  # 1M points, all in Kafka before the worker starts
    finish_delivered(run)
    worker = pipeline.start_worker_process(batch_rows=5_000)
    # Kill it while it is still inserting: some rows in, not all.
    deadline = time.monotonic() + 60
    while pipeline.stored(run.id)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert 0 < pipeline.stored(run.id)[0] < expected, "the worker was not killed mid-stream"
    pipeline.start_worker_process(batch_rows=5_000)
    assert pipeline.wait_stored(run.id, expected) == (expected, expected)


def test_clickhouse_down_for_20s_loses_nothing(pipeline, restartable_clickhouse):
    pipeline.start_worker()
    run = pipeline.run()
    first = log_points(run, 2_000)
    assert run.flush(60)
    assert pipeline.wait_stored(run.id, first) == (first, first)

    restartable_clickhouse.stop()
    down_since = time.monotonic()
    second = log_points(run, 3_000)  # acknowledged by the gateway once Kafka has it
    assert run.flush(60)
    time.sleep(max(0.0, 20 - (time.monotonic() - down_since)))
    restartable_clickhouse.start()
    finish_delivered(run)
    assert pipeline.wait_stored(run.id, first + second) == (first + second, first + second)


def test_kafka_broker_restarted_while_logging(pipeline, restartable_kafka):
    pipeline.start_worker()
    run = pipeline.run()
    done = threading.Event()
    counted = []

    def keep_logging():
        counted.append(log_points(run, 6_000, pause_every=200, pause_s=0.05))
        done.set()

    logger = threading.Thread(target=keep_logging)
    logger.start()
    time.sleep(1.0)
    restartable_kafka.restart()
    logger.join(120)
    assert done.is_set()
    finish_delivered(run, timeout=120)
    expected = counted[0]
    assert pipeline.wait_stored(run.id, expected, timeout=120) == (expected, expected)


def test_poison_record_goes_to_dead_letter_and_the_rest_flows(pipeline, kafka_bootstrap):
    prefix = pipeline.settings["topic_prefix"]
    pipeline.start_worker()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(f"{prefix}metrics", key=b"faults/poison", value=b"\x00not avro at all").get(30)
    producer.close()
    run = pipeline.run()
    expected = log_points(run, 1_000)
    finish_delivered(run)
    assert pipeline.wait_stored(run.id, expected) == (expected, expected)

    consumer = KafkaConsumer(f"{prefix}deadletter", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, group_id=None)
    letters = [m for m in consumer]
    consumer.close()
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert letters[0].value == b"\x00not avro at all"
    assert b"Avro single-object" in headers["runwire.reason"]
    assert headers["runwire.topic"] == f"{prefix}metrics".encode()


def test_two_workers_and_a_rebalance_in_the_middle(pipeline):
    first_worker = pipeline.start_worker(batch_rows=2_000)
    runs = [pipeline.run() for _ in range(3)]  # several runs spread over the partitions
    expected = {run.id: 0 for run in runs}

    def log_all(steps):
        for run in runs:
            expected[run.id] += log_points(run, steps)
            assert run.flush(60)

    log_all(1_000)
    pipeline.start_worker(batch_rows=2_000)   # rebalance: partitions split between two workers
    log_all(1_000)
    pipeline.stop_worker(first_worker)        # rebalance: the second worker takes everything
    log_all(1_000)
    for run in runs:
        finish_delivered(run)
    for run_id, count in expected.items():
        assert pipeline.wait_stored(run_id, count) == (count, count)


class GatedWriter:
    """Holds every insert until the gate opens; remembers the first insert's size."""

    def __init__(self, inner) -> None:
        self.inner, self.gate, self.first_records = inner, threading.Event(), None

    def write(self, records):
        if self.first_records is None:
            self.first_records = len(records)
        self.gate.wait(120)
        return self.inner.write(records)


def test_polling_goes_on_during_an_insert_and_offsets_wait_for_it(pipeline, kafka_bootstrap):
    writer = None

    def gated(inner):
        nonlocal writer
        writer = GatedWriter(inner)
        return writer

    worker = pipeline.start_worker(batch_rows=2_000, wrap_writer=gated)
    run = pipeline.run()
    expected = log_points(run, 2_000, pause_every=100, pause_s=0.01)  # many small envelopes
    finish_delivered(run)

    # The first insert is held; the worker polls on and fills the next batch meanwhile.
    deadline = time.monotonic() + 60
    while (writer.first_records is None or worker.counters["records"] <= writer.first_records) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.counters["records"] > writer.first_records
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        # ... but commits nothing while no insert has finished.
        assert admin.list_group_offsets(pipeline.group_id)[pipeline.group_id] == {}
        assert pipeline.stored(run.id) == (0, 0)

        writer.gate.set()
        assert pipeline.wait_stored(run.id, expected) == (expected, expected)
        # Once everything is stored, the committed offsets reach the end of every partition.
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        try:
            deadline = time.monotonic() + 30
            while True:
                committed = admin.list_group_offsets(pipeline.group_id)[pipeline.group_id]
                ends = consumer.end_offsets(list(committed))
                if committed and all(committed[tp].offset == ends[tp] for tp in committed) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            consumer.close()
        assert sum(m.offset for m in committed.values()) == sum(ends.values()) > 0
    finally:
        admin.close()
