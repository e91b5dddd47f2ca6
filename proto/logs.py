"""Logging for runwire's commands, set up in one place (the CLI calls `setup_logging`).

runwire's own loggers (`runwire.*`) say what is wrong and what to do. The libraries underneath
speak only when something is wrong, unless --verbose: kafka-python alone logged 182 of the 193
lines `runwire up --kafka` printed, at INFO.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Third-party loggers kept at WARNING unless verbose.
THIRD_PARTY = ("kafka", "grpc", "urllib3", "clickhouse_connect", "chdb", "fastavro", "asyncio", "filelock")

# kafka-python logs every attempt to reach a broker at WARNING and ERROR (several lines a second
# while one is down). runwire reports an unreachable broker itself, once, with its address and
# what to do, so these are shown only with --verbose.
CONNECTION_CHATTER = ("kafka.net",)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: runwire at INFO (DEBUG and every library at DEBUG with `verbose`)."""
    logging.basicConfig(format=FORMAT)  # a stderr handler, unless the root logger has one
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    for name in CONNECTION_CHATTER:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL)
