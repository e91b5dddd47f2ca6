"""Writes decoded records into ClickHouse (thin I/O over storage.rows)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from runwire.proto.contract import GPU, METRICS, RUNS
from runwire.storage import rows


class PermanentWriteError(Exception):
    """ClickHouse rejected the data itself (bad value, type mismatch): retrying cannot help."""


# ClickHouse error codes that mean "this data is wrong", not "the server is unavailable".
_PERMANENT_CODES = {"6", "27", "38", "41", "53", "69", "70", "72", "117", "131", "321", "394"}


def is_permanent(exc: Exception) -> bool:
    text = str(exc)
    return any(f"Code: {code}." in text for code in _PERMANENT_CODES)


class StorageWriter:
    """Inserts batches of decoded records (kind, record) with one insert per table."""

    def __init__(self, client) -> None:
        self.client = client

    def write(self, records: list[tuple[str, dict]]) -> dict[str, int]:
        """Insert everything in `records`; returns rows written per table. Raises on failure."""
        by_kind: dict[str, list[dict]] = defaultdict(list)
        for kind, record in records:
            by_kind[kind].append(record)
        written: dict[str, int] = {}
        if by_kind[METRICS]:
            # Replays collapse in background merges; deduplicating each insert as well costs
            # ~20% of insert CPU for nothing.
            written["metrics"] = self._insert_arrow("metrics", rows.metric_table(by_kind[METRICS]),
                                                    settings={"optimize_on_insert": 0})
        if by_kind[GPU]:
            written["gpu_samples"] = self._insert_arrow("gpu_samples", rows.gpu_table(by_kind[GPU]))
        if by_kind[RUNS]:
            written.update(self._write_run_events(by_kind[RUNS]))
        return written

    def _insert_arrow(self, table: str, arrow_table, settings: dict | None = None) -> int:
        if arrow_table.num_rows:
            self.client.insert_arrow(table, arrow_table, settings=settings)
        return arrow_table.num_rows

    def _write_run_events(self, records: list[dict]) -> dict[str, int]:
        out = rows.run_event_rows(records)
        written = {}
        # Starts first: a run's end in the same batch must find its start row.
        for table, columns in (("runs", rows.RUN_COLUMNS), ("run_ranks", rows.RUN_RANK_COLUMNS),
                               ("params", rows.KV_COLUMNS), ("tags", rows.KV_COLUMNS)):
            if out[table]:
                self.client.insert(table, _ns_to_datetimes(out[table], columns), column_names=columns)
                written[table] = len(out[table])
        for end in out.get("run_ends", []):
            self._write_run_end(*end)
        return written

    def _write_run_end(self, project, run_id, rank, status, end_ns, exit_code, summary, updated_ns) -> None:
        """A replacing row restates the whole row, so the end merges into the stored start."""
        params = {"p": project, "r": run_id, "k": rank}
        rank_rows = self.client.query(
            f"SELECT {', '.join(rows.RUN_RANK_COLUMNS)} FROM run_ranks FINAL "
            "WHERE project = {p:String} AND run_id = {r:String} AND rank = {k:UInt32}", parameters=params,
        ).result_rows
        base = list(rank_rows[0]) if rank_rows else [project, run_id, rank, 0, 0, 0, "", 0, "", "", _ts(end_ns), None, None, {}, None]
        row = dict(zip(rows.RUN_RANK_COLUMNS, base))
        row.update(status=status, end_time=_ts(end_ns), exit_code=exit_code, summary=summary, updated_at=_ts(updated_ns))
        self.client.insert("run_ranks", [[row[c] for c in rows.RUN_RANK_COLUMNS]], column_names=rows.RUN_RANK_COLUMNS)
        if rank != 0:
            return
        run_rows = self.client.query(
            f"SELECT {', '.join(rows.RUN_COLUMNS)} FROM runs FINAL "
            "WHERE project = {p:String} AND run_id = {r:String}", parameters=params,
        ).result_rows
        base = list(run_rows[0]) if run_rows else [project, run_id, "", "", _ts(end_ns), None, None, "", "", 0, {}, None]
        run = dict(zip(rows.RUN_COLUMNS, base))
        run.update(status=status, end_time=_ts(end_ns), exit_code=exit_code, summary=summary, updated_at=_ts(updated_ns))
        self.client.insert("runs", [[run[c] for c in rows.RUN_COLUMNS]], column_names=rows.RUN_COLUMNS)


_TIME_COLUMNS = {"start_time", "end_time", "updated_at"}


def _ts(ns: int | None) -> dt.datetime | None:
    if ns is None:
        return None
    seconds, micros = divmod(ns // 1000, 1_000_000)
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).replace(microsecond=micros)


def _ns_to_datetimes(table_rows: list[list], columns: list[str]) -> list[list]:
    positions = [i for i, c in enumerate(columns) if c in _TIME_COLUMNS]
    converted = []
    for row in table_rows:
        row = list(row)
        for i in positions:
            if isinstance(row[i], int):
                row[i] = _ts(row[i])
        converted.append(row)
    return converted
