"""A whole runwire stack on one machine: ClickHouse (chDB server), optionally Kafka, the
gateway and an ingest worker. Used by `runwire up`, `runwire demo` and the end-to-end tests.

Kafka comes from RUNWIRE_KAFKA_BOOTSTRAP when set, else from a local broker when `kafka=True`;
without Kafka the gateway hands batches straight to the ingest writer (direct mode).

`LocalStack.store()` is the persistent local stack: its data in the user's store directory
(runwire.proto.localstack.home(): $RUNWIRE_HOME, else the XDG data dir), ClickHouse on stable
ports, and a record of where it listens that every command and the emitter read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from runwire.deploy.local.clickhouse import ClickHouseServer
from runwire.proto import localstack


class LocalStack:
    def __init__(self, data_dir: str | None = None, kafka: bool = False, gateway_listen: str = "127.0.0.1:0",
                 clickhouse_url: str | None = None, kafka_bootstrap: str | None = None,
                 database: str = "runwire", topic_prefix: str = "runwire.", group_id: str = "runwire-ingest",
                 alerts=None, alert_notifiers: tuple = (), clickhouse_ports: tuple[int, int] = (0, 0),
                 record: bool = False) -> None:
        """alerts: an AlertConfig (runwire.ingest.alerts.engine), True for AlertConfig.from_settings()
        (RUNWIRE_ALERT_*), or None/False for no alerting; alert_notifiers: extra notifiers.
        clickhouse_ports: (http, tcp) of the ClickHouse it starts (0: the OS picks). record:
        write where it listens into data_dir's stack.json while it runs (see `store()`)."""
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="runwire-stack-"))
        self.kafka_bootstrap = kafka_bootstrap or os.environ.get("RUNWIRE_KAFKA_BOOTSTRAP") or None
        self.want_local_kafka = kafka and not self.kafka_bootstrap
        self.clickhouse_url = clickhouse_url or os.environ.get("RUNWIRE_CLICKHOUSE_URL") or None
        self.gateway_listen = gateway_listen
        self.database = database
        self.topic_prefix = topic_prefix
        self.group_id = group_id
        self.clickhouse: ClickHouseServer | None = None
        self.kafka = None
        self.gateway = None
        self.worker = None
        self._worker_thread: threading.Thread | None = None
        self.alert_config = alerts
        self.alert_notifiers = tuple(alert_notifiers)
        self.alerts = None  # the alert engine, when alerting is on
        self.liveness = None  # marks ranks that went silent CRASHED, with alerting
        self.clickhouse_ports = clickhouse_ports
        self.record = record

    @classmethod
    def store(cls, gateway_listen: str | None = None, **kwargs) -> "LocalStack":
        """The persistent local stack in the store directory, with stable ports (ClickHouse
        18123/19000, gateway 50051 unless ``gateway_listen`` says otherwise), recording where
        it listens. RuntimeError when one already runs there."""
        running = localstack.read_record()
        if running is not None:
            raise RuntimeError(f"a local stack already runs (pid {running['pid']}, gateway {running.get('gateway')}, "
                               f"ClickHouse {running.get('clickhouse_url')}; {running['path']})")
        listen = gateway_listen or f"127.0.0.1:{localstack.DEFAULT_GATEWAY_PORT}"
        return cls(data_dir=str(localstack.home()), gateway_listen=listen, record=True,
                   clickhouse_ports=(localstack.DEFAULT_CLICKHOUSE_HTTP_PORT, localstack.DEFAULT_CLICKHOUSE_TCP_PORT),
                   **kwargs)

    @property
    def mode(self) -> str:
        return "kafka" if (self.kafka_bootstrap or self.want_local_kafka) else "direct"

    def start(self) -> "LocalStack":
        from runwire.ingest.gateway import GatewayConfig, create_gateway

        try:
            if self.clickhouse_url is None:
                self.clickhouse = ClickHouseServer(data_dir=self.data_dir / "clickhouse", http_port=self.clickhouse_ports[0],
                                                   tcp_port=self.clickhouse_ports[1]).start()
                self.clickhouse_url = self.clickhouse.url
            if self.want_local_kafka:
                from runwire.deploy.local.kafka import KafkaServer

                self.kafka = KafkaServer(data_dir=self.data_dir / "kafka").start()
                self.kafka_bootstrap = self.kafka.bootstrap
            if self.alert_config:
                self.start_alerts()
                from runwire.ingest.liveness import Liveness
                from runwire.storage.client import connect

                self.liveness = Liveness(connect(self.clickhouse_url, self.database)).start()
            if self.mode == "kafka":
                self.start_worker()
            config = GatewayConfig.from_settings(
                listen=self.gateway_listen, mode=self.mode, kafka_bootstrap=self.kafka_bootstrap or "",
                clickhouse_url=self.clickhouse_url, clickhouse_database=self.database, topic_prefix=self.topic_prefix)
            # Direct mode: the gateway's sink feeds the alerts (in kafka mode, the worker does).
            observers = [self.alerts.observe] if self.alerts is not None and self.mode == "direct" else None
            self.gateway = create_gateway(config, observers=observers).start()
            if self.record:
                localstack.write_record(self.data_dir, gateway=self.gateway.address, clickhouse_url=self.clickhouse_url,
                                        database=self.database, mode=self.mode, data_dir=str(self.data_dir))
        except BaseException:
            self.stop()
            raise
        return self

    def start_alerts(self):
        """The alert engine, with its own ClickHouse client (stream rules fed by the ingest path)."""
        from runwire.ingest.alerts.engine import AlertConfig, build_engine
        from runwire.storage.client import connect
        from runwire.storage.schema import migrate

        config = AlertConfig.from_settings() if self.alert_config is True else self.alert_config
        client = connect(self.clickhouse_url, self.database)
        migrate(client)  # the alerts table must exist before the engine reads its open alerts
        client.close()
        self.alerts = build_engine(config, lambda: connect(self.clickhouse_url, self.database),
                                   notifiers=self.alert_notifiers).start()
        return self.alerts

    def start_worker(self):
        """Start (or restart) the ingest worker thread; fault tests call this after a kill."""
        from runwire.ingest.worker import IngestConfig, create_worker

        config = IngestConfig.from_settings(
            kafka_bootstrap=self.kafka_bootstrap, clickhouse_url=self.clickhouse_url,
            clickhouse_database=self.database, topic_prefix=self.topic_prefix, group_id=self.group_id)
        self.worker = create_worker(config, observers=[self.alerts.observe] if self.alerts is not None else None)
        self._worker_thread = threading.Thread(target=self.worker.run, name="runwire-ingest", daemon=True)
        self._worker_thread.start()
        return self.worker

    def stop_worker(self, timeout: float = 30.0) -> None:
        if self.worker is not None:
            self.worker.stop()
            self._worker_thread.join(timeout)
            self.worker = None

    def client(self):
        from runwire.storage.client import connect

        return connect(self.clickhouse_url, self.database)

    def describe(self) -> str:
        lines = [f"gateway:    {self.gateway.address}  (set RUNWIRE_GATEWAY={self.gateway.address})",
                 f"mode:       {self.mode}",
                 f"clickhouse: {self.clickhouse_url}  database {self.database}"]
        if self.kafka_bootstrap:
            lines.append(f"kafka:      {self.kafka_bootstrap}")
        return "\n".join(lines)

    def stop(self) -> None:
        """Stop everything this stack started, in reverse order. Safe to call twice."""
        if self.record:
            localstack.clear_record(self.data_dir)
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        self.stop_worker()
        if self.liveness is not None:
            self.liveness.stop()
            self.liveness = None
        if self.alerts is not None:
            self.alerts.stop()  # after the ingest path: what it observed is evaluated and written
            self.alerts = None
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.clickhouse is not None:
            self.clickhouse.stop()
            self.clickhouse = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
