"""runwire: stream every rank's metrics, params and GPU health from a training job.

    import runwire
    run = runwire.init(project="llm", config={"lr": 3e-4})
    for step in range(steps):
        runwire.log({"loss": loss, "tokens_per_s": tps}, step=step)
    runwire.finish()

MLflow-style calls work on the same run: `start_run()`, `log_metric`, `log_params`, `set_tag`,
`end_run`. `log()` never blocks and never raises into the training loop.
"""

from __future__ import annotations

import os
import sys

# Fork safety, decided here because it must happen before anything imports grpc.
#
# Training processes fork at any moment (DataLoader workers, multiprocessing "fork"), often right
# after init() while the sender thread is inside gRPC. grpcio's own fork support (its at-fork
# handlers, on by default) is what crashes then. Measured on this machine with a real gateway,
# 180 iterations of init + immediate double fork + 2,000 points, in 3 processes at once
# (/tmp-style script kept in tests/unit/test_emitter_fork.py):
#   - grpcio defaults:                     5 of 360 children and 1 of 3 parents crashed (SIGABRT in
#                                          ev_epoll1_linux.cc, SIGSEGV), 168 stderr lines, streams
#                                          torn ("Frame size 5263945 is larger than max frame size");
#   - GRPC_ENABLE_FORK_SUPPORT=0 before grpc is imported: 360 of 360 clean, 0 stderr lines,
#                                          every envelope acknowledged;
#   - the same variable set after `import grpc`: 3 of 3 parents SIGSEGV, 6 children crashed:
#                                          grpc reads it once, at import;
#   - a child creating a new channel after such a fork (fork support off): hangs. gRPC cannot be
#                                          used in a child of a process that used it.
# So: fork support off (unless the user set the variable), and a forked child never touches gRPC
# (run.py's at-fork handler). A sender process of its own (W&B's service) would also be safe but
# costs a Python + grpc start (~0.3 s here) per run and an extra hop per envelope; not needed.
# When grpc was imported before runwire with fork support on, nothing can turn it off: init()
# says so once, with the fix (see run.py).
GRPC_FORK_VARIABLE = "GRPC_ENABLE_FORK_SUPPORT"
grpc_imported_first = "grpc" in sys.modules and os.environ.get(GRPC_FORK_VARIABLE, "").lower() not in ("0", "false")
os.environ.setdefault(GRPC_FORK_VARIABLE, "0")

from typing import Any, Mapping  # noqa: E402

from runwire.run import Run  # noqa: E402

__all__ = ["Run", "init", "log", "finish", "flush", "start_run", "end_run", "log_metric", "log_metrics",
           "log_param", "log_params", "set_tag", "set_tags", "active_run", "log_artifact", "log_model",
           "log_dataset", "download_artifact", "register_model"]
__version__ = "0.1.0"

_active: Run | None = None


def init(project: str = "default", name: str | None = None, config: Mapping[str, Any] | None = None,
         tags: Mapping[str, str] | list[str] | None = None, run_id: str | None = None,
         resume: str | None = None, **settings) -> Run:
    """Start (or return the already active) run of this process.

    project: project name. name: display name (default: the run id). config: hyperparameters,
    stored as params (nested dicts become dotted keys). tags: dict or list of tags. run_id: all
    ranks of one launch share it; default RUNWIRE_RUN_ID, else derived from torchrun / SLURM / MPI
    (unique per launch). resume: None/"never" (default) starts a new run per launch; "allow"
    continues the run of a relaunched job when this host's spool knows it (or run_id is given),
    else starts one; "must" continues it or raises (RUNWIRE_RESUME).
    settings: any EmitterConfig field, e.g. gateway="host:50051", token=..., gpu=False
    (each also read from RUNWIRE_<NAME>).
    """
    global _active
    if _active is not None and not _active._finished:
        return _active
    _active = Run(project=project, name=name, config=config, tags=tags, run_id=run_id, resume=resume, **settings)
    return _active


def start_run(run_name: str | None = None, project: str = "default", params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, run_id: str | None = None, **settings) -> Run:
    """MLflow-style alias of init(); usable as a context manager."""
    return init(project=project, name=run_name, config=params, tags=tags, run_id=run_id, **settings)


def active_run() -> Run | None:
    return _active if _active is not None and not _active._finished else None


def _run() -> Run:
    if _active is None:
        raise RuntimeError("runwire: call runwire.init() first")
    return _active


def log(data: Mapping[str, Any], step: int | None = None) -> None:
    if _active is not None:
        _active.log(data, step)


def log_metric(key: str, value: float, step: int | None = None) -> None:
    if _active is not None:
        _active.log({key: value}, step)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    if _active is not None:
        _active.log(metrics, step)


def log_param(key: str, value: Any) -> None:
    _run().log_params({key: value})


def log_params(params: Mapping[str, Any]) -> None:
    _run().log_params(params)


def set_tag(key: str, value: Any) -> None:
    _run().set_tags({key: value})


def set_tags(tags: Mapping[str, Any]) -> None:
    _run().set_tags(tags)


def flush(timeout: float | None = None) -> bool:
    return _active.flush(timeout) if _active is not None else True


def finish(exit_code: int = 0, timeout: float | None = None) -> dict[str, float]:
    return _active.finish(exit_code, timeout) if _active is not None else {}


def end_run(status: str = "FINISHED") -> None:
    if _active is not None:
        _active.end_run(status)


# -- reproducibility: artifacts, datasets, model registry ---------------------------------------


def log_artifact(path, name: str | None = None, type: str = "", metadata: Mapping[str, Any] | None = None):
    """Upload a file or directory in the background; see Run.log_artifact."""
    return _run().log_artifact(path, name, type, metadata)


def log_model(path, name: str = "model", metadata: Mapping[str, Any] | None = None):
    return _run().log_model(path, name, metadata)


def log_dataset(name: str, source, digest: str | None = None, context: str = "", schema=None, profile=None,
                size_bytes: int | None = None) -> dict | None:
    return _run().log_dataset(name, source, digest, context, schema, profile, size_bytes)


def download_artifact(record, dest, store: str | None = None, endpoint_url: str | None = None):
    """Download an artifact (a record or a digest) into `dest`, verifying every file's SHA-256."""
    from runwire.artifacts import download_artifact as download

    return download(record, dest, store, endpoint_url)


def register_model(name: str, artifact: str = "model", run: Run | None = None, description: str = "",
                   reason: str = "", actor: str | None = None, registry: str | None = None,
                   timeout: float = 600.0) -> dict:
    """Register the run's model artifact (default: the one logged as "model") as a new version of
    `name` in the registry (RUNWIRE_REGISTRY); waits for its upload. Returns the version."""
    run = run or _run()
    if run._repro is None:
        raise RuntimeError("runwire: this run is disabled (enabled=False): nothing to register")
    return run._repro.register_model(name, artifact, description, reason, actor, registry, timeout)


def __getattr__(name: str):
    if name == "registry":  # `runwire.registry.open_registry()` without importing sqlite3 up front
        import importlib

        return importlib.import_module("runwire.registry")
    raise AttributeError(name)
