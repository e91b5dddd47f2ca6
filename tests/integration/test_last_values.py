"""A metric's "last" value is the value at its highest step (ties: the latest timestamp, then the
lowest rank) on every surface: `runwire runs show|compare|search`, the HTML report, the query
library's curves and the Grafana panels, also when a fast loop logs many steps within one
millisecond, and also for data stored before migration 0004 (backfilled by it).

Real ClickHouse (the session's server), data written by the real StorageWriter.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from runwire import wire
from runwire.deploy.cli import main as cli_main
from runwire.ingest import codec
from runwire.proto import telemetry_pb2 as pb
from runwire.storage import schema
from runwire.storage.client import connect
from runwire.storage.query import RunQueries
from runwire.storage.writer import StorageWriter

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z
STEPS = 1000
# The loss of rank 0: 3.51 at step 0, down to its minimum 0.3 at step 800, ending at 0.51.
LOSS = np.concatenate([np.linspace(3.51, 0.3, 801), np.linspace(0.3, 0.51, STEPS - 801 + 1)[1:]])
FIRST, MINIMUM, LAST = 3.51, 0.3, 0.51


def _decoded(env: pb.Envelope) -> tuple[str, dict]:
    _, _, value = codec.encode_envelope(env, T0)
    return codec.decode(value)


def _identity(run_id: str, rank: int) -> pb.Identity:
    return pb.Identity(project="fast", run_id=run_id, rank=rank, local_rank=rank, node_rank=0, world_size=2,
                       host="node-0", pid=100 + rank, stream_id=f"{run_id}-{rank}")


def fast_loop_records(run_id: str) -> list[tuple[str, dict]]:
    """Two ranks log `loss` at steps 0..999, every point in the same millisecond; rank 1's
    values are one higher (so a tie at the last step must pick rank 0). Each rank sends two
    batches, so the rollups see several inserts."""
    out = []
    for rank in range(2):
        env = pb.Envelope(seq=1, identity=_identity(run_id, rank))
        env.run_start.name = run_id
        env.run_start.start_time_ns = T0
        env.run_start.params.update({"lr": "0.1"})
        out.append(_decoded(env))
        for seq, part in ((2, slice(0, 500)), (3, slice(500, STEPS))):
            steps = np.arange(STEPS, dtype=np.int64)[part]
            env = pb.Envelope(seq=seq, identity=_identity(run_id, rank))
            env.metrics.CopyFrom(wire.metric_batch(["loss"], np.zeros(len(steps), np.uint32), steps,
                                                   np.full(len(steps), T0 + 123_456, np.int64), LOSS[part] + rank))
            out.append(_decoded(env))
    return out


def _old_schema(client, up_to: int) -> None:
    client.command("CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
                   "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version")
    for version, name, statements in schema.migrations():
        if version > up_to:
            break
        for statement in statements:
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])


@pytest.fixture
def db(clickhouse_url, fresh_database):
    client = connect(clickhouse_url, fresh_database, create=False)
    try:
        schema.migrate(client)
        StorageWriter(client).write(fast_loop_records("fast-1"))
        StorageWriter(client).write(fast_loop_records("fast-2")[:1])  # a run without metrics
        yield clickhouse_url, fresh_database, client
    finally:
        client.close()


def run_cli(capsys, db, *argv: str) -> tuple[int, str]:
    url, database, _ = db
    code = cli_main([*argv, "--clickhouse-url", url, "--database", database])
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def test_show_compare_search_report_and_curves_use_the_highest_step(capsys, db, tmp_path):
    _, show = run_cli(capsys, db, "runs", "show", "fast-1", "--json")
    assert json.loads(show)["metrics"]["loss"] == {"last": LAST, "step": STEPS - 1, "min": MINIMUM, "max": FIRST + 1}

    _, compare = run_cli(capsys, db, "runs", "compare", "fast-1", "fast-2", "--json")
    assert json.loads(compare)["metrics"]["loss"]["fast-1"]["last"] == LAST

    _, search = run_cli(capsys, db, "runs", "search", "metrics.loss < 1", "--json")
    assert [(r["run_id"], r["metrics.loss"]) for r in json.loads(search)] == [("fast-1", LAST)]
    _, search = run_cli(capsys, db, "runs", "search", "metrics.loss > 3", "--json")
    assert json.loads(search) == []

    path = tmp_path / "report.html"
    run_cli(capsys, db, "report", "fast-1", "-o", str(path))
    page = path.read_text()
    summary = re.search(r'<section id="summary">.*?</section>', page, re.S).group(0)
    header = [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", summary)]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", summary)
    assert cells[header.index("last loss")] == "0.51" and cells[header.index("min loss")] == "0.3"

    queries = RunQueries(db[2])
    for x in ("step", "time"):
        across = queries.curve("fast-1", "loss", x=x, buckets=10, across_ranks=True)
        assert across[-1]["last"] == LAST, x
        per_rank = queries.curve("fast-1", "loss", x=x, buckets=10)
        assert {r["rank"]: r["last"] for r in per_rank if r["bucket_start"] == per_rank[-1]["bucket_start"]} == {
            0: LAST, 1: LAST + 1}, x


def test_grafana_panels_show_the_highest_step(db):
    """Every run-overview panel whose query keeps one value per bucket and rank ("last")."""
    import datetime as dt

    from test_grafana_panels import DASHBOARD_DIR, Context, Var, _query_panels, render

    dashboard = json.loads((DASHBOARD_DIR / "run-overview.json").read_text())
    t = dt.datetime.fromtimestamp(T0 / 1e9, dt.timezone.utc)
    ctx = Context(t - dt.timedelta(minutes=5), t + dt.timedelta(minutes=5), 60.0,
                  {"project": Var(["fast"]), "run_id": Var(["fast-1"]), "metric": Var(["loss"]),
                   "rank": Var(["0", "1"], multi=True, is_all=True), "step_time_metric": Var(["loss"])})
    checked = 0
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            result = db[2].query(render(target["rawSql"], ctx))
            columns = result.column_names
            if "value" not in columns or "rank_label" not in columns:
                continue
            last = {}
            for row in result.result_rows:
                record = dict(zip(columns, row))
                last[record["rank_label"]] = record["value"]  # rows are ordered by time
            assert last == {"rank 0": LAST, "rank 1": LAST + 1}, panel["title"]
            checked += 1
    assert checked >= 1


def test_migration_0004_backfills_data_stored_before_it(clickhouse_url, fresh_database):
    client = connect(clickhouse_url, fresh_database, create=False)
    try:
        _old_schema(client, 3)
        StorageWriter(client).write(fast_loop_records("old-1"))
        StorageWriter(client).write(fast_loop_records("expired"))
        # The TTL removed the raw points of "expired": only its rollup rows are left.
        client.command("ALTER TABLE metrics DELETE WHERE run_id = 'expired' SETTINGS mutations_sync = 1")
        # What runwire showed before (the 0003 summary): some point of that one millisecond.
        before = client.query("SELECT argMaxMerge(last_value) FROM metrics_summary "
                              "WHERE run_id = 'old-1'").result_rows[0][0]
        assert before != LAST

        assert schema.migrate(client) == [v for v, _, _ in schema.migrations() if v >= 4]
        queries = RunQueries(client)
        assert queries.get_run("old-1")["metrics"]["loss"] == {
            "last": LAST, "step": STEPS - 1, "min": MINIMUM, "max": FIRST + 1}
        # Without raw points the old last is all that is left, with min and max intact.
        expired = queries.get_run("expired")["metrics"]["loss"]
        assert (expired["step"], expired["min"], expired["max"]) == (STEPS - 1, MINIMUM, FIRST + 1)
        assert expired["last"] in set(LOSS) | set(LOSS + 1)

        # New points go through the new views.
        StorageWriter(client).write(fast_loop_records("new-1"))
        assert queries.get_run("new-1")["metrics"]["loss"]["last"] == LAST
        assert schema.migrate(client) == []
    finally:
        client.close()
