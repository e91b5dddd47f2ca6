"""`runwire up`, `runwire demo`, `runwire migrate` and `runwire ui` (registered by runwire.deploy.cli)."""

from __future__ import annotations

import sys

from runwire.proto.config import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from runwire.storage.client import add_clickhouse_options


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
    p = subparsers.add_parser("demo", help="run a simulated multi-node training job on the embedded stack")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of simulated training (default 20)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=2)
    p.add_argument("--data-dir", default=None,
                   help="where ClickHouse keeps its data (default: the local store, $RUNWIRE_HOME, else "
                        "~/.local/share/runwire, where `runwire ui` finds it)")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("up", help="run a local stack (ClickHouse via chDB, gateway, ingest) until Ctrl-C")
    p.add_argument("--kafka", action="store_true", help="also run a local Kafka broker and go through it")
    p.add_argument("--listen", default=None, help="gateway address (default 127.0.0.1:50051)")
    p.add_argument("--data-dir", default=None,
                   help="keep the data here instead of the local store ($RUNWIRE_HOME, else ~/.local/share/runwire); "
                        "such a stack is not recorded for other commands")
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("status", help="a deployment's health: gateway, Kafka topics, ingest lag, ClickHouse",
                              description="Exit status 0 when every component is healthy, 1 otherwise.")
    p.add_argument("--gateway", default=None, help="host:port (default $RUNWIRE_GATEWAY, else 127.0.0.1:50051)")
    p.add_argument("--kafka-bootstrap", default=None, help="default $RUNWIRE_KAFKA_BOOTSTRAP")
    add_clickhouse_options(p)
    p.add_argument("--group-id", default=None, help="the ingest consumer group (default $RUNWIRE_GROUP_ID)")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("migrate", help="create or upgrade the ClickHouse schema")
    add_clickhouse_options(p)
    p.add_argument("--ttl-days", type=int, default=None, help="raw time-series retention (0 removes it)")
    p.set_defaults(func=cmd_migrate)

    from runwire.deploy import sizing, ui

    ui.register(subparsers)
    sizing.register(subparsers)


def cmd_up(args) -> int:
    from runwire.deploy.local.stack import LocalStack
    from runwire.ingest.commands import wait_for_stop_signal
    from runwire.ingest.gateway import ListenError

    try:
        if args.data_dir:
            stack = LocalStack(data_dir=args.data_dir, kafka=args.kafka,
                               gateway_listen=args.listen or "127.0.0.1:50051", alerts=True).start()
        else:
            try:
                stack = LocalStack.store(gateway_listen=args.listen, kafka=args.kafka, alerts=True)
            except RuntimeError as exc:
                print(f"runwire up: {exc}", file=sys.stderr)
                return EXIT_USAGE
    except ListenError as exc:
        print(f"runwire up: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        print(stack.describe(), flush=True)
        if stack.record:
            print(f"store:      {stack.data_dir}  (commands and emitters find this stack by themselves)", flush=True)
        wait_for_stop_signal()
    finally:
        stack.stop()
    return EXIT_OK


def cmd_demo(args) -> int:
    from runwire.deploy.local.demo import run_demo

    return run_demo(duration_s=args.duration, nodes=args.nodes, ranks_per_node=args.ranks_per_node,
                    data_dir=args.data_dir)


def cmd_status(args) -> int:
    from runwire.deploy.status import StatusConfig, build, collect, render

    config = build(StatusConfig, {"gateway": args.gateway, "kafka_bootstrap": args.kafka_bootstrap,
                                  "clickhouse_url": args.clickhouse_url, "clickhouse_database": args.database,
                                  "group_id": args.group_id})
    checks = collect(config)
    print(render(checks))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILURE


def cmd_migrate(args) -> int:
    from runwire.storage.client import clickhouse_target, connect_from_args, redact
    from runwire.storage.schema import migrate

    target = clickhouse_target(args)
    applied = migrate(connect_from_args(args, create=True), ttl_days=args.ttl_days)
    print(f"{redact(target.clickhouse_url)}/{target.clickhouse_database}: applied {applied or 'nothing (up to date)'}")
    return EXIT_OK
