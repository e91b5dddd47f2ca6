"""Fixtures' helpers for the MLflow API tests: runwire's MLflow server on a real Kafka broker and a
real ClickHouse (LocalStack's ingest worker), and a real `mlflow server` (sqlite) as the reference."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid

import requests

from runwire.deploy.local.stack import LocalStack
from runwire.deploy.mlflow_backends import create_server
from runwire.ingest.mlflow.server import MlflowServerConfig


def wait_for(check, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll ``check()`` until it returns something other than None or False; that value, or
    AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last is not None and last is not False:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


@contextlib.contextmanager
def runwire_mlflow(kafka_bootstrap: str, clickhouse_url: str, data_dir: str, tokens: dict | None = None):
    """(server, stack): runwire's MLflow API writing through Kafka, ingested into a fresh database."""
    suffix = uuid.uuid4().hex[:8]
    database = f"mlflow_{suffix}"
    stack = LocalStack(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                       database=database, topic_prefix=f"mlf{suffix}.", group_id=f"mlf-{suffix}")
    with stack:
        assert stack.mode == "kafka"
        config = MlflowServerConfig.from_settings(
            mlflow_listen="127.0.0.1:0", mode="kafka", kafka_bootstrap=stack.kafka_bootstrap,
            topic_prefix=f"mlf{suffix}.", topic_partitions=1, clickhouse_url=clickhouse_url,
            clickhouse_database=database, tokens=tokens or {}, artifact_store=f"{data_dir}/artifacts",
            registry=f"{data_dir}/registry.db")
        server = create_server(config).start()
        try:
            yield server, stack
        finally:
            server.stop()
    stack.client().command(f"DROP DATABASE IF EXISTS {database}")  # after the ingest worker stopped


@contextlib.contextmanager
def tracking_uri(url: str, monkeypatch):
    """The fluent API pointed at ``url`` (as MLFLOW_TRACKING_URI would), reset after. The active
    experiment is cleared before and after: `mlflow.set_experiment` keeps it in a module global
    and in os.environ, so a later test's `start_run()` would look for it on another server."""
    import mlflow

    def forget_experiment():
        mlflow.tracking.fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    forget_experiment()
    try:
        yield url
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        forget_experiment()
        mlflow.set_tracking_uri(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_reference_server(data_dir: str, timeout: float = 120.0):
    """A real `mlflow server` (sqlite backend, local artifacts) on a free port; its URL."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{data_dir}/mlflow.db", "--artifacts-destination", f"{data_dir}/artifacts",
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(f"{data_dir}/mlflow-server.log", "wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {open(f'{data_dir}/mlflow-server.log').read()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not become healthy")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
