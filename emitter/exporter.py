"""The emitter's engine: bounded queue -> batcher thread -> acknowledged gRPC stream.

`log()` only appends to a deque. The batcher thread turns queued points into columnar
envelopes and appends each to the on-disk spool (spool.py) before it is sent, so a killed
process loses at most its in-memory queue (about one flush interval). Envelopes are resent after
every reconnect until acknowledged; a copy stays in memory (up to a bound) so sending never
reads the disk in the common case.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import socket
import threading
import time
import uuid
from itertools import chain, repeat
from operator import itemgetter
from dataclasses import dataclass, field

import grpc

from runwire import wire
from runwire.proto import retry
from runwire.proto.config import build, secret
from runwire.identity import Layout
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import (AUTH, DEFAULT_BATCH_POINTS, KEEPALIVE_TIME_MS, MAX_NAME_LEN, REJECT,
                                    STREAM_METHOD, classify_grpc, valid_metric_name)
from runwire import spool as spool_files
from runwire.spool import Spool, default_root

log = logging.getLogger("runwire")

# True once this process has opened a gRPC channel: a child forked after that must not use gRPC.
grpc_in_use = False

_DELIVERY_KEYS = frozenset({"runwire.acked", "runwire.unacked", "runwire.envelopes", "runwire.rejected"})


@dataclass(frozen=True)
class EmitterConfig:
    """Emitter settings. Each reads RUNWIRE_<NAME> when not passed to init()."""

    gateway: str = ""                    # RUNWIRE_GATEWAY: host:port; default the local stack's, else 127.0.0.1:50051
    token: str = secret("")              # RUNWIRE_TOKEN: bearer token for the project
    tls: bool = False                    # RUNWIRE_TLS: connect with TLS (use it whenever a token is set)
    tls_ca_file: str = ""                # RUNWIRE_TLS_CA_FILE: CA bundle (PEM); default: system roots
    max_queue: int = 50_000              # log() calls buffered; beyond, the oldest are dropped
    batch_points: int = DEFAULT_BATCH_POINTS  # points per envelope
    flush_interval_s: float = 0.5        # an envelope leaves at least this often; sooner once one is full
    max_unacked_bytes: int = 16 << 20    # copies of unacknowledged envelopes kept in memory (all are on disk)
    max_spool_bytes: int = 2 << 30       # unacknowledged bytes on disk; beyond, the queue backs up and drops
    max_in_flight: int = 64              # envelopes sent ahead of their acknowledgement
    spool_dir: str = ""                  # default ~/.cache/runwire/spool
    finish_timeout_s: float = 30.0       # finish() waits at most this long for acknowledgements
    gpu: bool = True                     # sample this process's GPUs with NVML
    gpu_interval_s: float = 1.0          # >= 0.1
    gpu_sample_all: bool = False         # sample every GPU of the node, not only this rank's
    strict: bool = False                 # raise on non-numeric values instead of counting them
    enabled: bool = True                 # False: every call is a no-op

    def problems(self) -> list[str]:
        out = []
        if self.max_queue < 1 or self.batch_points < 1 or self.max_in_flight < 1:
            out.append("max_queue, batch_points and max_in_flight must be >= 1")
        if self.flush_interval_s <= 0:
            out.append("flush_interval_s must be > 0")
        if self.gpu_interval_s < 0.1:
            out.append("gpu_interval_s must be >= 0.1")
        if self.finish_timeout_s < 0:
            out.append("finish_timeout_s must be >= 0")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "EmitterConfig":
        config = build(cls, overrides)
        if not config.gateway:
            config = dataclasses.replace(config, gateway=local_gateway())
        return config


def local_gateway() -> str:
    """The gateway of the running local stack (`runwire up`, `runwire ui`, `runwire demo`), else
    the default address. Says so on stderr, as trackers do ("wandb: Syncing run ..."), since
    logging is often unconfigured in a training script."""
    import sys

    from runwire.proto import localstack

    record = localstack.read_record()
    if record and record.get("gateway"):
        print(f"runwire: logging to the local stack's gateway {record['gateway']} ({record['path']})",
              file=sys.stderr, flush=True)
        return record["gateway"]
    return f"127.0.0.1:{localstack.DEFAULT_GATEWAY_PORT}"


@dataclass
class _Connection:
    """One incarnation of the gRPC stream."""

    to_send: collections.deque = field(default_factory=collections.deque)
    in_flight: int = 0
    sent_at: dict = field(default_factory=dict)
    closed: bool = False
    call: object = None


class _Once:
    """Log a message once per key; later repeats are only counted."""

    def __init__(self) -> None:
        self.seen: set = set()

    def warn(self, key, message: str, *args) -> None:
        if key not in self.seen:
            self.seen.add(key)
            log.warning(message, *args)


class Exporter:
    def __init__(self, config: EmitterConfig, layout: Layout, project: str) -> None:
        self.config = config
        self.identity = pb.Identity(
            project=project, run_id=layout.run_id, rank=layout.rank, local_rank=layout.local_rank,
            node_rank=layout.node_rank, world_size=layout.world_size, host=layout.host,
            pid=os.getpid(), stream_id=uuid.uuid4().hex)
        self.spool_root = config.spool_dir or default_root()
        self.spool = Spool(self.spool_root, project, layout.run_id, layout.rank, self.identity.stream_id)
        self.spool.describe({"project": project, "run_id": layout.run_id, "rank": layout.rank,
                             "local_rank": layout.local_rank, "node_rank": layout.node_rank,
                             "world_size": layout.world_size, "host": layout.host, "pid": os.getpid(), "machine": socket.gethostname(),
                             "stream_id": self.identity.stream_id, "gateway": config.gateway,
                             "start_time_ns": time.time_ns()})
        self.counts = self.spool.counts  # shared with log(): see spool.COUNTS

        # Hot path state: log() touches only these two.
        self.points: collections.deque = collections.deque(maxlen=config.max_queue)
        self.dropped = 0

        self._wake = threading.Event()
        self._stop = threading.Event()           # interrupts backoff sleeps
        self._draining = False                   # batcher: last pass, then exit
        self._closing = False                    # sender: stop reconnecting
        self._control: collections.deque = collections.deque()  # (body field, message) for params/tags/gpu
        self._cond = threading.Condition()
        self._seq = 0
        self._passes = 0  # completed batcher passes, for flush()
        self._send_partial = False  # flush(): the next pass sends the envelope it is filling
        self._auth_failed = False
        # Unacknowledged envelopes: seq -> [payload or None (read it from disk), segment, offset, size, points].
        self._entries: dict[int, list] = {}
        self._memory_bytes = 0
        self._conn: _Connection | None = None
        self._once = _Once()
        self._last: dict[str, float] = {}

        self.stats = {"points": 0, "envelopes": 0, "acked": 0, "rejected": 0, "invalid_values": 0,
                      "invalid_names": 0, "queue_high_water": 0, "reconnects": 0, "send_latency_sum_s": 0.0,
                      "send_latency_max_s": 0.0, "send_latency_count": 0}

        self._batcher = threading.Thread(target=self._batch_loop, name="runwire-batcher", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="runwire-sender", daemon=True)

    def start(self, run_start: pb.RunStart, send: bool = True) -> None:
        """send=False: write to the spool only (a process that must not use gRPC)."""
        global grpc_in_use
        self._emit(run_start=run_start)
        self._batcher.start()
        if send:
            grpc_in_use = True
            self._sender.start()
        else:
            self._closing = True

    # -- called from the training loop ------------------------------------------------
    def add_control(self, **body) -> None:
        """Queue a params/tags/gpu body; sent in order with the metrics."""
        self._control.append(body)
        self._wake.set()

    def count_invalid_call(self, data, error: Exception) -> None:
        """A log() call that could not be queued at all (not a mapping, or a bad step): its
        values are counted as invalid."""
        try:
            n = max(1, len(data)) if isinstance(data, collections.abc.Mapping) else 1
        except Exception:
            n = 1
        self.stats["invalid_values"] += n
        self._once.warn(("call", type(error).__name__), "runwire: log() call skipped: %s (log() takes a "
                        "mapping of names to numbers and an integer step)", error)

    # -- batcher ----------------------------------------------------------------------
    def _batch_loop(self) -> None:
        # Full envelopes leave at once; the one being filled waits until its oldest point is
        # flush_interval_s old (or flush()/finish()), so a busy run sends full envelopes only.
        interval = self.config.flush_interval_s
        # The first pass comes soon, to learn the logging rate; after it, the rate decides.
        wait, last = min(interval, _FIRST_PASS_S), time.monotonic()
        partial: _MetricBuilder | None = None
        partial_since = last
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            final = self._draining
            force, self._send_partial = self._send_partial, False
            points_before = self.stats["points"]
            now = time.monotonic()
            if partial is None:
                partial_since = last  # its points were all logged after the previous pass
            send_partial = final or force or now - partial_since >= interval - _MIN_DRAIN_WAIT_S
            try:
                partial = self._drain(partial, send_partial)
            except Exception:  # never let a bad value kill the thread
                log.exception("runwire batcher failed; continuing")
                partial = None
            now = time.monotonic()
            wait = next_drain_wait(self.stats["points"] - points_before, now - last,
                                   self.config.batch_points, interval)
            if partial is not None:
                wait = max(_MIN_DRAIN_WAIT_S, min(wait, partial_since + interval - now))
            last = now
            with self._cond:
                self._passes += 1
                self._cond.notify_all()
            if final:
                return

    def _drain(self, partial: "_MetricBuilder | None", send_partial: bool) -> "_MetricBuilder | None":
        """Send the queue as envelopes; returns the last one, not yet full, unless send_partial."""
        points = self.points
        high = len(points)
        if high > self.stats["queue_high_water"]:
            self.stats["queue_high_water"] = high
        if self._control and partial is not None:
            # Points logged before a params/tags/GPU update go out ahead of it.
            self._emit_metrics(partial)
            partial = None
        while self._control:
            self._emit(**self._control.popleft())
        batch = partial or _MetricBuilder(self._valid_name)
        limit = self.config.batch_points
        while points:
            self._wait_for_spool_space()
            for keys, calls in _take_groups(points, limit - len(batch.values)):
                try:
                    added = batch.add_group(keys, calls)
                except Exception:  # a bad name or value in this group: sort it out call by call
                    added = sum(self._add_call_slowly(batch, call) for call in calls)
                else:
                    self._last.update(zip(keys, batch.values[-len(keys):]))
                self.stats["points"] += added
            if len(batch.values) >= limit:
                self._emit_metrics(batch)
                batch = _MetricBuilder(self._valid_name)
        if not batch.values:
            return None
        if send_partial:
            self._emit_metrics(batch)
            return None
        return batch

    _valid_name = staticmethod(valid_metric_name)

    def _add_call_slowly(self, batch: "_MetricBuilder", call: tuple) -> int:
        ts, step, data = call
        added = 0
        for name, value in data.items():
            if not batch.known(name):
                self.stats["invalid_names"] += 1
                self.counts[spool_files.INVALID] += 1
                self._once.warn(("name", str(name)[:80]), "runwire: metric name %r rejected: names are 1-%d "
                                "printable characters", str(name)[:80], MAX_NAME_LEN)
                continue
            try:
                number = float(value)  # int, float, bool, numpy scalars, 0-d tensors
            except Exception:  # also OverflowError (10**400) and whatever a __float__ raises
                self.stats["invalid_values"] += 1
                self.counts[spool_files.INVALID] += 1
                self._once.warn(("value", name), "runwire: value of %r is not a number (%s); such values are "
                                "counted and skipped", name, type(value).__name__)
                continue
            batch.add_group((name,), [(ts, step, {name: number})])
            self._last[name] = number
            added += 1
        return added

    def _wait_for_spool_space(self) -> None:
        # The spool is full: stop draining, so the queue fills and drops its oldest points.
        while self.spool.bytes > self.config.max_spool_bytes and not self._stop.is_set():
            self._stop.wait(0.1)

    def _emit_metrics(self, batch: "_MetricBuilder") -> None:
        steps = batch.steps
        first, last = steps[0], steps[-1]  # the loss report's step range: O(1), steps mostly ascend
        self._emit(len(batch.values), first, last, metrics=batch.message())
        counts = self.counts
        counts[spool_files.WRITTEN] += len(batch.values)
        if last > counts[spool_files.WRITTEN_LAST_STEP]:
            counts[spool_files.WRITTEN_LAST_STEP] = last

    def _emit(self, points: int = 0, first_step: int = 0, last_step: int = 0, **body) -> None:
        with self._cond:
            self._seq += 1
            seq = self._seq
        envelope = pb.Envelope(seq=seq, identity=self.identity, **body)
        payload = envelope.SerializeToString()
        with self._cond:
            # On disk before it can be sent: a killed process loses none of it.
            try:
                segment, offset = self.spool.append(seq, payload, points, first_step, last_step)
            except OSError as exc:  # disk full, spool removed: keep sending from memory
                segment, offset = None, 0
                self._once.warn(("spool", exc.errno), "runwire: cannot write to the spool %s (%s); unacknowledged "
                                "data is held in memory only", self.spool.dir, exc)
            if segment is None or self._memory_bytes + len(payload) <= self.config.max_unacked_bytes:
                self._entries[seq] = [payload, segment, offset, len(payload), points]
                self._memory_bytes += len(payload)
            else:
                self._entries[seq] = [None, segment, offset, len(payload), points]
            self.stats["envelopes"] += 1
            if self._conn is not None and not self._conn.closed:
                self._conn.to_send.append(seq)
            self._cond.notify_all()

    # -- sender -----------------------------------------------------------------------
    def _payload(self, seq: int) -> bytes | None:
        entry = self._entries.get(seq)
        if entry is None:
            return None
        if entry[0] is not None:
            return entry[0]
        try:
            return self.spool.read(entry[1], entry[2], entry[3])
        except FileNotFoundError:
            return None

    def _requests(self, conn: _Connection):
        while True:
            with self._cond:
                while True:
                    if conn.closed:
                        return
                    if conn.to_send and conn.in_flight < self.config.max_in_flight:
                        seq = conn.to_send.popleft()
                        if seq in self._entries:
                            payload = self._payload(seq)
                            if payload is not None:
                                break
                        continue
                    self._cond.wait(0.5)
                conn.in_flight += 1
                conn.sent_at[seq] = time.monotonic()
            yield payload

    def _send_loop(self) -> None:
        attempt = 0
        metadata = [("authorization", f"Bearer {self.config.token}")] if self.config.token else None
        options = CHANNEL_OPTIONS
        while not self._closing:
            conn = _Connection()
            with self._cond:
                conn.to_send.extend(sorted(self._entries))
                self._conn = conn
            channel = open_channel(self.config, options)
            try:
                call = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Ack.FromString)(
                    self._requests(conn), metadata=metadata)
                conn.call = call
                for ack in call:
                    if ack.code in ("", "OK"):
                        attempt = 0  # only progress resets the backoff, not a busy/unavailable answer
                    if not self._on_ack(conn, ack):
                        call.cancel()
                        break
            except grpc.RpcError as exc:
                if self._closing:
                    return
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
                if classify_grpc(code) == AUTH:
                    self._refused(code, _details(exc))
                    return
                self._once.warn(("rpc", code), "runwire: gateway %s: %s (%s); keeping data and retrying",
                                self.config.gateway, code, _details(exc))
            finally:
                with self._cond:
                    conn.closed = True
                    conn.call = None  # see below
                    self._cond.notify_all()
                channel.close()
                # The call must be collected now, while threads run: kept until interpreter exit,
                # its __del__ waited for a lock that gRPC's request thread, frozen at exit, held
                # (1 exit in 75 hung under load when grpc's fork support was on).
                call = None
            if self._closing:
                return
            self.stats["reconnects"] += 1
            retry.sleep(retry.Backoff(initial_s=0.2, max_s=5.0), attempt, self._stop)
            attempt += 1

    def _refused(self, code: str, details: str) -> None:
        """The gateway refused our credentials: retrying cannot clear that, so stop sending and
        keep everything in the spool for `runwire sync` with a valid token."""
        self._auth_failed = True
        self._closing = True
        with self._cond:
            if self._conn is not None:
                self._conn.closed = True
            self._cond.notify_all()
        self._once.warn(("auth",), "runwire: gateway %s refused this emitter: %s (%s). Sending stopped; "
                        "everything logged is kept in %s. Fix: set RUNWIRE_TOKEN (or init(token=...)) to a token "
                        "valid for project %r, then deliver the data with: runwire sync %s --gateway %s --token ...",
                        self.config.gateway, code, details, self.spool.dir, self.identity.project, self.spool.dir,
                        self.config.gateway)

    def _on_ack(self, conn: _Connection, ack: pb.Ack) -> bool:
        """Apply one acknowledgement; False when the stream must be restarted to resend."""
        code = ack.code or "OK"
        with self._cond:
            conn.in_flight -= 1
            sent = conn.sent_at.pop(ack.seq, None)
            if sent is not None:
                latency = time.monotonic() - sent
                self.stats["send_latency_sum_s"] += latency
                self.stats["send_latency_count"] += 1
                self.stats["send_latency_max_s"] = max(self.stats["send_latency_max_s"], latency)
            auth = classify_grpc(code) == AUTH  # keep it (spool) and stop: see _refused
            if code == "OK" or classify_grpc(code) == REJECT:
                entry = self._entries.pop(ack.seq, None)
                if entry is not None:
                    if entry[0] is not None:
                        self._memory_bytes -= entry[3]
                    self.spool.acked(ack.seq, entry[4] if code == "OK" else 0, entry[3])
                    if code != "OK":
                        self.counts[spool_files.REJECTED] += entry[4]
                self.stats["acked" if code == "OK" else "rejected"] += 1
                self._cond.notify_all()
                if code != "OK":
                    self._once.warn(("ack", code), "runwire: gateway rejected envelope %d: %s %s",
                                    ack.seq, code, ack.message)
                return True
        if auth:
            self._refused(code, ack.message)
            return False
        self._once.warn(("ack", code), "runwire: gateway answered %s (%s); resending", code, ack.message)
        return False

    # -- shutdown ---------------------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Send everything logged before this call and wait for its acknowledgement."""
        deadline = time.monotonic() + timeout
        with self._cond:
            # A pass that is already running may have missed the newest points: wait for the next.
            wanted = self._passes + 2
            while self._passes < wanted:
                self._send_partial = True
                self._wake.set()
                if not self._cond.wait(max(0.0, min(0.05, deadline - time.monotonic()))) and time.monotonic() >= deadline:
                    return False
            target = self._seq
            return self._cond.wait_for(lambda: not any(s <= target for s in self._entries),
                                       max(0.0, deadline - time.monotonic()))

    def close(self, run_end: pb.RunEnd | None, timeout: float) -> dict:
        """Drain the queue, send RunEnd, wait up to `timeout` for acknowledgements, spool the
        rest. Returns the delivery summary."""
        deadline = time.monotonic() + timeout
        self._draining = True
        self._wake.set()
        self._batcher.join(max(0.0, deadline - time.monotonic()))
        if self._batcher.is_alive():
            # Still waiting for spool space at the deadline: stop waiting, so its last pass puts
            # the queue in the spool before RunEnd and before this returns (nothing written later).
            # The deadline has passed, so the sender stops reconnecting too.
            self._closing = True
            self._stop.set()
            self._batcher.join(10)
        if run_end is not None:
            # Delivery counts are not final until after RunEnd itself: the stored summary leaves
            # them out rather than record wrong ones.
            for key, value in self.summary().items():
                if key not in _DELIVERY_KEYS:
                    run_end.summary[key] = value
            self.counts[spool_files.ENDED] = 1
            self._emit(run_end=run_end)
        with self._cond:
            if self._sender.is_alive():
                self._cond.wait_for(lambda: not self._entries or self._auth_failed,
                                    max(0.0, deadline - time.monotonic()))
            self._closing = True
            self._stop.set()
            if self._conn is not None:
                self._conn.closed = True
            self._cond.notify_all()
            call = self._conn.call if self._conn is not None else None
        if call is not None:
            call.cancel()
        if self._sender.is_alive():
            self._sender.join(5)
        with self._cond:
            left = len(self._entries)
            summary = self.summary()
            self.spool.close(everything_acked=not left)
        if left and not self._auth_failed:
            log.warning("runwire: %d envelopes were not acknowledged in %.0f s; they are kept in %s. "
                        "Deliver them with: runwire sync %s --gateway %s", left, timeout, self.spool.dir,
                        self.spool.dir, self.config.gateway)
        return summary

    def summary(self) -> dict[str, float]:
        s = self.stats
        count = s["send_latency_count"]
        out = {
            "runwire.points": s["points"],
            "runwire.dropped": self.dropped,
            "runwire.invalid_values": s["invalid_values"],
            "runwire.invalid_names": s["invalid_names"],
            "runwire.queue_high_water": s["queue_high_water"],
            "runwire.envelopes": s["envelopes"],
            "runwire.acked": s["acked"],
            "runwire.rejected": s["rejected"],
            "runwire.unacked": len(self._entries),
            "runwire.spool_bytes": self.spool.bytes,
            "runwire.spool_files": self.spool.files,
            "runwire.reconnects": s["reconnects"],
            "runwire.send_latency_mean_s": s["send_latency_sum_s"] / count if count else math.nan,
            "runwire.send_latency_max_s": s["send_latency_max_s"],
        }
        for name, value in self._last.items():
            out.setdefault(name, value)
        return out


class _BadName(Exception):
    pass


class _NameIds(dict):
    """Metric name -> index in this batch's names; a name is checked the first time it is seen."""

    __slots__ = ("valid",)

    def __init__(self, valid) -> None:
        super().__init__()
        self.valid = valid

    def __missing__(self, name):
        if not self.valid(name):
            raise _BadName(name)
        index = self[name] = len(self)
        return index


class _MetricBuilder:
    """Columns of one MetricBatch. Calls that log the same keys (most training loops) are added
    a group at a time with C-level loops (map, chain, list extends) and packed once per batch."""

    __slots__ = ("names", "name_index", "steps", "timestamps", "values")

    def __init__(self, valid_name) -> None:
        self.names = _NameIds(valid_name)
        self.name_index: list[int] = []
        self.steps: list[int] = []
        self.timestamps: list[int] = []
        self.values: list[float] = []

    def known(self, name) -> bool:
        try:
            self.names[name]
        except _BadName:
            return False
        return True

    def add_group(self, keys: tuple, calls: list) -> int:
        """Add log() calls that all logged `keys`, in order; raises, adding nothing, on a bad
        name or value."""
        pattern = [self.names[key] for key in keys]
        values = list(map(float, chain.from_iterable(map(dict.values, map(_DATA, calls)))))
        n = len(keys)
        self.values += values
        self.name_index += pattern * len(calls)
        self.steps += chain.from_iterable(map(repeat, map(_STEP, calls), repeat(n)))
        self.timestamps += chain.from_iterable(map(repeat, map(_TS, calls), repeat(n)))
        return len(values)

    def message(self) -> pb.MetricBatch:
        return wire.metric_batch(list(self.names), self.name_index, self.steps, self.timestamps, self.values)


_TS, _STEP, _DATA = itemgetter(0), itemgetter(1), itemgetter(2)


def _take_groups(points: collections.deque, budget: int) -> list[tuple[tuple, list]]:
    """Pop queued calls worth about `budget` points, grouped by runs of the same keys."""
    groups: list[tuple[tuple, list]] = []
    keys = None
    calls: list = []
    taken = 0
    while taken < budget:
        try:
            call = points.popleft()
        except IndexError:
            break
        call_keys = tuple(call[2])
        if call_keys != keys:
            keys, calls = call_keys, []
            groups.append((keys, calls))
        calls.append(call)
        taken += len(call_keys)
    return groups


# The emitter's gRPC channel settings. BDP probing off: on a stream that sends one envelope a
# second, gRPC's bandwidth-delay probe pings at nearly every message, which costs the gateway
# more CPU than the message itself (bench/streams.py); the fixed 64 KiB flow-control window
# still carries hundreds of MB/s per stream in a data centre.
CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS), ("grpc.keepalive_timeout_ms", 10000),
                   ("grpc.max_send_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0)]


def open_channel(config: EmitterConfig, options: list | None = None) -> grpc.Channel:
    """A channel to the gateway: TLS when configured, plaintext otherwise."""
    if not config.tls:
        return grpc.insecure_channel(config.gateway, options=options)
    roots = None
    if config.tls_ca_file:
        with open(config.tls_ca_file, "rb") as f:
            roots = f.read()
    return grpc.secure_channel(config.gateway, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


def _details(exc: grpc.RpcError) -> str:
    try:
        return exc.details() or ""
    except Exception:
        return ""


_MIN_DRAIN_WAIT_S = 0.02
_FIRST_PASS_S = 0.1


def next_drain_wait(drained: int, elapsed_s: float, batch_points: int, flush_interval_s: float) -> float:
    """How long the batcher sleeps before its next pass: the time this rate takes to fill one
    envelope, between 20 ms and flush_interval_s. Like Kafka's batch.size with linger.ms: a busy
    run sends full envelopes as soon as they fill (less lag), a quiet one sends at most one
    envelope per interval (fewer requests at the gateway)."""
    if drained <= 0 or elapsed_s <= 0:
        return flush_interval_s
    return min(flush_interval_s, max(_MIN_DRAIN_WAIT_S, batch_points * elapsed_s / drained))
