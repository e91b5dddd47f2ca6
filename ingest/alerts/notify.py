"""Notifiers: a generic JSON webhook, a Slack-compatible webhook, the log, a callback.

Each notifier runs on its own daemon thread behind a bounded queue (`NotifierWorker`), so a
slow or failing receiver never blocks ingest and never delays the other notifiers: when the
queue is full the event is dropped and counted. Deliveries are retried with runwire's one
retry policy (exponential backoff with full jitter, capped by a deadline, cut short by
shutdown); HTTP 408, 425, 429 and 5xx, timeouts and connection errors are retried, other 4xx
are not. HTTP goes through the standard library (urllib).

Webhook URLs can hold secrets (Slack's do): they are never logged, and a notifier's repr shows
its name only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Protocol

from runwire.proto import retry
from runwire.ingest.alerts.lifecycle import Alert, AlertEvent

log = logging.getLogger("runwire.alerts")

_RETRYABLE_HTTP = {408, 425, 429}  # timeout, too early, too many requests


def retryable_http_status(code: int) -> bool:
    """The classifier for webhook answers: the receiver may recover from these (and any 5xx)."""
    return code in _RETRYABLE_HTTP or code >= 500
_NEVER_SET = threading.Event()  # Event.wait on it is an interruptible-style short sleep
_SEVERITY_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


class PermanentNotifyError(Exception):
    """The receiver rejected the notification itself (e.g. HTTP 400): retrying cannot help."""


class Notifier(Protocol):
    name: str

    def send(self, event: AlertEvent) -> None:
        """Deliver one event; raise on failure (PermanentNotifyError: do not retry)."""


# ------------------------------------------------------------------------------------------
# Payloads (pure)


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def alert_dict(a: Alert) -> dict[str, Any]:
    return {
        "id": a.alert_id, "rule": a.rule, "severity": a.severity, "state": a.state,
        "project": a.project, "run_id": a.run_id, "host": a.host, "gpu_uuid": a.gpu_uuid, "rank": a.rank,
        "subject": a.subject, "value": _finite(a.value), "value_text": None if _finite(a.value) is not None else str(a.value),
        "message": a.message, "description": a.description,
        "started_at": _iso(a.started_ns), "fired_at": _iso(a.fired_ns), "resolved_at": _iso(a.resolved_ns),
        "observed_at": _iso(a.observed_ns), "observed_at_ns": a.observed_ns,
    }


def event_payload(event: AlertEvent) -> dict[str, Any]:
    """The generic webhook's JSON body. `status` is firing or resolved (a renotify is firing);
    `event` says what happened; `alert.observed_at_ns` is the timestamp of the sample (or the
    evaluation) that caused it."""
    status = "resolved" if event.kind == "resolved" else event.alert.state
    return {"version": 1, "source": "runwire", "event": event.kind, "status": status,
            "alert": alert_dict(event.alert), "sent_at": _iso(time.time_ns())}


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def event_title(event: AlertEvent) -> str:
    a = event.alert
    what = {"firing": "FIRING", "renotify": "STILL FIRING", "resolved": "RESOLVED"}.get(event.kind, event.kind.upper())
    return f"[{a.severity.upper()}] {a.rule} {what}"


def format_event(event: AlertEvent) -> str:
    """One line for a terminal: what happened, to what, and why."""
    return f"{event_title(event)}: {event.alert.message}"


def slack_payload(event: AlertEvent) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (the notification fallback) and `blocks`."""
    a = event.alert
    icon = ":white_check_mark:" if event.kind == "resolved" else _SEVERITY_ICON.get(a.severity, "")
    title = event_title(event)
    context = [f"project `{_mrkdwn(a.project)}`"]
    if a.run_id:
        context.append(f"run `{_mrkdwn(a.run_id)}`")
    if a.host:
        context.append(f"host `{_mrkdwn(a.host)}`")
    if a.gpu_uuid:
        context.append(f"GPU `{_mrkdwn(a.gpu_uuid)}`")
    if a.rank is not None:
        context.append(f"rank {a.rank}")
    context.append(f"since {_iso(a.started_ns)}")
    if a.resolved_ns:
        context.append(f"resolved {_iso(a.resolved_ns)}")
    context.append(f"alert `{a.alert_id}`")
    return {
        "text": f"{icon} {title}: {a.message}".strip(),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{_mrkdwn(title)}*\n{_mrkdwn(a.message)}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
        ],
    }


# ------------------------------------------------------------------------------------------
# Notifiers


class WebhookNotifier:
    """POSTs `payload(event)` as JSON to `url`. timeout_s: per request. headers: extra HTTP
    headers (e.g. Authorization; never logged)."""

    def __init__(self, url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None,
                 name: str = "webhook", payload: Callable[[AlertEvent], dict] = event_payload) -> None:
        self._url = url
        self._headers = {"Content-Type": "application/json", "User-Agent": "runwire-alerts/1", **(headers or {})}
        self.timeout_s = timeout_s
        self.name = name
        self.payload = payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def send(self, event: AlertEvent) -> None:
        body = json.dumps(self.payload(event), allow_nan=False).encode()
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if retryable_http_status(code):
                raise ConnectionError(f"HTTP {code}") from None
            raise PermanentNotifyError(f"HTTP {code}") from None
        except urllib.error.URLError as exc:
            # The reason, never the URL (it may hold a token).
            raise ConnectionError(f"cannot reach the receiver: {exc.reason}") from None


class SlackNotifier(WebhookNotifier):
    """A Slack (or Mattermost, Rocket.Chat) incoming webhook."""

    def __init__(self, url: str, timeout_s: float = 5.0, name: str = "slack") -> None:
        super().__init__(url, timeout_s, name=name, payload=slack_payload)


class LogNotifier:
    """Logs each notification on the runwire.alerts logger (critical/warning/info levels)."""

    name = "log"
    _LEVEL = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def send(self, event: AlertEvent) -> None:
        a = event.alert
        level = logging.INFO if event.kind == "resolved" else self._LEVEL.get(a.severity, logging.WARNING)
        self.logger.log(level, "ALERT %s [%s]", format_event(event), a.alert_id)


class CallbackNotifier:
    """Calls `fn(event)` (e.g. the demo printing alerts as they fire)."""

    def __init__(self, fn: Callable[[AlertEvent], None], name: str = "callback") -> None:
        self.fn = fn
        self.name = name

    def send(self, event: AlertEvent) -> None:
        self.fn(event)


# ------------------------------------------------------------------------------------------
# Delivery


class NotifierWorker:
    """Delivers events to one notifier from a named daemon thread behind a bounded queue.

    max_queue: events waiting (default 1000); when full, new events are dropped and counted.
    backoff: retry policy between attempts. deadline_s: give up on an event after this long
    (default 120 s). max_attempts: ... or after this many attempts (default 8).
    """

    def __init__(self, notifier: Notifier, max_queue: int = 1000,
                 backoff: retry.Backoff = retry.Backoff(initial_s=0.5, max_s=30.0),
                 deadline_s: float = 120.0, max_attempts: int = 8) -> None:
        self.notifier = notifier
        self.name = getattr(notifier, "name", type(notifier).__name__)
        self.backoff = backoff
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._failing = False
        self._dropped_logged = False
        self.counters = {"sent": 0, "failed": 0, "dropped": 0, "retries": 0}

    def start(self) -> "NotifierWorker":
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name=f"runwire-alerts-notify-{self.name}", daemon=True)
            self._thread.start()
        return self

    def submit(self, event: AlertEvent) -> bool:
        """Queue an event; never blocks. False when it was dropped (queue full or shut down)."""
        if self._stop.is_set():
            self.counters["dropped"] += 1
            return False
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            self.counters["dropped"] += 1
            if not self._dropped_logged:
                self._dropped_logged = True
                log.warning("alert notifier %s: queue full, dropping notifications (counted, not logged again)",
                            self.name)
            return False

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() >= deadline or self._thread is None:
                return False
            _NEVER_SET.wait(0.01)
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most `timeout` seconds, then stop. Safe to call twice."""
        if self._thread is not None and not self._stop.is_set():
            self.flush(timeout)
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(1.0, timeout))
        # What is left is dropped (counted): shutdown must not hang on a dead receiver.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self.counters["dropped"] += 1
            self._queue.task_done()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(event)
            finally:
                self._queue.task_done()

    def _deliver(self, event: AlertEvent) -> None:
        attempts = 0

        def send() -> None:
            nonlocal attempts
            attempts += 1
            self.notifier.send(event)

        def count_retry(_exc: BaseException, _attempt: int) -> None:
            self.counters["retries"] += 1

        try:
            # Network errors, 5xx and a buggy callback are retried; a rejection is not.
            retry.call(send, lambda exc: not isinstance(exc, PermanentNotifyError), self._stop, self.backoff,
                       deadline=time.monotonic() + self.deadline_s, on_retry=count_retry,
                       max_attempts=self.max_attempts)
        except PermanentNotifyError as exc:
            self.counters["failed"] += 1
            self._failed(f"rejected ({exc}); not retried")
            return
        except Exception as exc:
            self.counters["failed"] += 1
            self._failed(f"gave up after {attempts} attempt(s): {exc}")
            return
        self.counters["sent"] += 1
        if self._failing:
            self._failing = False
            log.info("alert notifier %s: delivering again", self.name)

    def _failed(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("alert notifier %s: %s (further failures are counted, not logged)", self.name, why)
