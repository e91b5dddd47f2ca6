"""Content-addressed blob stores for artifacts: a local directory (the embedded default) and
S3-compatible object storage (boto3, imported only when an S3 store is opened).

A blob's key is its SHA-256: `<root>/blobs/sha256/<2 hex>/<64 hex>`. A blob that exists is never
uploaded again, so the same checkpoint logged by two runs is stored once. Every download is
verified against its digest.

Bytes go from the training process straight to the store, not through the gateway: a gateway
sized for telemetry would have to carry every checkpoint (gigabytes per save, from every job),
and training nodes already hold storage credentials for their data and checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

CHUNK = 8 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class DigestMismatch(IOError):
    """Downloaded bytes do not hash to the digest they were stored under."""


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Streaming SHA-256 of a file (bounded memory; hashlib releases the GIL on large updates)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        # A small file gets a small buffer: 8 MiB for a package list stayed in the training
        # process's memory (bench-emitter, emitter_own_mb 9.6 -> 17.7).
        buf = bytearray(max(1, min(chunk, os.fstat(f.fileno()).st_size + 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def blob_key(digest: str) -> str:
    check_digest(digest)
    return f"blobs/sha256/{digest[:2]}/{digest}"


def default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "runwire", "artifacts")


def open_store(url: str | None = None, endpoint_url: str | None = None, part_bytes: int = 16 << 20,
               threads: int = 8):
    """A store for `url`: a directory path or file:///path, or s3://bucket[/prefix].
    endpoint_url: the S3 endpoint (default $RUNWIRE_ARTIFACT_S3_ENDPOINT_URL, then boto3's own
    configuration, e.g. AWS_ENDPOINT_URL)."""
    url = url or default_store_url()
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"artifact store {url!r}: s3:// needs a bucket")
        return S3Store(parts.netloc, parts.path.strip("/"), endpoint_url=endpoint_url, part_bytes=part_bytes,
                       threads=threads)
    if parts.scheme in ("", "file"):
        return LocalStore(parts.path if parts.scheme == "file" else url)
    raise ValueError(f"artifact store {url!r}: use a directory, file:///path or s3://bucket/prefix")


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads individually), so uploads
    yield the CPU to the training loop."""
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


class LocalStore:
    probe_below = 0  # has() is a stat: always check

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_file(self, digest: str, source: str | os.PathLike) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(source, tmp)  # sendfile: the copy stays in the kernel
            os.replace(tmp, final)        # atomic: a reader never sees half a blob
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, digest: str, data: bytes) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, final)

    def get_bytes(self, digest: str) -> bytes:
        data = self.path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} in {self.url} is corrupt")
        return data

    def get_file(self, digest: str, dest: str | os.PathLike) -> None:
        with open(self.path(digest), "rb") as src:
            _write_verified(iter(lambda: src.read(CHUNK), b""), digest, dest)


class S3Store:
    """Blobs in s3://bucket/prefix/blobs/sha256/..; large files in parallel multipart uploads."""

    probe_below = 1 << 20  # smaller files are sent without a HEAD first (as cheap as the HEAD)

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, part_bytes: int = 16 << 20,
                 threads: int = 8) -> None:
        import boto3  # lazily: only S3 users need it
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url = endpoint_url or os.environ.get("RUNWIRE_ARTIFACT_S3_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.part_bytes = max(5 << 20, part_bytes)  # S3's minimum part size
        self.threads = max(1, threads)
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url,
                                   config=Config(max_pool_connections=max(10, threads * 2),
                                                 retries={"max_attempts": 5, "mode": "standard"}))
        self._transfer = TransferConfig(multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes,
                                        max_concurrency=self.threads)

    def key(self, digest: str) -> str:
        return f"{self.prefix}/{blob_key(digest)}" if self.prefix else blob_key(digest)

    def has(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put_bytes(self, digest: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(digest), Body=data)

    def put_file(self, digest: str, source: str | os.PathLike) -> None:
        # boto3's managed transfer: parallel multipart above part_bytes, retries, bounded memory.
        # Its worker threads are created by the calling (niced) thread and inherit its priority.
        self.client.upload_file(os.fspath(source), self.bucket, self.key(digest), Config=self._transfer)

    def get_bytes(self, digest: str) -> bytes:
        data = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"].read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} in {self.url} is corrupt")
        return data

    def get_file(self, digest: str, dest: str | os.PathLike) -> None:
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
        _write_verified(body.iter_chunks(CHUNK), digest, dest)

    def close(self) -> None:
        self.client.close()


def _write_verified(chunks, digest: str, dest: str | os.PathLike) -> None:
    """Write `chunks` to `dest` only if they hash to `digest` (via a temporary file)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != digest:
            raise DigestMismatch(f"{dest.name}: downloaded bytes hash to {h.hexdigest()}, expected {digest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
