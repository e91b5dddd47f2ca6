"""Garbage in every runwire Kafka topic (real broker, real ClickHouse, a real gateway and emitter):
random bytes, records with a valid header but an unknown schema fingerprint, truncated records,
and schema-valid Avro records with absurd values (out-of-range ids, 10 KB and empty names,
columns that disagree, indexes past their dictionaries, the wrong kind for the topic), produced
between the good traffic of a real training run. Afterwards the ingest worker is alive, every
good point is stored exactly once, the absurd-but-legal records (NaN and infinities, extreme
steps and timestamps, a run nobody started, a large batch) are stored exactly as sent, and every
bad record is in the dead-letter topic with its reason. ``make fuzz`` throws many more.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from runwire import wire
from runwire.ingest import codec
from runwire.ingest.gateway import GatewayConfig, create_gateway
from runwire.ingest.kafka_io import topic_names
from runwire.ingest.worker import IngestConfig, create_worker
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import GPU, KINDS, METRICS, RUNS
from runwire.run import Run
from runwire.storage.client import connect
from runwire.testing.records import gpu_sample
from runwire.gpu_wire import encode_gpu_batch

from mlflow_helpers import wait_for

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
RANDOM_RECORDS = 3000 if LONG else 24  # per topic
GOOD_STEPS = 20_000 if LONG else 300  # per phase: before, during, after
NOW = 1_700_000_000_000_000_000


@pytest.fixture
def pipeline(kafka_bootstrap, clickhouse_url):
    """A gateway and an ingest worker on unique topics and database."""
    suffix = uuid.uuid4().hex[:8]
    common = dict(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"fz{suffix}.", topic_partitions=1)
    gateway = create_gateway(GatewayConfig.from_settings(listen="127.0.0.1:0", mode="kafka", **common)).start()
    config = IngestConfig.from_settings(clickhouse_url=clickhouse_url, clickhouse_database=f"fuzz_{suffix}",
                                        group_id=f"fz-{suffix}", batch_interval_s=0.1, **common)
    worker = create_worker(config)
    thread = threading.Thread(target=worker.run, name="test-ingest", daemon=True)
    thread.start()
    client = connect(clickhouse_url, config.clickhouse_database)
    try:
        yield gateway, worker, thread, config, client
    finally:
        worker.stop()
        thread.join(60)
        gateway.stop(grace=1)
        client.command(f"DROP DATABASE IF EXISTS {config.clickhouse_database}")
        client.close()


# -- what is produced -------------------------------------------------------------------------


def ident(run_id: str, **fields) -> pb.Identity:
    base = dict(project="fuzz", run_id=run_id, rank=0, world_size=1, host="h", pid=1, stream_id=f"s-{run_id}")
    base.update(fields)
    return pb.Identity(**base)


def metrics_envelope(run_id: str, names, steps, times, values, index=None, **fields) -> pb.Envelope:
    env = pb.Envelope(seq=1, identity=ident(run_id, **fields))
    env.metrics.CopyFrom(wire.metric_batch(list(names), list(index if index is not None else [0] * len(steps)),
                                           list(steps), list(times), list(values)))
    return env


def record(envelope: pb.Envelope, **overrides) -> bytes:
    """The Avro record of an envelope, with fields overridden as only a rogue producer could."""
    kind = codec.kind_of(envelope)
    fields = codec.to_record(envelope, NOW)
    fields.update(overrides)
    return codec.encode(kind, fields)


def point(run_id: str, **fields) -> pb.Envelope:
    return metrics_envelope(run_id, ["loss"], [1], [NOW], [0.5], **fields)


def run_start(run_id: str, **body) -> pb.Envelope:
    return pb.Envelope(seq=1, identity=ident(run_id), run_start=pb.RunStart(name="r", start_time_ns=NOW, **body))


def gpu_batch(run_id: str, **sample) -> pb.Envelope:
    return pb.Envelope(seq=1, identity=ident(run_id), gpu=encode_gpu_batch([gpu_sample(NOW, **sample)]))


def bad_records() -> list[tuple[str, bytes | None, str]]:
    """(kind of the topic, value, the start of the dead-letter reason) of schema-valid or
    header-valid records that must never be stored."""
    header = {kind: codec.encode(kind, codec.to_record(env, NOW))[:10]
              for kind, env in ((METRICS, point("x")), (GPU, gpu_batch("x")), (RUNS, run_start("x")))}
    fine_metrics = record(point("x"))
    return [
        (METRICS, None, "null value (a tombstone)"),
        (METRICS, b"", "record shorter than the Avro single-object header"),
        (GPU, b"\xc3\x01" + bytes(range(8)) + fine_metrics[10:], "unknown writer schema fingerprint 0706050403020100"),
        (RUNS, b"\xc3\x01\xff\xff\xff\xff\xff\xff\xff\xff", "unknown writer schema fingerprint ffffffffffffffff"),
        (METRICS, fine_metrics[:-3], "Avro body does not decode as metrics"),
        (RUNS, header[RUNS] + b"\x00" * 4, "Avro body does not decode as runs"),
        (METRICS, record(point("x"), project=""), "invalid record: identity.project: length 0"),
        (METRICS, record(point("x"), run_id="r" * 10_000), "invalid record: identity.run_id: length 10000"),
        (METRICS, record(point("x"), rank=-1), "rank -1 is outside the uint32 range"),
        (METRICS, record(point("x"), world_size=2**40), "world_size 1099511627776 is outside the uint32 range"),
        (METRICS, record(point("x"), rank=3, world_size=2), "invalid record: identity.rank: 3 is not below"),
        (METRICS, record(point("x"), seq=0), "invalid record: seq: must be >= 1"),
        (METRICS, record(point("x"), seq=-5), "invalid record: seq: must be >= 1"),
        (METRICS, record(metrics_envelope("x", ["n" * 10_000], [1], [NOW], [1.0])),
         "invalid record: metrics.names[0]: length 10000"),
        (METRICS, record(metrics_envelope("x", [""], [1], [NOW], [1.0])), "invalid record: metrics.names[0]: length 0"),
        (METRICS, record(metrics_envelope("x", ["a"], [1], [NOW], [1.0], index=[7])),
         "metric batch name_index points past names"),
        (METRICS, record(metrics_envelope("x", [], [1], [NOW], [1.0])), "metric batch has points but no names"),
        (METRICS, record(point("x"), values=b"\x00" * 7), "column values has 7 bytes"),
        (METRICS, record(point("x"), steps=b"\x00" * 16), "columns have different lengths"),
        (GPU, record(gpu_batch("x"), gpu_ref=np.array([5], "<u4").tobytes()), "GPU batch gpu_ref points past gpu_uuids"),
        (GPU, record(gpu_batch("x"), gpu_indexes=[70_000]), "GPU batch gpu_indexes outside 0..65535"),
        (GPU, record(gpu_batch("x"), pci_bus_ids=[]), "GPU batch pci_bus_ids has 0 entries"),
        (RUNS, record(run_start("x", params={"k": "v" * 10_000})), "invalid record: run_start.params['k']: value longer"),
        (RUNS, record(run_start("x", tags={"": "v"})), "invalid record: run_start.tags key ''"),
        # The wrong kind for the topic: a metrics record in the runs and GPU topics, a run event in metrics.
        (RUNS, record(point("wrong-topic")), "a metrics record in the runs topic"),
        (GPU, record(point("wrong-topic")), "a metrics record in the gpu topic"),
        (METRICS, record(run_start("wrong-topic")), "a runs record in the metrics topic"),
    ]


def random_records(rng: random.Random, kind: str, n: int) -> list[tuple[str, bytes, str | None]]:
    """Random bytes, and good records of the topic's kind cut short or with a byte flipped in
    the header (never stored: a cut Avro body never decodes, a flipped header byte is no known
    fingerprint). Reason None: any of the codec's."""
    good = record({METRICS: point("x"), GPU: gpu_batch("x"), RUNS: run_start("x")}[kind])
    out = []
    for i in range(n):
        shape = i % 3
        if shape == 0:
            value = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        elif shape == 1:
            value = good[:rng.randint(0, len(good) - 1)]
        else:
            at = rng.randint(0, 9)
            value = good[:at] + bytes([good[at] ^ (1 + rng.getrandbits(7))]) + good[at + 1:]
        out.append((kind, value, None))
    return out


POISON_REASONS = ("null value", "record shorter than", "not Avro single-object encoding", "unknown writer schema",
                  "Avro body does not decode")

# Absurd but legal: stored exactly as sent (NaN and infinities are metric values; steps and
# timestamps are whatever int64 the run logged, times kept to the millisecond as storage keeps
# them; a run may log before, or without, its start).
EXTREME = [
    ("nan-inf", ["v"], [0, 1, 2], [NOW] * 3, [math.nan, math.inf, -math.inf]),
    ("steps", ["v"], [-(2**63), -1, 2**63 - 1], [NOW] * 3, [1.0, 2.0, 3.0]),
    ("times", ["v"], [0, 1, 2], [0, 1, 2**62], [1.0, 2.0, 3.0]),
]
BIG_BATCH = 100_000


def stored(client, run_id: str) -> int:
    return int(client.query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String}",
                            parameters={"r": run_id}).result_rows[0][0])


def read_dead_letters(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    try:
        out = []
        deadline = time.monotonic() + 120
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for batch in consumer.poll(timeout_ms=500).values() for m in batch)
        # Nothing more than expected arrives.
        out.extend(m for batch in consumer.poll(timeout_ms=2000).values() for m in batch)
        return out
    finally:
        consumer.close()


def test_garbage_in_every_topic_is_dead_lettered_and_good_traffic_is_stored_once(pipeline, kafka_bootstrap,
                                                                                   tmp_path):
    gateway, worker, thread, config, client = pipeline
    topics = topic_names(config.topic_prefix)
    rng = random.Random(int(os.environ.get("RUNWIRE_FUZZ_SEED", "15")))
    bad = bad_records()
    for kind in KINDS:
        bad += random_records(rng, kind, RANDOM_RECORDS)
    rng.shuffle(bad)
    legal = [(f"extreme-{name}", record(metrics_envelope(f"extreme-{name}", names, steps, times, values)))
             for name, names, steps, times, values in EXTREME]
    legal.append(("big-batch", record(metrics_envelope("big-batch", ["b"], range(BIG_BATCH), [NOW] * BIG_BATCH,
                                                       [0.25] * BIG_BATCH))))
    legal.append(("nobody-started-it", record(point("nobody-started-it"))))

    run = Run(project="fuzz", gateway=gateway.address, gpu=False, flush_interval_s=0.05,
              spool_dir=str(tmp_path / "spool"), run_id="good-run")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=8 * 1024 * 1024)
    try:
        step = 0

        def log(n: int) -> None:
            nonlocal step
            for _ in range(n):
                run.log({"loss": 1.0 / (step + 1), "acc": step / 1e6}, step=step)
                step += 1

        log(GOOD_STEPS)  # before
        for i, (kind, value, _) in enumerate(bad):  # during: garbage and good points interleaved
            producer.send(topics[kind], key=b"fuzz/x", value=value)
            if i % 10 == 0:
                log(GOOD_STEPS * 10 // len(bad) + 1)
        for _, value in legal:
            producer.send(topics[METRICS], key=b"fuzz/legal", value=value)
        producer.flush(60)
        while step < 3 * GOOD_STEPS:  # after
            log(1)
        summary = run.finish(timeout=120)
    finally:
        producer.close()
    assert summary["runwire.unacked"] == 0, summary

    wait_for(lambda: stored(client, "good-run") >= 2 * step, 120, what="the good run's points")
    letters = read_dead_letters(kafka_bootstrap, topics["deadletter"], len(bad))
    assert thread.is_alive(), "the ingest worker died"

    # Good traffic: every point exactly once (FINAL and without it: no duplicate rows either).
    rows = client.query("SELECT name, count(), uniqExact(step) FROM metrics WHERE run_id = 'good-run' GROUP BY name "
                        "ORDER BY name").result_rows
    assert rows == [("acc", step, step), ("loss", step, step)], rows
    assert client.query("SELECT count() FROM runs FINAL WHERE run_id = 'good-run'").result_rows[0][0] == 1

    # Absurd but legal: exactly as sent.
    for name, names, steps, times, values in EXTREME:
        got = client.query("SELECT step, toUnixTimestamp64Nano(ts), value FROM metrics FINAL WHERE run_id = {r:String} "
                           "ORDER BY step", parameters={"r": f"extreme-{name}"}).result_rows
        want = sorted(zip(steps, [t // 10**6 * 10**6 for t in times], values))
        assert len(got) == len(want), (name, got)
        for (s, t, v), (ws, wt, wv) in zip(got, want):
            assert (s, t) == (ws, wt) and (v == wv or (math.isnan(v) and math.isnan(wv))), (name, got, want)
    assert stored(client, "big-batch") == BIG_BATCH
    assert stored(client, "nobody-started-it") == 1

    # Every bad record dead-lettered once, with its reason; nothing of them stored.
    assert len(letters) == len(bad), (len(letters), len(bad))
    reasons = {}  # (source topic, value) -> reasons, in the order the topic held them
    for letter in letters:
        headers = dict(letter.headers)
        reasons.setdefault((headers["runwire.topic"].decode(), letter.value), []).append(
            headers["runwire.reason"].decode())
    for kind, value, reason in bad:
        got = reasons[(topics[kind], value)].pop(0)
        if reason is None:
            assert got.startswith(POISON_REASONS), (value, got)
        else:
            assert got.startswith(reason), (value, got, reason)
    assert client.query("SELECT count() FROM metrics WHERE run_id IN ('x', 'wrong-topic') OR project = ''"
                        ).result_rows[0][0] == 0
    assert client.query("SELECT count() FROM runs WHERE run_id IN ('x', 'wrong-topic')").result_rows[0][0] == 0
    assert worker.counters["dead_letters"] == len(bad)
