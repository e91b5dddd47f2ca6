"""The background uploader against a real local store: records are emitted only once the bytes
are stored, journals stay until the record is acknowledged, bad input is refused at once."""

from __future__ import annotations

import json
import threading

import pytest

from runwire import artifacts, stores

IDENTITY = {"project": "p", "run_id": "r", "rank": 0, "local_rank": 0, "node_rank": 0, "world_size": 1,
            "host": "h", "pid": 1}


class Pipeline:
    """What the run gives the uploader: emit(tags) and flush(timeout) -> acknowledged?"""

    def __init__(self, acked: bool) -> None:
        self.emitted: list[dict] = []
        self.acked = acked
        self.lock = threading.Lock()

    def emit(self, tags):
        with self.lock:
            self.emitted.append(dict(tags))

    def flush(self, timeout):
        return self.acked


def _uploader(tmp_path, acked=True):
    pipe = Pipeline(acked)
    config = artifacts.build_config({"artifact_store": str(tmp_path / "store")})
    return artifacts.Uploader(config, tmp_path / "journal", IDENTITY, pipe.emit, pipe.flush), pipe


def test_record_follows_the_bytes_and_the_journal_goes_once_acknowledged(tmp_path):
    up, pipe = _uploader(tmp_path)
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"weights" * 1000)
    ref = up.submit(f, kind="checkpoint")
    record = ref.wait(30)
    assert up.shutdown(30)
    assert record["name"] == "ckpt.pt" and record["type"] == "checkpoint" and record["size"] == 7000
    store = stores.open_store(str(tmp_path / "store"))
    assert store.has(record["digest"])  # the manifest, and through it the file
    assert pipe.emitted == [{"runwire.artifact.ckpt.pt": json.dumps(record, sort_keys=True, separators=(",", ":"))}]
    assert not list((tmp_path / "journal").glob("*.json"))


def test_unacknowledged_records_stay_journaled_for_sync(tmp_path):
    up, pipe = _uploader(tmp_path, acked=False)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    up.submit(f, name="a").wait(30)
    up.shutdown(30)
    [journal] = (tmp_path / "journal").glob("*.json")
    assert json.loads(journal.read_text())["tags"] == pipe.emitted[0]  # sync resends exactly this


def test_bad_input_is_refused_at_once(tmp_path):
    up, _ = _uploader(tmp_path)
    with pytest.raises(FileNotFoundError):
        up.submit(tmp_path / "missing")
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="artifact name"):
        up.submit(f, name="bad\nname")
    with pytest.raises(ValueError, match="artifact name"):
        up.submit(f, name="x" * 300)
    up.shutdown(1)


def test_a_failed_upload_is_reported_on_the_ref_and_kept(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    pipe = Pipeline(True)
    config = artifacts.build_config({"artifact_store": str(blocker / "store")})
    up = artifacts.Uploader(config, tmp_path / "journal", IDENTITY, pipe.emit, pipe.flush)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    ref = up.submit(f)
    with pytest.raises(RuntimeError, match="failed to upload"):
        ref.wait(30)
    assert up.shutdown(5)
    assert pipe.emitted == []  # no record for bytes that are not stored
    assert len(list((tmp_path / "journal").glob("*.json"))) == 1  # `runwire sync` retries it


def test_config_is_validated():
    from runwire.proto.config import ConfigError

    with pytest.raises(ConfigError, match="artifact_part_bytes"):
        artifacts.build_config({"artifact_part_bytes": 1024})


def test_shutdown_twice_returns_at_once(tmp_path):
    up, _ = _uploader(tmp_path)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    up.submit(f).wait(30)
    assert up.shutdown(30)
    assert up.shutdown(2)  # the first shutdown's sentinel is done; nothing left to wait for


def test_small_local_files_skip_the_upload_process_and_large_ones_use_it(tmp_path):
    """The captured metadata (a few KB) must not make finish() start a Python process; a
    checkpoint still hashes and uploads outside the training process's GIL."""
    up, _ = _uploader(tmp_path)
    small = tmp_path / "requirements.txt"
    small.write_text("numpy==2.0\n")
    assert up.submit(small).wait(30)["size"] == small.stat().st_size
    assert up._worker is None
    large = tmp_path / "ckpt.pt"
    large.write_bytes(b"w" * (artifacts.SMALL_IN_PROCESS_BYTES + 1))
    assert up.submit(large).wait(30)["size"] == large.stat().st_size
    assert up._worker is not None
    assert up.shutdown(30)


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1024 + 5])
def test_sha256_file_matches_hashlib_at_every_size(tmp_path, size):
    import hashlib
    import os

    f = tmp_path / "blob"
    data = os.urandom(size)
    f.write_bytes(data)
    assert stores.sha256_file(f, chunk=1024) == stores.sha256_file(f) == hashlib.sha256(data).hexdigest()
