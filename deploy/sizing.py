"""How many gateways, Kafka partitions, ingest workers and ClickHouse shards a fleet needs, and
the storage per day: arithmetic over the per-component costs the benchmarks measure (pure; the
page deploy/SIZING.md is this module's output for a 10,000-GPU fleet, and `runwire sizing`
prints it for any fleet).

The costs are CPU-microseconds on the 2-core development machine (the benchmarks say which run);
a production core is usually faster, so the counts err on the large side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from runwire.proto.config import EXIT_OK, UsageError
from runwire.proto.contract import GPU_FLOAT_FIELDS


@dataclass(frozen=True)
class Fleet:
    gpus: int = 10_000
    gpus_per_host: int = 8
    metrics_per_step: int = 50
    steps_per_s: float = 2.0
    gpu_sample_hz: float = 1.0
    flush_interval_s: float = 0.5  # the emitter's default: a metric envelope at least this often

    def problems(self) -> list[str]:
        return [f"{name} must be > 0" for name, value in asdict(self).items() if not value > 0]


@dataclass(frozen=True)
class Measured:
    """Per-unit costs, each from a named benchmark run (see SOURCES)."""
    gateway_us_per_point: float
    kafka_us_per_point: float
    ingest_us_per_point: float
    clickhouse_us_per_point: float       # inserts and background merges
    gateway_us_per_envelope: float       # the per-message cost, whatever the envelope holds
    disk_bytes_per_point: float          # ClickHouse, after merges
    disk_bytes_per_gpu_sample: float
    kafka_bytes_per_point: float         # log segments of the metrics topic, one replica
    streams_per_gateway: int             # streams one gateway process held with ack p99 <= 1 s


# make bench-e2e (build/bench/e2e.json, 2026-12-02: 60 s at 1M points/s, otherwise quiet machine),
# make bench-streams (2026-12-02, quiet: 0.30-0.43 ms per envelope from 1,000 to 5,000 streams;
# ack p99 0.26 s at 1,000 streams, 1.04 s at 2,500, 20 s at 5,000) and bench/query.py (2M GPU
# samples of random values, after merges: 78.5 MB; real telemetry compresses better).
MEASURED = Measured(
    gateway_us_per_point=0.253, kafka_us_per_point=0.168, ingest_us_per_point=0.210,
    clickhouse_us_per_point=0.875, gateway_us_per_envelope=400.0, disk_bytes_per_point=1.79,
    disk_bytes_per_gpu_sample=41.2, kafka_bytes_per_point=28.1, streams_per_gateway=2_000,
)
SOURCES = ("`make bench-e2e` (`cpu_us_per_point`, `bytes_per_point`), `make bench-streams` (CPU per "
           "envelope, streams per process at ack p99 <= 1 s), `bench/query.py` (bytes per GPU sample)")

# A process is planned at this share of one core (one Python process uses at most one core; the
# rest is headroom for bursts, catch-up after an outage and a lost node).
PLANNED_CORE_SHARE = 0.5
PARTITIONS_PER_WORKER = 2  # room to add workers without repartitioning
AT_LEAST = 2               # gateways and ingest workers: one may fail or restart at any time
REPLICATION = 3            # Kafka replication factor (and 2 ClickHouse replicas per shard below)
CLICKHOUSE_CORES_PER_SHARD = 16
CLICKHOUSE_REPLICAS = 2


@dataclass(frozen=True)
class Sizing:
    ranks: int
    hosts: int
    metric_points_per_s: float
    gpu_samples_per_s: float
    point_equivalents_per_s: float  # metric points + GPU values (a sample costs like its fields)
    envelopes_per_s: float
    gateway_cores: float
    gateway_processes: int
    kafka_cores: float
    kafka_mb_per_s_replicated: float
    ingest_cores: float
    ingest_workers: int
    partitions: int
    clickhouse_cores: float
    clickhouse_shards: int
    disk_gb_per_day: float          # one replica
    disk_gb_per_day_metrics: float
    disk_gb_per_day_gpu: float


def size(fleet: Fleet, m: Measured = MEASURED) -> Sizing:
    ranks = fleet.gpus  # one training process per GPU
    hosts = math.ceil(fleet.gpus / fleet.gpus_per_host)
    points = ranks * fleet.metrics_per_step * fleet.steps_per_s
    samples = fleet.gpus * fleet.gpu_sample_hz
    equivalents = points + samples * len(GPU_FLOAT_FIELDS)
    # Each rank sends a metric envelope per flush interval (sooner only when one fills) and a GPU
    # batch per sample.
    envelopes = ranks / fleet.flush_interval_s + samples
    gateway_cores = (equivalents * m.gateway_us_per_point + envelopes * m.gateway_us_per_envelope) / 1e6
    gateway_processes = max(AT_LEAST, math.ceil(gateway_cores / PLANNED_CORE_SHARE),
                            math.ceil(ranks / m.streams_per_gateway))
    ingest_cores = equivalents * m.ingest_us_per_point / 1e6
    ingest_workers = max(AT_LEAST, math.ceil(ingest_cores / PLANNED_CORE_SHARE))
    clickhouse_cores = equivalents * m.clickhouse_us_per_point / 1e6
    per_day = 86_400
    metrics_gb = points * per_day * m.disk_bytes_per_point / 1e9
    gpu_gb = samples * per_day * m.disk_bytes_per_gpu_sample / 1e9
    return Sizing(
        ranks=ranks, hosts=hosts, metric_points_per_s=points, gpu_samples_per_s=samples,
        point_equivalents_per_s=equivalents, envelopes_per_s=envelopes,
        gateway_cores=gateway_cores, gateway_processes=gateway_processes,
        kafka_cores=equivalents * m.kafka_us_per_point / 1e6,
        kafka_mb_per_s_replicated=equivalents * m.kafka_bytes_per_point * REPLICATION / 1e6,
        ingest_cores=ingest_cores, ingest_workers=ingest_workers,
        partitions=ingest_workers * PARTITIONS_PER_WORKER,
        clickhouse_cores=clickhouse_cores,
        clickhouse_shards=max(1, math.ceil(clickhouse_cores / (CLICKHOUSE_CORES_PER_SHARD * PLANNED_CORE_SHARE))),
        disk_gb_per_day=metrics_gb + gpu_gb, disk_gb_per_day_metrics=metrics_gb, disk_gb_per_day_gpu=gpu_gb,
    )


def render(fleet: Fleet, m: Measured = MEASURED) -> str:
    """The sizing as a Markdown page."""
    s = size(fleet, m)
    n = lambda v: f"{v:,.0f}"  # noqa: E731
    c = lambda v: f"{v:,.2f}"  # noqa: E731
    return "\n".join([
        f"# Sizing a {n(fleet.gpus)}-GPU fleet",
        "",
        "Written by `python -m runwire.deploy.sizing > deploy/SIZING.md` (a test fails when it is stale);",
        "`runwire sizing --gpus N ...` prints the same for another fleet.",
        "",
        "## The load",
        "",
        f"- {n(fleet.gpus)} GPUs on {n(s.hosts)} hosts ({fleet.gpus_per_host} per host), one training process per GPU:"
        f" {n(s.ranks)} ranks, each with its own gRPC stream.",
        f"- {fleet.metrics_per_step} metrics per step at {fleet.steps_per_s:g} steps/s: **{n(s.metric_points_per_s)}"
        f" metric points/s**.",
        f"- GPU sampling at {fleet.gpu_sample_hz:g} Hz: {n(s.gpu_samples_per_s)} samples/s of"
        f" {len(GPU_FLOAT_FIELDS)} values; counted as {n(s.gpu_samples_per_s * len(GPU_FLOAT_FIELDS))} point"
        f" equivalents (a sample is costed like its values as metric points): {n(s.point_equivalents_per_s)}"
        f" in all.",
        f"- Envelopes: each rank sends its metrics every {fleet.flush_interval_s:g} s (the emitter's"
        f" `flush_interval_s`) and one GPU batch per sample: **{n(s.envelopes_per_s)} envelopes/s**.",
        "",
        "## Measured costs (2-core development machine)",
        "",
        "| unit | cost |",
        "|---|---|",
        f"| gateway, per point | {m.gateway_us_per_point} us CPU |",
        f"| gateway, per envelope (gRPC message, validation, hand-off) | {m.gateway_us_per_envelope:g} us CPU |",
        f"| Kafka broker, per point | {m.kafka_us_per_point} us CPU |",
        f"| ingest worker, per point | {m.ingest_us_per_point} us CPU |",
        f"| ClickHouse, per point (inserts and merges) | {m.clickhouse_us_per_point} us CPU |",
        f"| ClickHouse disk, per metric point | {m.disk_bytes_per_point} bytes |",
        f"| ClickHouse disk, per GPU sample | {m.disk_bytes_per_gpu_sample:g} bytes |",
        f"| Kafka log, per point (one replica) | {m.kafka_bytes_per_point:g} bytes |",
        f"| streams one gateway process holds at ack p99 <= 1 s | {n(m.streams_per_gateway)} |",
        "",
        f"From {SOURCES}.",
        "",
        "## What it needs",
        "",
        f"Each process is planned at {PLANNED_CORE_SHARE:.0%} of a core (headroom for bursts, catch-up after an"
        " outage and the loss of a node).",
        "",
        "| component | CPU | count |",
        "|---|---|---|",
        f"| gateway processes | {c(s.gateway_cores)} cores | **{s.gateway_processes}** (the most of CPU,"
        f" {n(m.streams_per_gateway)} streams each and {AT_LEAST}), behind a gRPC load balancer |",
        f"| Kafka | {c(s.kafka_cores)} cores | 3 brokers (replication {REPLICATION}, min.insync.replicas 2);"
        f" about {c(s.kafka_mb_per_s_replicated)} MB/s written across the cluster |",
        f"| ingest workers | {c(s.ingest_cores)} cores | **{s.ingest_workers}** (at least {AT_LEAST}), one"
        " consumer group |",
        f"| partitions per topic | | **{s.partitions}** ({PARTITIONS_PER_WORKER} per worker) |",
        f"| ClickHouse | {c(s.clickhouse_cores)} cores | **{s.clickhouse_shards}** shard(s) of"
        f" {CLICKHOUSE_CORES_PER_SHARD} cores x {CLICKHOUSE_REPLICAS} replicas (`deploy/clickhouse/cluster.sql`);"
        " queries need their own cores on top |",
        "",
        f"Storage per day (one replica): **{c(s.disk_gb_per_day)} GB** = metrics {c(s.disk_gb_per_day_metrics)} GB"
        f" + GPU samples {c(s.disk_gb_per_day_gpu)} GB; x{CLICKHOUSE_REPLICAS} with replicas. The per-minute"
        " rollups and the summary are a few percent on top; raw rows past `--ttl-days` are dropped.",
        "",
        f"Kafka's disk: {c(s.kafka_mb_per_s_replicated * 86_400 / 1e6)} TB across the cluster per day of"
        " retention (the producer does not compress; what lz4 or zstd would save was not measured); keep"
        " `retention.ms` to what ingest needs to catch up after an outage (hours, not Kafka's default week).",
        "",
        "## What dominates",
        "",
        f"The gateway's cost is per message more than per point: {n(s.envelopes_per_s)} envelopes/s cost"
        f" {c(s.envelopes_per_s * m.gateway_us_per_envelope / 1e6)} cores, the points in them"
        f" {c(s.point_equivalents_per_s * m.gateway_us_per_point / 1e6)}. A longer `flush_interval_s` (2 s)"
        " divides the metric envelopes by four at the price of 2 s of latency. After the gateway everything"
        " scales with points; of that, ClickHouse (inserts and merges) costs the most.",
        "",
    ])


def register(subparsers) -> None:
    p = subparsers.add_parser("sizing", help="gateways, partitions, workers, shards and disk a fleet needs "
                                             "(from the benchmarks' measured costs)")
    defaults = Fleet()
    for field, value in asdict(defaults).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    p.set_defaults(func=lambda args: _print(Fleet(**{f: getattr(args, f) for f in asdict(defaults)})))


def _print(fleet: Fleet) -> int:
    if fleet.problems():
        raise UsageError("; ".join(fleet.problems()))
    print(render(fleet), end="")
    return EXIT_OK


if __name__ == "__main__":
    print(render(Fleet()), end="")
