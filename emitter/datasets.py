"""Datasets a run used: name, source URI, content digest, size, schema and profile.

    run.log_dataset("wiki-2024", "data/wiki/", context="training")

The digest is computed from the file or directory when not given: SHA-256 over every file's
relative path and content hash, in path order, streaming (bounded memory), so the same data
gives the same digest on every machine and in every run. The record travels as the tag
`runwire.dataset.<name>` (JSON), which storage also writes into the `datasets` table.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from runwire import stores
from runwire.proto.contract import MAX_KEY_LEN, MAX_VALUE_LEN, text_problem

DATASET_PREFIX = "runwire.dataset."


def digest_path(path: str | os.PathLike) -> tuple[str, int, int]:
    """(digest, total bytes, files) of a file or directory."""
    from runwire.artifacts import list_files  # one definition of "the files of a tree"

    outer = hashlib.sha256()
    size = count = 0
    for rel, full in list_files(path):
        digest = stores.sha256_file(full)
        outer.update(f"{rel}\0{digest}\n".encode())
        size += full.stat().st_size
        count += 1
    return outer.hexdigest(), size, count


def dataset_tags(name: str, source: str, digest: str | None = None, context: str = "", schema=None, profile=None,
                 size_bytes: int | None = None) -> dict[str, str]:
    """The tag that records a dataset; computes the digest of a local source when not given."""
    problem = text_problem(name, 1, MAX_KEY_LEN - len(DATASET_PREFIX))
    if problem:
        raise ValueError(f"dataset name {name!r}: {problem}")
    source = str(source)
    parts = urlsplit(source)
    local = parts.scheme in ("", "file")
    files = None
    if digest is None:
        if not local:
            raise ValueError(f"dataset {name!r}: pass digest= for a remote source ({source})")
        digest, size_bytes, files = digest_path(parts.path if parts.scheme == "file" else source)
    record = {"name": name, "source": source if not local else os.path.abspath(parts.path or source),
              "source_type": "local" if local else parts.scheme, "digest": digest, "context": context or ""}
    if size_bytes is not None:
        record["size_bytes"] = int(size_bytes)
    if files is not None:
        record["files"] = files
    if schema is not None:
        record["schema"] = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
    if profile is not None:
        record["profile"] = profile if isinstance(profile, str) else json.dumps(profile, sort_keys=True)
    value = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if len(value) > MAX_VALUE_LEN:
        raise ValueError(f"dataset {name!r}: the record is {len(value)} characters, over the {MAX_VALUE_LEN} limit "
                         "(shorten schema/profile, or log them as an artifact)")
    return {DATASET_PREFIX + name: value}
