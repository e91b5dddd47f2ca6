"""`runwire gateway` and `runwire ingest` (registered by runwire.deploy.cli; imports stay lazy)."""

from __future__ import annotations

import signal
import sys
import threading

from runwire.proto.config import EXIT_FAILURE, EXIT_OK
from runwire.storage.client import add_clickhouse_options


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
    from runwire.ingest.alerts import commands as alert_commands

    p = subparsers.add_parser("gateway", help="run the gRPC gateway (settings also from RUNWIRE_* variables)")
    p.add_argument("--listen", default=None, help="host:port (default $RUNWIRE_LISTEN, else 127.0.0.1:50051)")
    p.add_argument("--mode", choices=["kafka", "direct"], default=None, help="default $RUNWIRE_MODE, else kafka")
    add_kafka_options(p)
    add_clickhouse_options(p)  # direct mode
    p.add_argument("--tls-cert-file", default=None, help="PEM certificate chain (default $RUNWIRE_TLS_CERT_FILE)")
    p.add_argument("--tls-key-file", default=None, help="PEM private key (default $RUNWIRE_TLS_KEY_FILE)")
    p.add_argument("--metrics-listen", default=None,
                   help="host:port serving Prometheus /metrics (default $RUNWIRE_METRICS_LISTEN; empty: off)")
    p.set_defaults(func=cmd_gateway)

    p = subparsers.add_parser("ingest", help="run ingest workers: Kafka -> ClickHouse")
    add_kafka_options(p)
    add_clickhouse_options(p)
    p.add_argument("--group-id", default=None, help="consumer group (default $RUNWIRE_GROUP_ID, else runwire-ingest)")
    p.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    p.add_argument("--metrics-listen", default=None,
                   help="host:port serving Prometheus /metrics (default $RUNWIRE_METRICS_LISTEN; empty: off)")
    p.set_defaults(func=cmd_ingest)

    alert_commands.register(subparsers)


def add_kafka_options(parser) -> None:
    """--kafka-bootstrap, the same on every command that needs Kafka."""
    parser.add_argument("--kafka-bootstrap", default=None,
                        help="host:port[,host:port...] (default $RUNWIRE_KAFKA_BOOTSTRAP)")


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_gateway(args) -> int:
    from runwire.ingest.gateway import GatewayConfig, ListenError, create_gateway

    config = GatewayConfig.from_settings(listen=args.listen, mode=args.mode, kafka_bootstrap=args.kafka_bootstrap,
                                         clickhouse_url=args.clickhouse_url, clickhouse_database=args.database,
                                         tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                                         metrics_listen=args.metrics_listen)
    try:
        gateway = create_gateway(config).start()
    except ListenError as exc:
        print(f"runwire gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"runwire gateway listening on {gateway.address} ({config.mode} mode)", flush=True)
    wait_for_stop_signal()
    gateway.stop()
    return EXIT_OK


def cmd_ingest(args) -> int:
    from runwire.ingest.alerts.engine import AlertConfig, build_engine
    from runwire.ingest.worker import IngestConfig, create_worker
    from runwire.storage.client import connect

    config = IngestConfig.from_settings(kafka_bootstrap=args.kafka_bootstrap, clickhouse_url=args.clickhouse_url,
                                        clickhouse_database=args.database, group_id=args.group_id,
                                        metrics_listen=args.metrics_listen)
    # One alert engine per process, shared by its workers (observe() is thread-safe); periodic
    # rules (RUNWIRE_ALERT_PERIODIC) belong in one process of the cluster.
    alerts = build_engine(AlertConfig.from_settings(),
                          lambda: connect(config.clickhouse_url, config.clickhouse_database))
    metrics = None
    if config.metrics_listen:
        from runwire.ingest.monitoring import PipelineMetrics, alerts_source, worker_source

        metrics = PipelineMetrics()
    workers = [create_worker(config, observers=[alerts.observe], metrics=metrics) for _ in range(args.workers)]
    if metrics is not None:
        metrics.add_source(worker_source(workers))
        metrics.add_source(alerts_source(alerts))
        port = metrics.serve(config.metrics_listen)
        print(f"runwire ingest: metrics on http://{config.metrics_listen.rpartition(':')[0]}:{port}/metrics",
              flush=True)
    alerts.start()
    from runwire.ingest.liveness import Liveness  # dead ranks -> CRASHED, resumed -> RUNNING

    liveness = Liveness(connect(config.clickhouse_url, config.clickhouse_database)).start()
    threads = [threading.Thread(target=w.run, name=f"runwire-ingest-{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    print(f"runwire ingest: {len(workers)} worker(s) in group {config.group_id}", flush=True)
    wait_for_stop_signal()
    for w in workers:
        w.stop()
    for t in threads:
        t.join()
    liveness.stop()
    alerts.stop()
    if metrics is not None:
        metrics.close()
    return EXIT_OK
