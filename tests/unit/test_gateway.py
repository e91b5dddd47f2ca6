"""The gateway's gRPC surface: Publish and Stream over raw bytes, validation, auth, backpressure,
health and shutdown. A real grpc server on 127.0.0.1 over an in-memory sink (no Kafka)."""

from __future__ import annotations

import logging
import queue
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import runwire
from runwire import run as run_module
from runwire.ingest import codec
from runwire.proto.contract import PUBLISH_METHOD as PUBLISH, SERVICE_NAME, STREAM_METHOD as STREAM
from runwire import wire
from runwire.proto import telemetry_pb2 as pb

from gateway_helpers import RecordingSink, start_gateway

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"
GARBAGE = b"\xff\xff\xff\xff not a protobuf"


def envelope(seq: int = 1, project: str = "proj", n: int = 3, **identity) -> pb.Envelope:
    fields = dict(project=project, run_id="run-1", rank=0, world_size=1, host="h", pid=1, stream_id="s-1")
    fields.update(identity)
    env = pb.Envelope(seq=seq, identity=pb.Identity(**fields))
    env.metrics.CopyFrom(wire.metric_batch(
        ["loss", "lr"], [i % 2 for i in range(n)], list(range(n)), list(range(1000, 1000 + n)),
        [float("nan"), float("inf"), 0.5][:n] + [1.0] * max(0, n - 3)))
    return env


def ragged_envelope(seq: int = 1) -> pb.Envelope:
    env = envelope(seq)
    env.metrics.steps += wire.pack("steps", [99])  # one more step than values
    return env


def raw(env: pb.Envelope) -> bytes:
    return env.SerializeToString()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["aio", "threads"])
def server(request, monkeypatch):
    """Every gateway test runs against both servers: the same service, the same guarantees."""
    import gateway_helpers

    monkeypatch.setattr(gateway_helpers, "DEFAULT_SERVER", request.param)
    return request.param



@pytest.fixture
def auth_sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def auth_gateway(auth_sink):
    gw = start_gateway(auth_sink, tokens={"proj": TOKEN})
    yield gw
    gw.stop(grace=0.5)


def channel_to(gw):
    return grpc.insecure_channel(gw.address)


@pytest.fixture
def channel(gateway):
    with channel_to(gateway) as ch:
        yield ch


def publisher(ch):
    """Publish taking raw bytes, so tests can send anything."""
    return ch.unary_unary(PUBLISH, response_deserializer=pb.Ack.FromString)


class StreamClient:
    """One Stream call fed from a queue, with acks collected by a reader thread."""

    def __init__(self, ch, metadata=None) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._acks: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None

        def requests():
            while True:
                item = self._requests.get()
                if item is None:
                    return
                yield item

        self.call = ch.stream_stream(STREAM, response_deserializer=pb.Ack.FromString)(requests(), metadata=metadata)
        self._thread = threading.Thread(target=self._read, name="test-stream-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for ack in self.call:
                self._acks.put(ack)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self._acks.put(None)

    def send(self, data: bytes) -> None:
        self._requests.put(data)

    def next_ack(self, timeout: float = 10.0) -> pb.Ack | None:
        """The next ack, or None once the stream ended (see .error)."""
        return self._acks.get(timeout=timeout)

    def no_ack_within(self, seconds: float) -> bool:
        try:
            self._acks.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def streams():
    opened: list[StreamClient] = []

    def open_stream(ch, metadata=None) -> StreamClient:
        client = StreamClient(ch, metadata)
        opened.append(client)
        return client

    yield open_stream
    for client in opened:
        client.close()


# -- Publish -----------------------------------------------------------------------------


def test_publish_valid_envelope_is_acknowledged_and_reaches_the_sink(gateway, sink, channel):
    ack = publisher(channel)(raw(envelope(seq=7)), timeout=10)
    assert (ack.seq, ack.code) == (7, "OK")
    ((kind, record),) = sink.snapshot()
    assert kind == codec.METRICS
    assert (record["project"], record["run_id"], record["seq"]) == ("proj", "run-1", 7)
    assert record["names"] == ["loss", "lr"] and list(record["steps"]) == [0, 1, 2]
    assert list(record["values"])[1:] == [float("inf"), 0.5]
    assert gateway.service.counters["acked"] == 1


def test_publish_invalid_envelope_is_invalid_argument_naming_the_field(gateway, sink, channel):
    with pytest.raises(grpc.RpcError) as info:
        publisher(channel)(raw(ragged_envelope()), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metrics.steps" in info.value.details()
    assert sink.snapshot() == []


@pytest.mark.parametrize("data", [GARBAGE, b"\x12\x04\x0a\x02\xff\xfe", b""],
                         ids=["corrupt-wire-format", "bad-utf8-string", "empty"])
def test_publish_garbage_bytes_is_invalid_argument(gateway, sink, channel, data):
    with pytest.raises(grpc.RpcError) as info:
        publisher(channel)(data, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sink.snapshot() == []
    # The gateway is still serving.
    assert publisher(channel)(raw(envelope()), timeout=10).code == "OK"


# -- Stream ------------------------------------------------------------------------------


def test_stream_acknowledges_each_envelope_and_answers_invalid_ones_in_band(gateway, sink, channel, streams):
    stream = streams(channel)
    stream.send(raw(envelope(seq=1)))
    assert (stream.next_ack().seq, "OK") == (1, "OK")
    stream.send(raw(ragged_envelope(seq=2)))
    ack = stream.next_ack()
    assert (ack.seq, ack.code) == (2, "INVALID_ARGUMENT") and "metrics.steps" in ack.message
    stream.send(raw(envelope(seq=3)))
    ack = stream.next_ack()
    assert (ack.seq, ack.code) == (3, "OK")  # the stream goes on after an invalid envelope
    assert [r["seq"] for _, r in sink.snapshot()] == [1, 3]


def test_stream_garbage_bytes_abort_with_invalid_argument(gateway, sink, channel, streams):
    stream = streams(channel)
    stream.send(raw(envelope(seq=1)))
    assert stream.next_ack().code == "OK"
    stream.send(GARBAGE)
    assert stream.next_ack() is None
    assert stream.error is not None and stream.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in stream.error.details()
    assert [r["seq"] for _, r in sink.snapshot()] == [1]
    # Other callers are unaffected.
    assert publisher(channel)(raw(envelope(seq=2)), timeout=10).code == "OK"


def test_sink_error_code_reaches_the_client(gateway, sink, channel, streams):
    sink.decide = lambda kind, record: "UNAVAILABLE" if record["seq"] == 2 else None
    stream = streams(channel)
    for seq in (1, 2, 3):
        stream.send(raw(envelope(seq=seq)))
    acks = {ack.seq: ack.code for ack in (stream.next_ack() for _ in range(3))}
    assert acks == {1: "OK", 2: "UNAVAILABLE", 3: "OK"}
    with pytest.raises(grpc.RpcError) as info:
        publisher(channel)(raw(envelope(seq=2)), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_max_pending_exceeded_answers_resource_exhausted(sink, streams):
    sink.stall()
    gw = start_gateway(sink, max_pending=2)
    try:
        with channel_to(gw) as ch:
            stream = streams(ch)
            stream.send(raw(envelope(seq=1)))
            stream.send(raw(envelope(seq=2)))
            assert sink.wait_for(lambda s: len(s.held) == 2, timeout=10)
            stream.send(raw(envelope(seq=3)))
            ack = stream.next_ack()
            assert (ack.seq, ack.code) == (3, "RESOURCE_EXHAUSTED")
            assert stream.no_ack_within(0.2)  # 1 and 2 are still held
            sink.release()
            assert {stream.next_ack().seq, stream.next_ack().seq} == {1, 2}
            # Capacity is back once the sink answered.
            stream.send(raw(envelope(seq=4)))
            ack = stream.next_ack()
            assert (ack.seq, ack.code) == (4, "OK")
            assert gw.service._pending == 0
            stream.close()
    finally:
        sink.release()
        gw.stop(grace=0.5)


def test_streams_beyond_capacity_are_refused_at_once_and_the_emitter_gets_in_later(sink, streams, tmp_path):
    gw = start_gateway(sink, max_streams=2)
    try:
        with channel_to(gw) as ch:
            held = [streams(ch), streams(ch)]
            for i, stream in enumerate(held):
                stream.send(raw(envelope(seq=1, stream_id=f"held-{i}")))
                assert stream.next_ack().code == "OK"
            # A third stream is refused straight away rather than left waiting for a thread.
            extra = streams(ch)
            assert extra.next_ack(timeout=5) is None
            assert extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # An emitter that arrives now backs off and retries; once a stream ends, it delivers.
            before = sink.point_count()  # the held streams' points
            run = runwire.init(project="proj", gateway=gw.address, gpu=False, spool_dir=str(tmp_path / "spool"),
                               flush_interval_s=0.05, finish_timeout_s=20)
            run.log({"loss": 1.0}, step=1)
            time.sleep(0.5)
            assert sink.point_count() == before
            held[0].close()
            summary = run.finish()
            assert summary["runwire.unacked"] == 0 and summary["runwire.reconnects"] >= 1
            assert sink.point_count() == before + 1
    finally:
        gw.stop(grace=0.5)


# -- authentication ----------------------------------------------------------------------


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.mark.parametrize("metadata", [None, bearer("wrong"), bearer(""), [("authorization", TOKEN)]],
                         ids=["no-token", "wrong-token", "empty-token", "no-bearer-prefix"])
def test_publish_without_a_valid_token_is_unauthenticated(auth_gateway, auth_sink, metadata, caplog):
    caplog.set_level(logging.DEBUG)
    with channel_to(auth_gateway) as ch:
        with pytest.raises(grpc.RpcError) as info:
            publisher(ch)(raw(envelope()), metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in info.value.details()
    assert auth_sink.snapshot() == []
    assert TOKEN not in caplog.text


def test_stream_without_a_valid_token_is_unauthenticated(auth_gateway, auth_sink, streams):
    with channel_to(auth_gateway) as ch:
        for metadata in (None, bearer("wrong")):
            stream = streams(ch, metadata)
            stream.send(raw(envelope()))
            assert stream.next_ack() is None
            assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert auth_sink.snapshot() == []


def test_token_for_one_project_cannot_write_another(auth_gateway, auth_sink, streams, caplog):
    caplog.set_level(logging.DEBUG)
    with channel_to(auth_gateway) as ch:
        with pytest.raises(grpc.RpcError) as info:
            publisher(ch)(raw(envelope(project="other")), metadata=bearer(TOKEN), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "'other'" in info.value.details()
        stream = streams(ch, bearer(TOKEN))
        stream.send(raw(envelope(seq=1, project="other")))
        assert stream.next_ack() is None
        assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert auth_sink.snapshot() == []
    assert TOKEN not in caplog.text


def test_right_token_is_accepted(auth_gateway, auth_sink, streams, caplog):
    caplog.set_level(logging.DEBUG)
    with channel_to(auth_gateway) as ch:
        ack = publisher(ch)(raw(envelope(seq=1)), metadata=[("authorization", f"bearer  {TOKEN} ")], timeout=10)
        assert ack.code == "OK"
        stream = streams(ch, bearer(TOKEN))
        stream.send(raw(envelope(seq=2)))
        assert stream.next_ack().code == "OK"
    assert [r["seq"] for _, r in auth_sink.snapshot()] == [1, 2]
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(auth_gateway.config)


def test_emitter_token_end_to_end_and_never_logged(auth_gateway, auth_sink, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = dict(project="proj", gpu=False, spool_dir=str(tmp_path / "spool"), gateway=auth_gateway.address,
                    flush_interval_s=0.05)
    try:
        run = runwire.init(token=TOKEN, **settings)
        run.log({"loss": 1.0}, step=0)
        summary = run.finish(timeout=20)
        assert summary["runwire.unacked"] == 0
        assert ("loss", 0) in {(name, step) for _, name, step, _ in auth_sink.unique_points()}

        intruder = runwire.init(token="not-" + TOKEN, **settings)
        intruder.log({"loss": 2.0}, step=0)
        assert intruder.finish(timeout=0.5)["runwire.unacked"] >= 1
        assert any("UNAUTHENTICATED" in r.getMessage() for r in caplog.records if r.name == "runwire")
    finally:
        for run in list(run_module._live_runs):
            run.finish(timeout=0.5)
    assert TOKEN not in caplog.text
    assert len(auth_sink.points()) == 1


# -- health and lifecycle ----------------------------------------------------------------


def test_health_service_reports_serving(gateway, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_stop_is_idempotent_and_closes_the_sink_once():
    sink = RecordingSink()
    gw = start_gateway(sink)
    gw.stop(grace=0.2)
    gw.stop(grace=0.2)
    assert sink.close_calls == 1
    with grpc.insecure_channel(gw.address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            publisher(ch)(raw(envelope()), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_stop_with_an_open_stream_and_held_acks_returns_promptly(sink, streams):
    sink.stall()
    gw = start_gateway(sink)
    try:
        with channel_to(gw) as ch:
            stream = streams(ch)
            stream.send(raw(envelope(seq=1)))
            assert sink.wait_for(lambda s: len(s.held) == 1, timeout=10)
            began = time.monotonic()
            gw.stop(grace=0.2)
            assert time.monotonic() - began < 3
            assert stream.next_ack() is None  # the stream ended without acknowledging seq 1
    finally:
        sink.release()
        gw.stop(grace=0.2)


def test_a_second_gateway_on_the_same_port_is_refused_with_a_clear_error(gateway, sink, channel):
    """gRPC's SO_REUSEPORT default let two gateways share a port and split the streams."""
    from runwire.ingest.gateway import ListenError

    port = gateway.address.rsplit(":", 1)[1]
    second_sink = RecordingSink()
    with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}: the port is in use.*--listen"):
        start_gateway(second_sink, port=int(port))
    assert second_sink.close_calls == 1  # nothing of the refused gateway is left running
    # The first gateway still gets every call.
    for seq in range(1, 21):
        assert pb.Ack.FromString(channel.unary_unary(PUBLISH)(envelope(seq=seq).SerializeToString(), timeout=10)).code == "OK"
    assert len(sink.snapshot()) == 20


def _scrape(port: int) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_health_metrics_count_envelopes_points_streams_and_latency(sink, streams):
    gw = start_gateway(sink, metrics_listen="127.0.0.1:0")
    try:
        with channel_to(gw) as ch:
            stream = streams(ch)
            for seq in (1, 2):
                stream.send(raw(envelope(seq=seq, n=3)))
            stream.send(raw(ragged_envelope(seq=3)))
            codes = sorted(stream.next_ack().code for _ in range(3))
            assert codes == ["INVALID_ARGUMENT", "OK", "OK"]
            port = gw.metrics.port
            deadline = time.monotonic() + 10
            while True:  # the open stream is counted once its handler runs
                seen = _scrape(port)
                if seen.get("runwire_gateway_open_streams") == 1.0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert seen["runwire_gateway_open_streams"] == 1.0
            assert seen['runwire_gateway_envelopes_total{outcome="acked"}'] == 2
            assert seen['runwire_gateway_envelopes_total{outcome="rejected"}'] == 1
            assert seen['runwire_gateway_points_total{outcome="acked"}'] == 6
            assert seen["runwire_gateway_ack_latency_seconds_count"] == 2
            stream.close()
        deadline = time.monotonic() + 10
        while _scrape(port).get("runwire_gateway_open_streams") != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _scrape(port)["runwire_gateway_open_streams"] == 0.0
    finally:
        gw.stop(grace=0.5)


def _idle_stream_survives(sink, streams, min_ping_interval_ms: int) -> bool:
    """A stream that pings every second (as the emitter does every KEEPALIVE_TIME_MS) and sends
    nothing for 6 s: is it still open and answering? (gRPC's client normally throttles pings
    without data to one a minute after two; max_pings_without_data=0 lifts that, so the GOAWAY
    a real idle emitter met after ~2.5 minutes comes within seconds here.)"""
    gw = start_gateway(sink, min_ping_interval_ms=min_ping_interval_ms)
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.http2.max_pings_without_data", 0)]
    try:
        with grpc.insecure_channel(gw.address, options=options) as ch:
            stream = streams(ch)
            stream.send(raw(envelope(seq=1)))
            assert stream.next_ack().code == "OK"
            if not stream.no_ack_within(6.0):  # None: the stream ended
                return False
            stream.send(raw(envelope(seq=2)))
            ack = stream.next_ack()
            return ack is not None and ack.code == "OK"
    finally:
        gw.stop(grace=0.2)


def test_keepalive_pings_of_an_idle_emitter_are_accepted(sink, streams):
    from runwire.ingest.gateway import GatewayConfig
    from runwire.proto.contract import KEEPALIVE_TIME_MS

    # The emitter's interval passes the gateway's default limit, with room to spare.
    assert GatewayConfig().min_ping_interval_ms <= KEEPALIVE_TIME_MS // 2
    # Scaled down 20x: the same ratio keeps an idle stream open ...
    assert _idle_stream_survives(sink, streams, min_ping_interval_ms=500)
    # ... where gRPC's default (5 minutes) ends it with GOAWAY "too_many_pings".
    assert not _idle_stream_survives(sink, streams, min_ping_interval_ms=300_000)
