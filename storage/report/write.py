"""`write_report`: the report of some runs, read through the query library, as one file
(`runwire report` is wired in runwire.storage.commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from runwire.storage.report.data import load_report_data
from runwire.storage.report.page import render_report


def write_report(client, run_ids: Sequence[str], path, metrics: Sequence[str] | None = None) -> Path:
    """Write the report comparing `run_ids` to `path` (parent folders are created); returns the path.

    client: a clickhouse-connect client bound to runwire's database.
    metrics: metric names to plot (default: loss-like names first, then the rest, at most 12).
    """
    if not run_ids:
        raise ValueError("write_report needs at least one run id")
    runs = load_report_data(client, run_ids, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(runs), encoding="utf-8")
    return path
