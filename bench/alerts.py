"""Alert benchmark: anomalies injected into simulated runs while the pipeline carries at least
500,000 background points/s through Kafka; how fast does the webhook hear about them?

    python bench/alerts.py --out build/bench/alerts.json          (make bench-alerts)

Everything real except the GPUs: rank processes run the real emitter (GPUs behind the fake
NVML, one per rank), `runwire gateway` (Kafka mode) in its own process, a local single-node
Kafka broker and ClickHouse server, the ingest worker in this process with the alert engine as
its observer (`IngestWorker(..., observers=[engine.observe])`), and a webhook receiver in its
own process (so its arrival timestamps do not wait for this process's GIL).

Runs (project "bench"):
  bench-bg-*      background: --ranks ranks at --rate points/s in total, --k metrics per call,
                  healthy GPUs; a clean run
  bench-anom-N-*  (--anomaly-runs of them) 4 ranks, one kind of anomaly each, injected from
                  --inject-at s on in cycles (--hold-s anomalous, then healthy until the next
                  --cycle-s): rank 0 overheats (GPU pinned at 95 C), rank 1 nears OOM (97%
                  memory), rank 2 gets an uncorrected ECC error, rank 3 logs NaN losses
  bench-strag-*   4 ranks; rank 3's step time doubles from --inject-at s on (a periodic rule)

Every injection must fire its rule (`fired` of `injected`); any other alert anywhere is counted
in `false_positives` (except the expected consequences of an injected anomaly, e.g. the 80 C
warning of an overheating GPU), with `false_positives_on_clean_runs` for the background run.

Latency is measured from the emit time of the sample that made the alert fire (the GPU sample's
or the logged point's timestamp, carried in the payload as alert.observed_at_ns) to its arrival
at the receiver. For-durations are shortened for the bench project (rules file below) so the
run stays short; with for_s > 0 the "sample that made it fire" is the one completing the
duration. The straggler is a periodic (SQL) rule: its latency is reported separately, from
the injection.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import curves, drain, percentile, start_cli, wait_line

HERE = Path(__file__).resolve()
PROJECT = "bench"

RULES_TOML = """
# Bench overrides: shorter durations so anomalies fire (and resolve, for the next cycle) within the run.
[projects.bench.rules.gpu_temperature_critical]
for_s = 5
clear_s = 2
[projects.bench.rules.gpu_memory_near_oom]
for_s = 3
clear_s = 2
[projects.bench.rules.gpu_ecc_uncorrected]
clear_s = 2
[projects.bench.rules.loss_nonfinite]
clear_s = 2
[projects.bench.rules.straggler]
window_s = 10
for_s = 10
clear_s = 5
interval_s = 2
"""

# Scenario -> (rule that must fire, rules that may fire as a consequence).
EXPECTED = {
    "overheat": ("gpu_temperature_critical", {"gpu_temperature_warning", "gpu_throttle"}),
    "near_oom": ("gpu_memory_near_oom", set()),
    "ecc": ("gpu_ecc_uncorrected", set()),
    "nan_loss": ("loss_nonfinite", set()),
    "straggler": ("straggler", set()),
}
ANOMALY_RANKS = {0: "overheat", 1: "near_oom", 2: "ecc", 3: "nan_loss"}
STREAM = {"overheat", "near_oom", "ecc", "nan_loss"}


# -- rank processes ----------------------------------------------------------------------------

def rank_main(args) -> None:
    import runwire
    import runwire.run as run_module
    from runwire.simulated_nvml import FakeNvml

    os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(args.world), LOCAL_RANK="0",
                      RUNWIRE_HOST=f"{args.run_id}-node{args.rank}")
    fake = FakeNvml.h100_node(n_gpus=1, node_seed=f"{args.run_id}:{args.rank}")
    run_module._nvml_override = lambda: fake  # this rank's simulated GPU (the seam the demo uses too)
    run = runwire.init(project=PROJECT, run_id=args.run_id, gateway=args.gateway, gpu=True, gpu_interval_s=0.5,
                       spool_dir=tempfile.mkdtemp(), max_queue=200_000)
    gpu = fake.gpus[0]
    scenario = args.scenario
    rows = curves(args.k, 4096, args.rank) if args.rate else None
    rng = random.Random(args.rank)
    start = time.perf_counter()
    cycle = -1      # injection cycles started
    anomalous = False
    step = 0
    light_every = 0.05  # anomaly and straggler runs: 20 steps/s
    next_light = start
    while True:
        now = time.perf_counter()
        elapsed = now - start
        if elapsed >= args.duration:
            break
        if scenario and elapsed >= args.inject_at:
            # The straggler is injected once and stays; the others cycle on and off.
            phase = elapsed - args.inject_at
            want_cycle = int(phase // args.cycle_s) if scenario != "straggler" else 0
            want_on = scenario == "straggler" or phase % args.cycle_s < args.hold_s
            if want_on and want_cycle != cycle and elapsed < args.duration - args.hold_s - 2:
                cycle, anomalous = want_cycle, True
                ns = time.time_ns()
                if scenario == "overheat":
                    gpu.set_temperature(95)
                elif scenario == "near_oom":
                    gpu.set_memory_used(int(0.97 * gpu.memory_total))
                elif scenario == "ecc":
                    gpu.add_ecc_errors(uncorrected=1)
                print(json.dumps({"injected": scenario, "run_id": args.run_id, "rank": args.rank, "ns": ns,
                                  "cycle": cycle, "gpu_uuid": gpu.uuid}), flush=True)
            elif anomalous and not want_on:
                anomalous = False
                if scenario == "overheat":
                    gpu.set_temperature(65)
                elif scenario == "near_oom":
                    gpu.set_memory_used(int(0.6 * gpu.memory_total))
        if rows is not None:  # background load
            due = int(elapsed * args.rate / args.k)
            while step < due:
                run.log(rows[step % len(rows)], step=step)
                step += 1
            time.sleep(0.002)
            continue
        if now < next_light:
            time.sleep(min(0.01, next_light - now))
            continue
        next_light += light_every
        step_time = 0.5 * (1 + 0.02 * rng.random())
        loss = 2.0 * math.exp(-step / 3000) + 1.1 + 0.02 * rng.gauss(0, 1)
        if anomalous and scenario == "straggler":
            step_time *= 2.0
        if anomalous and scenario == "nan_loss":
            loss = float("nan")
        run.log({"loss": loss, "step_time_s": step_time, "tokens_per_s": 250_000 / step_time}, step=step)
        step += 1
    summary = run.finish(timeout=120)
    print(json.dumps({"summary": True, "run_id": args.run_id, "rank": args.rank, "points": summary["runwire.points"],
                      "dropped": summary["runwire.dropped"], "emit_s": time.perf_counter() - start}), flush=True)


# -- the pipeline ------------------------------------------------------------------------------

def bench(args) -> dict:
    from runwire.deploy.local.clickhouse import ClickHouseServer
    from runwire.deploy.local.kafka import KafkaServer, free_port
    from runwire.ingest.alerts.engine import AlertConfig, build_engine
    from runwire.ingest.worker import IngestConfig, IngestWorker
    from runwire.storage.client import connect
    from runwire.storage.schema import migrate
    from runwire.storage.writer import StorageWriter

    suffix = uuid.uuid4().hex[:6]
    runs = {"bg": f"bench-bg-{suffix}", "strag": f"bench-strag-{suffix}"}
    anomaly_runs = [f"bench-anom-{i}-{suffix}" for i in range(args.anomaly_runs)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    rules_path = workdir / "rules.toml"
    rules_path.write_text(RULES_TOML)
    received: list[dict] = []
    engine_samples: list[dict] = []
    arrivals: list[tuple] = []

    with ClickHouseServer() as clickhouse, KafkaServer(num_partitions=args.partitions) as kafka:
        clickhouse.start()
        kafka.start()
        env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=kafka.bootstrap, RUNWIRE_CLICKHOUSE_URL=clickhouse.url,
                   RUNWIRE_TOPIC_PARTITIONS=str(args.partitions))
        receiver = subprocess.Popen([sys.executable, "-m", "runwire.ingest.alerts.receiver"], stdout=subprocess.PIPE,
                                    text=True)
        gateway = None
        worker = engine = worker_thread = None
        ranks: list[tuple[str, subprocess.Popen]] = []
        try:
            url = wait_line(receiver, "RUNWIRE_ALERT_WEBHOOK_URL=", 30).strip().split("=", 1)[1]

            def read_receiver():
                for line in receiver.stdout:
                    try:
                        received.append(json.loads(line))
                    except ValueError:
                        pass

            threading.Thread(target=read_receiver, name="bench-receiver-reader", daemon=True).start()
            gateway_address = f"127.0.0.1:{free_port()}"
            gateway = start_cli(["gateway", "--listen", gateway_address], env)
            wait_line(gateway, "listening on")
            drain(gateway)

            client = connect(clickhouse.url, "runwire")
            migrate(client)
            config = AlertConfig.from_settings(webhook_url=url, rules=str(rules_path), interval_s=2.0, log=False)
            engine = build_engine(config, lambda: connect(clickhouse.url, "runwire")).start()
            ingest_config = IngestConfig.from_settings(kafka_bootstrap=kafka.bootstrap, clickhouse_url=clickhouse.url,
                                                       topic_partitions=args.partitions)
            def stamp(kind, record):
                # When each anomaly-run record reached the observer: splits the latency into
                # emit -> ingest observer, and observer -> webhook.
                if record.get("run_id") in watched and kind in ("gpu", "metrics"):
                    ts = record["timestamps_ns"]
                    if len(ts):
                        arrivals.append((record["run_id"], record["rank"], int(ts.min()), int(ts.max()),
                                         time.time_ns()))

            watched = set(anomaly_runs) | {runs["strag"]}
            worker = IngestWorker(ingest_config, StorageWriter(client), observers=[stamp, engine.observe])
            worker_thread = threading.Thread(target=worker.run, name="runwire-ingest", daemon=True)
            worker_thread.start()

            def launch(run_id, rank, world, scenario="", rate=0.0):
                cmd = [sys.executable, str(HERE), "--rank-process", "--rank", str(rank), "--world", str(world),
                       "--run-id", run_id, "--gateway", gateway_address, "--duration", str(args.duration),
                       "--inject-at", str(args.inject_at), "--k", str(args.k), "--rate", str(rate),
                       "--cycle-s", str(args.cycle_s), "--hold-s", str(args.hold_s)]
                if scenario:
                    cmd += ["--scenario", scenario]
                ranks.append((run_id, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))

            started = time.monotonic()
            for r in range(args.ranks):
                launch(runs["bg"], r, args.ranks, rate=args.rate / args.ranks)
            for run_id in anomaly_runs:
                for r, scenario in ANOMALY_RANKS.items():
                    launch(run_id, r, 4, scenario)
            for r in range(4):
                launch(runs["strag"], r, 4, "straggler" if r == 3 else "")
            while any(p.poll() is None for _, p in ranks):
                time.sleep(1.0)
                engine_samples.append({"t": round(time.monotonic() - started, 1), **{
                    k: v for k, v in engine.stats().items() if k in ("observed", "dropped", "queued")}})
            outputs = [(run_id, p.communicate()[0]) for run_id, p in ranks]
            # Let the last records through ingest and the periodic rule's last evaluation.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _all_fired(outputs, received):
                time.sleep(0.5)
            time.sleep(2.0)
            engine.flush(10)
        finally:
            if worker is not None:
                worker.stop()
                worker_thread.join(60)
            if engine is not None:
                engine.stop(timeout=10)
            for _, p in ranks:
                if p.poll() is None:
                    p.kill()
            for proc in (gateway, receiver):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)

    return _report(args, runs, anomaly_runs, outputs, received, engine, worker, engine_samples, arrivals)


def _parse(outputs):
    injections, summaries = [], []
    for run_id, out in outputs:
        for line in out.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "injected" in item:
                injections.append(item)
            elif item.get("summary"):
                summaries.append(item)
    return injections, summaries


def _matches(payload: dict, inj: dict) -> bool:
    a = payload["alert"]
    if a["run_id"] != inj["run_id"]:
        return False
    if inj["injected"] in ("overheat", "near_oom", "ecc"):
        return a["gpu_uuid"] == inj["gpu_uuid"]
    return a["rank"] == inj["rank"]


def _hits(injections: list[dict], firing: list[dict]) -> dict[int, dict]:
    """For each injection (by position), the first firing of its rule on its entity that
    arrived after it and began before the same rank's next injection."""
    out = {}
    for i, inj in enumerate(injections):
        rule = EXPECTED[inj["injected"]][0]
        later = [j["ns"] for j in injections
                 if j["run_id"] == inj["run_id"] and j["rank"] == inj["rank"] and j["ns"] > inj["ns"]]
        until = min(later, default=math.inf)
        candidates = [p for p in firing if p["alert"]["rule"] == rule and _matches(p, inj)
                      and p["_arrival_ns"] >= inj["ns"] and p["alert"]["observed_at_ns"] < until]
        if candidates:
            out[i] = min(candidates, key=lambda p: p["_arrival_ns"])
    return out


def _all_fired(outputs, received) -> bool:
    injections, _ = _parse(outputs)
    firing = [p for p in list(received) if p.get("event") == "firing"]
    return bool(injections) and len(_hits(injections, firing)) == len(injections)


def _report(args, runs, anomaly_runs, outputs, received, engine, worker, engine_samples, arrivals) -> dict:
    injections, summaries = _parse(outputs)
    firing = [p for p in received if p.get("event") == "firing"]
    hits = _hits(injections, firing)
    stream_latencies, per_scenario = [], {}
    to_observer, to_webhook = [], []
    explained = {p["alert"]["id"] for p in hits.values()}
    for inj in injections:
        rule, consequences = EXPECTED[inj["injected"]]
        explained.update(p["alert"]["id"] for p in firing
                         if _matches(p, inj) and p["alert"]["rule"] in consequences)
    strag_from_injection = None
    for i, inj in enumerate(injections):
        item = per_scenario.setdefault(inj["injected"], {"rule": EXPECTED[inj["injected"]][0], "injected": 0,
                                                         "fired": 0, "latencies_s": []})
        item["injected"] += 1
        p = hits.get(i)
        if p is None:
            continue
        item["fired"] += 1
        latency = round((p["_arrival_ns"] - p["alert"]["observed_at_ns"]) / 1e9, 3)
        item["latencies_s"].append(latency)
        if inj["injected"] in STREAM:
            stream_latencies.append(latency)
            a = p["alert"]
            seen = [ns for run_id, rank, lo, hi, ns in arrivals
                    if run_id == a["run_id"] and rank == inj["rank"] and lo <= a["observed_at_ns"] <= hi]
            if seen:
                to_observer.append((min(seen) - a["observed_at_ns"]) / 1e9)
                to_webhook.append((p["_arrival_ns"] - min(seen)) / 1e9)
        else:
            strag_from_injection = round((p["_arrival_ns"] - inj["ns"]) / 1e9, 3)
    for item in per_scenario.values():
        lat = item.pop("latencies_s")
        item["latency_p50_s"], item["latency_max_s"] = percentile(lat, 0.5), max(lat) if lat else None
    unexplained = [p for p in firing if p["alert"]["id"] not in explained]
    on_clean = [p for p in unexplained if p["alert"]["run_id"] == runs["bg"]]
    bg = [s for s in summaries if s["run_id"] == runs["bg"]]
    bg_points = sum(s["points"] for s in bg)
    bg_seconds = max((s["emit_s"] for s in bg), default=1.0)
    stats = engine.stats()
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "duration_s": args.duration, "inject_at_s": args.inject_at, "cycle_s": args.cycle_s,
        "anomaly_runs": len(anomaly_runs),
        "background_points_per_s": round(bg_points / bg_seconds),
        "background_points": bg_points,
        "points_dropped_in_emitters": sum(s["dropped"] for s in summaries),
        "injected": len(injections),
        "fired": len(hits),
        "false_positives": len(unexplained),
        "false_positives_on_clean_runs": len(on_clean),
        "latency_p50_s": percentile(stream_latencies, 0.50),
        "latency_p99_s": percentile(stream_latencies, 0.99),
        "latency_max_s": max(stream_latencies) if stream_latencies else None,
        "stream_samples": len(stream_latencies),
        "latency_breakdown": {
            "emit_to_ingest_observer_p50_s": percentile(to_observer, 0.5), "emit_to_ingest_observer_max_s":
                round(max(to_observer), 3) if to_observer else None,
            "observer_to_webhook_p50_s": percentile(to_webhook, 0.5), "observer_to_webhook_max_s":
                round(max(to_webhook), 3) if to_webhook else None},
        "straggler_latency_from_injection_s": strag_from_injection,
        "by_scenario": per_scenario,
        "false_positive_alerts": [{k: p["alert"][k] for k in ("rule", "run_id", "host", "rank", "message")}
                                  for p in unexplained],
        "engine": {"observed": stats["observed"], "dropped": stats["dropped"],
                   "max_queued": max((s["queued"] for s in engine_samples), default=0),
                   "evaluation_errors": stats["evaluation_errors"], "rows_written": stats["rows_written"],
                   "notifications": stats["notifiers"]},
        "ingest": dict(worker.counters),
        "rules_overrides": [line for line in RULES_TOML.strip().splitlines()[1:]],
        "definition": "latency: emit time of the sample that made the alert fire (alert.observed_at_ns) -> "
                      "webhook arrival, stream rules; the straggler (periodic SQL rule) from its injection",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=4, help="background ranks")
    parser.add_argument("--rate", type=float, default=520_000, help="background points/s over all ranks")
    parser.add_argument("--k", type=int, default=50, help="metrics per log() call")
    parser.add_argument("--duration", type=float, default=90, help="seconds every rank runs")
    parser.add_argument("--inject-at", type=float, default=20, help="seconds into the run")
    parser.add_argument("--cycle-s", type=float, default=14, help="one anomaly cycle: anomalous, then healthy")
    parser.add_argument("--hold-s", type=float, default=8, help="anomalous part of a cycle")
    parser.add_argument("--anomaly-runs", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", default="build/bench/alerts.json")
    parser.add_argument("--rank-process", action="store_true")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--run-id")
    parser.add_argument("--gateway")
    parser.add_argument("--scenario", default="")
    args = parser.parse_args()
    if args.rank_process:
        return rank_main(args)
    result = bench(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
