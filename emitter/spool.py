"""On-disk spool of envelopes the gateway has not acknowledged yet.

One file per envelope (`<seq>.pb`, the serialized Envelope), written atomically, under
`<root>/<project>/<run_id>/rank<rank>-<stream_id>/`. Files are removed once acknowledged;
whatever is left after a run is delivered later by `runwire sync ROOT`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_root() -> Path:
    base = os.environ.get("RUNWIRE_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "runwire", "spool")
    return Path(base)


class Spool:
    def __init__(self, root: Path, project: str, run_id: str, rank: int, stream_id: str) -> None:
        self.dir = Path(root) / _SAFE.sub("_", project) / _SAFE.sub("_", run_id) / f"rank{rank}-{_SAFE.sub('_', stream_id)}"
        self.bytes = 0
        self.files = 0

    def path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.pb"

    def put(self, seq: int, payload: bytes) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(seq)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, final)
        self.bytes += len(payload)
        self.files += 1
        return final

    def get(self, seq: int) -> bytes:
        return self.path(seq).read_bytes()

    def remove(self, seq: int) -> None:
        path = self.path(seq)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self.bytes -= size
        self.files -= 1


def spooled_files(root: Path) -> list[Path]:
    """Every spooled envelope below `root`, oldest sequence first within each stream."""
    return sorted(Path(root).rglob("*.pb"))
