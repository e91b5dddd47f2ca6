"""Property-based tests (Hypothesis) of the pure cores every input passes through: the wire
contract's character rule, validation, the Kafka codec, the filter grammar and the rules parser.
Each round-trips what is valid and answers anything else with its documented error only.

Time-boxed for `make test` (a few seconds each); `HYPOTHESIS_PROFILE=long` runs many more
examples (`make fuzz`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runwire import wire
from runwire.ingest import codec
from runwire.ingest.alerts.rules import RulesError, parse_rules
from runwire.ingest.validate import InvalidEnvelope, validate
from runwire.proto import contract
from runwire.proto import telemetry_pb2 as pb
from runwire.storage.filters import FilterError, parse_filter, parse_order_by

settings.register_profile("suite", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

names = st.text(min_size=1, max_size=40).filter(lambda s: contract.text_problem(s, 1, contract.MAX_NAME_LEN) is None)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
any_float = st.floats(allow_nan=True, allow_infinity=True)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- the contract's one character rule ----------------------------------------------------


@given(st.one_of(st.text(max_size=300), st.binary(max_size=10), st.integers(), st.none()))
def test_emitter_and_gateway_agree_on_every_metric_name(name):
    assert contract.valid_metric_name(name) == (contract.text_problem(name, 1, contract.MAX_NAME_LEN) is None)


# -- validation and the Kafka codec --------------------------------------------------------


@st.composite
def metric_envelopes(draw):
    batch_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    n = draw(st.integers(min_value=0, max_value=50))
    index = draw(st.lists(st.integers(0, len(batch_names) - 1), min_size=n, max_size=n))
    steps = draw(st.lists(int64, min_size=n, max_size=n))
    times = draw(st.lists(int64, min_size=n, max_size=n))
    values = draw(st.lists(any_float, min_size=n, max_size=n))
    identity = pb.Identity(project=draw(names.filter(lambda s: len(s) <= contract.MAX_ID_LEN)),
                           run_id=draw(names.filter(lambda s: len(s) <= contract.MAX_ID_LEN)),
                           rank=draw(st.integers(0, 7)), world_size=8, host="h", stream_id="s")
    envelope = pb.Envelope(seq=draw(st.integers(1, 2**63 - 1)), identity=identity)
    envelope.metrics.CopyFrom(wire.metric_batch(batch_names, index, steps, times, values))
    return envelope


@given(metric_envelopes())
def test_valid_metric_envelopes_round_trip_through_the_kafka_codec(envelope):
    validate(envelope)
    kind, _key, value = codec.encode_envelope(envelope, received_ns=1)
    decoded_kind, record = codec.decode(value)
    assert decoded_kind == kind == contract.METRICS
    columns = wire.metric_columns(envelope.metrics)
    assert list(record["names"]) == list(envelope.metrics.names)
    for column in contract.METRIC_COLUMNS:
        got = record[column].tolist()
        want = columns[column].tolist()
        assert len(got) == len(want)
        assert all(_same(a, b) for a, b in zip(got, want)), column
    assert record["project"] == envelope.identity.project and record["seq"] == envelope.seq


@given(st.binary(max_size=400))
def test_any_bytes_parsed_as_an_envelope_are_valid_or_named_invalid(raw):
    try:
        envelope = pb.Envelope.FromString(raw)
    except Exception:  # protobuf's DecodeError: the gateway answers INVALID_ARGUMENT
        return
    try:
        validate(envelope)
    except InvalidEnvelope as exc:
        assert str(exc).split(":")[0], "the error names the field"


@given(st.one_of(st.none(), st.binary(max_size=300)))
def test_any_kafka_value_decodes_or_is_a_poison_record(value):
    try:
        codec.decode(value)
    except codec.PoisonRecord:
        pass


@given(metric_envelopes(), st.data())
def test_a_corrupted_record_is_a_poison_record_never_another_error(envelope, data):
    _kind, _key, value = codec.encode_envelope(envelope, received_ns=1)
    position = data.draw(st.integers(10, max(10, len(value) - 1)))
    cut = data.draw(st.booleans())
    corrupted = value[:position] if cut else value[:position] + bytes([value[position] ^ 0xFF]) + value[position + 1:]
    try:
        codec.decode(corrupted)
    except codec.PoisonRecord:
        pass


# -- the filter grammar ----------------------------------------------------------------------

entities = st.sampled_from(["metrics", "params", "tags", "attributes"])
ops = st.sampled_from(["=", "!=", "<", ">", "<=", ">=", "LIKE", "ILIKE"])
keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[A-Za-z_][A-Za-z0-9_]{0,10}){0,2}", fullmatch=True)


@st.composite
def comparisons(draw):
    entity = draw(entities)
    if entity == "metrics":
        op = draw(st.sampled_from(["=", "!=", "<", ">", "<=", ">="]))
        number = draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
        return f"metrics.{draw(keys)} {op} {number!r}"
    if entity == "attributes":
        return f"attributes.status = '{draw(st.sampled_from(['RUNNING', 'FINISHED', 'FAILED']))}'"
    value = draw(st.text(alphabet=st.characters(blacklist_characters="'\\", blacklist_categories=["Cs"]), max_size=12))
    op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE"]))
    return f"{entity}.{draw(keys)} {op} '{value}'"


@given(st.lists(comparisons(), min_size=1, max_size=4), st.sampled_from([" and ", " AND ", " or "]))
def test_well_formed_filters_parse(parts, joiner):
    assert parse_filter(joiner.join(parts)) is not None


@given(st.text(max_size=120))
def test_any_filter_text_parses_or_raises_a_filter_error_with_a_caret(text):
    try:
        parse_filter(text)
    except FilterError as exc:
        assert str(exc)  # the message; the caret position is part of FilterError's rendering


@given(st.lists(st.text(max_size=40), max_size=3))
def test_any_order_by_parses_or_raises_a_filter_error(clauses):
    try:
        parse_order_by(clauses)
    except FilterError:
        pass


# -- the alert rules parser ------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=12), children,
                                                                               max_size=3)),
    max_leaves=12)
rule_fields = st.dictionaries(
    st.sampled_from(["kind", "severity", "enabled", "field", "op", "threshold", "clear", "for_s", "metrics",
                     "description", "window_s", "sql", "mask", "renotify_s", "bogus"]),
    json_values, max_size=6)


@given(st.dictionaries(st.sampled_from(["rules", "projects", "defaults", "other"]),
                       st.one_of(json_values, st.dictionaries(st.text(min_size=1, max_size=20), rule_fields,
                                                              max_size=3)),
                       max_size=3))
def test_any_rules_document_loads_or_raises_rules_error(document):
    try:
        parse_rules(document)
    except RulesError as exc:
        assert exc.errors, "a RulesError lists its problems"


@pytest.mark.parametrize("field", contract.GPU_FLOAT_FIELDS)
def test_every_gpu_float_field_is_a_valid_threshold_rule_field(field):
    rules = parse_rules({"rules": {"custom": {"kind": "gpu_threshold", "field": field, "op": ">=",
                                              "threshold": 1.0, "severity": "info"}}})
    assert rules.rules["custom"].field == field


def test_packed_column_sizes_match_numpy():
    for column in contract.METRIC_COLUMNS.values():
        assert np.dtype(column.dtype).itemsize == column.size
