"""The web UI's JSON API (/api/v1) over ClickHouse served by chDB, holding demo runs written by
the real emitters through the gateway; served by uvicorn on a loopback port, as `runwire ui`."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from demo_data import demo_stack

httpx = pytest.importorskip("httpx")

RUN_A, RUN_B = f"ui-a-{uuid.uuid4().hex[:6]}", f"ui-b-{uuid.uuid4().hex[:6]}"
TOKENS = {"demo": "demo-secret", "other": "other-secret"}


@pytest.fixture(scope="module")
def ui_data(clickhouse_url):
    """(database client, LocalStack, connect factory): two demo runs and two alerts."""
    from runwire.ingest.alerts.lifecycle import Alert
    from runwire.ingest.alerts.store import AlertStore
    from runwire.storage.client import connect

    with demo_stack(clickhouse_url, "ui_api", [(RUN_A, 4.0), (RUN_B, 2.5)]) as (client, stack):
        now = time.time_ns()
        gpu = client.query("SELECT any(gpu_uuid), any(host) FROM gpu_samples WHERE run_id = {r:String}",
                           parameters={"r": RUN_A}).result_rows[0]

        def alert(aid, state, resolved):
            return Alert(alert_id=aid, rule="gpu_overheat", severity="critical", state=state, project="demo",
                         run_id=RUN_A, host=gpu[1], gpu_uuid=gpu[0], rank=0, subject="", value=93.0,
                         message="GPU at 93 C", started_ns=now - 10**9, fired_ns=now,
                         resolved_ns=now if resolved else None, updated_ns=now, observed_ns=now)

        AlertStore(client).write([alert("a-open", "firing", False), alert("a-done", "resolved", True)])
        database = client.database
        yield client, stack, (lambda: connect(clickhouse_url, database, create=False, autogenerate_session_id=False))


@pytest.fixture(scope="module")
def api(ui_data):
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import UIServer

    with UIServer(create_app(ui_data[2]), "127.0.0.1:0") as server:
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as http:
            yield http


@pytest.fixture(scope="module")
def api_with_tokens(ui_data):
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import UIServer

    with UIServer(create_app(ui_data[2], tokens=TOKENS), "127.0.0.1:0") as server:
        yield server.url + "/api/v1"


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def stored_points(client, run_id: str, metric: str) -> int:
    return client.query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String} AND name = {m:String}",
                        parameters={"r": run_id, "m": metric}).result_rows[0][0]


# --- runs table --------------------------------------------------------------------------------


def test_projects_and_columns(api):
    projects = ok(api.get("/projects"))["projects"]
    assert projects == [{"project": "demo", "runs": 2, "running": 0}]
    columns = ok(api.get("/columns", params={"project": "demo"}))
    assert {"loss", "accuracy", "step_time_s", "tokens_per_s", "lr"} <= set(columns["metrics"])
    assert {"lr", "batch_size", "model.layers"} <= set(columns["params"])


def test_runs_page_shape(api):
    page = ok(api.get("/runs", params={"project": "demo", "metric": ["loss"], "param": ["optimizer"]}))
    assert page["total"] == 2 and page["offset"] == 0 and page["limit"] == 50
    run = next(r for r in page["runs"] if r["run_id"] == RUN_A)
    assert set(run) == {"run_id", "project", "name", "status", "user", "start_time", "end_time", "duration_s",
                        "ranks", "hosts", "metrics", "params"}
    assert run["status"] == "FINISHED" and run["name"] == "demo-llm" and run["project"] == "demo"
    assert run["ranks"] == 4 and run["hosts"] == ["node-0", "node-1"]
    assert 3.0 <= run["duration_s"] <= 30
    assert run["params"] == {"optimizer": "adamw"}
    loss = run["metrics"]["loss"]
    assert loss["min"] <= loss["last"] <= loss["max"]


def test_runs_sort_by_metric_and_paging(api, ui_data):
    client = ui_data[0]
    mins = dict(client.query("SELECT run_id, min(value) FROM metrics WHERE name = 'loss' GROUP BY run_id").result_rows)
    for desc in (0, 1):
        order = [ok(api.get("/runs", params={"sort": "metrics.loss.min", "desc": desc, "metric": "loss",
                                              "limit": 1, "offset": offset}))["runs"][0]
                 for offset in (0, 1)]
        values = [r["metrics"]["loss"]["min"] for r in order]
        assert values == sorted(mins.values(), reverse=bool(desc))
        assert {r["run_id"] for r in order} == {RUN_A, RUN_B}
    past_end = ok(api.get("/runs", params={"offset": 5}))
    assert past_end["runs"] == [] and past_end["total"] == 2
    by_duration = ok(api.get("/runs", params={"sort": "duration", "desc": 1}))["runs"]
    assert by_duration[0]["duration_s"] >= by_duration[1]["duration_s"]
    assert by_duration[0]["run_id"] == RUN_A  # the 4-second run
    by_name = ok(api.get("/runs", params={"sort": "params.lr"}))
    assert by_name["total"] == 2


def test_runs_filter(api):
    page = ok(api.get("/runs", params={"filter": f"attributes.run_id = '{RUN_B}'"}))
    assert [r["run_id"] for r in page["runs"]] == [RUN_B] and page["total"] == 1
    page = ok(api.get("/runs", params={"filter": "metrics.loss > 1000 or params.lr = 'nope'"}))
    assert page == {"total": 0, "offset": 0, "limit": 50, "runs": []}
    page = ok(api.get("/runs", params={"filter": "metrics.loss < 1000 and params.optimizer = 'adamw'"}))
    assert page["total"] == 2


def test_bad_filter_is_400_with_the_caret_message(api):
    response = api.get("/runs", params={"filter": "metrics.loss lt 0.3"})
    assert response.status_code == 400
    body = response.json()
    assert body["position"] == 13 and body["filter"] == "metrics.loss lt 0.3"
    lines = body["error"].splitlines()
    assert "(position 13)" in lines[0] and lines[1].strip() == "metrics.loss lt 0.3"
    assert lines[2].index("^") == lines[1].index("lt")


def test_filter_check(api):
    assert ok(api.get("/filter", params={"filter": "metrics.loss < 2 and params.lr = '0.1'"})) == {"valid": True}
    bad = ok(api.get("/filter", params={"filter": "params.lr = "}))
    assert bad["valid"] is False and bad["position"] == 12 and bad["error"].splitlines()[2].strip() == "^"


@pytest.mark.parametrize("params, needle", [
    ({"sort": "bogus"}, "cannot sort by"),
    ({"limit": "0"}, "limit"),
    ({"offset": "x"}, "offset"),
])
def test_bad_arguments_are_400(api, params, needle):
    response = api.get("/runs", params=params)
    assert response.status_code == 400 and needle in response.json()["error"]


# --- one run -----------------------------------------------------------------------------------


def test_run_detail(api):
    run = ok(api.get(f"/runs/{RUN_A}"))
    assert run["run_id"] == RUN_A and run["status"] == "FINISHED" and run["world_size"] == 4
    assert run["params"]["lr"] == "0.0003" and run["tags"]["team"] == "demo"
    assert [r["rank"] for r in run["ranks"]] == [0, 1, 2, 3]
    assert run["hosts"] == ["node-0", "node-1"]
    assert {"last", "min", "max", "step"} <= set(run["metrics"]["loss"])
    assert [s["rank"] for s in run["stragglers"]] == [0, 1, 2, 3]
    assert run["straggler_metric"] == "step_time_s"


def test_unknown_run_is_404(api):
    for path in ("/runs/nope", "/runs/nope/curves", "/runs/nope/gpus", "/runs/nope/alerts"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["error"]
    assert api.get("/compare", params={"run": [RUN_A, "nope"]}).status_code == 404
    assert api.get("/nothing/here").status_code == 404


def test_curves_keep_every_bucket_extreme_and_count(api, ui_data):
    client = ui_data[0]
    data = ok(api.get(f"/runs/{RUN_A}/curves", params={"buckets": 20}))
    assert data["x"] == "step"
    loss = data["metrics"]["loss"]
    series = loss["runs"][RUN_A]
    assert 1 < len(series["x"]) <= 20
    columns = ("x", "min", "max", "mean", "min_rank", "min_step", "max_rank", "max_step", "count")
    assert all(len(series[c]) == len(series["x"]) for c in columns)
    assert sum(series["count"]) == stored_points(client, RUN_A, "loss")
    lo, hi, argmax_rank, argmax_step = client.query(
        "SELECT min(value), max(value), argMax(rank, value), argMax(step, value) FROM metrics "
        "WHERE run_id = {r:String} AND name = 'loss'", parameters={"r": RUN_A}).result_rows[0]
    assert min(series["min"]) == pytest.approx(lo) and max(series["max"]) == pytest.approx(hi)
    top = series["max"].index(max(series["max"]))
    assert (series["max_rank"][top], series["max_step"][top]) == (argmax_rank, argmax_step)
    assert set(data["metrics"]) >= {"loss", "accuracy", "lr", "step_time_s", "tokens_per_s"}


def test_zoomed_curve_is_full_resolution(api, ui_data):
    from runwire.storage.query import RunQueries

    history = RunQueries(ui_data[0]).history(RUN_A, "loss", ranks=[2])
    steps = sorted({p["step"] for p in history})
    lo, hi = steps[10], steps[40]
    data = ok(api.get(f"/runs/{RUN_A}/curves", params={"metric": "loss", "lo": lo, "hi": hi, "buckets": 500,
                                                       "per_rank": 1}))
    assert list(data["metrics"]) == ["loss"] and data["metrics"]["loss"]["width"] == 1
    line = data["metrics"]["loss"]["runs"][RUN_A]["ranks"]["2"]
    want = [(p["step"], p["value"]) for p in history if lo <= p["step"] <= hi]
    assert line["x"] == [s for s, _ in want]
    assert line["last"] == pytest.approx([v for _, v in want])
    assert set(data["metrics"]["loss"]["runs"][RUN_A]["ranks"]) == {"0", "1", "2", "3"}


def test_curves_by_time(api, ui_data):
    run = ok(api.get(f"/runs/{RUN_A}"))
    data = ok(api.get(f"/runs/{RUN_A}/curves", params={"x": "time", "metric": "loss", "buckets": 50}))
    xs = data["metrics"]["loss"]["runs"][RUN_A]["x"]
    start_ms = time.mktime(time.strptime(run["start_time"][:19], "%Y-%m-%dT%H:%M:%S")) * 1000 - time.timezone * 1000
    assert xs == sorted(xs) and start_ms - 5000 <= xs[0] <= start_ms + 30000
    assert api.get(f"/runs/{RUN_A}/curves", params={"x": "bogus"}).status_code == 400
    assert api.get(f"/runs/{RUN_A}/curves", params={"lo": "nan"}).status_code == 400


def test_gpus(api):
    gpus = ok(api.get(f"/runs/{RUN_A}/gpus", params={"buckets": 30}))["gpus"]
    assert [(g["host"], g["gpu_index"]) for g in gpus] == [("node-0", 0), ("node-0", 1), ("node-1", 0), ("node-1", 1)]
    for gpu in gpus:
        series = gpu["series"]
        assert 0 < len(series["t"]) <= 30
        assert set(series) == {"t", "temperature_c", "memory_used_bytes", "memory_total_bytes", "power_w",
                               "power_limit_w", "gpu_utilization_pct", "sm_clock_mhz", "memory_clock_mhz",
                               "throttle_reasons"}
        assert all(len(v) == len(series["t"]) for v in series.values())
        assert all(0 < t < 120 for t in series["temperature_c"] if t is not None)


def test_run_alerts_and_alerts_page(api):
    run_alerts = ok(api.get(f"/runs/{RUN_A}/alerts"))["alerts"]
    assert [a["alert_id"] for a in run_alerts] == ["a-open", "a-done"]  # open first
    assert ok(api.get(f"/runs/{RUN_B}/alerts"))["alerts"] == []
    open_ = ok(api.get("/alerts", params={"state": "open"}))["alerts"]
    assert [a["alert_id"] for a in open_] == ["a-open"]
    assert open_[0]["run_id"] == RUN_A and open_[0]["state"] == "firing" and open_[0]["resolved_at"] is None
    resolved = ok(api.get("/alerts", params={"state": "resolved", "project": "demo"}))["alerts"]
    assert [a["alert_id"] for a in resolved] == ["a-done"] and resolved[0]["resolved_at"]
    assert api.get("/alerts", params={"state": "bogus"}).status_code == 400


def test_compare(api):
    result = ok(api.get("/compare", params={"run": [RUN_A, RUN_B], "buckets": 40}))
    assert set(result["runs"]) == {RUN_A, RUN_B}
    assert result["params"] == {}  # both runs share their config
    assert result["all_params"]["lr"] == {RUN_A: "0.0003", RUN_B: "0.0003"}
    assert set(result["summary"]["loss"]) == {RUN_A, RUN_B}
    loss = result["metrics"]["loss"]
    assert set(loss["runs"]) == {RUN_A, RUN_B}
    assert len(loss["runs"][RUN_A]["x"]) <= 40 and len(loss["runs"][RUN_B]["x"]) <= 40
    assert api.get("/compare", params={"run": [f"r{i}" for i in range(21)]}).status_code == 400


def test_fleet(api):
    fleet = ok(api.get("/fleet", params={"window_s": 86400, "project": "demo"}))
    gpus = fleet["gpus"]
    assert len(gpus) == 4 and {g["host"] for g in gpus} == {"node-0", "node-1"}
    temps = [g["max_temperature_c"] for g in gpus]
    assert temps == sorted(temps, reverse=True)
    for g in gpus:
        assert g["run_id"] in (RUN_A, RUN_B)
        assert g["headroom_bytes"] == pytest.approx(g["memory_total_bytes"] - g["memory_used_bytes"])
    assert ok(api.get("/fleet", params={"window_s": 86400, "project": "nope"}))["gpus"] == []


# --- auth ----------------------------------------------------------------------------------------


def test_tokens(api_with_tokens):
    base = api_with_tokens
    paths = ["/projects", "/runs", f"/runs/{RUN_A}", f"/runs/{RUN_A}/curves", f"/runs/{RUN_A}/gpus",
             f"/runs/{RUN_A}/alerts", f"/compare?run={RUN_A}&run={RUN_B}", "/fleet", "/alerts", "/columns"]
    for path in paths:
        assert httpx.get(base + path).status_code == 401, path
        wrong = httpx.get(base + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    demo = {"Authorization": "Bearer demo-secret"}
    for path in paths:
        assert httpx.get(base + path, headers=demo, timeout=30).status_code == 200, path
    other = {"Authorization": "Bearer other-secret"}
    for path in paths[2:7]:
        response = httpx.get(base + path, headers=other, timeout=30)
        assert response.status_code == 404, path  # another project's run: as if it did not exist
    assert httpx.get(base + "/projects", headers=other).json() == {"projects": []}
    assert httpx.get(base + "/runs", headers=other).json()["total"] == 0
    assert httpx.get(base + "/runs?project=demo", headers=other).status_code == 404
    assert httpx.get(base + "/alerts", headers=other).json() == {"alerts": []}
    assert httpx.get(base + "/fleet?window_s=86400", headers=other).json()["gpus"] == []
    # The page itself carries no data: it loads, then asks for a token.
    assert httpx.get(base.rsplit("/api/", 1)[0] + "/").status_code == 200


def test_a_port_in_use_is_refused():
    from runwire.storage.ui.server import PortInUse, UIServer

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        with pytest.raises(PortInUse, match="already in use"):
            UIServer(None, f"127.0.0.1:{holder.getsockname()[1]}")
    finally:
        holder.close()
