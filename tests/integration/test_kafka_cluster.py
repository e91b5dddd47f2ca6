"""Faults of a replicated Kafka cluster: rank processes -> gateway -> 3 Kafka nodes (KRaft,
replication factor 3, min.insync.replicas 2) -> ingest -> ClickHouse. In every case each point a
rank logged is acknowledged (finish() reports nothing unacked or dropped) and stored exactly once.

One cluster serves the whole module; after each test every node runs again and no partition is
under-replicated, so the tests do not depend on their order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from mlflow_helpers import wait_for
from test_pipeline_faults import Pipeline

pytestmark = [pytest.mark.infra, pytest.mark.timeout(300)]
RANK = Path(__file__).with_name("cluster_rank.py")


@pytest.fixture(autouse=True)
def cluster(kafka_cluster):
    """The module's cluster, whole again after each test (nodes restarted, replicas in sync)."""
    yield kafka_cluster
    for node in kafka_cluster.nodes:
        if not node.running:
            node.start()
    kafka_cluster.wait_in_sync(timeout=180)


@pytest.fixture
def pipeline(cluster, clickhouse_url, tmp_path):
    p = Pipeline(cluster.bootstrap, clickhouse_url, tmp_path)
    yield p
    p.close()


class Ranks:
    """Rank processes of one run, logging until stop()."""

    def __init__(self, pipeline: Pipeline, world_size: int = 2) -> None:
        self.run_id = f"c-{uuid.uuid4().hex[:8]}"
        self.procs = []
        for rank in range(world_size):
            env = dict(os.environ, RUNWIRE_GATEWAY=pipeline.gateway.address, RUNWIRE_RUN_ID=self.run_id,
                       RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                       RUNWIRE_SPOOL_DIR=str(pipeline.tmp_path / "spool"), RUNWIRE_GPU="false",
                       RUNWIRE_FLUSH_INTERVAL_S="0.05", RUNWIRE_FINISH_TIMEOUT_S="150")
            self.procs.append(subprocess.Popen([sys.executable, str(RANK)], env=env, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True))

    def stop(self) -> int:
        """Stop logging, wait for every rank's finish(); the points they logged, all acknowledged."""
        for proc in self.procs:
            proc.stdin.close()
        points = 0
        for proc in self.procs:
            out = proc.stdout.read()  # until the rank exits (finish() waits for its acks)
            assert proc.wait(30) == 0, out
            result = json.loads(out.strip().splitlines()[-1])
            assert result["summary"]["runwire.unacked"] == 0, result
            assert result["summary"]["runwire.dropped"] == 0, result
            assert result["summary"]["runwire.points"] == result["points"], result
            points += result["points"]
        return points

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def ranks(pipeline):
    started = []

    def start(world_size: int = 2) -> Ranks:
        started.append(Ranks(pipeline, world_size))
        return started[-1]

    yield start
    for r in started:
        r.kill()


def stored_more_than(pipeline: Pipeline, run_id: str, floor: int, timeout: float = 120.0) -> int:
    """Wait until more than ``floor`` of the run's points are in ClickHouse: the path flows."""
    return wait_for(lambda: (lambda n: n if n > floor else None)(pipeline.stored(run_id)[0]),
                    timeout=timeout, interval=0.3, what=f"more than {floor} points of {run_id} stored")


def run_partition(pipeline: Pipeline, bootstrap: str) -> tuple[str, int]:
    """The metrics partition the run's records went to (the only one holding records: one run
    per topic set, keyed by run)."""
    topic = f"{pipeline.settings['topic_prefix']}metrics"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(pipeline.settings["topic_partitions"])])
    finally:
        consumer.close()
    used = [tp.partition for tp, end in ends.items() if end > 0]
    assert len(used) == 1, ends
    return topic, used[0]


def assert_exactly_once(pipeline: Pipeline, run_id: str, points: int) -> None:
    assert points > 0
    assert pipeline.wait_stored(run_id, points, timeout=150) == (points, points)


def test_topics_have_three_replicas_and_two_in_sync(cluster, pipeline):
    topics = [f"{pipeline.settings['topic_prefix']}{kind}" for kind in ("metrics", "runs", "deadletter")]
    for (topic, _), partition in cluster.partitions(topics).items():
        assert len(partition["replicas"]) == 3 and len(set(partition["isr"])) == 3, (topic, partition)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        admin.close()
    by_topic = next(iter(described.values()))
    for topic in topics:
        assert by_topic[topic]["min.insync.replicas"]["value"] == "2", by_topic[topic]
    # The committed offsets (the consumer group's progress) are replicated the same way.
    pipeline.start_worker()
    offsets = wait_for(lambda: {tp: p for tp, p in cluster.partitions().items() if tp[0] == "__consumer_offsets"},
                       timeout=60, what="the consumer offsets topic")
    assert all(len(p["replicas"]) == 3 for p in offsets.values()), offsets


def test_partition_leader_sigkilled_while_ranks_log(cluster, pipeline, ranks):
    pipeline.start_worker()
    run = ranks()
    stored_more_than(pipeline, run.run_id, 0)
    topic, partition = run_partition(pipeline, cluster.bootstrap)
    victim = cluster.leader(topic, partition)
    cluster.kill(victim)
    at_kill = pipeline.stored(run.run_id)[0]
    new_leader = wait_for(lambda: (lambda n: n if n not in (victim, -1) else None)(cluster.leader(topic, partition)),
                          timeout=60, what="a new leader")
    assert new_leader != victim
    # Acknowledged writes go on through the new leader, with one replica of three down.
    stored_more_than(pipeline, run.run_id, at_kill + 5_000)
    assert_exactly_once(pipeline, run.run_id, run.stop())


def test_active_controller_sigkilled_while_ranks_log(cluster, pipeline, ranks):
    pipeline.start_worker()
    run = ranks()
    stored_more_than(pipeline, run.run_id, 0)
    victim = cluster.active_controller()
    cluster.kill(victim)
    at_kill = pipeline.stored(run.run_id)[0]
    wait_for(lambda: cluster.active_controller() not in (victim, -1), timeout=60, what="a new active controller")
    stored_more_than(pipeline, run.run_id, at_kill + 5_000)
    assert_exactly_once(pipeline, run.run_id, run.stop())


def test_rolling_restart_of_every_broker_while_ranks_log(cluster, pipeline, ranks):
    pipeline.start_worker()
    run = ranks()
    stored = stored_more_than(pipeline, run.run_id, 0)
    for node in cluster.nodes:
        cluster.stop_node(node.node_id)  # SIGTERM: a controlled shutdown moves its leaders away
        stored = stored_more_than(pipeline, run.run_id, stored)  # the others carry on
        cluster.start_node(node.node_id)
        cluster.wait_in_sync(timeout=180)  # the next one only when no partition is behind
    stored_more_than(pipeline, run.run_id, stored)
    assert_exactly_once(pipeline, run.run_id, run.stop())


def test_three_ingest_workers_one_sigkilled_and_restarted(cluster, pipeline, ranks, monkeypatch):
    # A killed worker's partitions move to the others once its session expires (6 s is the
    # broker's minimum), instead of Kafka's 45 s default.
    monkeypatch.setenv("RUNWIRE_SESSION_TIMEOUT_S", "6")
    workers = [pipeline.start_worker_process(batch_rows=2_000) for _ in range(3)]
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        def members() -> int:
            group = admin.describe_groups([pipeline.group_id])[pipeline.group_id]
            return len(group["members"]) if group["group_state"] == "Stable" else 0

        wait_for(lambda: members() == 3, timeout=120, what="three workers in the group")
        runs = [ranks(world_size=1) for _ in range(3)]  # three runs, spread over the partitions
        for run in runs:
            stored_more_than(pipeline, run.run_id, 0)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        at_kill = {run.run_id: pipeline.stored(run.run_id)[0] for run in runs}
        pipeline.start_worker_process(batch_rows=2_000)
        for run in runs:  # every run's partition is taken up again
            stored_more_than(pipeline, run.run_id, at_kill[run.run_id] + 1_000)
        wait_for(lambda: members() == 3, timeout=120, what="the restarted worker in the group")
        for run in runs:
            assert_exactly_once(pipeline, run.run_id, run.stop())
    finally:
        admin.close()
        # All at once: one by one, each leaving member holds the next in a rebalance.
        for proc in pipeline.processes:
            if proc.poll() is None:
                proc.terminate()
