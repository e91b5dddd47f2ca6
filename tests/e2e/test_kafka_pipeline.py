"""The walking skeleton through the real thing: 2 rank processes -> gateway -> Kafka broker ->
ingest worker -> ClickHouse, with exact counts and values at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runwire.deploy.local.stack import LocalStack

pytestmark = pytest.mark.infra
WORKER = Path(__file__).with_name("rank_worker.py")


def _wait_for(client, sql: str, params: dict, expected, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = client.query(sql, parameters=params).result_rows[0][0]
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


@pytest.fixture
def kafka_stack(kafka_bootstrap, clickhouse_url, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    stack = LocalStack(data_dir=str(tmp_path), kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                       database=f"e2e_{suffix}", topic_prefix=f"e2e{suffix}.", group_id=f"e2e-{suffix}")
    with stack:
        assert stack.mode == "kafka"
        yield stack
    stack.client().command(f"DROP DATABASE IF EXISTS e2e_{suffix}")


def test_two_ranks_through_kafka_arrive_exactly_once(kafka_stack, tmp_path):
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RUNWIRE_GATEWAY=kafka_stack.gateway.address, RUNWIRE_RUN_ID=run_id, RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", RUNWIRE_SPOOL_DIR=str(tmp_path / "spool"))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "10000"], env=env, stdout=subprocess.PIPE, text=True))
    summaries = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    for summary in summaries:
        assert summary["runwire.points"] == 10000
        assert summary["runwire.dropped"] == 0
        assert summary["runwire.unacked"] == 0

    client = kafka_stack.client()
    params = {"r": run_id}
    stored = _wait_for(client, "SELECT count() FROM metrics WHERE run_id = {r:String}", params, 20000)
    assert stored == 20000
    rows = client.query(
        "SELECT rank, name, count(), min(step), max(step), sum(value) FROM metrics WHERE run_id = {r:String} "
        "GROUP BY rank, name ORDER BY rank, name", parameters=params).result_rows
    expected = []
    for rank in range(2):
        grad = sum(float(s) for s in range(5000))
        loss = sum(rank + 1.0 / (s + 1) for s in range(5000))
        expected += [(rank, "grad_norm", 5000, 0, 4999, grad), (rank, "loss", 5000, 0, 4999, loss)]
    assert [r[:5] for r in rows] == [e[:5] for e in expected]
    for got, want in zip(rows, expected):
        assert got[5] == pytest.approx(want[5], rel=1e-12)

    # Run lifecycle went through the runs topic: both ranks registered and finished.
    status = _wait_for(client, "SELECT countIf(status = 'FINISHED') FROM run_ranks FINAL WHERE run_id = {r:String}",
                       params, 2)
    assert status == 2
    assert client.query("SELECT status, world_size FROM runs FINAL WHERE run_id = {r:String}",
                        parameters=params).result_rows == [("FINISHED", 2)]
    assert client.query("SELECT value FROM params FINAL WHERE run_id = {r:String} AND key = 'lr'",
                        parameters=params).result_rows == [("0.001",)]
