"""Garbage at every HTTP endpoint runwire serves (Hypothesis): the web UI (storage/ui), the
MLflow-compatible API (ingest/mlflow) and the Prometheus /metrics listener (ingest/monitoring),
each served for real on a loopback port over a real ClickHouse.

Routes come from the servers' own route tables, so a new route is fuzzed without touching this
file. Requests are written byte by byte on a socket (no client library tidies them up): random
bytes, truncated requests, unknown methods, absurd paths and query strings (``../``, percent
escapes, NUL, huge numbers), wrong content types, random, truncated, oversized and deeply nested
JSON bodies. Every answer must be a well-formed HTTP response, never 5xx, never a traceback,
errors in the server's documented error body; the server answers good requests before, during
and after. ``make fuzz`` runs many more examples (``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
EXAMPLES = int(os.environ.get("RUNWIRE_FUZZ_EXAMPLES", 1500 if LONG else 60))
IO_TIMEOUT_S = 20  # an answer slower than this is a hang


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, raw: bytes, complete: bool = True) -> Answer | None:
    """Send `raw` and read the whole answer (we ask for "Connection: close"). An incomplete
    request gets half a second, then we close our side: the server must then answer or close.
    None: the server closed without answering (fine for a request that never completed).
    AssertionError on a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (e.g. 400) and closed before reading everything
        chunks = []
        if not complete:
            sock.settimeout(0.5)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                if sock.gettimeout() == IO_TIMEOUT_S:
                    raise AssertionError(f"no answer within {IO_TIMEOUT_S} s to {raw[:200]!r}") from None
                sock.settimeout(IO_TIMEOUT_S)
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    break
                continue
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return None
    return parse(data, raw)


def parse(data: bytes, raw: bytes) -> Answer:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"not an HTTP response: {data[:300]!r} to {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0])
    assert match, f"bad status line {lines[0]!r} to {raw[:200]!r}"
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon and name and name.strip() == name, f"bad header line {line!r}"
        headers[name.lower()] = value.strip()
    if raw.startswith(b"HEAD ") and body != PROTOCOL_ERROR:  # the headers of a GET, no body
        assert not body, body[:200]
    elif "content-length" in headers:
        assert len(body) >= int(headers["content-length"]), (headers, len(body))
        body = body[:int(headers["content-length"])]
    elif headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Answer(int(match.group(1)), headers, body)


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2:]


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


# -- the servers and their route tables ---------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    routes: list[str]                              # paths, "{param}" where the route takes one
    documented: Callable[[str, Answer], None]      # asserts an error answer has the documented body
    good: Callable[[], None]                       # a good request, answered as it should be
    known: list[str]                               # ids that exist (a run, an experiment): deeper paths


def starlette_paths(routes, prefix: str = "") -> list[str]:
    """Every path in a Starlette route table (Mounts walked), with the parameters as {name}."""
    from starlette.routing import Mount, Route

    out = []
    for route in routes:
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", prefix + route.path)
        if isinstance(route, Mount):
            out += starlette_paths(route.routes or [], path) or [path + "/{file}"]
        elif isinstance(route, Route):
            out.append(path)
    return out


def json_body(answer: Answer) -> dict:
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = json.loads(answer.body)
    assert isinstance(body, dict), body
    return body


PROTOCOL_ERROR = b"Invalid HTTP request received."  # uvicorn's answer before any route is reached


def ui_documented(path: str, answer: Answer) -> None:
    if answer.body == PROTOCOL_ERROR:
        return
    if path.startswith("/api/"):  # app.py: {"error": message}
        assert isinstance(json_body(answer).get("error"), str), answer
    else:  # the page and its static files: Starlette's plain-text "Not Found" and friends
        assert answer.headers.get("content-type", "").startswith("text/plain"), answer


def mlflow_documented(path: str, answer: Answer) -> None:
    if answer.body == PROTOCOL_ERROR:
        return
    body = json_body(answer)  # MLflow's {"error_code", "message"}
    assert isinstance(body.get("error_code"), str) and isinstance(body.get("message"), str), body


def metrics_documented(path: str, answer: Answer) -> None:
    pass  # prometheus-client's http.server: its own short error page, no contract beyond the status


def http_get(port: int, path: str) -> Answer:
    answer = exchange(port, request("GET", path))
    assert answer is not None and answer.status == 200, (path, answer)
    return answer


@pytest.fixture(scope="module")
def servers(clickhouse_url, tmp_path_factory):
    from runwire.deploy.mlflow_backends import create_server
    from runwire.ingest.mlflow.server import MlflowServerConfig
    from runwire.ingest.monitoring import PipelineMetrics
    from runwire.storage.client import connect
    from runwire.storage.schema import migrate
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import UIServer

    database = f"fuzz_http_{uuid.uuid4().hex[:8]}"
    client = connect(clickhouse_url, database)
    migrate(client)
    app = create_app(lambda: connect(clickhouse_url, database, create=False, autogenerate_session_id=False))
    ui = UIServer(app, "127.0.0.1:0").start()
    mlflow = create_server(MlflowServerConfig.from_settings(
        mlflow_listen="127.0.0.1:0", mode="direct", clickhouse_url=clickhouse_url,
        clickhouse_database=database, artifact_store=str(tmp_path_factory.mktemp("fuzz-artifacts")),
        registry=str(tmp_path_factory.mktemp("fuzz-registry") / "registry.db"))).start()
    metrics = PipelineMetrics()
    metrics.serve("127.0.0.1:0")
    experiment = mlflow.service.ensure_default_experiment()
    created = exchange(mlflow.port, request("POST", "/api/2.0/mlflow/runs/create", b'{"experiment_id": "0"}'))
    known = [json_body(created)["run"]["info"]["run_id"], "0", "Default"]

    def mlflow_good() -> None:
        answer = http_get(mlflow.port, "/api/2.0/mlflow/experiments/get?experiment_id=0")
        assert json_body(answer)["experiment"]["name"] == "Default", (experiment, answer)

    try:
        yield [
            Server("ui", ui.port, starlette_paths(app.routes), ui_documented,
                   lambda: json_body(http_get(ui.port, "/api/v1/projects"))["projects"], known),
            Server("mlflow", mlflow.port, starlette_paths(mlflow._server.config.app.routes), mlflow_documented,
                   mlflow_good, known),
            # prometheus-client has no route table: it serves the registry on every path.
            Server("metrics", metrics.port, ["/metrics"], metrics_documented,
                   lambda: b"runwire_ingest_insert_seconds" in http_get(metrics.port, "/metrics").body, known),
        ]
    finally:
        metrics.close()
        mlflow.stop()
        ui.stop()
        client.command(f"DROP DATABASE IF EXISTS {database}")
        client.close()


# -- what is thrown at them -------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW", "G\x01T", ""]
CONTENT_TYPES = ["application/json", "text/plain", "multipart/form-data; boundary=x",
                 "application/x-www-form-urlencoded", "application/json; charset=utf-16", "\x7f/\x00"]
huge_numbers = st.sampled_from(["9" * 400, "-9" * 40, "1e999", "-1e999", "NaN", "inf", "0x10", "1_000",
                                str(2**63), str(-(2**63) - 1), str(2**64), "-0", "٣"])
segments = st.one_of(st.sampled_from(["..", "%2e%2e", "%2F", "%00", "%ff", "%", "%zz", "~", "//", "a" * 5000,
                                      "run%20id", "%C0%AE", "\u00e9".encode().decode("latin-1")]),
                     huge_numbers, st.text(st.characters(codec="ascii", exclude_characters=" \r\n?#"),
                                           max_size=30))
query_values = st.one_of(huge_numbers, segments, st.text(max_size=50).map(lambda s: quote(s, safe="")))


@st.composite
def paths(draw, routes: list[str], known: list[str]) -> str:
    path = draw(st.sampled_from(routes))
    path = re.sub(r"\{\w+\}", lambda _: draw(st.one_of(segments, st.sampled_from(known))), path)
    mutation = draw(st.sampled_from(["none", "prefix", "suffix", "traversal", "double", "case"]))
    if mutation == "prefix":
        path = "/" + draw(segments) + path
    elif mutation == "suffix":
        path = path.rstrip("/") + "/" + "/".join(draw(st.lists(segments, max_size=4)))
    elif mutation == "traversal":
        path = path + "/../" * draw(st.integers(1, 40)) + draw(st.sampled_from(["etc/passwd", "", "%2e%2e/"]))
    elif mutation == "double":
        path = path.replace("/", "//")
    elif mutation == "case":
        path = path.upper()
    keys = st.sampled_from(["run", "run_id", "project", "filter", "limit", "offset", "buckets", "lo", "hi", "x",
                            "metric", "max_results", "experiment_id", "experiment_ids", "page_token", "run_ids",
                            "metric_key", "start_step", "end_step", "window_s", "state", "desc", "sort", "name"])
    values = st.one_of(query_values, st.sampled_from(known))
    pairs = draw(st.lists(st.tuples(st.one_of(keys, segments), values), max_size=6))
    if pairs:
        path += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    return path


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def json_values(known: list[str]):
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False),
                  st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=20), huge_numbers,
                  st.sampled_from(known)),
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(st.one_of(field_names, st.text(max_size=10)), children, max_size=4)),
        max_leaves=12)


field_names = st.sampled_from(["experiment_id", "run_id", "run_uuid", "name", "key", "value", "timestamp", "step",
                               "metrics", "params", "tags", "max_results", "page_token", "experiment_ids",
                               "filter", "order_by", "start_time", "end_time", "status", "run_ids", "metric_key",
                               "datasets", "new_name", "max_results", "start_step", "end_step"])
def bodies(known: list[str]):
    values = json_values(known)
    objects = st.dictionaries(field_names, values, max_size=6).map(lambda d: json.dumps(d).encode())
    numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(), huge_numbers, values)
    entries = st.fixed_dictionaries({"key": st.one_of(st.text(max_size=300), values), "value": numbers},
                                    optional={"timestamp": numbers, "step": numbers})
    # What the write endpoints take (log-batch, log-metric, log-parameter, set-tag...), filled with
    # absurd values for a run that exists, so requests get past the run lookup.
    writes = st.fixed_dictionaries(
        {"run_id": st.one_of(st.sampled_from(known), values)},
        optional={"metrics": st.lists(entries, max_size=5), "params": st.lists(entries, max_size=5),
                  "tags": st.lists(entries, max_size=5), "key": values, "value": numbers, "timestamp": numbers,
                  "step": numbers, "experiment_id": st.one_of(st.sampled_from(known), values)},
    ).map(lambda d: json.dumps(d).encode())
    return st.one_of(
        st.just(b""),
        st.binary(max_size=3000),
        objects, writes, writes,
        objects.filter(len).flatmap(lambda d: st.integers(0, len(d) - 1).map(lambda cut: d[:cut])),
        st.builds(nested, st.sampled_from([1000, 100_000]), st.sampled_from(["list", "dict"])),
        st.just(b'{"metrics": [' + b'{"key": "k", "value": 1, "timestamp": 1, "step": 1},' * 20_000 + b'{}]}'),
        st.just(b'"' + b"x" * 2_000_000 + b'"'),
    )


@st.composite
def http_requests(draw, server: Server) -> tuple[bytes, bool]:
    """(raw request, whether it is a complete HTTP request)."""
    shape = draw(st.sampled_from(["request", "request", "request", "bytes", "truncated", "bad-length"]))
    if shape == "bytes":
        return draw(st.binary(min_size=1, max_size=2000)), False
    method = draw(st.one_of(st.just("POST"), st.just("GET"), st.sampled_from(METHODS)))
    headers = {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
    raw = request(method, draw(paths(server.routes, server.known)), draw(bodies(server.known)), headers)
    if shape == "truncated":
        return raw[:draw(st.integers(0, len(raw) - 1))], False
    if shape == "bad-length":
        bad = draw(st.sampled_from([b"-", b"9" * 30, b"x"]))
        return raw.replace(b"Content-Length: ", b"Content-Length: " + bad, 1), False
    return raw, True


def check(server: Server, raw: bytes, complete: bool) -> None:
    answer = exchange(server.port, raw, complete)
    if answer is None:
        return
    text = answer.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    assert answer.status < 500, (server.name, raw[:300], answer.status, text[:500])
    if answer.status >= 400 and answer.body:  # (HEAD: no body)
        target = raw.split(b" ")[1].decode("latin-1") if raw.count(b" ") >= 2 else ""
        server.documented(target, answer)


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


# Requests that found bugs (each was a 500, a traceback or a hang before its fix), replayed on
# every run before the random ones.
REGRESSIONS: dict[str, list[bytes]] = {
    "ui": [  # Starlette's plain-text 405, not the API's {"error"}
        b"POST /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ],
    "mlflow": [  # json's RecursionError became INTERNAL_ERROR (500)
        request("POST", "/api/2.0/mlflow/runs/log-batch", nested(100_000, "list"), {"Content-Type": "application/json"}),
        request("POST", "/api/2.0/mlflow/experiments/create", nested(100_000, "dict")),
    ],
    "metrics": [
        b"\x00", b"GET /metrics\r\n\r\n",  # HTTP/0.9 answers: a bare body, no status line
        request("HEAD", "/metrics"),  # a 405 with a body: the client reads it as the next response
    ],
}


@pytest.mark.parametrize("name", ["ui", "mlflow", "metrics"])
def test_every_endpoint_answers_garbage_with_a_documented_4xx_and_keeps_serving(servers, name):
    server = next(s for s in servers if s.name == name)
    server.good()
    sent = [0]

    @FUZZ_SETTINGS
    @given(sent_request=http_requests(server))
    def fuzz(sent_request):
        check(server, *sent_request)
        sent[0] += 1
        if sent[0] % 10 == 0:  # good traffic during the garbage
            server.good()

    for raw in REGRESSIONS[name]:
        fuzz = example(sent_request=(raw, raw.endswith(b"\r\n\r\n")))(fuzz)
    fuzz()
    server.good()
