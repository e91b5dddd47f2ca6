"""CPU per envelope of each stage of the gateway's work, measured in one process with the
calling thread's CPU clock (so other load on the machine does not inflate it): protobuf parse,
validation, Avro encoding, kafka-python's send() and its network thread (through to Kafka's
acknowledgement, from a real broker). gRPC's own per-message work is not here: bench/streams.py
measures the whole gateway (gateway_cpu_ms_per_envelope, gateway_cpu_s_by_thread).

    python bench/gateway_stages.py [--envelopes N] [--points P] [--out build/bench/gateway_stages.json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path


def per_envelope_us(fn, items) -> float:
    started = time.thread_time()
    for item in items:
        fn(item)
    return round(1e6 * (time.thread_time() - started) / len(items), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envelopes", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--out", default="build/bench/gateway_stages.json")
    args = parser.parse_args()

    from runwire import wire
    from runwire.deploy.local.kafka import KafkaServer
    from runwire.ingest import codec
    from runwire.ingest.kafka_io import ensure_topics, make_producer, topic_names
    from runwire.ingest.validate import validate
    from runwire.proto import telemetry_pb2 as pb

    n, p = args.envelopes, args.points
    batch = wire.metric_batch(["loss"], [0] * p, list(range(p)), [time.time_ns()] * p, [1.0] * p)
    raws = [pb.Envelope(seq=i + 1, identity=pb.Identity(project="bench", run_id="stages", rank=i % 1000,
                                                         world_size=1000, host="node", stream_id=f"s{i % 1000}"),
                        metrics=batch).SerializeToString() for i in range(n)]
    envelopes = [pb.Envelope.FromString(raw) for raw in raws]
    stages = {
        "protobuf_parse": per_envelope_us(pb.Envelope.FromString, raws),
        "validate": per_envelope_us(validate, envelopes),
        "avro_encode": per_envelope_us(lambda e: codec.encode_envelope(e, time.time_ns()), envelopes),
    }
    records = [codec.encode_envelope(e, time.time_ns()) for e in envelopes]
    with KafkaServer() as kafka:
        kafka.start()
        ensure_topics(kafka.bootstrap, "runwire.", 6, 1)
        topics = topic_names("runwire.")
        producer = make_producer(kafka.bootstrap)
        acked = threading.Semaphore(0)
        producer.send(topics["metrics"], key=b"warm", value=records[0][2]).get(30)
        process_before = time.process_time()
        main_before = time.thread_time()
        for kind, key, value in records:
            producer.send(topics[kind], key=key, value=value).add_callback(lambda _m: acked.release())
        send_cpu = time.thread_time() - main_before
        for _ in records:
            acked.acquire(timeout=60)
        others = time.process_time() - process_before - (time.thread_time() - main_before)
        producer.close()
    stages["kafka_send"] = round(1e6 * send_cpu / n, 2)
    stages["kafka_network_thread"] = round(1e6 * others / n, 2)
    out = {"envelopes": n, "points_per_envelope": p, "cpu_us_per_envelope": stages,
           "total_us": round(sum(stages.values()), 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
