"""The one write path into ClickHouse, shared by the Kafka ingest worker and the gateway's direct
mode: observer fan-out as records arrive, batches cut by size or age, inserts under the one retry
policy, and permanent errors narrowed down to the records that caused them.

The shells around it decide what happens next: the worker dead-letters rejected records and
commits offsets; the direct sink answers each envelope's gRPC call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runwire.ingest import codec
from runwire.proto import retry
from runwire.storage.client import is_permanent

log = logging.getLogger("runwire.ingest")

Observer = Callable[[str, dict], None]


class Batch:
    """Decoded records gathered for one insert, each with the shell's token (an offset map
    entry, a gRPC callback...), their row count and the arrival time of the first."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []
        self.tokens: list = []
        self.rows = 0
        self.since = 0.0  # monotonic time of the first record

    def add(self, kind: str, record: dict, token=None) -> None:
        if not self.records:
            self.since = time.monotonic()
        self.records.append((kind, record))
        self.tokens.append(token)
        self.rows += codec.row_count(kind, record)

    def full(self, max_rows: int) -> bool:
        return self.rows >= max_rows

    def due(self, max_age_s: float) -> bool:
        return bool(self.records) and time.monotonic() - self.since >= max_age_s

    def __len__(self) -> int:
        return len(self.records)


class BatchWriter:
    """Writes batches through a StorageWriter-like `writer` (`write(records)`).

    observers: called with (kind, record) for every record as it arrives (stream alert rules);
        an observer must be quick, and its errors are logged, never raised into ingestion.
    backoff: the retry policy while ClickHouse is unavailable; `stop` cuts the wait short.
    """

    def __init__(self, writer, observers: list[Observer] | None = None,
                 backoff: retry.Backoff = retry.Backoff(max_s=5.0), stop: threading.Event | None = None,
                 on_insert: Callable[[float, int], None] | None = None) -> None:
        """on_insert(seconds, rows): called after every successful insert (monitoring)."""
        self.writer = writer
        self.on_insert = on_insert
        self.observers = list(observers or [])
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self.counters = {"inserts": 0, "rows": 0, "retries": 0, "rejected": 0}

    def observe(self, kind: str, record: dict) -> None:
        for observer in self.observers:
            try:
                observer(kind, record)
            except Exception:  # an observer's bug must never stop ingestion
                log.exception("ingest observer failed")

    def write(self, batch: Batch) -> list[tuple[int, Exception]]:
        """Store the batch. Returns the records ClickHouse rejected as bad data, as (index in the
        batch, error); everything else is stored. Retries while ClickHouse is unavailable and
        raises the last error once `stop` is set."""
        if not batch.records:
            return []
        try:
            self._write_retrying(batch.records)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            log.error("ClickHouse rejected a batch of %d records as bad data (%s); isolating the bad records",
                      len(batch.records), exc)
            return self._write_one_by_one(batch)
        self.count(inserts=1, rows=batch.rows)
        return []

    def _write_retrying(self, records: list[tuple[str, dict]]) -> None:
        retry.call(lambda: self._insert(records), retryable=lambda exc: not is_permanent(exc),
                   stop=self.stop, backoff=self.backoff, on_retry=self._on_retry(len(records)))

    def _insert(self, records: list[tuple[str, dict]]) -> None:
        started = time.perf_counter()
        written = self.writer.write(records)
        if self.on_insert is not None:
            self.on_insert(time.perf_counter() - started, sum(written.values()) if written else 0)

    def _on_retry(self, n: int):
        def on_retry(exc: BaseException, attempt: int) -> None:
            self.count(retries=1)
            log.warning("ClickHouse insert of %d records failed (attempt %d), retrying: %s", n, attempt + 1, exc)
        return on_retry

    def _write_one_by_one(self, batch: Batch) -> list[tuple[int, Exception]]:
        rejected = []
        for i, record in enumerate(batch.records):
            try:
                self._write_retrying([record])
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                rejected.append((i, exc))
                continue
            self.count(inserts=1, rows=codec.row_count(*record))
        self.count(rejected=len(rejected))
        return rejected

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counters[name] += delta
