"""The `runwire` command. Server-side subcommands import their dependencies lazily, so the
emitter's install stays light."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def _install_stop_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def cmd_gateway(args) -> int:
    from runwire.ingest.gateway import GatewayConfig, create_gateway

    config = GatewayConfig.from_settings(listen=args.listen, mode=args.mode, kafka_bootstrap=args.kafka_bootstrap,
                                         clickhouse_url=args.clickhouse_url, tls_cert_file=args.tls_cert_file,
                                         tls_key_file=args.tls_key_file)
    gateway = create_gateway(config).start()
    print(f"runwire gateway listening on {gateway.address} ({config.mode} mode)", flush=True)
    stop = threading.Event()
    _install_stop_signals(stop)
    stop.wait()
    gateway.stop()
    return 0


def cmd_ingest(args) -> int:
    from runwire.ingest.alerts.engine import AlertConfig, build_engine
    from runwire.ingest.worker import IngestConfig, create_worker
    from runwire.storage.client import connect

    config = IngestConfig.from_settings(kafka_bootstrap=args.kafka_bootstrap, clickhouse_url=args.clickhouse_url,
                                        group_id=args.group_id)
    # One alert engine per process, shared by its workers (observe() is thread-safe); periodic
    # rules (RUNWIRE_ALERT_PERIODIC) belong in one process of the cluster.
    alerts = build_engine(AlertConfig.from_settings(),
                          lambda: connect(config.clickhouse_url, config.clickhouse_database))
    workers = [create_worker(config, observers=[alerts.observe]) for _ in range(args.workers)]
    alerts.start()
    threads = [threading.Thread(target=w.run, name=f"runwire-ingest-{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    print(f"runwire ingest: {len(workers)} worker(s) in group {config.group_id}", flush=True)
    stop = threading.Event()
    _install_stop_signals(stop)
    stop.wait()
    for w in workers:
        w.stop()
    for t in threads:
        t.join()
    alerts.stop()
    return 0


def cmd_migrate(args) -> int:
    from runwire.storage.client import connect, redact
    from runwire.storage.schema import migrate

    applied = migrate(connect(args.clickhouse_url, args.database), ttl_days=args.ttl_days)
    print(f"{redact(args.clickhouse_url)}/{args.database}: applied {applied or 'nothing (up to date)'}")
    return 0


def cmd_sync(args) -> int:
    from runwire.sync import sync

    delivered, rejected, left = sync(args.spool_dir, args.gateway, args.token, tls=args.tls,
                                     tls_ca_file=args.tls_ca_file)
    print(f"delivered {delivered} envelopes, rejected {rejected}, left {left}")
    return 0 if left == 0 else 1


def cmd_up(args) -> int:
    from runwire.deploy.local.stack import LocalStack

    if args.data_dir:
        stack = LocalStack(data_dir=args.data_dir, kafka=args.kafka, gateway_listen=args.listen or "127.0.0.1:50051",
                           alerts=True)
    else:
        try:
            stack = LocalStack.store(gateway_listen=args.listen, kafka=args.kafka, alerts=True)
        except RuntimeError as exc:
            print(f"runwire up: {exc}", file=sys.stderr)
            return 2
    with stack:
        print(stack.describe(), flush=True)
        if stack.record:
            print(f"store:      {stack.data_dir}  (commands and emitters find this stack by themselves)", flush=True)
        stop = threading.Event()
        _install_stop_signals(stop)
        stop.wait()
    return 0


def cmd_demo(args) -> int:
    from runwire.deploy.local.demo import run_demo

    return run_demo(duration_s=args.duration, nodes=args.nodes, ranks_per_node=args.ranks_per_node,
                    data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runwire", description="Telemetry pipeline for ML training runs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a simulated multi-node training job on the embedded stack")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of simulated training (default 20)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=2)
    p.add_argument("--data-dir", default=None,
                   help="where ClickHouse keeps its data (default: the local store, $RUNWIRE_HOME, else "
                        "~/.local/share/runwire, where `runwire ui` finds it)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="run a local stack (ClickHouse via chDB, gateway, ingest) until Ctrl-C")
    p.add_argument("--kafka", action="store_true", help="also run a local Kafka broker and go through it")
    p.add_argument("--listen", default=None, help="gateway address (default 127.0.0.1:50051)")
    p.add_argument("--data-dir", default=None,
                   help="keep the data here instead of the local store ($RUNWIRE_HOME, else ~/.local/share/runwire); "
                        "such a stack is not recorded for other commands")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("gateway", help="run the gRPC gateway (settings also from RUNWIRE_* variables)")
    p.add_argument("--listen", default=None, help="host:port (RUNWIRE_LISTEN, default 127.0.0.1:50051)")
    p.add_argument("--mode", choices=["kafka", "direct"], default=None, help="RUNWIRE_MODE, default kafka")
    p.add_argument("--kafka-bootstrap", default=None, help="RUNWIRE_KAFKA_BOOTSTRAP")
    p.add_argument("--clickhouse-url", default=None, help="direct mode: RUNWIRE_CLICKHOUSE_URL")
    p.add_argument("--tls-cert-file", default=None, help="PEM certificate chain (RUNWIRE_TLS_CERT_FILE)")
    p.add_argument("--tls-key-file", default=None, help="PEM private key (RUNWIRE_TLS_KEY_FILE)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("ingest", help="run ingest workers: Kafka -> ClickHouse")
    p.add_argument("--kafka-bootstrap", default=None, help="RUNWIRE_KAFKA_BOOTSTRAP")
    p.add_argument("--clickhouse-url", default=None, help="RUNWIRE_CLICKHOUSE_URL")
    p.add_argument("--group-id", default=None, help="RUNWIRE_GROUP_ID, default runwire-ingest")
    p.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema")
    p.add_argument("--clickhouse-url", required=True)
    p.add_argument("--database", default="runwire")
    p.add_argument("--ttl-days", type=int, default=None, help="raw time-series retention (0 removes it)")
    p.set_defaults(func=cmd_migrate)

    # Command groups of the server side register themselves (their imports stay lazy).
    from runwire.storage import commands as storage_commands
    from runwire.ingest.alerts import commands as alert_commands

    from runwire.deploy import ui as ui_command

    storage_commands.register(sub)
    alert_commands.register(sub)
    ui_command.register(sub)

    p = sub.add_parser("sync", help="deliver envelopes left in a spool directory")
    p.add_argument("spool_dir")
    p.add_argument("--gateway", default=None, help="host:port (RUNWIRE_GATEWAY)")
    p.add_argument("--token", default=None, help="bearer token (RUNWIRE_TOKEN)")
    p.add_argument("--tls", action="store_true", default=None, help="connect with TLS (RUNWIRE_TLS)")
    p.add_argument("--tls-ca-file", default=None, help="CA bundle in PEM (RUNWIRE_TLS_CA_FILE)")
    p.set_defaults(func=cmd_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as exc:
        from runwire.config import ConfigError

        if isinstance(exc, ConfigError):
            print(f"runwire: configuration error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
