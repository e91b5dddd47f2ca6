"""Web UI benchmark: the /api/v1 calls the pages make, the run page drawn in Chromium, live
latency from `run.log()` to the point on an open page, and MLflow's server on the same 1M points.

    python bench/ui.py --out build/bench/ui.json          (make bench-ui: 100M points, 10,000 runs)
    python bench/ui.py --runs 100 --steps 500 --table-runs 2000 --gpu-samples 200000 --mlflow-points 100000 (quick)

1. Loads the data set of bench/query.py (its Fleet and load(): runs x ranks x 10 metrics x steps
   points, default 1,000 x 8 x 1,250 = 100 million, and --gpu-samples GPU samples) into ClickHouse
   served by chDB, plus --table-runs runs in all (default 10,000: the others carry params and tags
   but no points) for the runs table.
2. Serves `runwire ui`'s application (uvicorn, loopback) and times, over HTTP with --reps
   repetitions each (a random run each time): the runs table (first page; sorted by a metric;
   filtered), one run's chart data for all its metrics at 1,000 px, a zoomed chart request, the
   run's details, the GPU panel, the compare of 20 runs, the fleet page.
3. In Debian's Chromium (Playwright): the time from navigation to the run page having drawn
   every chart (metrics and GPU panel; performance.now() at window.runwire.pageDrawnAt), --reps
   fresh pages. Then live latency: a run logging through the gateway into the same ClickHouse
   while its page is open; from `run.log()` to the point being in the drawn chart, --live-points
   points.
4. Loads --mlflow-points points (100 runs x 10 metrics) into MLflow (sqlite), starts `mlflow
   server` on it and times its runs page call (POST runs/search) and its chart call
   (GET metrics/get-history-bulk-interval, 320 points, as its UI asks) against runwire's API on
   the same points in a second database (/api/v1/runs with the same filter; /curves for one
   metric at 320 buckets). Ratios are MLflow's p50 over runwire's.

Prints progress on stderr; writes the JSON (keys metric_points, runs_in_table, api {name:
{p50_ms, p95_ms}}, page_drawn_ms, live_latency_s, vs_mlflow) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query import METRICS, Fleet, check_summary, load, load_mlflow, log, wait_for_merges  # noqa: E402

TARGET_API_P95_MS, TARGET_DRAWN_MS, TARGET_LIVE_P95_S = 150.0, 1500.0, 2.0
SEARCH_FILTER = "metrics.val_loss < 1.9 and params.lr = '0.0003'"


def stats(samples_ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(samples_ms, 50)), 1),
            "p95_ms": round(float(np.percentile(samples_ms, 95)), 1), "reps": len(samples_ms)}


def time_calls(http, make_request, reps: int, warmup: int = 2) -> dict:
    """make_request() -> (method, path, params/json); each call must answer 200."""
    samples = []
    for i in range(warmup + reps):
        method, path, kwargs = make_request()
        start = time.perf_counter()
        response = http.request(method, path, **kwargs)
        response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{method} {path} {kwargs}: HTTP {response.status_code} {response.text[:300]}")
        if i >= warmup:
            samples.append(elapsed)
    return stats(samples)


def table_only_runs(client, count: int, ranks: int, steps: int, now_ms: int) -> int:
    """More runs for the table (params, tags, ranks; no points), as a team's history holds."""
    if count <= 0:
        return 0
    fleet = Fleet(count, ranks, steps, now_ms - 86_400_000, seed=17, prefix="hist")
    rows = fleet.run_rows()
    for table in ("runs", "run_ranks", "params", "tags"):
        for i in range(0, len(rows[table]), 50_000):
            client.insert(table, rows[table][i:i + 50_000], column_names=rows["columns"][table])
    return count


def api_suite(http, fleet: Fleet, reps: int) -> dict:
    rng = random.Random(5)
    pick = lambda: fleet.ids[rng.randrange(fleet.runs)]  # noqa: E731
    columns = {"metric": ["loss", "val_loss", "accuracy"], "param": ["lr", "model"]}
    half = fleet.steps // 2
    suite = {
        "runs_table_first_page": lambda: ("GET", "/api/v1/runs", {"params": {"limit": 50, **columns}}),
        "runs_table_sorted_by_metric": lambda: ("GET", "/api/v1/runs", {"params": {
            "limit": 50, "sort": "metrics.val_loss.min", "desc": 0, **columns}}),
        "runs_table_filtered": lambda: ("GET", "/api/v1/runs", {"params": {
            "limit": 50, "filter": SEARCH_FILTER + " or tags.team = 'research'", "sort": "metrics.loss", **columns}}),
        "run_chart_data_all_metrics_1000px": lambda: ("GET", f"/api/v1/runs/{pick()}/curves", {"params": {"buckets": 1000}}),
        "zoomed_chart": lambda: ("GET", f"/api/v1/runs/{pick()}/curves", {"params": {
            "metric": "loss", "buckets": 1000, "lo": half, "hi": half + 200, "per_rank": 1}}),
        "run_details": lambda: ("GET", f"/api/v1/runs/{pick()}", {}),
        "run_gpu_panel": lambda: ("GET", f"/api/v1/runs/{fleet.ids[-1 - rng.randrange(20)]}/gpus", {"params": {"buckets": 200}}),
        "compare_20_runs": lambda: ("GET", "/api/v1/compare", {"params": {
            "run": rng.sample(fleet.ids, min(20, fleet.runs)), "buckets": 600}}),
        "fleet": lambda: ("GET", "/api/v1/fleet", {"params": {"window_s": 900}}),
    }
    out = {}
    for name, make in suite.items():
        out[name] = time_calls(http, make, reps)
        log(f"api {name}: p50 {out[name]['p50_ms']} ms, p95 {out[name]['p95_ms']} ms")
    return out


def page_drawn(browser, base: str, fleet: Fleet, reps: int) -> dict:
    """Fresh page per repetition: ms from navigation start until every chart is drawn."""
    rng = random.Random(8)
    samples, charts = [], []
    for i in range(reps + 1):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_id = fleet.ids[-1 - rng.randrange(min(20, fleet.runs))]  # recent runs: they have GPU samples
        page.goto(f"{base}/#/run/{run_id}")
        page.wait_for_function("window.runwire && window.runwire.pageDrawnAt !== null", timeout=60_000)
        drawn = page.evaluate("window.runwire.pageDrawnAt")
        charts.append(page.evaluate("Object.keys(window.runwire.charts).length"))
        context.close()
        if errors:
            raise SystemExit(f"run page errors: {errors}")
        if i:  # the first load warms the server's and ClickHouse's caches
            samples.append(drawn)
    return {"p50": round(float(np.percentile(samples, 50)), 1), "p95": round(float(np.percentile(samples, 95)), 1),
            "reps": len(samples), "charts_per_page": max(charts)}


def live_latency(browser, base: str, gateway: str, points: int) -> dict:
    from runwire.run import Run

    run_id = f"live-{int(time.time())}"
    run = Run(project="llm", name="live", run_id=run_id, gateway=gateway, gpu=False)
    samples = []
    try:
        for step in range(10):
            run.log({"loss": 2.0}, step=step)
        run.flush()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(f"{base}/#/run/{run_id}")
        deadline = time.monotonic() + 60
        while not page.evaluate("!!(window.runwire && window.runwire.charts.loss)"):
            if time.monotonic() > deadline:
                raise SystemExit("the live run's chart never appeared")
            time.sleep(0.1)
        for k in range(points):
            step = 10 + k
            # Spread over the page's 1 s refresh, as training steps are.
            time.sleep(random.Random(k).random() * 0.5)
            logged = time.perf_counter()
            run.log({"loss": 2.0 - 0.001 * k}, step=step)
            page.wait_for_function(f"window.runwire.charts.loss.xs().includes({step})", polling=20, timeout=30_000)
            samples.append(time.perf_counter() - logged)
        context.close()
    finally:
        run.finish()
    return {"p50": round(float(np.percentile(samples, 50)), 2), "p95": round(float(np.percentile(samples, 95)), 2),
            "points": len(samples)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vs_mlflow(server_url: str, connect_db, ui_base_factory, points: int, reps: int) -> dict:
    """MLflow's server and runwire's API on the same points."""
    import httpx

    from runwire.storage import schema

    runs = 100
    steps = max(1, points // (runs * len(METRICS)))
    fleet = Fleet(runs, 1, steps, int(time.time() * 1000), seed=5, prefix="mlf")
    table = fleet.metric_chunk(0, runs, np.random.default_rng(13))
    tmp = tempfile.mkdtemp(prefix="runwire-bench-ui-mlflow-")
    proc = None
    try:
        uri = f"sqlite:///{tmp}/mlflow.db"
        _client, experiment, ids, run_rows, load_s = load_mlflow(uri, tmp, fleet, table)
        rw = connect_db("bench_ui_mlflow")
        schema.migrate(rw)
        for name in ("runs", "run_ranks", "params", "tags"):
            rw.insert(name, run_rows[name], column_names=run_rows["columns"][name])
        rw.insert_arrow("metrics", table, settings={"optimize_on_insert": 0})
        wait_for_merges(rw, 60)
        check_summary(rw, runs)

        port = free_port()
        log(f"starting mlflow server on 127.0.0.1:{port} (sqlite, its default workers)")
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                                 "--default-artifact-root", f"file://{tmp}/artifacts", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        mlflow_http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 180
        while True:
            try:
                if mlflow_http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("mlflow server did not start")
            time.sleep(0.5)
        rng = random.Random(4)
        pick = lambda: fleet.ids[rng.randrange(runs)]  # noqa: E731
        results = {
            "mlflow_runs_search": time_calls(mlflow_http, lambda: ("POST", "/api/2.0/mlflow/runs/search", {"json": {
                "experiment_ids": [experiment], "filter": SEARCH_FILTER, "max_results": 100,
                "order_by": ["attributes.start_time DESC"]}}), reps),
            "mlflow_get_history_bulk_interval": time_calls(mlflow_http, lambda: (
                "GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                {"params": {"run_ids": ids[pick()], "metric_key": "loss", "max_results": 320}}), reps),
        }
        with ui_base_factory("bench_ui_mlflow") as base:
            ui_http = httpx.Client(base_url=base, timeout=60)
            results["runwire_runs_search"] = time_calls(ui_http, lambda: ("GET", "/api/v1/runs", {"params": {
                "filter": SEARCH_FILTER, "limit": 100, "metric": ["loss", "val_loss"], "param": ["lr"]}}), reps)
            results["runwire_curves_one_metric_320"] = time_calls(ui_http, lambda: (
                "GET", f"/api/v1/runs/{pick()}/curves", {"params": {"metric": "loss", "buckets": 320}}), reps)
        ratio = lambda a, b: round(results[a]["p50_ms"] / results[b]["p50_ms"], 2)  # noqa: E731
        return {"points": table.num_rows, "runs": runs, "mlflow_load_s": round(load_s, 1), "calls": results,
                "runs_search_ratio": ratio("mlflow_runs_search", "runwire_runs_search"),
                "history_ratio": ratio("mlflow_get_history_bulk_interval", "runwire_curves_one_metric_320")}
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs with points (default 1,000)")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1250)
    parser.add_argument("--table-runs", type=int, default=10_000, help="runs in the table in all (default 10,000)")
    parser.add_argument("--gpu-samples", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=4_000_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--live-points", type=int, default=50)
    parser.add_argument("--mlflow-points", type=int, default=1_000_000)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--merge-wait-s", type=float, default=600.0)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", default="build/bench/ui.json")
    args = parser.parse_args()

    import contextlib

    import httpx
    from playwright.sync_api import sync_playwright

    from runwire.deploy.local.clickhouse import ClickHouseServer
    from runwire.deploy.local.stack import LocalStack
    from runwire.storage import schema
    from runwire.storage.client import connect
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import UIServer

    result: dict = {"benchmark": "ui", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "config": {"runs_with_points": args.runs, "ranks": args.ranks, "metrics": len(METRICS),
                               "steps": args.steps, "gpu_samples": args.gpu_samples, "reps": args.reps,
                               "live_points": args.live_points, "mlflow_points": args.mlflow_points}}
    with ClickHouseServer() as server:
        log(f"ClickHouse (chDB) at {server.url}")
        client = connect(server.url, "bench_ui", send_receive_timeout=600)
        schema.migrate(client)
        now_ms = int(time.time() * 1000)
        fleet = Fleet(args.runs, args.ranks, args.steps, now_ms)
        result["load"] = load(client, fleet, args.gpu_samples, args.chunk_rows, now_ms)
        table_only_runs(client, args.table_runs - args.runs, args.ranks, args.steps, now_ms)
        log("waiting for background merges ...")
        result["load"]["merge_wait_s"] = round(wait_for_merges(client, args.merge_wait_s), 1)
        check_summary(client, fleet.runs)
        result["metric_points"] = client.query("SELECT count() FROM metrics").result_rows[0][0]
        result["runs_in_table"] = client.query("SELECT count() FROM runs FINAL").result_rows[0][0]
        log(f"{result['metric_points']:,} metric points, {result['runs_in_table']:,} runs")

        def make_app(database):
            return create_app(lambda: connect(server.url, database, create=False, autogenerate_session_id=False))

        @contextlib.contextmanager
        def ui_base(database):
            with UIServer(make_app(database), "127.0.0.1:0") as ui:
                yield ui.url

        with UIServer(make_app("bench_ui"), "127.0.0.1:0") as ui, httpx.Client(base_url=ui.url, timeout=60) as http:
            result["api"] = api_suite(http, fleet, args.reps)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
                try:
                    result["page_drawn_ms"] = page_drawn(browser, ui.url, fleet, args.reps)
                    log(f"run page drawn: {result['page_drawn_ms']}")
                    stack = LocalStack(clickhouse_url=server.url, database="bench_ui").start()
                    try:
                        result["live_latency_s"] = live_latency(browser, ui.url, stack.gateway.address, args.live_points)
                    finally:
                        stack.stop()
                    log(f"live latency: {result['live_latency_s']}")
                finally:
                    browser.close()
        result["loadavg"] = [round(v, 2) for v in os.getloadavg()]
        if not args.skip_mlflow:
            result["vs_mlflow"] = vs_mlflow(server.url, lambda db: connect(server.url, db, send_receive_timeout=600),
                                            ui_base, args.mlflow_points, args.reps)
            log(f"vs MLflow: runs/search x{result['vs_mlflow']['runs_search_ratio']}, "
                f"history x{result['vs_mlflow']['history_ratio']}")
    api = result["api"]
    result["targets"] = {
        "api_p95_ms": TARGET_API_P95_MS, "page_drawn_ms": TARGET_DRAWN_MS, "live_p95_s": TARGET_LIVE_P95_S,
        "met": {"api": all(v["p95_ms"] <= TARGET_API_P95_MS for v in api.values()),
                "page_drawn": result["page_drawn_ms"]["p95"] <= TARGET_DRAWN_MS,
                "live": result["live_latency_s"]["p95"] <= TARGET_LIVE_P95_S,
                "vs_mlflow": ("vs_mlflow" in result and result["vs_mlflow"]["runs_search_ratio"] > 1
                              and result["vs_mlflow"]["history_ratio"] > 1)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
