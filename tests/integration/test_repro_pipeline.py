"""Reproducibility end to end: training processes -> gateway -> Kafka -> ingest -> ClickHouse, with
artifacts in a local store or a real S3 endpoint: captured metadata (dirty diff, redacted argv),
dataset digests, artifact round trip and deduplication across runs, the model registry from the
CLI, and an upload finished by `runwire sync` after the emitter was killed mid-upload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runwire import datasets
from runwire.deploy.local.stack import LocalStack

pytestmark = pytest.mark.infra
WORKER = Path(__file__).with_name("repro_worker.py")
SECRET = "sk-live0123456789abcdefghij"


def _wait_rows(client, sql: str, params: dict, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = client.query(sql, parameters=params).result_rows
        if predicate(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runwire.deploy.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture
def stack(kafka_bootstrap, clickhouse_url, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    s = LocalStack(data_dir=str(tmp_path / "stack"), kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url,
                   database=f"repro_{suffix}", topic_prefix=f"repro{suffix}.", group_id=f"repro-{suffix}")
    with s:
        assert s.mode == "kafka"
        yield s
    s.client().command(f"DROP DATABASE IF EXISTS repro_{suffix}")


@pytest.fixture
def dirty_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "train.py").write_text("lr = 0.1\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=repo, check=True)
    (repo / "train.py").write_text("lr = 0.2  # tried on the cluster, never committed\n")
    return repo


def _env(stack, tmp_path, run_id, store, **extra):
    env = dict(os.environ, RUNWIRE_GATEWAY=stack.gateway.address, RUNWIRE_RUN_ID=run_id, RUNWIRE_GPU="false",
               RUNWIRE_SPOOL_DIR=str(tmp_path / "spool"), RUNWIRE_ARTIFACT_STORE=str(store),
               RUNWIRE_REGISTRY=str(tmp_path / "registry.db"), RUNWIRE_CLICKHOUSE_URL=stack.clickhouse_url,
               RUNWIRE_CLICKHOUSE_DATABASE=stack.database, RUNWIRE_CAPTURE="true")
    env.update(extra)
    return env


def _blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs").rglob("*") if p.is_file()}


def test_runs_are_reproducible_through_the_pipeline(stack, dirty_repo, tmp_path):
    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    for i in range(3):
        (data / "shards" / f"{i}.jsonl").write_text(f'{{"text": "doc {i}"}}\n' * 1000)
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(3 << 20))
    (model / "config.json").write_text('{"hidden": 64}')
    store = tmp_path / "store"

    runs, outputs, blobs = [f"repro-{uuid.uuid4().hex[:8]}" for _ in range(2)], [], []
    for run_id in runs:
        env = _env(stack, tmp_path, run_id, store)
        out = subprocess.run([sys.executable, str(WORKER), "train", str(data), str(model), f"--api-key={SECRET}",
                              "--epochs", "3"], cwd=dirty_repo, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        outputs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        blobs.append(_blobs(store))

    # Same model, data, diff and packages in both runs: same digests, and the second run stored
    # no new blob at all.
    assert outputs[0]["model"]["digest"] == outputs[1]["model"]["digest"]
    assert outputs[0]["dataset"]["digest"] == outputs[1]["dataset"]["digest"] == datasets.digest_path(data)[0]
    assert blobs[1] == blobs[0] and len(blobs[0]) == 7  # model: 2 files; diff, packages: 1 each; 3 manifests

    client = stack.client()
    run1 = {"r": runs[0]}
    tags = dict(_wait_rows(client, "SELECT key, value FROM tags FINAL WHERE run_id = {r:String} AND "
                           "startsWith(key, 'runwire.')", run1, lambda rows: any(k == "runwire.argv" for k, _ in rows)))
    assert tags.get("runwire.git.dirty") == "true" and tags["runwire.git.branch"] == "main", tags
    assert SECRET not in tags["runwire.argv"] and "--api-key=***" in tags["runwire.argv"]
    assert tags["runwire.python.version"] and int(tags["runwire.packages.count"]) > 10

    artifacts = _wait_rows(client, "SELECT name, type, digest, files FROM artifacts FINAL WHERE run_id = {r:String} "
                                   "ORDER BY name", run1, lambda rows: len(rows) >= 3)
    names = {r[0]: r for r in artifacts}
    assert set(names) == {"model", "runwire/git.diff", "runwire/packages.txt"}
    assert names["model"][1:] == ("model", outputs[0]["model"]["digest"], 2)
    ds = _wait_rows(client, "SELECT name, digest, context, files FROM datasets FINAL WHERE run_id = {r:String}", run1,
                    lambda rows: len(rows) == 1)
    assert ds == [("corpus", datasets.digest_path(data)[0], "training", 3)]

    env = _env(stack, tmp_path, runs[0], store)
    listed = _cli("artifacts", "ls", runs[0], "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {a["name"] for a in json.loads(listed.stdout)} == set(names)
    got = _cli("artifacts", "get", runs[0], "runwire/git.diff", "-o", str(tmp_path / "diff"), env=env)
    assert got.returncode == 0, got.stderr
    assert "+lr = 0.2  # tried on the cluster, never committed" in (tmp_path / "diff" / "git.diff").read_text()
    got = _cli("artifacts", "get", runs[1], "model", "-o", str(tmp_path / "restored"), env=env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "restored" / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
    missing = _cli("artifacts", "get", runs[0], "nope", "-o", str(tmp_path / "x"), env=env)
    assert missing.returncode == 2 and "no artifact 'nope'" in missing.stderr
    shown = _cli("runs", "show", runs[0], env=env)
    assert "runwire.git.branch" in shown.stdout
    # Captured metadata is searchable like any tag.
    found = _cli("runs", "search", "tags.runwire.git.branch = 'main' and tags.runwire.git.dirty = 'true'", "--json",
                 env=env)
    assert found.returncode == 0, found.stderr
    assert {r["run_id"] for r in json.loads(found.stdout)} >= set(runs)

    # The registry, from the CLI: versions from both runs, an alias, stages, the history.
    for run_id in runs:
        reg = _cli("models", "register", "ranker", "--run", run_id, "--reason", "nightly", env=env)
        assert reg.returncode == 0, reg.stderr
    show = json.loads(_cli("models", "show", "ranker", "1", "--json", env=env).stdout)
    assert show["run_id"] == runs[0] and show["digest"] == outputs[0]["model"]["digest"]
    assert show["lineage"]["git.commit"] == tags["runwire.git.commit"]
    assert show["lineage"]["datasets"]["corpus"]["digest"] == datasets.digest_path(data)[0]
    assert show["lineage"]["git.diff.digest"] == names["runwire/git.diff"][2]
    assert _cli("models", "alias", "ranker", "champion", "1", env=env).returncode == 0
    assert _cli("models", "transition", "ranker", "1", "Production", env=env).returncode == 0
    assert _cli("models", "transition", "ranker", "2", "Production", "--archive-existing", "--reason", "A/B",
                env=env).returncode == 0
    assert _cli("models", "alias", "ranker", "champion", "2", env=env).returncode == 0
    ls = json.loads(_cli("models", "ls", "--json", env=env).stdout)
    assert ls[0]["aliases"] == {"champion": 2} and ls[0]["stages"] == {"Staging": [], "Production": [2]}
    history = json.loads(_cli("models", "history", "ranker", "--json", env=env).stdout)
    assert [(h["version"], h["old"], h["new"]) for h in history if h["action"] == "stage" and h["old"]] == [
        (1, "None", "Production"), (1, "Production", "Archived"), (2, "None", "Production")]
    bad = _cli("models", "transition", "ranker", "7", "Production", env=env)
    assert bad.returncode == 2 and "no version 7" in bad.stderr


def test_upload_killed_midway_is_finished_by_sync(stack, s3_bucket, s3_server, tmp_path):
    endpoint, bucket = s3_bucket
    run_id = f"repro-{uuid.uuid4().hex[:8]}"
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(os.urandom(150 << 20))
    env = _env(stack, tmp_path, run_id, f"s3://{bucket}/ckpts", RUNWIRE_ARTIFACT_S3_ENDPOINT_URL=endpoint,
               RUNWIRE_ARTIFACT_PART_BYTES=str(5 << 20), RUNWIRE_ARTIFACT_THREADS="1", RUNWIRE_CAPTURE="false")
    proc = subprocess.Popen([sys.executable, str(WORKER), "big", str(ckpt)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    s3 = s3_server.client()
    try:
        # Kill it once the multipart upload is under way, with parts sent and parts missing.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            if uploads and len(s3.list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                             UploadId=uploads[0]["UploadId"]).get("Parts", [])) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the upload never started")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")  # no blob, no manifest yet
    journal = list((tmp_path / "spool").rglob("artifacts-pending/*.json"))
    assert len(journal) == 1

    synced = _cli("sync", str(tmp_path / "spool"), "--gateway", stack.gateway.address, env=env)
    assert synced.returncode == 0, synced.stderr + synced.stdout
    assert "finished 1 pending upload" in synced.stdout
    assert not list((tmp_path / "spool").rglob("artifacts-pending/*.json"))

    client = stack.client()
    rows = _wait_rows(client, "SELECT name, type, size_bytes, store FROM artifacts FINAL WHERE run_id = {r:String}",
                      {"r": run_id}, lambda rows: len(rows) == 1)
    assert rows == [("ckpt", "checkpoint", 150 << 20, f"s3://{bucket}/ckpts")]
    got = _cli("artifacts", "get", run_id, "ckpt", "-o", str(tmp_path / "restored"), env=env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "restored" / "ckpt.pt").read_bytes() == ckpt.read_bytes()
