"""The web UI's ASGI application: a versioned read-only JSON API under /api/v1 and the page
that uses it. Every read goes through runwire.storage.query.RunQueries.

API (GET only; JSON; times ISO 8601 UTC; NaN and infinities as the strings "NaN", "Infinity",
"-Infinity", except in chart columns (curves, gpus) where they are null):

    /api/v1/projects                       projects with run counts
    /api/v1/columns?project=P              metric names and param keys (column chooser)
    /api/v1/runs?project=&filter=&sort=&desc=&offset=&limit=&metric=NAME&param=KEY
                                           one page of the runs table: {total, offset, limit, runs}
    /api/v1/filter?filter=F                checks a runs filter without running it: {"valid": true}
                                           or {"valid": false, "error", "reason", "position"}
    /api/v1/runs/{run}                     a run: params, tags, ranks, hosts, metrics, stragglers
    /api/v1/runs/{run}/curves?x=step|time&buckets=&lo=&hi=&metric=&per_rank=1
                                           chart data, bucketed to the chart's pixel width
    /api/v1/runs/{run}/gpus?buckets=       every GPU of the run over time
    /api/v1/runs/{run}/alerts              the run's alerts
    /api/v1/compare?run=A&run=B...&x=&buckets=&metric=
                                           up to 20 runs: runs, params (those that differ),
                                           all_params, summary (last/min/max per metric), curves
                                           (x, min, max, mean, count per run)
    /api/v1/fleet?project=&window_s=       every GPU seen in the window, hottest first
    /api/v1/alerts?project=&state=open|resolved&limit=

Errors: {"error": message} with 400 (bad argument; a bad filter also carries "reason" and
"position", and the message has the caret line), 401 (tokens are configured and the request
has no valid "Authorization: Bearer TOKEN"), 404 (unknown run, or a run of a project the token
does not cover: indistinguishable on purpose).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading

import orjson
from pathlib import Path
from typing import Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from runwire.proto.auth import bearer_token, projects_for
from runwire.storage.commands import _jsonable
from runwire.storage.filters import FilterError, parse_filter
from runwire.storage.query import NotFound, QueryError, RunQueries

# In the development install (setuptools' strict editable mode) these files are symbolic links,
# so StaticFiles follows them; a request still cannot leave the folder (the normalized path is
# checked against it).
STATIC = Path(__file__).parent / "static"
MAX_BUCKETS = 5000
MAX_COMPARE = 20


class _ApiError(Exception):
    def __init__(self, status: int, message: str, **extra) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


def _plain_default(value):
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError


def _json(value, status: int = 200) -> Response:
    if isinstance(value, _Charts):
        return Response(_charts_json(value), status_code=status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})
    try:  # fast path: plain values
        body = json.dumps(value, allow_nan=False, separators=(",", ":"), default=_plain_default)
    except (ValueError, TypeError):  # NaN, Infinity, numpy scalars, ...: the careful conversion
        body = json.dumps(_jsonable(value), allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


class _Charts(dict):
    """A response holding chart columns (numpy arrays): serialized by orjson, whose NaN and
    infinities become null (a gap in the chart); everything else in it is plain already."""


def _charts_json(value: "_Charts") -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _int_arg(request: Request, name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise _ApiError(400, f"{name} must be between {lo} and {hi}, got {value}" if hi is not None
                        else f"{name} must be >= {lo}, got {value}")
    return value


def _float_arg(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _ApiError(400, f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise _ApiError(400, f"{name} must be finite")
    return value


def _bool_arg(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes", "on")


def create_app(connect: Callable[[], object], tokens: Mapping[str, str] | None = None) -> Starlette:
    """The application. connect: makes a clickhouse-connect client on the runwire database (one
    per worker thread: a client runs one query at a time). tokens: project -> bearer token
    (RUNWIRE_TOKENS); empty or None: no authentication."""
    tokens = dict(tokens or {})
    local = threading.local()

    def queries() -> RunQueries:
        q = getattr(local, "queries", None)
        if q is None:
            q = local.queries = RunQueries(connect())
        return q

    def allowed(request: Request) -> set[str] | None:
        """The projects this request may read; None: all (authentication off)."""
        if not tokens:
            return None
        projects = projects_for(tokens, bearer_token(request.headers.get("authorization")))
        if not projects:
            raise _ApiError(401, "missing or invalid token: send 'Authorization: Bearer TOKEN'")
        return projects

    def scope(request: Request) -> str | set[str] | None:
        """The ?project= argument checked against the token, or the token's projects."""
        projects = allowed(request)
        project = request.query_params.get("project") or None
        if project is not None:
            if projects is not None and project not in projects:
                raise _ApiError(404, f"no project {project!r}")
            return project
        return projects

    def run_project(request: Request, run_id: str) -> str:
        projects = allowed(request)
        try:
            project = queries().run_project(run_id, request.query_params.get("project") or None)
        except NotFound:
            project = None
        if project is None or (projects is not None and project not in projects):
            raise _ApiError(404, f"no run {run_id!r}")
        return project

    def endpoint(handler):
        def run(request: Request) -> Response:
            try:
                return _json(handler(request))
            except _ApiError as exc:
                return _json({"error": str(exc), **exc.extra}, exc.status)
            except FilterError as exc:
                return _json({"error": str(exc), "reason": exc.reason, "position": exc.position,
                              "filter": exc.text}, 400)
            except NotFound as exc:
                return _json({"error": str(exc)}, 404)
            except QueryError as exc:
                return _json({"error": str(exc)}, 400)

        return run

    # --- handlers (run in Starlette's thread pool: they block on ClickHouse) -----------------

    def projects(request):
        return {"projects": queries().projects(only=allowed(request))}

    def columns(request):
        return queries().metric_columns(scope(request))

    def check_filter(request):
        allowed(request)
        try:
            parse_filter(request.query_params.get("filter", ""))
        except FilterError as exc:
            return {"valid": False, "error": str(exc), "reason": exc.reason, "position": exc.position}
        return {"valid": True}

    def runs(request):
        q = request.query_params
        offset = _int_arg(request, "offset", 0)
        limit = _int_arg(request, "limit", 50, 1, 1000)
        page = queries().runs_page(
            scope(request), filter_string=q.get("filter", ""), sort=q.get("sort") or "start_time",
            descending=q.get("desc", "1").lower() not in ("0", "false", "no"), offset=offset, limit=limit,
            metric_columns=q.getlist("metric"), param_columns=q.getlist("param"))
        return {"total": page["total"], "offset": offset, "limit": limit, "runs": page["runs"]}

    def run(request):
        run_id = request.path_params["run_id"]
        project = run_project(request, run_id)
        q = queries()
        detail = q.get_run(run_id, project=project)
        straggler_metric = request.query_params.get("straggler_metric") or "step_time_s"
        detail["stragglers"] = q.stragglers(run_id, metric=straggler_metric, project=project)
        detail["straggler_metric"] = straggler_metric
        return detail

    def curves(request):
        run_id = request.path_params["run_id"]
        project = run_project(request, run_id)
        return _curves(request, [run_id], project)

    def _curves(request, run_ids, project, where_extremes=True):
        x = request.query_params.get("x", "step")
        metrics = request.query_params.getlist("metric") or None
        data = queries().curves(run_ids, metrics=metrics, x=x, buckets=_int_arg(request, "buckets", 1000, 1, MAX_BUCKETS),
                                lo=_float_arg(request, "lo"), hi=_float_arg(request, "hi"),
                                per_rank=_bool_arg(request, "per_rank"), project=project,
                                where_extremes=where_extremes)
        return _Charts(x=x, metrics=data)

    def gpus(request):
        run_id = request.path_params["run_id"]
        project = run_project(request, run_id)
        return _Charts(gpus=queries().gpu_panel(run_id, buckets=_int_arg(request, "buckets", 300, 1, MAX_BUCKETS),
                                                project=project))

    def run_alerts(request):
        run_id = request.path_params["run_id"]
        project = run_project(request, run_id)
        return {"alerts": queries().alerts_list(project=project, run_id=run_id, limit=1000)}

    def compare(request):
        run_ids = list(dict.fromkeys(request.query_params.getlist("run")))
        if not 1 <= len(run_ids) <= MAX_COMPARE:
            raise _ApiError(400, f"compare takes 1 to {MAX_COMPARE} runs (?run=A&run=B), got {len(run_ids)}")
        projects = {run_id: run_project(request, run_id) for run_id in run_ids}
        project = next(iter(projects.values())) if len(set(projects.values())) == 1 else None
        result = _jsonable(queries().compare(run_ids, project=project))  # NaN as "NaN" in the tables
        result["summary"] = result.pop("metrics")  # final/best per metric; "metrics" holds the curves
        return _Charts(result, **_curves(request, run_ids, project, where_extremes=False))  # overlays: means

    def fleet(request):
        window_s = _float_arg(request, "window_s") or 600.0
        if window_s <= 0:
            raise _ApiError(400, "window_s must be positive")
        return {"window_s": window_s, "gpus": queries().fleet(scope(request), window_s=window_s)}

    def alerts(request):
        state = request.query_params.get("state") or None
        return {"alerts": queries().alerts_list(scope(request), state=state,
                                                limit=_int_arg(request, "limit", 200, 1, 10000))}

    def index(request):
        page = STATIC / "index.html"
        if not (STATIC / "app.js").is_file():
            return Response("runwire ui: the front end is not built; run `make install` (npm ci && npm run build "
                            "in storage/ui/frontend)", status_code=500, media_type="text/plain")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    def not_found(request):
        return _json({"error": f"no API endpoint {request.url.path}"}, 404)

    api = [
        Route("/projects", endpoint(projects)),
        Route("/columns", endpoint(columns)),
        Route("/filter", endpoint(check_filter)),
        Route("/runs", endpoint(runs)),
        Route("/runs/{run_id:path}/curves", endpoint(curves)),
        Route("/runs/{run_id:path}/gpus", endpoint(gpus)),
        Route("/runs/{run_id:path}/alerts", endpoint(run_alerts)),
        Route("/runs/{run_id:path}", endpoint(run)),
        Route("/compare", endpoint(compare)),
        Route("/fleet", endpoint(fleet)),
        Route("/alerts", endpoint(alerts)),
        Route("/{rest:path}", not_found),
    ]
    def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own refusals (a method a route does not take): the API's error body
        under /api, Starlette's plain text for the page and its files."""
        if not request.url.path.startswith("/api/"):
            return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
        response = _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    return Starlette(routes=[
        Route("/", index),
        Mount("/api/v1", routes=api),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False, follow_symlink=True), name="static"),
    ], exception_handlers={HTTPException: http_error})
