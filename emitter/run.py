"""The run object users hold: W&B-style (`log`, `config`, `summary`, `finish`) and MLflow-style
(`log_metric`, `log_params`, `set_tag`, `end_run`) calls on one object."""

from __future__ import annotations

import atexit
import logging
import operator
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from runwire import exporter as _exporter_module
from runwire import spool as _spool
from runwire.exporter import EmitterConfig, Exporter
from runwire import repro
from runwire.identity import layout_from_env, resolve_resume
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import MAX_KEY_LEN, MAX_VALUE_LEN, text_problem

log = logging.getLogger("runwire")

_live_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()
_MIN_STEP, _MAX_STEP = -(1 << 63), (1 << 63) - 1




def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted keys with text values (what params are stored as)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def within_limits(params: Mapping[str, str], what: str = "param") -> dict[str, str]:
    """Params or tags the gateway accepts: bad keys are dropped and long values cut, each with a
    warning, instead of losing the whole update."""
    out = {}
    for key, value in params.items():
        # The gateway's limits: one bad entry would reject the whole update.
        if text_problem(key, 1, MAX_KEY_LEN):
            log.warning("runwire: %s key %r dropped: keys are 1-%d printable characters", what, key[:80], MAX_KEY_LEN)
            continue
        if len(value) > MAX_VALUE_LEN:
            log.warning("runwire: %s %r cut to %d characters", what, key, MAX_VALUE_LEN)
            value = value[:MAX_VALUE_LEN]
        out[key] = value
    return out


class Config(dict):
    """run.config: a dict (and attribute access) whose updates are sent as params."""

    def __init__(self, run: "Run", initial: Mapping[str, Any]) -> None:
        super().__init__(initial)
        object.__setattr__(self, "_run", run)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._run.log_params({key: value})

    def update(self, other=(), **kwargs) -> None:
        merged = dict(other, **kwargs)
        super().update(merged)
        self._run.log_params(merged)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value) -> None:
        self[key] = value


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Run:
    """One process's view of a run. All ranks of a job share the run id."""

    def __init__(self, project: str = "default", name: str | None = None, config: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | list[str] | None = None, run_id: str | None = None,
                 resume: str | None = None, **settings) -> None:
        capture_settings, artifact_settings, settings = repro.split_settings(settings)  # reproducibility
        self.settings = EmitterConfig.from_settings(**settings)
        self.project = project
        self.layout = resolve_resume(layout_from_env(project=project, run_id=run_id), resume,
                                     self.settings.spool_dir or _spool.default_root(), project)
        self.id = self.layout.run_id
        self.name = name or self.id
        self.summary: dict[str, float] = {}
        self._step = 0
        self._finished = False
        self._lock = threading.Lock()
        self._inert = not self.settings.enabled
        self._exporter: Exporter | None = None
        self._sampler = None
        self._repro: repro.Repro | None = None
        tag_map = {t: "" for t in tags} if isinstance(tags, list) else dict(tags or {})
        self.config = Config(self, config or {})
        if self._inert:
            return
        self._exporter = Exporter(self.settings, self.layout, project)
        self._points = self._exporter.points
        self._counts = self._exporter.counts
        # A child forked from a process that used gRPC cannot use gRPC (see __init__.py): its
        # run goes to the spool only, for the parent's next start or `runwire sync`.
        send = not _forked_from_grpc
        if not send:
            log.warning("runwire: this process was forked from one that uses gRPC, which cannot be used here; "
                        "run %s is written to %s only. Deliver it with: runwire sync %s", self.id,
                        self._exporter.spool.dir, self._exporter.spool.dir)
        elif _fork_unsafe() and not _warned_fork[0]:
            _warned_fork[0] = True
            log.warning("runwire: grpc was imported before runwire with its fork support on; a fork (DataLoader "
                        "workers) while runwire sends can crash this process. Fix: import runwire before grpc "
                        "(or anything that imports it), or set GRPC_ENABLE_FORK_SUPPORT=0 in the environment.")
        if self.layout.rank == 0 and send:
            print(f"runwire: run {self.id} (project {project}, {self.layout.launcher}) -> gateway "
                  f"{self.settings.gateway}; spool {self._exporter.spool.dir.parent}", file=sys.stderr, flush=True)
        self._exporter.start(pb.RunStart(
            name=self.name, start_time_ns=time.time_ns(), git_commit=_git_commit(),
            params=within_limits(flatten(config or {})),
            tags=within_limits({str(k): str(v) for k, v in tag_map.items()}, "tag"),
            launcher=self.layout.launcher), send=send)
        if send:
            from runwire.sync import start_recovery

            start_recovery(self._exporter)
        if self.settings.gpu:
            self._start_gpu_sampler()
        # Reproducibility: metadata capture on its own thread, artifacts uploaded in the background.
        self._repro = repro.Repro(self, capture_settings, artifact_settings,
                                  self.settings.spool_dir or str(_spool.default_root()))
        _live_runs.add(self)

    # -- metrics: the hot path ----------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics. Never blocks and never raises: it stamps the time and appends to a
        bounded queue. step: defaults to one more than the last step logged."""
        if self._inert:
            return
        try:
            snapshot = dict(data)
            # The step goes into an int64 column: anything else would fail the whole batch later.
            step = self._step if step is None else operator.index(step)
            if not _MIN_STEP <= step <= _MAX_STEP:
                raise ValueError(f"step {step} is outside the int64 range")
        except Exception as exc:  # not a mapping, or a step that is not an integer
            if self.settings.strict:
                raise TypeError(f"runwire strict mode: bad log() call: {exc}") from None
            self._exporter.count_invalid_call(data, exc)
            return
        self._step = step + 1
        points = self._points
        counts = self._counts  # in the spool's mmap: survives a SIGKILL, for the loss report
        if len(points) == points.maxlen:
            self._exporter.dropped += 1
            try:
                counts[2] += len(points[0][2])  # spool.DROPPED: the oldest call is about to go
            except IndexError:  # the batcher took it meanwhile
                pass
        if self.settings.strict:
            _check_numbers(snapshot)
        points.append((time.time_ns(), step, snapshot))
        counts[0] += len(snapshot)  # spool.LOGGED
        counts[1] = step  # spool.LAST_STEP

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log(metrics, step=step)

    # -- params and tags -----------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self._inert and params:
            self._exporter.add_control(params=pb.Params(params=within_limits(flatten(params))))

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self._inert and tags:
            self._exporter.add_control(tags=pb.Tags(tags=within_limits({str(k): str(v) for k, v in tags.items()}, "tag")))

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    # -- reproducibility: artifacts and datasets (runwire.repro) ---------------------------
    def log_artifact(self, path, name: str | None = None, type: str = "", metadata: Mapping[str, Any] | None = None):
        """Upload a file or directory in the background (content-addressed by SHA-256); returns
        at once with an ArtifactRef (`.wait()` for the stored record). name: default the file name."""
        if self._repro is None or self._inert:  # disabled, or a forked child
            return None
        return self._repro.log_artifact(path, name, type, dict(metadata) if metadata else None)

    def log_model(self, path, name: str = "model", metadata: Mapping[str, Any] | None = None):
        """log_artifact(path, name, type="model"): what the model registry registers."""
        return self.log_artifact(path, name, "model", metadata)

    def log_dataset(self, name: str, source, digest: str | None = None, context: str = "", schema=None,
                    profile=None, size_bytes: int | None = None) -> dict | None:
        """Record a dataset: source URI or path, content digest (computed for a local file or
        directory when not given), context ("training", "eval"), optional schema and profile."""
        if self._repro is None or self._inert:  # disabled, or a forked child
            return None
        return self._repro.log_dataset(name, source, digest, context, schema, profile, size_bytes)

    # -- GPU -----------------------------------------------------------------------------
    def _start_gpu_sampler(self) -> None:
        from runwire import gpu, gpu_wire

        exporter = self._exporter

        def sink(samples):
            if samples:
                exporter.add_control(gpu=gpu_wire.encode_gpu_batch(samples))

        self._sampler = gpu.GpuSampler(sink, interval_s=self.settings.gpu_interval_s,
                                       local_rank=self.layout.local_rank, sample_all=self.settings.gpu_sample_all,
                                       nvml=_nvml_override())
        self._sampler.start()

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything logged so far is acknowledged (or `timeout`)."""
        if self._inert:
            return True
        return self._exporter.flush(self.settings.finish_timeout_s if timeout is None else timeout)

    def finish(self, exit_code: int = 0, timeout: float | None = None) -> dict[str, float]:
        """Flush, send the run end and stop. Waits at most `timeout` (default 30 s,
        RUNWIRE_FINISH_TIMEOUT_S); what is still unacknowledged stays in the spool."""
        with self._lock:
            if self._finished or self._inert:
                return dict(self.summary)
            self._finished = True
        if self._sampler is not None:
            self._sampler.shutdown()
        if self._repro is not None:
            # Captured metadata (tags) and uploads first: their records must precede the RunEnd,
            # so the run accepts tags until they are queued.
            self._repro.shutdown(timeout)
        with self._lock:
            self._inert = True  # log() after finish is a no-op
        end = pb.RunEnd(end_time_ns=time.time_ns(), exit_code=exit_code)
        for key, value in self.summary.items():
            try:
                end.summary[key] = float(value)
            except (TypeError, ValueError):
                pass
        result = self._exporter.close(end, self.settings.finish_timeout_s if timeout is None else timeout)
        if self._repro is not None:
            self._repro.closed(result.get("runwire.unacked", 1) == 0)  # artifact journals can go
        self.summary.update({k: v for k, v in result.items() if k.startswith("runwire.")})
        _live_runs.discard(self)
        return dict(self.summary)

    def end_run(self, status: str = "FINISHED") -> None:
        self.finish(0 if status == "FINISHED" else 1)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(0 if exc_type is None else 1)

    def _after_fork_in_child(self) -> None:
        # The parent's threads and gRPC channel do not exist here; logging in a forked child
        # is a documented no-op (the parent keeps its stream).
        self._inert = True
        self._finished = True
        if self._sampler is not None and hasattr(self._sampler, "_after_fork_in_child"):
            self._sampler._after_fork_in_child()


def _check_numbers(data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        try:
            float(value)
        except Exception:  # TypeError, ValueError, OverflowError, or whatever a __float__ raises
            raise TypeError(f"runwire strict mode: value of {key!r} is {type(value).__name__}, not a number") from None


_fake_nvml = None


def _nvml_override():
    """Tests and the demo can swap NVML for the fake via RUNWIRE_FAKE_NVML=<seed>."""
    global _fake_nvml
    seed = os.environ.get("RUNWIRE_FAKE_NVML")
    if not seed:
        return None
    if _fake_nvml is None:
        from runwire.simulated_nvml import FakeNvml

        _fake_nvml = FakeNvml.h100_node(n_gpus=int(os.environ.get("RUNWIRE_FAKE_GPUS", "2")), node_seed=int(seed))
    return _fake_nvml


def fake_nvml():
    """This process's simulated NVML (RUNWIRE_FAKE_NVML=<seed>), or None: the demo and tests
    inject anomalies into its GPUs (`fake_nvml().gpus[i].set_temperature(93)`)."""
    return _nvml_override()


_failed = False
_original_excepthook = sys.excepthook


def _excepthook(exc_type, exc, tb) -> None:
    global _failed
    _failed = True
    _original_excepthook(exc_type, exc, tb)


def _finish_all_at_exit() -> None:
    for run in list(_live_runs):
        run.finish(1 if _failed else 0)


_forked_from_grpc = False
_warned_fork = [False]


def _fork_unsafe() -> bool:
    import runwire

    return runwire.grpc_imported_first or os.environ.get(runwire.GRPC_FORK_VARIABLE, "0").lower() not in ("0", "false")


def _after_fork_in_child() -> None:
    global _forked_from_grpc
    _forked_from_grpc = _forked_from_grpc or _exporter_module.grpc_in_use
    for run in list(_live_runs):
        run._after_fork_in_child()
    _live_runs.clear()


sys.excepthook = _excepthook
atexit.register(_finish_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
