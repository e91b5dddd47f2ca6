"""Artifact stores: round trips with digest checks, deduplication, multipart uploads and
corruption detection, on a local directory and on a real S3 endpoint (moto's server on
loopback)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from runwire import artifacts, stores
from runwire.stores import DigestMismatch


def _tree(root, big_bytes: int = 12 << 20):
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(big_bytes))
    (root / "sub" / "config.json").write_text('{"layers": 2}')
    (root / "empty").write_bytes(b"")
    return root


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield stores.open_store(str(tmp_path / "store"))
        return
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    s3 = stores.open_store(f"s3://{bucket}/team/artifacts", endpoint_url=endpoint, part_bytes=5 << 20, threads=3)
    yield s3
    s3.close()


def test_round_trip_verifies_every_file(store, tmp_path):
    src = _tree(tmp_path / "model")
    result = artifacts.upload_tree(store, src)
    assert (result["files"], result["size"]) == (3, (12 << 20) + 13)
    assert result["uploaded_bytes"] == result["size"]
    record = json.loads(next(iter(artifacts.record_tags("model", "model", result).values())))
    out = artifacts.download_artifact(record, tmp_path / "restored")
    for rel in ("weights.bin", "sub/config.json", "empty"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    # The artifact's digest is its manifest's: the same tree always has the same digest.
    assert artifacts.upload_tree(store, src)["digest"] == result["digest"]


def test_same_content_is_stored_once(store, tmp_path):
    first = _tree(tmp_path / "run1")
    again = tmp_path / "run2"
    again.mkdir()
    os.link(first / "weights.bin", again / "ckpt.bin")  # another run's checkpoint with the same bytes
    assert artifacts.upload_tree(store, first)["uploaded_bytes"] == (12 << 20) + 13
    second = artifacts.upload_tree(store, again)
    assert second["uploaded_bytes"] == 0 and second["size"] == 12 << 20


def test_large_file_goes_in_parts_to_s3(s3_bucket, s3_server, tmp_path):
    endpoint, bucket = s3_bucket
    s3 = stores.open_store(f"s3://{bucket}", endpoint_url=endpoint, part_bytes=5 << 20, threads=2)
    f = tmp_path / "ckpt.pt"
    f.write_bytes(os.urandom((11 << 20) + 7))
    digest = stores.sha256_file(f)
    s3.put_file(digest, f)
    head = s3_server.client().head_object(Bucket=bucket, Key=stores.blob_key(digest))
    assert head["ContentLength"] == (11 << 20) + 7
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: three parts
    s3.get_file(digest, tmp_path / "back.pt")
    assert hashlib.sha256((tmp_path / "back.pt").read_bytes()).hexdigest() == digest
    s3.close()


def test_a_corrupt_blob_is_refused_on_download(tmp_path):
    store = stores.open_store(str(tmp_path / "store"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"good bytes")
    result = artifacts.upload_tree(store, f)
    blob = store.path(stores.sha256_file(f))
    blob.write_bytes(b"evil bytes")
    with pytest.raises(DigestMismatch):
        artifacts.download_artifact(result["digest"], tmp_path / "out", store=store.url)
    assert not (tmp_path / "out" / "a.bin").exists()  # nothing unverified is left behind


def test_a_manifest_cannot_write_outside_the_destination(tmp_path):
    store = stores.open_store(str(tmp_path / "store"))
    payload = b"x"
    digest = hashlib.sha256(payload).hexdigest()
    store.put_bytes(digest, payload)
    manifest = artifacts.manifest_bytes([{"path": "../escaped", "sha256": digest, "size": 1}])
    m_digest = hashlib.sha256(manifest).hexdigest()
    store.put_bytes(m_digest, manifest)
    with pytest.raises(ValueError, match="leave the download directory"):
        artifacts.download_artifact(m_digest, tmp_path / "out", store=store.url)
    assert not (tmp_path / "escaped").exists()


def test_bad_store_urls_are_clear():
    with pytest.raises(ValueError, match="s3://bucket"):
        stores.open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="needs a bucket"):
        stores.open_store("s3:///x")
