"""`runwire runs ls|show|compare|search` and `runwire query` against a real ClickHouse server
(the session's clickhouse_url) and a fresh database, with data written by the StorageWriter.

Most calls go through runwire.deploy.cli.main in this process (fast); the error paths and one happy
path run `python -m runwire.deploy.cli` as a real subprocess (exit status, no traceback).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from runwire import wire
from runwire.deploy.cli import main as cli_main
from runwire.ingest import codec
from runwire.proto import telemetry_pb2 as pb
from runwire.storage import schema
from runwire.storage.client import connect
from runwire.storage.writer import StorageWriter

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z
SECOND = 10**9

RUNS = {
    # run_id: (start_s, lr, team, exit code or None, val_loss last values by rank 0)
    "r-alpha": (100, "0.001", "nlp", 0, [0.9, 0.25]),
    "r-beta": (200, "0.01", "nlp", 0, [0.9, 0.5]),
    "r-gamma": (300, "0.001", "vision", 1, [0.8, 0.2]),
}


def _decoded(env: pb.Envelope, received_ns: int) -> tuple[str, dict]:
    _, _, value = codec.encode_envelope(env, received_ns)
    return codec.decode(value)


def _identity(run_id: str, rank: int) -> pb.Identity:
    return pb.Identity(project="cli", run_id=run_id, rank=rank, local_rank=rank, node_rank=0, world_size=2,
                       host=f"{run_id}-host", pid=100 + rank, stream_id=f"{run_id}-{rank}")


def _records() -> list[tuple[str, dict]]:
    out = []
    for run_id, (start, lr, team, exit_code, val_loss) in RUNS.items():
        for rank in range(2):
            env = pb.Envelope(seq=1, identity=_identity(run_id, rank))
            env.run_start.name = f"{run_id}-name"
            env.run_start.start_time_ns = T0 + start * SECOND
            env.run_start.params.update({"lr": lr, "optimizer": "adam"})
            env.run_start.tags.update({"team": team})
            out.append(_decoded(env, T0 + start * SECOND))
            steps = np.arange(len(val_loss), dtype=np.int64)
            env = pb.Envelope(seq=2, identity=_identity(run_id, rank))
            values = np.asarray(val_loss) + rank  # rank 1's values are higher
            env.metrics.CopyFrom(wire.metric_batch(["val_loss"], np.zeros(len(steps), np.uint32), steps,
                                                   T0 + (start + steps) * SECOND, values))
            out.append(_decoded(env, T0 + start * SECOND))
        if exit_code is not None:
            for rank in range(2):
                env = pb.Envelope(seq=3, identity=_identity(run_id, rank))
                env.run_end.end_time_ns = T0 + (start + 60) * SECOND
                env.run_end.exit_code = exit_code
                out.append(_decoded(env, T0 + (start + 60) * SECOND))
    return out


@pytest.fixture
def db(clickhouse_url, fresh_database):
    client = connect(clickhouse_url, fresh_database, create=False)
    try:
        schema.migrate(client)
        StorageWriter(client).write(_records())
        yield clickhouse_url, fresh_database
    finally:
        client.close()


def run_cli(capsys, db, *argv: str) -> tuple[int, str, str]:
    url, database = db
    code = cli_main([*argv, "--clickhouse-url", url, "--database", database])
    out, err = capsys.readouterr()
    return code, out, err


def run_process(db, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    url, database = db
    return subprocess.run([sys.executable, "-m", "runwire.deploy.cli", *argv, "--clickhouse-url", url, "--database", database],
                          capture_output=True, text=True, timeout=60, env=env)


def table_lines(out: str) -> list[str]:
    lines = out.rstrip("\n").split("\n")
    assert set(lines[1].replace(" ", "")) == {"-"}, out  # header, dashes, rows
    return lines


def test_runs_ls_table_json_csv(capsys, db):
    code, out, _ = run_cli(capsys, db, "runs", "ls")
    assert code == 0
    lines = table_lines(out)
    assert lines[0].split()[:4] == ["run_id", "project", "name", "status"]
    assert [line.split()[0] for line in lines[2:]] == ["r-gamma", "r-beta", "r-alpha"]
    # aligned: every column starts at the same offset on every line
    status_at = lines[0].index("status")
    assert all(line[status_at:].split()[0] in ("status", "-" * 8, "FAILED", "FINISHED") for line in lines)

    code, out, _ = run_cli(capsys, db, "runs", "ls", "--status", "FINISHED", "--json")
    runs = json.loads(out)
    assert code == 0 and [r["run_id"] for r in runs] == ["r-beta", "r-alpha"]
    assert runs[0]["hosts"] == ["r-beta-host"] and runs[0]["ranks"] == 2
    assert runs[0]["start_time"].startswith("2025-01-01T00:03:20")

    code, out, _ = run_cli(capsys, db, "runs", "ls", "--csv", "--project", "cli")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["run_id"] for r in rows] == ["r-gamma", "r-beta", "r-alpha"]
    assert rows[0]["status"] == "FAILED" and rows[0]["hosts"] == "r-gamma-host"


def test_runs_show(capsys, db):
    code, out, _ = run_cli(capsys, db, "runs", "show", "r-alpha")
    assert code == 0
    assert "r-alpha-name" in out and "FINISHED (exit 0)" in out
    assert "\nparams\n" in out and "lr" in out and "0.001" in out
    assert "\nranks\n" in out and "r-alpha-host" in out
    assert "\nmetrics\n" in out and "val_loss" in out and "0.25" in out

    code, out, _ = run_cli(capsys, db, "runs", "show", "r-alpha", "--json")
    run = json.loads(out)
    assert run["params"] == {"lr": "0.001", "optimizer": "adam"} and run["tags"] == {"team": "nlp"}
    assert [r["rank"] for r in run["ranks"]] == [0, 1]
    assert run["metrics"]["val_loss"]["last"] == 0.25 and run["metrics"]["val_loss"]["max"] == 1.9

    code, out, _ = run_cli(capsys, db, "runs", "show", "r-alpha", "--csv")
    fields = dict(csv.reader(io.StringIO(out)))
    assert fields["params.lr"] == "0.001" and fields["ranks.1.host"] == "r-alpha-host"
    assert fields["metrics.val_loss.last"] == "0.25"


def test_runs_compare(capsys, db):
    code, out, _ = run_cli(capsys, db, "runs", "compare", "r-alpha", "r-beta", "r-gamma")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["r-alpha", "r-beta", "r-gamma"]
    assert any(line.split() == ["params.lr", "0.001", "0.01", "0.001"] for line in lines)
    assert not any(line.startswith("params.optimizer") for line in lines)  # the same everywhere
    assert any(line.split() == ["metrics.val_loss.last", "0.25", "0.5", "0.2"] for line in lines)

    code, out, _ = run_cli(capsys, db, "runs", "compare", "r-alpha", "r-beta", "--all-params", "--csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["field", "r-alpha", "r-beta"]
    assert ["params.optimizer", "adam", "adam"] in rows and ["params.lr", "0.001", "0.01"] in rows

    code, out, _ = run_cli(capsys, db, "runs", "compare", "r-alpha", "r-gamma", "--json")
    result = json.loads(out)
    assert result["params"] == {} and result["all_params"]["lr"] == {"r-alpha": "0.001", "r-gamma": "0.001"}
    assert result["metrics"]["val_loss"]["r-gamma"]["last"] == 0.2


def test_runs_search(capsys, db):
    text = "metrics.val_loss < 0.3 and (params.lr = '0.001' or tags.team = 'nlp')"
    code, out, _ = run_cli(capsys, db, "runs", "search", text, "--order-by", "metrics.val_loss ASC")
    assert code == 0
    lines = table_lines(out)
    assert [line.split()[0] for line in lines[2:]] == ["r-gamma", "r-alpha"]
    assert "metrics.val_loss" in lines[0] and "params.lr" in lines[0] and "tags.team" in lines[0]

    code, out, _ = run_cli(capsys, db, "runs", "search", "tags.team = 'nlp' or attributes.status = 'FAILED'",
                           "--max-results", "2", "--json")
    rows = json.loads(out)
    assert [r["run_id"] for r in rows] == ["r-gamma", "r-beta"]
    assert rows[1]["metrics.val_loss"] == 0.5 and rows[1]["params.lr"] == "0.01"

    code, out, _ = run_cli(capsys, db, "runs", "search", "params.lr = '0.001'", "--csv",
                           "--order-by", "attributes.start_time ASC")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["run_id"] for r in rows] == ["r-alpha", "r-gamma"] and rows[1]["metrics.val_loss"] == "0.2"

    code, out, _ = run_cli(capsys, db, "runs", "search", "params.lr = 'none'")
    assert code == 0 and "(no rows)" in out


def test_query(capsys, db):
    code, out, _ = run_cli(capsys, db, "query", "SELECT run_id, status FROM runs FINAL ORDER BY run_id")
    assert code == 0
    lines = table_lines(out)
    assert lines[0].split() == ["run_id", "status"]
    assert [line.split() for line in lines[2:]] == [["r-alpha", "FINISHED"], ["r-beta", "FINISHED"], ["r-gamma", "FAILED"]]

    code, out, _ = run_cli(capsys, db, "query", "SELECT run_id FROM runs FINAL WHERE run_id = {r:String}",
                           "--param", "r=r-beta", "--json")
    assert code == 0 and json.loads(out) == [{"run_id": "r-beta"}]

    code, out, err = run_cli(capsys, db, "query", "SELECT number FROM system.numbers LIMIT 50", "--csv",
                             "--max-rows", "5")
    assert code == 0 and out.splitlines() == ["number", "0", "1", "2", "3", "4"]
    assert "truncated at 5 rows" in err


def test_errors_exit_2_with_a_message_and_no_traceback(db):
    bad = run_process(db, "runs", "search", "metrics.val_loss << 0.3")
    assert bad.returncode == 2, bad.stderr
    assert "invalid filter" in bad.stderr and "(position 18)" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[-1].strip() == "^"

    missing = run_process(db, "runs", "show", "no-such-run")
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr

    refused = run_process(db, "query", "DROP TABLE metrics")
    assert refused.returncode == 2 and "read" in refused.stderr.lower() and "Traceback" not in refused.stderr
    still = run_process(db, "query", "SELECT count() FROM metrics", "--csv")
    assert still.returncode == 0 and still.stdout.splitlines() == ["count()", "12"]

    nowhere = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "runs", "ls", "--clickhouse-url", "http://127.0.0.1:9"],
                             capture_output=True, text=True, timeout=60)
    # A server that cannot be reached is a runtime failure (1), not a usage error (2).
    assert nowhere.returncode == 1 and "cannot reach ClickHouse" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_url_from_the_environment(db):
    url, database = db
    env = dict(os.environ, RUNWIRE_CLICKHOUSE_URL=url, RUNWIRE_CLICKHOUSE_DATABASE=database)
    done = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "runs", "ls", "--json"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == ["r-gamma", "r-beta", "r-alpha"]


def test_every_clickhouse_command_takes_the_same_options_and_variables(db):
    """migrate used to ignore RUNWIRE_CLICKHOUSE_URL; now every command resolves it the same way."""
    url, database = db
    env = dict(os.environ, RUNWIRE_CLICKHOUSE_URL=url, RUNWIRE_CLICKHOUSE_DATABASE=database)
    for argv in (["migrate"], ["alerts", "ls"], ["runs", "ls"]):
        done = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", *argv], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, (argv, done.stderr)
    migrated = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "migrate"], capture_output=True,
                              text=True, timeout=120, env=env)
    assert "nothing (up to date)" in migrated.stdout
    unset = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_CLICKHOUSE")}
    for argv in (["migrate"], ["alerts", "ls"], ["runs", "ls"], ["report", "r-alpha"]):
        done = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", *argv], capture_output=True, text=True,
                              timeout=120, env=unset)
        assert done.returncode == 2 and "RUNWIRE_CLICKHOUSE_URL" in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr
