"""The `alerts` table (thin I/O): one row per alert state change; the newest `updated_at` of an
`alert_id` wins (ReplacingMergeTree), so read it with FINAL."""

from __future__ import annotations

import math

from runwire.ingest.alerts.lifecycle import Alert

COLUMNS = ["project", "alert_id", "rule", "severity", "state", "run_id", "host", "gpu_uuid", "rank", "value",
           "message", "started_at", "resolved_at", "updated_at"]

_MAX_MESSAGE = 4000


def alert_row(a: Alert) -> list:
    """The table row of an alert. Times go in as integer ticks of each column's precision
    (microseconds for started/resolved_at, nanoseconds for updated_at) so nothing is rounded."""
    return [a.project, a.alert_id, a.rule, a.severity, a.state, a.run_id, a.host, a.gpu_uuid,
            None if a.rank is None else int(a.rank), float(a.value), a.message[:_MAX_MESSAGE],
            int(a.started_ns) // 1000, None if a.resolved_ns is None else int(a.resolved_ns) // 1000,
            int(a.updated_ns)]


# The newest version of every alert, read FINAL; `state` filters after the replacing merge.
SELECT_SQL = (
    "SELECT project, alert_id, rule, severity, state, run_id, host, gpu_uuid, rank, value, message, "
    "toUnixTimestamp64Micro(started_at), toUnixTimestamp64Micro(resolved_at), toUnixTimestamp64Nano(updated_at) "
    "FROM alerts FINAL WHERE {where} ORDER BY started_at DESC, alert_id LIMIT {{limit:UInt32}}")


def row_to_alert(row) -> Alert:
    (project, aid, rule, severity, state, run_id, host, gpu_uuid, rank, value, message,
     started_us, resolved_us, updated_ns) = row
    return Alert(alert_id=aid, rule=rule, severity=severity, state=state, project=project, run_id=run_id,
                 host=host, gpu_uuid=gpu_uuid, rank=None if rank is None else int(rank), subject="",
                 value=float(value) if value is not None else math.nan, message=message,
                 started_ns=int(started_us) * 1000, fired_ns=None,
                 resolved_ns=None if resolved_us is None else int(resolved_us) * 1000,
                 updated_ns=int(updated_ns), observed_ns=int(updated_ns))


def query_alerts(client, *, open_only: bool = False, firing_only: bool = False, project: str | None = None,
                 run_id: str | None = None, rule: str | None = None, limit: int = 1000,
                 include_inactive: bool = True) -> list[Alert]:
    """Alerts from the table, newest first (FINAL: the latest state of each). include_inactive:
    also the pending alerts whose condition cleared before they fired (state "inactive")."""
    where, params = ["1"], {"limit": int(limit)}
    if not include_inactive:
        where.append("state != 'inactive'")
    if firing_only:
        where.append("state = 'firing'")
    elif open_only:
        where.append("state IN ('pending', 'firing')")
    if project is not None:
        where.append("project = {project:String}")
        params["project"] = project
    if run_id is not None:
        where.append("run_id = {run_id:String}")
        params["run_id"] = run_id
    if rule is not None:
        where.append("rule = {rule:String}")
        params["rule"] = rule
    sql = SELECT_SQL.format(where=" AND ".join(where))
    return [row_to_alert(r) for r in client.query(sql, parameters=params).result_rows]


class AlertStore:
    """Writes alert state changes with a clickhouse-connect client (used from one thread)."""

    def __init__(self, client) -> None:
        self.client = client

    def write(self, alerts: list[Alert]) -> int:
        if alerts:
            self.client.insert("alerts", [alert_row(a) for a in alerts], column_names=COLUMNS)
        return len(alerts)

    def load_open(self, limit: int = 100_000) -> list[Alert]:
        return query_alerts(self.client, open_only=True, limit=limit)

    def ended_runs(self, runs) -> dict[tuple[str, str], tuple[str, int]]:
        """(project, run_id) -> (status, end time in ns, 0 if unknown) of those of `runs`
        that are no longer RUNNING."""
        runs = set(runs)
        if not runs:
            return {}
        rows = self.client.query(
            "SELECT project, run_id, status, toUnixTimestamp64Nano(end_time) FROM runs FINAL "
            "WHERE run_id IN {ids:Array(String)}", parameters={"ids": sorted({r for _, r in runs})}).result_rows
        # The status is read after FINAL: a filter on it in WHERE could see a replaced row.
        return {(p, r): (status, int(end or 0)) for p, r, status, end in rows
                if (p, r) in runs and status != "RUNNING"}
