"""`runwire mlflow-server`: MLflow's tracking REST API as an ASGI app (Starlette) on uvicorn.

Point an unmodified MLflow script at it with ``MLFLOW_TRACKING_URI=http://HOST:PORT`` (and
``MLFLOW_TRACKING_TOKEN`` when the server has tokens: the gateway's, project -> token).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

import orjson

from runwire.proto.config import build, secret
from runwire.ingest.mlflow import protocol as P
from runwire.ingest.mlflow.protocol import MlflowError
from runwire.ingest.mlflow.service import MlflowService

log = logging.getLogger("runwire.mlflow")

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")

# path (after the prefix) -> service method. GET and POST are both accepted on every path.
ROUTES = {
    "/experiments/create": "create_experiment",
    "/experiments/get": "get_experiment",
    "/experiments/get-by-name": "get_experiment_by_name",
    "/experiments/search": "search_experiments",
    "/experiments/update": "update_experiment",
    "/experiments/delete": "delete_experiment",
    "/experiments/restore": "restore_experiment",
    "/experiments/set-experiment-tag": "set_experiment_tag",
    "/runs/create": "create_run",
    "/runs/get": "get_run",
    "/runs/update": "update_run",
    "/runs/delete": "delete_run",
    "/runs/restore": "restore_run",
    "/runs/search": "search_runs",
    "/runs/log-metric": "log_metric",
    "/runs/log-batch": "log_batch",
    "/runs/log-parameter": "log_param",
    "/runs/set-tag": "set_tag",
    "/runs/delete-tag": "delete_tag",
    "/runs/log-inputs": "log_inputs",
    "/runs/outputs": "log_outputs",
    "/metrics/get-history": "get_metric_history",
    "/metrics/get-history-bulk-interval": "get_metric_history_bulk_interval",
}
ARTIFACTS_PATH = "/api/2.0/mlflow-artifacts/artifacts"  # the proxy (also under /ajax-api)
# Query-string fields that repeat (GET requests carry lists as repeated keys).
_LIST_FIELDS = {"run_ids", "experiment_ids", "order_by", "stages"}


@dataclass(frozen=True)
class MlflowServerConfig:
    """MLflow API server settings; each also reads RUNWIRE_<NAME> (e.g. RUNWIRE_MLFLOW_LISTEN).
    The pipeline settings are the gateway's (same variables)."""

    mlflow_listen: str = "127.0.0.1:5000"    # host:port; port 0 picks a free one
    mode: str = "kafka"                      # "kafka" (production) or "direct" (embedded: no Kafka)
    kafka_bootstrap: str = ""
    topic_prefix: str = "runwire."
    topic_partitions: int = 6
    topic_replication: int = 0               # 0: 3, or the brokers when fewer (kafka_io.replication_for)
    clickhouse_url: str = ""                 # reads (and direct-mode writes)
    clickhouse_database: str = "runwire"
    ttl_days: int | None = None              # direct mode's raw time-series retention, as the gateway's
    tokens: dict[str, str] = secret(default_factory=dict)  # project -> bearer token; empty: no auth
    ack_timeout_s: float = 30.0              # how long a write waits for the pipeline's acknowledgement
    default_artifact_root: str = ""          # new experiments' artifacts go under ROOT/<id> (as `mlflow server
                                             # --default-artifact-root`); empty: mlflow-artifacts:/<id>, served
                                             # by this server from the artifact store below
    artifact_store: str = ""                 # the emitter's artifact store (directory, file:///path or
                                             # s3://bucket/prefix); default ~/.local/share/runwire/artifacts
    artifact_s3_endpoint_url: str = ""       # S3 endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)
    registry: str = ""                       # the model registry's SQLite file; default
                                             # ~/.local/share/runwire/registry.db

    def problems(self) -> list[str]:
        from runwire.ingest.gateway import sink_problems

        out = sink_problems(self)
        if not self.clickhouse_url:
            out.append("clickhouse_url (RUNWIRE_CLICKHOUSE_URL) is required: the MLflow API reads runs from it")
        if self.mlflow_listen.rpartition(":")[1] != ":":
            out.append(f"mlflow_listen must be host:port, not {self.mlflow_listen!r}")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "MlflowServerConfig":
        return build(cls, overrides)


def _request_body(method: str, raw: bytes, query) -> dict:
    if method == "GET":
        body: dict = {}
        for key in query.keys():
            values = query.getlist(key)
            body[key] = values if key in _LIST_FIELDS else values[-1]
        return body
    if not raw.strip():
        return {}
    try:
        body = _loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MlflowError("MALFORMED_REQUEST", "Malformed request: the body is not JSON") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise MlflowError("MALFORMED_REQUEST", "Malformed request: the JSON body is nested too deeply") from None
    if not isinstance(body, dict):
        raise MlflowError("MALFORMED_REQUEST", "Malformed request: the body must be a JSON object")
    return body


def _loads(raw: bytes):
    """orjson (a 1,000-metric log_batch parses ~5x faster); what it refuses but Python's json
    reads (bare NaN / Infinity literals, integers beyond 64 bits) falls back to json."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _dumps(result) -> bytes:
    try:
        return orjson.dumps(result)
    except TypeError:  # an integer beyond 64 bits: only Python's json writes it
        return json.dumps(result).encode()


def create_app(service: MlflowService):
    """The Starlette app serving ``service`` under MLflow's paths (and its ``artifacts`` proxy and
    ``registry`` endpoints when the service has them)."""
    import shutil
    import tempfile
    from pathlib import PurePosixPath

    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from runwire.ingest.mlflow import logged_models, registry as registry_routes

    def error(exc: MlflowError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def answer(name: str, call) -> Response:
        try:
            result = await call()
        except MlflowError as exc:
            return error(exc)
        except Exception:  # a bug or a storage failure: MLflow's INTERNAL_ERROR, logged here
            log.exception("MLflow %s failed", name)
            return error(MlflowError("INTERNAL_ERROR", f"{name} failed; see the server log"))
        return result if isinstance(result, Response) else Response(_dumps(result), media_type="application/json")

    def endpoint(handlers: dict):
        async def call(request):
            handler = handlers.get(request.method)
            if handler is None:
                return await not_found(request, None)

            async def run():
                raw = await request.body()
                body = {**_request_body(request.method, raw, request.query_params), **request.path_params}
                allowed = service.allowed_projects(request.headers.get("authorization"))
                return await run_in_threadpool(handler, body, raw, allowed)

            return await answer(handler.__name__, run)

        return call

    async def artifact(request):
        proxy = service.artifacts
        path = request.path_params.get("path")

        async def run():
            if proxy is None:
                raise MlflowError("ENDPOINT_NOT_FOUND", "this server has no artifact store")
            allowed = service.allowed_projects(request.headers.get("authorization"))
            if path is None:  # GET ?path=: list
                return await run_in_threadpool(proxy.list, request.query_params.get("path"), allowed)
            if request.method == "GET":
                tmp, dest = await run_in_threadpool(proxy.download, path, allowed)
                return FileResponse(dest, filename=PurePosixPath(path).name,
                                    background=BackgroundTask(shutil.rmtree, tmp, True))
            if request.method == "DELETE":
                return await run_in_threadpool(proxy.delete, path, allowed)
            if request.method != "PUT":  # HEAD (Starlette adds it to GET routes): no body to send
                raise MlflowError("ENDPOINT_NOT_FOUND", f"No endpoint {request.method} {request.url.path}")
            tmp = tempfile.mkdtemp(prefix="runwire-mlflow-")
            try:  # the body to a file as it arrives (a model can be larger than memory)
                dest = f"{tmp}/{PurePosixPath(path).name or 'artifact'}"
                with open(dest, "wb") as out:
                    async for chunk in request.stream():
                        await run_in_threadpool(out.write, chunk)
                return await run_in_threadpool(proxy.upload, path, dest, allowed)
            finally:
                await run_in_threadpool(shutil.rmtree, tmp, True)

        return await answer(f"{request.method} mlflow-artifacts", run)

    async def list_run_artifacts(request):
        async def run():
            if service.artifacts is None:
                raise MlflowError("ENDPOINT_NOT_FOUND", "this server has no artifact store")
            body = _request_body(request.method, await request.body(), request.query_params)
            allowed = service.allowed_projects(request.headers.get("authorization"))
            return await run_in_threadpool(service.artifacts.list_for_run, P.run_id_of(body), body.get("path"), allowed)

        return await answer("artifacts/list", run)

    async def health(request):
        return PlainTextResponse("OK")

    async def not_found(request, exc):
        return error(MlflowError("ENDPOINT_NOT_FOUND", f"No endpoint {request.method} {request.url.path}"))

    routes = [Route(prefix + path, endpoint({"GET": getattr(service, name), "POST": getattr(service, name)}),
                    methods=["GET", "POST"])
              for prefix in PREFIXES for path, name in ROUTES.items()]
    routes += [Route(prefix + path, endpoint({m: getattr(service.logged_models, n) for m, n in methods.items()}),
                     methods=list(methods))
               for prefix in PREFIXES for path, methods in logged_models.ROUTES.items()]
    if service.registry is not None:
        routes += [Route(prefix + path, endpoint({m: getattr(service.registry, n) for m, n in methods.items()}),
                         methods=list(methods))
                   for prefix in PREFIXES for path, methods in registry_routes.ROUTES.items()]
    for base in (ARTIFACTS_PATH, ARTIFACTS_PATH.replace("/api/", "/ajax-api/", 1)):
        routes.append(Route(base, artifact, methods=["GET"]))
        routes.append(Route(base + "/{path:path}", artifact, methods=["GET", "PUT", "DELETE"]))
    routes += [Route(prefix + "/artifacts/list", list_run_artifacts, methods=["GET"]) for prefix in PREFIXES]
    routes.append(Route("/health", health))
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def bind(listen: str) -> socket.socket:
    """A listening socket on host:port. No SO_REUSEPORT: a port in use is refused (EADDRINUSE)."""
    host, _, port = listen.rpartition(":")
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets whose proto says TCP, and with
    # Nagle on, the response's body waited for the client's delayed ACK: 40 ms per request.
    sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    try:
        sock.bind((host.strip("[]") or "127.0.0.1", int(port)))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


class MlflowServer:
    """A running MLflow API server: the socket, uvicorn on its own thread, the service and its sink."""

    def __init__(self, service: MlflowService, listen: str, sink=None, client=None, closers=()) -> None:
        import uvicorn

        self.service = service
        self._sink, self._client = sink, client
        self._closers = list(closers)  # more to close at stop (the artifact store's connections)
        self.socket = bind(listen)
        host, self.port = self.socket.getsockname()[:2]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name="runwire-mlflow-http", daemon=True)
        self._stopped = False

    def start(self, timeout: float = 30.0) -> "MlflowServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MLflow API server did not start")
            time.sleep(0.01)
        log.info("MLflow API listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, then close the sink (flushing what it holds). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.socket.close()
        if self._sink is not None:
            self._sink.close()
        if self._client is not None:
            self._client.close()
        for close in self._closers:
            close()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_server(config: MlflowServerConfig, sink=None, artifact_backend=None, registry=None) -> MlflowServer:
    """The server for ``config``: the gateway's sink (Kafka, or direct into ClickHouse) unless one
    is given, reads through RunQueries. Applies pending migrations. ``artifact_backend`` and
    ``registry`` (the training side's store and registry, which ingest does not import: see
    runwire.deploy.mlflow_backends) enable the mlflow-artifacts proxy and the registry endpoints."""
    from runwire.ingest import sinks
    from runwire.storage.client import connect
    from runwire.storage.mlflow_meta import MlflowMetaWriter
    from runwire.storage.query import RunQueries
    from runwire.storage.schema import migrate

    # One session per request, not one shared session: requests run concurrently.
    client = connect(config.clickhouse_url, config.clickhouse_database, autogenerate_session_id=False)
    migrate(client)
    own_sink = sink is None
    if own_sink:
        sink = sinks.KafkaSink.create(config) if config.mode == "kafka" else sinks.DirectSink.create(config)
    service = MlflowService(RunQueries(client), MlflowMetaWriter(client), sink, config.tokens,
                            ack_timeout_s=config.ack_timeout_s, artifact_root=config.default_artifact_root)
    if artifact_backend is not None:
        from runwire.ingest.mlflow.artifacts import ArtifactProxy

        service.artifacts = ArtifactProxy(service, artifact_backend)
    if registry is not None:
        from runwire.ingest.mlflow.registry import MlflowRegistry

        service.registry = MlflowRegistry(service, registry, service.artifacts)
    service.ensure_default_experiment()
    closers = [artifact_backend.close] if hasattr(artifact_backend, "close") else []
    return MlflowServer(service, config.mlflow_listen, sink if own_sink else None, client, closers)
