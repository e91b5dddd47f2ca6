"""A real, single-node Apache Kafka broker for tests and local use, without Docker.

The broker is Apache Kafka itself (``kafka.Kafka``), resolved as jars from Maven Central with
Maven and run with ``java -cp``, in KRaft mode with one process acting as broker and controller,
listening on 127.0.0.1 only.

Jar cache: ``$RUNWIRE_CACHE_DIR/kafka-<version>/`` (default ``$XDG_CACHE_HOME/runwire`` or
``~/.cache/runwire``). The first resolve downloads about 45 MB and takes seconds to a minute; a
marker file is written only after a complete resolve, so later runs skip Maven entirely.

Usage::

    with KafkaServer() as kafka:          # starts, waits until produce+fetch work
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
        ...
        kafka.restart()                    # same ports, same data

From a shell: ``python -m runwire.deploy.local.kafka`` runs a broker in the foreground and
prints its bootstrap address.

Process model: ``python -c <watchdog>`` -> ``java ... kafka.Kafka server.properties``, in their
own process group. The watchdog holds a pipe from the Python process that started it and stops
the JVM when that pipe closes, so a test run that is killed (SIGKILL, CI cancel) leaves no
broker behind. Broker logs: ``<data_dir>/broker.log`` (log4j2), JVM output: ``jvm.out``.

Requirements: ``java`` (17+) and, for the first resolve only, ``mvn`` on PATH (or ``JAVA_HOME``
/ ``RUNWIRE_MVN``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from runwire.deploy.local.process import ManagedServer, serve_in_foreground

__all__ = ["KafkaServer", "KafkaCluster", "resolve_kafka_jars", "cache_root", "KAFKA_VERSION"]

KAFKA_VERSION = "4.1.1"

_POM_TEMPLATE = Path(__file__).with_name("kafka-pom.xml")
_MARKER = "RESOLVED"
_PROBE_TOPIC = "_runwire_probe"


# --------------------------------------------------------------------------------------------
# Jar resolution
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of runwire's download cache.

    ``RUNWIRE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/runwire``, else ``~/.cache/runwire``.
    """
    env = os.environ.get("RUNWIRE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "runwire"


def _find_mvn() -> str:
    mvn = os.environ.get("RUNWIRE_MVN") or shutil.which("mvn")
    if not mvn:
        raise RuntimeError(
            "Apache Maven ('mvn') is needed once to download the Kafka jars from Maven Central, "
            "and it is not on PATH (or set RUNWIRE_MVN)."
        )
    return mvn


def _find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise RuntimeError("'java' (17 or newer) is needed to run the Kafka broker and is not on PATH.")
    return java


def resolve_kafka_jars(version: str = KAFKA_VERSION, cache_dir: Optional[os.PathLike] = None,
                       timeout: float = 900.0) -> List[Path]:
    """Return the jars of a runnable Kafka broker, downloading them with Maven on first use.

    ``cache_dir`` defaults to ``cache_root() / f"kafka-{version}"``. The Maven local repository
    (``-Dmaven.repo.local``) lives inside it too, so nothing is written to ``~/.m2``. A file lock
    serialises concurrent resolves (parallel test sessions); the marker file, which records a
    hash of the pom, is written only after Maven succeeded, so an interrupted resolve is redone.
    """
    cdir = Path(cache_dir) if cache_dir is not None else cache_root() / f"kafka-{version}"
    cdir.mkdir(parents=True, exist_ok=True)
    pom_text = _POM_TEMPLATE.read_text().replace("@KAFKA_VERSION@", version)
    digest = hashlib.sha256(pom_text.encode()).hexdigest()
    marker = cdir / _MARKER
    jars_dir = cdir / "jars"

    def cached() -> Optional[List[Path]]:
        try:
            if marker.read_text().strip() != digest:
                return None
        except OSError:
            return None
        jars = sorted(jars_dir.glob("*.jar"))
        return jars or None

    jars = cached()
    if jars:
        return jars
    with open(cdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jars = cached()  # someone else may have finished while we waited
        if jars:
            return jars
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        (cdir / "pom.xml").write_text(pom_text)
        tmp_jars = cdir / "jars.partial"
        shutil.rmtree(tmp_jars, ignore_errors=True)
        cmd = [
            _find_mvn(), "-q", "-B", "-f", str(cdir / "pom.xml"),
            f"-Dmaven.repo.local={cdir / 'm2'}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp_jars}",
            "-DincludeScope=runtime",
        ]
        try:
            proc = subprocess.run(cmd, cwd=cdir, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"Maven did not resolve Kafka {version} within {timeout:.0f}s") from e
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr)[-4000:]
            raise RuntimeError(f"Maven failed to resolve Kafka {version} (exit {proc.returncode}):\n{out}")
        if not any(tmp_jars.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"Maven finished but {tmp_jars} holds no kafka_2.13 jar")
        shutil.rmtree(jars_dir, ignore_errors=True)
        tmp_jars.rename(jars_dir)
        marker.write_text(digest + "\n")
    return sorted(jars_dir.glob("*.jar"))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now on ``host`` (racy by nature, good enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _kafka_uuid() -> str:
    """A Kafka ``Uuid`` string (url-safe base64 of 16 random bytes, no padding).

    Kafka's own generator avoids ids whose text starts with '-' (they look like CLI flags).
    """
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return "<no log>"


_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by runwire.deploy.local.kafka: broker logs go to a file, never to our stdout. -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <!-- start() waits for this logger's "Kafka Server started": keep it at INFO. -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
    <Root level="{level}">
      <AppenderRef ref="file"/>
    </Root>
  </Loggers>
</Configuration>
"""


# Runs the JVM (argv[1:]) and stops it when our stdin reaches EOF (the parent closed the pipe
# or died) or on SIGTERM; exits with the JVM's status once the JVM is gone.
_WATCHDOG = r"""
import signal, subprocess, sys, threading
jvm = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def stop(*_):
    if jvm.poll() is None:
        try:
            jvm.terminate()
        except OSError:
            pass
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
def watch():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except Exception:
        pass
    stop()
threading.Thread(target=watch, daemon=True).start()
code = jvm.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def _client_settings(bootstrap: str, budget: float) -> Dict[str, object]:
    ms = int(budget * 1000)
    return dict(bootstrap_servers=bootstrap, client_id="runwire-probe", request_timeout_ms=max(ms, 2000),
                reconnect_backoff_ms=100, reconnect_backoff_max_ms=500, bootstrap_timeout_ms=max(ms, 2000))


def _probe(bootstrap: str, replication: int, budget: float) -> None:
    """Create the probe topic, produce one record with acks=all and fetch it back."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    ms = int(budget * 1000)
    common = _client_settings(bootstrap, budget)
    admin = KafkaAdminClient(**common)
    try:
        try:
            admin.create_topics([NewTopic(_PROBE_TOPIC, 1, replication)], timeout_ms=ms)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()
    value = uuid.uuid4().hex.encode()
    producer = KafkaProducer(acks="all", max_block_ms=ms, linger_ms=0, retries=5,
                             retry_backoff_ms=100, **common)
    try:
        meta = producer.send(_PROBE_TOPIC, value=value, partition=0).get(timeout=budget)
    finally:
        producer.close(timeout=2)
    tp = TopicPartition(_PROBE_TOPIC, 0)
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100,
                             **common)
    try:
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                if any(r.value == value for r in records):
                    return
        raise TimeoutError("probe record was produced but not fetched back")
    finally:
        consumer.close()


def _start_retrying_ports(attempts: int, start_once, bind_failed, new_ports, stop) -> None:
    """``start_once()``; when it fails because a port chosen free was taken before the JVM
    bound it (``bind_failed()``) and attempts remain, ``new_ports()`` and again. Whatever fails
    is stopped first (``stop(timeout)``: a JVM that failed to start can hang 15 s in shutdown)."""
    for attempt in range(attempts):
        try:
            start_once()
            return
        except RuntimeError:
            failed_bind = bind_failed()
            stop(timeout=3)
            if failed_bind and attempt + 1 < attempts:
                new_ports()
                continue
            raise
        except BaseException:
            stop()
            raise


def _replication_properties(replication: int, min_insync: int) -> Dict[str, object]:
    """The broker defaults and internal topics (offsets, transactions, share state) for a
    cluster whose topics have ``replication`` replicas and ``min_insync`` in-sync ones."""
    return {
        "default.replication.factor": replication,
        "min.insync.replicas": min_insync,
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_insync,
    }


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


class KafkaServer(ManagedServer):
    """One Kafka broker+controller (KRaft) in a child JVM, on 127.0.0.1.

    Parameters:
        data_dir: where the broker keeps its log segments, config and log file. Default: a new
            temporary directory, deleted by ``close()`` / leaving the ``with`` block (``stop()``
            keeps it, so ``restart()`` keeps the data). A directory that was formatted before is
            reused as is (data kept).
        port: client (PLAINTEXT) port. Default: a free port chosen by the OS, kept for restarts.
        controller_port: KRaft controller port. Default: a free port, kept for restarts.
        num_partitions: partitions of auto-created topics (``num.partitions``). Default 1.
        auto_create_topics: ``auto.create.topics.enable``. Default True, Kafka's own default, so
            the broker behaves like a stock one; runwire creates its topics explicitly anyway.
        heap: JVM heap (``-Xmx``). Default ``"512m"``.
        extra_config: further ``server.properties`` entries, overriding ours.
        version: Kafka version to resolve from Maven Central. Default ``KAFKA_VERSION``.
        cache_dir: jar cache; see ``resolve_kafka_jars``.

    Environment: ``RUNWIRE_KAFKA_LOG_LEVEL`` (root level of the broker log, default INFO),
    ``RUNWIRE_CACHE_DIR`` (jar cache root), ``JAVA_HOME`` / ``RUNWIRE_MVN``.
    Topics: ``start()`` creates a one-partition probe topic ``_runwire_probe``.
    """

    def __init__(self, data_dir: Optional[os.PathLike] = None, port: Optional[int] = None,
                 controller_port: Optional[int] = None, *, num_partitions: int = 1,
                 auto_create_topics: bool = True, heap: str = "512m",
                 extra_config: Optional[Dict[str, object]] = None,
                 version: str = KAFKA_VERSION, cache_dir: Optional[os.PathLike] = None) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="runwire-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        self._auto_port = not port
        self._auto_controller_port = not controller_port
        self._started = False
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.num_partitions = num_partitions
        self.auto_create_topics = auto_create_topics
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.version = version
        self.cache_dir = cache_dir
        self._proc: Optional[subprocess.Popen] = None
        self._stdout = None

    # ---- public properties ----

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log4j log file (INFO and up)."""
        return self.data_dir / "broker.log"

    @property
    def stdout_path(self) -> Path:
        """The JVM's stdout/stderr (JVM errors before logging is up land here)."""
        return self.data_dir / "jvm.out"

    @property
    def logs_dir(self) -> Path:
        """Kafka's ``log.dirs`` (topic data and KRaft metadata)."""
        return self.data_dir / "kafka-logs"

    # ---- configuration ----

    def _server_properties(self) -> Dict[str, object]:
        props: Dict[str, object] = {
            "process.roles": "broker,controller",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.logs_dir),
            "num.partitions": self.num_partitions,
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "offsets.topic.num.partitions": 5,  # 50 by default: slow to create on 2 cores
            "transaction.state.log.num.partitions": 5,
            "group.initial.rebalance.delay.ms": 0,
            # Small machines: fewer threads than the server defaults.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "background.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
            # After a crash (kill()), the restarted broker cannot register until the controller
            # expires the old registration: broker.session.timeout.ms (9 s by default). 4 s
            # still allows eight missed 500 ms heartbeats before a live broker gets fenced.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 4000,
        }
        props.update(self._topology())
        props.update(self.extra_config)
        return props

    def _topology(self) -> Dict[str, object]:
        """Node id, quorum and replication: one node, so internal topics have one replica."""
        return {"node.id": 1, "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
                **_replication_properties(1, 1)}

    def _cluster_id(self) -> str:
        return _kafka_uuid()

    def _write_config(self) -> Path:
        path = self.data_dir / "server.properties"
        lines = ["# Written by runwire.deploy.local.kafka; rewritten on every start."]
        lines += [f"{k}={v}" for k, v in self._server_properties().items()]
        path.write_text("\n".join(lines) + "\n")
        (self.data_dir / "log4j2.xml").write_text(
            _LOG4J2_XML.format(log=str(self.log_path).replace("&", "&amp;").replace('"', "&quot;"),
                               level=os.environ.get("RUNWIRE_KAFKA_LOG_LEVEL", "INFO")))
        return path

    def _java_cmd(self, jars: List[Path], main: str, *args: str, heap: Optional[str] = None) -> List[str]:
        return [
            _find_java(),
            f"-Xmx{heap or self.heap}", "-Xms64m", "-Xss1m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-XX:TieredStopAtLevel=1",  # C1 only: much less JIT CPU at start-up on 2 cores
            "-Djava.awt.headless=true",
            "-Dlog4j.shutdownHookEnabled=false",  # else a second context warns on stderr at exit
            "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", os.pathsep.join(str(j) for j in jars),
            main, *args,
        ]

    def _format_storage(self, jars: List[Path], config: Path) -> None:
        if (self.logs_dir / "meta.properties").exists():
            return  # formatted before: keep the data
        cmd = self._java_cmd(jars, "kafka.tools.StorageTool", "format", "-t", self._cluster_id(),
                             "-c", str(config), heap="256m")
        proc = subprocess.run(cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage in {self.logs_dir} failed "
                               f"(exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")

    # ---- lifecycle ----

    def start(self, timeout: float = 120.0) -> "KafkaServer":
        """Start the broker and wait until it really accepts produce (acks=all) and fetch.

        Resolves the jars first if needed (not counted in ``timeout``). Raises ``RuntimeError``
        with the tail of the broker log when it exits or is not ready within ``timeout`` seconds;
        the process is stopped in that case.
        """
        if self.running:
            return self
        jars = resolve_kafka_jars(self.version, self.cache_dir)
        # A port picked by free_port() can be taken by someone else before the JVM binds it;
        # before the first successful start (nobody knows the address yet) pick new ones.
        attempts = 1 if self._started or not (self._auto_port or self._auto_controller_port) else 3
        log_offset = 0

        def start_once() -> None:
            nonlocal log_offset
            log_offset = self._launch(jars)
            self._wait_ready(timeout, log_offset)

        def new_ports() -> None:
            if self._auto_port:
                self.port = free_port()
            if self._auto_controller_port:
                self.controller_port = free_port()

        _start_retrying_ports(attempts, start_once, lambda: self._bind_failed_since(log_offset), new_ports,
                              self.stop)
        self._started = True
        return self

    def _launch(self, jars: List[Path]) -> int:
        """Write the config, format the storage once, start the JVM; returns the log offset
        from which this start's messages are read."""
        config = self._write_config()
        self._format_storage(jars, config)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._stdout = open(self.stdout_path, "ab")
        # The JVM runs under a small watchdog holding a pipe from us: if this process dies
        # without stop() (SIGKILL, a killed CI job), the pipe closes and the watchdog stops
        # the broker, so no orphaned JVM is left behind. Own process group for stop().
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *self._java_cmd(jars, "kafka.Kafka", str(config))],
            cwd=self.data_dir, stdin=subprocess.PIPE, stdout=self._stdout,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        return log_offset

    def _errors_since(self, offset: int, limit: int = 12) -> List[str]:
        """ERROR/FATAL lines (and their 'Caused by') the broker logged after ``offset``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        keep = [line for line in text.splitlines()
                if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")]
        return keep[:limit]

    def _logged_since(self, offset: int, needle: str) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return needle.encode() in f.read()
        except OSError:
            return False

    def _bind_failed_since(self, offset: int) -> bool:
        return any("Address already in use" in line for line in self._errors_since(offset, 1000))

    def _failure(self, why: str, log_offset: int = 0) -> RuntimeError:
        errors = "\n".join(self._errors_since(log_offset)) or "<none>"
        return RuntimeError(
            f"Kafka broker on {self.bootstrap} {why}.\n"
            f"--- errors in {self.log_path} ---\n{errors}\n"
            f"--- tail of {self.log_path} ---\n{_tail(self.log_path, 3000)}\n"
            f"--- tail of {self.stdout_path} ---\n{_tail(self.stdout_path, 2000)}"
        )

    def _wait_ready(self, timeout: float, log_offset: int = 0) -> None:
        deadline = time.monotonic() + timeout
        last_error: Optional[BaseException] = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise self._failure(f"exited with code {code} during start-up", log_offset)
            # After a fatal start-up error the JVM can take 15 s to exit: do not wait for it.
            fatal = [e for e in self._errors_since(log_offset) if "Fatal error" in e or "Exiting Kafka" in e]
            if fatal:
                raise self._failure("failed to start", log_offset)
            if time.monotonic() >= deadline:
                raise self._failure(f"was not ready after {timeout:.0f}s (last probe error: {last_error!r})",
                                    log_offset)
            # Probe only once this JVM says it started: the port may belong to someone else.
            if not self._logged_since(log_offset, "Kafka Server started") or not self._port_open():
                time.sleep(0.2)
                continue
            try:
                self._ready_check(min(15.0, max(1.0, deadline - time.monotonic())))
                return
            except (ImportError, TypeError) as e:
                raise self._failure(f"could not be probed: {e!r}", log_offset) from e
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                if type(e).__name__ == "KafkaConfigurationError":  # our bug, not readiness
                    raise
                last_error = e
                time.sleep(0.3)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _ready_check(self, budget: float) -> None:
        _probe(self.bootstrap, 1, budget)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker's process group, wait up to ``timeout``, then SIGKILL.

        Keeps the data. Safe to call twice, and when the broker never started.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # Both the watchdog and the JVM get SIGTERM; the watchdog exits after the JVM.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # The watchdog leads the group; make sure nothing else of the group survives.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KafkaServer(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r}, {state})"


# --------------------------------------------------------------------------------------------
# A cluster of brokers
# --------------------------------------------------------------------------------------------


class _ClusterNode(KafkaServer):
    """One node of a ``KafkaCluster``: broker and voter of the cluster's KRaft quorum."""

    def __init__(self, cluster: "KafkaCluster", node_id: int, data_dir: Path, port: int,
                 controller_port: int) -> None:
        super().__init__(data_dir, port, controller_port, num_partitions=cluster.num_partitions,
                         heap=cluster.heap, extra_config=cluster.extra_config,
                         version=cluster.version, cache_dir=cluster.cache_dir)
        self.node_id = node_id
        self.cluster = cluster
        self._auto_port = self._auto_controller_port = False  # the cluster picks the ports
        self._owns_dir = False  # the cluster's directory

    def _topology(self) -> Dict[str, object]:
        return {"node.id": self.node_id, "controller.quorum.voters": self.cluster.voters,
                **_replication_properties(self.cluster.replication, self.cluster.min_insync)}

    def _cluster_id(self) -> str:
        return self.cluster.cluster_id

    def _ready_check(self, budget: float) -> None:
        """Started means unfenced: ready once the cluster's metadata lists this broker."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**_client_settings(self.bootstrap, budget))
        try:
            brokers = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
        if not any(b["broker_id"] == self.node_id and not b.get("is_fenced") for b in brokers):
            raise RuntimeError(f"broker {self.node_id} is not in the cluster's metadata yet")


class KafkaCluster:
    """Several Kafka nodes on 127.0.0.1, each its own JVM, data directory and ports, each
    broker and controller (a combined KRaft quorum of all nodes), for fault tests.

    Topics created without a replication factor get ``min(3, brokers)`` replicas and
    ``min.insync.replicas`` as runwire's topics (runwire.ingest.kafka_io), internal topics
    (consumer offsets, transactions) too.

    Parameters:
        brokers: number of nodes (ids 1..brokers). Default 3.
        data_dir: holds ``node-<id>/`` per node. Default: a temporary directory, deleted by
            ``close()``.
        ports, controller_ports: per node, in node order; default: free ports chosen once and
            kept for restarts. A port in use makes ``start()`` fail with the broker's error.
        heap: JVM heap per node. Default ``"256m"``.
        num_partitions, extra_config, version, cache_dir: as ``KafkaServer``'s, for every node.

    Usage::

        with KafkaCluster() as cluster:
            cluster.bootstrap                      # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
            victim = cluster.leader("topic", 0)    # node id, from the cluster's metadata
            cluster.kill(victim)                   # SIGKILL
            cluster.start_node(victim)
            cluster.wait_in_sync()                 # no under-replicated partition left
    """

    def __init__(self, brokers: int = 3, data_dir: Optional[os.PathLike] = None, *,
                 ports: Optional[List[int]] = None, controller_ports: Optional[List[int]] = None,
                 num_partitions: int = 1, heap: str = "256m", extra_config: Optional[Dict[str, object]] = None,
                 version: str = KAFKA_VERSION, cache_dir: Optional[os.PathLike] = None) -> None:
        from runwire.ingest.kafka_io import min_insync_for, replication_for

        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        for name, given in (("ports", ports), ("controller_ports", controller_ports)):
            if given is not None and len(given) != brokers:
                raise ValueError(f"{name} needs one port per broker ({brokers}), got {len(given)}")
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="runwire-kafka-cluster-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.replication = replication_for(brokers)
        self.min_insync = min_insync_for(self.replication)
        self.num_partitions, self.heap, self.version, self.cache_dir = num_partitions, heap, version, cache_dir
        self.extra_config = dict(extra_config or {})
        self.cluster_id = _kafka_uuid()
        self._auto_ports = ports is None and controller_ports is None
        self._started = False
        wanted = list(ports or []) + list(controller_ports or [])
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"ports must be distinct: {wanted}")
        client = list(ports or self._free_ports(brokers, set(wanted)))
        control = list(controller_ports or self._free_ports(brokers, set(wanted) | set(client)))
        self.nodes = [_ClusterNode(self, i + 1, self.data_dir / f"node-{i + 1}", client[i], control[i])
                      for i in range(brokers)]

    @staticmethod
    def _free_ports(count: int, avoid: set) -> List[int]:
        out: List[int] = []
        while len(out) < count:
            port = free_port()
            if port not in avoid and port not in out:
                out.append(port)
        return out

    # ---- addresses and state ----

    @property
    def voters(self) -> str:
        """``controller.quorum.voters``: every node is a voter."""
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's client address, for ``bootstrap_servers``."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def running(self) -> bool:
        """True while every node runs."""
        return all(n.running for n in self.nodes)

    def node(self, node_id: int) -> KafkaServer:
        return self.nodes[node_id - 1]

    # ---- lifecycle ----

    def start(self, timeout: float = 180.0) -> "KafkaCluster":
        """Start every node that is not running and wait until each is an unfenced broker and
        the cluster takes a produce with acks=all on a fully replicated topic and a fetch.
        Raises ``RuntimeError`` with the failing node's log; all nodes are stopped then."""
        jars = resolve_kafka_jars(self.version, self.cache_dir)
        attempts = 3 if self._auto_ports and not self._started else 1
        offsets: Dict[int, int] = {}

        def start_once() -> None:
            deadline = time.monotonic() + timeout
            # All nodes first: none becomes ready before a majority of the quorum runs.
            offsets.clear()
            offsets.update({n.node_id: n._launch(jars) for n in self.nodes if not n.running})
            for n in self.nodes:
                if n.node_id in offsets:
                    n._wait_ready(max(1.0, deadline - time.monotonic()), offsets[n.node_id])
            self._probe(deadline)

        def new_ports() -> None:
            fresh = self._free_ports(2 * len(self.nodes), set())
            for i, n in enumerate(self.nodes):
                n.port, n.controller_port = fresh[2 * i], fresh[2 * i + 1]

        _start_retrying_ports(attempts, start_once,
                              lambda: any(n._bind_failed_since(offsets.get(n.node_id, 0)) for n in self.nodes),
                              new_ports, self.stop)
        self._started = True
        return self

    def _probe(self, deadline: float) -> None:
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            try:
                _probe(self.bootstrap, self.replication, min(15.0, max(1.0, deadline - time.monotonic())))
                return
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = e
                time.sleep(0.3)
        raise RuntimeError(f"Kafka cluster on {self.bootstrap} took no acks=all produce (last error: {last!r})")

    def start_node(self, node_id: int, timeout: float = 120.0) -> KafkaServer:
        """Start one stopped node again (same ports, same data); returns when it is an
        unfenced broker. Its replicas catch up afterwards: see ``wait_in_sync``."""
        return self.node(node_id).start(timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash): no controlled shutdown, nothing flushed."""
        self.node(node_id).kill()

    def stop_node(self, node_id: int) -> None:
        """Stop one node cleanly (SIGTERM: controlled shutdown moves its leaders away first)."""
        self.node(node_id).stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (data kept). Safe to call twice. All are signalled at once: one by
        one, the last node's controlled shutdown would wait for a quorum that is gone."""
        for n in self.nodes:
            if n.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.pid, signal.SIGTERM)
        for n in self.nodes:
            n.stop(timeout=timeout)

    def close(self) -> None:
        """Stop, and delete the data directory if this object created it (then at once with
        SIGKILL: a clean shutdown of data about to be deleted is wasted time)."""
        if not self._owns_dir:
            self.stop()
            return
        for n in self.nodes:
            n.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- what the cluster's metadata says ----

    def admin(self, budget: float = 10.0):
        """A new ``KafkaAdminClient`` on the running nodes (close it)."""
        from kafka import KafkaAdminClient

        running = ",".join(n.bootstrap for n in self.nodes if n.running) or self.bootstrap
        return KafkaAdminClient(**_client_settings(running, budget))

    def _ask(self, question, timeout: float = 30.0):
        """``question(admin)`` on a new admin client, asked again while the client fails to
        reach a node: right after a crash the metadata still names the dead node."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        while True:
            admin = None
            try:
                admin = self.admin()
                return question(admin)
            except KafkaError as e:
                if not e.retriable or time.monotonic() > deadline:
                    raise
            finally:
                if admin is not None:
                    admin.close()
            time.sleep(0.3)

    def partitions(self, topics: Optional[List[str]] = None) -> Dict[tuple, dict]:
        """``{(topic, partition): {"leader", "replicas", "isr"}}`` from the cluster's metadata
        (all topics, internal ones included, when ``topics`` is None)."""
        described = self._ask(lambda admin: admin.describe_topics(topics))
        return {(t["name"], p["partition_index"]): {"leader": p["leader_id"], "replicas": list(p["replica_nodes"]),
                                                     "isr": list(p["isr_nodes"])}
                for t in described for p in t["partitions"]}

    def leader(self, topic: str, partition: int) -> int:
        """Node id leading ``topic``'s ``partition`` (-1 while it has none)."""
        return self.partitions([topic])[(topic, partition)]["leader"]

    def active_controller(self) -> int:
        """Node id of the KRaft quorum's leader (the active controller), from DescribeQuorum."""
        quorum = self._ask(lambda admin: admin.describe_metadata_quorum())
        return quorum["topics"][0]["partitions"][0]["leader_id"]

    def under_replicated(self) -> List[tuple]:
        """(topic, partition) of every partition whose in-sync replicas are fewer than its replicas."""
        return sorted(tp for tp, p in self.partitions().items() if set(p["isr"]) != set(p["replicas"]))

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        """Wait until every node runs and no partition is under-replicated; RuntimeError after
        ``timeout`` seconds naming the partitions still behind."""
        deadline = time.monotonic() + timeout
        behind: object = "not asked yet"
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"nodes {[n.node_id for n in self.nodes if not n.running]} are not running")
            try:
                behind = self.under_replicated()
                if not behind:
                    return
            except Exception as e:  # noqa: BLE001 - metadata not available yet
                behind = repr(e)
            time.sleep(0.5)
        raise RuntimeError(f"Kafka cluster on {self.bootstrap}: still under-replicated after {timeout:.0f}s: {behind}")

    def __repr__(self) -> str:
        return f"KafkaCluster(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runwire.deploy.local.kafka",
        description="Run a single-node Apache Kafka broker (KRaft) on 127.0.0.1 in the foreground.")
    parser.add_argument("--data-dir", help="broker data directory (default: a temporary one, deleted at exit)")
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    parser.add_argument("--controller-port", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=1, help="num.partitions for auto-created topics")
    parser.add_argument("--brokers", type=int, default=1,
                        help="nodes (each broker and controller, its own JVM); above 1 with free ports only")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--resolve-only", action="store_true",
                        help="only fetch the jars into the cache (make kafka-jars) and exit")
    args = parser.parse_args(argv)
    if args.resolve_only:
        jars = resolve_kafka_jars()
        print(f"Kafka {KAFKA_VERSION}: {len(jars)} jars cached in {cache_root()}")
        return 0
    if args.brokers > 1:
        if args.port or args.controller_port:
            parser.error("--port and --controller-port are for one broker; a cluster picks free ports")
        cluster = KafkaCluster(args.brokers, args.data_dir, num_partitions=args.partitions)
        return serve_in_foreground(cluster, lambda: cluster.start(args.timeout), lambda: (
            f"Kafka {cluster.version} cluster of {args.brokers}", f"bootstrap: {cluster.bootstrap}",
            [f"data:      {cluster.data_dir}"]), "a node")
    server = KafkaServer(args.data_dir, args.port, args.controller_port, num_partitions=args.partitions)
    return serve_in_foreground(server, lambda: server.start(args.timeout), lambda: (
        f"Kafka {server.version}", f"bootstrap: {server.bootstrap}", [f"log:       {server.log_path}"]), "broker")


if __name__ == "__main__":
    sys.exit(main())
