"""How many emitter streams one gateway process holds: S concurrent streams (one gRPC channel
each, as S training processes would open) against one `runwire gateway` process writing to a
real Kafka broker, each sending an envelope of 100 points per second for D seconds. The load
comes from asyncio client processes that multiplex many channels each, so the clients are not
the bottleneck; the asyncio gateway is measured at every S and the thread-per-stream gateway
(`--server threads`) at the first S, in the same run, for the ratio.

    python bench/streams.py --out build/bench/streams.json          (make bench-streams)
    python bench/streams.py --streams 5000 --gateways 1 2 --profile build/gwperf

JSON: `results: [{gateway, streams, ack_p50_s, ack_p99_s, delivered, lost, refused,
gateway_rss_mb, gateway_cpu_share, gateway_cpu_ms_per_envelope, ...}]`. delivered: envelopes
acknowledged OK (the gateway acknowledges after Kafka did; the topic's end offsets are checked
to have grown by at least that much); lost: envelopes sent and never acknowledged.
gateway_cpu_ms_per_envelope: the gateway's CPU (all its threads, gRPC core's included) per
envelope sent. `--gateways N` runs N gateway processes, each on its own port, with the streams
split among them; `--profile DIR` samples the (first) gateway with py-spy while the clients send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import drain, percentile, start_cli, wait_line


async def one_stream(address: str, index: int, seconds: int, batch, start_at: float, stats: dict) -> None:
    import grpc

    from runwire.exporter import CHANNEL_OPTIONS
    from runwire.proto import telemetry_pb2 as pb
    from runwire.proto.contract import STREAM_METHOD

    identity = pb.Identity(project="bench", run_id="streams", rank=index, world_size=100_000,
                           host=f"node-{index // 8}", pid=index, stream_id=f"stream-{index}-{os.getpid()}")
    sent_at: dict[int, float] = {}

    async def envelopes():
        await asyncio.sleep(max(0.0, start_at - time.time()))
        next_at = time.monotonic()
        for seq in range(1, seconds + 1):
            payload = pb.Envelope(seq=seq, identity=identity, metrics=batch).SerializeToString()
            sent_at[seq] = time.perf_counter()
            stats["sent"] += 1
            yield payload
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    acked = 0
    # A connection of its own, as a training process has (channels in one process to the same
    # address would otherwise share one HTTP/2 connection).
    async with grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Ack.FromString)(
            envelopes(), timeout=seconds + 120)
        try:
            async for ack in call:
                if ack.code in ("", "OK"):
                    acked += 1
                    stats["latencies"].append(time.perf_counter() - sent_at[ack.seq])
                else:
                    stats["not_ok"][ack.code] = stats["not_ok"].get(ack.code, 0) + 1
            outcome = "ok" if acked == seconds else "incomplete"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
            stats["errors"][exc.details()] = stats["errors"].get(exc.details(), 0) + 1
    stats["acked"] += acked
    stats["outcomes"][outcome] = stats["outcomes"].get(outcome, 0) + 1


async def client_streams(address: str, first: int, count: int, seconds: int, points: int, start_at: float) -> dict:
    from runwire import wire

    batch = wire.metric_batch(["loss"], [0] * points, list(range(points)), [time.time_ns()] * points, [1.0] * points)
    stats: dict = {"outcomes": {}, "latencies": [], "not_ok": {}, "sent": 0, "acked": 0, "errors": {}}
    await asyncio.gather(*(one_stream(address, first + i, seconds, batch, start_at, stats) for i in range(count)))
    return stats


def client_main(args) -> None:
    """One client process: COUNT streams from index FIRST, sending from START_AT (epoch s); its
    figures go to the file OUT (too large for a pipe nobody reads until the end)."""
    address, first, count, start_at, out = args.client
    stats = asyncio.run(client_streams(address, int(first), int(count), args.seconds, args.points, float(start_at)))
    Path(out).write_text(json.dumps(stats))


def topic_end_offset(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's threads so far, summed by OS thread name (gRPC core names its
    threads; Python threads are named after the process)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def start_profile(pid: int, path: Path) -> subprocess.Popen | None:
    """py-spy sampling the gateway's Python threads into PATH (collapsed stacks, one per thread)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy (it is not a runwire dependency)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "50", "--threads", "--format", "raw",
                             "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(kafka_bootstrap: str, server: str, streams: int, args, gateways: int = 1) -> dict:
    """One run: `gateways` gateway processes, each on a port of its own, the load clients'
    streams split evenly among them (as emitters given a list of gateways would be); memory and
    CPU are the gateway processes' together."""
    import psutil

    from runwire.deploy.local.kafka import free_port

    addresses = [f"127.0.0.1:{free_port()}" for _ in range(gateways)]
    env = dict(os.environ, RUNWIRE_KAFKA_BOOTSTRAP=kafka_bootstrap, RUNWIRE_MAX_STREAMS=str(args.max_streams),
               RUNWIRE_SERVER=server)
    started_gateways = []
    try:
        for address in addresses:
            started_gateways.append(start_cli(["gateway", "--listen", address], env))
        for gateway in started_gateways:
            wait_line(gateway, "listening on")
            drain(gateway)
        offset_before = topic_end_offset(kafka_bootstrap, "runwire.metrics")
        processes = [psutil.Process(gateway.pid) for gateway in started_gateways]

        def cpu_seconds() -> float:
            return sum(sum(process.cpu_times()[:2]) for process in processes)

        def rss() -> int:
            return sum(process.memory_info().rss for process in processes)

        cpu_before = cpu_seconds()
        threads_before = thread_cpu(processes[0].pid)
        # Every stream opens first; all start sending at the same moment.
        start_at = time.time() + 5 + streams / 250
        n_clients = args.client_processes or max(2, -(-streams // 1000))
        n_clients = -(-n_clients // gateways) * gateways  # the same number of clients on every gateway
        per_client = -(-streams // n_clients)
        firsts = range(0, streams, per_client)
        outputs = [Path(tempfile.mkdtemp(prefix="bench-streams-")) / f"client-{first}.json" for first in firsts]
        clients = [subprocess.Popen(
            [sys.executable, __file__, "--client", addresses[i % gateways], str(first),
             str(min(per_client, streams - first)), str(start_at), str(out), "--seconds", str(args.seconds),
             "--points", str(args.points)])
            for i, (first, out) in enumerate(zip(firsts, outputs))]
        peak_threads = peak_rss = 0
        while time.time() < start_at:
            peak_rss = max(peak_rss, rss())
            time.sleep(0.5)
        started = time.perf_counter()
        profile = (start_profile(processes[0].pid, Path(args.profile) / f"{server}-{streams}-{gateways}.txt")
                   if args.profile else None)
        while any(c.poll() is None for c in clients):
            peak_threads = max(peak_threads, sum(process.num_threads() for process in processes))
            peak_rss = max(peak_rss, rss())
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
        by_thread = {name: round(seconds - threads_before.get(name, 0.0), 2)
                     for name, seconds in thread_cpu(processes[0].pid).items()}
        if profile is not None:
            profile.send_signal(signal.SIGINT)
            profile.wait(60)
        total: dict = {"outcomes": {}, "latencies": [], "not_ok": {}, "sent": 0, "acked": 0, "errors": {}}
        for client, out in zip(clients, outputs):
            if client.wait() != 0:
                raise RuntimeError(f"a load client failed (exit {client.returncode})")
            part = json.loads(out.read_text())
            shutil.rmtree(out.parent, ignore_errors=True)
            for key in ("outcomes", "not_ok", "errors"):
                for name, n in part[key].items():
                    total[key][name] = total[key].get(name, 0) + n
            total["latencies"].extend(part["latencies"])
            total["sent"] += part["sent"]
            total["acked"] += part["acked"]
        in_kafka = topic_end_offset(kafka_bootstrap, "runwire.metrics") - offset_before
    finally:
        for gateway in started_gateways:
            gateway.terminate()
        for gateway in started_gateways:
            gateway.wait(60)
    outcomes = total["outcomes"]
    result = {
        "gateway": server, "streams": streams, "gateway_processes": gateways,
        "ack_p50_s": percentile(total["latencies"], 0.50), "ack_p99_s": percentile(total["latencies"], 0.99),
        "delivered": total["acked"], "lost": total["sent"] - total["acked"],
        "records_in_kafka": in_kafka, "refused": outcomes.get("RESOURCE_EXHAUSTED", 0),
        "streams_complete": outcomes.get("ok", 0),
        "streams_other": {k: v for k, v in outcomes.items() if k not in ("ok", "RESOURCE_EXHAUSTED")},
        "answered_not_ok": total["not_ok"], "stream_errors": total["errors"],
        "gateway_rss_mb": round(peak_rss / 2**20, 1), "gateway_threads": peak_threads,
        "gateway_cpu_share": round(cpu / elapsed / (os.cpu_count() or 1), 3),
        "gateway_cpu_ms_per_envelope": round(1000 * cpu / max(total["sent"], 1), 3),
        # The first gateway process's threads (gRPC core names its own; Python's are "python").
        "gateway_cpu_s_by_thread": dict(sorted(by_thread.items(), key=lambda item: -item[1])),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "client_processes": len(clients),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 2500, 5000])
    parser.add_argument("--servers", nargs="+", default=["aio"], help="gateway servers measured at every S")
    parser.add_argument("--compare-threads-at", type=int, default=1000,
                        help="also measure the thread-per-stream gateway at this S (0: not)")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--points", type=int, default=100, help="points per envelope")
    parser.add_argument("--max-streams", type=int, default=10_000, help="the gateway's RUNWIRE_MAX_STREAMS")
    parser.add_argument("--gateways", type=int, nargs="+", default=[1],
                        help="aio gateway processes per run (each S is measured with each count)")
    parser.add_argument("--client-processes", type=int, default=0, help="default: one per 1,000 streams, at least 2")
    parser.add_argument("--out", default="build/bench/streams.json")
    parser.add_argument("--profile", default="", help="folder for py-spy profiles of the gateway (py-spy on PATH)")
    parser.add_argument("--client", nargs=5, metavar=("ADDRESS", "FIRST", "COUNT", "START_AT", "OUT"))
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    from runwire.deploy.local.kafka import KafkaServer

    runs = [(server, s, n if server == "aio" else 1) for s in args.streams for server in args.servers
            for n in args.gateways]
    if args.compare_threads_at and "threads" not in args.servers:
        runs.insert(0, ("threads", args.compare_threads_at, 1))
    with KafkaServer() as kafka:
        kafka.start()
        results = [measure(kafka.bootstrap, server, streams, args, n) for server, streams, n in dict.fromkeys(runs)]
    ratios = {}
    threads = next((r for r in results if r["gateway"] == "threads"), None)
    aio = next((r for r in results if r["gateway"] == "aio" and threads and r["streams"] == threads["streams"]
                and r["gateway_processes"] == 1), None)
    if threads and aio and aio["ack_p99_s"]:
        ratios = {"streams": aio["streams"], "ack_p99_threads_over_aio": round(threads["ack_p99_s"] / aio["ack_p99_s"], 1),
                  "cpu_threads_over_aio": round(threads["gateway_cpu_share"] / max(aio["gateway_cpu_share"], 1e-9), 2),
                  "rss_threads_over_aio": round(threads["gateway_rss_mb"] / aio["gateway_rss_mb"], 2)}
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "seconds": args.seconds,
           "points_per_envelope": args.points, "results": results, "threads_vs_aio": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
