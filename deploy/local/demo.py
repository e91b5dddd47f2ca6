"""`runwire demo`: a simulated multi-node training job on the embedded stack.

Every simulated rank is its own process running the real emitter, with simulated GPUs behind
a fake NVML (`runwire.simulated_nvml`), so the demo exercises the same code as a real job.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

PROJECT = "demo"


def train(duration_s: float, seed: int) -> dict:
    """The body of one simulated rank: a loss curve, accuracy, step time and throughput."""
    import runwire

    from runwire.run import fake_nvml

    rng = random.Random(seed)
    run = runwire.init(project=PROJECT, name="demo-llm", config={
        "model": {"layers": 24, "hidden": 2048}, "lr": 3e-4, "batch_size": 512, "optimizer": "adamw"},
        tags={"team": "demo"}, gpu_interval_s=0.5)
    rank = run.layout.rank
    # Anomalies the launcher asked this rank to show (seconds into the run; unset: none).
    overheat_at = float(os.environ.get("RUNWIRE_DEMO_OVERHEAT_AT_S", "inf"))
    straggle_at = float(os.environ.get("RUNWIRE_DEMO_STRAGGLE_AT_S", "inf"))
    step, started = 0, time.monotonic()
    while time.monotonic() - started < duration_s:
        elapsed = time.monotonic() - started
        if elapsed >= overheat_at and fake_nvml() is not None:
            fake_nvml().gpus[run.layout.local_rank].set_temperature(93)  # the GPU this rank samples
            overheat_at = float("inf")
        step_time = 0.01 * (1 + 0.1 * rng.random()) * (1.0 + 0.05 * rank)
        if elapsed >= straggle_at:
            step_time *= 2.5  # a slow rank: every other rank waits for it at the next all-reduce
        time.sleep(step_time)
        loss = 4.0 * math.exp(-step / 800) + 1.2 + 0.05 * rng.gauss(0, 1)
        run.log({"loss": loss, "accuracy": 1 - loss / 6, "step_time_s": step_time,
                 "tokens_per_s": 512 * 1024 / step_time, "lr": 3e-4 * min(1.0, step / 200)}, step=step)
        step += 1
    return run.finish()


def _rank_main() -> int:
    summary = train(float(os.environ["RUNWIRE_DEMO_DURATION_S"]), int(os.environ["RANK"]))
    print("RUNWIRE_SUMMARY " + json.dumps({k: v for k, v in summary.items() if k.startswith("runwire.")}), flush=True)
    return 0


def launch_ranks(gateway: str, run_id: str, duration_s: float, nodes: int, ranks_per_node: int,
                 anomalies: bool = False) -> list[subprocess.Popen]:
    """Start nodes x ranks_per_node rank processes with a torchrun-like environment. With
    anomalies, the first GPU of the last node overheats after 25% of the run and the last rank
    straggles (2.5x step time) after 30% of it."""
    procs = []
    world = nodes * ranks_per_node
    for node in range(nodes):
        for local in range(ranks_per_node):
            rank = node * ranks_per_node + local
            env = dict(os.environ, RUNWIRE_GATEWAY=gateway, RUNWIRE_RUN_ID=run_id, RANK=str(rank),
                       LOCAL_RANK=str(local), GROUP_RANK=str(node), WORLD_SIZE=str(world),
                       LOCAL_WORLD_SIZE=str(ranks_per_node), RUNWIRE_HOST=f"node-{node}",
                       RUNWIRE_FAKE_NVML=str(node + 1), RUNWIRE_FAKE_GPUS=str(ranks_per_node),
                       RUNWIRE_DEMO_DURATION_S=str(duration_s))
            if anomalies and node == nodes - 1 and local == 0:
                env["RUNWIRE_DEMO_OVERHEAT_AT_S"] = str(0.25 * duration_s)
            if anomalies and rank == world - 1 and world > 2:
                env["RUNWIRE_DEMO_STRAGGLE_AT_S"] = str(0.3 * duration_s)
            procs.append(subprocess.Popen([sys.executable, "-m", "runwire.deploy.local.demo"], env=env,
                                          stdout=subprocess.PIPE, text=True))
    return procs


def collect(procs: list[subprocess.Popen], timeout_s: float) -> list[dict]:
    summaries = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"rank process exited with {proc.returncode}")
        for line in out.splitlines():
            if line.startswith("RUNWIRE_SUMMARY "):
                summaries.append(json.loads(line.split(" ", 1)[1]))
    return summaries


def wait_for_rows(client, run_id: str, expected_points: int, timeout_s: float = 60.0) -> int:
    """Kafka mode stores asynchronously: wait until every acknowledged point is queryable."""
    deadline = time.monotonic() + timeout_s
    while True:
        stored = client.query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String}",
                              parameters={"r": run_id}).result_rows[0][0]
        if stored >= expected_points or time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


def report(client, run_id: str) -> str:
    params = {"r": run_id}
    per_rank = client.query(
        "SELECT m.rank, any(r.host) AS host, count() AS points, "
        "argMaxIf(m.value, m.step, m.name = 'loss') AS last_loss, max(m.step) AS last_step "
        "FROM metrics AS m FINAL LEFT JOIN (SELECT rank, host FROM run_ranks FINAL WHERE run_id = {r:String}) AS r "
        "ON m.rank = r.rank WHERE m.run_id = {r:String} GROUP BY m.rank ORDER BY m.rank", parameters=params).result_rows
    gpus = client.query(
        "SELECT host, gpu_index, gpu_uuid, count() AS samples, round(max(temperature_c), 1), "
        "round(max(memory_used_bytes) / pow(2, 30), 1) FROM gpu_samples FINAL WHERE run_id = {r:String} "
        "GROUP BY host, gpu_index, gpu_uuid ORDER BY host, gpu_index", parameters=params).result_rows
    run = client.query("SELECT name, status, world_size FROM runs FINAL WHERE run_id = {r:String}",
                       parameters=params).result_rows
    lines = [f"run {run_id}: " + (f"name={run[0][0]} status={run[0][1]} world_size={run[0][2]}" if run else "(no run row)"),
             "", f"{'rank':>4}  {'host':<8} {'points':>8} {'last step':>9} {'last loss':>9}"]
    lines += [f"{r[0]:>4}  {r[1]:<8} {r[2]:>8} {r[4]:>9} {r[3]:>9.4f}" for r in per_rank]
    lines += ["", f"{'host':<8} {'gpu':>3}  {'uuid':<40} {'samples':>7} {'max temp C':>10} {'max mem GiB':>11}"]
    lines += [f"{g[0]:<8} {g[1]:>3}  {g[2]:<40} {g[3]:>7} {g[4]:>10} {g[5]:>11}" for g in gpus]
    from runwire.ingest.alerts.report import run_timeline

    lines += ["", run_timeline(client, run_id)]
    return "\n".join(lines)


class Progress:
    """One live status line (redrawn in place on a terminal, every few seconds in a log), with
    messages (alerts) printed above it."""

    def __init__(self, stream=None) -> None:
        import threading

        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._line = ""
        self._last_plain = 0.0

    def update(self, text: str) -> None:
        with self._lock:
            self._line = text
            if self.tty:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
            elif time.monotonic() - self._last_plain >= 5:
                self._last_plain = time.monotonic()
                print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        with self._lock:
            if self.tty and self._line:
                self.stream.write("\r\x1b[K" + text + "\n" + self._line)
                self.stream.flush()
            else:
                print(text, file=self.stream, flush=True)

    def done(self, text: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\x1b[K")
            print(text, file=self.stream, flush=True)
            self._line = ""


def _watch(client, run_id: str, procs: list[subprocess.Popen], progress: Progress, started: float) -> None:
    """Until every rank exits: points stored, ranks reporting and alerts so far."""
    world = len(procs)
    while any(p.poll() is None for p in procs):
        try:
            points, ranks = client.query(
                "SELECT (SELECT count() FROM metrics WHERE run_id = {r:String}), "
                "(SELECT uniqExact(rank) FROM run_ranks WHERE run_id = {r:String})",
                parameters={"r": run_id}).result_rows[0]
            alerts = client.query("SELECT uniqExactIf(alert_id, state IN ('firing', 'resolved')) FROM alerts WHERE run_id = {r:String}",
                                  parameters={"r": run_id}).result_rows[0][0]
            progress.update(f"  {time.monotonic() - started:5.1f} s  {points:>9,} points stored  "
                            f"{ranks}/{world} ranks reporting  {alerts} alert(s)")
        except Exception:  # noqa: BLE001 - a status line must never end the demo
            pass
        time.sleep(0.5)


def _runwire_command() -> str:
    """How this user runs `runwire` (the venv's script when that is what runs the demo)."""
    import shutil

    script = Path(sys.executable).parent / "runwire"
    if script.exists() and shutil.which("runwire") != str(script):
        try:
            return os.path.relpath(script)
        except ValueError:
            return str(script)
    return "runwire"


def run_demo(duration_s: float = 20.0, nodes: int = 2, ranks_per_node: int = 2, data_dir: str | None = None) -> int:
    """Simulate a job into the local store (or ``data_dir``), using the running local stack when
    there is one; the run stays there for `runwire ui`, `runwire runs ...`."""
    from importlib import resources

    from runwire.deploy.local.stack import LocalStack
    from runwire.ingest.alerts.engine import AlertConfig
    from runwire.ingest.alerts.notify import CallbackNotifier, format_event
    from runwire.proto import localstack
    from runwire.storage.client import connect

    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    progress = Progress()
    running = localstack.read_record() if data_dir is None else None
    stack = None
    if running is not None and running.get("gateway"):
        print(f"using the running local stack (pid {running['pid']}, {running['path']}):\n"
              f"gateway:    {running['gateway']}\nclickhouse: {running['clickhouse_url']}", flush=True)
        gateway, client = running["gateway"], connect(running["clickhouse_url"], running.get("database", "runwire"))
    else:
        # The built-in rules with durations that fit a 20-second run (see the file); webhooks from
        # RUNWIRE_ALERT_WEBHOOK_URL / RUNWIRE_ALERT_SLACK_URL when set.
        rules = os.environ.get("RUNWIRE_ALERT_RULES") or str(resources.files("runwire.ingest.alerts") / "demo_rules.toml")
        alerts = AlertConfig.from_settings(rules=rules, log=False)
        printer = CallbackNotifier(lambda event: progress.message(f"  ALERT {format_event(event)}"), name="demo")
        try:
            stack = (LocalStack(data_dir=data_dir, alerts=alerts, alert_notifiers=(printer,)) if data_dir else
                     LocalStack.store(gateway_listen="127.0.0.1:0", alerts=alerts, alert_notifiers=(printer,)))
            stack.start()
        except RuntimeError as exc:
            print(f"runwire demo: cannot start the local stack: {exc}", file=sys.stderr)
            return 2
        print(stack.describe(), flush=True)
        print(f"store:      {stack.data_dir}", flush=True)
        gateway, client = stack.gateway.address, stack.client()
    try:
        print(f"\nsimulating {nodes} nodes x {ranks_per_node} ranks for {duration_s:.0f} s (run {run_id}) ...", flush=True)
        started = time.monotonic()
        procs = launch_ranks(gateway, run_id, duration_s, nodes, ranks_per_node, anomalies=True)
        _watch(client, run_id, procs, progress, started)
        summaries = collect(procs, timeout_s=duration_s + 120)
        emitted = int(sum(s["runwire.points"] for s in summaries))
        stored = wait_for_rows(client, run_id, emitted)
        if stack is not None:
            stack.alerts.evaluate_periodic()  # the straggler's last evaluation, with all data stored
            stack.alerts.flush(10)
        progress.done(f"\n{len(summaries)} ranks emitted {emitted} points in {time.monotonic() - started:.1f} s; "
                      f"stored {stored}; dropped {int(sum(s['runwire.dropped'] for s in summaries))}\n")
        print(report(client, run_id), flush=True)
        from runwire.storage.report import write_report

        path = write_report(client, [run_id], Path("build") / f"{run_id}.html")
        print(f"\nreport: {path.resolve()}", flush=True)
    finally:
        client.close()
        if stack is not None:
            stack.stop()
    if data_dir is None:
        print(f"\nThe run stays in the local store ({localstack.home()}). Open it in the web UI:\n\n"
              f"    {_runwire_command()} ui\n\nthen http://127.0.0.1:{localstack.DEFAULT_UI_PORT}/#/run/{run_id}",
              flush=True)
    else:
        print(f"\nThe run stays in {data_dir}: serve it with `runwire up --data-dir {data_dir}` and open it with "
              f"`runwire ui --clickhouse-url URL` (the URL `runwire up` prints).", flush=True)
    return 0 if stored == emitted else 1


if __name__ == "__main__":
    sys.exit(_rank_main())
