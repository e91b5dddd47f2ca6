"""End-to-end benchmark: S rank processes with the real emitter -> gateway -> Kafka -> ingest ->
ClickHouse (chDB server), every component its own process on this machine; then the same kind
of points into an MLflow tracking server (sqlite) from the same number of clients.

    python bench/e2e.py --out build/bench/e2e.json          (make bench-e2e)

Reported: points emitted and stored; points/s emitted (to the gateway's acknowledgement) and
stored (from the first point logged to the last one visible in ClickHouse); emit-to-visible
lag (p50/p99 of the age of the newest visible point per rank, sampled every second); lost and
duplicated (exact, counted in ClickHouse); bytes per point on disk after merges; CPU share
per component. The MLflow server runs with its defaults (4 workers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import curves, drain, percentile, start_cli, wait_line

HERE = Path(__file__).resolve()


# -- the load: one rank ------------------------------------------------------------------------

def rank_main(args) -> None:
    import runwire

    os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(args.rank))
    rows = curves(args.k, 4096, args.rank)
    run = runwire.init(project="bench", run_id=args.run_id, gateway=args.gateway, gpu=False,
                       spool_dir=tempfile.mkdtemp(), max_queue=200_000)
    calls_per_s = args.rate / args.k
    start_wall, start = time.time(), time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= args.duration:
            break
        due = int(elapsed * calls_per_s)
        while step < due:
            run.log(rows[step % len(rows)], step=step)
            step += 1
        time.sleep(0.002)
    summary = run.finish(timeout=120)
    print(json.dumps({"points": summary["runwire.points"], "dropped_calls": summary["runwire.dropped"],
                      "unacked": summary["runwire.unacked"], "emit_s": time.perf_counter() - start,
                      "start_wall": start_wall}), flush=True)


# -- MLflow peer -------------------------------------------------------------------------------

def mlflow_client_main(args) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.gateway)
    run = client.create_run(experiment_id="0")  # the Default experiment
    rows = curves(args.k, 4096, args.rank)
    points, step = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.duration:
        batch = []
        while len(batch) + args.k <= 1000:  # MLflow's log_batch limit
            ts = int(time.time() * 1000)
            batch.extend(Metric(key, value, ts, step) for key, value in rows[step % len(rows)].items())
            step += 1
        client.log_batch(run.info.run_id, metrics=batch)
        points += len(batch)
    print(json.dumps({"points": points, "seconds": time.perf_counter() - start}), flush=True)


def bench_mlflow(ranks: int, k: int, duration: float, workers: int = 4) -> dict:
    from runwire.deploy.local.kafka import free_port

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-mlflow-")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
         "--default-artifact-root", f"{workdir}/artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.5)
        clients = [subprocess.Popen([sys.executable, str(HERE), "--mlflow-client", "--rank", str(r), "--k", str(k),
                                     "--duration", str(duration), "--gateway", url], stdout=subprocess.PIPE, text=True)
                   for r in range(ranks)]
        results = [json.loads(c.communicate(timeout=duration + 300)[0].strip().splitlines()[-1]) for c in clients]
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    points = sum(r["points"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return {"clients": ranks, "points": points, "seconds": round(seconds, 1), "points_per_s": round(points / seconds)}


# -- the pipeline ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.NoSuchProcess:
        return float("nan")


def bench_pipeline(args) -> dict:
    from runwire.deploy.local.clickhouse import ClickHouseServer
    from runwire.deploy.local.kafka import KafkaServer, free_port
    from runwire.ingest.kafka_io import topic_names
    from runwire.proto.contract import METRICS
    from runwire.storage.client import connect

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    with ClickHouseServer() as clickhouse, KafkaServer(num_partitions=args.partitions) as kafka:
        clickhouse.start()
        kafka.start()
        env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=kafka.bootstrap, RUNWIRE_CLICKHOUSE_URL=clickhouse.url,
                   RUNWIRE_TOPIC_PARTITIONS=str(args.partitions))
        gateway_address = f"127.0.0.1:{free_port()}"
        ingest = start_cli(["ingest", "--workers", "1"], env)
        wait_line(ingest, "runwire ingest:")
        drain(ingest)
        gateway = start_cli(["gateway", "--listen", gateway_address], env)
        wait_line(gateway, "listening on")
        drain(gateway)
        client = connect(clickhouse.url, "runwire")
        components = {"gateway": gateway.pid, "ingest": ingest.pid, "kafka": kafka.pid, "clickhouse": clickhouse.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in components.items()}
        started = time.perf_counter()
        ranks = [subprocess.Popen([sys.executable, str(HERE), "--rank-process", "--rank", str(r), "--world",
                                   str(args.ranks), "--run-id", run_id, "--gateway", gateway_address,
                                   "--rate", str(args.rate / args.ranks), "--k", str(args.k),
                                   "--duration", str(args.duration)], stdout=subprocess.PIPE, text=True)
                 for r in range(args.ranks)]
        rank_pids = [r.pid for r in ranks]
        lags: list[float] = []
        rank_cpu = {pid: 0.0 for pid in rank_pids}
        while any(r.poll() is None for r in ranks):
            time.sleep(1.0)
            for pid in rank_pids:
                seconds = cpu_seconds(pid)
                if not math.isnan(seconds):
                    rank_cpu[pid] = seconds
            try:
                # One metric (the key's prefix) is enough to see how fresh each rank's data is,
                # without the probe itself loading ClickHouse.
                rows = client.query("SELECT rank, toUnixTimestamp64Micro(max(ts)) FROM metrics "
                                    "WHERE project = 'bench' AND run_id = {r:String} AND name = 'loss' GROUP BY rank",
                                    parameters={"r": run_id}).result_rows
            except Exception:
                continue
            now_us = time.time() * 1e6
            if time.perf_counter() - started > 5:  # skip warm-up
                lags.extend((now_us - newest) / 1e6 for _, newest in rows)
        summaries = [json.loads(r.communicate()[0].strip().splitlines()[-1]) for r in ranks]
        emitted = sum(s["points"] for s in summaries)
        emit_seconds = max(s["emit_s"] for s in summaries)
        # Wait until ingest caught up, then count.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stored = client.query("SELECT count() FROM metrics WHERE run_id = {r:String}",
                                  parameters={"r": run_id}).result_rows[0][0]
            if stored >= emitted:
                break
            time.sleep(1)
        caught_up = time.perf_counter() - started
        # Sustained end to end: from the first point logged to the last one visible.
        first_to_last_visible = time.time() - min(s["start_wall"] for s in summaries)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in components.items()}
        cpu["ranks"] = round(sum(rank_cpu.values()), 1)
        raw, distinct = client.query("SELECT count(), uniqExact(name, rank, step, ts) FROM metrics WHERE run_id = {r:String}",
                                     parameters={"r": run_id}).result_rows[0]
        client.command("OPTIMIZE TABLE metrics FINAL")
        disk = client.query("SELECT sum(data_compressed_bytes), sum(rows) FROM system.parts WHERE database = 'runwire' "
                            "AND table = 'metrics' AND active").result_rows[0]
        # What the metrics topic holds per point (one replica; the producer's compression included).
        topic = topic_names("runwire.")[METRICS]
        kafka_bytes = sum(f.stat().st_size for f in kafka.logs_dir.glob(f"{topic}-*/*.log"))
        for proc in (gateway, ingest):
            proc.terminate()
            proc.wait(60)
    return {
        "mode": "kafka", "ranks": args.ranks, "metrics_per_call": args.k, "target_points_per_s": args.rate,
        "duration_s": args.duration, "points": emitted, "stored": int(distinct),
        "points_per_s": round(emitted / emit_seconds), "stored_points_per_s": round(distinct / first_to_last_visible),
        "lag_p50_s": percentile(lags, 0.50), "lag_p99_s": percentile(lags, 0.99),
        "lost": int(emitted - distinct), "duplicated": int(raw - distinct),
        "dropped_calls_in_emitters": sum(s["dropped_calls"] for s in summaries),
        "bytes_per_point": round(disk[0] / disk[1], 2) if disk[1] else None,
        "kafka_bytes_per_point": round(kafka_bytes / emitted, 2) if emitted else None,
        "cpu_seconds": cpu, "cpu_share": {k: round(v / caught_up / (os.cpu_count() or 1), 3) for k, v in cpu.items()},
        # CPU-microseconds each component spent per stored point; the server side is all but the ranks.
        "cpu_us_per_point": {k: round(v * 1e6 / distinct, 3) for k, v in cpu.items()} if distinct else {},
        "server_cpu_us_per_point": round(sum(v for k, v in cpu.items() if k != "ranks") * 1e6 / distinct, 3)
        if distinct else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1_000_000, help="target points/s over all ranks")
    parser.add_argument("--k", type=int, default=50, help="metrics per log() call")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--mlflow-duration", type=float, default=20)
    parser.add_argument("--mlflow-workers", type=int, default=4, help="mlflow server --workers (its default: 4)")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--out", default="build/bench/e2e.json")
    parser.add_argument("--rank-process", action="store_true")
    parser.add_argument("--mlflow-client", action="store_true")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--run-id")
    parser.add_argument("--gateway")
    args = parser.parse_args()
    if args.rank_process:
        return rank_main(args)
    if args.mlflow_client:
        return mlflow_client_main(args)

    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores", **bench_pipeline(args)}
    if not args.skip_mlflow:
        result["mlflow"] = bench_mlflow(args.ranks, args.k, args.mlflow_duration, args.mlflow_workers)
        result["ratio_vs_mlflow"] = round(result["points_per_s"] / max(1, result["mlflow"]["points_per_s"]), 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
