"""The gateway: gRPC in, Kafka (or, in direct mode, ClickHouse) out.

An envelope is acknowledged only once its sink has it durably: Kafka acknowledged the record
(acks=all, idempotent producer) or ClickHouse accepted the insert. Requests arrive as raw bytes
so a malformed protobuf gets INVALID_ARGUMENT instead of a framework error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runwire.proto.config import build, secret
from runwire.ingest import codec
from runwire.ingest.sinks import Sink
from runwire.ingest.validate import InvalidEnvelope, validate
from runwire.proto.contract import SERVICE_NAME
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.auth import bearer_token, projects_for

log = logging.getLogger("runwire.gateway")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """Gateway settings; each also reads RUNWIRE_<NAME> (e.g. RUNWIRE_LISTEN)."""

    listen: str = "127.0.0.1:50051"          # host:port; port 0 picks a free one
    mode: str = "kafka"                      # "kafka" (production) or "direct" (embedded: no Kafka)
    kafka_bootstrap: str = ""                # host:port[,host:port]
    topic_prefix: str = "runwire."
    topic_partitions: int = 6
    topic_replication: int = 1
    clickhouse_url: str = ""                 # direct mode: where the ingest writer inserts
    clickhouse_database: str = "runwire"
    tokens: dict[str, str] = secret(default_factory=dict)  # project -> bearer token; empty: no auth
    tls_cert_file: str = ""                  # PEM certificate chain; with tls_key_file: serve TLS
    tls_key_file: str = ""                   # PEM private key
    max_streams: int = 1024                  # open streams (one per emitting process); beyond: RESOURCE_EXHAUSTED
    max_pending: int = 20000                 # envelopes awaiting their sink; beyond: RESOURCE_EXHAUSTED
    drain_timeout_s: float = 30.0            # how long a closing stream waits for its last acks

    def problems(self) -> list[str]:
        out = []
        if self.mode not in ("kafka", "direct"):
            out.append(f"mode must be 'kafka' or 'direct', not {self.mode!r}")
        if self.mode == "kafka" and not self.kafka_bootstrap:
            out.append("kafka_bootstrap (RUNWIRE_KAFKA_BOOTSTRAP) is required in kafka mode")
        if self.mode == "direct" and not self.clickhouse_url:
            out.append("clickhouse_url (RUNWIRE_CLICKHOUSE_URL) is required in direct mode")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            out.append("tls_cert_file and tls_key_file go together")
        if self.max_pending < 1 or self.max_streams < 1:
            out.append("max_pending and max_streams must be >= 1")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "GatewayConfig":
        return build(cls, overrides)


class _Abort:
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


_END = object()


class TelemetryService:
    """The Telemetry service over a Sink. Holds no per-run state: every envelope is self-describing."""

    def __init__(self, config: GatewayConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self._pending = 0
        self._lock = threading.Lock()
        self.counters = {"received": 0, "acked": 0, "rejected": 0, "failed": 0}

    # -- authentication ---------------------------------------------------------------
    def _allowed_projects(self, context) -> set[str] | None:
        """Projects the caller's token is valid for; None when authentication is off."""
        if not self.config.tokens:
            return None
        token = ""
        for key, value in context.invocation_metadata():
            if key == "authorization":
                token = bearer_token(value) or token
        allowed = projects_for(self.config.tokens, token)
        if not allowed:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return allowed

    # -- one envelope -----------------------------------------------------------------
    def _accept(self, raw: bytes, allowed: set[str] | None, done) -> pb.Ack | _Abort | None:
        """Parse, check and hand one envelope to the sink. Returns an immediate answer, or None
        when `done(ack)` will be called once the sink has it."""
        self.counters["received"] += 1
        try:
            envelope = pb.Envelope.FromString(raw)
        except DecodeError as exc:
            self.counters["rejected"] += 1
            return _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Envelope protobuf: {exc}")
        try:
            validate(envelope)
        except InvalidEnvelope as exc:
            self.counters["rejected"] += 1
            return pb.Ack(seq=envelope.seq, code="INVALID_ARGUMENT", message=str(exc))
        if allowed is not None and envelope.identity.project not in allowed:
            self.counters["rejected"] += 1
            return _Abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"token is not valid for project {envelope.identity.project!r}")
        with self._lock:
            if self._pending >= self.config.max_pending:
                return pb.Ack(seq=envelope.seq, code="RESOURCE_EXHAUSTED", message="gateway busy, retry")
            self._pending += 1
        seq = envelope.seq

        def finished(error: Exception | None, code: str = "UNAVAILABLE") -> None:
            with self._lock:
                self._pending -= 1
            if error is None:
                self.counters["acked"] += 1
                done(pb.Ack(seq=seq, code="OK"))
            else:
                self.counters["failed"] += 1
                done(pb.Ack(seq=seq, code=code, message=str(error)[:500]))

        try:
            kind, key, value = codec.encode_envelope(envelope, time.time_ns())
            self.sink.submit(kind, key, value, finished)
        except Exception as exc:  # never leak the pending slot or leave the envelope unanswered
            log.exception("could not hand envelope %d to the sink", seq)
            finished(exc, "INTERNAL")
        return None

    # -- RPCs -------------------------------------------------------------------------
    def stream(self, request_iterator, context):
        allowed = self._allowed_projects(context)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        outstanding = _Counter()

        def done(ack: pb.Ack) -> None:
            answers.put(ack)
            outstanding.add(-1)

        def read() -> None:
            try:
                for raw in request_iterator:
                    outstanding.add(1)
                    answer = self._accept(raw, allowed, done)
                    if answer is not None:
                        outstanding.add(-1)
                        answers.put(answer)
                        if isinstance(answer, _Abort):
                            return
            except Exception as exc:  # the client went away; nothing more to read
                log.debug("stream reader ended: %r", exc)
                answers.put(_END)
                return
            outstanding.wait_zero(self.config.drain_timeout_s)
            answers.put(_END)

        threading.Thread(target=read, name="runwire-gateway-reader", daemon=True).start()
        while True:
            item = answers.get()
            if item is _END:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.message)
            yield item

    def publish(self, raw: bytes, context) -> pb.Ack:
        allowed = self._allowed_projects(context)
        result: list[pb.Ack] = []
        finished = threading.Event()

        def done(ack: pb.Ack) -> None:
            result.append(ack)
            finished.set()

        answer = self._accept(raw, allowed, done)
        if answer is None:
            if not finished.wait(self.config.drain_timeout_s):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "sink did not acknowledge in time")
            answer = result[0]
        if isinstance(answer, _Abort):
            context.abort(answer.code, answer.message)
        if answer.code not in ("OK", ""):
            context.abort(getattr(grpc.StatusCode, answer.code, grpc.StatusCode.UNKNOWN), answer.message)
        return answer

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Stream": grpc.stream_stream_rpc_method_handler(self.stream, response_serializer=pb.Ack.SerializeToString),
            "Publish": grpc.unary_unary_rpc_method_handler(self.publish, response_serializer=pb.Ack.SerializeToString),
        })


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


class Gateway:
    """A running gateway: the gRPC server, the health service and the sink."""

    def __init__(self, config: GatewayConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self.service = TelemetryService(config, sink)
        # A stream holds a server thread for its whole life (plus a reader thread). Calls beyond
        # max_streams are refused with RESOURCE_EXHAUSTED at once (emitters back off and retry;
        # a load balancer's health check sees a full gateway) instead of queueing unanswered.
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=config.max_streams, thread_name_prefix="runwire-gateway"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            maximum_concurrent_rpcs=config.max_streams,
        )
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.tls_cert_file:
            with open(config.tls_key_file, "rb") as key, open(config.tls_cert_file, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.port = self.server.add_secure_port(config.listen, credentials)
        else:
            self.port = self.server.add_insecure_port(config.listen)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {config.listen}")
        self._stopped = False

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> "Gateway":
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gateway listening on %s (mode %s, auth %s, tls %s)", self.address, self.config.mode,
                 "on" if self.config.tokens else "off", "on" if self.config.tls_cert_file else "off")
        if self.config.tokens and not self.config.tls_cert_file:
            log.warning("bearer tokens without TLS travel in plaintext: set tls_cert_file and tls_key_file")
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking streams, let open ones drain for `grace` seconds, close the sink. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)
        self.sink.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def create_gateway(config: GatewayConfig) -> Gateway:
    """The gateway for `config`, with a Kafka sink or (direct mode) a ClickHouse sink."""
    from runwire.ingest import sinks

    if config.mode == "kafka":
        sink = sinks.KafkaSink.create(config)
    else:
        sink = sinks.DirectSink.create(config)
    return Gateway(config, sink)

