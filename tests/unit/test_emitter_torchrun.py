"""A real torchrun job: 2 ranks training a tiny MLP with DataLoader workers (num_workers=2,
persistent and not) that fork right after init(). Ten launches in a row with the same fixed
--master_port: every launch is its own run, both ranks agree on it, every point arrives exactly
once, nothing crashes and nothing hangs at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from gateway_helpers import free_port

pytestmark = pytest.mark.timeout(600)

LAUNCHES, STEPS = 10, 24

TRAIN = textwrap.dedent("""
    import sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import runwire

    persistent = sys.argv[1] == "persistent"
    run = runwire.init(project="torchrun", gpu=False, flush_interval_s=0.2)
    torch.manual_seed(run.layout.rank)
    data = TensorDataset(torch.randn(STEPS * 8, 16), torch.randn(STEPS * 8, 1))
    loader = DataLoader(data, batch_size=8, num_workers=2, persistent_workers=persistent)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    for epoch in range(2):  # a second epoch forks new workers unless they persist
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            runwire.log({"loss": loss.item(), "epoch": epoch}, step=step)
            step += 1
    print("RUN", run.id, run.layout.rank, run.layout.launcher, step, flush=True)
    summary = runwire.finish(timeout=30)
    assert summary["runwire.unacked"] == 0, summary
""").replace("STEPS", str(STEPS))


def test_ten_torchrun_launches_with_a_fixed_master_port(gateway, sink, tmp_path):
    import torch  # noqa: F401 - in the dev extra: a missing torch fails, never skips
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    port = free_port()
    env = dict(os.environ, RUNWIRE_GATEWAY=gateway.address, RUNWIRE_SPOOL_DIR=str(tmp_path / "spool"),
               OMP_NUM_THREADS="1")
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    launches = []
    for n in range(LAUNCHES):
        mode = "persistent" if n % 2 else "fresh"
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                               f"--master_port={port}", str(script), mode], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "ev_epoll" not in proc.stderr and "fork() handlers" not in proc.stderr, proc.stderr[-3000:]
        runs = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RUN ")]
        assert len(runs) == 2, proc.stdout
        assert {r[0] for r in runs} and len({r[0] for r in runs}) == 1, runs  # both ranks agree
        assert {r[2] for r in runs} == {"torchrun"} and {r[1] for r in runs} == {"0", "1"}
        launches.append(runs[0][0])
    assert len(set(launches)) == LAUNCHES  # one run per launch, though the port never changed

    points = sink.points()
    per_run = Counter((record["run_id"]) for record in sink.of_kind("metrics") for _ in record["values"])
    assert set(per_run) == set(launches)
    # Exactly once: 2 ranks x 2 epochs x STEPS steps x 2 metrics per launch, no duplicates.
    assert all(count == 2 * 2 * STEPS * 2 for count in per_run.values()), per_run
    assert len(points) == len(sink.unique_points())
    ends = sink.bodies("run_end")
    assert len(ends) == 2 * LAUNCHES and all(end["exit_code"] == 0 for end in ends)
