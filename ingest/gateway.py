"""The gateway: gRPC in, Kafka (or, in direct mode, ClickHouse) out.

An envelope is acknowledged only once its sink has it durably: Kafka acknowledged the record
(acks=all, idempotent producer) or ClickHouse accepted the insert. Requests arrive as raw bytes
so a malformed protobuf gets INVALID_ARGUMENT instead of a framework error.

The server is grpc.aio: every stream is a coroutine on one event loop, so a gateway carries
thousands of streams without a thread each (the thread-per-stream server spent half the machine
switching threads at 1,000 streams; bench/streams.py measures both). The loop only moves bytes:
parsing, validation, Avro encoding and the sink's submit (KafkaProducer.send blocks while its
buffer is full) run on one hand-off thread behind a bounded queue, and a full queue is answered
RESOURCE_EXHAUSTED, which emitters retry. `server = "threads"` (RUNWIRE_SERVER) keeps the
thread-per-stream server (runwire.ingest.threaded_gateway).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runwire.proto.config import build, secret
from runwire.ingest import codec
from runwire.ingest.sinks import Sink
from runwire.ingest.validate import InvalidEnvelope, validate
from runwire.proto.contract import KEEPALIVE_TIME_MS, METRIC_COLUMNS, SERVICE_NAME
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.auth import bearer_token, projects_for

log = logging.getLogger("runwire.gateway")

@dataclass(frozen=True)
class GatewayConfig:
    """Gateway settings; each also reads RUNWIRE_<NAME> (e.g. RUNWIRE_LISTEN)."""

    listen: str = "127.0.0.1:50051"          # host:port; port 0 picks a free one
    mode: str = "kafka"                      # "kafka" (production) or "direct" (embedded: no Kafka)
    kafka_bootstrap: str = ""                # host:port[,host:port]
    topic_prefix: str = "runwire."
    topic_partitions: int = 6
    topic_replication: int = 0               # 0: 3, or the brokers when fewer (kafka_io.replication_for)
    clickhouse_url: str = ""                 # direct mode: where the ingest writer inserts
    clickhouse_database: str = "runwire"
    tokens: dict[str, str] = secret(default_factory=dict)  # project -> bearer token; empty: no auth
    tls_cert_file: str = ""                  # PEM certificate chain; with tls_key_file: serve TLS
    tls_key_file: str = ""                   # PEM private key
    max_streams: int = 10_000                # open streams (one per emitting process); beyond: RESOURCE_EXHAUSTED
    max_pending: int = 20000                 # envelopes awaiting their sink; beyond: RESOURCE_EXHAUSTED
    drain_timeout_s: float = 30.0            # how long a closing stream waits for its last acks
    ttl_days: int | None = None              # direct mode: raw time-series retention; None leaves it as it is
    server: str = "aio"                      # "aio" (one event loop) or "threads" (a thread per stream)
    metrics_listen: str = ""                 # host:port serving Prometheus /metrics; empty: off
    # Keepalive pings closer together than this on an idle stream are refused (GOAWAY): half the
    # emitter's interval, so its pings always pass.
    min_ping_interval_ms: int = KEEPALIVE_TIME_MS // 2

    def problems(self) -> list[str]:
        out = sink_problems(self)
        if self.mode == "direct" and not self.clickhouse_url:
            out.append("clickhouse_url (RUNWIRE_CLICKHOUSE_URL) is required in direct mode")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            out.append("tls_cert_file and tls_key_file go together")
        if self.server not in ("aio", "threads"):
            out.append(f"server must be 'aio' or 'threads', not {self.server!r}")
        if self.max_pending < 1 or self.max_streams < 1:
            out.append("max_pending and max_streams must be >= 1")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "GatewayConfig":
        return build(cls, overrides)


def sink_problems(config) -> list[str]:
    """What is wrong with the sink settings (mode, kafka_bootstrap) of the gateway or of another
    server that writes through the gateway's sink (the MLflow API)."""
    out = []
    if config.mode not in ("kafka", "direct"):
        out.append(f"mode must be 'kafka' or 'direct', not {config.mode!r}")
    if config.mode == "kafka" and not config.kafka_bootstrap:
        out.append("kafka_bootstrap (RUNWIRE_KAFKA_BOOTSTRAP) is required in kafka mode")
    return out


class ListenError(RuntimeError):
    """The gateway cannot listen where it was asked to (the port is in use, the address is not local)."""


class Abort(Exception):
    """Ends the call with a gRPC status (malformed protobuf, a bad or foreign token)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def server_options(config: GatewayConfig) -> list[tuple[str, int]]:
    """Both servers': refuse messages over the limit; let a second server on a port fail to bind
    (gRPC sets SO_REUSEPORT by default: a second gateway would bind silently and take half the
    streams); and let max_streams calls wait to be taken up. gRPC core holds at most 1,000 calls
    that arrived before the server took them up (3,000 at most), and cancels the rest: when a
    fleet's ranks reconnect at once, thousands of streams arrive together (measured:
    bench/streams.py lost 20 % of 3,000 streams to CANCELLED with the defaults). BDP probing is
    off, as on the emitter's channel (runwire.exporter.CHANNEL_OPTIONS): on streams that send an
    envelope a second it pinged at nearly every message, and gRPC core's threads spent twice the
    CPU (bench/streams.py, gateway_cpu_s_by_thread). Keepalive pings from idle emitters are
    accepted (see GatewayConfig.min_ping_interval_ms); gRPC's default (one per 5 minutes) made
    every stream idle for ~2 minutes end in GOAWAY "too_many_pings" and a reconnect."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", config.min_ping_interval_ms),
            ("grpc.server.max_pending_requests", config.max_streams),
            ("grpc.server.max_pending_requests_hard_limit", 2 * config.max_streams)]


class TelemetryService:
    """What the Telemetry service does with one envelope, whichever server runs it. Holds no
    per-run state: every envelope is self-describing."""

    def __init__(self, config: GatewayConfig, sink: Sink, metrics=None) -> None:
        self.config = config
        self.sink = sink
        self.metrics = metrics  # a runwire.ingest.monitoring.PipelineMetrics, or None
        self._pending = 0
        self._lock = threading.Lock()
        self.counters = {"received": 0, "acked": 0, "rejected": 0, "failed": 0, "busy": 0, "points_acked": 0,
                         "points_rejected": 0, "points_failed": 0}
        self.open_streams = 0

    def allowed_projects(self, metadata) -> set[str] | None:
        """Projects the caller's token is valid for; None when authentication is off. Raises
        Abort(UNAUTHENTICATED) for a missing or unknown token."""
        if not self.config.tokens:
            return None
        token = ""
        for key, value in metadata or ():
            if key == "authorization":
                token = bearer_token(value) or token
        allowed = projects_for(self.config.tokens, token)
        if not allowed:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return allowed

    def accept(self, raw: bytes, allowed: set[str] | None, done) -> pb.Ack | Abort | None:
        """Parse, check and hand one envelope to the sink. Returns an immediate answer, or None
        when `done(ack)` will be called once the sink has it."""
        self.counters["received"] += 1
        try:
            envelope = pb.Envelope.FromString(raw)
        except DecodeError as exc:
            self.counters["rejected"] += 1
            return Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Envelope protobuf: {exc}")
        points = _points(envelope)
        try:
            validate(envelope)
        except InvalidEnvelope as exc:
            self.counters["rejected"] += 1
            self.counters["points_rejected"] += points
            return pb.Ack(seq=envelope.seq, code="INVALID_ARGUMENT", message=str(exc))
        if allowed is not None and envelope.identity.project not in allowed:
            self.counters["rejected"] += 1
            return Abort(grpc.StatusCode.UNAUTHENTICATED,
                         f"token is not valid for project {envelope.identity.project!r}")
        with self._lock:
            if self._pending >= self.config.max_pending:
                self.counters["busy"] += 1
                return pb.Ack(seq=envelope.seq, code="RESOURCE_EXHAUSTED", message="gateway busy, retry")
            self._pending += 1
        seq = envelope.seq
        started = time.perf_counter()

        def finished(error: Exception | None, code: str = "UNAVAILABLE") -> None:
            with self._lock:
                self._pending -= 1
                outcome = "acked" if error is None else "failed"
                self.counters[outcome] += 1
                self.counters["points_" + outcome] += points
            if self.metrics is not None and error is None:
                self.metrics.ack_latency.observe(time.perf_counter() - started)
            if error is None:
                done(pb.Ack(seq=seq, code="OK"))
            else:
                done(pb.Ack(seq=seq, code=code, message=str(error)[:500]))

        try:
            kind, key, value = codec.encode_envelope(envelope, time.time_ns())
            self.sink.submit(kind, key, value, finished)
        except Exception as exc:  # never leak the pending slot or leave the envelope unanswered
            log.exception("could not hand envelope %d to the sink", seq)
            finished(exc, "INTERNAL")
        return None

    def busy(self, raw: bytes) -> pb.Ack | Abort:
        """The answer to an envelope that found the hand-off full."""
        self.counters["received"] += 1
        self.counters["busy"] += 1
        try:
            seq = pb.Envelope.FromString(raw).seq
        except DecodeError as exc:
            return Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Envelope protobuf: {exc}")
        return pb.Ack(seq=seq, code="RESOURCE_EXHAUSTED", message="gateway busy, retry")


def _points(envelope: pb.Envelope) -> int:
    """Metric points or GPU samples in an envelope (for the health metrics)."""
    body = envelope.WhichOneof("body")
    if body == "metrics":
        return len(envelope.metrics.values) // METRIC_COLUMNS["values"].size
    if body == "gpu":
        return len(envelope.gpu.gpu_ref)
    return 0


def start_monitoring(config: GatewayConfig, service: TelemetryService):
    """Serve the gateway's Prometheus metrics when config.metrics_listen is set; returns the
    PipelineMetrics (or None)."""
    if not config.metrics_listen:
        return None
    from runwire.ingest.monitoring import PipelineMetrics, gateway_source

    metrics = PipelineMetrics()
    metrics.add_source(gateway_source(service, lambda: service.open_streams))
    service.metrics = metrics
    port = metrics.serve(config.metrics_listen)
    log.info("gateway metrics on http://%s:%d/metrics", config.metrics_listen.rpartition(":")[0], port)
    return metrics


def handlers(stream, publish) -> grpc.GenericRpcHandler:
    """The Telemetry service's methods; requests arrive as raw bytes (see the module docstring)."""
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Stream": grpc.stream_stream_rpc_method_handler(stream, response_serializer=pb.Ack.SerializeToString),
        "Publish": grpc.unary_unary_rpc_method_handler(publish, response_serializer=pb.Ack.SerializeToString),
    })


def bind(server, config: GatewayConfig) -> int:
    """Bind `server` (sync or aio) to config.listen; ListenError with what to do when it cannot."""
    try:
        if config.tls_cert_file:
            with open(config.tls_key_file, "rb") as key, open(config.tls_cert_file, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:  # grpcio raises "Failed to bind to address ..."
        port, why = 0, exc
    else:
        why = None
    if port == 0:
        raise ListenError(
            f"cannot listen on {config.listen}: the port is in use (another runwire gateway or "
            f"`runwire up`?) or the address is not on this machine. Stop the other server or choose "
            f"another address with --listen (RUNWIRE_LISTEN); port 0 picks a free one.") from why
    return port


def log_started(config: GatewayConfig, address: str) -> None:
    log.info("gateway listening on %s (mode %s, server %s, auth %s, tls %s)", address, config.mode, config.server,
             "on" if config.tokens else "off", "on" if config.tls_cert_file else "off")
    if config.tokens and not config.tls_cert_file:
        log.warning("bearer tokens without TLS travel in plaintext: set tls_cert_file and tls_key_file")


_READ_DONE = object()


class _LoopInbox:
    """Answers from other threads (the hand-off thread, the producer's), run on the loop in
    batches: one wake-up of the loop for everything that arrived since the last, instead of one
    per envelope (bench/streams.py: the per-answer wake-ups were a fifth of the loop's CPU).
    After the gateway stopped, posting is a no-op (the call it answered is gone, and the
    emitter resends what was not acknowledged)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque = collections.deque()
        self._scheduled = False

    def post(self, callback, arg) -> None:
        """Run callback(arg) on the loop soon; callable from any thread."""
        self._items.append((callback, arg))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed
                pass

    def _run(self) -> None:
        # Cleared before draining: an item appended after this is drained now or finds the
        # flag clear and schedules the next run.
        self._scheduled = False
        items = self._items
        while items:
            callback, arg = items.popleft()
            try:
                callback(arg)
            except Exception:  # noqa: BLE001 - one broken answer must not strand the others
                log.exception("gateway answer callback failed")


class _Handoff:
    """Envelopes from the event loop to the thread that parses, validates, encodes and submits
    them: the sink may block (a full producer buffer), the loop must not. Bounded, so a gateway
    that falls behind answers RESOURCE_EXHAUSTED instead of growing without limit."""

    def __init__(self, service: TelemetryService, size: int) -> None:
        self.service = service
        self.size = size
        # SimpleQueue: put and get in C, without queue.Queue's Python-level condition variables
        # (measured: those cost more than the validation). Only the loop thread offers, so
        # checking the size before putting keeps the bound.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="runwire-gateway-handoff", daemon=True)
        self._thread.start()

    def offer(self, raw: bytes, allowed, done) -> bool:
        if self._queue.qsize() >= self.size:
            return False
        self._queue.put((raw, allowed, done))
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            raw, allowed, done = item
            try:
                answer = self.service.accept(raw, allowed, done)
            except Exception as exc:  # noqa: BLE001 - an answer for every envelope, whatever happens
                log.exception("gateway hand-off failed")
                answer = Abort(grpc.StatusCode.INTERNAL, f"gateway error: {exc}")
            if answer is not None:
                done(answer)

    def close(self) -> None:
        self._queue.put(None)  # after everything already offered
        self._thread.join(timeout=30)


class Gateway:
    """A running gateway: the grpc.aio server on its own event loop thread, the health service,
    the hand-off thread and the sink. start()/stop() are called from ordinary threads."""

    def __init__(self, config: GatewayConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self.service = TelemetryService(config, sink)
        self.metrics = None
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._inbox = _LoopInbox(self._loop)
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="runwire-gateway-loop", daemon=True)
        self._loop_thread.start()
        try:
            self.port = self._call(self._create())
        except BaseException:
            self._close_loop()
            sink.close()
            raise
        self._handoff = _Handoff(self.service, config.max_pending)

    def _call(self, coroutine, timeout: float | None = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _create(self) -> int:
        # Created on the loop it runs on. Streams beyond max_streams are refused with
        # RESOURCE_EXHAUSTED at once (emitters back off and retry).
        self.server = grpc.aio.server(options=server_options(self.config),
                                      maximum_concurrent_rpcs=self.config.max_streams)
        self.server.add_generic_rpc_handlers((handlers(self._stream, self._publish),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        return bind(self.server, self.config)

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> "Gateway":
        self._call(self._start())
        self.metrics = start_monitoring(self.config, self.service)
        log_started(self.config, self.address)
        return self

    async def _start(self) -> None:
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking streams, let open ones drain for `grace` seconds, close the sink. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._call(self._stop(grace), timeout=grace + 10)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self._handoff.close()
            self._close_loop()
            self.sink.close()

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        if not self._loop_thread.is_alive():
            self._loop.close()

    def wait(self) -> None:
        self._loop_thread.join()

    # -- RPCs (on the event loop) ----------------------------------------------------------
    async def _authenticate(self, context) -> set[str] | None:
        try:
            return self.service.allowed_projects(context.invocation_metadata())
        except Abort as exc:
            await context.abort(exc.code, exc.message)

    async def _stream(self, request_iterator, context):
        allowed = await self._authenticate(context)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue = asyncio.Queue()
        outstanding = 0  # envelopes read and not yet answered

        done = functools.partial(self._inbox.post, answers.put_nowait)  # from the hand-off or sink thread

        async def read() -> None:
            nonlocal outstanding
            try:
                async for raw in request_iterator:
                    outstanding += 1
                    if not self._handoff.offer(raw, allowed, done):
                        answers.put_nowait(self.service.busy(raw))
            except Exception as exc:  # noqa: BLE001 - the client went away; nothing more to read
                log.debug("stream reader ended: %r", exc)
            finally:
                answers.put_nowait(_READ_DONE)

        reader = asyncio.create_task(read())
        drain_deadline = None
        self.service.open_streams += 1  # only the loop thread changes it
        try:
            while True:
                if drain_deadline is not None and outstanding == 0:
                    return
                timeout = None if drain_deadline is None else max(0.0, drain_deadline - loop.time())
                try:
                    answer = await asyncio.wait_for(answers.get(), timeout)
                except asyncio.TimeoutError:
                    return  # the sink did not answer within drain_timeout_s: the emitter resends
                if answer is _READ_DONE:
                    drain_deadline = loop.time() + self.config.drain_timeout_s
                    continue
                outstanding -= 1
                if isinstance(answer, Abort):
                    await context.abort(answer.code, answer.message)
                yield answer
        finally:
            self.service.open_streams -= 1
            reader.cancel()

    async def _publish(self, raw: bytes, context) -> pb.Ack:
        allowed = await self._authenticate(context)
        loop = asyncio.get_running_loop()
        result = loop.create_future()

        def answer_call(answer) -> None:
            if not result.done():
                result.set_result(answer)

        def done(answer) -> None:
            self._inbox.post(answer_call, answer)

        if self._handoff.offer(raw, allowed, done):
            try:
                answer = await asyncio.wait_for(result, self.config.drain_timeout_s)
            except asyncio.TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "sink did not acknowledge in time")
        else:
            answer = self.service.busy(raw)
        if isinstance(answer, Abort):
            await context.abort(answer.code, answer.message)
        if answer.code not in ("OK", ""):
            await context.abort(getattr(grpc.StatusCode, answer.code, grpc.StatusCode.UNKNOWN), answer.message)
        return answer


def create_gateway(config: GatewayConfig, observers: list | None = None) -> Gateway:
    """The gateway for `config`, with a Kafka sink or (direct mode) a ClickHouse sink.

    observers: direct mode only, called with (kind, record) for every envelope as it arrives
    (e.g. [alert_engine.observe]); in Kafka mode the ingest workers take them instead."""
    from runwire.ingest import sinks

    if config.mode == "kafka":
        if observers:
            raise ValueError("observers belong to the ingest workers in kafka mode")
        sink = sinks.KafkaSink.create(config)
    else:
        sink = sinks.DirectSink.create(config, observers=observers)
    if config.server == "threads":
        from runwire.ingest.threaded_gateway import ThreadedGateway

        return ThreadedGateway(config, sink)
    return Gateway(config, sink)

