"""Periodic rules: those needing a view across ranks or the absence of data (straggler,
heartbeat, custom SQL), evaluated every `interval_s` against ClickHouse.

The pure part turns query rows into observations (`straggler_observations`,
`heartbeat_observations`, `sql_observations`) and tracks conditions over evaluations
(`PeriodicCore`, using the evaluation time as the clock, so for/clear durations count
evaluations' times); `PeriodicEvaluator` is the thin I/O shell that runs the parameterized
queries. Every value is a server-side parameter ({name:Type}); only fixed SQL fragments are
composed.

Scaling notes: the straggler query reads one metric over one window (the metric name leads the
metrics sorting key after the run); heartbeat reads metrics' per-minute rollup (so a silence is
seen 0-60 s after the threshold: the rollup only knows the minute of the last point) and GPU
samples by time (the time leads GPU samples' key after the GPU).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from runwire.ingest.alerts.condition import COLD, HOT, Condition, Entity, Transition, level_of
from runwire.ingest.alerts.rules import Rule, RuleSet, fmt_duration, fmt_number, sql_placeholders

log = logging.getLogger("runwire.alerts")

_NS = 1_000_000_000


@dataclass(frozen=True)
class Observation:
    entity: Entity
    level: int
    value: float
    detail: str = ""


# ------------------------------------------------------------------------------------------
# Pure: rows -> observations


def straggler_observations(rule: Rule, rows: Iterable[tuple], hosts: dict | None = None) -> list[Observation]:
    """rows: (project, run_id, rank, mean_step_s). A rank is HOT when its mean step time is
    >= threshold x the median over its run's ranks (runs with fewer than min_ranks: skipped)."""
    hosts = hosts or {}
    runs: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for project, run_id, rank, step_s in rows:
        if step_s is None or step_s != step_s:
            continue
        runs.setdefault((project, run_id), []).append((int(rank), float(step_s)))
    out = []
    for (project, run_id), ranks in runs.items():
        if len(ranks) < rule.min_ranks:
            continue
        median = statistics.median(s for _, s in ranks)
        if not median > 0:
            continue
        for rank, step_s in ranks:
            ratio = step_s / median
            entity = Entity(project, run_id, hosts.get((project, run_id, rank), ""), "", rank, rule.metric)
            out.append(Observation(entity, level_of(rule, ratio, ">="), ratio,
                                   f"mean {rule.metric} {fmt_number(round(step_s, 4))} s over "
                                   f"{fmt_duration(rule.window_s)} = {ratio:.2f}x the run's median "
                                   f"{fmt_number(round(median, 4))} s across {len(ranks)} ranks"))
    return out


def heartbeat_observations(rule: Rule, rows: Iterable[tuple], now_ns: int) -> list[Observation]:
    """rows: (project, run_id, start_us, metrics_last_us, gpu_last_us) of RUNNING runs (0 or
    None: no data). HOT when the newest sign of life is >= threshold seconds old; runs silent
    longer than max_silence_s are abandoned (not observed, so their alert resolves)."""
    out = []
    now_us = now_ns // 1000
    for project, run_id, start_us, metrics_us, gpu_us in rows:
        last = int(start_us or 0)
        if "metrics" in rule.sources and metrics_us:
            last = max(last, int(metrics_us))
        if "gpu" in rule.sources and gpu_us:
            last = max(last, int(gpu_us))
        if not last:
            continue
        silent_s = (now_us - last) / 1e6
        if silent_s > rule.max_silence_s:
            continue
        level = HOT if silent_s >= rule.threshold else COLD
        out.append(Observation(Entity(project, run_id), level, silent_s,
                               f"RUNNING, last data {fmt_duration(round(max(silent_s, 0)))} ago "
                               f"(>= {fmt_duration(rule.threshold)})"))
    return out


_SQL_ENTITY_COLUMNS = ("project", "run_id", "host", "gpu_uuid", "rank", "subject")


def sql_observations(rule: Rule, columns: list[str], rows: Iterable[tuple], project: str | None) -> list[Observation]:
    """Every row a custom SQL rule returns is a HOT entity. Columns by name: `value` (required),
    optional project, run_id, host, gpu_uuid, rank, subject, message. A project-scoped rule
    keeps only its project's rows."""
    index = {c: i for i, c in enumerate(columns)}
    if "value" not in index:
        raise ValueError(f"rule {rule.name!r}: the query must return a column named 'value' (got {columns})")
    out = []
    for row in rows:
        get = lambda c, default="": row[index[c]] if c in index and row[index[c]] is not None else default  # noqa: E731
        row_project = str(get("project", project or ""))
        if project is not None and row_project != project:
            continue
        rank = get("rank", None)
        try:
            value = float(get("value", float("nan")))
        except (TypeError, ValueError):
            value = float("nan")
        entity = Entity(row_project, str(get("run_id")), str(get("host")), str(get("gpu_uuid")),
                        None if rank is None else int(rank), str(get("subject")))
        out.append(Observation(entity, HOT, value, str(get("message")) or f"value {fmt_number(value)}"))
    return out


# ------------------------------------------------------------------------------------------
# Pure: conditions over evaluations


class PeriodicCore:
    """Conditions of periodic rules. Each evaluation of a rule variant covers all its
    entities: tracked entities missing from an evaluation are observed COLD."""

    def __init__(self) -> None:
        self._tracked: dict[tuple, dict[tuple, tuple[Entity, Condition]]] = {}

    def apply(self, rule: Rule, variant: tuple, now_ns: int, observations: list[Observation]) -> list[Transition]:
        tracked = self._tracked.setdefault(variant, {})
        out: list[Transition] = []
        seen = set()
        for ob in observations:
            key = ob.entity.key
            seen.add(key)
            item = tracked.get(key)
            if item is None:
                if ob.level != HOT:
                    continue
                item = tracked[key] = (ob.entity, Condition())
            entity, cond = item
            if ob.entity.host and not entity.host:  # learned the host later: show it from now on
                entity = ob.entity
                tracked[key] = (entity, cond)
            state = cond.update(rule, now_ns, ob.level)
            if state is not None:
                out.append(Transition(rule, entity, state, now_ns, cond.started_ns, ob.value, ob.detail))
            if cond.idle:
                del tracked[key]
        for key in [k for k in tracked if k not in seen]:
            entity, cond = tracked[key]
            state = cond.update(rule, now_ns, COLD)
            if state is not None:
                out.append(Transition(rule, entity, state, now_ns, cond.started_ns, float("nan"),
                                      "condition no longer returned"))
            if cond.idle:
                del tracked[key]
        return out

    def forget_variant(self, variant: tuple) -> None:
        self._tracked.pop(variant, None)


# ------------------------------------------------------------------------------------------
# SQL


def _project_filter(project: str | None, excluded: tuple[str, ...], column: str = "project") -> str:
    if project is not None:
        return f"{column} = {{project:String}}"
    if excluded:
        return f"{column} NOT IN {{excluded:Array(String)}}"
    return "1"


def straggler_sql(pf: str) -> str:
    # FINAL: a replayed batch must not weigh twice in the mean.
    return (
        "SELECT project, run_id, rank, avg(value) AS step_s FROM metrics FINAL "
        f"WHERE {pf} AND name = {{metric:String}} "
        "AND ts > fromUnixTimestamp64Micro({since_us:Int64}, 'UTC') "
        "AND ts <= fromUnixTimestamp64Micro({now_us:Int64}, 'UTC') AND isFinite(value) "
        "GROUP BY project, run_id, rank ORDER BY project, run_id, rank")


HOSTS_SQL = ("SELECT project, run_id, rank, any(host) FROM run_ranks FINAL "
             "WHERE run_id IN {runs:Array(String)} GROUP BY project, run_id, rank")


def heartbeat_sql(pf: str) -> str:
    # Metrics from the per-minute rollup: the end of the newest minute bounds the last point
    # from above, so a silence is never overstated; GPU samples by time (cheap: ts leads
    # gpu_samples' key after the GPU).
    return (
        "SELECT r.project, r.run_id, toUnixTimestamp64Micro(r.start_time) AS start_us, "
        "m.last_us AS metrics_us, g.last_us AS gpu_us FROM "
        f"(SELECT project, run_id, start_time FROM runs FINAL WHERE {pf} AND status = 'RUNNING') AS r "
        "LEFT JOIN (SELECT project, run_id, "
        "toInt64(toUnixTimestamp(max(minute))) * 1000000 + 60000000 AS last_us FROM metrics_1m "
        f"WHERE {pf} AND minute >= toStartOfMinute(fromUnixTimestamp64Micro({{since_us:Int64}}, 'UTC')) "
        "GROUP BY project, run_id) AS m ON r.project = m.project AND r.run_id = m.run_id "
        "LEFT JOIN (SELECT project, toString(run_id) AS run_id, toUnixTimestamp64Micro(max(ts)) AS last_us "
        f"FROM gpu_samples WHERE {pf} AND ts >= fromUnixTimestamp64Micro({{since_us:Int64}}, 'UTC') "
        "GROUP BY project, run_id) AS g ON r.project = g.project AND r.run_id = g.run_id")


class PeriodicEvaluator:
    """Runs the periodic rules of `rules` against ClickHouse (`client`, a clickhouse-connect
    client used only from the caller's thread). interval_s: default seconds between evaluations
    of a rule (rules may set their own interval_s)."""

    def __init__(self, client, rules: RuleSet, interval_s: float = 15.0, core: PeriodicCore | None = None) -> None:
        self.client = client
        self.rules = rules
        self.interval_s = interval_s
        self.core = core or PeriodicCore()
        self.variants = rules.periodic_variants()
        self._next_ns: dict[tuple, int] = {}
        self._failing: set[tuple] = set()
        self.evaluated: set[str] = set()  # rule names evaluated at least once (for adoption)
        self.counters = {"evaluations": 0, "errors": 0}

    @staticmethod
    def variant_id(rule: Rule, project: str | None) -> tuple:
        return (rule.name, project)

    def next_due_ns(self) -> int | None:
        if not self.variants:
            return None
        return min(self._next_ns.get(self.variant_id(r, p), 0) for r, p, _ in self.variants)

    def evaluate(self, now_ns: int, force: bool = False) -> list[Transition]:
        """Evaluate every rule variant that is due at `now_ns` (all with force)."""
        out: list[Transition] = []
        for rule, project, excluded in self.variants:
            vid = self.variant_id(rule, project)
            if not force and self._next_ns.get(vid, 0) > now_ns:
                continue
            self._next_ns[vid] = now_ns + int((rule.interval_s or self.interval_s) * _NS)
            try:
                observations = self._observe(rule, project, excluded, now_ns)
            except Exception as exc:  # a failing query must not stop the others
                self.counters["errors"] += 1
                if vid not in self._failing:
                    self._failing.add(vid)
                    log.warning("alert rule %s%s: evaluation failed (repeats not logged): %s", rule.name,
                                f" (project {project})" if project else "", exc)
                continue
            if vid in self._failing:
                self._failing.discard(vid)
                log.info("alert rule %s: evaluation works again", rule.name)
            self.counters["evaluations"] += 1
            self.evaluated.add(rule.name)
            out.extend(self.core.apply(rule, vid, now_ns, observations))
        return out

    def _observe(self, rule: Rule, project: str | None, excluded: tuple[str, ...], now_ns: int) -> list[Observation]:
        pf = _project_filter(project, excluded)
        params: dict[str, Any] = {}
        if project is not None:
            params["project"] = project
        elif excluded:
            params["excluded"] = list(excluded)
        now_us = now_ns // 1000
        if rule.kind == "straggler":
            params.update(metric=rule.metric, now_us=now_us, since_us=now_us - int(rule.window_s * 1e6))
            rows = self.client.query(straggler_sql(pf), parameters=params).result_rows
            hosts = {}
            runs = sorted({r[1] for r in rows})
            if runs:
                for p, run, rank, host in self.client.query(HOSTS_SQL, parameters={"runs": runs}).result_rows:
                    hosts[(p, run, int(rank))] = host
            return straggler_observations(rule, rows, hosts)
        if rule.kind == "heartbeat":
            params.update(since_us=now_us - int(rule.max_silence_s * 1e6))
            rows = self.client.query(heartbeat_sql(pf), parameters=params).result_rows
            return heartbeat_observations(rule, rows, now_ns)
        # custom SQL: pass exactly the parameters the query uses
        available = {"now": dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.timezone.utc), "now_us": now_us,
                     "project": project or ""}
        used = {name: available[name] for name in sql_placeholders(rule.sql)}
        result = self.client.query(rule.sql.strip().rstrip(";"), parameters=used or None)
        return sql_observations(rule, list(result.column_names), result.result_rows, project)
