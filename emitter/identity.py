"""Who is logging: run id and rank layout from the launcher.

All ranks of one launch must land in one run, and a later launch in another run, without a
shared file system. The run id is RUNWIRE_RUN_ID (or init(run_id=)), else derived from two parts:

- the job: what names the job across relaunches (torchrun's --rdzv-id, the SLURM job + step and
  array task, the MPI job id, a multiprocessing parent);
- the launch: what all ranks of this launch share and a later launch does not.

    launcher      launch part
    torchrun      agreed through the store the ranks already share (the agent's TCPStore at
                  MASTER_ADDR:MASTER_PORT, static and c10d rendezvous): the first rank's
                  random nonce; it lives as long as the launch, so elastic restarts
                  (TORCHELASTIC_RESTART_COUNT) continue the run. Without torch: on one node,
                  the agent's temporary directory (TORCHELASTIC_ERROR_FILE) or its pid and
                  start time. MASTER_ADDR/MASTER_PORT are not a launch identity: a fixed
                  --master_port is the norm.
    SLURM         SLURM_RESTART_COUNT (a requeued job keeps its job id)
    MPI           the job id is per launch already
    multiprocessing  the parent process (pid + start time)

resume="allow"/"must" drops the launch part, so a relaunch of the same job continues its run
(see resolve_resume). The derivation is pure; reading /proc and the store are thin helpers.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    run_id: str
    launcher: str  # "env", "explicit", "torchrun", "slurm", "mpi", "multiprocessing", "local"
    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    host: str
    job_id: str = ""  # the run id without its launch part: what resume= continues


def _first_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return default


def _derived(launcher: str, *parts: str) -> str:
    """A stable id from the job identity; the hash keeps ids from different clusters apart."""
    digest = hashlib.sha256("\x1f".join((launcher, *parts)).encode()).hexdigest()[:12]
    return f"{launcher}-{digest}"


# -- what one launch shares (thin I/O) ------------------------------------------------------------

def process_key(pid: int) -> str:
    """A process's identity on this machine over time: boot id, pid and start time (a pid alone
    is reused)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot
    except (OSError, IndexError):
        return ""
    return f"{socket.gethostname()}:{boot}:{pid}:{start}"


def torchrun_node_key(env: Mapping[str, str]) -> str:
    """What the ranks of one torchrun agent (one node of one launch) share: the agent's
    temporary log directory, else the agent's process identity."""
    error_file = env.get("TORCHELASTIC_ERROR_FILE", "")
    if "/attempt_" in error_file:
        return error_file.split("/attempt_")[0]  # the attempt changes on restarts; the directory does not
    return process_key(os.getppid())


def store_nonce(env: Mapping[str, str], timeout_s: float = 10.0) -> str:
    """A nonce agreed by every rank of this torchrun launch through the agent's TCPStore (the one
    torch.distributed uses), or "" when torch or the store is not there. The first rank to ask
    sets it; the store lives as long as the launch, so restarted workers find the same one."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" or not env.get("MASTER_PORT"):
        return ""
    try:
        from datetime import timedelta

        import torch.distributed as dist  # torchrun implies torch; imported only here
    except Exception:
        return ""
    try:
        store = dist.TCPStore(env.get("MASTER_ADDR", "127.0.0.1"), int(env["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=timeout_s))
        return agree(store, uuid.uuid4().hex)
    except Exception:
        return ""


def agree(store, candidate: str, key: str = "runwire/launch_nonce") -> str:
    """The value every client of `store` gets: the first candidate set."""
    value = store.compare_set(key, "", candidate)
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the pure derivation ---------------------------------------------------------------------------

def run_id_from_env(env: Mapping[str, str], project: str, nonce: Callable[[Mapping[str, str]], str] = store_nonce,
                    node_key: Callable[[Mapping[str, str]], str] = torchrun_node_key,
                    parent_key: Callable[[], str] | None = None) -> tuple[str, str, str]:
    """(run_id, launcher, job_id) for this process. job_id names the job across relaunches."""
    if env.get("RUNWIRE_RUN_ID"):
        return env["RUNWIRE_RUN_ID"], "env", env["RUNWIRE_RUN_ID"]
    if env.get("TORCHELASTIC_RUN_ID"):
        # torchrun's default rendezvous id is the literal "none": not a job identity. A given
        # --rdzv-id is often reused (a fixed name, or $SLURM_JOB_ID across requeues).
        rdzv = env["TORCHELASTIC_RUN_ID"]
        job = _derived("torchrun", project, rdzv if rdzv != "none" else "", env.get("MASTER_ADDR", ""))
        launch = nonce(env)
        if not launch and _first_int(env, ("GROUP_WORLD_SIZE",), 1) == 1:
            launch = node_key(env)  # one node: every rank is a child of the same agent
        if not launch:
            # Several nodes and no store: nothing shared is launch-unique. The rendezvous id plus
            # the endpoint is the best there is; a relaunch with the same values continues the run.
            launch = env.get("MASTER_PORT", "")
        return _derived("torchrun", job, launch), "torchrun", job
    # MPI before SLURM: under `mpirun` in an sbatch script, ranks on the first node inherit the
    # batch script's SLURM_* and the others those of the srun step that started their daemon, so
    # only the MPI job id is shared. Only job-wide values: PMIX_SERVER_URI* is the URI of this
    # node's PMIx server and differs between nodes. An MPI job id is per launch already.
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid"):
        if env.get(name):
            job = _derived("mpi", project, env[name])
            return job, "mpi", job
    if env.get("SLURM_JOB_ID"):
        array_job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"]) + "_" + env.get("SLURM_ARRAY_TASK_ID", "")
        job = _derived("slurm", project, env.get("SLURM_CLUSTER_NAME", ""), array_job, env.get("SLURM_STEP_ID", ""))
        # A requeued job keeps its id; its restart count tells the launches apart.
        return _derived("slurm", job, env.get("SLURM_RESTART_COUNT", "0")), "slurm", job
    if parent_key is not None:
        parent = parent_key()
        if parent:
            job = _derived("multiprocessing", project, parent)
            return job, "multiprocessing", job
    fresh = uuid.uuid4().hex[:16]
    return fresh, "local", fresh


def multiprocessing_parent_key() -> str:
    """The parent's identity when this process is a multiprocessing child (spawn or fork)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return process_key(parent.pid) if parent is not None and parent.pid else ""


def _multiprocessing_rank() -> int:
    import multiprocessing

    identity = getattr(multiprocessing.current_process(), "_identity", ())
    return identity[0] - 1 if identity else 0


def layout_from_env(env: Mapping[str, str] | None = None, project: str = "", run_id: str | None = None,
                    nonce: Callable[[Mapping[str, str]], str] = store_nonce,
                    node_key: Callable[[Mapping[str, str]], str] = torchrun_node_key,
                    parent_key: Callable[[], str] | None = multiprocessing_parent_key) -> Layout:
    env = os.environ if env is None else env
    if run_id:
        derived_id, launcher, job = run_id, "explicit", run_id
    else:
        derived_id, launcher, job = run_id_from_env(env, project, nonce, node_key, parent_key)
    # Innermost launcher first: SLURM_* seen by an mpirun-started rank describe the batch script
    # or the daemon's srun step, not this process.
    default_rank = _multiprocessing_rank() if launcher == "multiprocessing" else 0
    rank = _first_int(env, ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"), default_rank)
    local_rank = _first_int(env, ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"),
                            default_rank)
    world_size = _first_int(env, ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"), max(1, rank + 1))
    node_rank = _first_int(env, ("GROUP_RANK", "NODE_RANK"), -1)
    if node_rank < 0 and "OMPI_COMM_WORLD_RANK" in env:
        # Open MPI exports no node index (OMPI_COMM_WORLD_NODE_RANK is a process index on the
        # node); with the default by-slot/ppr rank placement the node is rank // ranks-per-node.
        local_size = _first_int(env, ("OMPI_COMM_WORLD_LOCAL_SIZE",), 0)
        node_rank = rank // local_size if local_size > 0 else -1
    if node_rank < 0:
        node_rank = _first_int(env, ("SLURM_NODEID",), 0)
    host = env.get("RUNWIRE_HOST") or socket.gethostname()
    return Layout(derived_id, launcher, rank, local_rank, node_rank, world_size, host, job)


RESUME_MODES = ("never", "allow", "must")


class ResumeError(RuntimeError):
    pass


def resolve_resume(layout: Layout, resume: str | None, spool_root: Path | str, project: str) -> Layout:
    """Apply resume= (W&B's semantics) to a layout; RUNWIRE_RESUME when not given.

    never (default): this launch's own run. allow: the job's run, continued across relaunches
    (a requeued SLURM job, a torchrun relaunch with the same --rdzv-id, RUNWIRE_RUN_ID), created
    if new. must: as allow, but the run must be known: an explicit run id, or one this host has
    logged before (its spool remembers the runs it wrote)."""
    resume = resume or os.environ.get("RUNWIRE_RESUME") or "never"
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    if resume == "never" or layout.launcher in ("explicit", "env"):
        return layout  # a given run id is continued as it is
    resumed = replace(layout, run_id=layout.job_id)
    if resume == "must" and (layout.launcher == "local" or not known_run(spool_root, project, resumed.run_id)):
        raise ResumeError(f"resume='must': run {resumed.run_id} was never logged on this host; pass run_id= "
                          "(or RUNWIRE_RUN_ID) to continue a run started elsewhere")
    return resumed


def known_run(spool_root: Path | str, project: str, run_id: str) -> bool:
    from runwire.spool import run_marker

    return run_marker(spool_root, project, run_id).exists()
