"""Notifiers: payloads (generic JSON, Slack), delivery on a thread behind a bounded queue,
retries with backoff, permanent errors, secrets never logged. HTTP against a local receiver."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from runwire.proto import retry
from runwire.ingest.alerts.condition import Entity, Transition
from runwire.ingest.alerts.lifecycle import Lifecycle
from runwire.ingest.alerts.notify import (
    CallbackNotifier, LogNotifier, NotifierWorker, PermanentNotifyError, SlackNotifier, WebhookNotifier,
    event_payload, slack_payload,
)
from runwire.ingest.alerts.receiver import WebhookReceiver
from runwire.ingest.alerts.rules import RuleSet

pytestmark = pytest.mark.timeout(60)

S = 1_000_000_000
T0 = 1_750_000_000 * S
FAST = retry.Backoff(initial_s=0.01, max_s=0.05)


def events():
    rule = RuleSet.builtin().rules["gpu_temperature_critical"]
    e = Entity("llm", "run-<1>", "node-3", "GPU-abc", 5, label="GPU 2")
    lc = Lifecycle()
    firing = lc.apply([Transition(rule, e, "firing", T0 + 60 * S, T0, 91.0, "temperature_c 91 (>= 85 for 1 min)")])[0]
    resolved = lc.apply([Transition(rule, e, "resolved", T0 + 200 * S, T0, 70.0, "temperature_c 70")])[0]
    return firing, resolved


def test_generic_payload():
    firing, resolved = events()
    p = event_payload(firing)
    assert (p["status"], p["event"], p["source"], p["version"]) == ("firing", "firing", "runwire", 1)
    a = p["alert"]
    assert (a["rule"], a["severity"], a["project"], a["run_id"], a["host"], a["gpu_uuid"], a["rank"], a["value"]) == (
        "gpu_temperature_critical", "critical", "llm", "run-<1>", "node-3", "GPU-abc", 5, 91.0)
    assert a["started_at"].endswith("Z") and a["observed_at_ns"] == T0 + 60 * S and a["resolved_at"] is None
    assert event_payload(resolved)["status"] == "resolved"
    json.dumps(p, allow_nan=False)


def test_nan_value_is_valid_json():
    firing, _ = events()
    from dataclasses import replace

    from runwire.ingest.alerts.lifecycle import AlertEvent

    p = event_payload(AlertEvent("firing", replace(firing.alert, value=float("nan"))))
    assert p["alert"]["value"] is None and p["alert"]["value_text"] == "nan"
    json.dumps(p, allow_nan=False)


def test_slack_payload():
    firing, resolved = events()
    p = slack_payload(firing)
    assert set(p) == {"text", "blocks"}
    assert "[CRITICAL] gpu_temperature_critical FIRING" in p["text"]
    section, context = p["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "run-&lt;1&gt;" in context["elements"][0]["text"]  # mrkdwn escaped
    assert "RESOLVED" in slack_payload(resolved)["text"]


def test_webhook_delivers_and_retries_a_failing_receiver():
    firing, resolved = events()
    with WebhookReceiver(fail_first=2) as rx:
        worker = NotifierWorker(WebhookNotifier(rx.url, timeout_s=2), backoff=FAST).start()
        try:
            assert worker.submit(firing) and worker.submit(resolved)
            assert rx.wait_for(lambda got: len(got) == 2, timeout=10)
            assert worker.flush(5)
        finally:
            worker.shutdown(1)
        assert [p["status"] for p in rx.payloads()] == ["firing", "resolved"]
        assert rx.requests == 4
        assert worker.counters == {"sent": 2, "failed": 0, "dropped": 0, "retries": 2}


def test_permanent_error_is_not_retried(caplog):
    firing, _ = events()
    with WebhookReceiver(fail_first=100, fail_status=400) as rx:
        worker = NotifierWorker(WebhookNotifier(rx.url + "?token=SECRET123"), backoff=FAST).start()
        try:
            worker.submit(firing)
            assert worker.flush(5)
        finally:
            worker.shutdown(1)
        assert rx.requests == 1 and worker.counters["failed"] == 1
    assert "HTTP 400" in caplog.text and "SECRET123" not in caplog.text


def test_unreachable_receiver_gives_up_without_logging_the_url(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    firing, _ = events()
    notifier = WebhookNotifier(f"http://user:pa55word@127.0.0.1:{port}/hooks/T000/B000/XXXXSECRET", timeout_s=1)
    worker = NotifierWorker(notifier, backoff=FAST, max_attempts=3).start()
    try:
        worker.submit(firing)
        assert worker.flush(10)
    finally:
        worker.shutdown(1)
    assert worker.counters["failed"] == 1 and worker.counters["retries"] == 2
    assert "gave up after 3 attempt(s)" in caplog.text
    assert "XXXXSECRET" not in caplog.text and "pa55word" not in caplog.text
    assert "SECRET" not in repr(notifier)


def test_slow_receiver_never_blocks_submit_and_a_full_queue_drops():
    firing, _ = events()
    with WebhookReceiver(delay_s=2.0) as rx:
        worker = NotifierWorker(WebhookNotifier(rx.url, timeout_s=5), max_queue=3, backoff=FAST).start()
        try:
            start = time.perf_counter()
            accepted = [worker.submit(firing) for _ in range(10)]
            assert time.perf_counter() - start < 0.1
            assert accepted.count(True) in (3, 4)  # the one being delivered has left the queue
            assert worker.counters["dropped"] == accepted.count(False)
        finally:
            start = time.perf_counter()
            worker.shutdown(0.2)  # a request in flight cannot be cut short: shutdown does not wait for it
            assert time.perf_counter() - start < 2
    worker._thread.join(5)  # the receiver stopped: the request ended, and with it the thread
    assert not worker._thread.is_alive()


def test_slack_notifier_posts_slack_shape():
    firing, _ = events()
    with WebhookReceiver() as rx:
        worker = NotifierWorker(SlackNotifier(rx.url), backoff=FAST).start()
        try:
            worker.submit(firing)
            assert rx.wait_for(lambda got: len(got) == 1, timeout=10)
        finally:
            worker.shutdown(1)
        (p,) = rx.payloads()
        assert "blocks" in p and "gpu_temperature_critical" in p["text"]


def test_log_and_callback_notifiers(caplog):
    firing, resolved = events()
    caplog.set_level(logging.INFO, logger="runwire.alerts")
    LogNotifier().send(firing)
    LogNotifier().send(resolved)
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.INFO]
    assert "ALERT [CRITICAL] gpu_temperature_critical FIRING" in caplog.records[0].getMessage()
    got = []
    CallbackNotifier(got.append).send(firing)
    assert got == [firing]


def test_a_raising_callback_is_retried_then_counted():
    firing, _ = events()
    calls = []

    def boom(event):
        calls.append(event)
        raise RuntimeError("bug")

    worker = NotifierWorker(CallbackNotifier(boom), backoff=FAST, max_attempts=2).start()
    try:
        worker.submit(firing)
        assert worker.flush(5)
    finally:
        worker.shutdown(1)
    assert len(calls) == 2 and worker.counters["failed"] == 1


def test_shutdown_is_idempotent_and_interrupts_backoff():
    firing, _ = events()
    slow = retry.Backoff(initial_s=30, max_s=30)

    def fail(event):
        raise ConnectionError("down")

    worker = NotifierWorker(CallbackNotifier(fail), backoff=slow).start()
    worker.submit(firing)
    time.sleep(0.1)
    start = time.perf_counter()
    worker.shutdown(0.2)
    worker.shutdown(0.2)
    assert time.perf_counter() - start < 3
    assert not any(t.name.startswith("runwire-alerts-notify") and t.is_alive() for t in threading.enumerate())
    with pytest.raises(PermanentNotifyError):
        raise PermanentNotifyError("x")
