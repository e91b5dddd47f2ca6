"""A real gateway in its own process (so a test can freeze it with SIGSTOP), whose sink appends
every acknowledged metric point to a file: `run_id rank name step` per line.

    python gateway_process.py OUT_FILE   -> prints its address; stops when stdin closes
"""

from __future__ import annotations

import sys
import threading

from gateway_helpers import start_gateway

from runwire.ingest import codec


class FileSink:
    def __init__(self, path: str) -> None:
        self.out = open(path, "a", buffering=1 << 20)
        self.lock = threading.Lock()

    def submit(self, kind, key, value, done) -> None:
        decoded_kind, record = codec.decode(value)
        if decoded_kind == codec.METRICS:
            names = record["names"]
            lines = "".join(f"{record['run_id']} {record['rank']} {names[int(i)]} {int(s)}\n"
                            for i, s in zip(record["name_index"], record["steps"]))
            with self.lock:
                self.out.write(lines)
                self.out.flush()
        done(None)

    def close(self) -> None:
        self.out.close()


if __name__ == "__main__":
    gateway = start_gateway(FileSink(sys.argv[1]))
    print(gateway.address, flush=True)
    sys.stdin.read()
    gateway.stop(grace=1.0)
