"""Garbage at the gateway's gRPC port (Hypothesis): random and truncated bytes, valid envelopes
cut anywhere, nested unknown fields and a message over the size limit, on Publish and on a
Stream, between good envelopes. Every bad message gets a gRPC error or an INVALID_ARGUMENT ack,
never anything else; the gateway stays up; the good envelopes are acknowledged and reach the sink
exactly once."""

from __future__ import annotations

import itertools
import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runwire import wire
from runwire.ingest.gateway import MAX_MESSAGE_BYTES
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import PUBLISH_METHOD, STREAM_METHOD

from gateway_helpers import RecordingSink, start_gateway

EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 120
ANSWERS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
_STREAM_IDS = itertools.count()


def good(seq: int, stream_id: str) -> bytes:
    env = pb.Envelope(seq=seq, identity=pb.Identity(project="fuzz", run_id="r", rank=0, world_size=1, host="h",
                                                     pid=1, stream_id=stream_id))
    env.metrics.CopyFrom(wire.metric_batch(["loss"], [0], [seq], [1_700_000_000_000_000_000 + seq], [0.5]))
    return env.SerializeToString()


def nested_unknown_fields(depth: int) -> bytes:
    """A length-delimited unknown field nested `depth` times (protobuf parsers recurse on groups
    and messages; unknown length-delimited fields are skipped as bytes)."""
    payload = b""
    for _ in range(depth):
        payload = b"\xfa\x07" + _varint(len(payload)) + payload  # field 127, wire type 2
    return payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


garbage = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda raw, cut: raw[:cut], st.just(good(1, "x")), st.integers(0, 80)),
    st.builds(lambda raw, i, b: raw[:i] + bytes([b]) + raw[i + 1:], st.just(good(1, "x")), st.integers(0, 80),
              st.integers(0, 255)),
    st.builds(nested_unknown_fields, st.integers(1, 2000)),
)


@pytest.fixture(scope="module")
def fuzz_gateway():
    sink = RecordingSink()
    gw = start_gateway(sink)
    channel = grpc.insecure_channel(gw.address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES * 2)])
    yield gw, sink, channel
    channel.close()
    gw.stop(grace=0.5)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
@given(data=garbage)
def test_publish_answers_garbage_with_a_documented_error_and_stays_up(fuzz_gateway, data):
    gw, sink, channel = fuzz_gateway
    publish = channel.unary_unary(PUBLISH_METHOD, response_deserializer=pb.Ack.FromString)
    try:
        ack = publish(data, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ANSWERS, (exc.code(), exc.details())
    else:  # bytes that happen to parse and validate are a real envelope: acknowledged
        assert ack.code in ("", "OK")


@settings(max_examples=max(20, EXAMPLES // 6), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(garbage, min_size=1, max_size=5))
def test_a_stream_with_garbage_between_good_envelopes(fuzz_gateway, batch):
    gw, sink, channel = fuzz_gateway
    stream_id = f"s{next(_STREAM_IDS)}"  # one per example: each good envelope must be stored once
    requests = [good(1, stream_id)] + batch + [good(2, stream_id)]
    call = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Ack.FromString)(iter(requests), timeout=20)
    acks = []
    try:
        acks.extend(call)
    except grpc.RpcError as exc:  # malformed protobuf ends the stream with INVALID_ARGUMENT
        assert exc.code() in ANSWERS, (exc.code(), exc.details())
    for ack in acks:
        assert ack.code in ("", "OK", "INVALID_ARGUMENT"), ack
    assert acks and acks[0].seq == 1 and acks[0].code in ("", "OK")


def test_after_the_garbage_the_gateway_serves_and_stores_each_good_envelope_once(fuzz_gateway):
    gw, sink, channel = fuzz_gateway
    publish = channel.unary_unary(PUBLISH_METHOD, response_deserializer=pb.Ack.FromString)
    with pytest.raises(grpc.RpcError) as info:  # over the size limit: refused, nothing kept
        publish(b"\x00" * (MAX_MESSAGE_BYTES + 1), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    before = len(sink.snapshot())
    for seq in range(1, 51):
        assert publish(good(seq, "after"), timeout=10).code == "OK"
    records = [r for _, r in sink.snapshot()[before:]]
    assert sorted(r["seq"] for r in records if r["stream_id"] == "after") == list(range(1, 51))
    # Streams that started with a good envelope stored it once per stream id, never twice.
    firsts = [(r["stream_id"], int(r["steps"][0])) for _, r in sink.snapshot() if r["stream_id"].startswith("s")]
    assert len(firsts) == len(set(firsts))


# -- deeply nested and oversized messages (beyond random bytes) ---------------------------------

GROUP_START, GROUP_END = b"\xfb\x07", b"\xfc\x07"  # field 127, wire types 3 and 4 (unknown groups)


def nested_groups(depth: int, closed: bool) -> bytes:
    """Unknown groups nested `depth` deep: parsers recurse into groups (unlike length-delimited
    fields), so this is what tests a parser's recursion limit."""
    return GROUP_START * depth + (GROUP_END * depth if closed else b"")


def inside_identity(payload: bytes) -> bytes:
    """A good envelope whose Identity (field 2) also carries `payload` as unknown fields."""
    env = pb.Envelope.FromString(good(1, "nested"))
    ident = env.identity.SerializeToString() + payload
    env.ClearField("identity")
    return env.SerializeToString() + b"\x12" + _varint(len(ident)) + ident


DEEP = [nested_groups(100_000, closed=True), nested_groups(100_000, closed=False), nested_groups(1000, closed=True),
        b"[" * 100_000, inside_identity(nested_groups(10_000, closed=True)),
        inside_identity(nested_unknown_fields(5000))]


@pytest.mark.parametrize("payload", DEEP, ids=["groups-100k", "groups-100k-open", "groups-1k", "json-brackets",
                                               "groups-in-identity", "nested-fields-in-identity"])
def test_deeply_nested_messages_get_a_documented_answer(fuzz_gateway, payload):
    gw, sink, channel = fuzz_gateway
    publish = channel.unary_unary(PUBLISH_METHOD, response_deserializer=pb.Ack.FromString)
    try:
        ack = publish(payload, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
    else:  # parsed (unknown fields are legal protobuf): a real envelope, or one validation refuses
        assert ack.code in ("OK", "INVALID_ARGUMENT"), ack
    assert publish(good(1, f"after-deep-{len(payload)}"), timeout=10).code == "OK"


def test_an_oversized_message_ends_a_stream_with_resource_exhausted_and_the_next_stream_is_served(fuzz_gateway):
    gw, sink, channel = fuzz_gateway
    stream = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Ack.FromString)
    big = good(2, "big") + b"\xfa\x07" + _varint(MAX_MESSAGE_BYTES) + b"\x00" * MAX_MESSAGE_BYTES
    acks = []
    with pytest.raises(grpc.RpcError) as info:
        acks.extend(stream(iter([good(1, "big"), big, good(3, "big")]), timeout=60))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert [a.seq for a in acks] in ([], [1])  # the first may be acknowledged before the refusal
    acks = list(stream(iter([good(seq, "big-after") for seq in (1, 2, 3)]), timeout=30))
    assert [(a.seq, a.code) for a in acks] == [(1, "OK"), (2, "OK"), (3, "OK")]
    stored = [r["seq"] for _, r in sink.snapshot() if r["stream_id"] == "big-after"]
    assert sorted(stored) == [1, 2, 3]
