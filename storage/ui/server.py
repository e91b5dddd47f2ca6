"""Serving the UI with uvicorn on a socket bound here: without SO_REUSEPORT, so a port that is
in use is refused with a clear error instead of being shared."""

from __future__ import annotations

import errno
import logging
import socket
import threading

import uvicorn

log = logging.getLogger("runwire.ui")


class PortInUse(OSError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one). PortInUse when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets whose proto says TCP (else a
    # response's body waits ~40 ms for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # SO_REUSEADDR only lets a restart bind past TIME_WAIT; a live listener still refuses us.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"{host}:{port} is already in use (pick another with --listen)") from None
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class UIServer:
    """uvicorn serving ``app`` on ``listen`` ("host:port") in a background thread (tests, the
    benchmark) or in the foreground (``serve_forever``)."""

    def __init__(self, app, listen: str = "127.0.0.1:0") -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be host:port, got {listen!r}")
        self.sock = bind(host.strip("[]"), int(port))
        self.host, self.port = self.sock.getsockname()[:2]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        if app is not None:
            self.set_app(app)

    def set_app(self, app) -> None:
        """The application to serve (when it could only be built after binding)."""
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Blocks until SIGINT/SIGTERM (uvicorn's handlers)."""
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self) -> "UIServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="runwire-ui", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the UI server stopped during start-up")
            threading.Event().wait(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.sock.close()

    def __enter__(self) -> "UIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
