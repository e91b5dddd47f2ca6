"""`runwire ui`: serve the web UI (runwire.storage.ui) on a ClickHouse store.

    runwire ui [--listen 127.0.0.1:8765] [--clickhouse-url URL] [--database DB]

Which ClickHouse: --clickhouse-url, else $RUNWIRE_CLICKHOUSE_URL, else the running local stack
(runwire.proto.localstack), else it brings the local stack up itself on the store (ClickHouse,
gateway and alerts, as `runwire up`), so training scripts started meanwhile log into it and
show up live. Tokens: RUNWIRE_TOKENS ("project=token,..."), as for the gateway.
"""

from __future__ import annotations

import os
import sys

from runwire.proto.config import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers) -> None:
    from runwire.storage.client import add_clickhouse_options

    p = subparsers.add_parser("ui", help="serve the web UI (runs, charts, compare, GPU fleet, alerts)")
    p.add_argument("--listen", default=None, help="host:port (default 127.0.0.1:8765; port 0 picks a free one)")
    add_clickhouse_options(p)
    p.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    from runwire.proto import localstack
    from runwire.proto.auth import parse_tokens
    from runwire.proto.config import build
    from runwire.storage.client import ClickHouseTarget, connect, redact
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import PortInUse, UIServer

    try:
        tokens = parse_tokens(os.environ.get("RUNWIRE_TOKENS", ""))
    except ValueError as exc:
        print(f"runwire ui: RUNWIRE_TOKENS=***: {exc}", file=sys.stderr)
        return EXIT_USAGE
    listen = args.listen or f"127.0.0.1:{localstack.DEFAULT_UI_PORT}"
    target = build(ClickHouseTarget, {"clickhouse_url": args.clickhouse_url, "clickhouse_database": args.database})
    url, database = target.clickhouse_url, target.clickhouse_database
    stack = None
    source = "given"
    if not url:
        record = localstack.read_record()
        if record and record.get("clickhouse_url"):
            url, database = record["clickhouse_url"], record.get("database", database)
            source = f"the local stack, pid {record['pid']} ({record['path']})"
    try:
        server = UIServer(None, listen)  # bind first: a port in use fails before anything starts
    except (PortInUse, ValueError) as exc:
        print(f"runwire ui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if not url:
            from runwire.deploy.local.stack import LocalStack

            stack = LocalStack.store(alerts=True).start()
            url, source = stack.clickhouse_url, f"the local store {stack.data_dir}, started here"
            print(stack.describe(), flush=True)
        connect(url, database, create=False).close()  # fail now, in one line, when it cannot be read
        server.set_app(create_app(lambda: connect(url, database, create=False, autogenerate_session_id=False),
                                  tokens=tokens))
        print(f"runwire ui: {server.url}  (ClickHouse {redact(url)} database {database}: {source}; "
              f"tokens {'on' if tokens else 'off'})", flush=True)
        server.serve_forever()
    except Exception as exc:  # noqa: BLE001 - start-up failures: one line, no traceback
        print(f"runwire ui: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        server.stop()
        if stack is not None:
            stack.stop()
    return EXIT_OK
