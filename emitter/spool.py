"""The emitter's disk log: every envelope is on local disk before it is sent.

One directory per stream (one process's connection): `<root>/<project>/<run_id>/rank<rank>-<stream_id>/`

    NNNNNNNNNNNN.seg  append-only segments of records: header (seq, length, crc32, points,
                      first step, last step) + the serialized Envelope
    acks              append-only: (seq, points) of each envelope the gateway acknowledged
    counts            8 int64 slots in a shared mmap: what this rank logged (see COUNTS)
    stream.json       who wrote it: identity, gateway, pid, start time
    lock              held (fcntl, per process: a forked child does not inherit it) while the
                      writer lives; a free lock means the writer is gone and the rest may be sent

Nothing is fsynced: a SIGKILLed or OOM-killed process loses nothing that reached the page cache
(only a machine crash does). A segment is deleted once every envelope in it is acknowledged; the
directory once the stream ended with everything acknowledged.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEADER = struct.Struct("<QIIIqq")  # seq, payload length, crc32, points, first step, last step
_ACK = struct.Struct("<QI")         # seq, points
SEGMENT_BYTES = 64 << 20

# The counts file: int64 slots. log() updates LOGGED and LAST_STEP in place (no system call),
# the batcher the others; the page cache keeps them when the process is killed.
COUNTS = ("logged", "last_step", "dropped", "written", "written_last_step", "rejected", "ended", "invalid")
LOGGED, LAST_STEP, DROPPED, WRITTEN, WRITTEN_LAST_STEP, REJECTED, ENDED, INVALID = range(len(COUNTS))
_NO_STEP = -(1 << 63)


def default_root() -> Path:
    base = os.environ.get("RUNWIRE_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "runwire", "spool")
    return Path(base)


def stream_dir(root: Path, project: str, run_id: str, rank: int, stream_id: str) -> Path:
    return Path(root) / _SAFE.sub("_", project) / _SAFE.sub("_", run_id) / f"rank{rank}-{_SAFE.sub('_', stream_id)}"


def run_marker(root: Path | str, project: str, run_id: str) -> Path:
    """Left in the run's directory for good: this host has logged the run (resume="must")."""
    return Path(root) / _SAFE.sub("_", project) / _SAFE.sub("_", run_id) / ".run"


def _counts_map(path: Path) -> tuple[mmap.mmap, memoryview]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < 8 * len(COUNTS):
            os.ftruncate(fd, 8 * len(COUNTS))
        mm = mmap.mmap(fd, 8 * len(COUNTS))
    finally:
        os.close(fd)
    return mm, memoryview(mm).cast("q")


# Streams this process is writing. fcntl locks are per process, so to this process its own
# streams look free: Orphan checks here too. Cleared in a forked child (it writes none of them).
_open_here: set[Path] = set()
os.register_at_fork(after_in_child=_open_here.clear)


class Spool:
    """The writer's side: append, acknowledge, count. Used by the emitter's threads under its lock."""

    def __init__(self, root: Path, project: str, run_id: str, rank: int, stream_id: str,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = stream_dir(root, project, run_id, rank, stream_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        _open_here.add(self.dir.resolve())
        run_marker(root, project, run_id).touch()
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._mmap, self.counts = _counts_map(self.dir / "counts")
        self.counts[LAST_STEP] = self.counts[WRITTEN_LAST_STEP] = _NO_STEP
        self._acks = os.open(self.dir / "acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.segment_bytes = segment_bytes
        self._fd = -1
        self._segment: int | None = None   # first seq of the open segment
        self._size = 0
        self._unacked: dict[int, set[int]] = {}  # segment -> seqs not yet acknowledged
        self._segment_of: dict[int, int] = {}
        self.bytes = 0  # bytes of unacknowledged envelopes on disk
        self.files = 0

    def describe(self, info: dict) -> None:
        tmp = self.dir / "stream.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.dir / "stream.json")

    def append(self, seq: int, payload: bytes, points: int = 0, first_step: int = 0, last_step: int = 0) -> tuple[int, int]:
        """Write one envelope; returns (segment, offset of the payload) to read it back."""
        if self._fd < 0 or self._size >= self.segment_bytes:
            self._open_segment(seq)
        header = _HEADER.pack(seq, len(payload), zlib.crc32(payload), points, first_step, last_step)
        os.writev(self._fd, (header, payload))
        offset = self._size + _HEADER.size
        self._size += _HEADER.size + len(payload)
        self._unacked[self._segment].add(seq)
        self._segment_of[seq] = self._segment
        self.bytes += len(payload)
        return self._segment, offset

    def _open_segment(self, seq: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._delete_if_done(self._segment)
        self._segment, self._size = seq, 0
        self._unacked[seq] = set()
        self._fd = os.open(self.dir / f"{seq:012d}.seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.files += 1

    def read(self, segment: int, offset: int, length: int) -> bytes:
        with open(self.dir / f"{segment:012d}.seg", "rb") as f:
            f.seek(offset)
            return f.read(length)

    def acked(self, seq: int, points: int, size: int) -> None:
        os.write(self._acks, _ACK.pack(seq, points))
        segment = self._segment_of.pop(seq, None)
        if segment is None:
            return
        self.bytes -= size
        pending = self._unacked[segment]
        pending.discard(seq)
        if not pending and segment != self._segment:
            self._delete_if_done(segment)

    def _delete_if_done(self, segment: int | None) -> None:
        if segment is not None and not self._unacked.get(segment):
            self._unacked.pop(segment, None)
            try:
                os.unlink(self.dir / f"{segment:012d}.seg")
                self.files -= 1
            except FileNotFoundError:
                pass

    def close(self, everything_acked: bool) -> None:
        """Release the stream; remove it when nothing is left to deliver."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.close(self._acks)
        if everything_acked:
            _remove_stream_dir(self.dir)
        # The counts mapping stays: a log() racing finish() on another thread may still touch
        # it (a mapping outlives its deleted file); it goes with the Run.
        os.close(self._lock_fd)
        _open_here.discard(self.dir.resolve())


def _remove_stream_dir(path: Path) -> None:
    """Delete a delivered stream's files, then its folder unless something new appeared in it."""
    for entry in path.iterdir():
        entry.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


# -- the reader's side: runwire sync and recovery at start-up -------------------------------------

@dataclass
class Record:
    seq: int
    points: int
    first_step: int
    last_step: int
    payload: bytes


def read_records(path: Path) -> Iterator[Record]:
    """The intact records of a segment, in order; stops at a torn or corrupt tail."""
    data = path.read_bytes()
    pos = 0
    while pos + _HEADER.size <= len(data):
        seq, length, crc, points, first, last = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size: pos + _HEADER.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return
        yield Record(seq, points, first, last, payload)
        pos += _HEADER.size + length


def read_acks(directory: Path) -> dict[int, int]:
    """seq -> points of every acknowledged envelope of a stream."""
    try:
        data = (Path(directory) / "acks").read_bytes()
    except FileNotFoundError:
        return {}
    usable = len(data) - len(data) % _ACK.size
    return dict(_ACK.iter_unpack(data[:usable]))


def read_counts(directory: Path) -> dict[str, int]:
    try:
        data = (Path(directory) / "counts").read_bytes()
    except FileNotFoundError:
        return {}
    if len(data) < 8 * len(COUNTS):
        return {}
    values = struct.unpack(f"<{len(COUNTS)}q", data[:8 * len(COUNTS)])
    return {name: (None if value == _NO_STEP else value) for name, value in zip(COUNTS, values)}


def stream_dirs(root: Path) -> list[Path]:
    """Every stream directory below `root` (root itself may be one)."""
    root = Path(root)
    if (root / "counts").exists():
        return [root]
    # os.walk skips directories removed while it walks (other writers finish meanwhile).
    return sorted(Path(top) for top, _, files in os.walk(root) if "counts" in files)


class Orphan:
    """A stream whose writer is gone, locked by this process while it delivers it."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        if self.dir.resolve() in _open_here:
            raise BlockingIOError(f"{directory} is being written by this process")
        self._fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise BlockingIOError(f"{directory} is still being written by a live process") from None
        self._acks = os.open(self.dir / "acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def info(self) -> dict:
        try:
            return json.loads((self.dir / "stream.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.seg"))

    def ack(self, seq: int, points: int) -> None:
        os.write(self._acks, _ACK.pack(seq, points))

    def close(self, done: bool) -> None:
        os.close(self._acks)
        if done:
            _remove_stream_dir(self.dir)
        os.close(self._fd)

    def __enter__(self) -> "Orphan":
        return self

    def __exit__(self, *exc) -> None:
        pass


def pending_envelopes(root: Path) -> int:
    """Envelopes below `root` not acknowledged yet (what `runwire sync` would send)."""
    total = 0
    for directory in stream_dirs(root):
        acks = read_acks(directory)
        total += sum(1 for segment in sorted(directory.glob("*.seg"))
                     for record in read_records(segment) if record.seq not in acks)
    return total
