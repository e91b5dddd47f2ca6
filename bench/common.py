"""Pieces the benchmarks share: the simulated training curves, starting `runwire` commands,
percentiles."""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
import threading
import time


def f32(x: float) -> float:
    """What `tensor.item()` on a float32 tensor gives: float32 precision in a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0]


def curves(k: int, steps: int, seed: int) -> list[dict]:
    """Typical training curves: smooth decays with noise, schedules, throughputs, and per-layer
    statistics with float32 precision (as `.item()` returns them)."""
    rng = random.Random(seed)
    names = ["loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"] + [f"layer{i}/act_rms" for i in range(k - 5)]
    rows = []
    for step in range(steps):
        row = {"loss": f32(2.0 * math.exp(-step / 3000) + 1.1 + 0.02 * rng.gauss(0, 1)),
               "lr": 3e-4 * min(1.0, step / 500),
               "grad_norm": f32(1.0 + 0.1 * rng.gauss(0, 1)),
               "tokens_per_s": 250_000.0 + 2_000 * rng.gauss(0, 1),
               "step_time_s": 0.5 + 0.01 * rng.random()}
        for i, name in enumerate(names[5:]):
            row[name] = f32(0.5 + 0.001 * i + 0.01 * math.sin(step / 50 + i) + 0.001 * rng.random())
        rows.append(row)
    return rows


def start_cli(args: list[str], env: dict) -> subprocess.Popen:
    """`runwire ARGS...` as a child process, its output readable line by line."""
    return subprocess.Popen([sys.executable, "-m", "runwire.deploy.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    """The first output line of `proc` containing `needle`; RuntimeError if it never comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"process did not print {needle!r}")


def drain(proc: subprocess.Popen) -> threading.Thread:
    """Keep reading a child's output so it never blocks on a full pipe."""
    t = threading.Thread(target=lambda: [None for _ in proc.stdout], name="bench-drain", daemon=True)
    t.start()
    return t


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1), rounded to milliseconds; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)
