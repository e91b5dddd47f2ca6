"""`runwire status`: a deployment's health on one screen. Each check reaches one component with a
short timeout and reports what it found, or why it could not (never a traceback):

    gateway      the gRPC health service of RUNWIRE_GATEWAY
    kafka        the brokers, runwire's topics (partitions, replication) and dead letters
    ingest       the consumer group's lag per topic (records not yet stored)
    clickhouse   reachable, schema version against the newest migration, last insert
"""

from __future__ import annotations

from dataclasses import dataclass

from runwire.exporter import EmitterConfig
from runwire.ingest.gateway import GatewayConfig
from runwire.ingest.worker import IngestConfig
from runwire.proto.config import build


@dataclass(frozen=True)
class StatusConfig:
    """What `runwire status` looks at; each also reads RUNWIRE_<NAME>. Defaults are the
    components' own."""

    gateway: str = EmitterConfig.gateway
    kafka_bootstrap: str = ""
    clickhouse_url: str = ""
    clickhouse_database: str = IngestConfig.clickhouse_database
    topic_prefix: str = GatewayConfig.topic_prefix
    group_id: str = IngestConfig.group_id


def collect(config: StatusConfig) -> list[Check]:
    checks = [check_gateway(config.gateway)]
    if config.kafka_bootstrap:
        checks += check_kafka(config.kafka_bootstrap, config.topic_prefix, config.group_id)
    else:
        checks.append(Check("kafka", False, "not checked: set --kafka-bootstrap or RUNWIRE_KAFKA_BOOTSTRAP"))
    if config.clickhouse_url:
        checks.append(check_clickhouse(config.clickhouse_url, config.clickhouse_database))
    else:
        checks.append(Check("clickhouse", False, "not checked: set --clickhouse-url or RUNWIRE_CLICKHOUSE_URL"))
    return checks


@dataclass
class Check:  # noqa: D101 - one line of the report
    component: str
    ok: bool
    detail: str


def check_gateway(address: str, timeout_s: float = 3.0) -> Check:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from runwire.proto.contract import SERVICE_NAME

    try:
        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s)
    except grpc.RpcError as exc:
        return Check("gateway", False, f"{address}: {exc.code().name} ({exc.details() or 'no answer'})")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return Check("gateway", status == "SERVING", f"{address}: {status}")


def check_kafka(bootstrap: str, prefix: str, group_id: str, timeout_s: float = 5.0) -> list[Check]:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from runwire.ingest.kafka_io import topic_names

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 client_id="runwire-status")
    except Exception as exc:  # noqa: BLE001 - NoBrokersAvailable and friends: say which address
        return [Check("kafka", False, f"{bootstrap}: cannot reach a broker ({type(exc).__name__}: {exc})")]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="runwire-status",
                             request_timeout_ms=int(timeout_s * 1000) + 1000)
    try:
        brokers = len(admin.describe_cluster().get("brokers", []))
        topics = topic_names(prefix)
        described = {t["name"]: t for t in admin.describe_topics(list(topics.values())) if not t["error_code"]}
        lines, ok, ends = [], True, {}
        for kind, topic in sorted(topics.items()):
            partitions = [p for p in described.get(topic, {}).get("partitions", [])]
            if not partitions:
                ok = False
                lines.append(f"{topic}: missing")
                continue
            replicas = min(len(p["replica_nodes"]) for p in partitions)
            in_sync = min(len(p["isr_nodes"]) for p in partitions)
            tps = [TopicPartition(topic, p["partition_index"]) for p in partitions]
            ends[topic] = consumer.end_offsets(tps)
            lines.append(f"{topic}: {len(partitions)} partitions, replication {replicas} (in sync {in_sync}), "
                         f"{sum(ends[topic].values()):,} records")
        checks = [Check("kafka", ok, f"{bootstrap}: {brokers} broker(s); " + "; ".join(lines))]
        committed = admin.list_group_offsets(group_id).get(group_id, {})
        lag_lines = []
        for kind in ("metrics", "gpu", "runs"):
            topic = topics[kind]
            end = ends.get(topic, {})
            behind = sum(max(0, offset - (committed[tp].offset if tp in committed else 0)) for tp, offset in end.items())
            lag_lines.append(f"{kind} {behind:,}")
        checks.append(Check("ingest", bool(committed) or not any(sum(e.values()) for e in ends.values()),
                            f"group {group_id}: " + ("records not yet stored: " + ", ".join(lag_lines)
                                                     if committed else "has committed nothing (no ingest worker ran?)")))
        return checks
    except Exception as exc:  # noqa: BLE001
        return [Check("kafka", False, f"{bootstrap}: {type(exc).__name__}: {exc}")]
    finally:
        consumer.close()
        admin.close()


def check_clickhouse(url: str, database: str) -> Check:
    from runwire.storage.client import connect, redact, server_message
    from runwire.storage.schema import migrations

    try:
        client = connect(url, database, create=False)
    except Exception as exc:  # noqa: BLE001
        return Check("clickhouse", False, f"{redact(url)}/{database}: {server_message(exc)}")
    try:
        newest = max(version for version, _, _ in migrations())
        applied = client.query("SELECT max(version) FROM schema_migrations").result_rows[0][0]
        last = client.query("SELECT max(modification_time) FROM system.parts WHERE database = currentDatabase() "
                            "AND table = 'metrics' AND active").result_rows[0][0]
        schema = f"schema {applied} of {newest}" + ("" if applied == newest else " (run `runwire migrate`)")
        return Check("clickhouse", applied == newest, f"{redact(url)}/{database}: {schema}; last insert into "
                     f"metrics {last if last and last.year > 1970 else 'never'}")
    except Exception as exc:  # noqa: BLE001
        return Check("clickhouse", False, f"{redact(url)}/{database}: {server_message(exc)}")
    finally:
        client.close()


def render(checks: list[Check]) -> str:
    width = max(len(c.component) for c in checks)
    return "\n".join(f"{'ok ' if c.ok else 'BAD'}  {c.component.ljust(width)}  {c.detail}" for c in checks)
