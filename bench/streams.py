"""How many emitter streams one gateway holds: S concurrent streams (one gRPC channel each, as
S training processes would open, spread over client processes) against one `runwire gateway`
process writing to a real Kafka broker, each sending an envelope of 100 points per second for
D seconds.

    python bench/streams.py --out build/bench/streams.json          (make bench-streams)

Reported: streams that delivered everything, streams refused (RESOURCE_EXHAUSTED: more than
the gateway's max_streams), envelope acknowledgement latency p50/p99, and the gateway
process's peak threads, peak resident memory and CPU share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import drain, percentile, start_cli, wait_line


def stream_client(address: str, index: int, seconds: int, points: int, results: dict, lock: threading.Lock,
                  start_at: float) -> None:
    import grpc

    from runwire import wire
    from runwire.proto.contract import STREAM_METHOD
    from runwire.proto import telemetry_pb2 as pb

    identity = pb.Identity(project="bench", run_id="streams", rank=index, world_size=100_000, host=f"node-{index // 8}",
                           pid=index, stream_id=f"stream-{index}")
    sent_at: dict[int, float] = {}

    def envelopes():
        time.sleep(max(0.0, start_at - time.time()))
        for seq in range(1, seconds + 1):
            steps = list(range(seq * points, (seq + 1) * points))
            env = pb.Envelope(seq=seq, identity=identity, metrics=wire.metric_batch(
                ["loss"], [0] * points, steps, [time.time_ns()] * points, [1.0] * points))
            sent_at[seq] = time.perf_counter()
            yield env.SerializeToString()
            time.sleep(1.0)

    latencies, acked, answers = [], 0, {}
    with grpc.insecure_channel(address) as channel:
        try:
            call = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Ack.FromString)(
                envelopes(), timeout=seconds + 60)
            for ack in call:
                if ack.code in ("", "OK"):
                    acked += 1
                    latencies.append(time.perf_counter() - sent_at[ack.seq])
                else:
                    answers[ack.code] = answers.get(ack.code, 0) + 1
            outcome = "ok" if acked == seconds else "incomplete"
        except grpc.RpcError as exc:
            outcome = exc.code().name
    with lock:
        results["outcomes"][outcome] = results["outcomes"].get(outcome, 0) + 1
        results["latencies"].extend(latencies)
        for code, n in answers.items():
            results["not_ok_answers"][code] = results["not_ok_answers"].get(code, 0) + n


def client_main(args) -> None:
    """One client process: COUNT streams, from index FIRST, sending from START_AT (epoch s)."""
    address, first, count, start_at = args.client[0], int(args.client[1]), int(args.client[2]), float(args.client[3])
    results: dict = {"outcomes": {}, "latencies": [], "not_ok_answers": {}}
    lock = threading.Lock()
    threads = [threading.Thread(target=stream_client, daemon=True,
                                args=(address, first + i, args.seconds, args.points, results, lock, start_at))
               for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--points", type=int, default=100, help="points per envelope")
    parser.add_argument("--max-streams", type=int, default=1024, help="the gateway's RUNWIRE_MAX_STREAMS")
    parser.add_argument("--client-processes", type=int, default=10)
    parser.add_argument("--out", default="build/bench/streams.json")
    parser.add_argument("--client", nargs=4, metavar=("ADDRESS", "FIRST", "COUNT", "START_AT"))
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    import psutil

    from runwire.deploy.local.kafka import KafkaServer, free_port

    with KafkaServer() as kafka:
        kafka.start()
        address = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=kafka.bootstrap, RUNWIRE_MAX_STREAMS=str(args.max_streams))
        gateway = start_cli(["gateway", "--listen", address], env)
        try:
            wait_line(gateway, "listening on")
            drain(gateway)
            process = psutil.Process(gateway.pid)
            cpu_before = sum(process.cpu_times()[:2])
            # Every stream opens first; all start sending at the same moment.
            start_at = time.time() + 5 + args.streams / 200
            per_process = -(-args.streams // args.client_processes)
            clients = [subprocess.Popen(
                [sys.executable, __file__, "--client", address, str(first), str(min(per_process, args.streams - first)),
                 str(start_at), "--seconds", str(args.seconds), "--points", str(args.points)],
                stdout=subprocess.PIPE, text=True) for first in range(0, args.streams, per_process)]
            time.sleep(max(0.0, start_at - time.time()))
            started = time.perf_counter()
            peak_threads = peak_rss = 0
            while any(c.poll() is None for c in clients):
                peak_threads = max(peak_threads, process.num_threads())
                peak_rss = max(peak_rss, process.memory_info().rss)
                time.sleep(0.5)
            results: dict = {"outcomes": {}, "latencies": [], "not_ok_answers": {}}
            for client in clients:
                part = json.loads(client.communicate()[0].strip().splitlines()[-1])
                for outcome, n in part["outcomes"].items():
                    results["outcomes"][outcome] = results["outcomes"].get(outcome, 0) + n
                results["latencies"].extend(part["latencies"])
                for code, n in part["not_ok_answers"].items():
                    results["not_ok_answers"][code] = results["not_ok_answers"].get(code, 0) + n
            elapsed = time.perf_counter() - started
            cpu = sum(process.cpu_times()[:2]) - cpu_before
        finally:
            gateway.terminate()
            gateway.wait(60)

    outcomes = results["outcomes"]
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "streams": args.streams, "max_streams": args.max_streams, "seconds": args.seconds,
        "points_per_envelope": args.points,
        "streams_ok": outcomes.get("ok", 0), "streams_refused": outcomes.get("RESOURCE_EXHAUSTED", 0),
        "streams_other": {k: v for k, v in outcomes.items() if k not in ("ok", "RESOURCE_EXHAUSTED")},
        "envelopes_acked": len(results["latencies"]), "envelopes_answered_not_ok": results["not_ok_answers"],
        "ack_latency_p50_s": percentile(results["latencies"], 0.50),
        "ack_latency_p99_s": percentile(results["latencies"], 0.99),
        "gateway_peak_threads": peak_threads, "gateway_peak_rss_mb": round(peak_rss / 2**20, 1),
        "gateway_cpu_share": round(cpu / elapsed / (os.cpu_count() or 1), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
