"""Decoded Kafka records -> Arrow tables shaped like the ClickHouse tables (pure, no I/O).

Arrow is clickhouse-connect's fastest insert path: numeric columns go through as the packed
arrays they arrived in, and repeated strings (project, run, metric name) as dictionaries.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from runwire.proto.contract import GPU_FLOAT_FIELDS

_TS = pa.timestamp("us", tz="UTC")
_TS_MS = pa.timestamp("ms", tz="UTC")


class _Dictionary:
    """Assigns dense ids to strings so a column can be sent as an Arrow dictionary."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def id(self, value: str) -> int:
        return self.ids.setdefault(value, len(self.ids))

    def ids_of(self, values: list[str]) -> np.ndarray:
        return np.fromiter((self.id(v) for v in values), dtype=np.int32, count=len(values))

    def column(self, indices: np.ndarray) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(self.ids), pa.string()))


def _per_record(dictionary: _Dictionary, values: list[str], counts: np.ndarray) -> pa.DictionaryArray:
    return dictionary.column(np.repeat(dictionary.ids_of(values), counts))


def _timestamps_us(ns: np.ndarray) -> pa.Array:
    return pa.array(ns // 1000, pa.int64()).cast(_TS)


def _timestamps_ms(ns: np.ndarray) -> pa.Array:
    return pa.array(ns // 1_000_000, pa.int64()).cast(_TS_MS)


def metric_table(records: list[dict]) -> pa.Table:
    counts = np.fromiter((len(r["values"]) for r in records), dtype=np.int64, count=len(records))
    names = _Dictionary()
    name_ids = np.concatenate([names.ids_of(r["names"])[r["name_index"]] for r in records]) if records else np.empty(0, np.int32)
    return pa.table({
        "project": _per_record(_Dictionary(), [r["project"] for r in records], counts),
        "run_id": _per_record(_Dictionary(), [r["run_id"] for r in records], counts),
        "name": names.column(name_ids),
        "rank": pa.array(np.repeat(np.fromiter((r["rank"] for r in records), np.uint32, len(records)), counts)),
        "step": pa.array(_concat(records, "steps", np.int64)),
        "ts": _timestamps_ms(_concat(records, "timestamps_ns", np.int64)),  # metrics keep milliseconds
        "value": pa.array(_concat(records, "values", np.float64)),
    })


def gpu_table(records: list[dict]) -> pa.Table:
    counts = np.fromiter((len(r["gpu_ref"]) for r in records), dtype=np.int64, count=len(records))
    uuids, buses, names = _Dictionary(), _Dictionary(), _Dictionary()
    uuid_ids, bus_ids, name_ids, indexes = [], [], [], []
    for r in records:
        ref = r["gpu_ref"]
        uuid_ids.append(uuids.ids_of(r["gpu_uuids"])[ref])
        bus_ids.append(buses.ids_of(r["pci_bus_ids"])[ref])
        name_ids.append(names.ids_of(r["gpu_names"])[ref])
        indexes.append(np.asarray(r["gpu_indexes"], dtype=np.uint16)[ref])
    columns = {
        "project": _per_record(_Dictionary(), [r["project"] for r in records], counts),
        "run_id": _per_record(_Dictionary(), [r["run_id"] for r in records], counts),
        "host": _per_record(_Dictionary(), [r["host"] for r in records], counts),
        "node_rank": pa.array(np.repeat(np.fromiter((r["node_rank"] for r in records), np.uint32, len(records)), counts)),
        "rank": pa.array(np.repeat(np.fromiter((r["rank"] for r in records), np.uint32, len(records)), counts)),
        "gpu_uuid": uuids.column(_cat(uuid_ids, np.int32)),
        "pci_bus_id": buses.column(_cat(bus_ids, np.int32)),
        "gpu_index": pa.array(_cat(indexes, np.uint16)),
        "gpu_name": names.column(_cat(name_ids, np.int32)),
        "ts": _timestamps_us(_concat(records, "timestamps_ns", np.int64)),
    }
    for name in GPU_FLOAT_FIELDS:
        columns[name] = pa.array(_concat(records, name, np.float64))
    columns["throttle_reasons"] = pa.array(_concat(records, "throttle_reasons", np.uint64))
    columns["xid"] = pa.array(_concat(records, "xid", np.uint64))
    return pa.table(columns)


def _concat(records: list[dict], column: str, dtype) -> np.ndarray:
    return _cat([r[column] for r in records], dtype)


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)


# --- run lifecycle, params and tags: few rows, plain Python lists are fine -------------------

_STATUS_BY_EXIT = {0: "FINISHED"}


def run_event_rows(records: Iterable[dict]) -> dict[str, list[list]]:
    """Rows per table (runs, run_ranks, params, tags) for run lifecycle records."""
    out: dict[str, list[list]] = {"runs": [], "run_ranks": [], "params": [], "tags": []}
    for r in records:
        kind, body = r["body"]
        kind = kind.rsplit(".", 1)[-1]
        updated = r["received_ns"]
        key = (r["project"], r["run_id"])
        if kind == "RunStart":
            start = body["start_time_ns"]
            # The run rows are versioned by the emitter's clock, so a RunStart resent after the
            # RunEnd cannot set a finished run back to RUNNING.
            rank_row = [*key, r["rank"], r["local_rank"], r["node_rank"], r["world_size"], r["host"], r["pid"],
                        r["stream_id"], "RUNNING", start, None, None, {}, start]
            out["run_ranks"].append(rank_row)
            if r["rank"] == 0:
                out["runs"].append([*key, body["name"], "RUNNING", start, None, None, body["git_commit"],
                                    body["launcher"], r["world_size"], {}, start])
            out["params"].extend([*key, k, v, updated] for k, v in body["params"].items())
            out["tags"].extend([*key, k, v, updated] for k, v in body["tags"].items())
        elif kind == "Params":
            out["params"].extend([*key, k, v, updated] for k, v in body["params"].items())
        elif kind == "Tags":
            out["tags"].extend([*key, k, v, updated] for k, v in body["tags"].items())
        elif kind == "RunEnd":
            status = _STATUS_BY_EXIT.get(body["exit_code"], "FAILED")
            # The end row restates what the start row said; the start fields are filled at
            # write time from the stored row (see writer.RUN_END_MERGE).
            out.setdefault("run_ends", []).append(
                [*key, r["rank"], status, body["end_time_ns"], body["exit_code"], body["summary"],
                 max(body["end_time_ns"], updated)])
    return out


RUN_COLUMNS = ["project", "run_id", "name", "status", "start_time", "end_time", "exit_code", "git_commit",
               "launcher", "world_size", "summary", "updated_at"]
RUN_RANK_COLUMNS = ["project", "run_id", "rank", "local_rank", "node_rank", "world_size", "host", "pid",
                    "stream_id", "status", "start_time", "end_time", "exit_code", "summary", "updated_at"]
KV_COLUMNS = ["project", "run_id", "key", "value", "updated_at"]
