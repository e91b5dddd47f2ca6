"""Ingest worker: Kafka consumer group -> decode -> batched ClickHouse inserts.

Offsets are committed only after ClickHouse accepted every record polled before the commit, so
a crash replays, never skips; storage's replacing keys make the replay harmless. A record that
cannot be decoded, breaks the gateway's validation rules (it may not have come through a
gateway), is a null tombstone, or that ClickHouse rejects as bad data, goes to the dead-letter
topic with the reason, and the rest flows on. Batching, observers and retries are the shared
write path's (runwire.ingest.batch_writer).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from runwire.proto import retry
from runwire.proto.config import build
from runwire.ingest import codec
from runwire.ingest.batch_writer import Batch, BatchWriter
from runwire.ingest.kafka_io import CONSUMER_METADATA, ensure_topics, make_producer, topic_names
from runwire.ingest.validate import InvalidEnvelope, validate_record

log = logging.getLogger("runwire.ingest")


@dataclass(frozen=True)
class IngestConfig:
    """Ingest worker settings; each also reads RUNWIRE_<NAME>."""

    kafka_bootstrap: str = ""
    clickhouse_url: str = ""
    clickhouse_database: str = "runwire"
    topic_prefix: str = "runwire."
    topic_partitions: int = 6
    topic_replication: int = 0       # 0: 3, or the brokers when fewer (kafka_io.replication_for)
    group_id: str = "runwire-ingest"
    batch_rows: int = 500_000        # insert when this many rows are buffered ...
    batch_interval_s: float = 0.5    # ... or when the oldest buffered record is this old
    ttl_days: int | None = None      # raw time-series retention; None leaves it as it is
    session_timeout_s: float = 45.0  # a worker silent this long (crashed) leaves the group and its partitions move on
    metrics_listen: str = ""         # host:port serving Prometheus /metrics; empty: off

    def problems(self) -> list[str]:
        out = []
        if not self.kafka_bootstrap:
            out.append("kafka_bootstrap (RUNWIRE_KAFKA_BOOTSTRAP) is required")
        if not self.clickhouse_url:
            out.append("clickhouse_url (RUNWIRE_CLICKHOUSE_URL) is required")
        if self.batch_rows < 1 or self.batch_interval_s <= 0:
            out.append("batch_rows must be >= 1 and batch_interval_s > 0")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "IngestConfig":
        return build(cls, overrides)


class _FlushOnRevoke(ConsumerRebalanceListener):
    def __init__(self, worker: "IngestWorker") -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        # Write and commit what we hold before another worker takes these partitions over. While
        # closing, run() has already done so, and kafka-python cannot commit from close().
        if revoked and not self.worker.closing:
            self.worker.flush()

    def on_partitions_assigned(self, assigned):
        log.info("assigned %d partitions", len(assigned))


class _Batch(Batch):
    """A batch plus the offsets to commit once it is stored, and its dead letters."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets: dict[TopicPartition, int] = {}      # next offset to read, per partition
        self.dead_letters: list = []                      # futures: durable before the commit

    def __bool__(self) -> bool:
        return bool(self.offsets)


class IngestWorker:
    """One member of the ingest consumer group. `run()` until `stop()`.

    Two threads: this one polls, decodes and cuts batches; an inserter writes one batch to
    ClickHouse at a time (through the shared BatchWriter) while the next one fills. A batch's
    offsets are committed (here: the consumer is not thread-safe) only after its insert and
    every insert before it succeeded. The writer is used on the inserter thread only: give it a
    ClickHouse client of its own.

    observers: called with (kind, record) for every decoded record as it arrives (stream alert
    rules, e.g. [engine.observe]).
    """

    def __init__(self, config: IngestConfig, writer, backoff: retry.Backoff = retry.Backoff(max_s=5.0),
                 observers: list | None = None, metrics=None) -> None:
        self.config = config
        self.topics = topic_names(config.topic_prefix)
        self._topic_kinds = {self.topics[kind]: kind for kind in codec.KINDS}
        self._stop = threading.Event()
        on_insert = None
        if metrics is not None:  # a runwire.ingest.monitoring.PipelineMetrics
            def on_insert(seconds: float, rows: int) -> None:
                metrics.insert_latency.observe(seconds)
                metrics.insert_rows.observe(rows)
        self.core = BatchWriter(writer, observers, backoff, stop=self._stop, on_insert=on_insert)
        self.lag: dict[tuple[str, int], int] = {}  # (topic, partition) -> records behind, after each poll
        self.closing = False
        self._batch = _Batch()
        self._inflight: tuple[_Batch, Future] | None = None
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runwire-insert")
        self.counters = self.core.counters
        self.counters.update(records=0, dead_letters=0)
        subscribed = [self.topics[k] for k in codec.KINDS]
        # Topics exist, with leaders, and are in our consumer's metadata before it joins the
        # group: a member that joins without them is assigned nothing until a metadata refresh.
        ensure_topics(config.kafka_bootstrap, config.topic_prefix, config.topic_partitions, config.topic_replication)
        self.producer = make_producer(config.kafka_bootstrap, client_id="runwire-ingest-dlq")
        self.consumer = KafkaConsumer(
            bootstrap_servers=config.kafka_bootstrap,
            group_id=config.group_id,
            client_id="runwire-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            max_poll_records=2000,
            session_timeout_ms=int(config.session_timeout_s * 1000),
            **CONSUMER_METADATA,
        )
        self.consumer.subscribe(subscribed, listener=_FlushOnRevoke(self))
        self._await_metadata(subscribed)

    def _await_metadata(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """Fetch the topics' partitions into the consumer's metadata before it joins the group.
        kafka-python's leader assigns from whatever metadata it holds at that moment; without
        them every member was assigned nothing ("No partition metadata for topic ...")."""
        deadline = time.monotonic() + timeout_s
        missing = topics
        while True:
            missing = [t for t in missing if not self.consumer.partitions_for_topic(t)]
            if not missing:
                return
            if time.monotonic() > deadline or self._stop.wait(0.2):
                log.warning("no partition metadata for %s yet; ingest picks them up within %d s once it arrives",
                            missing, CONSUMER_METADATA["metadata_max_age_ms"] // 1000)
                return

    @property
    def writer(self):
        return self.core.writer

    @writer.setter
    def writer(self, writer) -> None:
        self.core.writer = writer

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                polled = self.consumer.poll(timeout_ms=100)
                for partition_records in polled.values():
                    for record in partition_records:
                        self._take(record)
                        if self._batch.full(self.config.batch_rows):
                            # Full: wait for the previous insert, so at most two batches are held.
                            self._finish_inflight(wait=True)
                            self._start_insert()
                self._note_lag(polled)
                self._finish_inflight(wait=False)
                # Due by time, the batch goes when the inserter is free; until then it keeps
                # filling (fewer, larger inserts while ClickHouse is the bottleneck).
                if self._inflight is None and self._batch_due():
                    self._start_insert()
            self.flush()
        finally:
            self.closing = True
            self._inserter.shutdown(wait=True)
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=10)

    def stop(self) -> None:
        self._stop.set()

    def flush(self) -> None:
        """Insert everything polled so far (retrying while ClickHouse is unavailable) and commit."""
        self._finish_inflight(wait=True)
        if self._batch:
            self._start_insert()
            self._finish_inflight(wait=True)

    def _batch_due(self) -> bool:
        batch = self._batch
        return bool(batch) and (not batch.records  # only dead letters: commit them now
                                or batch.due(self.config.batch_interval_s))

    def _note_lag(self, polled) -> None:
        """Records behind each partition's end, from the fetch's high watermark (no request)."""
        for tp, records in polled.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None and records:
                self.lag[(tp.topic, tp.partition)] = max(0, highwater - (records[-1].offset + 1))

    def _take(self, record) -> None:
        self.counters["records"] += 1
        batch = self._batch
        batch.offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        try:
            kind, decoded = codec.decode(record.value)
            if self._topic_kinds.get(record.topic, kind) != kind:
                # Stored it would be, but a producer that mixes kinds up is no gateway: say so.
                raise codec.PoisonRecord(f"a {kind} record in the {self._topic_kinds[record.topic]} topic")
            # Anyone who can write to the topics can skip the gateway: check again.
            validate_record(kind, decoded)
        except codec.PoisonRecord as exc:
            batch.dead_letters.append(self._dead_letter(record, str(exc)))
            return
        except InvalidEnvelope as exc:
            batch.dead_letters.append(self._dead_letter(record, f"invalid record: {exc}"))
            return
        self.core.observe(kind, decoded)
        batch.add(kind, decoded)

    def _dead_letter(self, record, reason: str):
        """Send to the dead-letter topic (the value as it came, a tombstone stays None);
        returns the send's future."""
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        self.core.count(dead_letters=1)
        headers = [
            ("runwire.reason", reason.encode()[:1000]),
            ("runwire.topic", record.topic.encode()),
            ("runwire.partition", str(record.partition).encode()),
            ("runwire.offset", str(record.offset).encode()),
        ]
        return self.producer.send(self.topics["deadletter"], key=record.key, value=record.value, headers=headers)

    def _start_insert(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._inflight = (batch, self._inserter.submit(self._insert, batch))

    def _finish_inflight(self, wait: bool) -> None:
        """Once the running insert is done: raise its error, or commit its batch's offsets."""
        if self._inflight is None:
            return
        batch, future = self._inflight
        if not wait and not future.done():
            return
        self._inflight = None
        future.result()  # an insert that gave up (stopped while ClickHouse was down) ends run()
        self._commit(batch)

    # -- inserter thread -------------------------------------------------------------------
    def _insert(self, batch: _Batch) -> None:
        try:
            # Offsets stay uncommitted while the core retries, so a crash here loses nothing.
            rejected = self.core.write(batch)
        except Exception as exc:
            raise RuntimeError("stopped while ClickHouse was unavailable; offsets not committed") from exc
        for i, exc in rejected:
            kind, decoded = batch.records[i]
            encoded = codec.encode(kind, decoded if kind == codec.RUNS else _repack(kind, decoded))
            batch.dead_letters.append(self._dead_letter(
                _Rejected(self.topics[kind], encoded), f"ClickHouse rejected the record: {exc}"))

    # -- back on the polling thread --------------------------------------------------------
    def _commit(self, batch: _Batch) -> None:
        for future in batch.dead_letters:
            future.get(timeout=30)  # a dead letter must be durable before its offset moves on
        if not batch.offsets:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in batch.offsets.items()})
        except Exception as exc:
            # Lost the partitions (rebalance): the new owner replays from the last commit.
            log.warning("offset commit failed, the records will be replayed: %s", exc)


class _Rejected:
    """Stands in for a consumer record when a decoded record is dead-lettered after insert."""

    def __init__(self, topic: str, value: bytes) -> None:
        self.topic, self.value, self.key, self.partition, self.offset = topic, value, None, -1, -1


def _repack(kind: str, decoded: dict) -> dict:
    columns = codec.METRIC_COLUMNS if kind == codec.METRICS else codec.GPU_COLUMNS
    out = dict(decoded)
    for name in columns:
        out[name] = decoded[name].tobytes()
    return out


def create_worker(config: IngestConfig, observers: list | None = None, metrics=None) -> IngestWorker:
    """A worker with its own ClickHouse client; observers: e.g. [alert_engine.observe];
    metrics: a runwire.ingest.monitoring.PipelineMetrics to observe inserts into."""
    from runwire.storage.client import connect
    from runwire.storage.schema import migrate
    from runwire.storage.writer import StorageWriter

    client = connect(config.clickhouse_url, config.clickhouse_database)
    migrate(client, ttl_days=config.ttl_days)
    return IngestWorker(config, StorageWriter(client), observers=observers, metrics=metrics)
