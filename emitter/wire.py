"""Packed metric columns of the wire contract (proto/telemetry.proto, MetricBatch).

Metric columns travel as packed little-endian arrays in `bytes` fields, the same layout the
Kafka records use: the emitter packs them with one `array.tobytes()` per column and the gateway
passes them through without touching a single value.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable

from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import METRIC_COLUMNS

# The contract's sizes hold for the array typecodes on every platform CPython supports; checked
# at import all the same.
for _column in METRIC_COLUMNS.values():
    assert array(_column.typecode).itemsize == _column.size, "unsupported platform: array item sizes differ"

_BIG_ENDIAN = sys.byteorder == "big"


def pack(column: str, values: Iterable) -> bytes:
    code = METRIC_COLUMNS[column].typecode
    if not _BIG_ENDIAN and isinstance(values, list):
        return struct.pack(f"<{len(values)}{code}", *values)  # the fastest path from a list
    data = array(code, values)
    if _BIG_ENDIAN:
        data.byteswap()
    return data.tobytes()


def unpack(column: str, raw: bytes) -> array:
    data = array(METRIC_COLUMNS[column].typecode)
    data.frombytes(raw)
    if _BIG_ENDIAN:
        data.byteswap()
    return data


def metric_batch(names: list[str], name_index: Iterable[int], steps: Iterable[int], timestamps_ns: Iterable[int],
                 values: Iterable[float]) -> pb.MetricBatch:
    """A MetricBatch from per-point columns (lists or arrays)."""
    return pb.MetricBatch(names=names, name_index=pack("name_index", name_index), steps=pack("steps", steps),
                          timestamps_ns=pack("timestamps_ns", timestamps_ns), values=pack("values", values))


def metric_columns(batch: pb.MetricBatch) -> dict[str, array]:
    """The per-point columns of a MetricBatch (raises ValueError on a torn column)."""
    return {column: unpack(column, getattr(batch, column)) for column in METRIC_COLUMNS}
