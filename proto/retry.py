"""The one retry policy: exponential backoff with full jitter, capped by a deadline, cut short
by shutdown. Whether an error is worth retrying is the caller's classifier, one per destination:
gRPC (runwire.proto.contract.classify_grpc), ClickHouse (runwire.storage.client.is_permanent),
Kafka (runwire.ingest.kafka_io.is_retryable), HTTP webhooks (runwire.ingest.alerts.notify).

Dependency-free, so the emitter and the servers share it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * multiplier**attempt)]."""
        cap = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt))
        return random.uniform(0, cap)


def sleep(backoff: Backoff, attempt: int, stop: threading.Event, deadline: float | None = None) -> bool:
    """Wait before retry `attempt`; False when shutdown was asked for or the deadline passed."""
    delay = backoff.delay(attempt)
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        delay = min(delay, remaining)
    return not stop.wait(delay)


def call(fn: Callable[[], T], retryable: Callable[[BaseException], bool], stop: threading.Event,
         backoff: Backoff = Backoff(), deadline: float | None = None,
         on_retry: Callable[[BaseException, int], None] | None = None,
         max_attempts: int | None = None) -> T:
    """fn() until it succeeds. An error `retryable` refuses is raised at once; a retryable one is
    retried after a backoff sleep, and raised when `stop` is set, the `deadline` (monotonic
    seconds) passes or `max_attempts` calls failed. `on_retry(error, attempt)` runs before each
    retry, after its backoff sleep (count it)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc) or (max_attempts is not None and attempt + 1 >= max_attempts):
                raise
            if not sleep(backoff, attempt, stop, deadline):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            attempt += 1
