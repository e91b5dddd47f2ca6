"""Reading runs, metric curves and GPU health back out of ClickHouse (thin I/O over
runwire.storage.filters).

Every value reaches ClickHouse as a server-side parameter (``{name:Type}``); the only names
formatted into SQL are fixed column names and the GPU field, which is checked against
:data:`GPU_FLOAT_FIELDS` first.

How the queries stay fast at scale (see bench/query.py):

"Last": everywhere (show, compare, search, curves, the report) a metric's last value is the
value at its highest step; ties: the latest timestamp, then the lowest rank. The rollups order
points by the key step * 2^48 + milliseconds: ``metrics_1m`` keeps argMax(value, key) and
max(key) per rank and minute, ``metrics_summary`` the tuple (key, -rank, step, value) under
max() per run and metric (migration 0004_last_by_step.sql). Raw reads use max((step, ts, value)).

Replays (a batch stored twice, see README "Replays"): the raw tables collapse them on merge;
until then every read here that counts or averages removes them itself (``uniqExact`` over the
point key, ``FINAL``, or ``any`` per point), and min, max and last cannot change. Only the
per-minute rollups' count and sum include a replay that reached ClickHouse in a differently
composed insert (an identical insert is deduplicated): the ``count`` of time curves with
buckets of a minute or more and the means of ``gpu_timeline`` over such buckets.

How the queries stay fast at scale (see bench/query.py):

* Every per-run query filters on the sorting-key prefix ``(project, run_id, name, rank)``. A
  run id alone is resolved to its project once (from ``runs``/``run_ranks``, cached). Every
  WHERE clause is built by :func:`where_clause`.
* A run's last/min/max per metric (search, compare, show) comes from ``metrics_summary``
  (filled by its materialized view on every insert into ``metrics_1m``): one row per run and
  metric once merged. At 1,000 runs x 100 million points a search reads 10,000 summary rows
  instead of 3.4 million per-minute rollup rows.
* Time curves wider than one minute per bucket, the GPU timeline over long ranges and the
  fleet views (hottest GPUs, memory headroom) read the per-minute rollups.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any, Iterable, Sequence

from runwire.proto.contract import GPU_FLOAT_FIELDS
from runwire.storage.client import server_message
from runwire.storage import filters as _filters

__all__ = ["RunQueries", "QueryError", "NotFound", "RunNotFound", "GPU_FLOAT_FIELDS", "FIRED_STATES", "where_clause"]


_UTC = dt.timezone.utc

# States of the alerts table (runwire.ingest.alerts) in which an alert fired: "pending" has not
# fired yet and "inactive" never did (it cleared, or its run ended, first).
FIRED_STATES = ("firing", "resolved")

# GROUP BY a prefix of the sorting key streams instead of hashing: measured 1.3-2x faster on
# the rollups (bench/query.py).
_IN_ORDER = {"optimize_aggregation_in_order": 1}


class QueryError(Exception):
    """A query that cannot be answered as asked (bad argument, refused statement). The message
    is meant for the user, without a traceback."""


class NotFound(QueryError, LookupError):
    """Nothing stored matches (an unknown run, a GPU without samples)."""


class RunNotFound(NotFound):
    """No run with this id (in this project)."""


def _utc(value):
    """ClickHouse returns naive datetimes for UTC columns; ours are always aware."""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value


def _epoch_ms(value) -> int:
    """A datetime (naive = UTC) or seconds since the epoch -> integer milliseconds."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        return int(round(value.timestamp() * 1000))
    if isinstance(value, (int, float)) and math.isfinite(value):
        return int(round(value * 1000))
    raise QueryError(f"expected a datetime or seconds since the epoch, got {value!r}")


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=_UTC)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QueryError(f"{what} must be a positive integer, got {value!r}")
    return value


def _ranks_list(ranks) -> list[int] | None:
    if ranks is None:
        return None
    ranks = [ranks] if isinstance(ranks, int) else list(ranks)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks):
        raise QueryError(f"ranks must be non-negative integers, got {ranks!r}")
    return sorted(set(ranks))


# The one home of RunQueries' WHERE clauses: filter -> (column, operator, parameter type).
_FILTERS = {
    "project": ("project", "=", "String"),
    "run_id": ("run_id", "=", "String"),
    "name": ("name", "=", "String"),
    "gpu_uuid": ("gpu_uuid", "=", "String"),
    "projects": ("project", "IN", "Array(String)"),
    "run_ids": ("run_id", "IN", "Array(String)"),
    "names": ("name", "IN", "Array(String)"),
    "ranks": ("rank", "IN", "Array(UInt32)"),
    "hosts": ("host", "IN", "Array(String)"),
    "gpu_uuids": ("gpu_uuid", "IN", "Array(String)"),
    "keys": ("key", "IN", "Array(String)"),
}


def where_clause(params: dict | None = None, prefix: str = "w_", **filters) -> tuple[str, dict]:
    """``(sql, params)``: the conditions of every filter that is not None, joined by AND, each
    value a server-side parameter named ``<prefix><filter>`` (added to a copy of ``params``;
    give two clauses of one query with different values different prefixes); "1" when there
    are none. Filters: the keys of _FILTERS, e.g. where_clause(project="p", ranks=[0, 1])."""
    out = dict(params or {})
    parts = []
    for key, value in filters.items():
        if value is None:
            continue
        column, op, kind = _FILTERS[key]
        out[prefix + key] = sorted(set(value)) if op == "IN" else value
        parts.append(f"{column} {op} {{{prefix}{key}:{kind}}}")
    return " AND ".join(parts) or "1", out


class RunQueries:
    """Read-side queries over the runwire schema.

    client: a clickhouse-connect client bound to the runwire database
    (``runwire.storage.client.connect(url, database, create=False)``). Every method is one to
    four round trips; results are plain dicts and lists (datetimes are timezone-aware UTC).
    """

    def __init__(self, client) -> None:
        self.client = client
        # (project argument or None, run_id) -> project: a run never changes project.
        self._project_of: dict[tuple[str | None, str], str] = {}

    # --- plumbing ----------------------------------------------------------------------------

    def _query(self, sql: str, params: dict | None = None, settings: dict | None = None) -> list[dict]:
        result = self.client.query(sql, parameters=params or {}, settings=settings)
        names = result.column_names
        return [dict(zip(names, row)) for row in result.result_rows]

    @staticmethod
    def _summary_sql(where: str, last_only: bool = False) -> str:
        """SQL of (project, run_id, name, last[, step, min, max]) per run and metric, from
        metrics_summary (merging the rows of not yet merged parts)."""
        extra = "" if last_only else ", max(last_point).3 AS step, min(min_value) AS min, max(max_value) AS max"
        # last_point is (key, -rank, step, value): its max is the last point (module docstring: "last").
        return (f"SELECT toString(project) AS project, run_id, toString(name) AS name, "
                f"max(last_point).4 AS last{extra} FROM metrics_summary WHERE {where} "
                "GROUP BY project, run_id, name")

    def _resolve(self, run_ids: Sequence[str], project: str | None) -> dict[str, str]:
        """run_id -> project for every run id; RunNotFound for unknown ones. A run id that
        exists in several projects needs ``project``."""
        run_ids = list(dict.fromkeys(run_ids))
        for run_id in run_ids:
            if not isinstance(run_id, str) or not run_id:
                raise QueryError(f"run ids must be non-empty strings, got {run_id!r}")
        known = {r: self._project_of[(project, r)] for r in run_ids if (project, r) in self._project_of}
        missing = [r for r in run_ids if r not in known]
        if missing:
            cond, params = where_clause(run_ids=missing, project=project)
            rows = self._query(
                f"SELECT run_id, arraySort(groupUniqArray(toString(project))) AS projects FROM ("
                f" SELECT project, run_id FROM runs WHERE {cond}"
                f" UNION ALL SELECT project, run_id FROM run_ranks WHERE {cond}) GROUP BY run_id", params)
            found = {row["run_id"]: row["projects"] for row in rows}
            absent = [r for r in missing if r not in found]
            if absent:
                scope = f" in project {project!r}" if project is not None else ""
                raise RunNotFound(f"no run {', '.join(map(repr, absent))}{scope}")
            for run_id, projects in found.items():
                if len(projects) > 1:
                    raise QueryError(f"run {run_id!r} exists in projects {', '.join(projects)}: pass a project")
                known[run_id] = self._project_of[(project, run_id)] = projects[0]
        return {r: known[r] for r in run_ids}

    def _metric_summaries(self, pairs: Iterable[tuple[str, str]], names: Sequence[str] | None = None,
                          last_only: bool = False) -> dict[tuple[str, str], dict[str, dict]]:
        """{(project, run_id): {metric: {"last", "step", "min", "max"}}}.

        From metrics_summary, exact under replays. "last" is the value at the highest step
        (any rank; on a tie the latest timestamp, then the lowest rank); "step" is that step.
        """
        pairs = list(pairs)
        if not pairs:
            return {}
        cond, params = where_clause(projects=[p for p, _ in pairs], run_ids=[r for _, r in pairs], names=names)
        rows = self._query(self._summary_sql(cond, last_only) + " ORDER BY project, run_id, name", params)
        wanted = set(pairs)
        out: dict[tuple[str, str], dict[str, dict]] = {}
        for row in rows:
            key = (row.pop("project"), row.pop("run_id"))
            if key in wanted:
                out.setdefault(key, {})[row.pop("name")] = row
        return out

    # --- runs --------------------------------------------------------------------------------

    def list_runs(self, project: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        """Newest runs first: run_id, project, name, status, start_time, end_time, world_size,
        hosts (sorted) and ranks (how many ranks reported). project / status: exact filters."""
        limit = _positive_int(limit, "limit")
        cond, params = where_clause({"limit": limit}, project=project)
        status_filter = ""
        if status is not None:
            # On the outer query: a WHERE on a non-key column must not run before FINAL merges.
            status_filter = " WHERE r.status = {s:String}"
            params["s"] = status.upper()
        rows = self._query(
            "SELECT r.run_id AS run_id, toString(r.project) AS project, r.name AS name, toString(r.status) AS status, "
            "r.start_time AS start_time, r.end_time AS end_time, r.world_size AS world_size, "
            "k.hosts AS hosts, k.ranks AS ranks "
            f"FROM (SELECT project, run_id, name, status, start_time, end_time, world_size FROM runs FINAL WHERE {cond}) AS r "
            "LEFT JOIN (SELECT project, run_id, arraySort(groupUniqArray(toString(host))) AS hosts, count() AS ranks "
            f"  FROM run_ranks FINAL WHERE {cond} GROUP BY project, run_id) AS k "
            "ON k.project = r.project AND k.run_id = r.run_id"
            f"{status_filter} ORDER BY r.start_time DESC, r.run_id LIMIT {{limit:UInt64}}", params)
        for row in rows:
            row["start_time"], row["end_time"] = _utc(row["start_time"]), _utc(row["end_time"])
        return rows

    def get_run(self, run_id: str, project: str | None = None) -> dict:
        """One run: run_id, project, name, status, start_time, end_time, exit_code, git_commit,
        launcher, world_size, summary, params, tags, ranks [{rank, local_rank, node_rank, host,
        status, pid, start_time, end_time, exit_code}], hosts, and metrics {name: {last, step,
        min, max}}. Raises RunNotFound."""
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause(project=project, run_id=run_id)
        runs = self._query(
            "SELECT name, toString(status) AS status, start_time, end_time, exit_code, git_commit, "
            f"toString(launcher) AS launcher, world_size, summary FROM runs FINAL WHERE {cond}", params)
        ranks = self._query(
            "SELECT rank, local_rank, node_rank, toString(host) AS host, toString(status) AS status, pid, "
            f"start_time, end_time, exit_code, summary FROM run_ranks FINAL WHERE {cond} ORDER BY rank", params)
        kv = self._query(
            f"SELECT 'params' AS kind, key, value FROM params FINAL WHERE {cond} "
            f"UNION ALL SELECT 'tags' AS kind, key, value FROM tags FINAL WHERE {cond}", params)
        run = runs[0] if runs else {
            # Rank 0's start has not arrived yet: what the other ranks said.
            "name": "", "status": ranks[0]["status"] if ranks else "", "start_time": min(r["start_time"] for r in ranks)
            if ranks else None, "end_time": None, "exit_code": None, "git_commit": "", "launcher": "",
            "world_size": max((r["rank"] for r in ranks), default=-1) + 1, "summary": {}}
        for row in ranks:
            row["start_time"], row["end_time"] = _utc(row["start_time"]), _utc(row["end_time"])
            row["summary"] = dict(row["summary"])
        return {
            "run_id": run_id, "project": project, **run,
            "start_time": _utc(run["start_time"]), "end_time": _utc(run["end_time"]),
            "summary": dict(run["summary"]),
            "params": dict(sorted((r["key"], r["value"]) for r in kv if r["kind"] == "params")),
            "tags": dict(sorted((r["key"], r["value"]) for r in kv if r["kind"] == "tags")),
            "ranks": ranks,
            "hosts": sorted({r["host"] for r in ranks}),
            "metrics": self._metric_summaries([(project, run_id)]).get((project, run_id), {}),
        }

    def metric_names(self, run_id: str, project: str | None = None) -> list[str]:
        """Names of the metrics a run logged, sorted."""
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause(project=project, run_id=run_id)
        rows = self._query(f"SELECT DISTINCT toString(name) AS name FROM metrics_1m WHERE {cond} ORDER BY name", params)
        return [row["name"] for row in rows]

    # --- curves ------------------------------------------------------------------------------

    def curve(self, run_id: str, metric: str, x: str = "step", buckets: int = 1000, ranks=None,
              across_ranks: bool = False, project: str | None = None) -> list[dict]:
        """A metric's curve, downsampled into at most ``buckets`` buckets per series, keeping
        each bucket's min, max and last so that a single spike stays visible. Deterministic.

        x: "step" (equal-width step buckets) or "time" (equal-width time buckets; buckets of a
        minute or more read the per-minute rollup, whose count includes a replayed batch that
        reached ClickHouse in a differently composed insert). ranks: an int or ints to keep (default all).

        Per rank (default): rows {bucket_start, rank, min, max, last, count} ordered by rank,
        bucket_start. across_ranks=True: one series, rows {bucket_start, rank: None, min (of the
        ranks' mins), max (of the maxes), mean (of the ranks' last values), last (the value at
        the bucket's highest step, any rank), count (points), ranks (ranks present)}.
        bucket_start is a step (int) or a UTC datetime. NaN is skipped by min/max (ClickHouse
        semantics) but shows as ``last``.
        """
        if x not in ("step", "time"):
            raise QueryError(f"x must be 'step' or 'time', got {x!r}")
        buckets = _positive_int(buckets, "buckets")
        ranks = _ranks_list(ranks)
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause({"n": buckets}, project=project, run_id=run_id, name=metric, ranks=ranks)
        if x == "time":
            found = self._query("SELECT count() AS n, min(minute) AS lo, max(minute) AS hi FROM metrics_1m "
                                f"WHERE {cond}", params)[0]
            if not found["n"]:
                return []
            lo = int(_utc(found["lo"]).timestamp())
            hi = int(_utc(found["hi"]).timestamp()) + 60
            if (hi - lo) / buckets >= 60:
                return self._time_curve_rollup(cond, params, lo, hi, buckets, across_ranks)
        # Equal-width buckets over [lo, hi]: width = (hi - lo) // n + 1 makes at most n of them.
        key = "step" if x == "step" else "toUnixTimestamp64Milli(ts)"
        bound = (f"(SELECT (min({key}), max({key})) FROM metrics WHERE {cond}) AS bounds, bounds.1 AS lo, "
                 "greatest(1, intDiv(bounds.2 - bounds.1, {n:UInt32}) + 1) AS w")
        # The bucket's last point is its highest (step, ts) in either x (module docstring: "last"); value
        # breaks a tie of two different points at one (step, ts) before a merge keeps one.
        per_rank = (f"SELECT rank, lo + intDiv({key} - lo, w) * w AS bucket_start, min(value) AS r_min, "
                    "max(value) AS r_max, max((step, ts, value)) AS r_point, uniqExact(step, ts) AS r_count "
                    f"FROM metrics WHERE {cond} GROUP BY rank, bucket_start")
        sql = f"WITH {bound} " + _combine_ranks(per_rank, across_ranks)
        rows = self._query(sql, params)
        return [self._curve_row(row, x, across_ranks) for row in rows]

    def _time_curve_rollup(self, cond: str, params: dict, lo: int, hi: int, buckets: int,
                           across_ranks: bool) -> list[dict]:
        width = -(-(hi - lo) // buckets)        # seconds, rounded up to whole minutes so that
        width = -(-width // 60) * 60            # no rollup minute straddles two buckets
        params = dict(params, lo=lo, w=width)
        per_rank = ("SELECT rank, {lo:UInt32} + intDiv(toUInt32(minute) - {lo:UInt32}, {w:UInt32}) * {w:UInt32} "
                    "AS bucket_start, min(min_value) AS r_min, max(max_value) AS r_max, "
                    "(max(last_key), 0, argMax(finalizeAggregation(last_point), last_key)) AS r_point, "
                    "sum(count) AS r_count "
                    f"FROM metrics_1m WHERE {cond} GROUP BY rank, bucket_start")
        out = []
        for row in self._query(_combine_ranks(per_rank, across_ranks), params):
            row["bucket_start"] = row["bucket_start"] * 1000
            out.append(self._curve_row(row, "time", across_ranks))
        return out

    @staticmethod
    def _curve_row(row: dict, x: str, across_ranks: bool) -> dict:
        start = row["bucket_start"]
        out = {"bucket_start": int(start) if x == "step" else _from_ms(int(start)),
               "rank": None if across_ranks else row["rank"],
               "min": row["min"], "max": row["max"], "last": row["last"], "count": int(row["count"])}
        if across_ranks:
            out["mean"] = row["mean"]
            out["ranks"] = int(row["ranks"])
        return out

    def history(self, run_id: str, metric: str, ranks=None, project: str | None = None) -> list[dict]:
        """Every stored point of one metric of one run (replays removed): rows {rank, step, ts,
        value} ordered by rank, step. Full resolution: for long runs prefer ``curve``."""
        ranks = _ranks_list(ranks)
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause(project=project, run_id=run_id, name=metric, ranks=ranks)
        result = self.client.query(f"SELECT rank, step, ts, value FROM metrics WHERE {cond} "
                                   "ORDER BY rank, step, ts LIMIT 1 BY rank, step, ts", parameters=params)
        return [{"rank": k, "step": s, "ts": _utc(t), "value": v} for k, s, t, v in result.result_rows]

    def metric_counts(self, run_id: str, project: str | None = None) -> dict[str, dict[str, int]]:
        """Per metric of a run: {"points": stored points, "nonfinite": how many are NaN or Inf}.
        Exact (FINAL: replays count once)."""
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause(project=project, run_id=run_id)
        rows = self._query("SELECT toString(name) AS name, count() AS points, countIf(NOT isFinite(value)) AS nonfinite "
                           f"FROM metrics FINAL WHERE {cond} GROUP BY name ORDER BY name", params)
        return {r["name"]: {"points": int(r["points"]), "nonfinite": int(r["nonfinite"])} for r in rows}

    # --- compare and search ------------------------------------------------------------------

    def compare(self, run_ids: Sequence[str], metrics: Sequence[str] | None = None,
                project: str | None = None) -> dict:
        """Side by side: {"runs": {run_id: {project, name, status}}, "params": {key: {run_id:
        value}} for keys whose values differ (a missing key counts as None), "all_params": every
        key, "metrics": {metric: {run_id: {"last", "min", "max", "step"}}}} (metrics: the names
        to include, default all). Raises RunNotFound for an unknown run."""
        if isinstance(run_ids, str) or not run_ids:
            raise QueryError("compare needs a list of run ids")
        projects = self._resolve(run_ids, project)
        run_ids = list(projects)
        pairs = [(projects[r], r) for r in run_ids]
        cond, params = where_clause(projects=projects.values(), run_ids=run_ids)
        rows = self._query(f"SELECT toString(project) AS project, run_id, key, value FROM params FINAL WHERE {cond}",
                           params)
        runs = self._query("SELECT toString(project) AS project, run_id, name, toString(status) AS status "
                           f"FROM runs FINAL WHERE {cond}", params)
        wanted = set(pairs)
        all_params: dict[str, dict[str, str | None]] = {}
        for row in rows:
            if (row["project"], row["run_id"]) in wanted:
                all_params.setdefault(row["key"], {})[row["run_id"]] = row["value"]
        all_params = {k: {r: v.get(r) for r in run_ids} for k, v in sorted(all_params.items())}
        differing = {k: v for k, v in all_params.items() if len(set(v.values())) > 1}
        summaries = self._metric_summaries(pairs, names=list(metrics) if metrics is not None else None)
        by_metric: dict[str, dict[str, dict]] = {}
        for (p, r), per_name in summaries.items():
            for name, values in per_name.items():
                by_metric.setdefault(name, {})[r] = values
        meta = {row["run_id"]: row for row in runs if (row["project"], row["run_id"]) in wanted}
        return {
            "runs": {r: {"project": projects[r], "name": meta.get(r, {}).get("name", ""),
                         "status": meta.get(r, {}).get("status", "")} for r in run_ids},
            "params": differing,
            "all_params": all_params,
            "metrics": {name: {r: by_metric[name][r] for r in run_ids if r in by_metric[name]}
                        for name in sorted(by_metric)},
        }

    def search_runs(self, filter_string: str = "", order_by: Sequence[str] | None = None,
                    max_results: int = 1000, project: str | None = None, output: str = "list"):
        """MLflow-style run search (grammar: runwire.storage.filters, with ``or`` and
        parentheses). Default order: newest start first, then run id.

        Returns a list of dicts (output="list") or a pandas DataFrame (output="pandas") with
        the columns run_id, project, name, status, start_time, end_time, then ``metrics.NAME``
        (the run's last value), ``params.KEY`` and ``tags.KEY`` for every metric, param and tag
        of the returned runs (None/NaN where a run has none). Raises FilterError.
        """
        if output not in ("list", "pandas"):
            raise QueryError(f"output must be 'list' or 'pandas', got {output!r}")
        max_results = _positive_int(max_results, "max_results")
        node = _filters.parse_filter(filter_string)
        order = _filters.parse_order_by(order_by)
        used = _filters.referenced_keys(node, order)
        params: dict[str, Any] = {"limit": max_results}
        matched, params = _filters.compile_filter(node, params=params)
        order_terms, params = _filters.compile_order_by(order, params=params)
        in_project, params = where_clause(params, project=project)
        joins, maps = [], {"params": "CAST(map(), 'Map(String, String)')",
                           "tags": "CAST(map(), 'Map(String, String)')",
                           "metrics": "CAST(map(), 'Map(String, Float64)')"}
        for table in ("params", "tags"):
            if used[table]:
                cond, params = where_clause(params, prefix=f"{table}_", keys=used[table], project=project)
                joins.append(
                    f"LEFT JOIN (SELECT project, run_id, mapFromArrays(groupArray(key), groupArray(value)) AS kv "
                    f"FROM {table} FINAL WHERE {cond} "
                    f"GROUP BY project, run_id) AS {table}_ ON {table}_.project = r.project AND {table}_.run_id = r.run_id")
                maps[table] = f"{table}_.kv"
        if used["metrics"]:
            cond, params = where_clause(params, names=used["metrics"], project=project)
            inner = self._summary_sql(cond, last_only=True)
            joins.append(
                "LEFT JOIN (SELECT project, run_id, mapFromArrays(groupArray(name), groupArray(last)) AS kv "
                f"FROM ({inner}) GROUP BY project, run_id) AS metrics_ "
                "ON metrics_.project = r.project AND metrics_.run_id = r.run_id")
            maps["metrics"] = "metrics_.kv"
        sql = (
            "SELECT project, run_id, name, status, start_time, end_time FROM ("
            " SELECT toString(r.project) AS project, r.run_id AS run_id, r.name AS name, toString(r.status) AS status,"
            " r.start_time AS start_time, r.end_time AS end_time, "
            f"{maps['params']} AS params, {maps['tags']} AS tags, {maps['metrics']} AS metrics"
            f" FROM (SELECT project, run_id, name, status, start_time, end_time FROM runs FINAL WHERE {in_project}) AS r "
            + " ".join(joins) +
            f") WHERE {matched} ORDER BY {', '.join(order_terms + ['start_time DESC', 'run_id ASC'])} "
            "LIMIT {limit:UInt64}")
        runs = self._query(sql, params)
        rows = self._search_rows(runs)
        if output == "pandas":
            import pandas as pd

            columns = list(rows[0]) if rows else ["run_id", "project", "name", "status", "start_time", "end_time"]
            return pd.DataFrame(rows, columns=columns)
        return rows

    def _search_rows(self, runs: list[dict]) -> list[dict]:
        """MLflow-style rows for the runs phase one selected: all their params, tags and last
        metric values (read for these runs only, by their sorting-key prefix)."""
        if not runs:
            return []
        pairs = [(r["project"], r["run_id"]) for r in runs]
        scope, params = where_clause(projects=[p for p, _ in pairs], run_ids=[r for _, r in pairs])
        metrics_sql = self._summary_sql(scope, last_only=True)
        # One round trip: params and tags carry `text`, metrics `number`.
        rows = self._query(
            "SELECT 'params' AS kind, toString(project) AS project, run_id, key, value AS text, nan AS number "
            f"FROM params FINAL WHERE {scope} "
            "UNION ALL SELECT 'tags' AS kind, toString(project) AS project, run_id, key, value AS text, nan AS number "
            f"FROM tags FINAL WHERE {scope} "
            "UNION ALL SELECT 'metrics' AS kind, project, run_id, name AS key, '' AS text, last AS number "
            f"FROM ({metrics_sql})", params)
        per_run: dict[tuple[str, str], dict[str, Any]] = {pair: {} for pair in pairs}
        for row in rows:
            values = per_run.get((row["project"], row["run_id"]))
            if values is not None:
                values[f"{row['kind']}.{row['key']}"] = row["number"] if row["kind"] == "metrics" else row["text"]
        keys = set().union(*(v.keys() for v in per_run.values()))
        ordered = ([k for k in sorted(keys) if k.startswith("metrics.")] + [k for k in sorted(keys) if k.startswith("params.")]
                   + [k for k in sorted(keys) if k.startswith("tags.")])
        out = []
        for run in runs:
            values = per_run[(run["project"], run["run_id"])]
            row = {"run_id": run["run_id"], "project": run["project"], "name": run["name"], "status": run["status"],
                   "start_time": _utc(run["start_time"]), "end_time": _utc(run["end_time"])}
            row.update((k, values.get(k)) for k in ordered)
            out.append(row)
        return out

    # --- GPUs --------------------------------------------------------------------------------

    def _window(self, window_s: float, until) -> tuple[int, int]:
        if not isinstance(window_s, (int, float)) or isinstance(window_s, bool) or not window_s > 0:
            raise QueryError(f"window_s must be a positive number of seconds, got {window_s!r}")
        end = _epoch_ms(until) if until is not None else int(time.time() * 1000)
        return end - int(window_s * 1000), end

    def gpu_timeline(self, gpu_uuid: str, since=None, until=None, buckets: int = 500,
                     project: str | None = None) -> list[dict]:
        """One GPU over time (since/until: datetimes or epoch seconds; default its whole
        history): rows {bucket_start, max_temperature_c, max_memory_used_bytes,
        memory_total_bytes, mean_gpu_utilization_pct, max_power_w, throttle_reasons (OR of the
        bits), samples}. Buckets of a minute or more read the per-minute rollup (its mean
        weights a batch replayed in a differently composed insert twice); shorter ones read the samples."""
        buckets = _positive_int(buckets, "buckets")
        cond, params = where_clause(gpu_uuid=gpu_uuid, project=project)
        if since is not None:
            params["since_s"] = _epoch_ms(since) // 60_000 * 60
            cond += " AND minute >= toDateTime({since_s:UInt32}, 'UTC')"
        if until is not None:
            params["until_s"] = _epoch_ms(until) // 1000
            cond += " AND minute <= toDateTime({until_s:UInt32}, 'UTC')"
        located = self._query(
            "SELECT toString(project) AS project, toString(host) AS host, min(minute) AS lo, max(minute) AS hi "
            f"FROM gpu_samples_1m WHERE {cond} GROUP BY project, host", params)
        if not located:
            raise NotFound(f"no samples of GPU {gpu_uuid!r}" + (" in that time range" if since or until else ""))
        lo_ms = _epoch_ms(since) if since is not None else min(int(_utc(r["lo"]).timestamp()) for r in located) * 1000
        hi_ms = _epoch_ms(until) if until is not None else (max(int(_utc(r["hi"]).timestamp()) for r in located) + 60) * 1000
        if hi_ms <= lo_ms:
            return []
        key, scope = where_clause({"n": buckets}, projects=[r["project"] for r in located],
                           hosts=[r["host"] for r in located], gpu_uuid=gpu_uuid)
        if (hi_ms - lo_ms) / buckets >= 60_000:
            lo, hi = lo_ms // 60_000 * 60, -(-hi_ms // 1000)
            width = math.ceil(math.ceil((hi - lo) / buckets) / 60) * 60  # whole minutes
            rows = self._query(
                "SELECT {lo:UInt32} + intDiv(toUInt32(minute) - {lo:UInt32}, {w:UInt32}) * {w:UInt32} AS b, "
                "max(max_temperature_c) AS max_temperature_c, max(max_memory_used_bytes) AS max_memory_used_bytes, "
                "max(memory_total_bytes) AS memory_total_bytes, "
                "sum(sum_gpu_utilization) / sum(samples) AS mean_gpu_utilization_pct, max(max_power_w) AS max_power_w, "
                "groupBitOr(throttle_reasons_any) AS throttle_reasons, sum(samples) AS n_samples "
                f"FROM gpu_samples_1m WHERE {key} AND minute >= toDateTime({{lo:UInt32}}, 'UTC') "
                "AND minute < toDateTime({hi:UInt32}, 'UTC') GROUP BY b ORDER BY b",
                dict(scope, lo=lo, w=width, hi=hi))
            scale = 1000
        else:
            width = max(1, -(-(hi_ms - lo_ms) // buckets))
            # Replays are removed per (ts, rank) before averaging, without FINAL.
            rows = self._query(
                "SELECT {lo:Int64} + intDiv(toUnixTimestamp64Milli(ts) - {lo:Int64}, {w:Int64}) * {w:Int64} AS b, "
                "max(t) AS max_temperature_c, max(m) AS max_memory_used_bytes, max(mt) AS memory_total_bytes, "
                "avg(u) AS mean_gpu_utilization_pct, max(pw) AS max_power_w, groupBitOr(th) AS throttle_reasons, "
                "count() AS n_samples FROM ("
                " SELECT ts, rank, any(temperature_c) AS t, any(memory_used_bytes) AS m, any(memory_total_bytes) AS mt,"
                " any(gpu_utilization_pct) AS u, any(power_w) AS pw, any(throttle_reasons) AS th FROM gpu_samples "
                f" WHERE {key} AND ts >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC') "
                " AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC') GROUP BY ts, rank) GROUP BY b ORDER BY b",
                dict(scope, lo=lo_ms, w=width, hi=hi_ms))
            scale = 1
        for row in rows:
            row["bucket_start"] = _from_ms(int(row.pop("b")) * scale)
            row["samples"] = int(row.pop("n_samples"))
        return [{"bucket_start": r.pop("bucket_start"), **r} for r in rows]

    def hottest_gpus(self, window_s: float = 3600, limit: int = 10, until=None,
                     project: str | None = None) -> list[dict]:
        """The GPUs with the highest temperature in the last ``window_s`` seconds before
        ``until`` (default now), hottest first: rows {project, host, gpu_uuid, gpu_index,
        gpu_name, max_temperature_c, last_seen, last_run_id, last_rank}. Reads the per-minute
        rollup (the window starts at the minute that holds ``until - window_s``)."""
        limit = _positive_int(limit, "limit")
        lo, hi, cond, params = self._rollup_window(window_s, until, project)
        params["limit"] = limit
        hottest = self._query(
            "SELECT toString(project) AS project, toString(host) AS host, toString(gpu_uuid) AS gpu_uuid, "
            f"max(max_temperature_c) AS max_temperature_c FROM gpu_samples_1m WHERE {cond} "
            "GROUP BY project, host, gpu_uuid ORDER BY max_temperature_c DESC, host, gpu_uuid LIMIT {limit:UInt64}",
            params, _IN_ORDER)
        return self._with_last_run(hottest, lo, hi)

    def _rollup_window(self, window_s: float, until, project: str | None) -> tuple[int, int, str, dict[str, Any]]:
        """(lo_ms, hi_ms, WHERE, params) selecting the per-minute GPU rollup rows of a window
        (from the minute that holds its start)."""
        lo, hi = self._window(window_s, until)
        cond, params = where_clause({"lo": lo // 60_000 * 60, "hi": hi // 1000}, project=project)
        cond += " AND minute >= toDateTime({lo:UInt32}, 'UTC') AND minute <= toDateTime({hi:UInt32}, 'UTC')"
        return lo, hi, cond, params

    def _with_last_run(self, rows: list[dict], lo_ms: int, hi_ms: int) -> list[dict]:
        """Adds the run, rank, index and name a GPU last reported in the window. (A GPU's samples
        have distinct times: by default one rank samples it; a tie would need two samplers in
        the same microsecond, so the scalar argMax key is enough and twice as fast as a tuple.)"""
        if not rows:
            return rows
        cond, params = where_clause({"lo": lo_ms, "hi": hi_ms}, projects=[r["project"] for r in rows],
                             hosts=[r["host"] for r in rows], gpu_uuids=[r["gpu_uuid"] for r in rows])
        last = self._query(
            "SELECT toString(gpu_uuid) AS gpu_uuid, argMax(run_id, ts) AS last_run_id, "
            "argMax(rank, ts) AS last_rank, min(gpu_index) AS gpu_index, "
            f"toString(any(gpu_name)) AS gpu_name, max(ts) AS last_seen FROM gpu_samples WHERE {cond} "
            "AND ts >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') - INTERVAL 1 MINUTE "
            "AND ts <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') GROUP BY gpu_uuid", params)
        by_uuid = {r.pop("gpu_uuid"): r for r in last}
        out = []
        for row in rows:
            extra = by_uuid.get(row["gpu_uuid"], {"last_run_id": None, "last_rank": None, "gpu_index": None,
                                                   "gpu_name": None, "last_seen": None})
            merged = {**row, **extra}
            merged["last_seen"] = _utc(merged["last_seen"])
            out.append(merged)
        return out

    def memory_headroom(self, window_s: float = 3600, limit: int = 20, until=None,
                        project: str | None = None) -> list[dict]:
        """The GPUs closest to full memory in the window (max used / total), fullest first:
        rows {project, host, gpu_uuid, max_memory_used_bytes, memory_total_bytes, used_fraction,
        headroom_bytes, gpu_index, gpu_name, last_seen, last_run_id, last_rank}."""
        limit = _positive_int(limit, "limit")
        lo, hi, cond, params = self._rollup_window(window_s, until, project)
        params["limit"] = limit
        rows = self._query(
            "SELECT toString(project) AS project, toString(host) AS host, toString(gpu_uuid) AS gpu_uuid, "
            "max(max_memory_used_bytes) AS max_memory_used_bytes, max(memory_total_bytes) AS memory_total_bytes, "
            "max_memory_used_bytes / nullIf(memory_total_bytes, 0) AS used_fraction, "
            "memory_total_bytes - max_memory_used_bytes AS headroom_bytes "
            f"FROM gpu_samples_1m WHERE {cond} GROUP BY project, host, gpu_uuid "
            "ORDER BY used_fraction DESC NULLS LAST, host, gpu_uuid LIMIT {limit:UInt64}", params, _IN_ORDER)
        return self._with_last_run(rows, lo, hi)

    def gpu_series(self, run_id: str, field: str, buckets: int = 500, project: str | None = None) -> list[dict]:
        """One GPU field (a name in GPU_FLOAT_FIELDS, e.g. temperature_c, memory_used_bytes) per GPU of
        one run, in at most ``buckets`` equal time buckets over the run's samples: rows
        {host, gpu_uuid, gpu_index, bucket_start, min, max, last} ordered by host, gpu_uuid,
        bucket_start."""
        if field not in GPU_FLOAT_FIELDS:
            raise QueryError(f"unknown GPU field {field!r}: expected one of {', '.join(GPU_FLOAT_FIELDS)}")
        buckets = _positive_int(buckets, "buckets")
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause({"n": buckets}, project=project, run_id=run_id)
        # `field` is one of GPU_FLOAT_FIELDS (checked above): safe to name in the SQL.
        rows = self._query(
            f"WITH (SELECT (min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts))) FROM gpu_samples "
            f"WHERE {cond}) AS bounds, bounds.1 AS lo, greatest(1, intDiv(bounds.2 - bounds.1, {{n:UInt32}}) + 1) AS w "
            "SELECT toString(host) AS host, toString(gpu_uuid) AS gpu_uuid, min(gpu_index) AS gpu_index, "
            "lo + intDiv(toUnixTimestamp64Milli(ts) - lo, w) * w AS b, "
            f"min({field}) AS min, max({field}) AS max, argMax({field}, ts) AS last "
            f"FROM gpu_samples WHERE {cond} GROUP BY host, gpu_uuid, b ORDER BY host, gpu_uuid, b", params)
        for row in rows:
            row["bucket_start"] = _from_ms(int(row.pop("b")))
        return [{k: r[k] for k in ("host", "gpu_uuid", "gpu_index", "bucket_start", "min", "max", "last")}
                for r in rows]

    # --- stragglers --------------------------------------------------------------------------

    def stragglers(self, run_id: str, metric: str = "step_time_s", min_ratio: float = 1.5,
                   project: str | None = None) -> list[dict]:
        """Per rank, ordered by rank: {rank, host, median, run_median (over all ranks' points),
        ratio (median / run_median), straggler (ratio >= min_ratio), points}. Medians are exact
        and read FINAL, so replays do not move them; NaN and Inf points are left out."""
        project = self._resolve([run_id], project)[run_id]
        cond, params = where_clause(project=project, run_id=run_id, name=metric)
        rows = self._query(
            "SELECT rank, grouping(rank) AS total, quantileExact(0.5)(value) AS median, count() AS points "
            f"FROM metrics FINAL WHERE {cond} AND isFinite(value) GROUP BY GROUPING SETS ((rank), ())", params)
        cond, params = where_clause(project=project, run_id=run_id)
        hosts = {row["rank"]: row["host"] for row in self._query(
            f"SELECT rank, toString(host) AS host FROM run_ranks FINAL WHERE {cond}", params)}
        totals = [r for r in rows if r["total"]]
        if not totals or not totals[0]["points"]:
            return []
        run_median = totals[0]["median"]
        out = []
        for row in sorted((r for r in rows if not r["total"]), key=lambda r: r["rank"]):
            ratio = row["median"] / run_median if run_median else (math.inf if row["median"] else 1.0)
            out.append({"rank": row["rank"], "host": hosts.get(row["rank"]), "median": row["median"],
                        "run_median": run_median, "ratio": ratio, "straggler": ratio >= min_ratio,
                        "points": int(row["points"])})
        return out

    # --- alerts ------------------------------------------------------------------------------

    def fired_alerts(self, runs: Iterable[tuple[str, str]], hosts: Iterable[str] = (), since=None,
                     until=None) -> list[dict]:
        """The alerts that fired (state firing or resolved; see FIRED_STATES) of the (project,
        run_id) pairs in ``runs``, plus host-level alerts (no run id) on ``hosts`` that were
        open between ``since`` and ``until`` (datetimes; both needed for those), oldest first:
        rows {run_id, rule, severity, state, host, gpu_uuid, rank, value, message, started_at,
        resolved_at}."""
        runs = list(runs)
        if not runs:
            return []
        cond, params = where_clause({"fired": list(FIRED_STATES)}, projects=[p for p, _ in runs],
                                    run_ids=[r for _, r in runs])
        hosts = sorted(set(hosts))
        if hosts and since is not None and until is not None:
            host_cond, params = where_clause(params, projects=[p for p, _ in runs], hosts=hosts)
            cond = (f"(({cond}) OR (run_id = '' AND {host_cond} AND started_at <= {{until:DateTime64(6)}} "
                    "AND (resolved_at IS NULL OR resolved_at >= {since:DateTime64(6)})))")
            params.update(since=since, until=until)
        # The state is filtered on the outer query, after FINAL picked each alert's newest row.
        rows = self._query(
            "SELECT * FROM (SELECT toString(project) AS project, run_id, toString(rule) AS rule, "
            "toString(severity) AS severity, toString(state) AS state, toString(host) AS host, gpu_uuid, rank, "
            f"value, message, started_at, resolved_at, alert_id FROM alerts FINAL WHERE {cond}) "
            "WHERE state IN {fired:Array(String)} ORDER BY started_at, alert_id", params)
        wanted = set(runs)
        out = []
        for row in rows:
            project = row.pop("project")
            row.pop("alert_id")
            if row["run_id"] and (project, row["run_id"]) not in wanted:
                continue
            row["started_at"], row["resolved_at"] = _utc(row["started_at"]), _utc(row["resolved_at"])
            out.append(row)
        return out

    # --- SQL ---------------------------------------------------------------------------------

    def read_only_query(self, sql: str, parameters: dict | None = None, max_rows: int = 10000,
                        timeout_s: float | None = 60.0) -> dict:
        """Run one statement with ClickHouse's ``readonly=1`` (the server refuses writes, DDL
        and setting changes; nothing here parses the SQL). Returns {"columns", "types", "rows",
        "truncated"}: at most ``max_rows`` rows, truncated=True when there were more.
        Raises QueryError with the server's message when ClickHouse refuses or fails.

        On the in-process chDB engine (``chdb://``) clickhouse-connect keeps a failed query's
        settings in the client's session, so after a refused statement that client stays
        read-only: give this method a client of its own there.
        """
        max_rows = _positive_int(max_rows, "max_rows")
        settings: dict[str, Any] = {"max_result_rows": max_rows + 1, "result_overflow_mode": "break"}
        if timeout_s:
            settings["max_execution_time"] = int(math.ceil(timeout_s))
        settings["readonly"] = 1  # last: once read-only, the engine takes no other settings
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            result = self.client.query(sql, parameters=parameters, settings=settings)
        except ClickHouseError as exc:
            raise QueryError(server_message(exc)) from None
        rows = result.result_rows
        return {"columns": list(result.column_names), "types": [t.name for t in result.column_types],
                "rows": [tuple(_utc(v) for v in row) for row in rows[:max_rows]],
                "truncated": len(rows) > max_rows}

    # --- artifacts and datasets (tables of migration 0006) -------------------------------------

    _ARTIFACT_COLUMNS = "name, toString(type) AS type, digest, size_bytes, files, store, endpoint, metadata, updated_at"

    def list_artifacts(self, run_id: str, project: str | None = None) -> list[dict]:
        """The run's artifacts by name: type, digest (of the manifest), size_bytes, files, store,
        endpoint, metadata (JSON text). Only artifacts whose every byte is in the store."""
        return self.run_artifacts(self._resolve([run_id], project)[run_id], run_id)

    def run_artifacts(self, project: str, run_id: str) -> list[dict]:
        """list_artifacts of a run known to be in ``project`` (no look-up of the run: the MLflow
        API lists a run's artifacts before ingest may have stored its start). Deleted artifacts
        (a record whose newest value is not a record, so its digest is empty) are left out."""
        return self._query(
            f"SELECT {self._ARTIFACT_COLUMNS} FROM artifacts FINAL "
            "WHERE project = {p:String} AND run_id = {r:String} AND digest != '' ORDER BY name",
            {"p": project, "r": run_id})

    def get_artifact(self, run_id: str, name: str, project: str | None = None) -> dict:
        """One artifact of a run (see list_artifacts); NotFound when the run has none by that name."""
        project = self._resolve([run_id], project)[run_id]
        rows = self._query(
            f"SELECT {self._ARTIFACT_COLUMNS} FROM artifacts FINAL "
            "WHERE project = {p:String} AND run_id = {r:String} AND name = {n:String}",
            {"p": project, "r": run_id, "n": name})
        if not rows:
            raise NotFound(f"run {run_id!r} has no artifact {name!r}")
        return rows[0]

    def list_datasets(self, run_id: str, project: str | None = None) -> list[dict]:
        """The datasets a run logged: name, digest, source, source_type, context, size_bytes,
        files, schema, profile."""
        project = self._resolve([run_id], project)[run_id]
        return self._query(
            "SELECT name, digest, source, toString(source_type) AS source_type, toString(context) AS context, "
            "size_bytes, files, schema, profile FROM datasets FINAL "
            "WHERE project = {p:String} AND run_id = {r:String} ORDER BY name", {"p": project, "r": run_id})


    # --- MLflow API (runwire.ingest.mlflow; tables of migration 0005_mlflow.sql) --------------

    def mlflow_experiments(self, experiment_ids: Sequence[str] | None = None,
                           names: Sequence[str] | None = None) -> list[dict]:
        """Experiment rows {experiment_id, name, project, artifact_location, lifecycle_stage,
        tags, creation_time, last_update_time} (newest versions) with these ids or names; every
        experiment when both are None. Ordered by experiment_id."""
        where, params = _in_lists(experiment_id=experiment_ids, name=names)
        # name is not in the sorting key: filter after FINAL picked the newest versions.
        sql = ("SELECT * FROM (SELECT experiment_id, name, project, artifact_location, "
               "toString(lifecycle_stage) AS lifecycle_stage, tags, creation_time, last_update_time "
               "FROM mlflow_experiments FINAL)"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY experiment_id")
        rows = self._query(sql, params)
        for row in rows:
            row["tags"] = dict(row["tags"])
        return rows

    def mlflow_logged_models(self, model_ids: Sequence[str] | None = None,
                             experiment_ids: Sequence[str] | None = None) -> list[dict]:
        """Logged-model rows (newest versions; columns of mlflow_logged_models) with these ids or
        in these experiments, ordered by creation time then id."""
        where, params = _in_lists(model_id=model_ids, experiment_id=experiment_ids)
        rows = self._query(
            "SELECT * FROM (SELECT model_id, experiment_id, name, artifact_location, source_run_id, model_type, "
            "toString(status) AS status, status_message, tags, params, creation_time, last_update_time, "
            "toString(lifecycle_stage) AS lifecycle_stage FROM mlflow_logged_models FINAL)"
            + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY creation_time, model_id", params)
        for row in rows:
            row["tags"], row["params"] = dict(row["tags"]), dict(row["params"])
        return rows

    def mlflow_runs(self, run_ids: Sequence[str]) -> dict[str, dict]:
        """run_id -> {run_id, project, experiment_id, name, user_id, status, start_time,
        end_time, artifact_uri, lifecycle_stage, deleted_time} (times in ms) for the known ids."""
        if not run_ids:
            return {}
        rows = self._query(
            "SELECT run_id, toString(project) AS project, experiment_id, name, user_id, toString(status) AS status, "
            "start_time, end_time, artifact_uri, toString(lifecycle_stage) AS lifecycle_stage, deleted_time "
            "FROM mlflow_runs FINAL WHERE run_id IN {ids:Array(String)}", {"ids": list(run_ids)})
        return {row["run_id"]: row for row in rows}

    def mlflow_run_data(self, runs: Sequence[tuple[str, str]], deleted_tag: str) -> dict[str, dict]:
        """run_id -> {"params": {k: v}, "tags": {k: v}, "metrics": {name: {"value", "timestamp",
        "step"}}, "inputs": [input rows]} for (project, run_id) pairs. A metric's entry is
        MLflow's latest value: the highest step, then the latest timestamp, then the largest
        value. Tags whose newest value is ``deleted_tag`` are left out (deleted)."""
        runs = list(runs)
        if not runs:
            return {}
        params = {"ps": sorted({p for p, _ in runs}), "rs": sorted({r for _, r in runs}), "tomb": deleted_tag}
        scope = "project IN {ps:Array(String)} AND run_id IN {rs:Array(String)}"
        out = {r: {"params": {}, "tags": {}, "metrics": {}, "inputs": []} for _, r in runs}
        # One round trip. MLflow runs have rank 0 only: with the rank fixed, the step of the
        # latest point is in the sorting-key prefix and the point lookup reads a few granules.
        rows = self._query(
            "SELECT kind, run_id, key, value, number, timestamp, step FROM ("
            f" SELECT 'params' AS kind, run_id, key, value, nan AS number, 0 AS timestamp, 0 AS step "
            f" FROM params FINAL WHERE {scope}"
            f" UNION ALL SELECT 'tags', run_id, key, value, nan, 0, 0 FROM tags FINAL WHERE {scope}"
            # (no aliases after the first SELECT: `'' AS value` would shadow the column `value`)
            " UNION ALL SELECT 'metrics', run_id, toString(name), '', argMax(value, (ts, value)),"
            " toUnixTimestamp64Milli(max(ts)), step FROM metrics "
            f" WHERE {scope} AND rank = 0 AND (run_id, name, step) IN ("
            # last_point is (key, -rank, step, value) of the highest step (migration 0004).
            f"  SELECT run_id, name, tupleElement(max(last_point), 3) FROM metrics_summary WHERE {scope}"
            "   GROUP BY run_id, name)"
            " GROUP BY run_id, name, step"
            " UNION ALL SELECT 'inputs', run_id, name,"
            " toJSONString((digest, source_type, source, schema, profile, input_tags, context)), nan, 0, 0"
            " FROM mlflow_inputs FINAL WHERE run_id IN {rs:Array(String)}"
            # Artifact records are shown as the run's artifacts, not as MLflow tags.
            ") WHERE NOT (kind = 'tags' AND (value = {tomb:String} OR startsWith(key, 'runwire.artifact.')))"
            " ORDER BY kind, run_id, key, value", params)
        for row in rows:
            data = out.get(row["run_id"])
            if data is None:
                continue
            kind = row["kind"]
            if kind == "metrics":
                data["metrics"][row["key"]] = {"value": row["number"], "timestamp": int(row["timestamp"]),
                                               "step": int(row["step"])}
            elif kind == "inputs":
                digest, source_type, source, schema, profile, input_tags, context = json.loads(row["value"])
                data["inputs"].append({"name": row["key"], "digest": digest, "source_type": source_type,
                                       "source": source, "schema": schema, "profile": profile,
                                       "input_tags": input_tags, "context": context})
            else:
                data[kind][row["key"]] = row["value"]
        return out

    def mlflow_search_runs(self, projects: Sequence[str], filter_string: str = "",
                           order_by: Sequence[str] | None = None, lifecycle_stages: Sequence[str] = ("active",),
                           limit: int = 1000, offset: int = 0, deleted_tag: str = "") -> list[dict]:
        """One page of MLflow runs in these projects, rows as mlflow_runs() gives them, in MLflow's order
        (order_by, then start time newest first, then run id). Filter grammar:
        runwire.storage.filters, with MLflow's attributes (user_id, artifact_uri) and datasets.
        Raises FilterError."""
        limit = _positive_int(limit, "limit")
        node = _filters.parse_filter(filter_string)
        order = _filters.parse_order_by(order_by)
        used = _filters.referenced_keys(node, order)
        columns = _filters.Columns(
            attributes={"run_id": "run_id", "name": "name", "status": "status", "project": "project",
                        "user_id": "user_id", "artifact_uri": "artifact_uri", "start_time": "start_time",
                        "end_time": "end_time"},
            datasets={"name": "ds_name", "digest": "ds_digest", "context": "ds_context"})
        params: dict[str, Any] = {"ps": list(projects), "stages": list(lifecycle_stages), "limit": limit,
                                  "offset": max(0, int(offset)), "tomb": deleted_tag}
        where, params = _filters.compile_filter(filter_string or None, columns, params)  # errors quote the text
        order_terms, params = _filters.compile_order_by(order, columns, params)
        scope = "project IN {ps:Array(String)}"
        joins, maps = [], {"params": "CAST(map(), 'Map(String, String)')", "tags": "CAST(map(), 'Map(String, String)')",
                           "metrics": "CAST(map(), 'Map(String, Float64)')"}
        for table in ("params", "tags"):
            if used[table]:
                params[f"{table}_keys"] = sorted(used[table])
                joins.append(
                    f"LEFT JOIN (SELECT run_id, mapFromArrays(groupArray(key), groupArray(value)) AS kv FROM ("
                    f" SELECT run_id, key, value FROM {table} FINAL WHERE {scope} AND key IN {{{table}_keys:Array(String)}})"
                    f" WHERE value != {{tomb:String}} GROUP BY run_id) AS {table}_ ON {table}_.run_id = r.run_id")
                maps[table] = f"{table}_.kv"
        if used["metrics"]:
            params["metric_names"] = sorted(used["metrics"])
            inner = self._summary_sql(f"{scope} AND name IN {{metric_names:Array(String)}}", last_only=True)
            joins.append("LEFT JOIN (SELECT run_id, mapFromArrays(groupArray(name), groupArray(last)) AS kv "
                         f"FROM ({inner}) GROUP BY run_id) AS metrics_ ON metrics_.run_id = r.run_id")
            maps["metrics"] = "metrics_.kv"
        datasets = "CAST([], 'Array(String)') AS ds_name, CAST([], 'Array(String)') AS ds_digest, " \
                   "CAST([], 'Array(String)') AS ds_context"
        if used["datasets"]:
            joins.append("LEFT JOIN (SELECT run_id, groupArray(name) AS n, groupArray(digest) AS d, "
                         "groupArray(context) AS c FROM mlflow_inputs FINAL GROUP BY run_id) AS ds_ ON ds_.run_id = r.run_id")
            datasets = "ds_.n AS ds_name, ds_.d AS ds_digest, ds_.c AS ds_context"
        sql = (
            "SELECT run_id, project, experiment_id, name, user_id, status, start_ms, end_ms, artifact_uri, "
            "lifecycle_stage, deleted_time FROM ("
            " SELECT r.run_id AS run_id, toString(r.project) AS project, r.name AS name, toString(r.status) AS status,"
            " r.experiment_id AS experiment_id, r.start_time AS start_ms, r.end_time AS end_ms,"
            " r.deleted_time AS deleted_time,"
            " r.user_id AS user_id, r.artifact_uri AS artifact_uri, toString(r.lifecycle_stage) AS lifecycle_stage,"
            " fromUnixTimestamp64Milli(r.start_time, 'UTC') AS start_time,"
            " if(isNull(r.end_time), NULL, fromUnixTimestamp64Milli(assumeNotNull(r.end_time), 'UTC')) AS end_time,"
            f" {maps['params']} AS params, {maps['tags']} AS tags, {maps['metrics']} AS metrics, {datasets}"
            f" FROM (SELECT * FROM mlflow_runs FINAL WHERE {scope}) AS r " + " ".join(joins) +
            f") WHERE lifecycle_stage IN {{stages:Array(String)}} AND {where} "
            f"ORDER BY {', '.join(order_terms + ['start_time DESC', 'run_id ASC'])} "
            "LIMIT {limit:UInt64} OFFSET {offset:UInt64}")
        rows = self._query(sql, params)
        for row in rows:  # the same fields as mlflow_runs()
            row["start_time"], row["end_time"] = row.pop("start_ms"), row.pop("end_ms")
        return rows

    def mlflow_metric_history(self, project: str, run_id: str, key: str) -> list[dict]:
        """Every point of one metric of one MLflow run, replays removed: [{step, timestamp (ms),
        value}] in MLflow's order (timestamp, step, value)."""
        result = self.client.query(
            "SELECT step, toUnixTimestamp64Milli(ts) AS t, value FROM metrics "
            "WHERE project = {p:String} AND run_id = {r:String} AND name = {m:String} "
            "ORDER BY t, step, value LIMIT 1 BY rank, step, t", parameters={"p": project, "r": run_id, "m": key})
        return [{"step": s, "timestamp": t, "value": v} for s, t, v in result.result_rows]

    # --- web UI (runwire.storage.ui) ---------------------------------------------------------

    def projects(self, only: Sequence[str] | None = None) -> list[dict]:
        """Projects with runs: rows {project, runs, running}, by name. only: restrict to these."""
        where, params = "", {}
        if only is not None:
            where, params = " WHERE project IN {ps:Array(String)}", {"ps": sorted(only)}
        return self._query(
            "SELECT toString(project) AS project, count() AS runs, countIf(status = 'RUNNING') AS running "
            f"FROM runs FINAL{where} GROUP BY project ORDER BY project", params)

    # Sortable attribute columns of the runs table -> their SQL (the only names formatted in).
    _PAGE_SORT = {"run_id": "run_id", "name": "name", "status": "status", "start_time": "start_time",
                  "end_time": "end_time", "duration": "duration_s", "ranks": "ranks", "hosts": "n_hosts",
                  "user": "user", "project": "project"}

    def runs_page(self, project: str | Sequence[str] | None = None, filter_string: str = "",
                  sort: str = "start_time", descending: bool = True, offset: int = 0, limit: int = 50,
                  metric_columns: Sequence[str] = (), param_columns: Sequence[str] = ()) -> dict:
        """One page of the runs table, filtered (runwire.storage.filters grammar) and sorted on
        the server: {"total": runs matching, "runs": [{run_id, project, name, status, user
        (tag "user"), start_time, end_time, duration_s, ranks, hosts, metrics {name: {last,
        min, max}} for metric_columns, params {key: value} for param_columns}]}.

        sort: an attribute (run_id, name, status, start_time, end_time, duration, ranks, hosts,
        user, project), ``metrics.NAME`` (its last value), ``metrics.NAME.min`` / ``.max`` /
        ``.last``, or ``params.KEY``; runs without that value sort last. project: one project,
        several (a token's), or None for all. Raises FilterError, QueryError."""
        limit = _positive_int(limit, "limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise QueryError(f"offset must be a non-negative integer, got {offset!r}")
        metric_columns, param_columns = list(dict.fromkeys(metric_columns)), list(dict.fromkeys(param_columns))
        node = _filters.parse_filter(filter_string)
        used = _filters.referenced_keys(node)
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        where, params = _filters.compile_filter(node, params=params)
        # The sort key -> SQL over the joined maps.
        sort_metric = sort_param = None
        if sort in self._PAGE_SORT:
            order = f"{self._PAGE_SORT[sort]} {'DESC' if descending else 'ASC'} NULLS LAST"
        elif sort.startswith("metrics.") and len(sort) > 8:
            name, stat = sort[8:], "last"
            for suffix in ("last", "min", "max"):
                if name.endswith("." + suffix) and name[:-len(suffix) - 1]:
                    name, stat = name[:-len(suffix) - 1], suffix
                    break
            sort_metric = name
            params["sort_key"] = name
            column = {"last": "metrics", "min": "metrics_min", "max": "metrics_max"}[stat]
            order = (f"if(mapContains({column}, {{sort_key:String}}) AND NOT isNaN({column}[{{sort_key:String}}]), "
                     f"{column}[{{sort_key:String}}], NULL) {'DESC' if descending else 'ASC'} NULLS LAST")
        elif sort.startswith("params.") and len(sort) > 7:
            sort_param = sort[7:]
            params["sort_key"] = sort_param
            order = (f"if(mapContains(params, {{sort_key:String}}), params[{{sort_key:String}}], NULL) "
                     f"{'DESC' if descending else 'ASC'} NULLS LAST")
        else:
            raise QueryError(f"cannot sort by {sort!r}: expected one of {', '.join(self._PAGE_SORT)}, "
                             "metrics.NAME[.last|.min|.max] or params.KEY")
        scope = ""
        if isinstance(project, str):
            scope, params["scope"] = " WHERE project = {scope:String}", project
        elif project is not None:
            scope, params["scope"] = " WHERE project IN {scope:Array(String)}", sorted(project)
        also = scope.replace(" WHERE", " AND")
        # Phase one: which runs, in which order. It joins only what the filter and the sort read.
        metric_names = sorted(set(used["metrics"]) | ({sort_metric} - {None}))
        param_keys = sorted(set(used["params"]) | ({sort_param} - {None}))
        tag_keys = sorted(set(used["tags"]) | ({"user"} if sort == "user" else set()))
        params.update(metric_names=metric_names, param_keys=param_keys, tag_keys=tag_keys)
        empty_s, empty_f = "CAST(map(), 'Map(String, String)')", "CAST(map(), 'Map(String, Float64)')"
        joins, maps = [], {"params": empty_s, "tags": empty_s, "metrics": empty_f, "metrics_min": empty_f,
                           "metrics_max": empty_f, "ranks": "toUInt64(0)", "n_hosts": "toUInt64(0)"}
        if sort in ("ranks", "hosts"):
            joins.append("LEFT JOIN (SELECT project, run_id, count() AS ranks, uniqExact(host) AS n_hosts "
                         f"FROM run_ranks FINAL{scope} GROUP BY project, run_id) AS k "
                         "ON k.project = r.project AND k.run_id = r.run_id")
            maps.update(ranks="k.ranks", n_hosts="k.n_hosts")
        for table, keys, alias in (("params", param_keys, "pk"), ("tags", tag_keys, "tk")):
            if keys:
                joins.append(
                    "LEFT JOIN (SELECT project, run_id, mapFromArrays(groupArray(key), groupArray(value)) AS kv "
                    f"FROM {table} FINAL WHERE key IN {{{table[:-1]}_keys:Array(String)}}{also} "
                    f"GROUP BY project, run_id) AS {alias} ON {alias}.project = r.project AND {alias}.run_id = r.run_id")
                maps[table] = f"{alias}.kv"
        params["param_keys"], params["tag_keys"] = param_keys, tag_keys
        if metric_names:
            inner = self._summary_sql("name IN {metric_names:Array(String)}" + also)
            joins.append(
                "LEFT JOIN (SELECT project, run_id, mapFromArrays(groupArray(name), groupArray(last)) AS kv, "
                "mapFromArrays(groupArray(name), groupArray(min)) AS kv_min, "
                "mapFromArrays(groupArray(name), groupArray(max)) AS kv_max "
                f"FROM ({inner}) GROUP BY project, run_id) AS m ON m.project = r.project AND m.run_id = r.run_id")
            maps.update(metrics="m.kv", metrics_min="m.kv_min", metrics_max="m.kv_max")
        sql = (
            "SELECT project, run_id, name, status, start_time, end_time, duration_s, count() OVER () AS total FROM ("
            " SELECT toString(r.project) AS project, r.run_id AS run_id, r.name AS name, toString(r.status) AS status,"
            " r.start_time AS start_time, r.end_time AS end_time,"
            " dateDiff('millisecond', r.start_time, if(r.end_time IS NULL, now64(6), assumeNotNull(r.end_time)))"
            f" / 1000 AS duration_s, {maps['tags']}['user'] AS user, {maps['ranks']} AS ranks,"
            f" {maps['n_hosts']} AS n_hosts, {maps['params']} AS params, {maps['tags']} AS tags,"
            f" {maps['metrics']} AS metrics, {maps['metrics_min']} AS metrics_min, {maps['metrics_max']} AS metrics_max"
            f" FROM (SELECT project, run_id, name, status, start_time, end_time FROM runs FINAL{scope}) AS r "
            + " ".join(joins) +
            f") WHERE {where} ORDER BY {order}, start_time DESC, run_id "
            "LIMIT {limit:UInt64} OFFSET {offset:UInt64}")
        rows = self._query(sql, params)
        total = int(rows[0]["total"]) if rows else (
            0 if offset == 0 else self._count_matching(sql, params))
        return {"total": total, "runs": self._page_details(rows, metric_columns, param_columns)}

    def _page_details(self, rows: list[dict], metric_columns: list[str], param_columns: list[str]) -> list[dict]:
        """Phase two of runs_page: ranks, hosts, user and the chosen columns of the page's runs
        (read by their sorting-key prefix)."""
        if not rows:
            return []
        pairs = [(r["project"], r["run_id"]) for r in rows]
        params = {"ps": sorted({p for p, _ in pairs}), "rs": sorted({r for _, r in pairs}),
                  "keys": sorted(set(param_columns)), "user": ["user"]}
        scope = "project IN {ps:Array(String)} AND run_id IN {rs:Array(String)}"
        extra = self._query(
            "SELECT 'ranks' AS kind, toString(project) AS project, run_id, toString(host) AS key, '' AS value "
            f"FROM run_ranks FINAL WHERE {scope} "
            "UNION ALL SELECT 'params' AS kind, toString(project) AS project, run_id, key, value FROM params FINAL "
            f"WHERE {scope} AND key IN {{keys:Array(String)}} "
            "UNION ALL SELECT 'tags' AS kind, toString(project) AS project, run_id, key, value FROM tags FINAL "
            f"WHERE {scope} AND key IN {{user:Array(String)}}", params)
        hosts: dict[tuple, list[str]] = {}
        kv: dict[tuple, dict[str, str]] = {}
        users: dict[tuple, str] = {}
        for row in extra:
            key = (row["project"], row["run_id"])
            if row["kind"] == "ranks":
                hosts.setdefault(key, []).append(row["key"])
            elif row["kind"] == "params":
                kv.setdefault(key, {})[row["key"]] = row["value"]
            else:
                users[key] = row["value"]
        summaries = self._metric_summaries(pairs, names=metric_columns) if metric_columns else {}
        out = []
        for row in rows:
            key = (row["project"], row["run_id"])
            metrics = summaries.get(key, {})
            out.append({
                "run_id": row["run_id"], "project": row["project"], "name": row["name"], "status": row["status"],
                "user": users.get(key, ""), "start_time": _utc(row["start_time"]), "end_time": _utc(row["end_time"]),
                "duration_s": row["duration_s"], "ranks": len(hosts.get(key, [])), "hosts": sorted(set(hosts.get(key, []))),
                "metrics": {n: {s: metrics[n][s] for s in ("last", "min", "max")} for n in metric_columns if n in metrics},
                "params": {k: kv[key][k] for k in param_columns if k in kv.get(key, {})},
            })
        return out

    def _count_matching(self, page_sql: str, params: dict) -> int:
        """How many runs a runs_page query matches (when its page came back empty)."""
        inner = page_sql[:page_sql.rindex(" ORDER BY ")]
        return int(self._query(f"SELECT count() AS n FROM ({inner})", params)[0]["n"])

    def metric_columns(self, project: str | Sequence[str] | None = None) -> dict:
        """The metric names and param keys a project's runs have (for the column chooser):
        {"metrics": [...], "params": [...]}."""
        where, params = "", {}
        if isinstance(project, str):
            where, params = " WHERE project = {p:String}", {"p": project}
        elif project is not None:
            where, params = " WHERE project IN {p:Array(String)}", {"p": sorted(project)}
        rows = self._query(
            f"SELECT 'metrics' AS kind, toString(name) AS key FROM metrics_summary{where} GROUP BY name "
            f"UNION ALL SELECT 'params' AS kind, key FROM params{where} GROUP BY key", params)
        return {kind: sorted(r["key"] for r in rows if r["kind"] == kind) for kind in ("metrics", "params")}

    def curves(self, run_ids: str | Sequence[str], metrics: Sequence[str] | None = None, x: str = "step",
               buckets: int = 1000, lo: float | None = None, hi: float | None = None, per_rank: bool = False,
               project: str | None = None, where_extremes: bool = True) -> dict:
        """Chart data for every metric (or ``metrics``) of one run or several (compare): each
        series cut into at most ``buckets`` equal buckets of x (step, or time in epoch ms),
        keeping per bucket the min and max over all ranks with the rank and step where they
        occurred, the mean over the ranks' points and the x of its last point, so that a spike
        is never averaged away. lo/hi: the x range (a zoom). Compared runs line up; a bucket that
        holds one step carries the stored points themselves (full resolution). per_rank: also
        each rank's line (its last value per bucket). where_extremes=False leaves out the rank
        and step of each min and max (about half the work; compare charts do not show them).

        Returns {metric: {"lo", "hi", "width" (x units per bucket), "runs": {run_id: {"x",
        "min", "max", "mean", "min_rank", "min_step", "max_rank", "max_step", "count",
        "ranks" (per_rank: {rank: {"x", "min", "max", "last"}})}}}}: numpy arrays (NaN where a
        bucket's values were all NaN).
        One round trip for the range, one per level (band, per rank), read as Arrow columns."""
        if x not in ("step", "time"):
            raise QueryError(f"x must be 'step' or 'time', got {x!r}")
        buckets = _positive_int(buckets, "buckets")
        single = isinstance(run_ids, str)
        projects = self._resolve([run_ids] if single else list(run_ids), project)
        params: dict[str, Any] = {"ps": sorted(set(projects.values())), "rs": list(projects), "n": buckets}
        where = "project IN {ps:Array(String)} AND run_id IN {rs:Array(String)}"
        if metrics is not None:
            params["ns"] = list(metrics)
            where += " AND name IN {ns:Array(String)}"
        key = "step" if x == "step" else "toUnixTimestamp64Milli(ts)"
        if lo is not None:
            params["lo"] = int(math.floor(lo))
            where += f" AND {key} >= {{lo:Int64}}"
        if hi is not None:
            params["hi"] = int(math.ceil(hi))
            where += f" AND {key} <= {{hi:Int64}}"
        # One bucketing for all metrics and runs: their charts share the x axis, and no per-point
        # lookup of a metric's own origin is needed (that doubled the query's time).
        found = self._query(f"SELECT count() AS n, min({key}) AS lo, max({key}) AS hi FROM metrics WHERE {where}",
                            params)[0]
        if not found["n"]:
            return {}
        lo_, hi_ = int(params.get("lo", found["lo"])), int(params.get("hi", found["hi"]))
        params.update(b_lo=lo_, b_w=max(1, (hi_ - lo_) // buckets + 1))
        bucket = f"{{b_lo:Int64}} + intDiv({key} - {{b_lo:Int64}}, {{b_w:Int64}}) * {{b_w:Int64}} AS b"
        out: dict[str, dict] = {}
        extremes = ("argMin((rank, step), value) AS at_min, argMax((rank, step), value) AS at_max, "
                    "at_min.1 AS min_rank, at_min.2 AS min_step, at_max.1 AS max_rank, at_max.2 AS max_step, "
                    if where_extremes else "")
        band = self._columns(
            f"SELECT run_id, toString(name) AS metric, {bucket}, max({key}) AS x, min(value) AS min, "
            f"max(value) AS max, {extremes}avg(value) AS mean, count() AS count FROM metrics WHERE {where} "
            "GROUP BY run_id, name, b ORDER BY run_id, metric, b", params)
        columns = ("x", "min", "max", "mean", "count") + (
            ("min_rank", "min_step", "max_rank", "max_step") if where_extremes else ())
        for (run_id, metric), rows in _runs_of(band):
            chart = out.setdefault(metric, {"lo": lo_, "hi": hi_, "width": params["b_w"], "runs": {}})
            chart["runs"][run_id] = {c: band[c][rows] for c in columns}
        if per_rank:
            lines = self._columns(
                f"SELECT run_id, toString(name) AS metric, rank, {bucket}, max({key}) AS x, min(value) AS min, "
                f"max(value) AS max, argMax(value, {key}) AS last FROM metrics WHERE {where} "
                "GROUP BY run_id, name, rank, b ORDER BY run_id, metric, rank, b", params)
            for (run_id, metric, rank), rows in _runs_of(lines, ("run_id", "metric", "rank")):
                series = out.get(metric, {"runs": {}})["runs"].get(run_id)
                if series is not None:
                    series.setdefault("ranks", {})[int(rank)] = {c: lines[c][rows] for c in ("x", "min", "max", "last")}
        return out

    def _columns(self, sql: str, params: dict) -> dict:
        """A query's result as numpy columns (Arrow transfer: no per-row Python objects)."""
        table = self.client.query_arrow(sql, parameters=params)
        return {name: table.column(name).to_numpy() for name in table.column_names if not name.startswith("at_")}

    def gpu_panel(self, run_id: str, buckets: int = 300, project: str | None = None) -> list[dict]:
        """Every GPU of a run over time, for its GPU panel: [{host, gpu_uuid, gpu_index,
        gpu_name, "series": {"t" (bucket start, epoch ms), temperature_c (max),
        memory_used_bytes (max), memory_total_bytes, power_w (max), power_limit_w,
        gpu_utilization_pct (mean), sm_clock_mhz (min), memory_clock_mhz (min),
        throttle_reasons (OR of the bits)}}], by host and index."""
        buckets = _positive_int(buckets, "buckets")
        project = self._resolve([run_id], project)[run_id]
        where = "project = {p:String} AND run_id = {r:String}"
        rows = self._query(
            f"WITH (SELECT (min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts))) FROM gpu_samples "
            f"WHERE {where}) AS bounds, bounds.1 AS lo, greatest(1, intDiv(bounds.2 - bounds.1, {{n:UInt32}}) + 1) AS w "
            "SELECT toString(host) AS host, toString(gpu_uuid) AS gpu_uuid, min(gpu_index) AS gpu_index, "
            "toString(any(gpu_name)) AS gpu_name, lo + intDiv(toUnixTimestamp64Milli(ts) - lo, w) * w AS t, "
            "max(temperature_c) AS temperature_c, max(memory_used_bytes) AS memory_used_bytes, "
            "max(memory_total_bytes) AS memory_total_bytes, max(power_w) AS power_w, "
            "max(power_limit_w) AS power_limit_w, avg(gpu_utilization_pct) AS gpu_utilization_pct, "
            "min(sm_clock_mhz) AS sm_clock_mhz, min(memory_clock_mhz) AS memory_clock_mhz, "
            "groupBitOr(throttle_reasons) AS throttle_reasons "
            f"FROM gpu_samples WHERE {where} GROUP BY host, gpu_uuid, t ORDER BY host, gpu_index, gpu_uuid, t",
            {"p": project, "r": run_id, "n": buckets})
        fields = ("t", "temperature_c", "memory_used_bytes", "memory_total_bytes", "power_w", "power_limit_w",
                  "gpu_utilization_pct", "sm_clock_mhz", "memory_clock_mhz", "throttle_reasons")
        gpus: dict[tuple[str, str], dict] = {}
        for row in rows:
            gpu = gpus.setdefault((row["host"], row["gpu_uuid"]), {
                "host": row["host"], "gpu_uuid": row["gpu_uuid"], "gpu_index": row["gpu_index"],
                "gpu_name": row["gpu_name"], "series": {f: [] for f in fields}})
            for f in fields:
                gpu["series"][f].append(row[f])
        return sorted(gpus.values(), key=lambda g: (g["host"], g["gpu_index"], g["gpu_uuid"]))

    def fleet(self, project: str | Sequence[str] | None = None, window_s: float = 600, until=None) -> list[dict]:
        """Every GPU that reported in the last ``window_s`` seconds (the running jobs' GPUs),
        hottest first: [{project, host, gpu_uuid, gpu_index, gpu_name, run_id, rank, last_seen,
        temperature_c, memory_used_bytes, gpu_utilization_pct (mean), power_w: the maxima of
        its latest minute; max_temperature_c over the window, memory_total_bytes,
        headroom_bytes, throttle_reasons (OR over the window)}]. Reads the per-minute rollup;
        the run, rank, index and name from the samples of the newest three minutes (None for a GPU
        that had stopped by then)."""
        lo, hi = self._window(window_s, until)
        params: dict[str, Any] = {"lo": lo // 60_000 * 60, "hi": hi // 1000}
        where = "minute >= toDateTime({lo:UInt32}, 'UTC') AND minute <= toDateTime({hi:UInt32}, 'UTC')"
        if isinstance(project, str):
            where, params["p"] = "project = {p:String} AND " + where, project
        elif project is not None:
            where, params["p"] = "project IN {p:Array(String)} AND " + where, sorted(project)
        rows = self._query(
            "SELECT toString(project) AS project, toString(host) AS host, toString(gpu_uuid) AS gpu_uuid, "
            "max(m_temp) AS max_temperature_c, argMax(m_temp, minute) AS temperature_c, "
            "argMax(m_mem, minute) AS memory_used_bytes, max(m_total) AS memory_total_bytes, "
            "argMax(m_util, minute) AS gpu_utilization_pct, argMax(m_power, minute) AS power_w, "
            "groupBitOr(m_throttle) AS throttle_reasons, toUnixTimestamp(max(minute)) AS last_minute FROM ("
            " SELECT project, host, gpu_uuid, minute, max(max_temperature_c) AS m_temp,"
            " max(max_memory_used_bytes) AS m_mem, max(memory_total_bytes) AS m_total,"
            " sum(sum_gpu_utilization) / sum(samples) AS m_util, max(max_power_w) AS m_power,"
            f" groupBitOr(throttle_reasons_any) AS m_throttle FROM gpu_samples_1m WHERE {where}"
            " GROUP BY project, host, gpu_uuid, minute) "
            "GROUP BY project, host, gpu_uuid ORDER BY max_temperature_c DESC, host, gpu_uuid", params, _IN_ORDER)
        if not rows:
            return []
        newest_ms = (max(r.pop("last_minute") for r in rows) + 60) * 1000
        out = []
        for row in self._with_last_run(rows, max(lo, newest_ms - 180_000), min(hi, newest_ms)):
            row["run_id"], row["rank"] = row.pop("last_run_id"), row.pop("last_rank")
            row["run_id"] = None if row["run_id"] is None else str(row["run_id"])
            row["headroom_bytes"] = row["memory_total_bytes"] - row["memory_used_bytes"]
            out.append(row)
        return out

    def alerts_list(self, project: str | Sequence[str] | None = None, run_id: str | None = None,
                    state: str | None = None, limit: int = 200) -> list[dict]:
        """Alerts, open ones (pending, firing) first, then newest: [{project, alert_id, rule,
        severity, state, run_id, host, gpu_uuid, rank, value, message, started_at,
        resolved_at}]. state: "open" (pending or firing), "resolved", or None for all."""
        limit = _positive_int(limit, "limit")
        params: dict[str, Any] = {"limit": limit}
        conditions = []
        if isinstance(project, str):
            conditions.append("project = {p:String}")
            params["p"] = project
        elif project is not None:
            conditions.append("project IN {p:Array(String)}")
            params["p"] = sorted(project)
        inner_where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        outer = []
        if run_id is not None:
            outer.append("run_id = {r:String}")
            params["r"] = run_id
        if state == "open":
            outer.append("state IN ('pending', 'firing')")
        elif state == "resolved":
            outer.append("state = 'resolved'")
        elif state is not None:
            raise QueryError(f"state must be 'open' or 'resolved', got {state!r}")
        outer_where = f" WHERE {' AND '.join(outer)}" if outer else ""
        rows = self._query(
            "SELECT project, alert_id, rule, severity, state, run_id, host, gpu_uuid, rank, value, message, "
            "started_at, resolved_at FROM (SELECT toString(project) AS project, alert_id, toString(rule) AS rule, "
            "toString(severity) AS severity, toString(state) AS state, run_id, toString(host) AS host, gpu_uuid, "
            f"rank, value, message, started_at, resolved_at FROM alerts FINAL{inner_where}){outer_where} "
            "ORDER BY state = 'resolved', started_at DESC LIMIT {limit:UInt64}", params)
        for row in rows:
            row["started_at"], row["resolved_at"] = _utc(row["started_at"]), _utc(row["resolved_at"])
        return rows

    def run_project(self, run_id: str, project: str | None = None) -> str:
        """The project of a run (RunNotFound when there is none)."""
        return self._resolve([run_id], project)[run_id]


def _runs_of(columns: dict, keys: tuple[str, ...] = ("run_id", "metric")):
    """((key values), slice) for each run of equal keys in columns sorted by them."""
    import numpy as np

    n = len(columns[keys[0]]) if columns else 0
    if not n:
        return
    changed = np.zeros(n - 1, dtype=bool)
    for k in keys:
        changed |= columns[k][1:] != columns[k][:-1]
    bounds = [0, *(np.flatnonzero(changed) + 1).tolist(), n]
    for start, end in zip(bounds, bounds[1:]):
        yield tuple(columns[k][start].item() if hasattr(columns[k][start], "item") else columns[k][start]
                    for k in keys), slice(start, end)


def _combine_ranks(per_rank: str, across_ranks: bool) -> str:
    """The outer query over per-(rank, bucket) rows r_min, r_max, r_point (the rank's last point
    in the bucket: (step, ts, value) from the raw points, (key, 0, value) from the rollup) and
    r_count. Across ranks the last point is the highest (step, ts, -rank) or (key, -rank)
    (module docstring: "last")."""
    if across_ranks:
        return ("SELECT bucket_start, min(r_min) AS min, max(r_max) AS max, avg(r_point.3) AS mean, "
                "max((r_point.1, r_point.2, -toInt64(rank), r_point.3)).4 AS last, sum(r_count) AS count, "
                f"count() AS ranks FROM ({per_rank}) GROUP BY bucket_start ORDER BY bucket_start")
    return (f"SELECT bucket_start, rank, r_min AS min, r_max AS max, r_point.3 AS last, r_count AS count "
            f"FROM ({per_rank}) ORDER BY rank, bucket_start")


def _in_lists(**columns: Sequence[str] | None) -> tuple[list[str], dict]:
    """``column IN {column:Array(String)}`` conditions (and their parameters) for the columns
    given a list; None: no condition on that column."""
    where, params = [], {}
    for column, values in columns.items():
        if values is not None:
            where.append(f"{column} IN {{{column}:Array(String)}}")
            params[column] = list(values)
    return where, params
