"""Where the gateway puts envelopes: Kafka (production) or straight into ClickHouse (embedded).

A sink calls `done(None)` once the record is durable, or `done(error, code)` with the gRPC code
name the emitter should see (UNAVAILABLE and RESOURCE_EXHAUSTED are retried by the emitter).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Protocol

from kafka.errors import KafkaTimeoutError

from runwire.proto import retry
from runwire.ingest import codec
from runwire.ingest.kafka_io import ensure_topics, make_producer, topic_names

log = logging.getLogger("runwire.gateway")

Done = Callable[..., None]


class Sink(Protocol):
    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None: ...

    def close(self) -> None: ...


class KafkaSink:
    """Produces each envelope as one record to its kind's topic, keyed by run."""

    def __init__(self, producer, prefix: str) -> None:
        self.producer = producer
        self.topics = topic_names(prefix)

    @classmethod
    def create(cls, config) -> "KafkaSink":
        ensure_topics(config.kafka_bootstrap, config.topic_prefix, config.topic_partitions, config.topic_replication)
        return cls(make_producer(config.kafka_bootstrap), config.topic_prefix)

    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None:
        try:
            future = self.producer.send(self.topics[kind], key=key, value=value)
        except KafkaTimeoutError as exc:  # buffer full or no metadata: Kafka is behind
            done(exc, "RESOURCE_EXHAUSTED")
            return
        except Exception as exc:
            done(exc, "UNAVAILABLE")
            return
        future.add_callback(lambda _metadata: done(None))
        future.add_errback(lambda exc: done(exc, "UNAVAILABLE"))

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        finally:
            self.producer.close(timeout=10)


class DirectSink:
    """Embedded mode: batches records and inserts them with the ingest writer, acknowledging
    each envelope after ClickHouse accepted its insert."""

    def __init__(self, writer, max_rows: int = 50_000, max_delay_s: float = 0.2,
                 backoff: retry.Backoff = retry.Backoff(), observers: list | None = None) -> None:
        self.writer = writer
        self.observers = list(observers or [])  # as IngestWorker.observers: (kind, record) as it arrives
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.backoff = backoff
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runwire-direct-writer", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, config) -> "DirectSink":
        from runwire.storage.client import connect
        from runwire.storage.schema import migrate
        from runwire.storage.writer import StorageWriter

        client = connect(config.clickhouse_url, config.clickhouse_database)
        migrate(client)
        return cls(StorageWriter(client))

    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None:
        # Decode what Kafka would have carried, so both modes store exactly the same rows.
        kind, record = codec.decode(value)
        for observer in self.observers:
            try:
                observer(kind, record)
            except Exception:  # an observer's bug must never stop ingestion
                log.exception("ingest observer failed")
        self._queue.put((kind, record, done))

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._collect()
            if batch:
                self._write(batch)

    def _collect(self) -> list:
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        rows = codec.row_count(batch[0][0], batch[0][1])
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_rows:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(item)
            rows += codec.row_count(item[0], item[1])
        return batch

    def _write(self, batch: list) -> None:
        from runwire.storage.writer import is_permanent

        attempt = 0
        while True:
            try:
                self.writer.write([(kind, record) for kind, record, _ in batch])
            except Exception as exc:
                if is_permanent(exc):
                    log.error("ClickHouse rejected a batch of %d envelopes: %s", len(batch), exc)
                    for _, _, done in batch:
                        done(exc, "INVALID_ARGUMENT")
                    return
                log.warning("ClickHouse insert failed, retrying: %s", exc)
                if not retry.sleep(self.backoff, attempt, self._stop):
                    for _, _, done in batch:
                        done(exc, "UNAVAILABLE")
                    return
                attempt += 1
                continue
            for _, _, done in batch:
                done(None)
            return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
