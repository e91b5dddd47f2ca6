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
from runwire.ingest.batch_writer import Batch, BatchWriter
from runwire.ingest.kafka_io import ensure_topics, is_retryable, make_producer, topic_names

# How long one attempt to reach the Kafka bootstrap servers waits before it is reported.
CONNECT_TIMEOUT_MS = 3000

log = logging.getLogger("runwire.gateway")

Done = Callable[..., None]


class Sink(Protocol):
    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None: ...

    def close(self) -> None: ...


class KafkaSink:
    """Produces each envelope as one record to its kind's topic, keyed by run.

    Connecting (topics, producer) happens on a background thread under the one retry policy, so
    the gateway serves at once: until Kafka is reachable every envelope is refused with
    UNAVAILABLE (the emitter keeps it and retries), and the log says which bootstrap address
    cannot be reached, once, and again when it can.
    """

    def __init__(self, connect: Callable[[], object], prefix: str, bootstrap: str,
                 backoff: retry.Backoff = retry.Backoff(initial_s=0.5, max_s=5.0)) -> None:
        self.topics = topic_names(prefix)
        self.bootstrap = bootstrap
        self.producer = None
        self.backoff = backoff
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failing = False  # a send failed and no send succeeded since: log once per outage
        self._thread = threading.Thread(target=self._connect, args=(connect,), name="runwire-kafka-connect",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, config) -> "KafkaSink":
        bootstrap = config.kafka_bootstrap

        def connect():
            # A short bootstrap timeout, so an unreachable broker is reported within seconds.
            ensure_topics(bootstrap, config.topic_prefix, config.topic_partitions, config.topic_replication,
                          bootstrap_timeout_ms=CONNECT_TIMEOUT_MS)
            return make_producer(bootstrap, bootstrap_timeout_ms=CONNECT_TIMEOUT_MS)

        sink = cls(connect, config.topic_prefix, bootstrap)
        # A reachable broker is normally ready by now, so the first envelopes are not refused;
        # an unreachable one does not hold the gateway back.
        sink.wait_ready(CONNECT_TIMEOUT_MS / 1000 + 1)
        return sink

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once Kafka is reachable and the topics exist."""
        return self._ready.wait(timeout)

    def _connect(self, connect) -> None:
        def on_retry(exc: BaseException, attempt: int) -> None:
            if attempt == 0:
                log.error("cannot reach Kafka at %s (%s). Emitters are refused with UNAVAILABLE and keep "
                          "their data until it is reachable; check that the broker runs and --kafka-bootstrap "
                          "(RUNWIRE_KAFKA_BOOTSTRAP). Retrying.", self.bootstrap, exc)

        failed = []
        try:
            producer = retry.call(connect, retryable=is_retryable, stop=self._stop, backoff=self.backoff,
                                  on_retry=lambda exc, attempt: (failed.append(exc), on_retry(exc, attempt)))
        except Exception as exc:
            if not self._stop.is_set():
                log.error("Kafka at %s refused the gateway's set-up, which will not clear by itself: %s. "
                          "Emitters are refused with UNAVAILABLE; fix the broker or the topic settings "
                          "and restart the gateway.", self.bootstrap, exc)
            return
        if self._stop.is_set():
            producer.close(timeout=1)
            return
        self.producer = producer
        self._ready.set()
        if failed:
            log.warning("Kafka at %s is reachable now; accepting envelopes", self.bootstrap)
        else:
            log.info("connected to Kafka at %s", self.bootstrap)

    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None:
        producer = self.producer
        if producer is None:
            done(ConnectionError(f"Kafka at {self.bootstrap} is not reachable yet"), "UNAVAILABLE")
            return
        try:
            future = producer.send(self.topics[kind], key=key, value=value)
        except KafkaTimeoutError as exc:  # buffer full or no metadata: Kafka is behind
            done(exc, "RESOURCE_EXHAUSTED")
            return
        except Exception as exc:
            self._failed(exc)
            done(exc, "UNAVAILABLE")
            return
        future.add_callback(self._delivered(done))
        future.add_errback(lambda exc: (self._failed(exc), done(exc, "UNAVAILABLE")))

    def _delivered(self, done: Done):
        def delivered(_metadata) -> None:
            if self._failing:
                self._failing = False
                log.warning("Kafka at %s accepts records again", self.bootstrap)
            done(None)
        return delivered

    def _failed(self, exc: BaseException) -> None:
        if self._failing:
            return
        self._failing = True
        if is_retryable(exc):
            log.error("Kafka at %s is not accepting records (%s); emitters get UNAVAILABLE and resend "
                      "(logged once until a send succeeds)", self.bootstrap, exc)
        else:
            log.error("Kafka at %s rejected a record: %s; it needs an operator (logged once until a send "
                      "succeeds)", self.bootstrap, exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CONNECT_TIMEOUT_MS / 1000 + 5)
        producer = self.producer
        if producer is None:
            return
        try:
            producer.flush(timeout=10)
        finally:
            producer.close(timeout=10)


class DirectSink:
    """Embedded mode: batches records and inserts them through the ingest write path (the same
    BatchWriter as the Kafka worker), acknowledging each envelope after ClickHouse accepted it.

    observers: as the worker's, called with (kind, record) as each envelope arrives.
    """

    def __init__(self, writer, max_rows: int = 50_000, max_delay_s: float = 0.2,
                 backoff: retry.Backoff = retry.Backoff(), observers: list | None = None) -> None:
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._stop = threading.Event()
        self.core = BatchWriter(writer, observers, backoff, stop=self._stop)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="runwire-direct-writer", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, config, observers: list | None = None) -> "DirectSink":
        from runwire.storage.client import connect
        from runwire.storage.schema import migrate
        from runwire.storage.writer import StorageWriter

        client = connect(config.clickhouse_url, config.clickhouse_database)
        migrate(client, ttl_days=config.ttl_days)
        return cls(StorageWriter(client), observers=observers)

    def submit(self, kind: str, key: bytes, value: bytes, done: Done) -> None:
        # Decode what Kafka would have carried, so both modes store exactly the same rows.
        kind, record = codec.decode(value)
        self.core.observe(kind, record)
        self._queue.put((kind, record, done))

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._collect()
            if batch:
                self._write(batch)

    def _collect(self) -> Batch:
        batch = Batch()
        try:
            batch.add(*self._queue.get(timeout=0.1))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self.max_delay_s
        while not batch.full(self.max_rows):
            try:
                batch.add(*self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write(self, batch: Batch) -> None:
        try:
            rejected = dict(self.core.write(batch))
        except Exception as exc:  # closing while ClickHouse is unavailable: the emitter resends
            for done in batch.tokens:
                done(exc, "UNAVAILABLE")
            return
        for i, done in enumerate(batch.tokens):
            if i in rejected:
                done(rejected[i], "INVALID_ARGUMENT")
            else:
                done(None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
