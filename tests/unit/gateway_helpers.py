"""A real gateway over an in-memory sink, for emitter and gateway tests (no Kafka).

`RecordingSink` decodes every record the gateway hands it (the exact bytes Kafka would carry)
and acknowledges it, unless a test switches it to stall (hold acknowledgements until released)
or to answer with an error code for chosen envelopes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from runwire.ingest import codec
from runwire.ingest.gateway import Gateway, GatewayConfig
from runwire.ingest.threaded_gateway import ThreadedGateway

# The server start_gateway runs unless a test asks for one (test_gateway.py runs both).
DEFAULT_SERVER = "aio"

# decide(kind, record) -> None (acknowledge) or a gRPC code name to answer with instead.
Decider = Callable[[str, dict], "str | None"]


class RecordingSink:
    """Sink protocol: submit(kind, key, value, done) / close()."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []   # acknowledged (kind, decoded record)
        self.answered: list[tuple[str, dict, str]] = []  # answered with an error code
        self.held: list[tuple[str, dict, Callable]] = []
        self.stalled = False
        self.decide: Decider | None = None
        self.close_calls = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def submit(self, kind: str, key: bytes, value: bytes, done) -> None:
        decoded_kind, record = codec.decode(value)
        assert decoded_kind == kind
        code = self.decide(kind, record) if self.decide is not None else None
        with self._lock:
            if code is None and self.stalled:
                self.held.append((kind, record, done))
                self._changed.notify_all()
                return
            if code is None:
                self.records.append((kind, record))
            else:
                self.answered.append((kind, record, code))
            self._changed.notify_all()
        if code is None:
            done(None)
        else:
            done(Exception(f"test sink answers {code}"), code)

    def stall(self) -> None:
        with self._lock:
            self.stalled = True

    def release(self) -> None:
        """Stop stalling and acknowledge everything held."""
        with self._lock:
            self.stalled = False
            held, self.held = self.held, []
            self.records.extend((kind, record) for kind, record, _ in held)
            self._changed.notify_all()
        for _, _, done in held:
            done(None)

    def close(self) -> None:
        self.close_calls += 1

    # -- views ------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, dict]]:
        with self._lock:
            return list(self.records)

    def wait_for(self, predicate: Callable[["RecordingSink"], bool], timeout: float = 20.0) -> bool:
        """Poll `predicate(self)` until true or `timeout`; woken early by every submit."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self._changed.wait(min(remaining, 0.05))

    def of_kind(self, kind: str) -> list[dict]:
        return [r for k, r in self.snapshot() if k == kind]

    def bodies(self, body_name: str) -> list[dict]:
        """Decoded run-event bodies of one type: run_start, params, tags, run_end."""
        wanted = {"run_start": "runwire.v1.RunStart", "params": "runwire.v1.Params",
                  "tags": "runwire.v1.Tags", "run_end": "runwire.v1.RunEnd"}[body_name]
        return [r["body"][1] for r in self.of_kind(codec.RUNS) if r["body"][0] == wanted]

    def points(self) -> list[tuple[int, str, int, int, float]]:
        """Every metric point received, duplicates included: (rank, name, step, ts, value)."""
        out = []
        for record in self.of_kind(codec.METRICS):
            names = record["names"]
            for i in range(len(record["values"])):
                out.append((record["rank"], names[int(record["name_index"][i])], int(record["steps"][i]),
                            int(record["timestamps_ns"][i]), float(record["values"][i])))
        return out

    def unique_points(self) -> dict[tuple[int, str, int, int], float]:
        """Points deduplicated by (rank, name, step, ts), as storage would after replays."""
        return {(rank, name, step, ts): value for rank, name, step, ts, value in self.points()}

    def point_count(self) -> int:
        return sum(len(r["values"]) for r in self.of_kind(codec.METRICS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(sink: RecordingSink, port: int = 0, **settings) -> Gateway | ThreadedGateway:
    # mode/kafka_bootstrap only satisfy config validation: the sink is ours, Kafka is never used.
    settings.setdefault("max_streams", 16)
    settings.setdefault("server", DEFAULT_SERVER)
    config = GatewayConfig(listen=f"127.0.0.1:{port}", mode="kafka", kafka_bootstrap="unused:9092",
                           drain_timeout_s=5.0, **settings)
    server = ThreadedGateway if config.server == "threads" else Gateway
    return server(config, sink).start()
