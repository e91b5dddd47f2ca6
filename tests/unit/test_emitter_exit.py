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


KILLED = textwrap.dedent("""
    import os, signal
    import runwire
    runwire.init(project="exit", gpu=False, run_id="killed", flush_interval_s=0.05)
    for step in range(500):
        runwire.log({"loss": float(step)}, step=step)
    runwire.flush(2)  # the gateway is down: nothing is acknowledged, all of it is on disk
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_next_run_on_the_host_delivers_what_a_killed_one_left(sink, tmp_path):
    import runwire

    from gateway_helpers import free_port

    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RUNWIRE_GATEWAY=address, RUNWIRE_SPOOL_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", KILLED], env=env, capture_output=True, text=True, timeout=45)
    assert proc.returncode == -9, proc.stderr
    gw = start_gateway(sink, port=port)
    try:
        run = runwire.Run(project="exit", gpu=False, gateway=address, spool_dir=str(tmp_path), run_id="next")
        run.log({"loss": 0.0}, step=0)
        assert sink.wait_for(lambda s: sum(r["run_id"] == "killed" for r in s.of_kind("metrics")) > 0, timeout=20)
        run.finish(timeout=20)
        assert sink.wait_for(lambda s: any(b["exit_code"] == -1 for b in s.bodies("run_end")), timeout=20)
    finally:
        gw.stop(grace=0.5)
    killed = [p for p in sink.points() if p[1] == "loss" and p[2] >= 0]
    steps = sorted(step for _, _, step, _, _ in killed)
    assert steps.count(0) == 2 and len(steps) == 501  # 500 from the killed run, once; 1 from the next
    (end,) = [b for b in sink.bodies("run_end") if b["exit_code"] == -1]
    assert end["summary"]["runwire.logged"] == 500 and end["summary"]["runwire.lost"] == 0
