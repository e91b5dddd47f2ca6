"""The test infrastructure itself: a real Kafka broker and a real ClickHouse server.

These run against whatever tests/conftest.py provides (local processes by default, external
servers or containers when configured) and check the properties the pipeline relies on:
keyed ordering, exact delivery, committed consumer offsets, data surviving a broker restart,
columnar inserts, and ClickHouse data surviving a server restart behind an unchanged URL.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.timeout(180)]


# ------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------


def _producer(bootstrap):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                         enable_idempotence=True, retries=10, request_timeout_ms=10_000)


def _read_all(bootstrap, topic, expected, partitions, timeout=30.0):
    """Read ``topic`` from the beginning with a group-less consumer until ``expected`` records."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200, max_records=2000).values():
                records.extend(batch)
        # One more short poll: nothing beyond what was produced may show up.
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def test_kafka_1000_keyed_records_round_trip_exactly(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=3, prefix="roundtrip")
    sent = [(f"run-{i % 17}".encode(), f"{i}:{uuid.uuid4().hex}".encode()) for i in range(1000)]
    producer = _producer(kafka_bootstrap)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in sent]
        producer.flush(timeout=30)
        metas = [f.get(timeout=10) for f in futures]
    finally:
        producer.close(timeout=5)

    assert {m.partition for m in metas} == {0, 1, 2}, "17 keys should spread over all 3 partitions"
    records = _read_all(kafka_bootstrap, topic, expected=1000, partitions=3)

    assert len(records) == 1000
    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    # One key -> one partition, and each key's records in the order they were sent.
    partitions_of_key = defaultdict(set)
    for r in records:
        partitions_of_key[r.key].add(r.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    by_key_received = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key_received[r.key].append(r.value)
    by_key_sent = defaultdict(list)
    for k, v in sent:
        by_key_sent[k].append(v)
    assert by_key_received == by_key_sent


def test_kafka_committed_group_offset_is_used_by_a_new_consumer(kafka_bootstrap, new_topic):
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = new_topic(partitions=1, prefix="offsets")
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = _producer(kafka_bootstrap)
    try:
        for i in range(10):
            producer.send(topic, key=b"k", value=str(i).encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    tp = TopicPartition(topic, 0)

    def consumer():
        return KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             fetch_max_wait_ms=100, session_timeout_ms=10_000,
                             heartbeat_interval_ms=1_000)

    def poll_until(c, n, timeout=30.0):
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=200).values():
                got.extend(batch)
        return got

    first = consumer()
    try:
        got = poll_until(first, 10)
        assert [r.value for r in got] == [str(i).encode() for i in range(10)]
        # "Processed" the first 6 only: commit the offset of the next record to read.
        first.commit({tp: OffsetAndMetadata(6, "", -1)})
        assert first.committed(tp) == 6
    finally:
        first.close()

    second = consumer()
    try:
        got = poll_until(second, 4)
        assert [r.value for r in got] == [b"6", b"7", b"8", b"9"]
        assert got[0].offset == 6
    finally:
        second.close()


def test_kafka_broker_restart_keeps_data_and_address(restartable_kafka, kafka_bootstrap, new_topic):
    topic = new_topic(partitions=2, prefix="restart")
    before = [(f"k{i % 5}".encode(), f"before-{i}".encode()) for i in range(200)]
    producer = _producer(kafka_bootstrap)
    try:
        for k, v in before:
            producer.send(topic, key=k, value=v)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)

    address = restartable_kafka.bootstrap
    restartable_kafka.restart()
    assert restartable_kafka.bootstrap == address == kafka_bootstrap

    after = [(b"k0", f"after-{i}".encode()) for i in range(10)]
    producer = _producer(kafka_bootstrap)
    try:
        for k, v in after:
            producer.send(topic, key=k, value=v)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)

    records = _read_all(kafka_bootstrap, topic, expected=210, partitions=2)
    assert sorted((r.key, r.value) for r in records) == sorted(before + after)


def test_kafka_cluster_refuses_a_port_in_use(tmp_path):
    import socket

    from runwire.deploy.local.kafka import KafkaCluster

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = KafkaCluster(3, tmp_path / "cluster", ports=[port] + KafkaCluster._free_ports(2, {port}))
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                cluster.start(timeout=120)
            assert not any(node.running for node in cluster.nodes)  # nothing left behind
        finally:
            cluster.close()


# ------------------------------------------------------------------------------------------
# ClickHouse
# ------------------------------------------------------------------------------------------


def _create_table(client, db):
    client.command(
        f"CREATE TABLE {db}.samples (run_id LowCardinality(String), step UInt64, value Float64) "
        "ENGINE = MergeTree ORDER BY (run_id, step)"
    )


def test_clickhouse_columnar_insert_100k_rows(clickhouse_client, fresh_database):
    db = fresh_database
    _create_table(clickhouse_client, db)
    n = 100_000
    run_ids = [f"run-{i % 8}" for i in range(n)]
    steps = list(range(n))
    values = [i * 0.5 for i in range(n)]
    clickhouse_client.insert(f"{db}.samples", [run_ids, steps, values],
                             column_names=["run_id", "step", "value"], column_oriented=True)

    count, step_sum, value_sum, runs = clickhouse_client.query(
        f"SELECT count(), sum(step), sum(value), uniqExact(run_id) FROM {db}.samples").result_rows[0]
    assert count == n
    assert step_sum == n * (n - 1) // 2
    assert value_sum == pytest.approx(0.5 * n * (n - 1) / 2)
    assert runs == 8
    per_run = clickhouse_client.query(
        f"SELECT run_id, count() FROM {db}.samples WHERE run_id = {{r:String}} GROUP BY run_id",
        parameters={"r": "run-3"}).result_rows
    assert per_run == [("run-3", n // 8)]


def test_clickhouse_data_survives_restart_with_same_url(restartable_clickhouse, clickhouse_url,
                                                         clickhouse_client, fresh_database):
    import clickhouse_connect

    db = fresh_database
    _create_table(clickhouse_client, db)
    clickhouse_client.insert(f"{db}.samples", [["a", "b", "c"], [1, 2, 3], [1.5, 2.5, float("nan")]],
                             column_names=["run_id", "step", "value"], column_oriented=True)

    url = restartable_clickhouse.url
    restartable_clickhouse.restart()
    assert restartable_clickhouse.url == url == clickhouse_url

    fresh = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        rows = fresh.query(f"SELECT run_id, step, value FROM {db}.samples ORDER BY step").result_rows
    finally:
        fresh.close()
    assert [r[:2] for r in rows] == [("a", 1), ("b", 2), ("c", 3)]
    assert rows[0][2] == 1.5 and rows[1][2] == 2.5 and rows[2][2] != rows[2][2]  # NaN kept
    # A client made before the restart keeps working (same URL, new connections).
    clickhouse_client.insert(f"{db}.samples", [["d"], [4], [4.5]],
                             column_names=["run_id", "step", "value"], column_oriented=True)
    assert clickhouse_client.command(f"SELECT count() FROM {db}.samples") == 4


def test_local_clickhouse_lets_inserts_preempt_merges(restartable_clickhouse, clickhouse_client):
    """The local server runs merges at a lower CPU priority, so that on a busy machine inserts
    (and with them, ingest lag) do not wait behind background merges."""
    value, changed = clickhouse_client.query(
        "SELECT value, changed FROM system.server_settings WHERE name = 'os_threads_nice_value_merge_mutate'"
    ).result_rows[0]
    assert (value, changed) == ("10", 1)
