"""A real ClickHouse server on loopback, for tests and local use, without Docker.

No package registry ships a current ``clickhouse-server`` binary, but the PyPI package
``chdb-core`` is the ClickHouse engine itself. Run as a one-shot clickhouse-local, it can open
ClickHouse's real HTTP and native TCP listeners: clients (clickhouse-connect, clickhouse-driver,
Grafana's plugin) talk to it exactly as to a ``clickhouse-server``. Recipe (see DESIGN.md,
"Infrastructure on these machines"):

1. write ``config.xml`` with ``listen_host`` 127.0.0.1 and the ports into a working directory
   and ``chdir`` there *before* importing chdb (it reads the config from the cwd);
2. in ONE ``chdb._chdb.query(sql, "TabSeparated", path=DATA)`` call: start the TCP and HTTP
   listeners, write the actual ports to a file, then block reading ``/dev/stdin``.

The query format must be TabSeparated: it becomes the HTTP interface's default format, and
clickhouse-connect's handshake fails with CSV. One server per process, so the server is always
a child process: ``python -m runwire.deploy.local.clickhouse --path DATA --ports-file FILE``.
It stops gracefully when its stdin closes (so it also dies with its parent) and on SIGTERM.

From a shell, ``python -m runwire.deploy.local.clickhouse`` (no arguments) runs one in the
foreground and prints its URL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from runwire.deploy.local.process import ManagedServer, serve_in_foreground

__all__ = ["ClickHouseServer"]

_PORTS_FILE = "runwire-ports.tsv"
_LOG_FILE = "runwire-server.log"


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return "<no output>"


def _read_ports(path: Path) -> Optional[Tuple[int, int]]:
    """(http, tcp) from the ports file, or None while it is absent or half-written."""
    try:
        text = path.read_text()
        fields = text.split()
        if text.endswith("\n") and len(fields) == 2:  # a complete TabSeparated row
            http, tcp = int(fields[0]), int(fields[1])
            if http > 0 and tcp > 0:
                return http, tcp
    except (OSError, ValueError):
        pass
    return None


class ClickHouseServer(ManagedServer):
    """The ClickHouse engine (chDB) served over HTTP and native TCP on 127.0.0.1, in a child process.

    Parameters:
        data_dir: the ClickHouse data path (databases, tables); the server's output log
            (``runwire-server.log``) and ports file are kept there too. The same directory can
            be opened in-process with ``clickhouse_connect.get_client(dsn="chdb:///DATA_DIR")``
            while no server runs on it. Default: a new temporary directory, deleted by
            ``close()`` / leaving the ``with`` block (``stop()`` keeps it).
        http_port: HTTP port; 0 (default) lets the OS choose at first start. The chosen port is
            kept, so ``restart()`` serves the same URL.
        tcp_port: native protocol port; 0 (default) as for ``http_port``.
    """

    def __init__(self, data_dir: Optional[os.PathLike] = None, http_port: int = 0,
                 tcp_port: int = 0) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="runwire-clickhouse-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        self._http_port = int(http_port or 0)
        self._tcp_port = int(tcp_port or 0)
        self._proc: Optional[subprocess.Popen] = None
        self._log = None

    # ---- public properties ----

    @property
    def http_port(self) -> int:
        """HTTP port (0 until the first start when the OS chooses it)."""
        return self._http_port

    @property
    def tcp_port(self) -> int:
        """Native protocol port (0 until the first start when the OS chooses it)."""
        return self._tcp_port

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:PORT"`` (HTTP interface)."""
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def ports_file(self) -> Path:
        return self.data_dir / _PORTS_FILE

    @property
    def log_path(self) -> Path:
        """The server process's stdout/stderr (start-up errors such as a port in use land here)."""
        return self.data_dir / _LOG_FILE

    def client(self, **kwargs):
        """A new ``clickhouse_connect`` HTTP client for this server (extra kwargs passed on)."""
        import clickhouse_connect

        return clickhouse_connect.get_client(host="127.0.0.1", port=self._http_port, **kwargs)

    # ---- lifecycle ----

    def start(self, timeout: float = 60.0) -> "ClickHouseServer":
        """Start the server and wait until ``SELECT 1`` succeeds through clickhouse-connect.

        Raises ``RuntimeError`` with the server's output when it exits, writes no ports file,
        or does not answer within ``timeout`` seconds; the process is stopped in that case.
        """
        if self.running:
            return self
        with contextlib.suppress(FileNotFoundError):
            self.ports_file.unlink()
        cmd = [sys.executable, "-m", "runwire.deploy.local.clickhouse", "--path", str(self.data_dir),
               "--ports-file", str(self.ports_file), "--http-port", str(self._http_port),
               "--tcp-port", str(self._tcp_port)]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a Ctrl-C in a terminal is ours to handle
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _failure(self, why: str) -> RuntimeError:
        return RuntimeError(f"ClickHouse (chDB) server for {self.data_dir} {why}.\n"
                            f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}")

    def _wait_ready(self, timeout: float) -> None:
        import clickhouse_connect

        deadline = time.monotonic() + timeout
        ports = None
        while ports is None:
            if self._proc.poll() is not None:
                raise self._failure(f"exited with code {self._proc.returncode} before writing its ports file")
            if time.monotonic() >= deadline:
                raise self._failure(f"wrote no ports file ({self.ports_file}) within {timeout:.0f}s")
            ports = _read_ports(self.ports_file)
            if ports is None:
                time.sleep(0.05)
        self._http_port, self._tcp_port = ports
        last: Optional[BaseException] = None
        while True:
            if self._proc.poll() is not None:
                raise self._failure(f"exited with code {self._proc.returncode} during start-up")
            try:
                client = clickhouse_connect.get_client(host="127.0.0.1", port=self._http_port,
                                                       connect_timeout=2, send_receive_timeout=10)
                try:
                    if client.command("SELECT 1") == 1:
                        return
                finally:
                    client.close()
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                last = e
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer SELECT 1 on {self.url} within {timeout:.0f}s "
                                    f"(last error: {last!r})")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0, grace: float = 1.0) -> None:
        """Stop the server: close its stdin, then SIGTERM after ``grace`` s, then SIGKILL.

        Closing stdin ends the serving query, a clean shutdown; but ClickHouse then waits up to
        5 s for idle keep-alive HTTP connections (clickhouse-connect pools them), so after
        ``grace`` seconds SIGTERM ends it at once. That loses nothing: an insert's data part is
        complete on disk before the insert is acknowledged. Keeps the data and the ports. Safe
        to call twice, and when never started.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            for sig, wait in ((None, grace), (signal.SIGTERM, timeout), (signal.SIGKILL, None)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ClickHouseServer(url={self.url!r}, data_dir={str(self.data_dir)!r}, {state})"


# --------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------


def _sql_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def serve(path: str, ports_file: str, http_port: int = 0, tcp_port: int = 0) -> int:
    """Run the server in this process until stdin closes or SIGTERM. Returns an exit code."""
    path = os.path.abspath(path)
    ports_file = os.path.abspath(ports_file)
    os.makedirs(path, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ports_file)
    # chdb only reads config.xml there (it writes nothing else). Inside the data directory
    # rather than in /tmp because SIGTERM ends this process without any Python cleanup.
    workdir = os.path.join(path, ".runwire-cwd")
    os.makedirs(workdir, exist_ok=True)
    try:
        with open(os.path.join(workdir, "config.xml"), "w") as f:
            f.write("<clickhouse>\n"
                    "  <listen_host>127.0.0.1</listen_host>\n"
                    f"  <http_port>{int(http_port)}</http_port>\n"
                    f"  <tcp_port>{int(tcp_port)}</tcp_port>\n"
                    # Merges are background work: let inserts and queries preempt them (a no-op
                    # without CAP_SYS_NICE). With ingest saturating 2 cores, this took the e2e
                    # lag p99 from 5.3 s to 1.4-2.3 s (bench/e2e.py).
                    "  <os_threads_nice_value_merge_mutate>10</os_threads_nice_value_merge_mutate>\n"
                    "</clickhouse>\n")
        # chdb reads config.xml from the current directory when it starts its engine.
        os.chdir(workdir)
        import chdb._chdb as _chdb  # noqa: E402 - must come after chdir

        sql = (
            "SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
            f"INSERT INTO FUNCTION file({_sql_string(ports_file)}, 'TabSeparated', "
            "'http UInt16, tcp UInt16') "
            "SELECT getServerPort('http_port'), getServerPort('tcp_port') "
            "SETTINGS engine_file_truncate_on_insert = 1; "
            "SELECT count() FROM file('/dev/stdin', 'LineAsString')"
        )
        try:
            result = _chdb.query(sql, "TabSeparated", path=path)
        except Exception as e:  # noqa: BLE001 - report and exit non-zero
            print(f"chdb server failed: {e}", file=sys.stderr, flush=True)
            return 1
        if result is not None and result.has_error():
            print(f"chdb server failed: {result.error_message()}", file=sys.stderr, flush=True)
            return 1
        # Start-up errors (port in use) are printed by the engine, not raised: no ports file.
        if _read_ports(Path(ports_file)) is None:
            print("chdb server failed: it never listened (see the error above)", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        with contextlib.suppress(OSError):
            os.chdir("/")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runwire.deploy.local.clickhouse",
        description="Serve ClickHouse (chDB engine) over HTTP and native TCP on 127.0.0.1. "
                    "With --ports-file: run as a server process until stdin closes (used by "
                    "ClickHouseServer). Without: run one in the foreground and print its URL.")
    parser.add_argument("--path", help="data directory (default in foreground mode: a temporary one)")
    parser.add_argument("--ports-file", help="file to write 'HTTP_PORT<TAB>TCP_PORT' to once listening")
    parser.add_argument("--http-port", type=int, default=0, help="0: chosen by the OS")
    parser.add_argument("--tcp-port", type=int, default=0, help="0: chosen by the OS")
    args = parser.parse_args(argv)
    if args.ports_file:
        if not args.path:
            parser.error("--ports-file needs --path")
        return serve(args.path, args.ports_file, args.http_port, args.tcp_port)

    server = ClickHouseServer(args.path, args.http_port, args.tcp_port)
    return serve_in_foreground(server, server.start, lambda: (
        "ClickHouse (chDB)", f"url: {server.url}",
        [f"native tcp: 127.0.0.1:{server.tcp_port}", f"data: {server.data_dir}"]), "server")


if __name__ == "__main__":
    sys.exit(main())
