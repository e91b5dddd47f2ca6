"""Shared pytest fixtures: real Kafka and real ClickHouse for integration and end-to-end tests.

Where the servers come from (decided once per session, the first time a test asks for one;
``pytest tests/unit`` starts nothing):

* ``RUNWIRE_KAFKA_BOOTSTRAP`` / ``RUNWIRE_CLICKHOUSE_URL`` set: use those servers, start none.
  (``RUNWIRE_CLICKHOUSE_URL`` may carry credentials: ``http://user:password@host:8123``.)
* ``RUNWIRE_TEST_INFRA=docker``: start containers with testcontainers (needs Docker; images
  from ``RUNWIRE_KAFKA_IMAGE`` / ``RUNWIRE_CLICKHOUSE_IMAGE``).
* otherwise (default): local processes, no Docker: ``runwire.deploy.local.kafka.KafkaServer``
  (Apache Kafka from Maven Central, KRaft, one JVM) and
  ``runwire.deploy.local.clickhouse.ClickHouseServer`` (the ClickHouse engine from chdb-core
  served over HTTP and native TCP). Both listen on 127.0.0.1 and are stopped at session end.

When the infrastructure does not start, the tests that need it fail if ``CI=true`` or
``RUNWIRE_REQUIRE_INFRA=1`` (infrastructure tests never skip in CI), and are skipped with the
reason otherwise. Tests that use any of these fixtures get the ``infra`` marker automatically,
so ``-m "not infra"`` deselects them.

Fixtures:
    kafka_bootstrap (session)      "host:port" of the broker.
    clickhouse_url (session)       "http://127.0.0.1:PORT" (HTTP interface).
    kafka_server (session)         FAULT TESTS: the KafkaServer, or None for external/docker.
    clickhouse_server (session)    FAULT TESTS: the ClickHouseServer, or None for external/docker.
    restartable_kafka (function)   FAULT TESTS: the KafkaServer; skips when servers are
                                   external (they cannot be restarted from here); after the
                                   test it is started again if the test left it stopped.
    restartable_clickhouse (function)  same for ClickHouse.
    clickhouse_client (function)   a clickhouse_connect client on clickhouse_url, closed after.
    fresh_database (function)      name of a new, empty ClickHouse database, dropped after.
    kafka_cluster (module)         FAULT TESTS: a local 3-node KafkaCluster (runwire.deploy.local
                                   .kafka) of the test module, always local, stopped after it.
    new_topic (function)           factory ``new_topic(partitions=1, prefix="t") -> name``:
                                   creates a uniquely named topic, deleted after the test.
    s3_server (session)            a real S3 endpoint on loopback (moto's server in a child
                                   process, ``runwire.deploy.local.s3.S3Server``), stopped at the end.
    s3_bucket (function)           (endpoint_url, bucket): a new bucket; AWS_* test credentials set.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

_INFRA_FIXTURES = {
    "kafka_bootstrap", "clickhouse_url", "kafka_server", "clickhouse_server",
    "restartable_kafka", "restartable_clickhouse", "clickhouse_client", "fresh_database",
    "new_topic", "s3_server", "s3_bucket", "kafka_cluster",
}


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _infra_required() -> bool:
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("RUNWIRE_REQUIRE_INFRA"))


def _unavailable(what: str, reason: str) -> None:
    """Fail (CI, or RUNWIRE_REQUIRE_INFRA=1) or skip, saying why ``what`` is unavailable."""
    message = f"{what} is not available: {reason}"
    if _infra_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _infra_mode() -> str:
    mode = os.environ.get("RUNWIRE_TEST_INFRA", "local").strip().lower() or "local"
    if mode not in ("local", "docker"):
        raise pytest.UsageError(f"RUNWIRE_TEST_INFRA must be 'local' or 'docker', not {mode!r}")
    return mode


@pytest.fixture(scope="session", autouse=True)
def _private_local_store(tmp_path_factory) -> Iterator[None]:
    """Tests never find (or write into) the user's local runwire store: RUNWIRE_HOME points at
    an empty directory of the session unless the caller set one."""
    if os.environ.get("RUNWIRE_HOME"):
        yield
        return
    os.environ["RUNWIRE_HOME"] = str(tmp_path_factory.mktemp("runwire-home"))
    try:
        yield
    finally:
        os.environ.pop("RUNWIRE_HOME", None)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _INFRA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.infra)


# ------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------


def _check_tcp(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.split(",")[0].strip().rpartition(":")
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
        pass


@pytest.fixture(scope="session")
def _kafka_infra() -> Iterator[Tuple[str, object]]:
    """(bootstrap, KafkaServer or None). Started once per session, on first use."""
    external = os.environ.get("RUNWIRE_KAFKA_BOOTSTRAP")
    if external:
        try:
            _check_tcp(external)
        except (OSError, ValueError) as e:
            _unavailable(f"Kafka at RUNWIRE_KAFKA_BOOTSTRAP={external}", repr(e))
        yield external, None
        return

    if _infra_mode() == "docker":
        try:
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer(
                os.environ.get("RUNWIRE_KAFKA_IMAGE", "confluentinc/cp-kafka:7.9.0")).with_kraft()
            container.start()
        except Exception as e:  # noqa: BLE001 - ImportError, Docker errors, timeouts
            _unavailable("Kafka (testcontainers)", repr(e))
        try:
            yield container.get_bootstrap_server(), None
        finally:
            container.stop()
        return

    from runwire.deploy.local.kafka import KafkaServer

    server = KafkaServer(num_partitions=1)
    try:
        try:
            server.start(timeout=float(os.environ.get("RUNWIRE_KAFKA_START_TIMEOUT", "120")))
        except Exception as e:  # noqa: BLE001 - RuntimeError with the broker log, missing java/mvn
            _unavailable("Kafka (local KafkaServer)", str(e))
        yield server.bootstrap, server
    finally:
        server.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_infra) -> str:
    """Bootstrap address ("host:port") of a real Kafka broker for this test session."""
    return _kafka_infra[0]


@pytest.fixture(scope="session")
def kafka_server(_kafka_infra):
    """FAULT TESTS ONLY. The session's ``KafkaServer`` (stop/restart/kill it), or None when
    the broker is external or a container. Prefer ``restartable_kafka``, which skips when
    None and makes sure the broker runs again after the test. Shared by the whole session:
    leave it running."""
    return _kafka_infra[1]


@pytest.fixture
def restartable_kafka(kafka_server):
    """FAULT TESTS ONLY. The session's ``KafkaServer``; the test may stop, kill or restart it
    (same bootstrap address, same data). Skipped when Kafka is external (cannot be restarted
    from here). After the test, a broker left stopped is started again for later tests."""
    if kafka_server is None:
        pytest.skip("Kafka is external (RUNWIRE_KAFKA_BOOTSTRAP or docker): cannot restart it from a test")
    yield kafka_server
    if not kafka_server.running:
        kafka_server.start()


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[object]:
    """FAULT TESTS ONLY. A local ``KafkaCluster`` of 3 nodes (broker and controller each, their
    own JVMs, 256 MB heap each) for one test module; its tests may kill and restart nodes."""
    from runwire.deploy.local.kafka import KafkaCluster

    cluster = KafkaCluster(brokers=3, heap="256m")
    try:
        try:
            cluster.start(timeout=float(os.environ.get("RUNWIRE_KAFKA_START_TIMEOUT", "180")))
        except Exception as e:  # noqa: BLE001 - RuntimeError with the node's log, missing java/mvn
            _unavailable("Kafka cluster (local KafkaCluster, 3 nodes)", str(e))
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def new_topic(kafka_bootstrap) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(partitions=1, prefix="t") -> name`` creates a uniquely named topic
    (replication factor 1) and waits until it has leaders; all are deleted after the test."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="runwire-tests")
    created: List[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, partitions, 1)], timeout_ms=30_000)
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            try:
                admin.delete_topics(created, timeout_ms=30_000)
            except Exception:  # noqa: BLE001 - best effort (the broker may be down in a fault test)
                pass
        admin.close()


# ------------------------------------------------------------------------------------------
# ClickHouse
# ------------------------------------------------------------------------------------------


def _check_clickhouse(url: str) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=url, connect_timeout=5, send_receive_timeout=10)
    try:
        client.command("SELECT 1")
    finally:
        client.close()


@pytest.fixture(scope="session")
def _clickhouse_infra() -> Iterator[Tuple[str, object]]:
    """(url, ClickHouseServer or None). Started once per session, on first use."""
    external = os.environ.get("RUNWIRE_CLICKHOUSE_URL")
    if external:
        try:
            _check_clickhouse(external)
        except Exception as e:  # noqa: BLE001
            _unavailable(f"ClickHouse at RUNWIRE_CLICKHOUSE_URL={external}", repr(e))
        yield external, None
        return

    if _infra_mode() == "docker":
        try:
            from testcontainers.clickhouse import ClickHouseContainer

            # port=8123: expose (and wait on) the HTTP interface, which clickhouse-connect uses.
            container = ClickHouseContainer(
                os.environ.get("RUNWIRE_CLICKHOUSE_IMAGE", "clickhouse/clickhouse-server:25.8"), port=8123)
            container.start()
        except Exception as e:  # noqa: BLE001 - ImportError, Docker errors, timeouts
            _unavailable("ClickHouse (testcontainers)", repr(e))
        try:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(8123)
            yield f"http://{container.username}:{container.password}@{host}:{port}", None
        finally:
            container.stop()
        return

    from runwire.deploy.local.clickhouse import ClickHouseServer

    server = ClickHouseServer()
    try:
        try:
            server.start(timeout=float(os.environ.get("RUNWIRE_CLICKHOUSE_START_TIMEOUT", "60")))
        except Exception as e:  # noqa: BLE001 - RuntimeError with the server output
            _unavailable("ClickHouse (local chDB server)", str(e))
        yield server.url, server
    finally:
        server.close()


@pytest.fixture(scope="session")
def clickhouse_url(_clickhouse_infra) -> str:
    """HTTP URL of a real ClickHouse server for this session, e.g. "http://127.0.0.1:PORT".
    Open clients with ``clickhouse_connect.get_client(dsn=clickhouse_url)`` (credentials, if
    any, are in the URL)."""
    return _clickhouse_infra[0]


@pytest.fixture(scope="session")
def clickhouse_server(_clickhouse_infra):
    """FAULT TESTS ONLY. The session's ``ClickHouseServer`` (stop/restart/kill it), or None
    when ClickHouse is external or a container. Prefer ``restartable_clickhouse``. Shared by
    the whole session: leave it running."""
    return _clickhouse_infra[1]


@pytest.fixture
def restartable_clickhouse(clickhouse_server):
    """FAULT TESTS ONLY. The session's ``ClickHouseServer``; the test may stop, kill or restart
    it (same URL, same data). Skipped when ClickHouse is external. After the test, a server
    left stopped is started again for later tests."""
    if clickhouse_server is None:
        pytest.skip("ClickHouse is external (RUNWIRE_CLICKHOUSE_URL or docker): cannot restart it from a test")
    yield clickhouse_server
    if not clickhouse_server.running:
        clickhouse_server.start()


@pytest.fixture
def clickhouse_client(clickhouse_url):
    """A ``clickhouse_connect`` client on ``clickhouse_url`` (database "default"), closed after."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_database(clickhouse_client) -> Iterator[str]:
    """Name of a new, empty ClickHouse database (``rw_test_<hex>``), dropped after the test."""
    name = f"rw_test_{uuid.uuid4().hex[:12]}"
    clickhouse_client.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        try:
            clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        except Exception:  # noqa: BLE001 - best effort (the server may be down in a fault test)
            pass


# ------------------------------------------------------------------------------------------
# S3 (moto's server mode on loopback)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 endpoint (``S3Server``: ``endpoint_url``, ``client()``)."""
    try:
        from runwire.deploy.local.s3 import S3Server

        server = S3Server().start()
    except Exception as e:  # noqa: BLE001 - moto missing, start failure
        _unavailable("S3 (moto server)", str(e))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """(endpoint_url, bucket name) of a new bucket; the test's process and children get
    moto's test credentials through AWS_* variables."""
    from runwire.deploy.local.s3 import TEST_CREDENTIALS

    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    bucket = f"rw-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    yield s3_server.endpoint_url, bucket


@pytest.fixture(autouse=True)
def _artifacts_stay_in_tmp(tmp_path_factory, monkeypatch):
    """Runs started by any test (and their child processes) keep artifacts in a temporary store,
    never in the user's ~/.local/share, and skip metadata capture (its tags and artifacts would
    change what emitter tests count); the reproducibility tests turn capture on explicitly."""
    if "RUNWIRE_ARTIFACT_STORE" not in os.environ:
        monkeypatch.setenv("RUNWIRE_ARTIFACT_STORE", str(tmp_path_factory.getbasetemp() / "artifact-store"))
    if "RUNWIRE_CAPTURE" not in os.environ:
        monkeypatch.setenv("RUNWIRE_CAPTURE", "false")
