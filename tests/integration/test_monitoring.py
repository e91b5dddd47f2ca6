"""The pipeline's own health metrics through a real Kafka broker and ClickHouse server: a gateway
and an ingest worker, each serving /metrics, count what went through them; and every metric the
pipeline Grafana dashboard charts is one they serve."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from runwire.ingest.gateway import GatewayConfig, create_gateway
from runwire.ingest.monitoring import PipelineMetrics, worker_source
from runwire.ingest.worker import IngestConfig, create_worker
from runwire.storage.client import connect

pytestmark = [pytest.mark.infra, pytest.mark.timeout(240)]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "pipeline.json"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_until(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def pipeline(kafka_bootstrap, clickhouse_url):
    """A gateway and an ingest worker on unique topics and database, both serving /metrics."""
    suffix = uuid.uuid4().hex[:8]
    common = dict(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"m{suffix}.", topic_partitions=2)
    gateway = create_gateway(GatewayConfig.from_settings(listen="127.0.0.1:0", mode="kafka",
                                                         metrics_listen="127.0.0.1:0", **common)).start()
    config = IngestConfig.from_settings(clickhouse_url=clickhouse_url, clickhouse_database=f"mon_{suffix}",
                                        group_id=f"mon-{suffix}", batch_interval_s=0.1, **common)
    metrics = PipelineMetrics()
    worker = create_worker(config, metrics=metrics)
    metrics.add_source(worker_source([worker]))
    metrics.serve("127.0.0.1:0")
    thread = threading.Thread(target=worker.run, name="test-ingest", daemon=True)
    thread.start()
    client = connect(clickhouse_url, config.clickhouse_database)
    try:
        yield gateway, worker, metrics, config, client
    finally:
        worker.stop()
        thread.join(60)
        metrics.close()
        gateway.stop(grace=1)
        client.command(f"DROP DATABASE IF EXISTS {config.clickhouse_database}")
        client.close()


def test_gateway_and_worker_count_what_went_through_them(pipeline, kafka_bootstrap, tmp_path):
    import runwire

    gateway, worker, metrics, config, client = pipeline
    run = runwire.init(project="mon", gateway=gateway.address, gpu=False, spool_dir=str(tmp_path / "spool"),
                       flush_interval_s=0.05, batch_points=100)
    for step in range(1000):
        run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    summary = run.finish()
    assert summary["runwire.acked"] == summary["runwire.envelopes"]

    gw = scrape(gateway.metrics.port)
    assert gw['runwire_gateway_points_total{outcome="acked"}'] == 2000
    assert gw['runwire_gateway_envelopes_total{outcome="acked"}'] == summary["runwire.envelopes"]
    assert gw["runwire_gateway_ack_latency_seconds_count"] == summary["runwire.envelopes"]

    # A record the worker cannot decode goes to the dead-letter topic and is counted.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(f"{config.topic_prefix}metrics", b"not avro").get(timeout=30)
    producer.close()

    def settled():
        seen = scrape(metrics.port)
        stored = client.query("SELECT count() FROM metrics FINAL").result_rows[0][0]
        done = stored == 2000 and seen.get('runwire_ingest_records_total{outcome="dead_lettered"}') == 1 \
            and seen.get("runwire_ingest_rows_total", 0) >= 2000  # counted just after the insert returns
        return seen if done else None

    seen = wait_until(settled)
    assert seen, scrape(metrics.port)
    assert seen['runwire_ingest_records_total{outcome="decoded"}'] == summary["runwire.envelopes"]
    assert seen["runwire_ingest_rows_total"] >= 2000, seen
    assert seen["runwire_ingest_insert_seconds_count"] >= 1
    assert seen["runwire_ingest_insert_rows_sum"] == seen["runwire_ingest_rows_total"]
    lag = {k: v for k, v in seen.items() if k.startswith("runwire_ingest_consumer_lag{")}
    assert lag and all(v >= 0 for v in lag.values()), seen


def test_every_metric_on_the_pipeline_dashboard_is_served(pipeline):
    gateway, worker, metrics, config, client = pipeline
    served = set()
    for port in (gateway.metrics.port, metrics.port):  # every family, with samples yet or not
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split()
                    served |= {name.removesuffix("_total") + "_total"} if kind == "counter" else \
                        {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    # Families the alert engine adds in `runwire ingest` (not started here).
    served |= {"runwire_alerts_evaluations_total", "runwire_alerts_notifications_total"}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = set(re.findall(r"\b(runwire_[a-z_]+)", expr))
        assert names, expr
        for name in names:
            assert name in served, (name, expr)


def test_status_shows_every_component_and_fails_when_one_is_down(pipeline, kafka_bootstrap, clickhouse_url, tmp_path):
    import os
    import subprocess
    import sys

    import runwire

    gateway, worker, metrics, config, client = pipeline
    run = runwire.init(project="mon", gateway=gateway.address, gpu=False, spool_dir=str(tmp_path / "spool"))
    run.log({"loss": 1.0}, step=1)
    run.finish()
    wait_until(lambda: client.query("SELECT count() FROM metrics FINAL").result_rows[0][0] == 1)
    env = dict(os.environ, RUNWIRE_GATEWAY=gateway.address, RUNWIRE_KAFKA_BOOTSTRAP=kafka_bootstrap,
               RUNWIRE_CLICKHOUSE_URL=clickhouse_url, RUNWIRE_CLICKHOUSE_DATABASE=config.clickhouse_database,
               RUNWIRE_TOPIC_PREFIX=config.topic_prefix, RUNWIRE_GROUP_ID=config.group_id)

    def status():
        return subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "status"], capture_output=True, text=True,
                              timeout=120, env=env)

    healthy = wait_until(lambda: (lambda done: done if done.returncode == 0 else None)(status()), timeout=60)
    assert healthy, status().stdout
    lines = {line.split()[1]: line for line in healthy.stdout.splitlines()}
    assert set(lines) == {"gateway", "kafka", "ingest", "clickhouse"}
    assert "SERVING" in lines["gateway"] and f"{config.topic_prefix}metrics: 2 partitions" in lines["kafka"]
    assert "records not yet stored: metrics 0" in lines["ingest"]
    newest = max(int(p.name[:4]) for p in (Path(__file__).resolve().parents[2] / "storage" / "migrations").glob("*.sql"))
    assert f"schema {newest} of {newest}" in lines["clickhouse"]

    gateway.stop(grace=0.5)
    down = status()
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert next(line for line in down.stdout.splitlines() if " gateway " in line).startswith("BAD")
