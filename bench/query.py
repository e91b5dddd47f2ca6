"""Query benchmark: the read side (runwire.storage.query) at 100 million metric points, and
MLflow against runwire on the same 1 million points.

    python bench/query.py --out build/bench/query.json          (make bench-query)
    python bench/query.py --runs 40 --steps 500 --gpu-samples 500000 --mlflow-points 100000   (quick)

1. Starts ClickHouse served by chDB on loopback (runwire.deploy.local.clickhouse) and loads
   runs x ranks x metrics x steps metric points (default 1,000 x 8 x 10 x 1,250 = 100 million)
   and --gpu-samples GPU samples (default 10 million: 1,000 GPUs on 125 hosts at 1 Hz for the
   last 2.8 hours), generated with numpy and inserted as Arrow tables (insert_arrow) in chunks of
   --chunk-rows rows; runs, ranks, params and tags as plain rows, into a database laid out by
   `runwire migrate`. The per-minute rollups and the per-run summary (metrics_summary) fill
   through their materialized views on every insert, as in production, so the reported load
   times include them. It then waits for background merges (reported as merge_wait_s).
2. Times each query --reps times (after --warmup untimed calls), each repetition on another
   randomly chosen run, through a fresh RunQueries (so the run's project lookup is included):
   curve (1,000 buckets, one metric of one run, across ranks), compare (20 runs), search_runs
   (a filter with or/parentheses over all runs), hottest_gpus (fleet, last hour), stragglers
   (one run), and a few more views. Reports p50/p95/mean in milliseconds.
3. Loads --mlflow-points points (default 1 million: 100 runs x 10 metrics x 1,000 steps) into
   MLflow (sqlite backend, MlflowClient.log_batch, in a temporary directory) and the same points
   into a second runwire database, and times MLflow's get_metric_history and search_runs
   against runwire's history / curve and search_runs on that data.

Prints progress to stderr and the JSON result to stdout; writes it to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

METRICS = ["loss", "val_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "accuracy", "perplexity",
           "mfu", "memory_gb"]
PROJECTS = ["llm", "vision", "speech", "rl"]
TEAMS = ["nlp", "vision", "speech", "research"]
LRS = ["0.0001", "0.0003", "0.001"]
MODELS = ["llama-1b", "llama-7b", "llama-13b"]
STEP_S = 2.0            # seconds per training step
GPUS_PER_HOST = 8
GPU_HOSTS = 125
TARGET_P50_MS, TARGET_P95_MS = 100.0, 250.0

_TS_MS = pa.timestamp("ms", tz="UTC")
_TS_US = pa.timestamp("us", tz="UTC")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dictionary(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values, pa.string()))


# --- data --------------------------------------------------------------------------------------


class Fleet:
    """The synthetic runs: ids, projects, start times and per-run traits, all seeded."""

    def __init__(self, runs: int, ranks: int, steps: int, now_ms: int, seed: int = 7, prefix: str = "run") -> None:
        rng = np.random.default_rng(seed)
        self.runs, self.ranks, self.steps = runs, ranks, steps
        self.ids = [f"{prefix}-{i:05d}" for i in range(runs)]
        self.project_index = np.arange(runs) % len(PROJECTS)
        self.projects = [PROJECTS[p] for p in self.project_index]
        duration_ms = int(steps * STEP_S * 1000)
        # One run starts every 40 minutes; the last ones end about now.
        self.start_ms = now_ms - duration_ms - (runs - 1 - np.arange(runs)) * 40 * 60_000 - 60_000
        self.lr = rng.integers(0, len(LRS), runs)
        self.model = rng.integers(0, len(MODELS), runs)
        self.team = rng.integers(0, len(TEAMS), runs)
        self.final_loss = 1.6 + 0.25 * self.lr - 0.15 * self.model + 0.3 * rng.random(runs)
        self.slow_rank = np.where(rng.random(runs) < 0.3, rng.integers(0, ranks, runs), -1)
        self.status = np.where(rng.random(runs) < 0.1, "FAILED", "FINISHED").astype(object)
        self.status[-max(1, runs // 100):] = "RUNNING"
        self.rng = rng

    def host_of(self, run: int, rank: int) -> str:
        return f"node-{(run * max(1, self.ranks // GPUS_PER_HOST) + rank // GPUS_PER_HOST) % GPU_HOSTS:03d}"

    def metric_chunk(self, first: int, count: int, rng: np.random.Generator) -> pa.Table:
        """Points of runs [first, first + count), ordered by run, name, rank, step."""
        m, k, s = len(METRICS), self.ranks, self.steps
        runs = np.arange(first, first + count)
        shape = (count, m, k, s)
        step = np.broadcast_to(np.arange(s, dtype=np.int64), shape)
        rank = np.broadcast_to(np.arange(k, dtype=np.uint32)[:, None], shape)
        ts = (self.start_ms[runs][:, None, None, None] + (step * STEP_S * 1000).astype(np.int64)
              + rank.astype(np.int64) * 3)
        values = np.empty(shape)
        frac = np.arange(s) / max(1, s - 1)
        final = self.final_loss[runs][:, None, None]
        noise = rng.standard_normal((count, k, s))
        values[:, 0] = final + 4.0 * np.exp(-frac * 6.0) + 0.05 * noise
        values[:, 1] = final + 0.05 + 4.0 * np.exp(-frac * 6.0) + 0.02 * noise
        lr = np.array([float(LRS[i]) for i in self.lr[runs]])[:, None, None]
        values[:, 2] = lr * np.minimum(1.0, (np.arange(s) + 1) / 100.0)
        values[:, 3] = 1.0 + 0.3 * np.abs(noise)
        step_time = 1.0 + 0.02 * noise
        slow = self.slow_rank[runs]
        for j, r in enumerate(slow):
            if r >= 0:
                step_time[j, r] *= 1.8
        values[:, 4] = step_time
        values[:, 5] = 2.0e5 / step_time
        values[:, 6] = 1.0 - values[:, 0] / 8.0
        values[:, 7] = np.exp(np.minimum(values[:, 0], 20.0))
        values[:, 8] = 0.45 / step_time
        values[:, 9] = 60.0 + 2.0 * np.abs(noise)
        n = count * m * k * s
        return pa.table({
            "project": dictionary(np.repeat(self.project_index[runs], m * k * s), PROJECTS),
            "run_id": dictionary(np.repeat(np.arange(count), m * k * s), self.ids[first:first + count]),
            "name": dictionary(np.tile(np.repeat(np.arange(m), k * s), count), METRICS),
            "rank": pa.array(rank.reshape(n)),
            "step": pa.array(step.reshape(n)),
            "ts": pa.array(ts.reshape(n)).cast(_TS_MS),
            "value": pa.array(values.reshape(n)),
        })

    def run_rows(self) -> dict[str, list[list]]:
        from runwire.storage import rows as row_defs

        now = dt.datetime.now(dt.timezone.utc)
        ms = lambda v: dt.datetime.fromtimestamp(v / 1000, dt.timezone.utc)  # noqa: E731
        out = {"runs": [], "run_ranks": [], "params": [], "tags": []}
        duration = int(self.steps * STEP_S * 1000)
        for i, run_id in enumerate(self.ids):
            project, status = self.projects[i], self.status[i]
            end = None if status == "RUNNING" else ms(self.start_ms[i] + duration)
            exit_code = None if status == "RUNNING" else (0 if status == "FINISHED" else 1)
            out["runs"].append([project, run_id, f"{MODELS[self.model[i]]}-{i}", status, ms(self.start_ms[i]), end,
                                exit_code, "c0ffee", "torchrun", self.ranks, {}, now])
            for rank in range(self.ranks):
                out["run_ranks"].append([project, run_id, rank, rank % GPUS_PER_HOST, rank // GPUS_PER_HOST, self.ranks,
                                         self.host_of(i, rank), 1000 + rank, f"s-{i}-{rank}", status,
                                         ms(self.start_ms[i]), end, exit_code, {}, now])
            params = {"lr": LRS[self.lr[i]], "model": MODELS[self.model[i]], "batch_size": "1024",
                      "optimizer": "adamw", "warmup_steps": "2000", "seed": str(i), "layers": str(16 + 8 * self.model[i]),
                      "hidden": "4096", "dataset": "pile-v2", "precision": "bf16"}
            out["params"] += [[project, run_id, key, value, now] for key, value in params.items()]
            tags = {"team": TEAMS[self.team[i]], "cluster": "eu-1", "owner": f"user{i % 17}"}
            out["tags"] += [[project, run_id, key, value, now] for key, value in tags.items()]
        out["columns"] = {"runs": row_defs.RUN_COLUMNS, "run_ranks": row_defs.RUN_RANK_COLUMNS,
                          "params": row_defs.KV_COLUMNS, "tags": row_defs.KV_COLUMNS}
        return out


def gpu_chunks(fleet: Fleet, total: int, now_ms: int, chunk_rows: int, rng: np.random.Generator):
    """~total samples: GPU_HOSTS x 8 GPUs at 1 Hz over the last total / (hosts x 8) seconds,
    each host running one of the newest runs. Yields Arrow tables ordered by host, GPU, time."""
    gpus = GPU_HOSTS * GPUS_PER_HOST
    seconds = max(1, total // gpus)
    hosts = [f"node-{h:03d}" for h in range(GPU_HOSTS)]
    uuids = [f"GPU-{rng.integers(0, 2**63):016x}-{g:04d}" for g in range(gpus)]
    base_temp = 55.0 + 15.0 * rng.random(gpus)
    base_temp[rng.choice(gpus, 5, replace=False)] += 20.0          # a few hot ones
    mem_frac = 0.5 + 0.45 * rng.random(gpus)
    t0_us = (now_ms - seconds * 1000) * 1000
    per_chunk = max(1, chunk_rows // seconds)
    newest = fleet.runs - 1
    for first in range(0, gpus, per_chunk):
        g = np.arange(first, min(gpus, first + per_chunk))
        n = len(g) * seconds
        gi = np.repeat(g, seconds)
        t = np.tile(np.arange(seconds, dtype=np.int64), len(g))
        host = gi // GPUS_PER_HOST
        run = (newest - host) % fleet.runs
        local = gi % GPUS_PER_HOST
        noise = rng.standard_normal(n)
        temp = base_temp[gi] + 5.0 * np.sin(t / 600.0 + gi) + noise
        total_bytes = np.full(n, 80e9)
        used = total_bytes * np.clip(mem_frac[gi] + 0.02 * noise, 0.0, 1.0)
        util = np.clip(85.0 + 10.0 * noise, 0.0, 100.0)
        run_ids, run_pos = np.unique(run, return_inverse=True)
        columns = {
            "project": dictionary(fleet.project_index[run], PROJECTS),
            "run_id": dictionary(run_pos, [fleet.ids[r] for r in run_ids]),
            "host": dictionary(host, hosts),
            "node_rank": pa.array(np.zeros(n, np.uint32)),
            "rank": pa.array(local.astype(np.uint32)),
            "gpu_uuid": dictionary(gi, uuids),
            "pci_bus_id": dictionary(local, [f"00000000:{0x17 + 0x10 * j:02X}:00.0" for j in range(GPUS_PER_HOST)]),
            "gpu_index": pa.array(local.astype(np.uint16)),
            "gpu_name": dictionary(np.zeros(n, np.int32), ["NVIDIA H100 80GB HBM3"]),
            "ts": pa.array(t0_us + t * 1_000_000).cast(_TS_US),
            "memory_used_bytes": pa.array(used), "memory_total_bytes": pa.array(total_bytes),
            "temperature_c": pa.array(temp), "memory_temperature_c": pa.array(temp + 5.0),
            "gpu_utilization_pct": pa.array(util), "memory_utilization_pct": pa.array(util * 0.6),
            "power_w": pa.array(400.0 + 3.0 * (temp - 60.0)), "power_limit_w": pa.array(np.full(n, 700.0)),
            "sm_clock_mhz": pa.array(np.full(n, 1980.0)), "memory_clock_mhz": pa.array(np.full(n, 2619.0)),
            "throttle_reasons": pa.array(np.where(temp > 85.0, 32, 0).astype(np.uint64)),
            "ecc_corrected": pa.array(np.zeros(n)), "ecc_uncorrected": pa.array(np.zeros(n)),
            "xid": pa.array(np.zeros(n, np.uint64)),
        }
        yield pa.table(columns)


def load(client, fleet: Fleet, gpu_samples: int, chunk_rows: int, now_ms: int) -> dict:
    rng = np.random.default_rng(11)
    run_rows = fleet.run_rows()
    for table in ("runs", "run_ranks", "params", "tags"):
        client.insert(table, run_rows[table], column_names=run_rows["columns"][table])
    per_run = len(METRICS) * fleet.ranks * fleet.steps
    runs_per_chunk = max(1, chunk_rows // per_run)
    total = fleet.runs * per_run
    started, done = time.perf_counter(), 0
    for first in range(0, fleet.runs, runs_per_chunk):
        count = min(runs_per_chunk, fleet.runs - first)
        table = fleet.metric_chunk(first, count, rng)
        # The materialized views (metrics_1m, metrics_summary) run inside this insert: the
        # timing includes them.
        client.insert_arrow("metrics", table, settings={"optimize_on_insert": 0})
        done += table.num_rows
        elapsed = time.perf_counter() - started
        log(f"metrics: {done:,} / {total:,} points ({done / elapsed / 1e6:.2f} M/s, {elapsed:.0f} s)")
    metric_s = time.perf_counter() - started
    started, done = time.perf_counter(), 0
    for table in gpu_chunks(fleet, gpu_samples, now_ms, chunk_rows, rng):
        client.insert_arrow("gpu_samples", table)
        done += table.num_rows
        log(f"gpu_samples: {done:,} / ~{gpu_samples:,} ({done / (time.perf_counter() - started) / 1e6:.2f} M/s)")
    return {"metric_load_s": round(metric_s, 1), "gpu_load_s": round(time.perf_counter() - started, 1),
            "metric_load_points_per_s": round(total / metric_s)}


def check_summary(client, runs: int) -> int:
    """metrics_summary must have been filled by its materialized view during the load (no
    backfill runs here): one key per run and metric, or the numbers would be of a query that
    reads nothing."""
    keys = client.query("SELECT uniqExact(project, run_id, name) FROM metrics_summary").result_rows[0][0]
    if keys != runs * len(METRICS):
        raise SystemExit(f"metrics_summary holds {keys} run/metric keys, expected {runs * len(METRICS)}")
    return keys


def wait_for_merges(client, limit_s: float) -> float:
    """Background merges compete with the queries for two cores: let them finish first."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        running = client.query("SELECT count() FROM system.merges WHERE database = currentDatabase()").result_rows[0][0]
        if not running:
            break
        time.sleep(2.0)
    return time.perf_counter() - started


def parts(client) -> dict:
    rows = client.query("SELECT table, count() AS parts, sum(rows) AS rows, sum(data_compressed_bytes) AS bytes "
                        "FROM system.parts WHERE database = currentDatabase() AND active GROUP BY table "
                        "ORDER BY table").result_rows
    return {t: {"parts": p, "rows": r, "compressed_mb": round(b / 2**20, 1)} for t, p, r, b in rows}


# --- timing ------------------------------------------------------------------------------------


def timed(fn, reps: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    samples, size = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - start) * 1000)
        size = len(out) if hasattr(out, "__len__") else None
    samples.sort()
    return {"p50_ms": round(float(np.percentile(samples, 50)), 2), "p95_ms": round(float(np.percentile(samples, 95)), 2),
            "mean_ms": round(statistics.fmean(samples), 2), "min_ms": round(samples[0], 2),
            "max_ms": round(samples[-1], 2), "reps": reps, "result_rows": size}


TARGETED = ("curve_1000_buckets_across_ranks", "compare_20_runs", "search_runs_all_runs", "hottest_gpus_last_hour",
            "stragglers_one_run")


def run_queries(client, fleet: Fleet, reps: int, warmup: int, now_ms: int) -> dict:
    from runwire.storage.query import RunQueries

    rng = random.Random(3)
    pick = lambda: fleet.ids[rng.randrange(fleet.runs)]  # noqa: E731
    until = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc)
    search_filter = ("(metrics.val_loss < 1.9 and params.lr = '0.0003') or "
                     "(tags.team = 'research' and attributes.status = 'FAILED')")
    gpu_uuid = client.query("SELECT any(gpu_uuid) FROM gpu_samples_1m").result_rows[0][0]
    suite = {
        "curve_1000_buckets_across_ranks": lambda: RunQueries(client).curve(pick(), "loss", buckets=1000, across_ranks=True),
        "compare_20_runs": lambda: RunQueries(client).compare(rng.sample(fleet.ids, min(20, fleet.runs))),
        "search_runs_all_runs": lambda: RunQueries(client).search_runs(search_filter,
                                                                       order_by=["metrics.val_loss ASC"]),
        "hottest_gpus_last_hour": lambda: RunQueries(client).hottest_gpus(window_s=3600, limit=10, until=until),
        "stragglers_one_run": lambda: RunQueries(client).stragglers(pick(), "step_time_s"),
        # more views, not in the targets' list
        "curve_1000_buckets_per_rank": lambda: RunQueries(client).curve(pick(), "loss", buckets=1000),
        "curve_time_1000_buckets_across_ranks": lambda: RunQueries(client).curve(pick(), "loss", x="time",
                                                                                 across_ranks=True),
        "search_runs_top_100": lambda: RunQueries(client).search_runs("metrics.val_loss < 1.9 and params.lr = '0.0003'",
                                                                      order_by=["metrics.val_loss ASC"], max_results=100),
        "search_runs_params_only": lambda: RunQueries(client).search_runs("params.model = 'llama-7b'", max_results=100),
        "get_run": lambda: RunQueries(client).get_run(pick()),
        "list_runs_100": lambda: RunQueries(client).list_runs(limit=100),
        "memory_headroom_last_hour": lambda: RunQueries(client).memory_headroom(window_s=3600, until=until),
        "gpu_timeline_500_buckets": lambda: RunQueries(client).gpu_timeline(gpu_uuid, buckets=500),
        "gpu_series_one_run": lambda: RunQueries(client).gpu_series(fleet.ids[-1], "temperature_c", buckets=500),
    }
    results = {}
    for name, fn in suite.items():
        results[name] = timed(fn, reps, warmup)
        log(f"{name}: p50 {results[name]['p50_ms']} ms, p95 {results[name]['p95_ms']} ms")
    matched = RunQueries(client).search_runs(search_filter)
    results["search_runs_all_runs"]["matched_runs"] = len(matched)
    return results


# --- MLflow vs runwire on the same points --------------------------------------------------------


def mlflow_comparison(server_client_factory, points: int, reps: int, warmup: int) -> dict:
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

    runs, names = 100, METRICS
    steps = max(1, points // (runs * len(names)))
    now_ms = int(time.time() * 1000)
    fleet = Fleet(runs, 1, steps, now_ms, seed=5, prefix="mlf")
    rng = np.random.default_rng(13)
    table = fleet.metric_chunk(0, runs, rng)
    tmp = tempfile.mkdtemp(prefix="runwire-bench-mlflow-")
    try:
        return _mlflow_vs_runwire(tmp, server_client_factory, fleet, table, reps, warmup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_mlflow(uri: str, tmp: str, fleet: "Fleet", table: pa.Table):
    """The fleet's runs (params, tags, status) and the points of ``table`` into MLflow at
    ``uri`` with log_batch (1,000 metrics a call): (client, experiment id, {run: MLflow run id},
    fleet.run_rows(), seconds)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    runs = fleet.runs
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench", artifact_location=f"file://{tmp}/artifacts")
    log(f"MLflow: loading {table.num_rows:,} points into {uri} with log_batch (1,000 metrics a call)")
    started = time.perf_counter()
    ids = {}
    columns = table.to_pydict()
    by_run: dict[str, list] = {}
    for run_id, name, step, ts, value in zip(columns["run_id"], columns["name"], columns["step"], columns["ts"],
                                             columns["value"]):
        by_run.setdefault(run_id, []).append(Metric(name, value, int(ts.timestamp() * 1000), step))
    run_rows = fleet.run_rows()
    params_of: dict[str, dict] = {}
    for row in run_rows["params"]:
        params_of.setdefault(row[1], {})[row[2]] = row[3]
    tags_of: dict[str, dict] = {}
    for row in run_rows["tags"]:
        tags_of.setdefault(row[1], {})[row[2]] = row[3]
    for i, run_id in enumerate(fleet.ids):
        run = client.create_run(experiment, start_time=int(fleet.start_ms[i]), run_name=run_id)
        ids[run_id] = run.info.run_id
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params_of[run_id].items()],
                         tags=[RunTag(k, v) for k, v in tags_of[run_id].items()])
        metrics = by_run[run_id]
        for j in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[j:j + 1000])
        client.set_terminated(run.info.run_id, "FINISHED" if fleet.status[i] != "FAILED" else "FAILED")
        if i % 10 == 9:
            log(f"MLflow: {i + 1} / {runs} runs ({time.perf_counter() - started:.0f} s)")
    return client, experiment, ids, run_rows, time.perf_counter() - started


def _mlflow_vs_runwire(tmp: str, server_client_factory, fleet: "Fleet", table: pa.Table, reps: int, warmup: int) -> dict:
    import mlflow

    from runwire.storage import schema
    from runwire.storage.query import RunQueries

    runs, steps, n_points = fleet.runs, fleet.steps, table.num_rows
    uri = f"sqlite:///{tmp}/mlflow.db"
    client, experiment, ids, run_rows, mlflow_load_s = load_mlflow(uri, tmp, fleet, table)

    rw = server_client_factory("bench_mlflow_cmp")
    schema.migrate(rw)
    for name in ("runs", "run_ranks", "params", "tags"):
        rw.insert(name, run_rows[name], column_names=run_rows["columns"][name])
    started = time.perf_counter()
    rw.insert_arrow("metrics", table, settings={"optimize_on_insert": 0})
    runwire_load_s = time.perf_counter() - started   # with the rollup and summary views
    runwire_merge_wait_s = wait_for_merges(rw, 60)
    check_summary(rw, runs)

    pick_rng = random.Random(9)
    pick = lambda: fleet.ids[pick_rng.randrange(runs)]  # noqa: E731
    mlflow_filter = "metrics.val_loss < 1.9 and params.lr = '0.0003'"
    # One long-lived client each, as an application holds them (RunQueries caches run -> project).
    queries = RunQueries(rw)
    results = {
        "mlflow_get_metric_history": timed(lambda: client.get_metric_history(ids[pick()], "loss"), reps, warmup),
        "runwire_history": timed(lambda: queries.history(pick(), "loss"), reps, warmup),
        "runwire_curve_1000_buckets": timed(lambda: queries.curve(pick(), "loss", buckets=1000), reps, warmup),
        "mlflow_search_runs": timed(lambda: client.search_runs([experiment], mlflow_filter, max_results=1000),
                                    reps, warmup),
        "runwire_search_runs": timed(lambda: queries.search_runs(mlflow_filter), reps, warmup),
    }
    mlflow_hits = len(client.search_runs([experiment], mlflow_filter, max_results=1000))
    runwire_hits = len(RunQueries(rw).search_runs(mlflow_filter))
    ratio = lambda a, b: round(results[a]["p50_ms"] / results[b]["p50_ms"], 1)  # noqa: E731
    out = {
        "points": n_points, "runs": runs, "metrics_per_run": len(METRICS), "steps": steps,
        "mlflow_version": mlflow.__version__, "mlflow_load_s": round(mlflow_load_s, 1),
        "runwire_load_s": round(runwire_load_s, 2), "runwire_merge_wait_s": round(runwire_merge_wait_s, 1),
        "queries": results,
        "search_matches": {"mlflow": mlflow_hits, "runwire": runwire_hits},
        "ratios_p50_mlflow_over_runwire": {
            "get_metric_history_vs_history": ratio("mlflow_get_metric_history", "runwire_history"),
            "get_metric_history_vs_curve": ratio("mlflow_get_metric_history", "runwire_curve_1000_buckets"),
            "search_runs": ratio("mlflow_search_runs", "runwire_search_runs"),
        },
    }
    return out


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1250)
    parser.add_argument("--gpu-samples", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=4_000_000, help="rows per insert (default 4M)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mlflow-points", type=int, default=1_000_000)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--merge-wait-s", type=float, default=600.0, help="longest wait for background merges")
    parser.add_argument("--data-dir", default=None, help="ClickHouse data directory (default: a temporary one, removed)")
    parser.add_argument("--out", default="build/bench/query.json")
    args = parser.parse_args()

    from runwire.deploy.local.clickhouse import ClickHouseServer
    from runwire.storage import schema
    from runwire.storage.client import connect

    result: dict = {"benchmark": "query", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "config": {"runs": args.runs, "ranks": args.ranks, "metrics": len(METRICS), "steps": args.steps,
                               "gpu_samples": args.gpu_samples, "reps": args.reps, "warmup": args.warmup}}
    with ClickHouseServer(data_dir=args.data_dir) as server:
        log(f"ClickHouse (chDB) at {server.url}, data in {server.data_dir}")
        client = connect(server.url, "bench", send_receive_timeout=600)
        schema.migrate(client)
        now_ms = int(time.time() * 1000)
        fleet = Fleet(args.runs, args.ranks, args.steps, now_ms)
        result["load"] = load(client, fleet, args.gpu_samples, args.chunk_rows, now_ms)
        log("waiting for background merges ...")
        result["load"]["merge_wait_s"] = round(wait_for_merges(client, args.merge_wait_s), 1)
        result["load"]["metrics_summary_keys"] = check_summary(client, fleet.runs)
        result["metric_points"] = client.query("SELECT count() FROM metrics").result_rows[0][0]
        result["gpu_samples"] = client.query("SELECT count() FROM gpu_samples").result_rows[0][0]
        result["storage"] = parts(client)
        log(f"loaded {result['metric_points']:,} metric points and {result['gpu_samples']:,} GPU samples")
        result["queries"] = run_queries(client, fleet, args.reps, args.warmup, now_ms)
        result["loadavg_during_queries"] = [round(v, 2) for v in os.getloadavg()]
        queries = result["queries"]
        result["targets"] = {"p50_ms": TARGET_P50_MS, "p95_ms": TARGET_P95_MS,
                             "met": {name: queries[name]["p50_ms"] <= TARGET_P50_MS
                                     and queries[name]["p95_ms"] <= TARGET_P95_MS for name in TARGETED}}
        if not args.skip_mlflow:
            result["mlflow_comparison"] = mlflow_comparison(
                lambda db: connect(server.url, db, send_receive_timeout=600), args.mlflow_points, args.reps, args.warmup)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
