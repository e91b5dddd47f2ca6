"""The fleet sizing (deploy/sizing.py): its arithmetic on known figures, the committed page, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runwire.deploy import sizing
from runwire.deploy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_issue_fleet_arithmetic():
    s = sizing.size(sizing.Fleet())  # 10,000 GPUs, 50 metrics/step at 2 steps/s, GPUs at 1 Hz
    assert s.ranks == 10_000 and s.hosts == 1_250
    assert s.metric_points_per_s == 1_000_000
    assert s.gpu_samples_per_s == 10_000
    assert s.envelopes_per_s == 10_000 * 2 + 10_000  # metrics every 0.5 s + one GPU batch per second
    m = sizing.MEASURED
    assert s.disk_gb_per_day_metrics == pytest.approx(1_000_000 * 86_400 * m.disk_bytes_per_point / 1e9)
    assert s.gateway_cores == pytest.approx(
        (s.point_equivalents_per_s * m.gateway_us_per_point + 30_000 * m.gateway_us_per_envelope) / 1e6)
    assert s.gateway_processes >= s.gateway_cores / sizing.PLANNED_CORE_SHARE
    assert s.gateway_processes * m.streams_per_gateway >= s.ranks
    assert s.partitions >= s.ingest_workers >= sizing.AT_LEAST


def test_a_bigger_fleet_needs_proportionally_more():
    small, big = sizing.size(sizing.Fleet(gpus=10_000)), sizing.size(sizing.Fleet(gpus=40_000))
    assert big.metric_points_per_s == 4 * small.metric_points_per_s
    assert big.disk_gb_per_day == pytest.approx(4 * small.disk_gb_per_day)
    assert big.gateway_processes >= 4 * small.gateway_processes - 3


def test_the_committed_page_is_the_modules_output():
    page = (ROOT / "deploy" / "SIZING.md").read_text()
    assert page == sizing.render(sizing.Fleet()), "stale: python -m runwire.deploy.sizing > deploy/SIZING.md"


def test_cli_prints_any_fleet_and_refuses_nonsense(capsys):
    assert main(["sizing", "--gpus", "1000", "--steps-per-s", "1"]) == 0
    out = capsys.readouterr().out
    assert "# Sizing a 1,000-GPU fleet" in out and "**50,000 metric points/s**" in out
    assert main(["sizing", "--gpus", "0"]) == 2
    assert "gpus must be > 0" in capsys.readouterr().err


def test_module_entry_point_writes_the_page():
    done = subprocess.run([sys.executable, "-m", "runwire.deploy.sizing"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("# Sizing a 10,000-GPU fleet")
