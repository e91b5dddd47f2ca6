"""Connecting to ClickHouse (thin I/O): a server URL or the embedded chDB engine."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


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
    check_identifier(database, "database")
    if create:
        admin = clickhouse_connect.get_client(dsn=url, **settings)
        try:
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        finally:
            if not url.startswith("chdb:"):
                admin.close()
    return clickhouse_connect.get_client(dsn=url, database=database, **settings)


def resolve_url(explicit: str | None = None, announce=None) -> str | None:
    """Which ClickHouse a command reads when the user named none: ``explicit`` (--clickhouse-url),
    else $RUNWIRE_CLICKHOUSE_URL, else the running local stack (runwire.proto.localstack), else
    the local store opened in-process (``chdb://``; nothing else may have it open). None when
    there is none of these. ``announce(message)`` is told which one was picked when it was
    found rather than given (commands print it on stderr)."""
    import os

    from runwire.proto import localstack

    url = explicit or os.environ.get("RUNWIRE_CLICKHOUSE_URL")
    if url:
        return url
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
