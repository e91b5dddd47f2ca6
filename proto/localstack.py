"""Where the local runwire stack lives: the one module every command (and the emitter) asks.

The embedded stack (`runwire up`, `runwire demo`, `runwire ui` on its own) keeps its data in a
user data directory, the *store*: ``$RUNWIRE_HOME``, else ``$XDG_DATA_HOME/runwire``, else
``~/.local/share/runwire``. While a stack runs it records where it listens in ``stack.json``
there ({"pid", "gateway", "clickhouse_url", "database", "ui", "started_at"}); a record whose
process is gone is ignored. Commands given no URL or address use that record and say so.

Dependency-free and here, next to the wire contract, because both the emitter (which may
import only runwire.proto) and the storage commands need it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["home", "store_exists", "clickhouse_dir", "record_path", "read_record", "write_record",
           "clear_record", "DEFAULT_GATEWAY_PORT", "DEFAULT_CLICKHOUSE_HTTP_PORT",
           "DEFAULT_CLICKHOUSE_TCP_PORT", "DEFAULT_UI_PORT"]

# Stable default ports of the local stack (off the usual ClickHouse ones, so a real server on
# the same machine does not collide).
DEFAULT_GATEWAY_PORT = 50051
DEFAULT_CLICKHOUSE_HTTP_PORT = 18123
DEFAULT_CLICKHOUSE_TCP_PORT = 19000
DEFAULT_UI_PORT = 8765

_RECORD = "stack.json"


def home() -> Path:
    """The store directory ($RUNWIRE_HOME, else $XDG_DATA_HOME/runwire, else
    ~/.local/share/runwire). Not created here."""
    explicit = os.environ.get("RUNWIRE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "runwire"


def clickhouse_dir(root: Path | None = None) -> Path:
    """Where the local stack's ClickHouse keeps its data."""
    return (root or home()) / "clickhouse"


def store_exists(root: Path | None = None) -> bool:
    return clickhouse_dir(root).is_dir()


def record_path(root: Path | None = None) -> Path:
    return (root or home()) / _RECORD


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def read_record(root: Path | None = None) -> dict | None:
    """The running local stack's record, or None when none is recorded or its process is gone."""
    try:
        record = json.loads(record_path(root).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _alive(record.get("pid")):
        return None
    record["path"] = str(record_path(root))
    return record


def write_record(root: Path | None = None, **fields) -> Path:
    """Record this process as the local stack (atomically: readers never see half a file)."""
    path = record_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "started_at": time.time(), **fields}
    tmp = path.with_name(f".{_RECORD}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def clear_record(root: Path | None = None) -> None:
    """Remove the record if this process wrote it."""
    path = record_path(root)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
