"""Decoded records exactly as the ingest path hands them to observers, built from the wire
types through the real codec (envelope -> Avro single-object record -> decode). For tests,
benchmarks and tools that drive an alert engine without an emitter."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from runwire.gpu_wire import GpuSample, encode_gpu_batch
from runwire.ingest import codec
from runwire.proto import telemetry_pb2 as pb
from runwire.wire import metric_batch

NAN = float("nan")
GIB = 2 ** 30


def identity(project: str = "p", run_id: str = "run-1", rank: int = 0, host: str = "node-0",
             world_size: int = 1, node_rank: int = 0) -> pb.Identity:
    return pb.Identity(project=project, run_id=run_id, rank=rank, local_rank=rank, node_rank=node_rank,
                       world_size=world_size, host=host, pid=1000 + rank, stream_id=f"s-{run_id}-{rank}")


def _decoded(envelope: pb.Envelope, received_ns: int | None = None) -> tuple[str, dict]:
    _, _, value = codec.encode_envelope(envelope, received_ns or 0)
    return codec.decode(value)


def gpu_sample(ts_ns: int, uuid: str = "GPU-0000", index: int = 0, **fields) -> GpuSample:
    """A healthy H100-like sample at `ts_ns`; override any GpuSample field."""
    base = dict(gpu_uuid=uuid, pci_bus_id=f"00000000:{0x18 + index:02X}:00.0", gpu_index=index,
                gpu_name="NVIDIA H100 80GB HBM3", timestamp_ns=ts_ns, memory_used_bytes=60.0 * GIB,
                memory_total_bytes=80.0 * GIB, temperature_c=65.0, memory_temperature_c=72.0,
                gpu_utilization_pct=95.0, memory_utilization_pct=50.0, power_w=600.0, power_limit_w=700.0,
                sm_clock_mhz=1980.0, memory_clock_mhz=2619.0, throttle_reasons=0, ecc_corrected=0.0,
                ecc_uncorrected=0.0, xid=0)
    base.update(fields)
    return GpuSample(**base)


def gpu_record(samples: Sequence[GpuSample], **ident) -> tuple[str, dict]:
    """("gpu", record) of a GpuBatch holding `samples` from the rank described by `ident`."""
    return _decoded(pb.Envelope(seq=1, identity=identity(**ident), gpu=encode_gpu_batch(list(samples))))


def metric_record(points: Iterable[tuple[str, int, int, float]], **ident) -> tuple[str, dict]:
    """("metrics", record) of a MetricBatch; points are (name, step, ts_ns, value)."""
    points = list(points)
    names: list[str] = []
    index: dict[str, int] = {}
    for name, *_ in points:
        if name not in index:
            index[name] = len(names)
            names.append(name)
    batch = metric_batch(names, [index[p[0]] for p in points], [p[1] for p in points], [p[2] for p in points],
                         [float(p[3]) for p in points])
    return _decoded(pb.Envelope(seq=1, identity=identity(**ident), metrics=batch))


def run_start_record(start_ns: int, name: str = "run", **ident) -> tuple[str, dict]:
    return _decoded(pb.Envelope(seq=0, identity=identity(**ident), run_start=pb.RunStart(
        name=name, start_time_ns=start_ns, launcher="local")), received_ns=start_ns)


def run_end_record(end_ns: int, exit_code: int = 0, **ident) -> tuple[str, dict]:
    return _decoded(pb.Envelope(seq=2, identity=identity(**ident), run_end=pb.RunEnd(
        end_time_ns=end_ns, exit_code=exit_code)), received_ns=end_ns)


def replace_sample(sample: GpuSample, **fields) -> GpuSample:
    return dataclasses.replace(sample, **fields)
