"""Who is logging: run id and rank layout from the launcher's environment (pure).

All ranks of one job must land in one run without talking to each other, so the run id is
derived from what every rank already shares: RUNWIRE_RUN_ID, else the launcher's job identity
(torchrun, SLURM, Open MPI / PMIx), else a fresh id for a single process.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    run_id: str
    launcher: str  # "env", "torchrun", "slurm", "mpi", "local"
    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    host: str


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


def run_id_from_env(env: Mapping[str, str], project: str) -> tuple[str, str]:
    """(run_id, launcher) for this process."""
    if env.get("RUNWIRE_RUN_ID"):
        return env["RUNWIRE_RUN_ID"], "env"
    # torchrun's default rendezvous id is the literal "none": not a job identity.
    if env.get("TORCHELASTIC_RUN_ID") and env["TORCHELASTIC_RUN_ID"] != "none":
        return _derived("torchrun", project, env["TORCHELASTIC_RUN_ID"], env.get("MASTER_ADDR", "")), "torchrun"
    # MPI before SLURM: under `mpirun` in an sbatch script, ranks on the first node inherit the
    # batch script's SLURM_* and the others those of the srun step that started their daemon, so
    # only the MPI job id is shared. Only job-wide values: PMIX_SERVER_URI* is the URI of this
    # node's PMIx server and differs between nodes.
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid"):
        if env.get(name):
            return _derived("mpi", project, env[name]), "mpi"
    if env.get("SLURM_JOB_ID"):
        job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"]) + "_" + env.get("SLURM_ARRAY_TASK_ID", "")
        return _derived("slurm", project, env.get("SLURM_CLUSTER_NAME", ""), job, env.get("SLURM_STEP_ID", "")), "slurm"
    if env.get("TORCHELASTIC_RUN_ID") == "none" and env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        # torchrun without --rdzv-id: the rendezvous endpoint plus the restart count is the best
        # shared identity there is; set RUNWIRE_RUN_ID or --rdzv-id for certainty.
        return _derived("torchrun", project, env["MASTER_ADDR"], env["MASTER_PORT"],
                        env.get("TORCHELASTIC_RESTART_COUNT", "0")), "torchrun"
    return uuid.uuid4().hex[:16], "local"


def layout_from_env(env: Mapping[str, str] | None = None, project: str = "", run_id: str | None = None) -> Layout:
    env = os.environ if env is None else env
    derived_id, launcher = run_id_from_env(env, project)
    if run_id:
        derived_id, launcher = run_id, "explicit"
    # Innermost launcher first: SLURM_* seen by an mpirun-started rank describe the batch script
    # or the daemon's srun step, not this process.
    rank = _first_int(env, ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"), 0)
    local_rank = _first_int(env, ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"), 0)
    world_size = _first_int(env, ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"), 1)
    node_rank = _first_int(env, ("GROUP_RANK", "NODE_RANK"), -1)
    if node_rank < 0 and "OMPI_COMM_WORLD_RANK" in env:
        # Open MPI exports no node index (OMPI_COMM_WORLD_NODE_RANK is a process index on the
        # node); with the default by-slot/ppr rank placement the node is rank // ranks-per-node.
        local_size = _first_int(env, ("OMPI_COMM_WORLD_LOCAL_SIZE",), 0)
        node_rank = rank // local_size if local_size > 0 else -1
    if node_rank < 0:
        node_rank = _first_int(env, ("SLURM_NODEID",), 0)
    host = env.get("RUNWIRE_HOST") or socket.gethostname()
    return Layout(derived_id, launcher, rank, local_rank, node_rank, world_size, host)
