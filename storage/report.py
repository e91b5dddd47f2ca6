"""`runwire report RUN... -o report.html`: one self-contained HTML file comparing runs.

The report holds a run summary (status, ranks, hosts, points, drops), the loss curves of every
run with the min-max band across ranks, the other key metrics the same way, GPU temperature and
memory per GPU, a table of the parameters that differ, and the alerts on a timeline.

Everything is inline: the plots are SVG drawn here, the styles sit in one <style> element, and
there is no script at all. A Content-Security-Policy meta tag forbids every fetch and every
script, so the file opens offline and text from the database (run names, parameters, alert
messages) can never run as code; all of it is also escaped.

Two layers, as everywhere in runwire: `load_report_data` (thin I/O, mostly
runwire.storage.query.RunQueries) builds plain `RunData`; `render_report` (pure) turns that into
HTML. Curves are downsampled in SQL per step bucket keeping the minimum and maximum across ranks,
so a spike of any rank stays visible in the band; `reduce_buckets` merges buckets the same way if
a caller hands over more than a plot can show.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Bucket", "GpuSeries", "RunData", "load_report_data", "render_report", "write_report", "register",
           "reduce_buckets", "register_report_command"]

# ------------------------------------------------------------------------------------------
# Plain data (what the renderer needs)
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# Loading (thin I/O): runwire.storage.query.RunQueries for runs, curves and GPU series, plus the
# few queries it has no method for (per-rank emitter summaries, stored and NaN counts, alerts).
# Every value reaches ClickHouse as a server-side parameter.
# ------------------------------------------------------------------------------------------

MAX_METRICS = 12        # key metrics plotted per report
CURVE_BUCKETS = 600     # step buckets per curve
GPU_BUCKETS = 300       # time buckets per GPU series


def _metric_order(name: str) -> tuple:
    """Loss-like metrics first, then the rest alphabetically; runwire's own counters last."""
    lowered = name.lower()
    return (name.startswith("runwire."), "loss" not in lowered, lowered)


def load_report_data(client, run_ids: Sequence[str], metrics: Sequence[str] | None = None) -> list[RunData]:
    """Read everything the report shows for `run_ids` (in that order).

    metrics: the metrics to plot (default: loss-like names first, then the rest, at most
    MAX_METRICS). Raises runwire.storage.query.RunNotFound (a LookupError) for an unknown run.
    """
    from runwire.storage.query import RunQueries

    queries = RunQueries(client)
    runs = [_load_run(queries, client, run_id) for run_id in dict.fromkeys(run_ids)]
    names = list(metrics) if metrics else sorted({n for r in runs for n in r.last}, key=_metric_order)[:MAX_METRICS]
    for run in runs:
        for name in names:
            if name in run.last:
                run.curves[name] = _curve(queries, run, name)
        run.nonfinite = _nonfinite_counts(client, run, [n for n in names if n in run.last])
        run.gpus = _gpus(queries, run)
    _attach_alerts(client, runs)
    return runs


def _load_run(queries, client, run_id: str) -> RunData:
    info = queries.get_run(run_id)
    run = RunData(run_id=run_id, project=info["project"], name=info["name"], status=info["status"],
                  start_time=info["start_time"], end_time=info["end_time"], world_size=info["world_size"],
                  git_commit=info["git_commit"], params=dict(info["params"]), tags=dict(info["tags"]))
    for name, m in info["metrics"].items():
        run.last[name] = m["last"]
        run.best[name] = (m["min"], m["max"])
    p = {"p": run.project, "r": run_id}
    # What each rank's emitter reported at finish (RunQueries.get_run carries the run's summary only).
    summaries = dict(client.query("SELECT rank, summary FROM run_ranks FINAL WHERE project = {p:String} "
                                  "AND run_id = {r:String}", parameters=p).result_rows)
    run.ranks = [{"rank": k["rank"], "local_rank": k["local_rank"], "node_rank": k["node_rank"], "host": k["host"],
                  "status": k["status"], "points": summaries.get(k["rank"], {}).get("runwire.points"),
                  "dropped": summaries.get(k["rank"], {}).get("runwire.dropped")} for k in info["ranks"]]
    run.stored_points = client.query("SELECT count() FROM metrics FINAL WHERE project = {p:String} "
                                     "AND run_id = {r:String}", parameters=p).result_rows[0][0]
    return run


def _curve(queries, run: RunData, name: str) -> list[Bucket]:
    """CURVE_BUCKETS step buckets across ranks: min of the ranks' minima, max of their maxima
    (so a spike of any rank stays), mean of the ranks' last values."""
    out = []
    for row in queries.curve(run.run_id, name, x="step", buckets=CURVE_BUCKETS, across_ranks=True,
                             project=run.project):
        lo, hi, mean = row["min"], row["max"], row["mean"]
        if not _finite(lo, hi):  # a bucket of NaN/Inf only: counted in nonfinite, not drawn
            continue
        out.append(Bucket(float(row["bucket_start"]), lo, hi, mean if _finite(mean) else (lo + hi) / 2,
                          int(row["count"])))
    return out


def _nonfinite_counts(client, run: RunData, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    rows = client.query("SELECT name, count() FROM metrics FINAL WHERE project = {p:String} AND run_id = {r:String} "
                        "AND name IN {names:Array(String)} AND NOT isFinite(value) GROUP BY name",
                        parameters={"p": run.project, "r": run.run_id, "names": names}).result_rows
    return {name: count for name, count in rows}


def _gpus(queries, run: RunData) -> list[GpuSeries]:
    """Temperature and memory use per GPU, as (seconds since the run's start, bucket maximum)."""
    fields = {f: queries.gpu_series(run.run_id, f, buckets=GPU_BUCKETS, project=run.project)
              for f in ("temperature_c", "memory_used_bytes", "memory_total_bytes")}
    if not fields["temperature_c"]:
        return []
    starts = [row["bucket_start"] for row in fields["temperature_c"]]
    origin = min(starts)
    if run.start_time is not None:
        origin = min(origin, _aware(run.start_time))
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


def _attach_alerts(client, runs: list[RunData]) -> None:
    """Alerts of these runs, and alerts with no run id on their hosts while they ran (host-level rules)."""
    ids = [r.run_id for r in runs]
    starts = [r.start_time for r in runs if r.start_time]
    hosts = sorted({h for r in runs for h in r.hosts})
    if starts:
        ends = [r.end_time or dt.datetime.now(dt.timezone.utc) for r in runs]
        host_filter = ("OR (run_id = '' AND host IN {hosts:Array(String)} AND started_at <= {end:DateTime64(6)} "
                       "AND (resolved_at IS NULL OR resolved_at >= {start:DateTime64(6)}))")
        params = {"ids": ids, "hosts": hosts, "start": min(starts), "end": max(ends)}
    else:
        host_filter, params = "", {"ids": ids}
    rows = client.query(
        "SELECT run_id, rule, severity, state, host, gpu_uuid, rank, value, message, started_at, resolved_at "
        # Only alerts that fired: 'pending' and 'inactive' (cleared before firing) never notified.
        f"FROM alerts FINAL WHERE run_id IN {{ids:Array(String)}} {host_filter} "
        "AND state IN ('firing', 'resolved') ORDER BY started_at",
        parameters=params).result_rows
    keys = ("run_id", "rule", "severity", "state", "host", "gpu_uuid", "rank", "value", "message", "started_at",
            "resolved_at")
    by_run = {r.run_id: r for r in runs}
    for row in rows:
        alert = dict(zip(keys, row))
        owner = by_run.get(alert["run_id"]) or next((r for r in runs if alert["host"] in r.hosts), runs[0])
        owner.alerts.append(alert)


# ------------------------------------------------------------------------------------------
# Downsampling (pure)
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# SVG plots (pure)
# ------------------------------------------------------------------------------------------

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#79706e"]
SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
DASHES = ["", "6 3", "2 2", "8 3 2 3"]
MAX_PLOT_BUCKETS = 800

_e = html.escape


def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not _finite(lo, hi):
        return []
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = first + len(ticks) * step
    return ticks


def fmt_number(v, digits: int = 4) -> str:
    """Compact, readable numbers: 3e-4 -> '0.0003', 49289242 -> '4.93e+07', 12.5 -> '12.5'."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-4:
        return f"{v:.3g}"
    if float(v).is_integer() and a < 1e6:
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _tick_labels(ticks: list[float]) -> list[str]:
    """Labels with just enough decimals to tell neighbouring ticks apart."""
    if len(ticks) < 2:
        return [fmt_number(t) for t in ticks]
    step = abs(ticks[1] - ticks[0])
    big = max(abs(t) for t in ticks)
    if big >= 1e4:
        exponent = min(3 * int(math.log10(big) // 3), 12)
        suffix = {3: "k", 6: "M", 9: "G", 12: "T"}[exponent]
        labels = _tick_labels([t / 10 ** exponent for t in ticks])
        return ["0" if t == 0 else label + suffix for t, label in zip(ticks, labels)]
    if step < 1e-4 and big < 1e-2:
        return [f"{t:.2e}" if t else "0" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step else 0
    if step * 10 ** decimals % 1 > 1e-6:  # 2.5 steps need one more decimal
        decimals += 1
    return [f"{t:,.{decimals}f}" for t in ticks]


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    h, rem = divmod(abs(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}" if h else f"{sign}{m}:{s:02d}"


@dataclass
class Series:
    """A named series for `line_chart`: a line of (x, y) points and an optional (x, lo, hi) band."""

    name: str
    color: str
    points: list = field(default_factory=list)
    band: list = field(default_factory=list)
    dash: str = ""


def _no_data(title: str, note: str) -> str:
    return (f'<figure class="chart"><figcaption>{_e(title)}</figcaption>'
            f'<p class="nodata">No data: {_e(note)}</p></figure>')


def line_chart(title: str, series: Sequence[Series], x_label: str, y_label: str, width: int = 560,
               height: int = 300, x_format=None, note: str = "") -> str:
    """An inline SVG line chart with axes, grid, bands and a legend; 'no data' when empty."""
    xs, ys = [], []
    for s in series:
        for x, y in s.points:
            if _finite(x, y):
                xs.append(x)
                ys.append(y)
        for x, lo, hi in s.band:
            if _finite(x, lo, hi):
                xs.append(x)
                ys.extend((lo, hi))
    if not xs:
        return _no_data(title, note or "nothing recorded")
    left, right, top, bottom = 64, 14, 12, 42
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.04
        y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (y1 - y) / (y1 - y0) * ph

    out = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plotarea"/>']
    yt = nice_ticks(y0, y1, 5)
    for t, label in zip(yt, _tick_labels(yt)):
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_e(label)}</text>')
    if x_format is fmt_duration:
        xt = _time_ticks(x0, x1, max(3, pw // 90))
    else:
        xt = nice_ticks(x0, x1, max(3, pw // 90))
    xl = [x_format(t) for t in xt] if x_format else _tick_labels(xt)
    for t, label in zip(xt, xl):
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{_e(label)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="axis" text-anchor="middle">{_e(x_label)}</text>'
               f'<text x="14" y="{top + ph / 2:.1f}" class="axis" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2:.1f})">{_e(y_label)}</text>')
    for s in series:
        band = [(x, lo, hi) for x, lo, hi in s.band if _finite(x, lo, hi)]
        if band:
            upper = " L".join(f"{px(x):.1f} {py(hi):.1f}" for x, _, hi in band)
            lower = " L".join(f"{px(x):.1f} {py(lo):.1f}" for x, lo, _ in reversed(band))
            if len(band) == 1:  # one bucket: a visible vertical bar instead of a zero-width polygon
                x, lo, hi = band[0]
                out.append(f'<rect x="{px(x) - 2:.1f}" y="{py(hi):.1f}" width="4" height="{max(py(lo) - py(hi), 1):.1f}" '
                           f'fill="{s.color}" fill-opacity="0.25" class="band"><title>{_e(s.name)} (min–max)</title></rect>')
            else:
                out.append(f'<path d="M{upper} L{lower} Z" fill="{s.color}" fill-opacity="0.22" stroke="{s.color}" '
                           f'stroke-opacity="0.35" stroke-width="0.6" class="band"><title>{_e(s.name)} (min–max)</title></path>')
        pts = [(x, y) for x, y in s.points if _finite(x, y)]
        if len(pts) == 1:
            out.append(f'<circle cx="{px(pts[0][0]):.1f}" cy="{py(pts[0][1]):.1f}" r="3" fill="{s.color}">'
                       f'<title>{_e(s.name)}</title></circle>')
        elif pts:
            d = " L".join(f"{px(x):.1f} {py(y):.1f}" for x, y in pts)
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<path d="M{d}" fill="none" stroke="{s.color}" stroke-width="1.6"{dash} class="line">'
                       f'<title>{_e(s.name)}</title></path>')
    out.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{s.color}"></span>{_e(s.name)}</li>' for s in series)
    caption = f'<figcaption>{_e(title)}</figcaption>'
    extra = f'<p class="note">{_e(note)}</p>' if note else ""
    return f'<figure class="chart">{caption}{"".join(out)}<ul class="legend">{legend}</ul>{extra}</figure>'


def _time_ticks(t0: float, t1: float, target: int) -> list[float]:
    """Ticks on whole seconds, minutes, hours or days, at most about `target` of them."""
    span = max(t1 - t0, 1.0)
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
             172800, 604800]
    step = next((s for s in steps if span / s <= target), steps[-1])
    first = math.ceil(t0 / step) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def timeline_chart(title: str, rows: Sequence[dict], width: int = 1120) -> str:
    """Horizontal bars on a UTC time axis. rows: label, start, end (datetimes), color, open (bool), tip."""
    rows = [r for r in rows if r.get("start") is not None]
    if not rows:
        return _no_data(title, "no alerts for these runs")
    label_w, right, top, row_h, axis_h = 300, 16, 8, 22, 34
    pw = width - label_w - right
    height = top + row_h * len(rows) + axis_h
    t0 = min(r["start"].timestamp() for r in rows)
    t1 = max((r["end"] or r["start"]).timestamp() for r in rows)
    pad = max((t1 - t0) * 0.02, 1.0)
    t0, t1 = t0 - pad, t1 + pad

    def px(t):
        return label_w + (t - t0) / (t1 - t0) * pw

    out = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
           f'<rect x="{label_w}" y="{top}" width="{pw}" height="{row_h * len(rows)}" class="plotarea"/>']
    ticks = _time_ticks(t0, t1, max(3, pw // 110))
    long_span = t1 - t0 > 86400
    for t in ticks:
        x = px(t)
        stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        label = stamp.strftime("%m-%d %H:%M" if long_span else "%H:%M:%S")
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row_h * len(rows)}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{top + row_h * len(rows) + 15}" class="tick" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{label_w + pw / 2:.1f}" y="{height - 4}" class="axis" text-anchor="middle">time (UTC)</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h
        x_start = px(r["start"].timestamp())
        x_end = px((r["end"] or r["start"]).timestamp())
        label = r["label"] if len(r["label"]) <= 44 else r["label"][:43] + "…"
        tip = _e(r.get("tip") or r["label"])
        out.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" class="rowlabel" text-anchor="end">'
                   f'{_e(label)}<title>{tip}</title></text>')
        inset = 8 if r.get("thin") else 4   # runs are thin bars, alerts full ones
        opacity = "0.55" if r.get("open") else "0.9"
        out.append(f'<rect x="{x_start:.1f}" y="{y + inset}" width="{max(x_end - x_start, 3):.1f}" '
                   f'height="{row_h - 2 * inset}" rx="2" fill="{r["color"]}" fill-opacity="{opacity}"><title>{tip}</title></rect>')
        if r.get("open"):
            out.append(f'<path d="M{x_end:.1f} {y + inset} l8 {(row_h - 2 * inset) / 2} l-8 {(row_h - 2 * inset) / 2} Z" '
                       f'fill="{r["color"]}"/>')
    out.append("</svg>")
    return f'<figure class="chart wide"><figcaption>{_e(title)}</figcaption>{"".join(out)}</figure>'


# ------------------------------------------------------------------------------------------
# The page (pure)
# ------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       background: #f5f6f8; margin: 0; }
header { background: #1d2330; color: #fff; padding: 18px max(28px, calc((100% - 1184px) / 2)); }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header p { margin: 4px 0 0; color: #c5cad6; }
main { padding: 8px 28px 40px; max-width: 1240px; margin: 0 auto; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 14px 18px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef2; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
span.missing { color: #9aa1ad; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; overflow-wrap: anywhere; }
.nowrap { white-space: nowrap; }
.grid2 { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
figure.chart { margin: 0; }
figure.chart figcaption { font-weight: 600; margin: 4px 0; }
svg.plot { width: 100%; height: auto; display: block; font-size: 11px; }
svg .plotarea { fill: #fbfcfd; stroke: #c9ced8; }
svg .grid { stroke: #e3e6ec; stroke-width: 1; }
svg .tick { fill: #5b6372; }
svg .axis { fill: #2d3443; font-size: 12px; }
svg .rowlabel { fill: #2d3443; font-size: 11.5px; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0; display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12.5px; }
.swatch { display: inline-block; width: 14px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.nodata { color: #6b7280; font-style: italic; background: #f7f8fa; border: 1px dashed #cfd4dc; padding: 18px;
          text-align: center; margin: 0; }
.note { color: #6b7280; font-size: 12.5px; margin: 4px 0; }
.status { font-weight: 600; }
.status-FINISHED { color: #2f7d32; } .status-FAILED { color: #c62828; } .status-RUNNING { color: #1565c0; }
.sev { font-weight: 600; }
.sev-critical { color: #d62728; } .sev-warning { color: #d46b08; } .sev-info { color: #1f77b4; }
details summary { cursor: pointer; color: #34495e; margin: 8px 0; }
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _run_colors(runs: Sequence[RunData]) -> dict[str, str]:
    return {r.run_id: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}


def _utc(t: dt.datetime | None) -> str:
    if t is None:
        return "–"
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(run: RunData) -> str:
    if run.start_time is None:
        return "–"
    end = run.end_time or dt.datetime.now(dt.timezone.utc)
    start = run.start_time if run.start_time.tzinfo else run.start_time.replace(tzinfo=dt.timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=dt.timezone.utc)
    return fmt_duration((end - start).total_seconds()) + ("" if run.end_time else " (running)")


def _table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Iterable[int] = (), raw_cells=False) -> str:
    numeric = set(numeric)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if raw_cells and isinstance(cell, _Html) else _e(str(cell))
            cells.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Html(str):
    """Markup this module built itself (already escaped)."""


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def _summary_section(runs: Sequence[RunData], colors: dict, loss_name: str | None) -> str:
    headers = ["run", "name", "project", "status", "started", "duration", "world size", "ranks", "hosts",
               "points sent", "dropped", "stored"]
    if loss_name:
        headers += [f"last {loss_name}", f"min {loss_name}"]
    rows = []
    for r in runs:
        row = [_Html(f'<span class="nowrap">{_swatch(colors[r.run_id])}<span class="mono">{_e(r.run_id)}</span></span>'), r.name or "–",
               r.project or "–", _Html(f'<span class="status status-{_e(r.status)}">{_e(r.status or "–")}</span>'),
               _utc(r.start_time), _duration(r), fmt_number(r.world_size or None), fmt_number(len(r.ranks)),
               ", ".join(r.hosts) or "–", fmt_number(_int(r.points)), fmt_number(_int(r.dropped)),
               fmt_number(r.stored_points)]
        if loss_name:
            row += [fmt_number(r.last.get(loss_name)), fmt_number((r.best.get(loss_name) or (None,))[0])]
        rows.append(row)
    table = _table(headers, rows, numeric={6, 7, 9, 10, 11, 12, 13}, raw_cells=True)
    details = []
    for r in runs:
        if not r.ranks:
            continue
        rank_rows = [[k["rank"], k["local_rank"], k["node_rank"], k["host"], k["status"],
                      fmt_number(_int(k.get("points"))), fmt_number(_int(k.get("dropped")))] for k in r.ranks]
        details.append(f'<details><summary>ranks of <span class="mono">{_e(r.run_id)}</span> '
                       f'({len(r.ranks)})</summary>'
                       + _table(["rank", "local rank", "node rank", "host", "status", "points sent", "dropped"],
                                rank_rows, numeric={0, 1, 2, 5, 6}) + "</details>")
    note = ('<p class="note">Points sent and dropped are what each rank\'s emitter reported when it finished; '
            'stored counts the distinct points in ClickHouse.</p>')
    return f'<section id="summary"><h2>Runs</h2>{table}{note}{"".join(details)}</section>'


def _int(v):
    return int(v) if _finite(v) else None


def _metric_chart(name: str, runs: Sequence[RunData], colors: dict, width: int, height: int) -> str:
    series, notes = [], []
    for r in runs:
        buckets = reduce_buckets(r.curves.get(name, []), MAX_PLOT_BUCKETS)
        if not buckets:
            continue
        ranks = len(r.ranks) or "all"
        series.append(Series(name=f"{r.run_id} (mean of {ranks} ranks, band: min–max)", color=colors[r.run_id],
                             points=[(b.x, b.mean) for b in buckets], band=[(b.x, b.lo, b.hi) for b in buckets]))
        if r.nonfinite.get(name):
            notes.append(f"{r.run_id}: {r.nonfinite[name]:,} NaN/Inf points not plotted")
    return line_chart(name, series, "step", name, width=width, height=height, note="; ".join(notes))


def _gpu_section(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        def series_of(attr):
            return [Series(name=g.label + (f" ({g.memory_total_bytes / 2**30:.0f} GiB)" if attr == "memory_used_pct"
                                           and g.memory_total_bytes else ""),
                           color=PALETTE[i % len(PALETTE)], dash=DASHES[(i // len(PALETTE)) % len(DASHES)],
                           points=getattr(g, attr)) for i, g in enumerate(r.gpus)]
        temp = line_chart(f"GPU temperature · {r.run_id}", series_of("temperature_c"), "time since run start",
                          "°C", x_format=fmt_duration, note="" if r.gpus else "no GPU samples")
        mem = line_chart(f"GPU memory used · {r.run_id}", series_of("memory_used_pct"), "time since run start",
                         "% of GPU memory", x_format=fmt_duration, note="" if r.gpus else "no GPU samples")
        parts.append(f'<h3><span class="mono">{_e(r.run_id)}</span> · {len(r.gpus)} GPUs</h3>'
                     f'<div class="grid2">{temp}{mem}</div>')
    return ('<section id="gpus"><h2>GPUs</h2><p class="note">Highest reading per GPU and time bucket.</p>'
            + "".join(parts) + "</section>")


def _params_section(runs: Sequence[RunData]) -> str:
    keys = sorted({k for r in runs for k in r.params})
    if not keys:
        return '<section id="params"><h2>Parameters</h2><p class="nodata">No data: no parameters logged</p></section>'
    headers = ["parameter"] + [r.run_id for r in runs]
    def cells(k):
        out = [_Html(f'<span class="mono">{_e(k)}</span>')]
        for r in runs:
            v = r.params.get(k)
            out.append(_Html('<span class="missing">(not set)</span>' if v is None else
                             (f'<span class="mono">{_e(v)}</span>')))
        return out

    differing = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]  # None: not set
    if len(runs) == 1:
        body = _table(headers, [cells(k) for k in keys], raw_cells=True)
        return f'<section id="params"><h2>Parameters</h2>{body}</section>'
    if differing:
        diff = _table(headers, [cells(k) for k in differing], raw_cells=True)
    else:
        diff = '<p class="note">All runs have the same parameters.</p>'
    everything = _table(headers, [cells(k) for k in keys], raw_cells=True)
    return (f'<section id="params"><h2>Parameters that differ ({len(differing)} of {len(keys)})</h2>{diff}'
            f'<details><summary>all {len(keys)} parameters</summary>{everything}</details></section>')


def _alert_entity(a: dict) -> str:
    if a.get("gpu_uuid"):
        return f"{a.get('host') or '?'} {a['gpu_uuid'][:12]}"
    if a.get("rank") is not None:
        return f"rank {a['rank']}"
    return a.get("host") or a.get("run_id") or ""


def _alerts_section(runs: Sequence[RunData], colors: dict) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for r in runs:
        if r.start_time is not None:
            rows.append({"label": f"run {r.run_id}", "start": _aware(r.start_time), "end": _aware(r.end_time or now),
                         "color": colors[r.run_id], "open": r.end_time is None, "thin": True,
                         "tip": f"run {r.run_id}: {_utc(r.start_time)} – {_utc(r.end_time)}"})
    alerts = sorted((a for r in runs for a in r.alerts), key=lambda a: _aware(a["started_at"]))
    shown = alerts[:60]
    for a in shown:
        end = a.get("resolved_at")
        if end is None:
            end = max([_aware(r.end_time or now) for r in runs] + [_aware(a["started_at"])])
        rows.append({"label": f"{a['rule']} · {_alert_entity(a)}", "start": _aware(a["started_at"]),
                     "end": _aware(end), "color": SEVERITY_COLORS.get(a.get("severity"), "#7f7f7f"),
                     "open": a.get("resolved_at") is None,
                     "tip": f"{a.get('severity')} {a['rule']} ({a.get('state')}): {a.get('message') or ''}"})
    if not alerts:
        chart = _no_data("Alerts timeline", "no alerts for these runs")
        return f'<section id="alerts"><h2>Alerts</h2>{chart}</section>'
    chart = timeline_chart("Alerts timeline (runs as thin bars on top; alerts still open end in an arrow)", rows)
    legend = "".join(f'<li>{_swatch(c)}{_e(s)}</li>' for s, c in SEVERITY_COLORS.items())
    table = _table(["started", "resolved", "severity", "state", "rule", "run", "host / GPU / rank", "value", "message"],
                   [[_utc(a["started_at"]), _utc(a.get("resolved_at")),
                     _Html(f'<span class="sev sev-{_e(a.get("severity") or "")}">{_e(a.get("severity") or "")}</span>'),
                     a.get("state") or "", a["rule"], a.get("run_id") or "–", _alert_entity(a) or "–",
                     fmt_number(a.get("value")), a.get("message") or ""] for a in alerts],
                   numeric={7}, raw_cells=True)
    more = f'<p class="note">{len(alerts) - len(shown)} more alerts in the table only.</p>' if len(alerts) > len(shown) else ""
    return (f'<section id="alerts"><h2>Alerts ({len(alerts)})</h2>{chart}<ul class="legend">{legend}</ul>{more}'
            f'{table}</section>')


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def render_report(runs: Sequence[RunData], generated_at: dt.datetime | None = None) -> str:
    """The whole report as one HTML document (pure: no I/O)."""
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc)
    colors = _run_colors(runs)
    names = sorted({n for r in runs for n in r.curves}, key=_metric_order)
    loss = next((n for n in names if "loss" in n.lower()), None)
    others = [n for n in names if n != loss]
    title = "runwire report: " + ", ".join(r.run_id for r in runs) if runs else "runwire report"
    if loss:
        loss_html = _metric_chart(loss, runs, colors, width=1120, height=380)
    else:
        loss_html = _no_data("loss", "no metric named like 'loss' in these runs")
    other_html = "".join(_metric_chart(n, runs, colors, width=560, height=280) for n in others)
    if not other_html:
        other_html = _no_data("other metrics", "no other metrics logged")
    body = [
        f"<header><h1>{_e(title)}</h1><p>{len(runs)} run{'s' if len(runs) != 1 else ''} · generated "
        f"{_utc(generated_at)} · curves: steps in at most {CURVE_BUCKETS} buckets; line: mean over ranks; "
        f"band: min–max over all ranks and steps in the bucket, so no spike is hidden</p></header><main>",
        _summary_section(runs, colors, loss) if runs else "<section><p class='nodata'>No data: no runs</p></section>",
        f'<section id="loss"><h2>Loss</h2>{loss_html}</section>',
        f'<section id="metrics"><h2>Other metrics</h2><div class="grid2">{other_html}</div></section>',
        _gpu_section(runs),
        _params_section(runs),
        _alerts_section(runs, colors),
        "</main>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


# ------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------


def write_report(client, run_ids: Sequence[str], path, metrics: Sequence[str] | None = None) -> Path:
    """Write the report comparing `run_ids` to `path` (parent folders are created); returns the path.

    client: a clickhouse-connect client bound to runwire's database.
    metrics: metric names to plot (default: loss-like names first, then the rest, at most 12).
    """
    if not run_ids:
        raise ValueError("write_report needs at least one run id")
    runs = load_report_data(client, run_ids, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(runs), encoding="utf-8")
    return path
