"""The pure parts of runwire's MLflow API: request fields -> envelopes, sampling, page tokens,
and the listening socket."""

from __future__ import annotations

import math
import socket

import pytest

from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.server import bind
from runwire.ingest.mlflow.service import sample_bulk_interval
from runwire.ingest.validate import validate
from runwire.wire import metric_columns


def test_metric_points_become_one_valid_metric_envelope():
    metrics = [{"key": "loss", "value": 0.5, "timestamp": 1000, "step": 3},
               {"key": "acc", "value": "NaN", "timestamp": "1001"},
               {"key": "loss", "value": "-Infinity", "timestamp": 1002, "step": "4"}]
    ident = P.identity("proj", "run", P.stream_id("batch", "run", b"{}"))
    envelope = P.metric_envelope(ident, 1, P.metric_points(metrics))
    validate(envelope)
    columns = metric_columns(envelope.metrics)
    assert list(envelope.metrics.names) == ["loss", "acc"]
    assert list(columns["name_index"]) == [0, 1, 0] and list(columns["steps"]) == [3, 0, 4]
    assert list(columns["timestamps_ns"]) == [1000 * 10**6, 1001 * 10**6, 1002 * 10**6]
    values = list(columns["values"])
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2] == -math.inf


@pytest.mark.parametrize("metric, message", [
    ({"key": "loss", "timestamp": 1}, "invalid value None"),
    ({"key": "loss", "value": "high", "timestamp": 1}, "expected a number"),
    ({"key": "loss", "value": 1.0}, "invalid timestamp None"),
    ({"key": "bad\nname", "value": 1.0, "timestamp": 1}, "Invalid metric name"),
    ({"key": "x" * 251, "value": 1.0, "timestamp": 1}, "exceeded length limit of 250"),
    ({"key": "loss", "value": 1.0, "timestamp": 1, "step": 1.5}, "expected an integer"),
])
def test_bad_metrics_are_invalid_parameter_values(metric, message):
    with pytest.raises(P.MlflowError) as err:
        P.metric_points([metric])
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.status == 400
    assert message in err.value.message


def test_a_retried_request_gets_the_same_stream_id():
    assert P.stream_id("batch", "r1", b'{"a": 1}') == P.stream_id("batch", "r1", b'{"a": 1}')
    assert P.stream_id("batch", "r1", b'{"a": 1}') != P.stream_id("batch", "r1", b'{"a": 2}')
    assert P.stream_id("batch", "r1", b"x") != P.stream_id("batch", "r2", b"x")


def test_page_tokens_round_trip_and_reject_garbage():
    assert P.decode_page_token(P.encode_page_token(2500)) == 2500
    assert P.decode_page_token(None) == 0 and P.decode_page_token("") == 0
    with pytest.raises(P.MlflowError):
        P.decode_page_token("not-a-token")


def test_long_experiment_names_get_a_valid_project():
    assert P.project_for("speech") == "speech"
    long = P.project_for("x" * 300)
    assert len(long) <= P.MAX_PROJECT_LENGTH and long != P.project_for("x" * 299)


def test_run_end_exit_codes_show_terminal_states_in_runwire():
    ident = P.identity("p", "r", "s")
    assert P.run_end(ident, "FINISHED", 5).run_end.exit_code == 0
    assert P.run_end(ident, "KILLED", 5).run_end.exit_code != 0


def _points(steps):
    return [{"step": s, "timestamp": 100 + s, "value": float(s)} for s in steps]


def test_bulk_interval_sampling_keeps_bucket_firsts_and_the_last_point():
    sampled = sample_bulk_interval(_points(range(40)), 7, None, None)
    # NTILE(7) over 40 rows: five buckets of 6, two of 5; the last point replaces the 7th first.
    assert [p["step"] for p in sampled] == [0, 6, 12, 18, 24, 30, 39]
    assert [p["step"] for p in sample_bulk_interval(_points(range(5)), 7, None, None)] == [0, 1, 2, 3, 4]
    assert [p["step"] for p in sample_bulk_interval(_points(range(10)), 3, 2, 6)] == [2, 4, 6]
    assert sample_bulk_interval([], 5, None, None) == []


def test_a_port_in_use_is_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="cannot listen"):
            bind(f"127.0.0.1:{port}")
    sock = bind("127.0.0.1:0")
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_experiments_sort_as_mlflow_orders_them():
    from runwire.ingest.mlflow.service import _sort_experiments

    rows = [{"experiment_id": i, "name": n, "creation_time": t, "last_update_time": t}
            for i, n, t in (("10", "b", 5), ("2", "ab", 5), ("3", "a", 7))]
    _sort_experiments(rows, [])
    assert [r["experiment_id"] for r in rows] == ["3", "2", "10"]  # newest first, then id as a number
    _sort_experiments(rows, ["name DESC"])
    assert [r["name"] for r in rows] == ["b", "ab", "a"]
    with pytest.raises(P.MlflowError):
        _sort_experiments(rows, ["colour ASC"])
