"""`runwire mlflow-server` (registered by runwire.deploy.cli; the server's imports stay lazy). It lives in
deploy because it opens the artifact store and the registry, which ingest does not import."""

from __future__ import annotations

from runwire.proto.config import EXIT_OK
from runwire.storage.client import add_clickhouse_options


def register(subparsers) -> None:
    """Add `runwire mlflow-server` to the `runwire` parser."""
    from runwire.ingest.commands import add_kafka_options

    p = subparsers.add_parser(
        "mlflow-server", help="serve MLflow's tracking REST API (settings also from RUNWIRE_* variables)",
        description="MLflow clients log into runwire with MLFLOW_TRACKING_URI=http://HOST:PORT "
                    "(MLFLOW_TRACKING_TOKEN: a token of RUNWIRE_TOKENS).")
    p.add_argument("--listen", dest="mlflow_listen", default=None,
                   help="host:port (default $RUNWIRE_MLFLOW_LISTEN, else 127.0.0.1:5000)")
    p.add_argument("--mode", choices=["kafka", "direct"], default=None, help="default $RUNWIRE_MODE, else kafka")
    add_kafka_options(p)
    add_clickhouse_options(p)
    p.add_argument("--default-artifact-root", default=None,
                   help="new experiments' artifact location root (default $RUNWIRE_DEFAULT_ARTIFACT_ROOT, "
                        "else mlflow-artifacts:/, served from the artifact store)")
    p.add_argument("--artifact-store", default=None,
                   help="artifact store: directory or s3://bucket/prefix (default $RUNWIRE_ARTIFACT_STORE)")
    p.add_argument("--registry", default=None, help="model registry SQLite file (default $RUNWIRE_REGISTRY)")
    p.set_defaults(func=cmd_mlflow_server)


def cmd_mlflow_server(args) -> int:
    from runwire.ingest.commands import wait_for_stop_signal
    from runwire.deploy.mlflow_backends import create_server
    from runwire.ingest.mlflow.server import MlflowServerConfig

    config = MlflowServerConfig.from_settings(
        mlflow_listen=args.mlflow_listen, mode=args.mode, kafka_bootstrap=args.kafka_bootstrap,
        clickhouse_url=args.clickhouse_url, clickhouse_database=args.database,
        default_artifact_root=args.default_artifact_root, artifact_store=args.artifact_store,
        registry=args.registry)
    server = create_server(config).start()
    print(f"runwire MLflow API listening on {server.url} ({config.mode} mode)", flush=True)
    wait_for_stop_signal()
    server.stop()
    return EXIT_OK
