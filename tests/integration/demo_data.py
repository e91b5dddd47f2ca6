"""Shared set-up of the integration tests that look at stored demo data."""

from __future__ import annotations

import contextlib
import uuid

import pytest


@contextlib.contextmanager
def demo_database(clickhouse_url: str, prefix: str, runs: list[tuple[str, float]]):
    """A fresh database holding demo runs (2 nodes x 2 ranks each, `seconds` long), written by the
    real emitters through the gateway; yields a client on it and drops it afterwards.

    Direct mode (gateway -> writer) even where RUNWIRE_KAFKA_BOOTSTRAP names a broker: these
    tests look at stored data; the Kafka path has its own tests."""
    with demo_stack(clickhouse_url, prefix, runs) as (client, _stack):
        yield client


@contextlib.contextmanager
def demo_stack(clickhouse_url: str, prefix: str, runs: list[tuple[str, float]]):
    """As demo_database, yielding (client, LocalStack): the stack's gateway stays up for more runs."""
    import clickhouse_connect

    from runwire.deploy.local.demo import collect, launch_ranks, wait_for_rows
    from runwire.deploy.local.stack import LocalStack

    database = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = clickhouse_connect.get_client(dsn=clickhouse_url)
    stack = None
    try:
        with pytest.MonkeyPatch.context() as env:
            env.delenv("RUNWIRE_KAFKA_BOOTSTRAP", raising=False)
            stack = LocalStack(clickhouse_url=clickhouse_url, database=database).start()
        client = stack.client()
        for run_id, seconds in runs:
            summaries = collect(launch_ranks(stack.gateway.address, run_id, seconds, nodes=2, ranks_per_node=2),
                                timeout_s=120)
            emitted = int(sum(s["runwire.points"] for s in summaries))
            assert wait_for_rows(client, run_id, emitted, timeout_s=30) == emitted
        yield client, stack
        client.close()
    finally:
        if stack is not None:
            stack.stop()
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()
