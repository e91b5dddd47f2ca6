"""A real S3 protocol endpoint on loopback, for tests and benchmarks: moto's server mode
(`moto[server]`) in a child process, on an OS-assigned port unless one is given (a port in use
fails the start). Objects live in the child's memory and vanish when it stops.

    with S3Server() as s3:
        boto3.client("s3", endpoint_url=s3.endpoint_url).create_bucket(Bucket="b")
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from runwire.deploy.local.process import ManagedServer

# moto accepts any credentials; boto3 needs some to sign requests.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server(ManagedServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._proc: subprocess.Popen | None = None
        self.data_dir, self._owns_dir = "", False

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> "S3Server":
        if self.running:
            return self
        # stderr to a file, never a pipe: nobody would read a pipe, and once its buffer is full
        # the server blocks on its next log line and stops answering.
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen([sys.executable, "-m", "runwire.deploy.local.s3", self.host, str(self.port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                      text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        line = self._proc.stdout.readline()  # the child prints its port once it listens
        if not line.strip().isdigit() or time.monotonic() > deadline:
            self._proc.wait(10)
            self._log.seek(0)
            err = self._log.read()
            self.stop()
            raise RuntimeError(f"S3 server (moto) did not start on {self.host}:{self.port}: {line.strip()} {err[-2000:]}")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        for stream in (self._proc.stdin, self._proc.stdout, self._log):
            with contextlib.suppress(Exception):
                stream.close()
        self._proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


def _serve(host: str, port: int) -> None:
    import threading

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # Bound here, in the main thread: a port in use fails the start at once (moto's
    # ThreadedMotoServer would wait forever for a thread that died).
    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args, **kwargs) -> None:  # one line per request is noise here
            pass

    server = make_server(host, port, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdin.read()  # until the parent closes stdin or sends SIGTERM


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
