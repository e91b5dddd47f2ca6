"""The gateway's loop inbox: answers posted from other threads reach the event loop exactly
once, in order, with one wake-up of the loop for everything that arrived while it was busy."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runwire.ingest.gateway import _LoopInbox

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def on_loop(loop, fn):
    """Run fn on the loop and wait for it."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


def test_answers_from_many_threads_arrive_once_each_in_order(loop):
    inbox = _LoopInbox(loop)
    received: dict[int, list[int]] = {t: [] for t in range(4)}
    loop_thread = on_loop(loop, threading.get_ident)
    wrong_thread = []
    all_in = threading.Event()
    per_thread = 20_000

    def receive(item) -> None:
        if threading.get_ident() != loop_thread:
            wrong_thread.append(item)
        sender, n = item
        received[sender].append(n)
        if sum(map(len, received.values())) == 4 * per_thread:
            all_in.set()

    def send(sender: int) -> None:
        for n in range(per_thread):
            inbox.post(receive, (sender, n))

    senders = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    assert all_in.wait(30), {t: len(v) for t, v in received.items()}
    assert all(v == list(range(per_thread)) for v in received.values())
    assert not wrong_thread


def test_what_arrives_while_the_loop_is_busy_takes_one_wake_up(loop):
    inbox = _LoopInbox(loop)
    runs = []
    original = inbox._run
    inbox._run = lambda: (runs.append(1), original())
    busy, release = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (busy.set(), release.wait(10)))
    assert busy.wait(10)
    got = []
    for n in range(1000):
        inbox.post(got.append, n)
    release.set()
    on_loop(loop, lambda: None)  # everything scheduled before this has run
    assert got == list(range(1000))
    assert len(runs) == 1


def test_posting_after_the_loop_closed_is_a_no_op():
    loop = asyncio.new_event_loop()
    loop.close()
    _LoopInbox(loop).post(print, "never")  # the call it answered is gone; nothing raises
