"""A local webhook receiver (stdlib http.server) that records what it receives: for tests, the
alert benchmark, and for trying a rules file out (`python -m runwire.ingest.alerts.receiver`
prints every notification it gets).

    with WebhookReceiver() as rx:             # 127.0.0.1, an OS-assigned port, its own thread
        engine = build_engine(AlertConfig.from_settings(webhook_url=rx.url), ...)
        ...
        rx.wait_for(lambda got: any(p["status"] == "resolved" for p in got), timeout=10)

`delay_s` makes every response slow; `fail_first` answers that many requests with HTTP 500 (or
`fail_status`) before accepting.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class WebhookReceiver:
    def __init__(self, delay_s: float = 0.0, fail_first: int = 0, fail_status: int = 500,
                 on_receive: Callable[[dict], None] | None = None) -> None:
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.on_receive = on_receive
        self.received: list[dict[str, Any]] = []   # accepted payloads, each with "_arrival_ns" added
        self.requests = 0                          # every request, failed ones included
        self._cond = threading.Condition()
        self._release = threading.Event()          # set to cut a slow response short (shutdown)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                arrival = time.time_ns()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.requests += 1
                    fail = receiver.requests <= receiver.fail_first
                if receiver.delay_s:
                    receiver._release.wait(receiver.delay_s)
                if fail:
                    self.send_response(receiver.fail_status)
                    self.end_headers()
                    return
                try:
                    payload = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                if isinstance(payload, dict):
                    payload["_arrival_ns"] = arrival
                    payload["_path"] = self.path
                with receiver._cond:
                    receiver.received.append(payload)
                    receiver._cond.notify_all()
                if receiver.on_receive is not None:
                    receiver.on_receive(payload)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="runwire-webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 10.0) -> bool:
        """Wait until predicate(received) holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.received)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def payloads(self) -> list[dict]:
        with self._cond:
            return list(self.received)

    def stop(self) -> None:
        """Stop serving and join the thread. Safe to call twice."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    rx = WebhookReceiver(on_receive=lambda p: print(json.dumps(p), flush=True)).start()
    print(f"listening: set RUNWIRE_ALERT_WEBHOOK_URL={rx.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()


if __name__ == "__main__":
    main()
