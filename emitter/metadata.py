"""Run metadata captured at init, off the training thread: git state and diff, Python, platform,
installed packages, CUDA driver / NVML versions and GPU inventory, command line (secrets
redacted), user, host, working directory.

Everything travels as tags under the reserved prefix `runwire.` (e.g. `runwire.git.branch`,
`runwire.user`), so it reaches storage through the pipeline like every other tag and filters
find it (`tags.runwire.git.branch = 'main'`). What does not fit a tag value (the uncommitted
diff, the package list) is logged as an artifact under `runwire/` and the tag holds its digest.

Rank 0 captures the job-wide facts; local rank 0 of every other node captures the facts that
may differ per host (driver, GPUs) under `runwire.hosts.<host>.`.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from runwire.proto.config import build

log = logging.getLogger("runwire")

PREFIX = "runwire."
HOST_PREFIX = "runwire.hosts."


@dataclass(frozen=True)
class CaptureConfig:
    """What init() captures. Each reads RUNWIRE_<NAME> when not passed to init()."""

    capture: bool = True             # RUNWIRE_CAPTURE: False turns all capture off
    capture_git: bool = True         # commit, branch, remote (credentials stripped), dirty flag
    capture_diff: bool = True        # the uncommitted diff, stored as the artifact runwire/git.diff
    capture_diff_max_bytes: int = 4 << 20  # a longer diff is cut (and marked truncated)
    capture_packages: bool = True    # installed distributions (artifact runwire/packages.txt)
    capture_gpu: bool = True         # driver, CUDA and NVML versions, GPU inventory
    capture_argv: bool = True        # command line, values of secret-looking arguments redacted
    capture_user: bool = True        # user, hostname, working directory
    capture_timeout_s: float = 10.0  # git calls are cut off after this

    def problems(self) -> list[str]:
        out = []
        if self.capture_diff_max_bytes < 0:
            out.append("capture_diff_max_bytes must be >= 0")
        if self.capture_timeout_s <= 0:
            out.append("capture_timeout_s must be > 0")
        return out


def split_settings(settings: dict) -> tuple[dict, dict]:
    """(the settings of `cls`, the rest): init(**settings) carries several components' settings."""
    return _split(CaptureConfig, settings)


def _split(cls, settings: dict) -> tuple[dict, dict]:
    names = set(cls.__dataclass_fields__)
    mine = {k: v for k, v in settings.items() if k in names}
    return mine, {k: v for k, v in settings.items() if k not in names}


# -- redaction (pure) ------------------------------------------------------------------------

# An argument whose name says it holds a secret: --token=x, --api-key x, PASSWORD=x.
_SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api[-_]?key|access[-_]?key|credential|auth|private[-_]?key)",
                          re.IGNORECASE)
# Values that are secrets whatever their name: URLs with a password, well-known token shapes.
_SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abpr]-[A-Za-z0-9-]{10,}"
                           r"|hf_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$")
REDACTED = "***"


def strip_credentials(url: str) -> str:
    """A URL without user info (https://user:token@host/x -> https://host/x); scp-style git
    remotes (git@host:org/repo) have no secret and stay as they are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the values of secret-looking arguments replaced by ***."""
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        name, sep, value = arg.partition("=")
        if sep and _SECRET_NAME.search(name):
            out.append(f"{name}={REDACTED}")
        elif arg.startswith("-") and not sep and _SECRET_NAME.search(arg):
            out.append(arg)
            redact_next = True  # --token VALUE
        elif _SECRET_VALUE.match(value if sep else arg):
            out.append(f"{name}={REDACTED}" if sep else REDACTED)
        elif "://" in (value if sep else arg):
            out.append(f"{name}={strip_credentials(value)}" if sep else strip_credentials(arg))
        else:
            out.append(arg)
    return out


# -- capture (thin I/O) ----------------------------------------------------------------------


def _git(args: list[str], cwd: str, timeout: float) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else None


def git_state(cwd: str, config: CaptureConfig) -> tuple[dict[str, str], bytes | None]:
    """(tags, uncommitted diff or None) of the repository around `cwd`; empty outside one."""
    timeout = config.capture_timeout_s
    top = _git(["rev-parse", "--show-toplevel"], cwd, timeout)
    if not top:
        return {}, None
    tags = {"git.commit": _git(["rev-parse", "HEAD"], cwd, timeout) or "",
            "git.branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd, timeout) or "",
            "git.root": top}
    remote = _git(["config", "--get", "remote.origin.url"], cwd, timeout)
    if remote:
        tags["git.remote"] = strip_credentials(remote)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd, timeout)
    dirty = bool(status)
    tags["git.dirty"] = "true" if dirty else "false"
    diff = None
    if dirty and config.capture_diff:
        try:
            done = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=cwd, capture_output=True, timeout=timeout,
                                  check=False)
            diff = done.stdout if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            diff = None
        if diff is not None and len(diff) > config.capture_diff_max_bytes:
            tags["git.diff_truncated_bytes"] = str(len(diff))
            diff = diff[:config.capture_diff_max_bytes]
    return {PREFIX + k: v for k, v in tags.items()}, diff


def packages() -> list[tuple[str, str]]:
    """(name, version) of every installed distribution on sys.path, sorted by name; the first
    found wins, as for imports. Read from the `name-version.dist-info` folder names: reading every
    METADATA file (importlib.metadata) takes ~0.5 s with a few hundred packages, and finish()
    waits for the capture. Only a folder without a version in its name (egg-info) is read."""
    found: dict[str, tuple[str, str]] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            stem, _, kind = folder.rpartition(".")
            if kind not in ("dist-info", "egg-info"):
                continue
            name, _, version = stem.partition("-")
            if not version:
                from importlib import metadata as importlib_metadata  # 14 ms to import: only when needed

                dist = importlib_metadata.PathDistribution(Path(entry or ".", folder))
                name, version = (dist.metadata or {}).get("Name") or name, dist.version or ""
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), (name, version.split("-")[0]))
    return [found[k] for k in sorted(found)]


def gpu_facts(nvml=None) -> dict[str, str]:
    """Driver, CUDA and NVML versions and the GPU inventory, or {} without NVML."""
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py, a core dependency
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver: nothing to record
        return {}
    out: dict[str, str] = {}
    try:
        for key, fn in (("driver", "nvmlSystemGetDriverVersion"), ("nvml", "nvmlSystemGetNVMLVersion")):
            try:
                out[key] = _text(getattr(nvml, fn)())
            except Exception:  # noqa: BLE001
                pass
        try:
            version = nvml.nvmlSystemGetCudaDriverVersion()
            out["cuda"] = f"{version // 1000}.{version % 1000 // 10}"
        except Exception:  # noqa: BLE001
            pass
        gpus = []
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).total
                gpus.append(f"{i}:{_text(nvml.nvmlDeviceGetName(handle))}:{_text(nvml.nvmlDeviceGetUUID(handle))}"
                            f":{memory // (1 << 20)}MiB")
        except Exception:  # noqa: BLE001
            pass
        out["gpu_count"] = str(len(gpus))
        if gpus:
            out["gpus"] = ", ".join(gpus)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_runtime() -> str | None:
    """The CUDA runtime torch was built with, if torch is already imported (never imports it:
    importing torch takes seconds)."""
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None


@dataclass
class Captured:
    tags: dict[str, str]
    files: dict[str, bytes]  # artifact name -> content (git.diff, packages.txt)


def capture(config: CaptureConfig, job_wide: bool, host: str, cwd: str | None = None, argv: list[str] | None = None,
            nvml=None) -> Captured:
    """Everything `config` asks for. job_wide: rank 0 (job facts and its host's facts); else
    only this host's facts, under runwire.hosts.<host>."""
    started = time.perf_counter()
    cwd = cwd or os.getcwd()
    tags: dict[str, str] = {}
    files: dict[str, bytes] = {}
    host_tags: dict[str, str] = {}
    if config.capture_gpu:
        host_tags.update(gpu_facts(nvml))
    if not job_wide:
        return Captured({f"{HOST_PREFIX}{host}.{k}": v for k, v in host_tags.items()}, {})
    tags.update({f"{PREFIX}{k}": v for k, v in host_tags.items()})
    if config.capture_git:
        git_tags, diff = git_state(cwd, config)
        tags.update(git_tags)
        if diff is not None:
            files["git.diff"] = diff
    tags[PREFIX + "python.version"] = platform.python_version()
    tags[PREFIX + "python.implementation"] = platform.python_implementation()
    tags[PREFIX + "python.executable"] = sys.executable
    tags[PREFIX + "platform"] = platform.platform()
    runtime = cuda_runtime()
    if runtime:
        tags[PREFIX + "cuda.runtime"] = runtime
    if config.capture_user:
        try:
            tags[PREFIX + "user"] = getpass.getuser()
        except Exception:  # noqa: BLE001 - no passwd entry in some containers
            tags[PREFIX + "user"] = str(os.getuid())
        tags[PREFIX + "hostname"] = socket.gethostname()
        tags[PREFIX + "cwd"] = cwd
    if config.capture_argv:
        tags[PREFIX + "argv"] = " ".join(_quote(a) for a in redact_argv(list(sys.argv if argv is None else argv)))
    if config.capture_packages:
        found = packages()
        files["packages.txt"] = "".join(f"{name}=={version}\n" for name, version in found).encode()
        tags[PREFIX + "packages.count"] = str(len(found))
    tags[PREFIX + "capture_ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
    return Captured(tags, files)


def _quote(arg: str) -> str:
    return arg if arg and not any(c.isspace() or c in "'\"" for c in arg) else repr(arg)


class CaptureThread(threading.Thread):
    """Runs capture() once, then hands the result to `sink(Captured)`; never raises."""

    def __init__(self, config: CaptureConfig, job_wide: bool, host: str, sink: Callable[[Captured], None],
                 nvml=None) -> None:
        super().__init__(name="runwire-metadata", daemon=True)
        self.config, self.job_wide, self.host, self.sink, self.nvml = config, job_wide, host, sink, nvml
        # Read now: the training script may chdir or edit sys.argv right after init().
        self.cwd, self.argv = os.getcwd(), list(sys.argv)
        self.result: Captured | None = None

    def run(self) -> None:
        try:
            self.result = capture(self.config, self.job_wide, self.host, self.cwd, self.argv, self.nvml)
            self.sink(self.result)
        except Exception as exc:  # noqa: BLE001 - metadata must never break a run
            log.warning("runwire: metadata capture failed: %s", exc)


def build_config(overrides: dict) -> CaptureConfig:
    return build(CaptureConfig, overrides)
