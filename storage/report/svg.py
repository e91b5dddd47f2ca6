"""A small SVG chart library (pure): line charts with min-max bands, a timeline, round ticks and
compact number formats. Text is escaped; nothing here runs script."""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from typing import Sequence

from runwire.storage.report.model import finite as _finite

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#79706e"]
DASHES = ["", "6 3", "2 2", "8 3 2 3"]

_e = html.escape


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


def no_data(title: str, note: str) -> str:
    """A chart placeholder that says why there is nothing to draw."""
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
        return no_data(title, note or "nothing recorded")
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
        return no_data(title, "no alerts for these runs")
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

