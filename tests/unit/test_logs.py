"""The commands' logging: the libraries speak only when something is wrong (all of it with
--verbose), and an install without pages of setuptools warnings."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runwire.deploy.cli import THIRD_PARTY_LOGGERS, configure_logging

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_logging():
    """Restore the root handlers and the library loggers' levels after the test."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    names = THIRD_PARTY_LOGGERS + ("kafka.net", "runwire")
    levels = {name: logging.getLogger(name).level for name in names}
    root.handlers = []
    yield
    root.setLevel(saved[0])
    root.handlers = saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_libraries_log_only_warnings_unless_verbose(clean_logging):
    configure_logging(verbose=False)
    for name in ("kafka.producer.kafka", "grpc._server", "urllib3.connectionpool", "clickhouse_connect.driver"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    # Reconnect attempts are reported by runwire itself (address and fix), once.
    assert not logging.getLogger("kafka.net.manager").isEnabledFor(logging.ERROR)


def test_verbose_shows_everything(clean_logging):
    configure_logging(verbose=True)
    for name in ("kafka.net.manager", "grpc._server"):
        assert logging.getLogger(name).isEnabledFor(logging.DEBUG), name


@pytest.mark.timeout(180)
def test_building_the_package_prints_no_setuptools_warnings_and_keeps_its_data_files(tmp_path):
    """Each data folder (proto/avro, storage/migrations, deploy/grafana...) was treated as an
    undeclared package: ~290 lines of warnings at every install."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    (wheel,) = tmp_path.glob("runwire-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("runwire/proto/avro/metric_batch.avsc", "runwire/storage/migrations/0001_core_tables.sql",
                 "runwire/deploy/grafana/dashboards/run-overview.json", "runwire/deploy/local/kafka-pom.xml",
                 "runwire/ingest/alerts/demo_rules.toml", "runwire/proto/telemetry.proto"):
        assert data in names, data
