"""runwire.integrations with the real libraries: tiny models trained on CPU log through a real
gateway, Kafka broker and ingest into ClickHouse; exact counts and the run layout are checked."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from runwire.deploy.local.stack import LocalStack

from mlflow_helpers import wait_for

pytestmark = pytest.mark.infra
SCRIPT = Path(__file__).with_name("integration_train.py")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, clickhouse_url, tmp_path_factory):
    suffix = uuid.uuid4().hex[:8]
    with LocalStack(data_dir=str(tmp_path_factory.mktemp("stack")), kafka_bootstrap=kafka_bootstrap,
                    clickhouse_url=clickhouse_url, database=f"integ_{suffix}", topic_prefix=f"integ{suffix}.",
                    group_id=f"integ-{suffix}") as stack:
        yield stack
    stack.client().command(f"DROP DATABASE IF EXISTS integ_{suffix}")  # after the ingest worker stopped


def _train(stack, tmp_path, *args, launcher: tuple[str, ...] = ()) -> str:
    """Runs integration_train.py (under ``launcher``, e.g. torchrun) logging into a new run id."""
    run_id = f"integ-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, RUNWIRE_GATEWAY=stack.gateway.address, RUNWIRE_RUN_ID=run_id, RUNWIRE_GPU="false",
               RUNWIRE_SPOOL_DIR=str(tmp_path / "spool"), PYTHONHASHSEED="0")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, *launcher, str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_id


def _counts(stack, run_id):
    return stack.client().query(
        "SELECT rank, toString(name), count(), min(step), max(step) FROM metrics FINAL WHERE run_id = {r:String} "
        "GROUP BY rank, name ORDER BY rank, name", parameters={"r": run_id}).result_rows


def _finished_ranks(stack, run_id, world_size):
    """(rank, world_size, status) of the run's ranks, once ``world_size`` of them finished."""
    def finished():
        rows = stack.client().query("SELECT rank, world_size, status FROM run_ranks FINAL WHERE run_id = {r:String} "
                                    "ORDER BY rank", parameters={"r": run_id}).result_rows
        return rows if len(rows) == world_size and all(r[2] == "FINISHED" for r in rows) else None
    return wait_for(finished, what=f"{world_size} finished ranks")


def _params(stack, run_id) -> dict:
    return dict(stack.client().query("SELECT key, value FROM params FINAL WHERE run_id = {r:String}",
                                     parameters={"r": run_id}).result_rows)


def test_lightning_logger_two_ddp_ranks(stack, tmp_path):
    project = f"lightning-{uuid.uuid4().hex[:6]}"
    run_id = _train(stack, tmp_path, "lightning", project)
    # 64 samples, batches of 8, two ranks: 4 steps per rank and epoch, 2 epochs, logged every step.
    steps = 64 // 8 // 2 * 2
    expected = [(rank, name, steps, 0, steps - 1) for rank in (0, 1) for name in ("epoch", "train_loss")]
    assert wait_for(lambda: _counts(stack, run_id) == expected or None, what="both ranks' metrics") is True
    client = stack.client()
    assert _finished_ranks(stack, run_id, 2) == [(0, 2, "FINISHED"), (1, 2, "FINISHED")]
    params = _params(stack, run_id)
    assert params == {"hidden": "8", "lr": "0.05"}
    assert client.query("SELECT toString(project), name FROM runs FINAL WHERE run_id = {r:String}",
                        parameters={"r": run_id}).result_rows == [(project, "tiny-lightning")]


def test_huggingface_callback(stack, tmp_path):
    project = f"hf-{uuid.uuid4().hex[:6]}"
    run_id = _train(stack, tmp_path, "hf", project, str(tmp_path / "out"))
    rows = wait_for(lambda: (lambda r: r if any(name == "train_loss" for _, name, *_ in r) else None)(
        _counts(stack, run_id)), what="the Trainer's logs")
    by_name = {name: (count, lo, hi) for rank, name, count, lo, hi in rows}
    assert {rank for rank, *_ in rows} == {0}
    # max_steps=6, logging_steps=1: six logs of loss at steps 1..6, one summary at step 6.
    assert by_name["loss"] == (6, 1, 6) and by_name["learning_rate"] == (6, 1, 6)
    assert by_name["train_loss"] == (1, 6, 6) and by_name["train_runtime"] == (1, 6, 6)
    client = stack.client()
    params = _params(stack, run_id)
    assert params["max_steps"] == "6" and params["model.hidden_size"] == "16"
    status = wait_for(lambda: client.query("SELECT status, name FROM runs FINAL WHERE run_id = {r:String}",
                                           parameters={"r": run_id}).result_rows or None, what="the run row")
    assert status == [("FINISHED", "tiny-bert")]


def test_huggingface_callback_two_torchrun_ranks(stack, tmp_path):
    project = f"hf2-{uuid.uuid4().hex[:6]}"
    # torchrun --standalone picks a free rendezvous port; the Trainer sets up gloo on CPU.
    run_id = _train(stack, tmp_path, "hf", project, str(tmp_path / "out"),
                    launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    # Every process logs what the Trainer logs (the loss is averaged over ranks first): per rank,
    # max_steps=6 with logging_steps=1 gives six logs at steps 1..6 and one summary at step 6.
    rows = wait_for(lambda: (lambda r: r if sum(name == "train_loss" for _, name, *_ in r) == 2 else None)(
        _counts(stack, run_id)), what="both ranks' Trainer logs")
    for rank in (0, 1):
        by_name = {name: (count, lo, hi) for r, name, count, lo, hi in rows if r == rank}
        assert by_name["loss"] == (6, 1, 6) and by_name["learning_rate"] == (6, 1, 6), (rank, by_name)
        assert by_name["train_loss"] == (1, 6, 6) and by_name["train_runtime"] == (1, 6, 6), (rank, by_name)
    assert {rank for rank, *_ in rows} == {0, 1}
    client = stack.client()
    # The same loss on both ranks: the Trainer logs the mean over processes.
    losses = client.query("SELECT rank, groupArray(value) FROM (SELECT rank, step, value FROM metrics FINAL "
                          "WHERE run_id = {r:String} AND name = 'loss' ORDER BY rank, step) GROUP BY rank ORDER BY rank",
                          parameters={"r": run_id}).result_rows
    assert losses[0][1] == losses[1][1]
    assert _finished_ranks(stack, run_id, 2) == [(0, 2, "FINISHED"), (1, 2, "FINISHED")]
    # Params come from the main process only.
    params = _params(stack, run_id)
    assert params["max_steps"] == "6" and params["model.hidden_size"] == "16"
    assert client.query("SELECT toString(project), name, status FROM runs FINAL WHERE run_id = {r:String}",
                        parameters={"r": run_id}).result_rows == [(project, "tiny-bert", "FINISHED")]
