"""The thread-per-stream gateway server (grpc's synchronous server), kept as `server = "threads"`
for comparison (bench/streams.py runs both) and as a fallback. Same service, same guarantees as
the asyncio server in runwire.ingest.gateway; it holds two threads per open stream.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runwire.ingest.gateway import (Abort, GatewayConfig, TelemetryService, bind, handlers, log_started,
                                    server_options, start_monitoring)
from runwire.ingest.sinks import Sink
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import SERVICE_NAME

log = logging.getLogger("runwire.gateway")

_END = object()


class ThreadedGateway:
    """A running gateway on grpc's thread pool server: a stream holds a server thread for its
    whole life, plus a reader thread."""

    def __init__(self, config: GatewayConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self.service = TelemetryService(config, sink)
        self.metrics = None
        self._streams_lock = threading.Lock()
        # Calls beyond max_streams are refused with RESOURCE_EXHAUSTED at once instead of
        # queueing unanswered for a thread.
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=config.max_streams, thread_name_prefix="runwire-gateway"),
            options=server_options(config), maximum_concurrent_rpcs=config.max_streams)
        self.server.add_generic_rpc_handlers((handlers(self._stream, self._publish),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            self.port = bind(self.server, config)
        except BaseException:
            sink.close()
            raise
        self._stopped = False

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> "ThreadedGateway":
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics = start_monitoring(self.config, self.service)
        log_started(self.config, self.address)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking streams, let open ones drain for `grace` seconds, close the sink. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)
        if self.metrics is not None:
            self.metrics.close()
        self.sink.close()

    def wait(self) -> None:
        self.server.wait_for_termination()

    # -- RPCs (on server threads) -------------------------------------------------------
    def _authenticate(self, context) -> set[str] | None:
        try:
            return self.service.allowed_projects(context.invocation_metadata())
        except Abort as exc:
            context.abort(exc.code, exc.message)

    def _stream(self, request_iterator, context):
        allowed = self._authenticate(context)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        outstanding = _Counter()

        def done(ack: pb.Ack) -> None:
            answers.put(ack)
            outstanding.add(-1)

        def read() -> None:
            try:
                for raw in request_iterator:
                    outstanding.add(1)
                    answer = self.service.accept(raw, allowed, done)
                    if answer is not None:
                        outstanding.add(-1)
                        answers.put(answer)
                        if isinstance(answer, Abort):
                            return
            except Exception as exc:  # the client went away; nothing more to read
                log.debug("stream reader ended: %r", exc)
                answers.put(_END)
                return
            outstanding.wait_zero(self.config.drain_timeout_s)
            answers.put(_END)

        threading.Thread(target=read, name="runwire-gateway-reader", daemon=True).start()
        with self._streams_lock:
            self.service.open_streams += 1
        try:
            while True:
                item = answers.get()
                if item is _END:
                    return
                if isinstance(item, Abort):
                    context.abort(item.code, item.message)
                yield item
        finally:
            with self._streams_lock:
                self.service.open_streams -= 1

    def _publish(self, raw: bytes, context) -> pb.Ack:
        allowed = self._authenticate(context)
        result: list[pb.Ack] = []
        finished = threading.Event()

        def done(ack: pb.Ack) -> None:
            result.append(ack)
            finished.set()

        answer = self.service.accept(raw, allowed, done)
        if answer is None:
            if not finished.wait(self.config.drain_timeout_s):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "sink did not acknowledge in time")
            answer = result[0]
        if isinstance(answer, Abort):
            context.abort(answer.code, answer.message)
        if answer.code not in ("OK", ""):
            context.abort(getattr(grpc.StatusCode, answer.code, grpc.StatusCode.UNKNOWN), answer.message)
        return answer


class _Counter:
    """Envelopes of one stream still waiting for their answer."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    def add(self, delta: int) -> None:
        with self._cond:
            self._n += delta
            if self._n == 0:
                self._cond.notify_all()

    def wait_zero(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n == 0, timeout)
