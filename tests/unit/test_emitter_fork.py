"""Forking at any moment is safe: init + an immediate double fork (what a DataLoader does) +
logging, 300 times, with a real gateway. No child or parent crashes, every point arrives exactly
once, and gRPC prints nothing (its fork handlers are off: see runwire/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(240)

PROCESSES, ITERATIONS, POINTS = 3, 100, 300

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import runwire
    gateway, spool, tag, iterations, points = sys.argv[1:6]
    crashed = bad = 0
    for i in range(int(iterations)):
        run = runwire.init(project="fork", gpu=False, gateway=gateway, spool_dir=spool, run_id=f"{tag}-{i}",
                           flush_interval_s=0.05)
        children = []
        for _ in range(2):  # right after init: the sender is connecting or sending
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for s in range(50):
                        runwire.log({"child": float(s)}, step=s)  # the inherited run: a no-op here
                except BaseException:
                    code = 3
                os._exit(code)
            children.append(pid)
        for s in range(int(points)):
            runwire.log({"loss": s * 0.5}, step=s)
            if s == 100:
                # and once more while it sends
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                children.append(pid)
        for pid in children:
            _, status = os.waitpid(pid, 0)
            crashed += status != 0
        summary = runwire.finish(timeout=30)
        bad += summary["runwire.unacked"] != 0 or summary["runwire.points"] != int(points)
    print(f"crashed={crashed} bad={bad}")
""")


def test_init_then_fork_then_log_300_times_without_a_crash_or_a_lost_point(gateway, sink, tmp_path):
    env = dict(os.environ)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)  # runwire's own default must be enough
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, gateway.address, str(tmp_path / "spool"), f"p{n}",
                               str(ITERATIONS), str(POINTS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for n in range(PROCESSES)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=200)
        outputs.append((proc.returncode, out.strip(), err))
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
        assert out == "crashed=0 bad=0", err[-3000:]
        # Only runwire's own one-line banner per run; nothing from gRPC (fork handlers, epoll).
        noise = [line for line in err.splitlines() if not line.startswith("runwire: run ")]
        assert noise == [], noise[:20]
    points = sink.unique_points()
    assert len(sink.points()) == len(points)  # no duplicates
    runs = {r["run_id"] for r in sink.of_kind("metrics")}
    assert len(runs) == PROCESSES * ITERATIONS
    assert len(points) == PROCESSES * ITERATIONS * POINTS
    assert {name for _, name, _, _ in points} == {"loss"}  # the children logged nothing
    # Every run ended (a RunEnd resent after a reconnect may arrive twice: storage keeps one).
    ended = {r["run_id"] for r in sink.of_kind("runs") if r["body"][0].endswith("RunEnd")}
    assert len(ended) == PROCESSES * ITERATIONS


CHILD_INIT = textwrap.dedent("""
    import os, sys
    import runwire
    gateway, spool = sys.argv[1:3]
    runwire.init(project="fork", gpu=False, gateway=gateway, spool_dir=spool, run_id="parent")
    runwire.log({"loss": 1.0}, step=0)
    pid = os.fork()
    if pid == 0:
        # gRPC cannot be used in this process: its own run goes to the spool only.
        child = runwire.init(project="fork", gpu=False, gateway=gateway, spool_dir=spool, run_id="child")
        for s in range(100):
            child.log({"child_loss": float(s)}, step=s)
        summary = child.finish(timeout=5)
        os._exit(0 if summary["runwire.points"] == 100 else 4)
    _, status = os.waitpid(pid, 0)
    assert runwire.finish(timeout=20)["runwire.unacked"] == 0
    print("child", status)
""")


def test_a_forked_child_may_start_its_own_run_which_goes_to_the_spool(gateway, sink, tmp_path):
    from runwire.sync import sync

    spool = tmp_path / "spool"
    proc = subprocess.run([sys.executable, "-c", CHILD_INIT, gateway.address, str(spool)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "child 0", proc.stderr
    assert "forked from one that uses gRPC" in proc.stderr and "runwire sync" in proc.stderr
    # The parent's start-up recovery may have delivered the child's finished stream already;
    # otherwise sync does. Either way exactly once.
    reports = sync(spool, gateway=gateway.address, timeout_s=10)
    assert all(r.run_id == "child" and r.delivered == 100 and r.lost == 0 and r.ended for r in reports)
    child_points = [p for p in sink.points() if p[1] == "child_loss"]
    assert len(child_points) == 100 and {p[2] for p in child_points} == set(range(100))


def test_grpc_imported_before_runwire_is_told_once_with_the_fix(gateway, tmp_path):
    script = ("import grpc, runwire\n"
              f"runwire.init(project='p', gpu=False, gateway='{gateway.address}', spool_dir='{tmp_path}')\n"
              "runwire.finish(timeout=10)\n")
    env = dict(os.environ)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("grpc was imported before runwire") == 1
    assert "set GRPC_ENABLE_FORK_SUPPORT=0" in proc.stderr
    env["GRPC_ENABLE_FORK_SUPPORT"] = "0"  # the fix: no warning
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "grpc was imported" not in proc.stderr, proc.stderr
