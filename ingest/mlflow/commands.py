"""`runwire mlflow-server` (the server's imports stay lazy: `runwire --help` must stay light)."""

from __future__ import annotations

import threading


def register(subparsers) -> None:
    """`runwire mlflow-server`."""
    p = subparsers.add_parser(
        "mlflow-server", help="serve MLflow's tracking REST API (settings also from RUNWIRE_* variables)",
        description="MLflow clients log into runwire with MLFLOW_TRACKING_URI=http://HOST:PORT.")
    p.add_argument("--listen", dest="mlflow_listen", default=None, help="host:port (RUNWIRE_MLFLOW_LISTEN, default "
                                                                       "127.0.0.1:5000)")
    p.add_argument("--mode", default=None, choices=["kafka", "direct"], help="RUNWIRE_MODE (default kafka)")
    p.add_argument("--kafka-bootstrap", default=None, help="RUNWIRE_KAFKA_BOOTSTRAP")
    p.add_argument("--clickhouse-url", default=None, help="RUNWIRE_CLICKHOUSE_URL")
    p.add_argument("--database", dest="clickhouse_database", default=None, help="RUNWIRE_CLICKHOUSE_DATABASE")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from runwire.config import ConfigError
    from runwire.ingest.mlflow.server import MlflowServerConfig, create_server

    try:
        config = MlflowServerConfig.from_settings(
            mlflow_listen=args.mlflow_listen, mode=args.mode, kafka_bootstrap=args.kafka_bootstrap,
            clickhouse_url=args.clickhouse_url, clickhouse_database=args.clickhouse_database)
        server = create_server(config).start()
    except (ConfigError, RuntimeError) as exc:
        print(f"runwire mlflow-server: {exc}", flush=True)
        return 2
    print(f"runwire MLflow API listening on {server.url} ({config.mode} mode)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
