"""Kafka plumbing shared by the gateway and the ingest workers: topic names, topic creation,
producer settings."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from runwire.ingest.codec import KINDS

log = logging.getLogger("runwire.ingest")

# Our records stay well below this (validate.MAX_ROWS keeps an envelope under ~3 MB).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def topic_names(prefix: str) -> dict[str, str]:
    """Topic per record kind, plus the dead-letter topic."""
    names = {kind: f"{prefix}{kind}" for kind in KINDS}
    names["deadletter"] = f"{prefix}deadletter"
    return names


def ensure_topics(bootstrap: str, prefix: str, partitions: int, replication: int, **client_settings) -> None:
    """Create missing topics with the configured partitions and replication factor."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="runwire-admin", **client_settings)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication,
                     topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
            for name in topic_names(prefix).values() if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
                log.info("created topics %s", [t.name for t in wanted])
            except TopicAlreadyExistsError:
                pass  # another gateway or worker won the race
    finally:
        admin.close()


def make_producer(bootstrap: str, **settings) -> KafkaProducer:
    """Idempotent producer with acks=all: an acknowledged record is on every in-sync replica."""
    config = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,  # gathers the envelopes of many ranks into one request (less broker and gateway CPU)
        batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
        max_block_ms=2000,  # a full buffer becomes RESOURCE_EXHAUSTED instead of a stuck call
        delivery_timeout_ms=120000,  # Kafka's default; must exceed linger + request timeout
        client_id="runwire",
    )
    config.update(settings)
    return KafkaProducer(**config)
