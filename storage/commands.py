"""`runwire runs ...`, `runwire query`, `runwire report` subcommands (registered by runwire.deploy.cli;
imports stay lazy).

    runwire runs ls [--project P] [--status S] [--limit N]
    runwire runs show RUN [--project P]
    runwire runs compare RUN RUN... [--metric NAME]... [--all-params]
    runwire runs search "FILTER" [--order-by "metrics.loss ASC"]... [--max-results N] [--project P]
    runwire query "SQL" [--param NAME=VALUE]... [--max-rows N]

Every subcommand takes --clickhouse-url (default $RUNWIRE_CLICKHOUSE_URL), --database (default
$RUNWIRE_CLICKHOUSE_DATABASE, else "runwire") and prints an aligned table, or --json / --csv.
A bad filter, an unknown run, a refused statement or an unreachable server print one clear
message on stderr (no traceback) and exit with status 2 (usage: a bad filter, an unknown run, a
refused statement) or 1 (the server cannot be reached). Times print in UTC; --json writes ISO
8601 times and NaN/Infinity as the strings "NaN", "Infinity", "-Infinity" (JSON has no such
numbers); --csv writes full-precision numbers.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import sys
from typing import Any, Iterable, Sequence

from runwire.proto.config import EXIT_FAILURE, EXIT_USAGE, UsageError
from runwire.storage.client import Unreachable, add_clickhouse_options

_MAX_CELL = 60


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
    runs = subparsers.add_parser("runs", help="list, show, compare and search runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="{ls,show,compare,search}")

    p = runs_sub.add_parser("ls", help="list runs, newest first")
    p.add_argument("--project", default=None, help="only this project")
    p.add_argument("--status", default=None, help="only runs with this status (RUNNING, FINISHED, FAILED)")
    p.add_argument("--limit", type=int, default=100, help="at most this many runs (default 100)")
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_ls))

    p = runs_sub.add_parser("show", help="one run: status, params, tags, summary, ranks, hosts, metrics")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--project", default=None, help="the run's project (needed when the id exists in several)")
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_show))

    p = runs_sub.add_parser("compare", help="runs side by side: params that differ, last metric values")
    p.add_argument("run_ids", metavar="RUN", nargs="+")
    p.add_argument("--project", default=None)
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="only this metric (repeatable; default all)")
    p.add_argument("--all-params", action="store_true", help="every param, not only those that differ")
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_compare))

    p = runs_sub.add_parser(
        "search", help="search runs with MLflow's filter grammar plus OR and parentheses",
        description="FILTER: e.g. \"metrics.val_loss < 0.3 and (params.lr = '0.001' or tags.team = 'nlp')\". "
                    "Metrics compare the run's last value.")
    p.add_argument("filter", metavar="FILTER", nargs="?", default="")
    p.add_argument("--order-by", action="append", default=None, metavar="CLAUSE",
                   help="e.g. \"metrics.val_loss ASC\" (repeatable; default newest first)")
    p.add_argument("--max-results", type=int, default=1000, help="default 1000")
    p.add_argument("--project", default=None)
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_search))

    p = subparsers.add_parser("query", help="run one read-only SQL statement (ClickHouse setting readonly=1)")
    p.add_argument("sql", metavar="SQL")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a query parameter for {NAME:Type} in the SQL (repeatable)")
    p.add_argument("--max-rows", type=int, default=10000, help="at most this many rows (default 10000)")
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_query))

    p = subparsers.add_parser("report", help="write one self-contained HTML file comparing runs",
                              description="Loss curves with the min-max band across ranks, other metrics, GPU "
                                          "temperature and memory, the parameters that differ and the alerts of "
                                          "the given runs, in one HTML file that needs no network.")
    p.add_argument("run_ids", nargs="+", metavar="RUN", help="run ids to compare (in this order)")
    p.add_argument("-o", "--output", default="report.html", help="where to write the HTML (default report.html)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics to plot (default: loss-like first, then others, at most 12)")
    add_clickhouse_options(p)
    p.set_defaults(func=_guarded(_cmd_report))


def _connection_and_output(p: argparse.ArgumentParser) -> None:
    add_clickhouse_options(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="output", action="store_const", const="json", help="JSON output")
    fmt.add_argument("--csv", dest="output", action="store_const", const="csv", help="CSV output")
    p.set_defaults(output="table")


def _guarded(command):
    """Expected failures become one line on stderr: exit status 2 for usage, 1 for the server."""

    def run(args) -> int:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        from runwire.storage.filters import FilterError
        from runwire.storage.query import QueryError

        try:
            return command(args)
        except FilterError as exc:
            print(f"runwire: invalid filter: {exc}", file=sys.stderr)
        except (QueryError, UsageError, LookupError, ValueError) as exc:
            print(f"runwire: {exc}", file=sys.stderr)
        except ClickHouseError as exc:
            from runwire.storage.client import server_message

            print(f"runwire: ClickHouse error: {server_message(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        except (Unreachable, OSError) as exc:
            print(f"runwire: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_USAGE

    run.__name__ = command.__name__
    return run


def _queries(args):
    import logging

    from runwire.storage.client import connect_from_args
    from runwire.storage.query import RunQueries

    # Their retry warnings would repeat what the one error line says.
    for name in ("urllib3", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return RunQueries(connect_from_args(args))


# --- commands ----------------------------------------------------------------------------------

_LS_COLUMNS = ["run_id", "project", "name", "status", "start_time", "end_time", "world_size", "ranks", "hosts"]


def _cmd_ls(args) -> int:
    rows = _queries(args).list_runs(project=args.project, status=args.status, limit=args.limit)
    if args.output == "json":
        _print_json(rows)
    else:
        _emit(args.output, _LS_COLUMNS, [[r[c] for c in _LS_COLUMNS] for r in rows])
    return 0


def _cmd_show(args) -> int:
    run = _queries(args).get_run(args.run_id, project=args.project)
    if args.output == "json":
        _print_json(run)
        return 0
    if args.output == "csv":
        _emit("csv", ["field", "value"], _flatten_run(run))
        return 0
    out = sys.stdout
    status = run["status"] + (f" (exit {run['exit_code']})" if run["exit_code"] is not None else "")
    fields = [("run", run["run_id"]), ("project", run["project"]), ("name", run["name"]), ("status", status),
              ("start", _cell(run["start_time"])), ("end", _cell(run["end_time"])),
              ("duration", _duration(run["start_time"], run["end_time"])), ("world size", run["world_size"]),
              ("hosts", ", ".join(run["hosts"])), ("git commit", run["git_commit"]), ("launcher", run["launcher"])]
    out.write(_table(["", ""], fields, header=False))
    for title, mapping in (("params", run["params"]), ("tags", run["tags"]), ("summary", run["summary"])):
        if mapping:
            out.write(f"\n{title}\n")
            out.write(_table(["key", "value"], sorted(mapping.items()), indent="  "))
    if run["ranks"]:
        out.write("\nranks\n")
        columns = ["rank", "local_rank", "node_rank", "host", "status", "pid", "exit_code"]
        out.write(_table(columns, [[r[c] for c in columns] for r in run["ranks"]], indent="  "))
    if run["metrics"]:
        out.write("\nmetrics\n")
        out.write(_table(["name", "last", "step", "min", "max"],
                         [[name, m["last"], m["step"], m["min"], m["max"]] for name, m in run["metrics"].items()],
                         indent="  "))
    return 0


def _cmd_compare(args) -> int:
    result = _queries(args).compare(args.run_ids, metrics=args.metric, project=args.project)
    if args.output == "json":
        _print_json(result)
        return 0
    runs = list(result["runs"])
    rows: list[list] = [["name", *[result["runs"][r]["name"] for r in runs]],
                        ["status", *[result["runs"][r]["status"] for r in runs]]]
    params = result["all_params"] if args.all_params else result["params"]
    rows += [[f"params.{key}", *[values.get(r) for r in runs]] for key, values in params.items()]
    for name, per_run in result["metrics"].items():
        for stat in ("last", "min", "max"):
            rows.append([f"metrics.{name}.{stat}", *[per_run.get(r, {}).get(stat) for r in runs]])
    _emit(args.output, ["", *runs] if args.output == "table" else ["field", *runs], rows)
    if args.output == "table" and not args.all_params and not result["params"]:
        print("(no params differ; --all-params shows them all)")
    return 0


def _cmd_search(args) -> int:
    rows = _queries(args).search_runs(args.filter, order_by=args.order_by, max_results=args.max_results,
                                      project=args.project)
    if args.output == "json":
        _print_json(rows)
        return 0
    columns = list(rows[0]) if rows else ["run_id", "project", "name", "status", "start_time", "end_time"]
    _emit(args.output, columns, [[r[c] for c in columns] for r in rows])
    return 0


def _cmd_report(args) -> int:
    from runwire.storage.report import write_report

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    queries = _queries(args)
    try:
        path = write_report(queries.client, args.run_ids, args.output, metrics)
    finally:
        queries.client.close()
    print(path.resolve())
    return 0


def _cmd_query(args) -> int:
    parameters = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param takes NAME=VALUE, got {item!r}")
        parameters[name] = value
    result = _queries(args).read_only_query(args.sql, parameters=parameters or None, max_rows=args.max_rows)
    if args.output == "json":
        _print_json([dict(zip(result["columns"], row)) for row in result["rows"]])
    else:
        _emit(args.output, result["columns"], result["rows"])
    if result["truncated"]:
        print(f"runwire: output truncated at {args.max_rows} rows (--max-rows)", file=sys.stderr)
    return 0


# --- output ------------------------------------------------------------------------------------


def _duration(start, end) -> str:
    if not isinstance(start, dt.datetime) or not isinstance(end, dt.datetime):
        return ""
    seconds = int((end - start).total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m {rest % 60:02d}s" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _flatten_run(run: dict) -> list[list]:
    rows = [[k, run[k]] for k in ("run_id", "project", "name", "status", "start_time", "end_time", "exit_code",
                                  "git_commit", "launcher", "world_size")]
    rows.append(["hosts", " ".join(run["hosts"])])
    for section in ("params", "tags", "summary"):
        rows += [[f"{section}.{k}", v] for k, v in sorted(run[section].items())]
    for rank in run["ranks"]:
        rows += [[f"ranks.{rank['rank']}.{k}", rank[k]] for k in ("host", "local_rank", "node_rank", "status")]
    for name, m in run["metrics"].items():
        rows += [[f"metrics.{name}.{k}", m[k]] for k in ("last", "step", "min", "max")]
    return rows


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or Infinity: they become the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.date, bytes)):
        return value.isoformat() if isinstance(value, dt.date) else value.decode(errors="replace")
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), indent=2, allow_nan=False) + "\n")


def _plain(value: Any) -> str:
    """A value as CSV text: full precision, ISO times, empty for None."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                                         ("Infinity" if value > 0 else "-Infinity"))
    if isinstance(value, (list, tuple)):
        return " ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(_jsonable(value))
    return str(value)


def _cell(value: Any) -> str:
    """A value for a table cell: short floats, times to the second, truncated long text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        text = ",".join(_cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(_jsonable(value))
    else:
        text = str(value)
    text = text.replace("\n", " ").replace("\t", " ")
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(columns: Sequence[str], rows: Iterable[Sequence], header: bool = True, indent: str = "") -> str:
    rows = [list(r) for r in rows]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(c) if header else 0 for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) and any(_is_number(r[i]) for r in rows)
               for i in range(len(columns))]

    def line(texts: Sequence[str]) -> str:
        parts = [t.rjust(w) if num else t.ljust(w) for t, w, num in zip(texts, widths, numeric)]
        return (indent + "  ".join(parts)).rstrip() + "\n"

    out = []
    if header:
        out.append(line(list(columns)))
        out.append(indent + "  ".join("-" * w for w in widths) + "\n")
    out += [line(row) for row in cells]
    return "".join(out)


def _emit(output: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_plain(v) for v in row] for row in rows)
        return
    sys.stdout.write(_table(columns, rows))
    if not rows:
        print("(no rows)")
