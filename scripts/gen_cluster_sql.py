"""Writes deploy/clickhouse/cluster.sql: the cluster form (Replicated*MergeTree + Distributed,
sharded by run) of the single-node migrations. See deploy/clickhouse/README.md.

    python scripts/gen_cluster_sql.py            (tests fail when the committed file is stale)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "deploy" / "clickhouse" / "cluster.sql"


def cluster_sql() -> str:
    sys.path.insert(0, str(ROOT))
    from runwire.storage.schema import migrations

    out = ["-- Cluster form of storage/migrations, written by scripts/gen_cluster_sql.py: do not edit.",
           "CREATE DATABASE IF NOT EXISTS runwire ON CLUSTER runwire;", ""]
    for _, name, statements in migrations():
        out.append(f"-- from {name}")
        for statement in statements:
            translated = _translate(statement)
            if translated:
                out.append(translated + ";\n")
    return "\n".join(out)


# Replicated tables deduplicate inserts by default (replicated_deduplication_window).
_NON_REPLICATED_SETTING = re.compile(r"\s*SETTINGS non_replicated_deduplication_window = \d+$")


def _translate(statement: str) -> str | None:
    if re.match(r"ALTER TABLE \w+ MODIFY SETTING non_replicated_deduplication_window = \d+$", statement):
        return None
    statement = _NON_REPLICATED_SETTING.sub("", statement)
    alter = re.match(r"ALTER TABLE (\w+) ", statement)
    if alter:
        t = alter.group(1)
        # Columns change on the replicated tables and on the Distributed tables over them.
        return ";\n\n".join(statement.replace(alter.group(0), f"ALTER TABLE runwire.{name} ON CLUSTER runwire ", 1)
                            for name in (f"{t}_local", t))
    drop = re.match(r"DROP (VIEW|TABLE) IF EXISTS (\w+)$", statement)
    if drop:
        kind, t = drop.groups()
        names = [t] if kind == "VIEW" else [t, f"{t}_local"]
        return ";\n\n".join(f"DROP {kind} IF EXISTS runwire.{name} ON CLUSTER runwire SYNC" for name in names)
    table = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
    if table:
        t = table.group(1)
        zk = f"'/clickhouse/tables/{{shard}}/runwire/{t}', '{{replica}}'"
        local = statement.replace(f"CREATE TABLE IF NOT EXISTS {t}", f"CREATE TABLE IF NOT EXISTS runwire.{t}_local ON CLUSTER runwire", 1)
        local = re.sub(r"ENGINE = ReplacingMergeTree\((\w+)\)", rf"ENGINE = ReplicatedReplacingMergeTree({zk}, \1)", local)
        local = re.sub(r"ENGINE = (Replacing|Aggregating)MergeTree\b(?!\()", rf"ENGINE = Replicated\1MergeTree({zk})", local)
        columns = statement.split("ENGINE")[0]
        # Shard by run so every replay of a batch lands on the shard that holds the original.
        def has(column: str) -> bool:
            return re.search(rf"^\s*{column}\s", columns, re.M) is not None

        if has("run_id"):
            key = "cityHash64(project, run_id)" if has("project") else "cityHash64(run_id)"
        elif has("host"):
            key = "cityHash64(project, host)"
        else:  # small metadata tables (mlflow_experiments): by their sorting key
            first = re.search(r"ORDER BY \(?(\w+)", statement).group(1)
            key = f"cityHash64({first})"
        distributed = (f"CREATE TABLE IF NOT EXISTS runwire.{t} ON CLUSTER runwire AS runwire.{t}_local\n"
                       f"ENGINE = Distributed(runwire, runwire, {t}_local, {key})")
        return local + ";\n\n" + distributed
    view = re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS", statement)
    if view:
        v, t = view.groups()
        local = statement.replace(view.group(0), f"CREATE MATERIALIZED VIEW IF NOT EXISTS runwire.{v} ON CLUSTER runwire "
                                                  f"TO runwire.{t}_local AS")
        return re.sub(r"\bFROM (\w+)\b", r"FROM runwire.\1_local", local)
    insert = re.match(r"INSERT INTO (\w+)\b", statement)
    if insert:
        # A backfill: through the Distributed tables, which shard by the same run key.
        statement = statement.replace(insert.group(0), f"INSERT INTO runwire.{insert.group(1)}", 1)
        return re.sub(r"\bFROM (\w+)\b", r"FROM runwire.\1", statement)
    raise ValueError(f"no cluster translation for: {statement[:60]}")


if __name__ == "__main__":
    TARGET.write_text(cluster_sql())
    print(f"wrote {TARGET}")
