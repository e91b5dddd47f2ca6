"""`runwire alerts ...` subcommands (registered by runwire.deploy.cli; imports stay lazy).

    runwire alerts ls [--firing | --open | --all] [--project P] [--run RUN] [--rule R] [--limit N] [--json]
    runwire alerts rules [--rules FILE] [--project P] [--json]
"""

from __future__ import annotations

import json
import sys

from runwire.proto.config import EXIT_FAILURE, EXIT_USAGE, UsageError
from runwire.storage.client import add_clickhouse_options


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
    p = subparsers.add_parser("alerts", help="alerts: list them (ls), show the effective rules (rules)")
    sub = p.add_subparsers(dest="alerts_command", required=True)

    ls = sub.add_parser("ls", help="list alerts from the alerts table, newest first")
    state = ls.add_mutually_exclusive_group()
    state.add_argument("--firing", action="store_true", help="only alerts firing now")
    state.add_argument("--open", action="store_true", help="only pending or firing alerts")
    state.add_argument("--all", action="store_true",
                       help="also pending alerts that cleared before they fired (state inactive)")
    ls.add_argument("--project", default=None)
    ls.add_argument("--run", default=None, help="run id")
    ls.add_argument("--rule", default=None)
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_clickhouse_options(ls)
    ls.set_defaults(func=cmd_ls)

    rules = sub.add_parser("rules", help="print the effective, validated alert rules")
    rules.add_argument("--rules", default=None, help="rules file (.toml, .yaml); default RUNWIRE_ALERT_RULES, "
                                                     "else the built-in rules")
    rules.add_argument("--project", default=None, help="the rules in effect for this project")
    rules.add_argument("--json", action="store_true")
    rules.set_defaults(func=cmd_rules)


def cmd_ls(args) -> int:
    import time

    from runwire.ingest.alerts.report import alerts_json, format_alerts
    from runwire.ingest.alerts.store import query_alerts
    from runwire.storage.client import Unreachable, clickhouse_target, connect_from_args, redact

    try:
        client = connect_from_args(args)
    except UsageError as exc:
        print(f"runwire alerts ls: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"runwire alerts ls: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        alerts = query_alerts(client, firing_only=args.firing, open_only=args.open, project=args.project,
                              run_id=args.run, rule=args.rule, limit=args.limit, include_inactive=args.all)
    except Exception as exc:
        target = clickhouse_target(args)
        print(f"runwire alerts ls: cannot read alerts from {redact(target.clickhouse_url)}/"
              f"{target.clickhouse_database}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        for item in alerts_json(alerts):
            print(json.dumps(item))
    else:
        print(format_alerts(alerts, time.time_ns()))
    return 0


def cmd_rules(args) -> int:
    from runwire.ingest.alerts.rules import RulesError, load_rules, rule_to_dict

    from runwire.ingest.alerts.engine import AlertConfig

    path = AlertConfig.from_settings(rules=args.rules).rules
    try:
        rules = load_rules(path)
    except RulesError as exc:
        print(f"runwire alerts rules: {len(exc.errors)} problem(s):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        out = {"source": rules.source, "rules": rules.describe(args.project)}
        if args.project is None:
            out["projects"] = {p: [rule_to_dict(r) for r in rs.values()] for p, rs in rules.projects.items()}
        print(json.dumps(out, indent=2))
        return 0
    print(f"# alert rules from {rules.source}" + (f", for project {args.project}" if args.project else ""))
    print(_rules_table(rules.all_for(args.project) if args.project is not None else rules.rules))
    if args.project is None:
        for project, overrides in rules.projects.items():
            print(f"\n# project {project} (overrides and additions)")
            print(_rules_table(overrides))
    return 0


def _rules_table(rules) -> str:
    rows = [("RULE", "KIND", "SEVERITY", "ON", "CONDITION")]
    for r in rules.values():
        rows.append((r.name, r.kind, r.severity, "yes" if r.enabled else "no", r.condition_text()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)
