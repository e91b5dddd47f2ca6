"""The alert engine: stream rules on the ingest path, periodic rules against ClickHouse, the
lifecycle, the `alerts` table and the notifiers, tied together.

    engine = build_engine(AlertConfig.from_settings(), lambda: connect(url, database))
    worker = IngestWorker(config, writer, observers=[engine.observe])
    engine.start(); ...; engine.stop()

`observe(kind, record)` is what the ingest path calls for every decoded record: it only puts
the record on a bounded queue (dropped and counted when full) and never raises. Threads (all
named daemons, every wait interruptible by `stop()`):

- runwire-alerts-eval: stream rules -> lifecycle -> events (and re-notify ticks);
- runwire-alerts-io: writes alert rows to ClickHouse (retried with backoff) and evaluates the
  periodic rules every `interval_s`;
- runwire-alerts-notify-<name>: one per notifier (see notify.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from runwire.proto import retry
from runwire.proto.config import build, secret
from runwire.ingest.alerts.condition import Transition
from runwire.ingest.alerts.lifecycle import Alert, AlertEvent, Lifecycle
from runwire.ingest.alerts.notify import (
    LogNotifier, Notifier, NotifierWorker, SlackNotifier, WebhookNotifier,
)
from runwire.ingest.alerts.periodic import PeriodicEvaluator
from runwire.ingest.alerts.rules import PERIODIC_KINDS, RuleSet, load_rules
from runwire.ingest.alerts.store import AlertStore
from runwire.ingest.alerts.stream import StreamEvaluator

log = logging.getLogger("runwire.alerts")

_NS = 1_000_000_000
_MAX_PENDING_ROWS = 100_000
_STOP = object()
_NEVER_SET = threading.Event()  # waits on it are short sleeps


@dataclass(frozen=True)
class AlertConfig:
    """Alerting settings; each also reads RUNWIRE_ALERT_<NAME> (e.g. RUNWIRE_ALERT_RULES)."""

    enabled: bool = True             # False: build_engine returns an engine that does nothing
    rules: str = ""                  # rules file (.toml; .yaml with PyYAML); empty: the built-in rules
    webhook_url: str = secret("")    # generic JSON webhook (POST); may hold a token: never logged
    slack_url: str = secret("")      # Slack-compatible incoming webhook; never logged
    log: bool = True                 # also log every notification (logger runwire.alerts)
    periodic: bool = True            # evaluate straggler/heartbeat/SQL rules here (one engine per cluster)
    interval_s: float = 15.0         # seconds between evaluations of a periodic rule (rules may override)
    renotify_s: float = 3600.0       # re-notify a firing alert this often (rules may override; 0: never)
    idle_s: float = 600.0            # forget a stream entity silent this long (resolving a firing alert)
    queue_size: int = 1024           # records awaiting evaluation; beyond, dropped and counted
    notify_queue_size: int = 1000    # notifications waiting per notifier; beyond, dropped and counted
    notify_timeout_s: float = 5.0    # per HTTP request
    notify_deadline_s: float = 120.0  # give up on one notification after this long (retries included)
    adopt: bool = True               # at start, continue the alerts the table holds open

    def problems(self) -> list[str]:
        out = []
        for name in ("webhook_url", "slack_url"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                # Never echo the value: it may carry a token.
                out.append(f"{name} (RUNWIRE_ALERT_{name.upper()}) must be an http:// or https:// URL")
        if self.interval_s <= 0 or self.idle_s <= 0:
            out.append("interval_s and idle_s must be > 0")
        if self.renotify_s < 0:
            out.append("renotify_s must be >= 0 (0: never re-notify)")
        if self.queue_size < 1 or self.notify_queue_size < 1:
            out.append("queue_size and notify_queue_size must be >= 1")
        if self.notify_timeout_s <= 0 or self.notify_deadline_s <= 0:
            out.append("notify_timeout_s and notify_deadline_s must be > 0")
        return out

    @classmethod
    def from_settings(cls, **overrides) -> "AlertConfig":
        return build(cls, overrides, prefix="RUNWIRE_ALERT_")


class AlertEngine:
    """See the module docstring. `clock`: wall clock in ns (tests inject one); it drives
    re-notify, idle expiry and the periodic rules' evaluation time, never the stream's
    for-durations (those use sample timestamps)."""

    def __init__(self, config: AlertConfig, rules: RuleSet, client=None,
                 notifiers: Iterable[Notifier] = (), clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.rules = rules
        self.clock = clock
        self.client = client
        self.stream = StreamEvaluator(rules, idle_s=config.idle_s)
        self.lifecycle = Lifecycle(renotify_s=config.renotify_s)
        self.store = AlertStore(client) if client is not None else None
        self.periodic = (PeriodicEvaluator(client, rules, interval_s=config.interval_s)
                         if client is not None and config.periodic else None)
        self.notifiers = [NotifierWorker(n, max_queue=config.notify_queue_size, deadline_s=config.notify_deadline_s)
                          for n in notifiers]
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()        # the lifecycle: eval and io threads both feed it
        self._rows_lock = threading.Lock()
        self._rows: list[Alert] = []
        self._writing = 0
        self._wake = threading.Event()       # rows to write, or a periodic evaluation asked for
        self._force_periodic = threading.Event()
        self._periodic_running = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._seen_runs: set[tuple[str, str]] = set()
        self._logged: set[str] = set()
        self.owns_client = False  # build_engine sets it when it made the client: stop() closes it
        self.counters = {"observed": 0, "dropped": 0, "evaluation_errors": 0, "events": 0, "rows_written": 0,
                         "rows_dropped": 0, "store_errors": 0}

    # ---- the ingest path ---------------------------------------------------------------------

    def observe(self, kind: str, record: dict) -> None:
        """Called by the ingest path for every decoded record. Never blocks, never raises."""
        if self._stopped:
            return
        try:
            self._queue.put_nowait((kind, record))
            self.counters["observed"] += 1
        except queue.Full:
            self.counters["dropped"] += 1
            self._log_once("queue-full", logging.WARNING,
                           "alert evaluation is behind: dropping records (counted in stats()['dropped'])")
        except Exception:  # noqa: BLE001 - nothing may reach the ingest path
            pass

    __call__ = observe

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "AlertEngine":
        """Adopt the alerts the table holds open, then start the threads. Idempotent."""
        if self._started or self._stopped:
            return self
        self._started = True
        if self.store is not None and self.config.adopt:
            self._adopt()
        for worker in self.notifiers:
            worker.start()
        self._spawn("runwire-alerts-eval", self._eval_loop)
        if self.client is not None:
            self._spawn("runwire-alerts-io", self._io_loop)
        log.info("alerting: %d rules (%s), notifiers: %s%s", len(self.rules.for_project("")), self.rules.source,
                 ", ".join(w.name for w in self.notifiers) or "none",
                 "" if self.periodic else "; periodic rules off here")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Evaluate what was queued, write the last rows, give notifiers up to `timeout` to
        deliver, stop every thread. Safe to call twice, and before start()."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        # The evaluator first (it evaluates what is still queued), then the io thread; whatever
        # rows the evaluator produced after the io thread's last write are written here.
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        if not any(t.is_alive() for t in self._threads):
            self._write_rows(final=True)
        for worker in self.notifiers:
            worker.shutdown(timeout=max(0.1, deadline - time.monotonic()))
        if self.owns_client and not any(t.is_alive() for t in self._threads):
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    shutdown = stop

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every observed record was evaluated, every alert row written and every
        notification delivered (or given up). False on timeout. For tests and shutdown."""
        deadline = time.monotonic() + timeout
        while True:
            with self._rows_lock:
                rows_done = not self._rows and not self._writing
            if (self._queue.unfinished_tasks == 0 and (rows_done or self.client is None)
                    and not self._periodic_running and not self._force_periodic.is_set()
                    and all(w.idle() for w in self.notifiers)):
                return True
            if time.monotonic() >= deadline:
                return False
            _NEVER_SET.wait(0.01)

    def evaluate_periodic(self) -> None:
        """Ask the io thread to evaluate every periodic rule now (tests, the demo)."""
        if self.periodic is not None:
            self._force_periodic.set()
            self._wake.set()

    # ---- introspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["queued"] = self._queue.qsize()
        out["stream"] = dict(self.stream.counters, conditions=len(self.stream))
        out["lifecycle"] = dict(self.lifecycle.counters)
        if self.periodic is not None:
            out["periodic"] = dict(self.periodic.counters)
        out["notifiers"] = {w.name: dict(w.counters) for w in self.notifiers}
        return out

    def open_alerts(self) -> list[Alert]:
        with self._lock:
            return self.lifecycle.open_alerts()

    # ---- threads -----------------------------------------------------------------------------

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _eval_loop(self) -> None:
        next_tick = 0
        next_expire = self.clock() + 10 * _NS
        while True:
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
                if self._stop.is_set():  # stopped while the queue was full: no sentinel came
                    break
            if item is _STOP:
                self._queue.task_done()
                self._drain()
                break
            if item is not None:
                try:
                    self._evaluate(*item)
                finally:
                    self._queue.task_done()
            now = self.clock()
            if now >= next_tick:
                next_tick = now + _NS
                self._tick(now, expire=now >= next_expire)
                if now >= next_expire:
                    next_expire = now + 10 * _NS

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if item is not _STOP:
                    self._evaluate(*item)
            finally:
                self._queue.task_done()

    def _evaluate(self, kind: str, record: dict) -> None:
        try:
            run = (record["project"], record["run_id"])
            if run not in self._seen_runs:
                if len(self._seen_runs) > 100_000:
                    self._seen_runs.clear()
                self._seen_runs.add(run)
            transitions = self.stream.observe(kind, record)
        except Exception:  # a malformed record or a bug: count it, keep evaluating
            self.counters["evaluation_errors"] += 1
            self._log_once("eval", logging.ERROR, "alert evaluation failed on a %s record (repeats counted)",
                           kind, exc_info=True)
            return
        if transitions:
            self._handle(transitions)

    def _tick(self, now: int, expire: bool) -> None:
        try:
            transitions = self.stream.expire(now) if expire else []
            with self._lock:
                events = self.lifecycle.apply(transitions) + self.lifecycle.tick(now, self._owns)
            self._dispatch(events)
        except Exception:
            self.counters["evaluation_errors"] += 1
            self._log_once("tick", logging.ERROR, "alert tick failed (repeats counted)", exc_info=True)

    def _handle(self, transitions: list[Transition]) -> None:
        with self._lock:
            events = self.lifecycle.apply(transitions)
        self._dispatch(events)

    def _dispatch(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        self.counters["events"] += len(events)
        if self.store is not None:
            with self._rows_lock:
                self._rows.extend(e.alert for e in events)
                excess = len(self._rows) - _MAX_PENDING_ROWS
                if excess > 0:  # ClickHouse is down for long: keep the newest
                    del self._rows[:excess]
                    self.counters["rows_dropped"] += excess
            self._wake.set()
        for e in events:
            if e.notify:
                for worker in self.notifiers:
                    worker.submit(e)

    def _io_loop(self) -> None:
        attempt, retry_at = 0, 0.0
        backoff = retry.Backoff(initial_s=0.5, max_s=10.0)
        while not self._stop.is_set():
            timeout = 0.5
            if self.periodic is not None:
                due = self.periodic.next_due_ns()
                if due is not None:
                    timeout = min(timeout, max(0.0, (due - self.clock()) / _NS))
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() >= retry_at:
                if self._write_rows():
                    attempt = 0
                else:
                    retry_at = time.monotonic() + backoff.delay(attempt)
                    attempt += 1
            if self.periodic is not None:
                force = self._force_periodic.is_set()
                now = self.clock()
                due = self.periodic.next_due_ns()
                if force or (due is not None and due <= now):
                    self._periodic_running = True
                    self._force_periodic.clear()
                    try:
                        transitions = self.periodic.evaluate(now, force=force)
                        if transitions:
                            self._handle(transitions)
                    except Exception:
                        self.counters["evaluation_errors"] += 1
                        self._log_once("periodic", logging.ERROR, "periodic alert evaluation failed",
                                       exc_info=True)
                    finally:
                        self._periodic_running = False
                    self._write_rows()
        self._write_rows(final=True)

    def _write_rows(self, final: bool = False) -> bool:
        """Insert the pending alert rows; True when nothing is left to write."""
        if self.store is None:
            return True
        with self._rows_lock:
            rows, self._rows = self._rows, []
            self._writing += 1
        try:
            if not rows:
                return True
            try:
                self.store.write(rows)
                self.counters["rows_written"] += len(rows)
                self._logged.discard("store")
                return True
            except Exception as exc:
                from runwire.storage.writer import is_permanent

                self.counters["store_errors"] += 1
                if is_permanent(exc):
                    self.counters["rows_dropped"] += len(rows)
                    log.error("ClickHouse rejected %d alert rows (dropped): %s", len(rows), exc)
                    return True
                self._log_once("store", logging.WARNING,
                               "writing alert rows failed, retrying (repeats not logged): %s", exc)
                if final:
                    self.counters["rows_dropped"] += len(rows)
                    return False
                with self._rows_lock:
                    self._rows[:0] = rows
                return False
        finally:
            with self._rows_lock:
                self._writing -= 1

    # ---- restart -----------------------------------------------------------------------------

    def _adopt(self) -> None:
        try:
            alerts = self.store.load_open()
        except Exception as exc:
            log.warning("could not read the open alerts (they will not be continued): %s", exc)
            return
        now = self.clock()
        floor = max(120.0, 2 * self.config.interval_s)

        def grace(a: Alert) -> int:
            rule = self.rules.all_for(a.project).get(a.rule)
            extra = (rule.for_s + rule.clear_s + (rule.interval_s or 0)) if rule is not None else 0.0
            return now + int((extra + floor) * _NS)

        with self._lock:
            n = self.lifecycle.adopt(alerts, grace)
        if n:
            log.info("alerting: continuing %d open alert(s) from the alerts table", n)

    def _owns(self, a: Alert) -> bool:
        """Whether this engine evaluates the alert's entity, so may resolve it when unconfirmed."""
        rule = self.rules.all_for(a.project).get(a.rule)
        if rule is None or not rule.enabled:
            return True  # the rule is gone: nobody will confirm it
        if rule.kind in PERIODIC_KINDS:
            return self.periodic is not None and rule.name in self.periodic.evaluated
        return (a.project, a.run_id) in self._seen_runs

    def _log_once(self, key: str, level: int, msg: str, *args, **kwargs) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg, *args, **kwargs)


class DisabledEngine:
    """What build_engine returns when alerting is off: the same surface, doing nothing."""

    def observe(self, kind: str, record: dict) -> None:
        pass

    __call__ = observe

    def start(self) -> "DisabledEngine":
        return self

    def stop(self, timeout: float = 10.0) -> None:
        pass

    shutdown = stop

    def flush(self, timeout: float = 10.0) -> bool:
        return True

    def evaluate_periodic(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"enabled": False}

    def open_alerts(self) -> list[Alert]:
        return []


def build_engine(config: AlertConfig | None = None, clickhouse=None, *, rules: RuleSet | None = None,
                 notifiers: Iterable[Notifier] = (), clock: Callable[[], int] = time.time_ns):
    """The alert engine for `config` (default: AlertConfig.from_settings(), i.e. RUNWIRE_ALERT_*).

    clickhouse: a clickhouse-connect client for the engine's own use (its io thread; do not
    share the ingest writer's client), or a zero-argument callable returning one, or None (no
    alerts table, no periodic rules: stream rules and notifiers only).
    rules: the RuleSet (default: load_rules(config.rules)). notifiers: extra notifiers (e.g.
    CallbackNotifier) besides the log, webhook and Slack ones the config asks for.
    Call start() before use and stop() at the end.
    """
    config = config or AlertConfig.from_settings()
    if not config.enabled:
        return DisabledEngine()
    rules = rules or load_rules(config.rules)
    made = callable(clickhouse) and not hasattr(clickhouse, "query")
    client = clickhouse() if made else clickhouse
    chosen: list[Notifier] = []
    if config.log:
        chosen.append(LogNotifier())
    if config.webhook_url:
        chosen.append(WebhookNotifier(config.webhook_url, timeout_s=config.notify_timeout_s))
    if config.slack_url:
        chosen.append(SlackNotifier(config.slack_url, timeout_s=config.notify_timeout_s))
    chosen.extend(notifiers)
    engine = AlertEngine(config, rules, client, chosen, clock=clock)
    engine.owns_client = made and client is not None
    return engine
