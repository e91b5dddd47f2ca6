"""Connecting to ClickHouse (thin I/O): a server URL or the embedded chDB engine."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from runwire.proto.config import UsageError, build

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# ClickHouse server error codes that mean "this data is wrong", not "the server is unavailable":
# resending the same rows can never succeed, so they are isolated and dead-lettered.
PERMANENT_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469,  # VIOLATED_CONSTRAINT: a CHECK an operator added to a table
})


def is_permanent(exc: BaseException) -> bool:
    """True when ClickHouse rejected the data itself (bad value, type mismatch): never retry it.

    The one ClickHouse classifier. It reads the server's structured error code, which
    clickhouse-connect carries as `DatabaseError.code` (from the X-ClickHouse-Exception-Code
    header over HTTP, from the engine's error with chDB); transport errors have no code and are
    retried."""
    from clickhouse_connect.driver.exceptions import DatabaseError  # lazily: commands import this module

    return isinstance(exc, DatabaseError) and exc.code in PERMANENT_CODES


def check_identifier(name: str, what: str = "identifier") -> str:
    """Database and table names cannot be query parameters in DDL, so they are validated instead."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):  # match() would let "x\n" through
        raise ValueError(f"{what} {name!r} must match {_IDENTIFIER.pattern}")
    return name


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, database: str = "runwire", create: bool = True, **settings):
    """A clickhouse-connect client bound to `database`.

    url: ``http(s)://[user:password@]host:port`` of a ClickHouse server (or the local chDB
    server), or ``chdb:///path`` for the in-process engine (one per process).
    """
    import clickhouse_connect  # lazily: commands register their options without it

    check_identifier(database, "database")
    if create:
        admin = clickhouse_connect.get_client(dsn=url, **settings)
        try:
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        finally:
            if not url.startswith("chdb:"):
                admin.close()
    return clickhouse_connect.get_client(dsn=url, database=database, **settings)


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where a command reads or writes. Each reads RUNWIRE_<NAME> when not given as an option."""

    clickhouse_url: str = ""                # RUNWIRE_CLICKHOUSE_URL: http(s)://[user:password@]host:port or chdb:///path
    clickhouse_database: str = "runwire"    # RUNWIRE_CLICKHOUSE_DATABASE


def add_clickhouse_options(parser) -> None:
    """--clickhouse-url and --database, the same on every command that needs ClickHouse."""
    parser.add_argument("--clickhouse-url", default=None,
                        help="http(s)://[user:password@]host:port or chdb:///path (default $RUNWIRE_CLICKHOUSE_URL, "
                             "else the local stack's)")
    parser.add_argument("--database", default=None, help="database (default $RUNWIRE_CLICKHOUSE_DATABASE, else runwire)")


def clickhouse_target(args) -> ClickHouseTarget:
    """The options, then RUNWIRE_* variables, then defaults; UsageError when no server is named."""
    target = build(ClickHouseTarget, {"clickhouse_url": getattr(args, "clickhouse_url", None),
                                      "clickhouse_database": getattr(args, "database", None)})
    if not target.clickhouse_url:
        url = local_url(announce_on_stderr)
        if not url:
            raise UsageError("no ClickHouse: pass --clickhouse-url, set RUNWIRE_CLICKHOUSE_URL, or start the local "
                             "stack (`runwire up`)")
        target = replace(target, clickhouse_url=url)
    return target


def local_url(announce=None) -> str | None:
    """The local stack's ClickHouse when the user named none: the running local stack
    (runwire.proto.localstack), else the local store opened in-process (``chdb://``; nothing
    else may have it open then), else None. ``announce(message)`` is told which one."""
    from runwire.proto import localstack

    record = localstack.read_record()
    if record and record.get("clickhouse_url"):
        if announce:
            announce(f"using the local stack's ClickHouse at {record['clickhouse_url']} (from {record['path']})")
        return record["clickhouse_url"]
    if localstack.store_exists():
        path = localstack.clickhouse_dir()
        if announce:
            announce(f"using the local store {path} (no stack running; `runwire up` serves it)")
        return f"chdb://{path}"
    return None


def announce_on_stderr(message: str) -> None:
    import sys

    print(f"runwire: {message}", file=sys.stderr)


class Unreachable(ConnectionError):
    """The ClickHouse server cannot be reached or refused us (exit status EXIT_FAILURE)."""


def connect_from_args(args, create: bool = False):
    """A client for the command's target; Unreachable with one clear line when that fails."""
    target = clickhouse_target(args)
    try:
        return connect(target.clickhouse_url, target.clickhouse_database, create=create)
    except Exception as exc:  # noqa: BLE001 - connection refused, bad URL, unknown database, auth
        raise Unreachable(f"cannot reach ClickHouse at {redact(target.clickhouse_url)} "
                          f"(database {target.clickhouse_database!r}): {server_message(exc)}") from None


def server_message(exc: Exception) -> str:
    """The useful part of a clickhouse-connect error, one line: the server's 'Code: N.
    DB::Exception: ...' without the URL and version noise."""
    text = str(exc)
    if "Connection refused" in text or "Failed to establish" in text:
        return "connection refused"
    start = text.find("Code: ")
    if start >= 0:
        text = text[start:]
    text = text.split("\n")[0].strip()
    for noise in (" (for url ", " (version "):
        cut = text.find(noise)
        if cut > 0:
            text = text[:cut]
    if "READONLY" in text or "readonly" in text:
        text += " -- runwire query runs read-only statements only"
    return text
