"""The report as one HTML document (pure): sections for runs, curves, GPUs, parameters and
alerts, inline styles and a Content-Security-Policy that forbids every fetch and script."""

from __future__ import annotations

import datetime as dt
import html
from typing import Iterable, Sequence

from runwire.storage.report.model import (
    CURVE_BUCKETS, RunData, aware as _aware, finite as _finite, metric_order, reduce_buckets,
)
from runwire.storage.report.svg import (
    DASHES, PALETTE, Series, fmt_duration, fmt_number, line_chart, no_data as _no_data, timeline_chart,
)

SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
MAX_PLOT_BUCKETS = 800

_e = html.escape


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



def render_report(runs: Sequence[RunData], generated_at: dt.datetime | None = None) -> str:
    """The whole report as one HTML document (pure: no I/O)."""
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc)
    colors = _run_colors(runs)
    names = sorted({n for r in runs for n in r.curves}, key=metric_order)
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
