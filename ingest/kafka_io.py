"""Kafka plumbing shared by the gateway and the ingest workers: topic names, topic creation,
producer and consumer settings, and the one classifier of Kafka errors."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from runwire.ingest.codec import KINDS

log = logging.getLogger("runwire.ingest")

# Our records stay well below this (validate.MAX_ROWS keeps an envelope under ~3 MB).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


# A consumer learns about partitions (a topic created after it joined, one whose metadata had not
# reached it yet, partitions added) only when it refreshes metadata; kafka-python's default of
# 5 minutes left ingest idle that long. A metadata request every few seconds costs nothing.
CONSUMER_METADATA = {"metadata_max_age_ms": 5000}

TOPIC_READY_TIMEOUT_MS = 30_000


def replication_for(brokers: int, configured: int = 0) -> int:
    """Replication factor of runwire's topics: ``configured`` when above 0 (topic_replication,
    RUNWIRE_TOPIC_REPLICATION), else 3, or the number of brokers when the cluster has fewer."""
    return configured if configured > 0 else max(1, min(3, brokers))


def min_insync_for(replication: int) -> int:
    """min.insync.replicas for a topic with ``replication`` replicas: 2 from 3 replicas on, so
    an acknowledged record (acks=all) is on two brokers and one broker may fail or restart while
    producing goes on; 1 below (one broker down would otherwise stop every producer)."""
    return 2 if replication >= 3 else 1


def is_retryable(exc: BaseException) -> bool:
    """True for a Kafka error that may clear by itself (broker unreachable or restarting, no
    leader yet, timeouts): kafka-python marks them `retriable`. The one Kafka classifier."""
    return isinstance(exc, KafkaError) and exc.retriable


def topic_names(prefix: str) -> dict[str, str]:
    """Topic per record kind, plus the dead-letter topic."""
    names = {kind: f"{prefix}{kind}" for kind in KINDS}
    names["deadletter"] = f"{prefix}deadletter"
    return names


def ensure_topics(bootstrap: str, prefix: str, partitions: int, replication: int = 0, **client_settings) -> None:
    """Create missing topics with the configured partitions and replication factor (0: from
    the cluster's size, see replication_for) and min.insync.replicas (min_insync_for), and wait
    until every topic is in the broker's metadata with a leader for each partition (a consumer
    that subscribes earlier can be assigned nothing). Topics that exist are left as they are.
    Raises kafka-python's errors."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="runwire-admin", **client_settings)
    try:
        names = list(topic_names(prefix).values())
        existing = set(admin.list_topics())
        if replication <= 0 and set(names) - existing:
            replication = replication_for(len(admin.describe_cluster()["brokers"]))
        configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES), "min.insync.replicas": str(min_insync_for(replication))}
        wanted = [NewTopic(name, num_partitions=partitions, replication_factor=replication, topic_configs=configs)
                  for name in names if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
                log.info("created topics %s", [t.name for t in wanted])
            except TopicAlreadyExistsError:
                pass  # another gateway or worker won the race
        admin.wait_for_topics(names, timeout_ms=TOPIC_READY_TIMEOUT_MS)
    finally:
        admin.close()


def make_producer(bootstrap: str, **settings) -> KafkaProducer:
    """Idempotent producer with acks=all: an acknowledged record is on every in-sync replica
    (at least min.insync.replicas). Retries are kafka-python's: unlimited within
    delivery_timeout_ms, at most 5 requests in flight, so a leader change is retried without
    reordering, and the idempotent producer's sequence numbers keep its retries from writing a
    record twice (tests/integration/test_kafka_cluster.py)."""
    config = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,  # explicit: a conflicting setting raises instead of turning it off
        linger_ms=20,  # gathers the envelopes of many ranks into one request (less broker and gateway CPU)
        batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
        max_block_ms=2000,  # a full buffer becomes RESOURCE_EXHAUSTED instead of a stuck call
        delivery_timeout_ms=120000,  # Kafka's default; must exceed linger + request timeout
        client_id="runwire",
    )
    config.update(settings)
    return KafkaProducer(**config)
