"""A training script that never calls finish() still delivers everything when it exits, and the
run end says whether it failed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from gateway_helpers import RecordingSink, start_gateway

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent("""
    import runwire
    runwire.init(project="exit", gpu=False, flush_interval_s=5.0)
    for step in range(1000):
        runwire.log({"loss": 1.0 / (step + 1)}, step=step)
    if FAIL:
        raise RuntimeError("training blew up")
""")


@pytest.fixture
def gateway():
    sink = RecordingSink()
    gw = start_gateway(sink)
    yield gw, sink
    gw.stop()


@pytest.mark.parametrize("fail, exit_code", [(False, 0), (True, 1)])
def test_points_logged_before_exit_are_delivered_and_the_exit_is_recorded(gateway, tmp_path, fail, exit_code):
    gw, sink = gateway
    env = dict(os.environ, RUNWIRE_GATEWAY=gw.address, RUNWIRE_SPOOL_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", SCRIPT.replace("FAIL", str(fail))], env=env, capture_output=True,
                          text=True, timeout=45)
    assert proc.returncode == (1 if fail else 0), proc.stderr
    # Nothing was flushed by the loop (5-s interval): the exit hook sent it all.
    assert len(sink.unique_points()) == 1000
    ends = sink.bodies("run_end")
    assert len(ends) == 1 and ends[0]["exit_code"] == exit_code
    assert ends[0]["summary"]["runwire.points"] == 1000
