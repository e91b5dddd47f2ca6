"""Emitter benchmark: the cost of logging to the training loop, runwire vs wandb vs MLflow.

    python bench/emitter.py --out build/bench/emitter.json      (make bench-emitter)

Each logger runs in its own fresh process (imports and memory do not mix), one after the other
in one invocation, logging N calls of a dict of K floats:
- loop_us:  microseconds per call inside the training loop;
- total_us: the same including the final flush/finish (all background encoding and sending);
            finish_ms is finish() alone: it waits for the run's metadata capture (git, packages;
            started at init, a fixed cost per run that a 30 ms benchmark run cannot hide), so
            "runwire_no_capture" repeats the run with capture=False;
- rss_mb:   resident memory the logger added right after the loop (a burst of N calls can sit in
            the queue), minus before import. runwire also reports rss_import_mb (importing it:
            grpc alone is about 25 MB), and runwire_paced_memory the peak at a sustained
            2,000 calls/s with default bounds (steady state), in a process of its own.
runwire logs to a real gateway process on loopback. "runwire" uses a gateway that acknowledges
on receipt (the emitter's own cost); "runwire_direct" the embedded stack (gateway inserting into
ClickHouse served by chDB), all on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def payloads(n: int, k: int) -> list[dict]:
    keys = [f"metric_{j}" for j in range(k)]
    return [{key: i * 0.001 + j for j, key in enumerate(keys)} for i in range(min(n, 1000))]


# -- one logger per process ------------------------------------------------------------------

def one_runwire(n: int, k: int, gateway: str, capture: bool = True) -> dict:
    before = rss_mb()
    import runwire

    imported = rss_mb() - before
    data = payloads(n, k)
    run = runwire.init(project="bench", gateway=gateway, gpu=False, spool_dir=tempfile.mkdtemp(), capture=capture)
    log = run.log
    start = time.perf_counter()
    for i in range(n):
        log(data[i % len(data)], step=i)
    loop = time.perf_counter() - start
    rss = rss_mb() - before
    finish_started = time.perf_counter()
    summary = run.finish()
    total = time.perf_counter() - start
    assert summary["runwire.unacked"] == 0 and summary["runwire.dropped"] == 0, summary
    return {"n": n, "loop_us": loop / n * 1e6, "total_us": total / n * 1e6,
            "finish_ms": (time.perf_counter() - finish_started) * 1e3, "rss_mb": round(rss, 1),
            "rss_import_mb": round(imported, 1), "send_latency_mean_ms": summary["runwire.send_latency_mean_s"] * 1e3}


def one_runwire_paced(k: int, gateway: str, rate_hz: float = 2000.0, seconds: float = 5.0) -> dict:
    """Memory at a sustained (not burst) logging rate, with default bounds."""
    before = rss_mb()
    import runwire

    imported = rss_mb() - before
    data = payloads(1000, k)
    run = runwire.init(project="bench", gateway=gateway, gpu=False, spool_dir=tempfile.mkdtemp())
    start = time.perf_counter()
    n = int(rate_hz * seconds)
    peak = 0.0
    for i in range(n):
        run.log(data[i % len(data)], step=i)
        if i % 100 == 99:
            delay = start + (i + 1) / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if i % 1000 == 999:
                peak = max(peak, rss_mb() - before)
    summary = run.finish()
    assert summary["runwire.unacked"] == 0 and summary["runwire.dropped"] == 0, summary
    return {"calls_per_s": rate_hz, "seconds": seconds, "rss_import_mb": round(imported, 1),
            "rss_steady_peak_mb": round(peak, 1), "emitter_own_mb": round(peak - imported, 1)}


def one_runwire_stalled(n: int, k: int, gateway: str, gateway_pid: int) -> dict:
    """Worst single log() while the gateway process is frozen (SIGSTOP)."""
    import runwire

    data = payloads(n, k)
    run = runwire.init(project="bench", gateway=gateway, gpu=False, spool_dir=tempfile.mkdtemp())
    run.log(data[0], step=0)
    run.flush(10)
    os.kill(gateway_pid, signal.SIGSTOP)
    took = [0.0] * n
    try:
        perf = time.perf_counter
        for i in range(n):
            t = perf()
            run.log(data[i % len(data)], step=i)
            took[i] = perf() - t
    finally:
        os.kill(gateway_pid, signal.SIGCONT)
    run.finish()
    took.sort()
    # The worst call on a shared 2-core machine is one scheduling hiccup; p99.9 shows the rest.
    return {"n": n, "worst_log_us": took[-1] * 1e6, "p999_log_us": took[int(n * 0.999)] * 1e6}


def one_wandb(n: int, k: int) -> dict:
    before = rss_mb()
    os.environ["WANDB_SILENT"] = "true"
    import wandb

    data = payloads(n, k)
    run = wandb.init(mode="offline", project="bench", dir=tempfile.mkdtemp())
    start = time.perf_counter()
    for i in range(n):
        run.log(data[i % len(data)], step=i)
    loop = time.perf_counter() - start
    rss = rss_mb() - before
    run.finish()
    total = time.perf_counter() - start
    return {"n": n, "loop_us": loop / n * 1e6, "total_us": total / n * 1e6, "rss_mb": round(rss, 1)}


def one_mlflow(n: int, k: int, synchronous: bool) -> dict:
    before = rss_mb()
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    data = payloads(n, k)
    mlflow.start_run()
    start = time.perf_counter()
    for i in range(n):
        mlflow.log_metrics(data[i % len(data)], step=i, synchronous=synchronous)
    loop = time.perf_counter() - start
    rss = rss_mb() - before
    mlflow.end_run()  # waits for the asynchronous queue
    total = time.perf_counter() - start
    return {"n": n, "loop_us": loop / n * 1e6, "total_us": total / n * 1e6, "rss_mb": round(rss, 1)}


def sampler_cost() -> dict:
    from runwire.gpu import GpuSampler
    from runwire.simulated_nvml import FakeNvml

    sampler = GpuSampler(lambda samples: None, interval_s=0.1, sample_all=True, nvml=FakeNvml.h100_node(8))
    sampler.start(run_thread=False)
    for _ in range(200):
        sampler.sample_once()
    stats = sampler.stats()
    sampler.shutdown()
    return {"gpus": 8, "us_per_sample_per_gpu_fake_nvml": stats["mean_s_per_sample_per_gpu"] * 1e6}


# -- gateways ----------------------------------------------------------------------------------

def serve_ack_gateway() -> None:
    """A real gateway whose sink acknowledges on receipt (isolates the emitter's cost)."""
    from runwire.ingest.gateway import Gateway, GatewayConfig

    class AckSink:
        def submit(self, kind, key, value, done):
            done(None)

        def close(self):
            pass

    gateway = Gateway(GatewayConfig(listen="127.0.0.1:0", mode="direct", clickhouse_url="unused"), AckSink()).start()
    print(gateway.address, flush=True)
    sys.stdin.read()
    gateway.stop()


def serve_direct_stack() -> None:
    from runwire.deploy.local.stack import LocalStack

    with LocalStack() as stack:
        print(stack.gateway.address, flush=True)
        sys.stdin.read()


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(HERE), "--serve", kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    address = proc.stdout.readline().strip()
    if not address:
        raise RuntimeError(f"{kind} gateway did not start")
    return proc, address


def stop_server(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_child(*args: str, n: int | None = None) -> dict:
    count = ["--n", str(n)] if n is not None else []
    out = subprocess.run([sys.executable, str(HERE), *count, "--one", *args], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--mlflow-sync-n", type=int, default=2_000, help="synchronous MLflow is slow: fewer calls")
    parser.add_argument("--out", default="build/bench/emitter.json")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--one", nargs="+")
    parser.add_argument("--serve")
    args = parser.parse_args()

    if args.serve:
        {"ack": serve_ack_gateway, "direct": serve_direct_stack}[args.serve]()
        return
    if args.one:
        name, rest = args.one[0], args.one[1:]
        result = {
            "runwire": lambda: one_runwire(args.n, args.k, rest[0]),
            "runwire_no_capture": lambda: one_runwire(args.n, args.k, rest[0], capture=False),
            "paced": lambda: one_runwire_paced(args.k, rest[0]),
            "stalled": lambda: one_runwire_stalled(args.n, args.k, rest[0], int(rest[1])),
            "wandb": lambda: one_wandb(args.n, args.k),
            "mlflow_async": lambda: one_mlflow(args.n, args.k, False),
            "mlflow_sync": lambda: one_mlflow(args.n, args.k, True),
            "sampler": sampler_cost,
        }[name]()
        print(json.dumps(result))
        return

    result: dict = {"N": args.n, "K": args.k, "machine": f"{platform.machine()} {os.cpu_count()} cores",
                    "python": platform.python_version()}
    proc, address = start_server("ack")
    try:
        result["runwire"] = run_child("runwire", address)
        result["runwire_no_capture"] = run_child("runwire_no_capture", address)
        result["runwire_paced_memory"] = run_child("paced", address)
        result["runwire_stalled_gateway"] = run_child("stalled", address, str(proc.pid))
    finally:
        stop_server(proc)
    proc, address = start_server("direct")
    try:
        result["runwire_direct"] = run_child("runwire", address)
    finally:
        stop_server(proc)
    result["gpu_sampler"] = run_child("sampler")
    if not args.skip_peers:
        result["wandb"] = run_child("wandb")
        result["mlflow_async"] = run_child("mlflow_async")
        result["mlflow_sync"] = run_child("mlflow_sync", n=args.mlflow_sync_n)
        total = result["runwire"]["total_us"]
        result["ratio_total_vs_wandb"] = round(result["wandb"]["total_us"] / total, 1)
        result["ratio_total_vs_mlflow_async"] = round(result["mlflow_async"]["total_us"] / total, 1)
        result["ratio_total_vs_mlflow_sync"] = round(result["mlflow_sync"]["total_us"] / total, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
