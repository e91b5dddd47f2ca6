"""The one idempotent migrate step: numbered .sql files, a schema-version table, optional TTL."""

from __future__ import annotations

import logging
import re
from importlib import resources

log = logging.getLogger("runwire.storage")

_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Tables that hold time series and take the configurable TTL, with their time column.
TIME_SERIES_TABLES = {"metrics": "ts", "gpu_samples": "ts"}


def migrations() -> list[tuple[int, str, list[str]]]:
    """(version, file name, statements) for every migration, in order."""
    found = []
    for entry in resources.files("runwire.storage").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, split_statements(entry.read_text())))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: `;` at the end of a line ends one; `--` comments dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(current).strip().rstrip(";").strip()
            if text:
                statements.append(text)
            current = []
    if "\n".join(current).strip():
        raise ValueError("migration ends with a statement that has no closing ';'")
    return statements


def migrate(client, ttl_days: int | None = None) -> list[int]:
    """Apply pending migrations to the client's database; returns the versions applied now."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    applied = {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}
    done = []
    for version, name, statements in migrations():
        if version in applied:
            continue
        for statement in statements:
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %s", name)
        done.append(version)
    if ttl_days is not None:
        apply_ttl(client, ttl_days)
    return done


def apply_ttl(client, ttl_days: int) -> None:
    """Keep raw time series for `ttl_days` days (0 removes the TTL). Rollups keep their data."""
    if ttl_days < 0:
        raise ValueError("ttl_days must be >= 0")
    for table, column in TIME_SERIES_TABLES.items():
        if ttl_days == 0:
            client.command(f"ALTER TABLE {table} REMOVE TTL")
        else:
            client.command(f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + toIntervalDay({int(ttl_days)})")
