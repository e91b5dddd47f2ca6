"""`runwire report RUN... -o report.html` and `write_report` (thin I/O: the query library in,
one file out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from runwire.storage.report.data import load_report_data
from runwire.storage.report.page import render_report


def write_report(client, run_ids: Sequence[str], path, metrics: Sequence[str] | None = None) -> Path:
    """Write the report comparing `run_ids` to `path` (parent folders are created); returns the path.

    client: a clickhouse-connect client bound to runwire's database.
    metrics: metric names to plot (default: loss-like names first, then the rest, at most 12).
    """
    if not run_ids:
        raise ValueError("write_report needs at least one run id")
    runs = load_report_data(client, run_ids, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(runs), encoding="utf-8")
    return path


def cmd_report(args) -> int:
    """`runwire report`: exit 0 and print the file's path; a missing URL, an unknown run or an
    unreachable server print one line on stderr and exit 2 (as the other storage commands do)."""
    import sys

    from clickhouse_connect.driver.exceptions import ClickHouseError

    from runwire.storage.client import connect, redact
    from runwire.storage.query import QueryError, _server_message

    url = args.clickhouse_url or os.environ.get("RUNWIRE_CLICKHOUSE_URL")
    if not url:
        print("runwire: no ClickHouse: pass --clickhouse-url or set RUNWIRE_CLICKHOUSE_URL", file=sys.stderr)
        return 2
    database = args.database or os.environ.get("RUNWIRE_CLICKHOUSE_DATABASE") or "runwire"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        client = connect(url, database, create=False)
    except Exception as exc:  # noqa: BLE001 - connection refused, bad URL, unknown database, auth
        print(f"runwire: cannot query {redact(url)} database {database!r}: {_server_message(exc)}", file=sys.stderr)
        return 2
    try:
        path = write_report(client, args.run_ids, args.output, metrics)
    except (QueryError, LookupError) as exc:
        print(f"runwire: {exc}", file=sys.stderr)
        return 2
    except ClickHouseError as exc:
        print(f"runwire: ClickHouse error: {_server_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"runwire: cannot write the report: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(path.resolve())
    return 0


def register_report_command(subparsers) -> None:
    """Add `runwire report RUN... -o report.html` to the `runwire` parser."""
    p = subparsers.add_parser("report", help="write one self-contained HTML file comparing runs",
                              description="Loss curves with the min-max band across ranks, other metrics, GPU "
                                          "temperature and memory, the parameters that differ and the alerts of "
                                          "the given runs, in one HTML file that needs no network.")
    p.add_argument("run_ids", nargs="+", metavar="RUN", help="run ids to compare (in this order)")
    p.add_argument("-o", "--output", default="report.html", help="where to write the HTML (default report.html)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics to plot (default: loss-like first, then others, at most 12)")
    p.add_argument("--clickhouse-url", default=None,
                   help="http(s)://[user:password@]host:port or chdb:///path (default $RUNWIRE_CLICKHOUSE_URL)")
    p.add_argument("--database", default=None, help="database (default $RUNWIRE_CLICKHOUSE_DATABASE, else runwire)")
    p.set_defaults(func=cmd_report)


register = register_report_command  # the name storage/commands.py calls: report.register(subparsers)
