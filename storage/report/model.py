"""What the report shows, as plain data (pure): runs, step buckets, GPU series, and the
downsampling that keeps every spike."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Sequence

MAX_METRICS = 12        # key metrics plotted per report
CURVE_BUCKETS = 600     # step buckets per curve
GPU_BUCKETS = 300       # time buckets per GPU series


@dataclass(frozen=True)
class Bucket:
    """One step bucket of a metric across ranks: x = first step of the bucket."""

    x: float
    lo: float
    hi: float
    mean: float
    count: int = 1


@dataclass
class GpuSeries:
    """One GPU of a run: label ("node-0 gpu0"), total memory, and (seconds since start, value) points."""

    label: str
    memory_total_bytes: float = 0.0
    temperature_c: list = field(default_factory=list)
    memory_used_pct: list = field(default_factory=list)


@dataclass
class RunData:
    """Everything the report shows about one run (built by `load_report_data`, or by hand in tests)."""

    run_id: str
    project: str = ""
    name: str = ""
    status: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    world_size: int = 0
    git_commit: str = ""
    ranks: list = field(default_factory=list)       # dicts: rank, local_rank, node_rank, host, status, points, dropped
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)      # metric -> [Bucket]
    last: dict = field(default_factory=dict)        # metric -> value at the highest step
    best: dict = field(default_factory=dict)        # metric -> (min, max) over the run
    nonfinite: dict = field(default_factory=dict)   # metric -> number of NaN/Inf points
    stored_points: int | None = None
    gpus: list = field(default_factory=list)        # [GpuSeries]
    # dicts: run_id, rule, severity, state, host, gpu_uuid, rank, value, message, started_at, resolved_at
    alerts: list = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        return sorted({r["host"] for r in self.ranks if r.get("host")})

    @property
    def points(self) -> float | None:
        vals = [r.get("points") for r in self.ranks if r.get("points") is not None]
        return sum(vals) if vals else None

    @property
    def dropped(self) -> float | None:
        vals = [r.get("dropped") for r in self.ranks if r.get("dropped") is not None]
        return sum(vals) if vals else None



def metric_order(name: str) -> tuple:
    """Loss-like metrics first, then the rest alphabetically; runwire's own counters last."""
    lowered = name.lower()
    return (name.startswith("runwire."), "loss" not in lowered, lowered)


def reduce_buckets(buckets: Sequence[Bucket], max_buckets: int) -> list[Bucket]:
    """Merge neighbouring buckets until at most `max_buckets` remain, keeping the minimum of the
    minima and the maximum of the maxima (a spike always survives) and the count-weighted mean."""
    buckets = list(buckets)
    if len(buckets) <= max_buckets or max_buckets <= 0:
        return buckets
    size = math.ceil(len(buckets) / max_buckets)
    out = []
    for i in range(0, len(buckets), size):
        group = buckets[i:i + size]
        n = sum(b.count for b in group) or len(group)
        out.append(Bucket(group[0].x, min(b.lo for b in group), max(b.hi for b in group),
                          sum(b.mean * (b.count or 1) for b in group) / n, n))
    return out


def finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def aware(t: dt.datetime) -> dt.datetime:
    """Datetimes from ClickHouse may be naive; they are UTC."""
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
