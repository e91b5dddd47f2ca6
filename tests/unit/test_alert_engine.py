"""The alert engine without servers: observe() is cheap and never raises, records flow to
notifiers and alert rows, stop() is idempotent and leaves no thread, configuration."""

from __future__ import annotations

import math
import threading
import time

import pytest

from runwire.proto.config import ConfigError
from runwire.ingest.alerts.engine import AlertConfig, AlertEngine, DisabledEngine, build_engine
from runwire.ingest.alerts.notify import CallbackNotifier
from runwire.testing.records import gpu_record, gpu_sample, metric_record
from runwire.ingest.alerts.rules import parse_rules

pytestmark = pytest.mark.timeout(60)

S = 1_000_000_000
FAST_RULES = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 2, "clear_s": 2}}})


class FakeClient:
    """Stands in for clickhouse-connect: records inserts, fails the first `fail` of them."""

    def __init__(self, fail: int = 0, open_rows=()):
        self.fail = fail
        self.inserts = []
        self.open_rows = list(open_rows)
        self.lock = threading.Lock()

    def insert(self, table, rows, column_names):
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("ClickHouse is restarting")
            self.inserts.append((table, rows, column_names))

    def query(self, sql, parameters=None):
        class R:
            result_rows = self.open_rows if "FROM alerts FINAL" in sql else []
            column_names = ()
        return R()

    def rows(self):
        with self.lock:
            return [dict(zip(c, r)) for _, rows, c in self.inserts for r in rows]


def no_alert_threads():
    return not [t for t in threading.enumerate() if t.name.startswith("runwire-alerts") and t.is_alive()]


@pytest.fixture
def engine_factory():
    made = []

    def make(**kw):
        config = AlertConfig.from_settings(**{"log": False, **kw.pop("config", {})})
        engine = build_engine(config, kw.pop("client", None), rules=kw.pop("rules", FAST_RULES), **kw)
        made.append(engine)
        return engine.start()

    yield make
    for e in made:
        e.stop(timeout=2)
    assert no_alert_threads()


def overheat(t0_ns: int, seconds: int, temp: float = 95.0, **ident):
    return [gpu_record([gpu_sample(t0_ns + i * S, temperature_c=temp)], **ident) for i in range(seconds)]


def test_stream_alert_reaches_notifier_and_store(engine_factory):
    got = []
    client = FakeClient()
    engine = engine_factory(client=client, notifiers=[CallbackNotifier(got.append)], config={"periodic": False})
    t0 = time.time_ns()
    for rec in overheat(t0, 5) + overheat(t0 + 5 * S, 5, temp=60.0):
        engine.observe(*rec)
    assert engine.flush(10)
    assert [(e.kind, e.alert.rule) for e in got] == [("firing", "gpu_temperature_critical"),
                                                     ("resolved", "gpu_temperature_critical")]
    rows = [r for r in client.rows() if r["rule"] == "gpu_temperature_critical"]
    assert [r["state"] for r in rows] == ["pending", "firing", "resolved"]
    assert len({r["alert_id"] for r in rows}) == 1
    # the 80 C warning went pending too, and ended inactive when the GPU cooled before 5 min
    assert [r["state"] for r in client.rows() if r["rule"] == "gpu_temperature_warning"] == ["pending", "inactive"]
    stats = engine.stats()
    assert stats["observed"] == 10 and stats["rows_written"] == 5 and stats["notifiers"]["callback"]["sent"] == 2


def test_observe_never_raises_and_drops_when_full(engine_factory):
    engine = engine_factory(config={"queue_size": 5})
    block = threading.Event()
    # Stall the evaluator on its first record so the queue fills.
    real = engine.stream.observe
    engine.stream.observe = lambda kind, rec: (block.wait(5), real(kind, rec))[1]
    start = time.perf_counter()
    for _ in range(100):
        engine.observe("gpu", {"garbage": True})
    engine.observe(None, None)
    assert time.perf_counter() - start < 0.5
    block.set()
    assert engine.flush(10)
    stats = engine.stats()
    assert stats["dropped"] >= 90 and stats["evaluation_errors"] >= 1


def test_store_outage_is_retried(engine_factory):
    client = FakeClient(fail=2)
    engine = engine_factory(client=client, config={"periodic": False})
    for rec in overheat(time.time_ns(), 4):
        engine.observe(*rec)
    assert engine.flush(15)
    assert [r["state"] for r in client.rows() if r["rule"] == "gpu_temperature_critical"] == ["pending", "firing"]
    assert engine.stats()["store_errors"] == 2


def test_renotify_and_idle_expiry_use_the_engine_clock(engine_factory):
    now = [time.time_ns()]
    got = []
    rules = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0, "renotify_s": 30}}})
    engine = engine_factory(rules=rules, clock=lambda: now[0], notifiers=[CallbackNotifier(got.append)],
                            config={"idle_s": 100})
    for rec in overheat(now[0], 1):
        engine.observe(*rec)
    assert engine.flush(5)
    now[0] += 31 * S
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.kind for e in got] == ["firing", "renotify"]
    now[0] += 100 * S  # no samples for idle_s: resolved as "no data"
    deadline = time.monotonic() + 15
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.kind for e in got][-1] == "resolved" and "no data" in got[-1].alert.message


def test_adopts_open_alerts_at_start(engine_factory):
    from runwire.ingest.alerts.lifecycle import Lifecycle
    from runwire.ingest.alerts.condition import Entity, Transition
    from runwire.ingest.alerts.store import alert_row

    t0 = time.time_ns()
    rule = FAST_RULES.rules["gpu_temperature_critical"]
    old = Lifecycle().apply([Transition(rule, Entity("p", "run-1", "node-0", "GPU-0000", 0), "firing", t0 - 60 * S,
                                        t0 - 60 * S, 95.0, "hot")])[0].alert
    # the row as SELECT_SQL returns it (the same columns, times as integers)
    client = FakeClient(open_rows=[tuple(alert_row(old))])
    got = []
    engine = engine_factory(client=client, notifiers=[CallbackNotifier(got.append)], config={"periodic": False})
    assert len(engine.open_alerts()) == 1
    for rec in overheat(t0, 4):  # still hot: the same alert continues, nobody is paged twice
        engine.observe(*rec)
    assert engine.flush(5)
    assert got == []
    assert [a.alert_id for a in engine.open_alerts() if a.rule == rule.name] == [old.alert_id]


def test_stop_is_idempotent_and_safe_before_start():
    engine = build_engine(AlertConfig.from_settings(log=False), None, rules=FAST_RULES)
    engine.stop()
    engine.stop()
    engine = build_engine(AlertConfig.from_settings(log=False), None, rules=FAST_RULES).start()
    engine.observe(*metric_record([("loss", 1, time.time_ns(), math.nan)]))
    engine.stop(timeout=2)
    engine.stop(timeout=2)
    engine.observe(*metric_record([("loss", 2, time.time_ns(), math.nan)]))  # after stop: ignored, no raise
    assert no_alert_threads()


def test_config_from_environment_and_errors(monkeypatch, tmp_path):
    rules = tmp_path / "r.toml"
    rules.write_text("[rules.gpu_xid]\nseverity = 'warning'\n")
    monkeypatch.setenv("RUNWIRE_ALERT_RULES", str(rules))
    monkeypatch.setenv("RUNWIRE_ALERT_WEBHOOK_URL", "https://hooks.example.com/T0/B0/sekret")
    monkeypatch.setenv("RUNWIRE_ALERT_INTERVAL_S", "5")
    config = AlertConfig.from_settings()
    assert config.rules == str(rules) and config.interval_s == 5
    assert "sekret" not in repr(config)
    engine = build_engine(config, None)
    assert isinstance(engine, AlertEngine)
    assert engine.rules.rules["gpu_xid"].severity == "warning"
    assert {w.name for w in engine.notifiers} == {"log", "webhook"}
    monkeypatch.setenv("RUNWIRE_ALERT_SLACK_URL", "ftp://nope/sekret2")
    monkeypatch.setenv("RUNWIRE_ALERT_QUEUE_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        AlertConfig.from_settings()
    assert "slack_url" in str(info.value) and "queue_size" in str(info.value) and "sekret2" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown setting"):
        AlertConfig.from_settings(colour="red")
    monkeypatch.delenv("RUNWIRE_ALERT_QUEUE_SIZE")
    monkeypatch.delenv("RUNWIRE_ALERT_SLACK_URL")
    assert isinstance(build_engine(AlertConfig.from_settings(enabled=False)), DisabledEngine)


def test_stop_evaluates_and_writes_what_was_queued():
    client = FakeClient()
    engine = build_engine(AlertConfig.from_settings(log=False, periodic=False), client, rules=FAST_RULES).start()
    gate = threading.Event()
    real = engine.stream.observe
    engine.stream.observe = lambda kind, rec: (gate.wait(5), real(kind, rec))[1]
    for rec in overheat(time.time_ns(), 4):
        engine.observe(*rec)
    threading.Timer(0.3, gate.set).start()
    engine.stop(timeout=10)
    assert [r["state"] for r in client.rows() if r["rule"] == "gpu_temperature_critical"] == ["pending", "firing"]
    assert no_alert_threads()
