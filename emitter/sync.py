"""Deliver what a process left in its spool (it was killed, or the gateway was unreachable), and
say what was lost: `runwire sync`, and the same at an emitter's start for streams of this host
whose writer is gone.

Each stream is sent oldest first, one acknowledged Publish per envelope; every acknowledgement is
recorded in the stream's ack log before the next, so a stream is delivered exactly once even when
sync itself is interrupted (storage also collapses replays by point). A stream whose writer died
before its RunEnd gets a RunEnd on its behalf (exit code EXIT_CRASHED) whose summary carries the
loss report, so `runwire runs show` has it too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from runwire.exporter import EmitterConfig, open_channel
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import EXIT_CRASHED, PUBLISH_METHOD, REJECT, classify_grpc
from runwire.spool import Orphan, read_acks, read_counts, read_records, stream_dirs

log = logging.getLogger("runwire")


@dataclass
class StreamReport:
    """What one rank's stream logged, what reached the gateway and what was lost."""

    directory: str
    project: str = ""
    run_id: str = ""
    rank: int = -1
    logged: int = 0          # points handed to log()
    delivered: int = 0       # points the gateway acknowledged (while running and now)
    delivered_now: int = 0
    envelopes_now: int = 0
    rejected: int = 0        # points in envelopes the gateway refused as invalid
    invalid: int = 0         # values that were not numbers / names that were not valid
    dropped: int = 0         # points dropped because the queue was full (the oldest)
    lost: int = 0            # logged - delivered - rejected - invalid, once nothing is left
    lost_steps: tuple[int, int] | None = None  # step range of the points that never reached disk
    ended: bool = False      # the writer sent its RunEnd (finished normally)
    left: int = 0            # envelopes still not delivered (gateway unavailable)
    error: str = ""
    skipped: str = ""        # why the stream was not touched (its writer is alive)

    def line(self) -> str:
        where = f"{self.project}/{self.run_id} rank {self.rank}"
        if self.skipped:
            return f"{where}: skipped ({self.skipped})"
        text = (f"{where}: logged {self.logged}, delivered {self.delivered} ({self.delivered_now} now), "
                f"lost {self.lost}")
        if self.lost_steps is not None:
            text += f" (steps {self.lost_steps[0]}..{self.lost_steps[1]} never reached the disk)"
        if self.dropped:
            text += f", of them {self.dropped} dropped when the queue was full"
        if self.rejected:
            text += f", {self.rejected} rejected as invalid"
        if self.left:
            text += f"; {self.left} envelopes left: {self.error}"
        if not self.ended:
            text += "; the process died before finishing"
        return text

    def summary(self) -> dict[str, float]:
        out = {"runwire.logged": self.logged, "runwire.delivered": self.delivered, "runwire.lost": self.lost,
               "runwire.dropped_points": self.dropped, "runwire.rejected_points": self.rejected}
        if self.lost_steps is not None:
            out["runwire.lost_first_step"], out["runwire.lost_last_step"] = self.lost_steps
        return out


def _identity(info: dict) -> pb.Identity:
    return pb.Identity(**{k: info[k] for k in ("project", "run_id", "rank", "local_rank", "node_rank", "world_size",
                                                "host", "pid", "stream_id") if k in info})


def deliver_stream(directory: Path, publish, metadata, timeout_s: float = 30.0) -> StreamReport:
    try:
        return _deliver_stream(directory, publish, metadata, timeout_s)
    except FileNotFoundError:  # its writer finished and removed it while we looked
        return StreamReport(str(directory), skipped="removed meanwhile")


def _deliver_stream(directory: Path, publish, metadata, timeout_s: float) -> StreamReport:
    report = StreamReport(str(directory))
    try:
        orphan = Orphan(directory)
    except BlockingIOError as exc:
        report.skipped = str(exc)
        return report
    except FileNotFoundError:
        report.skipped = "delivered and removed meanwhile"
        return report
    done = False
    try:
        info = orphan.info()
        if not info:  # removed by its writer meanwhile, or never described: leave it alone
            report.skipped = "no stream.json"
            return report
        report.project, report.run_id, report.rank = info.get("project", ""), info.get("run_id", ""), info.get("rank", -1)
        acks = read_acks(directory)
        last_seq = max(acks, default=0)
        stop = False
        for segment in orphan.segments():
            for record in read_records(segment):
                last_seq = max(last_seq, record.seq)
                if stop or record.seq in acks:
                    if stop:
                        report.left += 1
                    continue
                try:
                    publish(record.payload, metadata=metadata, timeout=timeout_s)
                except grpc.RpcError as exc:
                    kind = classify_grpc(exc.code().name)
                    if kind != REJECT:
                        report.left += 1
                        report.error = f"{exc.code().name}: {exc.details()}"
                        stop = True
                        continue
                    report.rejected += record.points
                    orphan.ack(record.seq, 0)
                    acks[record.seq] = 0
                    continue
                orphan.ack(record.seq, record.points)
                acks[record.seq] = record.points
                report.delivered_now += record.points
                report.envelopes_now += 1
        counts = read_counts(directory)
        report.logged = counts.get("logged") or 0
        report.dropped = counts.get("dropped") or 0
        report.invalid = counts.get("invalid") or 0
        report.rejected = max(report.rejected, counts.get("rejected") or 0)
        report.ended = bool(counts.get("ended"))
        report.delivered = sum(acks.values())
        if not report.left:
            report.lost = max(0, report.logged - report.delivered - report.rejected - report.invalid)
            written, last = counts.get("written") or 0, counts.get("last_step")
            if report.logged > written + report.invalid + report.dropped and last is not None:
                first = (counts.get("written_last_step") or -1) + 1
                report.lost_steps = (min(first, last), last)
            if not report.ended and info:
                # Tell storage: this rank died; its summary is the loss report.
                end = pb.RunEnd(end_time_ns=_last_activity_ns(directory), exit_code=EXIT_CRASHED,
                                summary=report.summary())
                envelope = pb.Envelope(seq=last_seq + 1, identity=_identity(info), run_end=end)
                try:
                    publish(envelope.SerializeToString(), metadata=metadata, timeout=timeout_s)
                except grpc.RpcError as exc:
                    report.left += 1
                    report.error = f"{exc.code().name}: {exc.details()}"
            done = not report.left
    finally:
        orphan.close(done)
    return report


def _last_activity_ns(directory: Path) -> int:
    times = [p.stat().st_mtime_ns for p in Path(directory).iterdir() if p.is_file()]
    return max(times, default=time.time_ns())


def _publisher(channel):
    return channel.unary_unary(PUBLISH_METHOD, response_deserializer=pb.Ack.FromString)


def sync(spool_dir: str | Path, gateway: str | None = None, token: str | None = None,
         timeout_s: float = 30.0, tls: bool | None = None, tls_ca_file: str | None = None) -> list[StreamReport]:
    """Deliver every stream below `spool_dir` whose writer is gone; a report per stream.

    Rejected envelopes (INVALID_ARGUMENT) are counted and not resent: resending can never
    succeed. Storage deduplicates envelopes that were delivered before."""
    settings = EmitterConfig.from_settings(gateway=gateway, token=token, tls=tls, tls_ca_file=tls_ca_file)
    metadata = [("authorization", f"Bearer {settings.token}")] if settings.token else None
    reports = []
    with open_channel(settings) as channel:
        publish = _publisher(channel)
        for directory in stream_dirs(Path(spool_dir)):
            reports.append(deliver_stream(directory, publish, metadata, timeout_s))
    return reports


def start_recovery(exporter) -> threading.Thread | None:
    """Deliver, in the background, streams this host left for the same gateway (a killed job
    restarted on the same host). The emitter's own stream and live writers are left alone."""
    root = Path(exporter.spool_root)
    if not root.exists():
        return None

    def run() -> None:
        own = exporter.spool.dir.resolve()
        metadata = [("authorization", f"Bearer {exporter.config.token}")] if exporter.config.token else None
        channel = None
        try:
            for directory in stream_dirs(root):
                if exporter._closing or directory.resolve() == own:
                    continue
                try:
                    gateway = _recorded_gateway(directory)
                except (OSError, ValueError):  # removed meanwhile, or being written
                    continue
                if gateway != exporter.config.gateway:
                    continue
                if channel is None:
                    channel = open_channel(exporter.config)
                report = deliver_stream(directory, _publisher(channel), metadata)
                if not report.skipped and (report.envelopes_now or report.lost or report.left):
                    log.warning("runwire: recovered a stream left on this host: %s", report.line())
        except Exception:
            log.exception("runwire: recovering spooled streams failed; run `runwire sync %s`", root)
        finally:
            if channel is not None:
                channel.close()

    thread = threading.Thread(target=run, name="runwire-recover", daemon=True)
    thread.start()
    return thread


def _recorded_gateway(directory: Path) -> str:
    return json.loads((Path(directory) / "stream.json").read_text()).get("gateway", "")

