"""What the report shows, read through the query library (runwire.storage.query.RunQueries)
only: runs, step curves across ranks, point counts, GPU series and the alerts that fired."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from runwire.storage.query import RunQueries
from runwire.storage.report.model import (
    CURVE_BUCKETS, GPU_BUCKETS, MAX_METRICS, Bucket, GpuSeries, RunData, aware, finite, metric_order,
)


def load_report_data(client, run_ids: Sequence[str], metrics: Sequence[str] | None = None) -> list[RunData]:
    """Read everything the report shows for `run_ids` (in that order).

    client: a clickhouse-connect client bound to runwire's database. metrics: the metrics to
    plot (default: loss-like names first, then the rest, at most MAX_METRICS). Raises
    runwire.storage.query.RunNotFound (a LookupError) for an unknown run.
    """
    queries = RunQueries(client)
    runs = [_load_run(queries, run_id) for run_id in dict.fromkeys(run_ids)]
    names = list(metrics) if metrics else sorted({n for r in runs for n in r.last}, key=metric_order)[:MAX_METRICS]
    for run in runs:
        for name in names:
            if name in run.last:
                run.curves[name] = _curve(queries, run, name)
        run.gpus = _gpus(queries, run)
    _attach_alerts(queries, runs)
    return runs


def _load_run(queries: RunQueries, run_id: str) -> RunData:
    info = queries.get_run(run_id)
    run = RunData(run_id=run_id, project=info["project"], name=info["name"], status=info["status"],
                  start_time=info["start_time"], end_time=info["end_time"], world_size=info["world_size"],
                  git_commit=info["git_commit"], params=dict(info["params"]), tags=dict(info["tags"]))
    for name, m in info["metrics"].items():
        run.last[name] = m["last"]
        run.best[name] = (m["min"], m["max"])
    # What each rank's emitter reported when it finished.
    run.ranks = [{"rank": k["rank"], "local_rank": k["local_rank"], "node_rank": k["node_rank"], "host": k["host"],
                  "status": k["status"], "points": k["summary"].get("runwire.points"),
                  "dropped": k["summary"].get("runwire.dropped")} for k in info["ranks"]]
    counts = queries.metric_counts(run_id, project=run.project)
    run.stored_points = sum(c["points"] for c in counts.values())
    run.nonfinite = {name: c["nonfinite"] for name, c in counts.items() if c["nonfinite"]}
    return run


def _curve(queries: RunQueries, run: RunData, name: str) -> list[Bucket]:
    """CURVE_BUCKETS step buckets across ranks: min of the ranks' minima, max of their maxima
    (so a spike of any rank stays), mean of the ranks' last values."""
    out = []
    for row in queries.curve(run.run_id, name, x="step", buckets=CURVE_BUCKETS, across_ranks=True,
                             project=run.project):
        lo, hi, mean = row["min"], row["max"], row["mean"]
        if not finite(lo, hi):  # a bucket of NaN/Inf only: counted in nonfinite, not drawn
            continue
        out.append(Bucket(float(row["bucket_start"]), lo, hi, mean if finite(mean) else (lo + hi) / 2,
                          int(row["count"])))
    return out


def _gpus(queries: RunQueries, run: RunData) -> list[GpuSeries]:
    """Temperature and memory use per GPU, as (seconds since the run's start, bucket maximum)."""
    fields = {f: queries.gpu_series(run.run_id, f, buckets=GPU_BUCKETS, project=run.project)
              for f in ("temperature_c", "memory_used_bytes", "memory_total_bytes")}
    if not fields["temperature_c"]:
        return []
    starts = [row["bucket_start"] for row in fields["temperature_c"]]
    origin = min(starts)
    if run.start_time is not None:
        origin = min(origin, aware(run.start_time))
    by_gpu: dict[tuple, GpuSeries] = {}
    totals = {(r["host"], r["gpu_uuid"], r["bucket_start"]): r["max"] for r in fields["memory_total_bytes"]}
    for row in fields["temperature_c"]:
        series = by_gpu.setdefault((row["host"], row["gpu_uuid"]), GpuSeries(f"{row['host']} gpu{row['gpu_index']}"))
        series.temperature_c.append(((row["bucket_start"] - origin).total_seconds(), row["max"]))
    for row in fields["memory_used_bytes"]:
        series = by_gpu.get((row["host"], row["gpu_uuid"]))
        total = totals.get((row["host"], row["gpu_uuid"], row["bucket_start"]))
        if series is not None and total:
            series.memory_total_bytes = max(series.memory_total_bytes, total)
            series.memory_used_pct.append(((row["bucket_start"] - origin).total_seconds(), 100.0 * row["max"] / total))
    return list(by_gpu.values())


def _attach_alerts(queries: RunQueries, runs: list[RunData]) -> None:
    """The alerts that fired for these runs, and host-level ones (no run id) on their hosts while
    they ran; each goes to its run, a host-level one to the first run on its host."""
    starts = [r.start_time for r in runs if r.start_time]
    ends = [r.end_time or dt.datetime.now(dt.timezone.utc) for r in runs]
    alerts = queries.fired_alerts([(r.project, r.run_id) for r in runs], hosts={h for r in runs for h in r.hosts},
                                  since=min(starts) if starts else None, until=max(ends) if starts else None)
    by_run = {r.run_id: r for r in runs}
    for alert in alerts:
        owner = by_run.get(alert["run_id"]) or next((r for r in runs if alert["host"] in r.hosts), runs[0])
        owner.alerts.append(alert)
