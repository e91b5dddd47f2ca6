"""The identical MLflow client script against `mlflow server` (sqlite, default workers) and against
runwire's MLflow API (`runwire mlflow-server` -> Kafka -> ingest -> ClickHouse), side by side.

    python bench/mlflow_compat.py --out build/bench/mlflow.json          (make bench-mlflow)

Each of N client processes creates a run and sends B `log_batch` calls of 1,000 metrics (10
names x 100 steps); the clients start logging together once all are set up, and throughput is
points acknowledged per second of wall time, from the first call to the last answer. Then, from one client: `search_runs` (a metric filter and order) and
`get_metric_history` latencies (median of 7), and every value of every run read back and compared
with what was logged (`parity`). For runwire also the time from the last acknowledgement until
every point is queryable. Both servers run as their own processes on this machine, one after
the other (not at once: they would share the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve()
# Run as a script, this file's folder leads sys.path and its name would hide the mlflow package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
T0 = 1_760_000_000_000
NAMES = [f"m{i}" for i in range(10)]
STEPS_PER_BATCH = 100


def value(client: int, name: int, step: int) -> float:
    return client * 1000.0 + name + step / 7.0


# -- the client script: identical for both servers --------------------------------------------

def client_main(args) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(args.url)
    experiment_id = client.get_experiment_by_name(args.experiment).experiment_id
    run_id = client.create_run(experiment_id, run_name=f"client-{args.client}",
                               start_time=T0 + args.client).info.run_id
    batches = []
    for b in range(args.batches):
        batches.append([Metric(NAMES[n], value(args.client, n, step), T0 + step, step)
                        for step in range(b * STEPS_PER_BATCH, (b + 1) * STEPS_PER_BATCH)
                        for n in range(len(NAMES))])
    # Start together: no client's import and set-up (seconds of CPU) overlaps another's timed calls.
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    for batch in batches:
        client.log_batch(run_id, metrics=batch)
    end = time.time()
    print(json.dumps({"run_id": run_id, "start": start, "end": end, "points": sum(map(len, batches))}), flush=True)


def run_clients(url: str, experiment: str, clients: int, batches: int) -> dict:
    procs = [subprocess.Popen([sys.executable, str(HERE), "--client", str(i), "--url", url, "--experiment", experiment,
                               "--batches", str(batches)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(clients)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"client failed before logging ({proc.wait()})")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"client failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    start, end = min(r["start"] for r in results), max(r["end"] for r in results)
    points = sum(r["points"] for r in results)
    return {"points": points, "seconds": end - start, "points_per_s": points / (end - start), "end": end,
            "run_ids": [r["run_id"] for r in results]}


def read_back(url: str, experiment_id: str, run_ids: list[str], batches: int) -> dict:
    """Query latencies and whether every logged value reads back exactly."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    timings = {"search_runs": [], "get_metric_history": []}
    for _ in range(7):
        t = time.perf_counter()
        found = client.search_runs([experiment_id], "metrics.m0 >= 0", order_by=["metrics.m1 DESC"])
        timings["search_runs"].append(time.perf_counter() - t)
        t = time.perf_counter()
        client.get_metric_history(run_ids[0], "m0")
        timings["get_metric_history"].append(time.perf_counter() - t)
    steps = batches * STEPS_PER_BATCH
    parity = len(found) == len(run_ids)
    for i, run_id in enumerate(run_ids):
        for n, name in enumerate(NAMES):
            history = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, name))
            parity &= history == [(s, T0 + s, value(i, n, s)) for s in range(steps)]
    return {"query_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in timings.items()}, "parity": parity}


# -- the servers -------------------------------------------------------------------------------

def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL when it has not exited in 30 s (a loaded
    machine: `mlflow server`'s workers were seen to take longer)."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_mlflow(args, data: str) -> dict:
    from mlflow import MlflowClient

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{data}/mlflow.db",
                             "--artifacts-destination", f"{data}/artifacts"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc)
        experiment_id = MlflowClient(url).create_experiment("bench")
        load = run_clients(url, "bench", args.clients, args.batches)
        return {**load, **read_back(url, experiment_id, load["run_ids"], args.batches)}
    finally:
        stop(proc)


def bench_runwire(args, data: str) -> dict:
    from mlflow import MlflowClient

    from runwire.deploy.local.stack import LocalStack

    with LocalStack(data_dir=data, kafka=True) as stack:
        port = free_port()
        env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=stack.kafka_bootstrap, RUNWIRE_CLICKHOUSE_URL=stack.clickhouse_url,
                   RUNWIRE_CLICKHOUSE_DATABASE=stack.database, RUNWIRE_TOPIC_PREFIX=stack.topic_prefix,
                   RUNWIRE_MLFLOW_LISTEN=f"127.0.0.1:{port}")
        proc = subprocess.Popen([sys.executable, "-m", "runwire.deploy.cli", "mlflow-server"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url, proc)
            experiment_id = MlflowClient(url).create_experiment("bench")
            load = run_clients(url, "bench", args.clients, args.batches)
            client = stack.client()
            total = load["points"]
            while client.query("SELECT count() FROM metrics WHERE project = 'bench'").result_rows[0][0] < total:
                time.sleep(0.05)
            load["ack_to_queryable_s"] = round(time.time() - load["end"], 3)
            return {**load, **read_back(url, experiment_id, load["run_ids"], args.batches)}
        finally:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench/mlflow.json")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batches", type=int, default=20, help="log_batch calls of 1,000 points per client")
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--experiment", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client_main(args)
        return
    with tempfile.TemporaryDirectory() as mlflow_dir, tempfile.TemporaryDirectory() as runwire_dir:
        theirs = bench_mlflow(args, mlflow_dir)
        ours = bench_runwire(args, runwire_dir)
    result = {
        "runwire_points_per_s": round(ours["points_per_s"]),
        "mlflow_points_per_s": round(theirs["points_per_s"]),
        "ratio": round(ours["points_per_s"] / theirs["points_per_s"], 2),
        "parity": bool(ours["parity"] and theirs["parity"]),
        "query_ms": {q: {"runwire": ours["query_ms"][q], "mlflow": theirs["query_ms"][q]}
                     for q in ("search_runs", "get_metric_history")},
        "runwire_ack_to_queryable_s": ours["ack_to_queryable_s"],
        "points": ours["points"], "clients": args.clients, "batch_size": len(NAMES) * STEPS_PER_BATCH,
        "seconds": {"runwire": round(ours["seconds"], 2), "mlflow": round(theirs["seconds"], 2)},
        "parity_each": {"runwire": ours["parity"], "mlflow": theirs["parity"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
