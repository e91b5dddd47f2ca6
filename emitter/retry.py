"""The one retry policy: exponential backoff with full jitter, capped by a deadline, cut short
by shutdown."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

# gRPC status codes worth retrying: the server or the network may recover.
RETRYABLE_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN"})


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
