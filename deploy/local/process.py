"""The lifecycle the local servers (Kafka broker, ClickHouse server) share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal


class ManagedServer:
    """A server in a child process group. Subclasses provide `start(timeout)`, `stop()`,
    `_proc` (the Popen, or None), `data_dir` and `_owns_dir`."""

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
