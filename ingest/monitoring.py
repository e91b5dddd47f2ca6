"""The pipeline's own health as Prometheus metrics (`/metrics`, prometheus-client).

Components keep plain counters (gateway service, ingest workers and their batch writer, the
alert engine and its notifiers); a collector reads them when Prometheus scrapes, so the hot path
pays nothing for it. Latencies are histograms observed where they happen. Served on
`metrics_listen` (RUNWIRE_METRICS_LISTEN, e.g. 127.0.0.1:9464; off when empty) by `runwire
gateway` and `runwire ingest`; deploy/grafana/dashboards/pipeline.json charts them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import socket
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Seconds: from an envelope's arrival at the gateway to its sink's acknowledgement (Kafka's
# acks=all in production), and one ClickHouse insert.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROWS_BUCKETS = (100, 1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)


class PipelineMetrics:
    """One process's metrics: its registry, the histograms components observe into, and the
    counter sources read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ack_latency = Histogram(
            "runwire_gateway_ack_latency_seconds", "Envelope arrival to the sink's acknowledgement (Kafka's ack)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.insert_latency = Histogram(
            "runwire_ingest_insert_seconds", "One ClickHouse insert of a batch", buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.insert_rows = Histogram(
            "runwire_ingest_insert_rows", "Rows in one ClickHouse insert", buckets=ROWS_BUCKETS, registry=self.registry)
        self._sources: list[Callable[[], Iterable]] = []
        self._lock = threading.Lock()
        self.registry.register(_Collector(self))
        self._server = None

    def add_source(self, source: Callable[[], Iterable]) -> None:
        """`source()` yields metric families at every scrape."""
        with self._lock:
            self._sources.append(source)

    def families(self) -> Iterable:
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            yield from source()

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (port 0: a free one); returns the port."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(host, int(port), _head_as_get(make_wsgi_app(self.registry)), Server, handler_class=_Handler)
        threading.Thread(target=self._server.serve_forever, name="runwire-metrics", daemon=True).start()
        self.port = self._server.server_port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _head_as_get(app):
    """HEAD answered as GET without the body: prometheus-client refuses HEAD with a 405 that
    carries a body, which wsgiref sends, and a client then reads it as the next response."""

    def wsgi(environ, start_response):
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        answered = []
        body = b"".join(app(dict(environ, REQUEST_METHOD="GET"), lambda *args: answered.append(args)))
        status, headers = answered[-1][:2]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return []

    return wsgi


class _Handler(WSGIRequestHandler):
    """prometheus-client's server (http.server) answers a request line without an HTTP version
    as HTTP/0.9: a bare body, no status line, which no scraper or proxy can read. Every answer
    here is a full HTTP/1.x response; requests are not logged (as prometheus-client's)."""

    default_request_version = "HTTP/1.0"

    def log_message(self, format, *args) -> None:
        pass


class _Collector:
    def __init__(self, metrics: PipelineMetrics) -> None:
        self._metrics = metrics

    def collect(self):
        yield from self._metrics.families()


def _counter(name: str, doc: str, label: str, values: dict[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family


def gateway_source(service, open_streams: Callable[[], int]) -> Callable[[], Iterable]:
    """Metric families of a gateway's TelemetryService."""

    def families():
        c = dict(service.counters)
        yield _counter("runwire_gateway_envelopes", "Envelopes by outcome: received, acked, rejected (invalid or "
                       "unauthorised), failed (the sink refused), busy (RESOURCE_EXHAUSTED)", "outcome",
                       {k: c.get(k, 0) for k in ("received", "acked", "rejected", "failed", "busy")})
        yield _counter("runwire_gateway_points", "Metric points and GPU samples by outcome", "outcome",
                       {"acked": c.get("points_acked", 0), "rejected": c.get("points_rejected", 0),
                        "failed": c.get("points_failed", 0)})
        gauge = GaugeMetricFamily("runwire_gateway_open_streams", "Emitter streams open now")
        gauge.add_metric([], float(open_streams()))
        yield gauge
        gauge = GaugeMetricFamily("runwire_gateway_pending_envelopes", "Envelopes handed to the sink, not yet acked")
        gauge.add_metric([], float(getattr(service, "_pending", 0)))
        yield gauge

    return families


def worker_source(workers: list) -> Callable[[], Iterable]:
    """Metric families of ingest workers (their counters and consumer lag)."""

    def families():
        totals: dict[str, float] = {}
        lag = GaugeMetricFamily("runwire_ingest_consumer_lag", "Records behind the end of each partition",
                                labels=["topic", "partition"])
        for worker in workers:
            for key, value in dict(worker.counters).items():
                totals[key] = totals.get(key, 0) + value
            for (topic, partition), behind in dict(getattr(worker, "lag", {})).items():
                lag.add_metric([topic, str(partition)], float(behind))
        yield _counter("runwire_ingest_records", "Kafka records by outcome: decoded, dead-lettered", "outcome",
                       {"decoded": totals.get("records", 0) - totals.get("dead_letters", 0),
                        "dead_lettered": totals.get("dead_letters", 0)})
        yield _counter("runwire_ingest_inserts", "ClickHouse inserts by outcome", "outcome",
                       {"ok": totals.get("inserts", 0), "retried": totals.get("retries", 0),
                        "rejected_rows": totals.get("rejected", 0)})
        rows = CounterMetricFamily("runwire_ingest_rows", "Rows inserted into ClickHouse")
        rows.add_metric([], float(totals.get("rows", 0)))
        yield rows
        yield lag

    return families


def alerts_source(engine) -> Callable[[], Iterable]:
    """Metric families of an alert engine and its notifiers."""

    def families():
        stats = engine.stats()
        yield _counter("runwire_alerts_evaluations", "Alert evaluations: records observed on the stream, periodic "
                       "rule runs, evaluation errors", "kind",
                       {"stream_records": stats.get("observed", 0),
                        "periodic": stats.get("periodic", {}).get("evaluations", 0),
                        "errors": stats.get("evaluation_errors", 0) + stats.get("periodic", {}).get("errors", 0)})
        notified = CounterMetricFamily("runwire_alerts_notifications", "Notifications by notifier and outcome",
                                       labels=["notifier", "outcome"])
        for name, counters in stats.get("notifiers", {}).items():
            for outcome in ("sent", "failed", "dropped", "retries"):
                notified.add_metric([name, outcome], float(counters.get(outcome, 0)))
        yield notified

    return families
