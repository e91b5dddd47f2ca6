"""Artifacts benchmark: upload throughput, training-step inflation during a 1 GB upload, and the
cost of metadata capture at init; MLflow's log_artifact/log_artifacts on the same files and the
same S3 server for ratios.

    python bench/artifacts.py --out build/bench/artifacts.json      (make bench-artifacts)

- upload_mb_s.{local_1gb, s3_1gb}: one 1 GiB file; {local_small, s3_small}: 10,000 files of
  10 KiB. MB/s = bytes / seconds from run.log_artifact() to the upload's end (hashing included),
  into an empty store each time (no deduplication helps). runwire logs through the embedded
  stack (gateway -> ClickHouse via chDB); MLflow to a file tracking store. S3 is moto's server on
  loopback (runs on this machine too, so it competes for the CPU).
- step_inflation_pct: a training loop (float64 matmuls on one core, ~20 ms a step, plus
  run.log()) runs in its own process; the mean step time while a 1 GiB checkpoint uploads to
  the local store, against the mean of the windows right before and after, in percent (median
  of --repeats uploads; each run is in step_inflation_runs).
- init_metadata_ms: median runwire.init() time with capture on minus with it off (fresh
  process); metadata_capture_thread_ms: how long the capture itself takes, off the training thread.
The 1 GiB and small files live in a temporary directory that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
MiB = 1 << 20


def make_files(root: Path, big_mb: int, small_files: int, small_kb: int) -> tuple[Path, Path]:
    big = root / "big" / "checkpoint.pt"
    big.parent.mkdir(parents=True)
    block = os.urandom(MiB)
    with open(big, "wb") as f:
        for i in range(big_mb):
            f.write(block[: MiB - 8] + i.to_bytes(8, "little"))  # distinct blocks, cheap to make
    small = root / "small"
    for i in range(small_files):
        d = small / f"{i // 1000:02d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(small_kb * 1024))
    return big, small


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- runwire ----------------------------------------------------------------------------------

def runwire_upload(gateway: str, store: str, path: Path, spool: str, endpoint: str = "") -> float:
    import runwire

    run = runwire.Run(project="bench", gateway=gateway, gpu=False, capture=False, spool_dir=spool,
                      artifact_store=store, artifact_s3_endpoint_url=endpoint)
    start = time.perf_counter()
    ref = run.log_artifact(path, name=path.name)
    ref.wait(3600)
    elapsed = time.perf_counter() - start
    run.finish()
    return tree_bytes(path) / MiB / elapsed


# -- MLflow (own process: its imports and state stay out of runwire's) --------------------------

_MLFLOW = r"""
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import mlflow
tracking, location, path = sys.argv[1], sys.argv[2], sys.argv[3]
mlflow.set_tracking_uri(tracking)
exp = mlflow.create_experiment("bench-%d" % time.time_ns(), artifact_location=location)
with mlflow.start_run(experiment_id=exp):
    start = time.perf_counter()
    if os.path.isdir(path):
        mlflow.log_artifacts(path, artifact_path="small")
    else:
        mlflow.log_artifact(path)
    print(json.dumps({"s": time.perf_counter() - start}))
"""


def mlflow_upload(tmp: Path, location: str, path: Path, env: dict) -> float:
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-c", _MLFLOW, tracking, location, str(path)], env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"mlflow failed: {out.stderr[-3000:]}")
    return tree_bytes(path) / MiB / json.loads(out.stdout.strip().splitlines()[-1])["s"]


# -- step inflation (own process: one BLAS thread, like a loop feeding a GPU) -----------------

_STEPS = r"""
import json, os, shutil, sys, time
import numpy as np
import runwire
gateway, store, big, spool, window_s, repeats = sys.argv[1:7]
window_s, repeats = float(window_s), int(repeats)
a = np.random.rand(256, 256)
run = runwire.init(project="bench", gateway=gateway, gpu=False, capture=False, spool_dir=spool, artifact_store=store)

def step(i):
    t = time.perf_counter()
    x = a
    for _ in range(12):
        x = x @ a
        x /= x.max()
    run.log({"loss": float(x[0, 0])}, step=i)
    return time.perf_counter() - t

i = 0
def window(until):
    global i
    out = []
    while not until():
        out.append(step(i)); i += 1
    return out

for _ in range(20): step(0)  # warm up
results = []
for r in range(repeats):
    end = time.monotonic() + window_s
    before = window(lambda: time.monotonic() > end)
    t0 = time.perf_counter()
    ref = run.log_artifact(big, name=f"checkpoint-{r}")
    during = window(lambda: ref.done)
    upload_s = time.perf_counter() - t0
    ref.wait(10)
    end = time.monotonic() + window_s
    after = window(lambda: time.monotonic() > end)
    shutil.rmtree(store, ignore_errors=True)  # the next upload must not be deduplicated
    results.append({"before": before, "during": during, "after": after, "upload_s": upload_s})
run.finish()
print(json.dumps(results))
"""


def step_inflation(gateway: str, tmp: Path, big: Path, window_s: float, repeats: int) -> list[dict]:
    """Per repeat: mean step time during the upload vs the windows right before and after."""
    store = tmp / "steps-store"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _STEPS, gateway, str(store), str(big), str(tmp / "spool-steps"),
                          str(window_s), str(repeats)], env=env, capture_output=True, text=True, timeout=3600)
    shutil.rmtree(store, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    runs = []
    for r in json.loads(out.stdout.strip().splitlines()[-1]):
        base = statistics.mean(r["before"] + r["after"])
        during = statistics.mean(r["during"])
        runs.append({"pct": round((during / base - 1) * 100, 2), "base_step_ms": round(base * 1000, 2),
                     "during_step_ms": round(during * 1000, 2), "steps_during": len(r["during"]),
                     "upload_s": round(r["upload_s"], 2)})
    return runs


# -- metadata capture at init ------------------------------------------------------------------

_INIT = r"""
import json, statistics, sys, time
import runwire
gateway, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = {True: [], False: []}
threads = []
for i in range(2 * n):
    capture = i % 2 == 0
    t = time.perf_counter()
    run = runwire.Run(project="bench", gateway=gateway, gpu=False, capture=capture, spool_dir=spool)
    times[capture].append(time.perf_counter() - t)
    if capture:
        t = time.perf_counter()
        run._repro.capture.join()
        threads.append(float(run._repro.capture.result.tags["runwire.capture_ms"]))
    run.finish()
print(json.dumps({"on": statistics.median(times[True]) * 1000, "off": statistics.median(times[False]) * 1000,
                  "thread": statistics.median(threads)}))
"""


def init_cost(gateway: str, tmp: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _INIT, gateway, str(tmp / "spool-init"), str(n)],
                         capture_output=True, text=True, timeout=600, cwd=HERE.parents[1])
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class _Done(Exception):
    """The parts asked for are measured."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/bench/artifacts.json")
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--small-kb", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="step-inflation uploads (median)")
    parser.add_argument("--window-s", type=float, default=4.0, help="step-time windows before and after the upload")
    parser.add_argument("--tmp", default=None, help="where the test files go (default: a temp dir, deleted after)")
    parser.add_argument("--parts", default="init,steps,uploads",
                        help="what to measure (default all); the other keys are kept from an existing --out")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    from runwire.deploy.local.s3 import TEST_CREDENTIALS, S3Server
    from runwire.deploy.local.stack import LocalStack

    os.environ.update(TEST_CREDENTIALS)
    tmp = Path(tempfile.mkdtemp(prefix="runwire-bench-artifacts-", dir=args.tmp))
    result: dict = json.loads(Path(args.out).read_text()) if Path(args.out).exists() and parts != {
        "init", "steps", "uploads"} else {}
    result.update({"big_mb": args.big_mb, "cpus": os.cpu_count()})
    try:
        big, small = make_files(tmp, args.big_mb, args.small_files if "uploads" in parts else 0, args.small_kb)
        with LocalStack(data_dir=str(tmp / "stack")) as stack, S3Server() as s3:
            gateway, endpoint = stack.gateway.address, s3.endpoint_url
            client = s3.client()
            spool = str(tmp / "spool")

            if "init" in parts:
                cost = init_cost(gateway, tmp, 7)
                result["init_metadata_ms"] = round(max(0.0, cost["on"] - cost["off"]), 2)
                result["init_ms"] = {"capture_on": round(cost["on"], 2), "capture_off": round(cost["off"], 2)}
                result["metadata_capture_thread_ms"] = round(cost["thread"], 1)
                print(f"init: {result['init_ms']}, capture thread {cost['thread']:.0f} ms", flush=True)

            if "steps" in parts:
                runs = step_inflation(gateway, tmp, big, args.window_s, args.repeats)
                result["step_inflation_runs"] = runs
                result["step_inflation_pct"] = statistics.median(r["pct"] for r in runs)
                print(f"step inflation: {runs}", flush=True)

            ours, theirs = {}, {}
            if "uploads" not in parts:
                raise _Done
            result.update({"small_files": args.small_files, "small_kb": args.small_kb})
            mlflow_env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=endpoint)
            for key, path in (("1gb", big), ("small", small)):
                bucket = f"bench-{key}-{time.time_ns()}"
                client.create_bucket(Bucket=bucket)
                ours[f"local_{key}"] = runwire_upload(gateway, str(tmp / f"store-{key}"), path, spool)
                shutil.rmtree(tmp / f"store-{key}", ignore_errors=True)
                theirs[f"local_{key}"] = mlflow_upload(tmp, (tmp / f"mlflow-{key}").as_uri(), path, mlflow_env)
                shutil.rmtree(tmp / f"mlflow-{key}", ignore_errors=True)
                ours[f"s3_{key}"] = runwire_upload(gateway, f"s3://{bucket}/runwire", path, spool, endpoint)
                theirs[f"s3_{key}"] = mlflow_upload(tmp, f"s3://{bucket}/mlflow", path, mlflow_env)
                print(f"{key}: runwire {ours}, mlflow {theirs}", flush=True)
            order = ["local_1gb", "s3_1gb", "local_small", "s3_small"]
            result["upload_mb_s"] = {k: round(ours[k], 1) for k in order}
            result["mlflow_upload_mb_s"] = {k: round(theirs[k], 1) for k in order}
            result["ratio_vs_mlflow"] = {k: round(ours[k] / theirs[k], 2) for k in order}
    except _Done:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
