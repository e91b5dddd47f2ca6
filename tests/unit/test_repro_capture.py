"""Run metadata capture and dataset digests (no servers: a real git repository in tmp_path)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from runwire import datasets, metadata
from runwire.metadata import CaptureConfig, redact_argv, strip_credentials


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def dirty_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "feature-x")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    _git(repo, "remote", "add", "origin", "https://alice:ghp_secretsecretsecretsecret1234@git.example.com/org/model.git")
    (repo / "train.py").write_text("lr = 0.1\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "train.py").write_text("lr = 0.3  # uncommitted change\n")
    return repo


def test_dirty_repository_is_captured_with_its_diff(dirty_repo):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dirty_repo, capture_output=True, text=True).stdout.strip()
    got = metadata.capture(CaptureConfig(capture_packages=False, capture_gpu=False), job_wide=True, host="h",
                           cwd=str(dirty_repo), argv=["train.py"])
    assert got.tags["runwire.git.commit"] == head
    assert got.tags["runwire.git.branch"] == "feature-x"
    assert got.tags["runwire.git.dirty"] == "true"
    assert got.tags["runwire.git.remote"] == "https://git.example.com/org/model.git"
    diff = got.files["git.diff"].decode()
    assert "-lr = 0.1" in diff and "+lr = 0.3  # uncommitted change" in diff
    assert got.tags["runwire.cwd"] == str(dirty_repo)
    assert got.tags["runwire.user"]


def test_clean_repository_has_no_diff_and_diff_is_size_capped(dirty_repo):
    big = CaptureConfig(capture_packages=False, capture_gpu=False, capture_diff_max_bytes=20)
    got = metadata.capture(big, True, "h", cwd=str(dirty_repo), argv=[])
    assert len(got.files["git.diff"]) == 20
    assert int(got.tags["runwire.git.diff_truncated_bytes"]) > 20
    _git(dirty_repo, "commit", "-q", "-am", "second")
    got = metadata.capture(big, True, "h", cwd=str(dirty_repo), argv=[])
    assert got.tags["runwire.git.dirty"] == "false"
    assert "git.diff" not in got.files


def test_each_part_can_be_turned_off(dirty_repo):
    off = CaptureConfig(capture_git=False, capture_packages=False, capture_gpu=False, capture_argv=False,
                        capture_user=False)
    got = metadata.capture(off, True, "h", cwd=str(dirty_repo), argv=["--token", "x"])
    assert not any(k.startswith(("runwire.git.", "runwire.argv", "runwire.user", "runwire.packages")) for k in got.tags)
    assert got.files == {}
    assert metadata.build_config({"capture_git": False}).capture_git is False


def test_packages_are_listed_with_versions():
    got = metadata.capture(CaptureConfig(capture_git=False, capture_gpu=False), True, "h", argv=[])
    lines = got.files["packages.txt"].decode().splitlines()
    assert any(line.startswith("grpcio==") for line in lines)
    assert int(got.tags["runwire.packages.count"]) == len(lines)


def test_non_zero_ranks_capture_only_their_host():
    class FakeNvml:
        def nvmlInit(self): pass
        def nvmlShutdown(self): pass
        def nvmlSystemGetDriverVersion(self): return "550.54"
        def nvmlSystemGetNVMLVersion(self): return "12.550"
        def nvmlSystemGetCudaDriverVersion(self): return 12040
        def nvmlDeviceGetCount(self): return 1
        def nvmlDeviceGetHandleByIndex(self, i): return i
        def nvmlDeviceGetName(self, h): return "NVIDIA H100"
        def nvmlDeviceGetUUID(self, h): return "GPU-1"
        def nvmlDeviceGetMemoryInfo(self, h):
            return type("M", (), {"total": 80 << 30})()

    got = metadata.capture(CaptureConfig(), job_wide=False, host="node7", nvml=FakeNvml())
    assert got.tags == {"runwire.hosts.node7.driver": "550.54", "runwire.hosts.node7.nvml": "12.550",
                        "runwire.hosts.node7.cuda": "12.4", "runwire.hosts.node7.gpu_count": "1",
                        "runwire.hosts.node7.gpus": "0:NVIDIA H100:GPU-1:81920MiB"}


@pytest.mark.parametrize("argv, expected", [
    (["train.py", "--api-key=sk-abcdefghijklmnopqrstuvwx", "--lr", "0.1"], ["train.py", "--api-key=***", "--lr", "0.1"]),
    (["train.py", "--token", "hunter2", "--epochs", "3"], ["train.py", "--token", "***", "--epochs", "3"]),
    (["train.py", "--password=pw", "DB_PASSWORD=x"], ["train.py", "--password=***", "DB_PASSWORD=***"]),
    (["train.py", "ghp_abcdefghijklmnopqrstuvwxyz012345"], ["train.py", "***"]),
    (["train.py", "--db=postgres://u:pw@db:5432/x"], ["train.py", "--db=postgres://db:5432/x"]),
    (["train.py", "--data", "s3://bucket/x", "--keep"], ["train.py", "--data", "s3://bucket/x", "--keep"]),
])
def test_secrets_in_argv_are_redacted(argv, expected):
    assert redact_argv(argv) == expected


def test_captured_argv_has_no_secret():
    got = metadata.capture(CaptureConfig(capture_git=False, capture_packages=False, capture_gpu=False), True, "h",
                           argv=["train.py", "--wandb-api-key", "0123456789abcdef", "--lr=0.1"])
    assert "0123456789abcdef" not in got.tags["runwire.argv"]
    assert got.tags["runwire.argv"] == "train.py --wandb-api-key *** --lr=0.1"


def test_strip_credentials_keeps_scp_remotes():
    assert strip_credentials("git@github.com:org/repo.git") == "git@github.com:org/repo.git"
    assert strip_credentials("https://tok@github.com/org/repo") == "https://github.com/org/repo"


def test_dataset_digest_is_stable_and_content_sensitive(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "x.csv").write_text("1,2\n")
    (a / "y.txt").write_bytes(b"\0" * 100_000)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    first = datasets.digest_path(a)
    assert first == datasets.digest_path(b) == datasets.digest_path(a)  # any copy, any run
    assert first[1:] == (100_004, 2)
    (b / "sub" / "x.csv").write_text("1,3\n")
    assert datasets.digest_path(b)[0] != first[0]
    (b / "sub" / "x.csv").rename(b / "sub" / "z.csv")
    (b / "sub" / "z.csv").write_text("1,2\n")
    assert datasets.digest_path(b)[0] != first[0]  # names are part of the content


def test_dataset_tags(tmp_path):
    f = tmp_path / "d.parquet"
    f.write_bytes(b"abc")
    tags = datasets.dataset_tags("wiki", f, context="training", schema={"text": "string"})
    import json

    record = json.loads(tags["runwire.dataset.wiki"])
    assert record["digest"] == datasets.digest_path(f)[0]
    assert record == {"name": "wiki", "source": str(f), "source_type": "local", "digest": record["digest"],
                      "context": "training", "size_bytes": 3, "files": 1, "schema": '{"text": "string"}'}
    with pytest.raises(ValueError, match="pass digest="):
        datasets.dataset_tags("remote", "s3://bucket/data/")
    remote = json.loads(datasets.dataset_tags("remote", "s3://bucket/data/", digest="abc123")["runwire.dataset.remote"])
    assert (remote["source_type"], remote["digest"]) == ("s3", "abc123")
    with pytest.raises(ValueError, match="over the"):
        datasets.dataset_tags("big", f, profile={"x": "y" * 10_000})
