"""Connecting to ClickHouse (thin I/O): a server URL or the embedded chDB engine."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError

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
})


def is_permanent(exc: BaseException) -> bool:
    """True when ClickHouse rejected the data itself (bad value, type mismatch): never retry it.

    The one ClickHouse classifier. It reads the server's structured error code, which
    clickhouse-connect carries as `DatabaseError.code` (from the X-ClickHouse-Exception-Code
    header over HTTP, from the engine's error with chDB); transport errors have no code and are
    retried."""
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
    check_identifier(database, "database")
    if create:
        admin = clickhouse_connect.get_client(dsn=url, **settings)
        try:
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        finally:
            if not url.startswith("chdb:"):
                admin.close()
    return clickhouse_connect.get_client(dsn=url, database=database, **settings)
