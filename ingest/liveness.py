"""Run liveness: a rank whose data stopped without a RunEnd is CRASHED (as W&B marks it), and
RUNNING again when its data resumes. Checked every `interval_s` against ClickHouse, in one
process of the cluster (next to the periodic alert rules).

A rank is last seen at its newest metric (the per-minute rollup: the end of the newest minute,
so a silence is never overstated), its newest GPU sample, or its start. A run is CRASHED when
none of its ranks still runs and at least one crashed; RUNNING when one runs again. The status
rows restate the stored row with the new status, versioned by the check's clock, so a later
RunEnd (the process was alive after all, or `runwire sync` reports its loss) still wins.

A rank that logs nothing for longer than `lapse_s` (and has no GPU sampler) is marked CRASHED
and set RUNNING again by its next point.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

from runwire.storage import rows as storage_rows

log = logging.getLogger("runwire.liveness")

RUNNING, CRASHED = "RUNNING", "CRASHED"


@dataclass(frozen=True)
class RankState:
    project: str
    run_id: str
    rank: int
    status: str        # RUNNING or CRASHED (the stored row)
    changed_us: int    # when the stored row was written (updated_at)
    last_seen_us: int  # newest data of the rank, or its start


def decide(ranks: list[RankState], now_us: int, lapse_s: float) -> list[tuple[RankState, str]]:
    """(rank, new status) for every rank whose status must change (pure)."""
    out = []
    lapse_us = int(lapse_s * 1e6)
    for r in ranks:
        if r.status == RUNNING and now_us - r.last_seen_us > lapse_us:
            out.append((r, CRASHED))
        elif r.status == CRASHED and r.last_seen_us > r.changed_us:
            out.append((r, RUNNING))
    return out


def run_status(statuses: list[str]) -> str | None:
    """A run's status from its ranks' (None: leave it as it is)."""
    if RUNNING in statuses:
        return RUNNING
    if CRASHED in statuses:
        return CRASHED
    return None


RANKS_SQL = (
    "SELECT r.project, r.run_id, r.rank, toString(r.status), toUnixTimestamp64Micro(r.updated_at), "
    "greatest(toUnixTimestamp64Micro(r.start_time), ifNull(m.last_us, 0), ifNull(g.last_us, 0)) FROM "
    "(SELECT project, run_id, rank, status, updated_at, start_time FROM run_ranks FINAL "
    " WHERE status IN ('RUNNING', 'CRASHED')) AS r "
    "LEFT JOIN (SELECT project, toString(run_id) AS run_id, rank, "
    " toInt64(toUnixTimestamp(max(minute))) * 1000000 + 60000000 AS last_us FROM metrics_1m "
    " WHERE minute >= toStartOfMinute(fromUnixTimestamp64Micro({since_us:Int64}, 'UTC')) "
    " GROUP BY project, run_id, rank) AS m ON r.project = m.project AND r.run_id = m.run_id AND r.rank = m.rank "
    "LEFT JOIN (SELECT project, toString(run_id) AS run_id, rank, toUnixTimestamp64Micro(max(ts)) AS last_us "
    " FROM gpu_samples WHERE ts >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC') "
    " GROUP BY project, run_id, rank) AS g ON r.project = g.project AND r.run_id = g.run_id AND r.rank = g.rank")


def _ts(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc)


class Liveness:
    """The I/O shell: query, decide, write status rows. `client`: clickhouse-connect, used only
    from this object's thread. lapse_s: silence after which a rank is CRASHED (the emitter's
    GPU sampler reports every second; metrics arrive at least every flush interval while a loop
    logs). window_s: how far back data is read (bounds the query)."""

    def __init__(self, client, lapse_s: float = 120.0, interval_s: float = 15.0, window_s: float = 86400.0) -> None:
        self.client = client
        self.lapse_s, self.interval_s, self.window_s = lapse_s, interval_s, window_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = 0

    def check(self, now_us: int | None = None) -> list[tuple[RankState, str]]:
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        since = now_us - int(self.window_s * 1e6)
        rows = self.client.query(RANKS_SQL, parameters={"since_us": since}).result_rows
        ranks = [RankState(p, r, int(k), s, int(c), int(seen)) for p, r, k, s, c, seen in rows]
        changes = decide(ranks, now_us, self.lapse_s)
        for state, status in changes:
            self._write_rank(state, status, now_us)
        for project, run_id in {(s.project, s.run_id) for s, _ in changes}:
            self._write_run(project, run_id, now_us)
        self.changes += len(changes)
        for state, status in changes:
            log.warning("run %s/%s rank %d is %s (last data %.0f s ago)", state.project, state.run_id, state.rank,
                        status, (now_us - state.last_seen_us) / 1e6)
        return changes

    def _write_rank(self, state: RankState, status: str, now_us: int) -> None:
        columns = storage_rows.RUN_RANK_COLUMNS
        stored = self.client.query(
            f"SELECT {', '.join(columns)} FROM run_ranks FINAL "
            "WHERE project = {p:String} AND run_id = {r:String} AND rank = {k:UInt32}",
            parameters={"p": state.project, "r": state.run_id, "k": state.rank}).result_rows
        if not stored:
            return
        row = dict(zip(columns, stored[0]))
        row.update(status=status, updated_at=_ts(now_us))
        self.client.insert("run_ranks", [[row[c] for c in columns]], column_names=columns)

    def _write_run(self, project: str, run_id: str, now_us: int) -> None:
        params = {"p": project, "r": run_id}
        statuses = [s for (s,) in self.client.query(
            "SELECT toString(status) FROM run_ranks FINAL WHERE project = {p:String} AND run_id = {r:String}",
            parameters=params).result_rows]
        status = run_status(statuses)
        columns = storage_rows.RUN_COLUMNS
        stored = self.client.query(f"SELECT {', '.join(columns)} FROM runs FINAL "
                                   "WHERE project = {p:String} AND run_id = {r:String}", parameters=params).result_rows
        if status is None or not stored:
            return
        row = dict(zip(columns, stored[0]))
        if row["status"] not in (RUNNING, CRASHED) or row["status"] == status:
            return
        row.update(status=status, updated_at=_ts(now_us))
        self.client.insert("runs", [[row[c] for c in columns]], column_names=columns)

    # -- background thread ----------------------------------------------------------------
    def start(self) -> "Liveness":
        self._thread = threading.Thread(target=self._loop, name="runwire-liveness", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # ClickHouse away: try again next interval
                log.warning("liveness check failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
