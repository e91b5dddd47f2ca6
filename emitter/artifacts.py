"""Artifacts: files and directories logged by a run, content-addressed and uploaded in the
background.

    ref = run.log_artifact("ckpt/step_1000.pt", type="checkpoint")   # returns at once
    run.log_model("model/", name="model")
    ref.wait()  # optional: the record once uploaded ({"digest": ..., "size": ...})
    runwire.download_artifact(ref.record, "restored/")

An artifact is a manifest (JSON: relative path, SHA-256 and size of every file) stored as a blob
like the files themselves; the artifact's digest is the manifest's. Its record (name, type,
digest, size, file count, store) travels through the pipeline as the tag
`runwire.artifact.<name>` once every byte is in the store, so storage never lists an artifact
whose bytes are missing.

Crash safety: log_artifact() first writes a journal entry under the spool root
(`<spool>/<project>/<run>/artifacts-pending/`); it is removed only after the record was
acknowledged by the gateway. `runwire sync <spool>` finishes what a killed process left: it
uploads what is missing (blobs already stored are skipped) and spools the record for delivery.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import urlsplit

from runwire import stores
from runwire.proto.config import build
from runwire.proto.contract import MAX_KEY_LEN, text_problem

log = logging.getLogger("runwire")

ARTIFACT_PREFIX = "runwire.artifact."
MAX_ARTIFACT_NAME = MAX_KEY_LEN - len(ARTIFACT_PREFIX)
_PENDING = "artifacts-pending"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
SMALL_IN_PROCESS_BYTES = 1 << 20  # files up to this size upload in-process (see Uploader._small_local)


@dataclass(frozen=True)
class ArtifactConfig:
    """Where artifacts go. Each reads RUNWIRE_<NAME> when not passed to init()."""

    artifact_store: str = ""             # directory, file:///path or s3://bucket/prefix; default ~/.local/share/runwire/artifacts
    artifact_s3_endpoint_url: str = ""   # S3 endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)
    artifact_part_bytes: int = 16 << 20  # S3 multipart part size (>= 5 MiB)
    artifact_threads: int = 8            # parallel part (and small file) uploads
    artifact_nice: int = 10              # upload threads run at this niceness (0 full speed, 19 idle CPU only)
    artifact_finish_timeout_s: float = 600.0  # finish() waits this long for uploads; the rest: runwire sync
    artifact_process: bool = True        # hash and upload in a child process (its threads never hold the
                                         # training process's GIL); False: in a thread of this process

    def problems(self) -> list[str]:
        out = []
        if self.artifact_part_bytes < 5 << 20:
            out.append("artifact_part_bytes must be >= 5 MiB (S3's minimum part size)")
        if self.artifact_threads < 1:
            out.append("artifact_threads must be >= 1")
        if not 0 <= self.artifact_nice <= 19:
            out.append("artifact_nice must be 0..19")
        return out

    def open_store(self):
        return stores.open_store(self.artifact_store or None, self.artifact_s3_endpoint_url or None,
                                 self.artifact_part_bytes, self.artifact_threads)


def split_settings(settings: dict) -> tuple[dict, dict]:
    names = set(ArtifactConfig.__dataclass_fields__)
    return ({k: v for k, v in settings.items() if k in names}, {k: v for k, v in settings.items() if k not in names})


def build_config(overrides: dict) -> ArtifactConfig:
    return build(ArtifactConfig, overrides)


def check_name(name: str) -> str:
    problem = text_problem(name, 1, MAX_ARTIFACT_NAME)
    if problem:
        raise ValueError(f"artifact name {name!r}: {problem}")
    return name


# -- manifests (pure) ------------------------------------------------------------------------


def list_files(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of every regular file of a file or directory, sorted."""
    root = Path(path)
    if root.is_file():
        return [(root.name, root.resolve())]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file():
                found.append((full.relative_to(root).as_posix(), full.resolve()))
    return sorted(found)


def manifest_bytes(files: list[dict]) -> bytes:
    """Canonical JSON of a manifest: the same content always has the same digest."""
    return json.dumps({"version": 1, "files": sorted(files, key=lambda f: f["path"])}, sort_keys=True,
                      separators=(",", ":")).encode()


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path that stays inside the download directory, or ValueError."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or any(p in ("..", "") for p in pure.parts) or "\\" in path:
        raise ValueError(f"manifest path {path!r} would leave the download directory")
    return pure


# -- upload (thin I/O) -----------------------------------------------------------------------


def upload_tree(store, path: str | os.PathLike, threads: int = 4, nice: int = 0) -> dict:
    """Upload every file below `path` that the store lacks (`threads` files at a time), then the
    manifest. Returns {"digest", "size", "files", "uploaded_bytes"}."""
    files = list_files(path)
    if len(files) <= 1 or threads <= 1:
        entries = [_upload_file(store, rel, full) for rel, full in files]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(files)), thread_name_prefix="runwire-artifact",
                                initializer=stores.lower_priority, initargs=(nice,)) as pool:
            entries = list(pool.map(lambda f: _upload_file(store, *f), files))
    manifest = manifest_bytes([{k: e[k] for k in ("path", "sha256", "size")} for e in entries])
    digest = hashlib.sha256(manifest).hexdigest()
    if not store.has(digest):
        store.put_bytes(digest, manifest)
    return {"digest": digest, "size": sum(e["size"] for e in entries), "files": len(entries),
            "uploaded_bytes": sum(e["uploaded"] for e in entries), "store": store.url,
            "endpoint": getattr(store, "endpoint_url", None) or ""}


def _upload_file(store, rel: str, full: Path) -> dict:
    """Hash, then send unless stored. A file that changes while it is read is hashed and sent
    again (up to three times), so a blob always holds what its digest says. Small files skip the
    existence check where it costs a round trip (S3): sending them again costs about the same."""
    for _ in range(3):
        before = full.stat()
        digest = stores.sha256_file(full)
        stored = before.st_size >= store.probe_below and store.has(digest)
        if not stored:
            store.put_file(digest, full)
        after = full.stat()
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
            return {"path": rel, "sha256": digest, "size": after.st_size, "uploaded": 0 if stored else after.st_size}
        log.warning("runwire: %s changed while it was uploaded; sending it again", full)
    raise OSError(f"{full} keeps changing; not uploaded")


def record_tags(name: str, kind: str, result: dict, metadata: dict | None = None) -> dict[str, str]:
    """The tag that announces an uploaded artifact (`result`: what upload_tree returned)."""
    record = {"name": name, "type": kind, "digest": result["digest"], "size": result["size"],
              "files": result["files"], "store": result["store"]}
    if result.get("endpoint"):
        record["endpoint"] = result["endpoint"]
    if metadata:
        record["metadata"] = metadata
    return {ARTIFACT_PREFIX + name: json.dumps(record, sort_keys=True, separators=(",", ":"))}


class ArtifactRef:
    """What log_artifact returns: wait() for the record once the upload is done."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.type = name, kind
        self.record: dict | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def wait(self, timeout: float | None = None) -> dict:
        if not self._done.wait(timeout):
            raise TimeoutError(f"artifact {self.name!r} is still uploading")
        if self.error is not None:
            raise RuntimeError(f"artifact {self.name!r} failed to upload: {self.error}") from self.error
        return self.record

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, record: dict | None, error: BaseException | None = None) -> None:
        self.record, self.error = record, error
        self._done.set()


def pending_dir(spool_root: str | os.PathLike, project: str, run_id: str) -> Path:
    return Path(spool_root) / _SAFE.sub("_", project) / _SAFE.sub("_", run_id) / _PENDING


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


class Uploader:
    """One background thread that uploads artifacts in the order they were logged.

    emit(tags): hands a record to the run's exporter. flush(timeout) -> bool: waits for its
    acknowledgement (then the journal entry goes)."""

    def __init__(self, config: ArtifactConfig, journal_dir: Path, identity: dict,
                 emit: Callable[[dict[str, str]], None], flush: Callable[[float], bool]) -> None:
        self.config = config
        self.journal_dir = Path(journal_dir)
        self.identity = identity
        self._emit, self._flush = emit, flush
        self._store = None
        self._worker: _WorkerProcess | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runwire-artifacts", daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self.stats = collections.Counter()
        self.records: dict[str, dict] = {}
        self._unacked: list[tuple[dict, Path]] = []  # uploaded, record not yet acknowledged

    def _upload(self, path: str) -> dict:
        if self.config.artifact_process and not self._small_local(path):
            if self._worker is None:
                self._worker = _WorkerProcess(self.config)
            return self._worker.upload(path)
        if self._store is None:
            self._store = self.config.open_store()
        return upload_tree(self._store, path, self.config.artifact_threads, self.config.artifact_nice)

    def _small_local(self, path: str) -> bool:
        """A small file for a local store (the captured package list and diff) is hashed and
        copied in this thread: a few milliseconds, where starting the upload process costs a
        quarter of a second of finish(). S3 stays in the child (boto3 is heavy to import)."""
        if urlsplit(self.config.artifact_store).scheme == "s3":
            return False
        try:
            return Path(path).is_file() and Path(path).stat().st_size <= SMALL_IN_PROCESS_BYTES
        except OSError:
            return False

    def submit(self, path: str | os.PathLike, name: str | None = None, kind: str = "", metadata: dict | None = None,
               delete_after: bool = False) -> ArtifactRef:
        """Journal the artifact and queue it; returns at once."""
        source = Path(path)
        if not source.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        name = check_name(name or source.name)
        job = {"id": uuid.uuid4().hex, "name": name, "type": kind or "", "path": str(source.resolve()),
               "metadata": metadata or {}, "identity": self.identity, "store": self.config.artifact_store,
               "endpoint": self.config.artifact_s3_endpoint_url, "delete_after": delete_after,
               "logged_ns": time.time_ns()}
        _write_json(self.journal_dir / f"{job['id']}.json", job)
        ref = ArtifactRef(name, job["type"])
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True
        self._queue.put((job, ref))
        return ref

    def submit_bytes(self, name: str, data: bytes, kind: str) -> ArtifactRef:
        """Log in-memory content (the captured diff): written next to the journal first, so a
        crash before the upload loses nothing."""
        target = self.journal_dir / "files" / uuid.uuid4().hex / name.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self.submit(target, name=name, kind=kind, delete_after=True)

    def _loop(self) -> None:
        stores.lower_priority(self.config.artifact_nice)
        while True:
            item = self._queue.get()
            if item is None:
                if self._worker is not None:
                    self._worker.close()
                self._queue.task_done()  # a second shutdown() must not wait for the sentinel
                return
            job, ref = item
            try:
                result = self._upload(job["path"])
                tags = record_tags(job["name"], job["type"], result, job["metadata"] or None)
                self._emit(tags)
                record = json.loads(next(iter(tags.values())))
                self.records[job["name"]] = record
                self.stats["artifacts"] += 1
                self.stats["bytes_uploaded"] += result["uploaded_bytes"]
                self.stats["bytes_deduplicated"] += result["size"] - result["uploaded_bytes"]
                ref._finish(record)
                job["tags"] = tags
                journal = self.journal_dir / f"{job['id']}.json"
                _write_json(journal, job)  # uploaded: a resume only needs to resend the record
                with self._lock:
                    self._unacked.append((job, journal))
                if self._queue.qsize() == 0:
                    self._settle(5.0)  # idle: wait briefly for the records' acknowledgement
            except Exception as exc:  # noqa: BLE001 - never into the training loop; the journal stays
                self.stats["failed"] += 1
                log.warning("runwire: artifact %r not uploaded (%s); `runwire sync` retries it", job["name"], exc)
                ref._finish(None, exc)
            finally:
                self._queue.task_done()

    def _settle(self, timeout: float) -> None:
        """Drop the journal entries of records the gateway has acknowledged."""
        if self._unacked and self._flush(timeout):
            self.acknowledged()

    def wait(self, timeout: float) -> bool:
        """Block until every queued artifact is done (or `timeout`)."""
        done = self._queue.all_tasks_done  # the condition Queue.join() waits on, with a timeout
        with done:
            return done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)

    def acknowledged(self) -> None:
        """The run's exporter delivered everything: the uploaded records' journals can go."""
        with self._lock:
            done, self._unacked = self._unacked, []
        for job, journal in done:
            _finish_job(job, journal)

    def shutdown(self, timeout: float) -> bool:
        """Finish the queue within `timeout`; safe to call twice. What is left stays journaled."""
        done = self.wait(timeout) if self._started else True
        if not done:
            log.warning("runwire: %d artifact(s) still uploading after %.0f s; they are journaled in %s: finish "
                        "them with `runwire sync`", self._queue.unfinished_tasks, timeout, self.journal_dir)
        if self._started and done and self._thread.is_alive():
            self._queue.put(None)
            # Records not yet acknowledged stay journaled until acknowledged() (the run's exporter
            # delivered everything); else `runwire sync` resends them (storage collapses duplicates).
            self._thread.join(5)
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()
        return done


class _WorkerProcess:
    """Hashing and uploading in a child process (`python -m runwire.upload_worker`, niced): its
    threads never hold the training process's GIL, so a checkpoint upload cannot stretch a
    training step by making the loop wait for the interpreter lock. One JSON line per job each
    way; a child that died is started again for the next job."""

    def __init__(self, config: ArtifactConfig) -> None:
        import dataclasses

        self.settings = dataclasses.asdict(config)
        self._proc: subprocess.Popen | None = None

    def upload(self, path: str) -> dict:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "runwire.upload_worker", str(os.getpid())],
                                          stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, close_fds=True)
        try:
            self._proc.stdin.write(json.dumps({"settings": self.settings, "path": path}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError as exc:
            raise OSError(f"the upload process failed: {exc}") from None
        if not line:
            raise OSError(f"the upload process exited (status {self._proc.poll()})")
        out = json.loads(line)
        if "error" in out:
            raise OSError(out["error"])
        return out

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
            self._proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._proc = None


def _die_with_parent(parent_pid: int) -> None:
    """A killed training process takes its upload process with it (Linux PR_SET_PDEATHSIG; it
    fires when the thread that started this process ends), so a crash leaves the journal, not a
    half-orphaned upload, and `runwire sync` resumes it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(0)


def _worker_main() -> int:
    """The upload process: jobs on stdin, results on stdout, one JSON line each."""
    if len(sys.argv) > 1:
        _die_with_parent(int(sys.argv[1]))
    opened: dict[str, object] = {}
    niced = False
    for line in sys.stdin:
        job = json.loads(line)
        try:
            config = build_config(job["settings"])
            if not niced:
                stores.lower_priority(config.artifact_nice)  # threads started later inherit it
                niced = True
            key = json.dumps([config.artifact_store, config.artifact_s3_endpoint_url])
            if key not in opened:
                opened[key] = config.open_store()
            out = upload_tree(opened[key], job["path"], config.artifact_threads, config.artifact_nice)
        except Exception as exc:  # noqa: BLE001 - reported to the training process
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


def _finish_job(job: dict, journal: Path) -> None:
    journal.unlink(missing_ok=True)
    if job.get("delete_after"):
        source = Path(job["path"])
        source.unlink(missing_ok=True)
        try:
            source.parent.rmdir()
        except OSError:
            pass


def finish_pending(spool_root: str | os.PathLike, config: ArtifactConfig | None = None) -> tuple[int, int]:
    """`runwire sync`: upload what killed processes left in their journals and spool each
    record as an envelope, for the spool's own delivery to send. Returns (finished, failed)."""
    from runwire.proto import telemetry_pb2 as pb
    from runwire.spool import ENDED, Spool

    finished = failed = 0
    for journal in sorted(Path(spool_root).rglob(f"{_PENDING}/*.json")):
        try:
            job = json.loads(journal.read_text())
            tags = job.get("tags")
            if not tags:
                settings = {"artifact_store": job.get("store") or None,
                            "artifact_s3_endpoint_url": job.get("endpoint") or None}
                cfg = config or build_config(settings)
                store = cfg.open_store()
                result = upload_tree(store, job["path"], cfg.artifact_threads)
                tags = record_tags(job["name"], job["type"], result, job.get("metadata") or None)
            ident = job["identity"]
            identity = pb.Identity(stream_id=uuid.uuid4().hex, **ident)
            spool = Spool(Path(spool_root), ident["project"], ident["run_id"], ident["rank"], identity.stream_id)
            try:
                # A stream of its own holding just the record; sync's delivery sends it. It is
                # marked ended: it is not a rank that died.
                spool.describe({field.name: getattr(identity, field.name) for field in identity.DESCRIPTOR.fields})
                spool.append(1, pb.Envelope(seq=1, identity=identity, tags=pb.Tags(tags=tags)).SerializeToString())
                spool.counts[ENDED] = 1
            finally:
                spool.close(everything_acked=False)
            _finish_job(job, journal)
            finished += 1
        except FileNotFoundError as exc:
            # The file is gone: no retry can upload it.
            failed += 1
            log.warning("runwire: pending artifact %s dropped: %s", journal.name, exc)
            journal.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - one broken entry must not stop the others
            failed += 1
            log.warning("runwire: pending artifact %s not finished: %s", journal.name, exc)
    return finished, failed


# -- download ----------------------------------------------------------------------------------


def download_artifact(record: dict | str, dest: str | os.PathLike, store: str | None = None,
                      endpoint_url: str | None = None) -> Path:
    """Download an artifact into `dest` and verify every file's SHA-256.

    record: an artifact record (from ArtifactRef.wait(), `runwire artifacts ls --json` or the
    query library) or a manifest digest. store/endpoint_url: where the blobs are (default: the
    record's store, else the default local store). Returns `dest`."""
    if isinstance(record, str):
        record = {"digest": record}
    store_obj = stores.open_store(store or record.get("store"), endpoint_url or record.get("endpoint"))
    manifest = json.loads(store_obj.get_bytes(stores.check_digest(record["digest"])))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        store_obj.get_file(stores.check_digest(entry["sha256"]), dest.joinpath(*safe_relative(entry["path"]).parts))
    if hasattr(store_obj, "close"):
        store_obj.close()
    return dest

