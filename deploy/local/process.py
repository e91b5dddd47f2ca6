"""The lifecycle the local servers (Kafka broker, ClickHouse server) share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import sys


class ManagedServer:
    """A server in a child process group. Subclasses provide `start(timeout)`, `stop()`,
    `_proc` (the Popen, or None), `data_dir` and `_owns_dir`."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, for fault tests). Data kept; `start()` recovers."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self.stop()

    def restart(self, timeout: float | None = None):
        """Stop, then start again on the same data directory and the same ports."""
        self.stop()
        return self.start() if timeout is None else self.start(timeout)

    def close(self) -> None:
        """Stop, and delete the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def serve_in_foreground(server, start, describe, what: str) -> int:
    """`python -m runwire.deploy.local.<server>`: start() the server, print describe()'s
    (ready, address, details) (the address alone on stdout), run until Ctrl-C or SIGTERM and
    always stop it. Exit 1 when the server exits by itself."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        started = time.monotonic()
        start()
        ready, address, details = describe()
        print(f"{ready} ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        print(address, flush=True)
        for line in details:
            print(line, file=sys.stderr)
        print("Ctrl-C to stop.", file=sys.stderr, flush=True)
        while server.running:
            time.sleep(0.5)
        print(f"{what} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
