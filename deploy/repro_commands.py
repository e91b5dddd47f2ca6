"""`runwire artifacts ...` and `runwire models ...` (registered by runwire.deploy.cli; imports stay lazy).

    runwire artifacts ls RUN [--project P] [--json]
    runwire artifacts get RUN NAME -o DIR [--store URL] [--endpoint-url URL]
    runwire models ls
    runwire models show NAME [VERSION|ALIAS]
    runwire models register NAME --run RUN [--artifact model] [--reason TEXT]
    runwire models alias NAME ALIAS VERSION [--reason TEXT]    (--delete removes it)
    runwire models transition NAME VERSION STAGE [--archive-existing] [--reason TEXT]
    runwire models history NAME [--version V] [--at 2026-05-01T00:00:00Z]

The registry is the SQLite file at --registry (default $RUNWIRE_REGISTRY, else
~/.local/share/runwire/registry.db). Artifact and run lookups read ClickHouse like `runwire runs`
(--clickhouse-url, default $RUNWIRE_CLICKHOUSE_URL).
"""

from __future__ import annotations

import datetime as dt
import json
import sys

from runwire.proto.config import EXIT_USAGE, UsageError


def register(subparsers) -> None:
    from runwire.storage.commands import _connection_and_output, _guarded

    artifacts = subparsers.add_parser("artifacts", help="list and download a run's artifacts")
    sub = artifacts.add_subparsers(dest="artifacts_command", required=True, metavar="{ls,get}")
    p = sub.add_parser("ls", help="a run's artifacts: name, type, size, files, digest, store")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--project", default=None)
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_artifacts_ls))

    p = sub.add_parser("get", help="download an artifact, verifying every file's SHA-256")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-o", "--output-dir", required=True, metavar="DIR")
    p.add_argument("--project", default=None)
    p.add_argument("--store", default=None, help="read the blobs from here instead of the recorded store")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: the recorded one)")
    _connection_and_output(p)
    p.set_defaults(func=_guarded(_cmd_artifacts_get))

    models = subparsers.add_parser("models", help="model registry: versions, aliases, stages, history")
    sub = models.add_subparsers(dest="models_command", required=True,
                                metavar="{ls,show,register,alias,transition,history}")

    def registry_arg(p):
        p.add_argument("--registry", default=None, help="registry file (default $RUNWIRE_REGISTRY)")
        p.add_argument("--json", dest="output", action="store_const", const="json", default="table")

    p = sub.add_parser("ls", help="registered models with their aliases and staged versions")
    registry_arg(p)
    p.set_defaults(func=_registry_guard(_cmd_models_ls))

    p = sub.add_parser("show", help="a model's versions, or one version (number or alias) with its lineage")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None, metavar="VERSION|ALIAS")
    registry_arg(p)
    p.set_defaults(func=_registry_guard(_cmd_models_show))

    p = sub.add_parser("register", help="a new version from a run's model artifact")
    p.add_argument("name")
    p.add_argument("--run", required=True, dest="run_id")
    p.add_argument("--artifact", default="model", help="the run's artifact name (default model)")
    p.add_argument("--project", default=None)
    p.add_argument("--description", default="")
    p.add_argument("--reason", default="")
    _connection_and_output(p)
    p.add_argument("--registry", default=None, help="registry file (default $RUNWIRE_REGISTRY)")
    p.set_defaults(func=_guarded(_registry_guard(_cmd_models_register)))

    p = sub.add_parser("alias", help="point an alias (champion, candidate, ...) at a version")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", nargs="?", type=int, default=None)
    p.add_argument("--delete", action="store_true", help="remove the alias")
    p.add_argument("--reason", default="")
    registry_arg(p)
    p.set_defaults(func=_registry_guard(_cmd_models_alias))

    p = sub.add_parser("transition", help="move a version to None, Staging, Production or Archived")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("stage")
    p.add_argument("--archive-existing", action="store_true",
                   help="archive the versions already in that stage")
    p.add_argument("--reason", default="")
    registry_arg(p)
    p.set_defaults(func=_registry_guard(_cmd_models_transition))

    p = sub.add_parser("history", help="every change (who, when, why); --at: the stages and aliases at a time")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--at", default=None, help="ISO time, e.g. 2026-05-01T12:00:00Z")
    registry_arg(p)
    p.set_defaults(func=_registry_guard(_cmd_models_history))


def _registry_guard(command):
    def run(args) -> int:
        from runwire.registry import RegistryError

        try:
            return command(args)
        except RegistryError as exc:
            print(f"runwire: {exc}", file=sys.stderr)
            return EXIT_USAGE

    run.__name__ = command.__name__
    return run


def _registry(args):
    from runwire.registry import open_registry

    return open_registry(args.registry)


# --- artifacts -----------------------------------------------------------------------------


def _cmd_artifacts_ls(args) -> int:
    from runwire.storage.commands import _emit, _print_json, _queries

    rows = _queries(args).list_artifacts(args.run_id, project=args.project)
    if args.output == "json":
        _print_json(rows)
        return 0
    columns = ["name", "type", "size_bytes", "files", "digest", "store"]
    _emit(args.output, columns, [[r[c] for c in columns] for r in rows])
    return 0


def _cmd_artifacts_get(args) -> int:
    from runwire.artifacts import download_artifact
    from runwire.storage.commands import _queries

    record = _queries(args).get_artifact(args.run_id, args.name, project=args.project)
    dest = download_artifact(record, args.output_dir, store=args.store, endpoint_url=args.endpoint_url)
    print(f"{args.name}: {record['files']} file(s), {record['size_bytes']} bytes, verified, in {dest}")
    return 0


# --- models --------------------------------------------------------------------------------


def _when(value) -> str:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _out(args, value, columns=None, rows=None) -> None:
    from runwire.storage.commands import _emit, _print_json

    if args.output == "json" or columns is None:
        _print_json(value)
    else:
        _emit("table", columns, rows)


def _cmd_models_ls(args) -> int:
    models = _registry(args).list_models()
    _out(args, models, ["name", "versions", "aliases", "staging", "production", "created"],
         [[m["name"], m["last_version"], ", ".join(f"{a}={v}" for a, v in m["aliases"].items()),
           ",".join(map(str, m["stages"]["Staging"])), ",".join(map(str, m["stages"]["Production"])),
           _when(m["created_at"])]
          for m in models])
    return 0


def _cmd_models_show(args) -> int:
    reg = _registry(args)
    if args.version is None:
        model = reg.get_model(args.name)
        _out(args, model, ["version", "stage", "aliases", "run", "digest", "created", "by"],
             [[v["version"], v["stage"], ",".join(v["aliases"]), v["run_id"], v["digest"][:16],
               _when(v["created_at"]), v["created_by"]] for v in model["versions"]])
        return 0
    version = reg.get_version(args.name, args.version)
    if args.output == "json":
        _out(args, version)
        return 0
    for key in ("model", "version", "stage", "aliases", "digest", "run_id", "project", "artifact", "store",
                "description", "created_by"):
        print(f"{key:12} {', '.join(version[key]) if isinstance(version[key], list) else version[key]}")
    print(f"{'created':12} {_when(version['created_at'])}")
    print("lineage")
    print(json.dumps(version["lineage"], indent=2, sort_keys=True))
    return 0


def _cmd_models_register(args) -> int:
    from runwire.registry import lineage_from_tags
    from runwire.storage.commands import _queries

    queries = _queries(args)
    record = queries.get_artifact(args.run_id, args.artifact, project=args.project)
    run = queries.get_run(args.run_id, project=args.project)
    datasets = {d["name"]: d for d in queries.list_datasets(args.run_id, project=run["project"])}
    lineage = lineage_from_tags(run["tags"], datasets)
    lineage.update(run_id=args.run_id, project=run["project"], artifact=args.artifact, digest=record["digest"])
    if run.get("git_commit") and "git.commit" not in lineage:
        lineage["git.commit"] = run["git_commit"]
    version = _registry(args).create_version(args.name, record["digest"], run_id=args.run_id, project=run["project"],
                                             artifact=args.artifact, store=record["store"], lineage=lineage,
                                             description=args.description, reason=args.reason)
    if args.output == "json":
        _out(args, version)
    else:
        print(f"registered {args.name} version {version['version']} (digest {record['digest'][:16]}, run {args.run_id})")
    return 0


def _cmd_models_alias(args) -> int:
    reg = _registry(args)
    if args.delete:
        reg.delete_alias(args.name, args.alias, reason=args.reason)
        print(f"{args.name}: alias {args.alias} removed")
        return 0
    if args.version is None:
        raise UsageError("models alias NAME ALIAS VERSION (or --delete)")
    reg.set_alias(args.name, args.alias, args.version, reason=args.reason)
    print(f"{args.name}: {args.alias} -> version {args.version}")
    return 0


def _cmd_models_transition(args) -> int:
    version = _registry(args).transition(args.name, args.version, args.stage, archive_existing=args.archive_existing,
                                         reason=args.reason)
    print(f"{args.name} version {args.version}: {version['stage']}")
    return 0


def _cmd_models_history(args) -> int:
    reg = _registry(args)
    if args.at:
        when = dt.datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        ts = when.timestamp()
        model = reg.get_model(args.name)
        state = {stage: reg.versions_in_stage_at(args.name, stage, ts) for stage in ("Staging", "Production")}
        aliases = {h["field"] for h in reg.history(args.name) if h["action"] in ("alias", "delete_alias")}
        state["aliases"] = {a: reg.alias_at(args.name, a, ts) for a in sorted(aliases)}
        state["versions"] = [v["version"] for v in model["versions"] if v["created_at"] <= ts]
        _out(args, {"model": args.name, "at": when.isoformat(), **state})
        return 0
    rows = reg.history(args.name, args.version)
    _out(args, rows, ["at", "version", "action", "field", "old", "new", "actor", "reason"],
         [[_when(h["at"]), h["version"], h["action"], h["field"], h["old"], h["new"], h["actor"], h["reason"]]
          for h in rows])
    return 0
