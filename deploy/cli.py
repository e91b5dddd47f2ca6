"""The `runwire` command: the root parser, logging and the exit-code policy. Each area
registers its own command group and keeps its imports lazy, so `runwire sync` works with the
emitter's light install."""

from __future__ import annotations

import argparse
import logging
import sys

from runwire.proto.config import EXIT_FAILURE, EXIT_USAGE, ConfigError, UsageError

EPILOG = """\
Settings: every option also reads a RUNWIRE_<NAME> variable (named in each option's help); an
option given on the command line wins. A RUNWIRE_* variable that no setting knows but that
looks like one gets a warning.

Exit status: 0 success; 1 a runtime failure (a server cannot be reached, a write failed);
2 a usage error (bad arguments, settings, filter or run id)."""

# Loud at INFO, and about things runwire reports in its own words.
THIRD_PARTY_LOGGERS = ("kafka", "grpc", "urllib3", "clickhouse_connect", "chdb", "asyncio", "uvicorn")


def configure_logging(verbose: bool) -> None:
    """runwire's own messages at INFO (DEBUG with --verbose); other libraries' at WARNING unless
    --verbose, so a command's output is runwire's."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # kafka-python logs every attempt to reach a broker at WARNING and ERROR, several lines a
    # second while one is down; runwire reports an unreachable broker itself, once, with its
    # address and what to do.
    logging.getLogger("kafka.net").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def build_parser() -> argparse.ArgumentParser:
    from runwire import commands as emitter_commands
    from runwire.deploy import commands as deploy_commands
    from runwire.deploy import mlflow_commands, repro_commands
    from runwire.ingest import commands as ingest_commands
    from runwire.storage import commands as storage_commands

    parser = argparse.ArgumentParser(prog="runwire", description="Telemetry pipeline for ML training runs.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level, other libraries too")
    sub = parser.add_subparsers(dest="command", required=True)
    deploy_commands.register(sub)
    ingest_commands.register(sub)
    storage_commands.register(sub)
    emitter_commands.register(sub)
    repro_commands.register(sub)  # artifacts, models
    mlflow_commands.register(sub)  # mlflow-server
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on a usage error
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        kind = "configuration error" if isinstance(exc, ConfigError) else "error"
        print(f"runwire: {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with --verbose
        if args.verbose:
            raise
        print(f"runwire: {type(exc).__name__}: {exc} (run with --verbose for details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
