"""GPU samples on the wire: one reading of one GPU, and the columnar GpuBatch that carries them
(the per-sample columns are the contract's GPU_COLUMNS, in .proto order)."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Sequence

from runwire.proto import telemetry_pb2
from runwire.proto.contract import GPU_COLUMNS


@dataclass(slots=True)
class GpuSample:
    """One reading of one GPU. Floats are NaN when unsupported or unreadable."""

    gpu_uuid: str
    pci_bus_id: str
    gpu_index: int  # NVML index (not the CUDA ordinal)
    gpu_name: str
    timestamp_ns: int  # wall clock, time.time_ns()
    memory_used_bytes: float
    memory_total_bytes: float
    temperature_c: float
    memory_temperature_c: float
    gpu_utilization_pct: float
    memory_utilization_pct: float
    power_w: float
    power_limit_w: float
    sm_clock_mhz: float
    memory_clock_mhz: float
    throttle_reasons: int  # NVML clocks-event reasons bitmask, 0 if unsupported
    ecc_corrected: float  # volatile total count since driver load, NaN if unsupported
    ecc_uncorrected: float
    xid: int  # 0 = no XID event since the last sample, else the last XID code seen


# GpuBatch column -> GpuSample attribute, for every per-sample column but gpu_ref. GpuSample's
# fields after its identity are these, in this order (checked below).
_SAMPLE_COLUMNS = {column: "timestamp_ns" if column == "timestamps_ns" else column
                   for column in telemetry_pb2.GpuBatch.DESCRIPTOR.fields_by_name if column in GPU_COLUMNS
                   and column != "gpu_ref"}
assert list(_SAMPLE_COLUMNS.values()) == list(GpuSample.__dataclass_fields__)[4:], "GpuSample drifted from GpuBatch"
_GETTERS = {column: attrgetter(attribute) for column, attribute in _SAMPLE_COLUMNS.items()}


def encode_gpu_batch(samples: Sequence[GpuSample]) -> telemetry_pb2.GpuBatch:
    """Encode samples into one columnar ``GpuBatch``.

    The GPU identity (uuid, PCI bus id, NVML index, name) is sent once per GPU in the batch's
    dictionary columns; ``gpu_ref[i]`` points sample ``i`` at its dictionary row. NaN stays NaN.
    """
    batch = telemetry_pb2.GpuBatch()
    refs: dict[str, int] = {}
    for s in samples:
        r = refs.get(s.gpu_uuid)
        if r is None:
            r = refs[s.gpu_uuid] = len(refs)
            batch.gpu_uuids.append(s.gpu_uuid)
            batch.pci_bus_ids.append(s.pci_bus_id)
            batch.gpu_indexes.append(s.gpu_index)
            batch.gpu_names.append(s.gpu_name)
        batch.gpu_ref.append(r)
    for column, get in _GETTERS.items():
        getattr(batch, column).extend(map(get, samples))
    return batch


def decode_gpu_batch(batch: telemetry_pb2.GpuBatch) -> list[GpuSample]:
    """Inverse of ``encode_gpu_batch`` (tests, tools). Raises ValueError on ragged columns."""
    n = len(batch.gpu_ref)
    cols = [getattr(batch, column) for column in _SAMPLE_COLUMNS]
    if any(len(c) != n for c in cols):
        raise ValueError("GpuBatch: per-sample columns differ in length")
    ng = len(batch.gpu_uuids)
    if not (len(batch.pci_bus_ids) == len(batch.gpu_indexes) == len(batch.gpu_names) == ng):
        raise ValueError("GpuBatch: gpu dictionary columns differ in length")
    out = []
    for i in range(n):
        r = batch.gpu_ref[i]
        if r >= ng:
            raise ValueError(f"GpuBatch: gpu_ref {r} out of range ({ng} gpus)")
        out.append(GpuSample(
            batch.gpu_uuids[r], batch.pci_bus_ids[r], batch.gpu_indexes[r], batch.gpu_names[r],
            *(c[i] for c in cols),
        ))
    return out
