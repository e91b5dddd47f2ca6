"""Text views of alerts: the `runwire alerts ls` table and a run's alert timeline (what the
demo's report prints). Pure formatting, plus `run_timeline` which reads what it formats."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from runwire.ingest.alerts.condition import FIRING, INACTIVE, RESOLVED
from runwire.ingest.alerts.lifecycle import Alert
from runwire.ingest.alerts.notify import alert_dict


def _ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _where(a: Alert) -> str:
    parts = []
    if a.host:
        parts.append(a.host)
    if a.gpu_uuid:
        parts.append(a.gpu_uuid[:12] + "…" if len(a.gpu_uuid) > 13 else a.gpu_uuid)
    if a.rank is not None and not a.gpu_uuid:
        parts.append(f"rank {a.rank}")
    return " ".join(parts) or "-"


def _duration(a: Alert, now_ns: int) -> str:
    end = a.resolved_ns or now_ns
    s = max(0.0, (end - a.started_ns) / 1e9)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def format_alerts(alerts: Iterable[Alert], now_ns: int) -> str:
    """A fixed-width table, newest first."""
    rows = [("STATE", "SEVERITY", "RULE", "PROJECT", "RUN", "WHERE", "STARTED (UTC)", "FOR", "MESSAGE")]
    for a in alerts:
        rows.append((a.state, a.severity, a.rule, a.project, a.run_id or "-", _where(a), _ts(a.started_ns),
                     _duration(a, now_ns), a.message))
    if len(rows) == 1:
        return "no alerts"
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]))
    return "\n".join(lines)


def alerts_json(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    out = []
    for a in alerts:
        d = alert_dict(a)
        d.pop("fired_at", None)  # not stored in the table
        d.pop("observed_at", None)
        d.pop("observed_at_ns", None)
        d["updated_at_ns"] = a.updated_ns
        out.append(d)
    return out


def timeline(alerts: Iterable[Alert], start_ns: int, end_ns: int, width: int = 48) -> str:
    """Each alert of a run as a bar over the run's time span, from its start to its resolution
    (or the end). Counted as fired: firing and resolved; pending ones are shown as such;
    inactive ones (they never fired) are left out."""
    alerts = sorted((a for a in alerts if a.state != INACTIVE), key=lambda a: (a.started_ns, a.rule))
    if not alerts:
        return "alerts: none fired"
    span = max(1, end_ns - start_ns)
    fired = sum(a.state in (FIRING, RESOLVED) for a in alerts)
    pending = f", {len(alerts) - fired} pending (not fired yet)" if len(alerts) > fired else ""
    lines = [f"alerts: {fired} fired{pending}, over the run's {span / 1e9:.0f} s:"]
    for a in alerts:
        first = int((a.started_ns - start_ns) / span * width)
        last = int(((a.resolved_ns or end_ns) - start_ns) / span * width)
        first, last = min(max(first, 0), width - 1), min(max(last, first), width - 1)
        bar = "." * first + "#" * (last - first + 1) + "." * (width - last - 1)
        offset = (a.started_ns - start_ns) / 1e9
        state = a.state if a.state != "resolved" else f"resolved +{(a.resolved_ns - start_ns) / 1e9:.0f}s"
        lines.append(f"  [{bar}] +{offset:5.1f}s {a.severity:<8} {a.rule:<26} {_where(a):<24} {state}")
        lines.append(f"  {'':{width + 2}} {a.message}")
    return "\n".join(lines)


def run_timeline(client, run_id: str, project: str | None = None, width: int = 48) -> str:
    """The alert timeline of one run, over the run's span as the runs table has it (FINAL)."""
    from runwire.ingest.alerts.store import query_alerts

    # Without the pending alerts that cleared before they fired: not news.
    alerts = query_alerts(client, run_id=run_id, project=project, limit=10_000, include_inactive=False)
    span = client.query(
        "SELECT toUnixTimestamp64Nano(min(start_time)), toUnixTimestamp64Nano(max(ifNull(end_time, now64(6)))) "
        "FROM run_ranks FINAL WHERE run_id = {r:String}", parameters={"r": run_id}).result_rows
    start, end = span[0] if span and span[0][0] else (None, None)
    if not start:
        starts = [a.started_ns for a in alerts] or [0]
        start, end = min(starts), max([a.resolved_ns or a.updated_ns for a in alerts] or [1])
    return timeline(alerts, int(start), int(end), width)
