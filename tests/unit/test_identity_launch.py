"""One run per launch, agreed by every rank of it, for each launcher; resume= continues a run
across relaunches only when asked. Environments are dicts; the torchrun store and the
multiprocessing parent are real."""

from __future__ import annotations

import multiprocessing
import socket
import threading

import pytest

from runwire.identity import (ResumeError, agree, layout_from_env, process_key, resolve_resume, run_id_from_env,
                              store_nonce)
from runwire.spool import run_marker

PROJECT = "llm"


def torchrun(rank: int, local_rank: int, node: int, agent_dir: str, attempt: int = 0, rdzv: str = "none",
             nodes: int = 1, **extra) -> dict:
    """What torchrun (static rendezvous, fixed --master_port) exports to one worker."""
    env = {"TORCHELASTIC_RUN_ID": rdzv, "MASTER_ADDR": "node-00", "MASTER_PORT": "29511", "RANK": str(rank),
           "LOCAL_RANK": str(local_rank), "GROUP_RANK": str(node), "GROUP_WORLD_SIZE": str(nodes),
           "WORLD_SIZE": str(2 * nodes), "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": str(attempt),
           "TORCHELASTIC_USE_AGENT_STORE": "True",
           "TORCHELASTIC_ERROR_FILE": f"/tmp/{agent_dir}/{rdzv}_abc/attempt_{attempt}/{local_rank}/error.json"}
    env.update(extra)
    return env


def no_store(env) -> str:
    return ""


def ids(*envs, nonce=no_store) -> list[str]:
    return [run_id_from_env(env, PROJECT, nonce=nonce, parent_key=None)[0] for env in envs]


def test_two_torchrun_launches_with_the_same_master_port_are_two_runs():
    first = ids(torchrun(0, 0, 0, "torchelastic_k1"), torchrun(1, 1, 0, "torchelastic_k1"))
    second = ids(torchrun(0, 0, 0, "torchelastic_q7"), torchrun(1, 1, 0, "torchelastic_q7"))
    assert first[0] == first[1]  # the ranks of one launch agree
    assert second[0] == second[1]
    assert first[0] != second[0]  # same endpoint, same "none" rendezvous id: still another launch


def test_a_torchrun_elastic_restart_continues_the_run():
    (before,) = ids(torchrun(1, 1, 0, "torchelastic_k1", attempt=0))
    (after,) = ids(torchrun(1, 1, 0, "torchelastic_k1", attempt=2))
    assert before == after


def test_torchrun_with_a_reused_rdzv_id_is_still_one_run_per_launch():
    a = ids(torchrun(0, 0, 0, "torchelastic_a", rdzv="nightly"), torchrun(1, 1, 0, "torchelastic_a", rdzv="nightly"))
    b = ids(torchrun(0, 0, 0, "torchelastic_b", rdzv="nightly"))
    assert a[0] == a[1] != b[0]
    # ... and resume="allow" continues it: the job part is the rendezvous id.
    job_a = run_id_from_env(torchrun(0, 0, 0, "torchelastic_a", rdzv="nightly"), PROJECT, nonce=no_store)[2]
    job_b = run_id_from_env(torchrun(0, 0, 0, "torchelastic_b", rdzv="nightly"), PROJECT, nonce=no_store)[2]
    assert job_a == job_b


def test_multi_node_torchrun_agrees_through_the_store_nonce():
    # Each node's agent has its own directory: only the store is shared across nodes.
    launch_1 = ids(torchrun(0, 0, 0, "node0_dir", nodes=2), torchrun(3, 1, 1, "node1_dir", nodes=2),
                   nonce=lambda env: "nonce-launch-1")
    launch_2 = ids(torchrun(0, 0, 0, "node0_dir2", nodes=2), nonce=lambda env: "nonce-launch-2")
    assert launch_1[0] == launch_1[1] != launch_2[0]


def test_store_nonce_through_a_real_tcpstore_is_shared_by_ranks_and_new_per_launch():
    import torch.distributed as dist  # in the dev extra: a missing torch fails, never skips
    from datetime import timedelta

    def launch() -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        master = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
        env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(store_nonce(env, timeout_s=10))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        del master
        return results

    first, second = launch(), launch()
    assert len(first) == 4 and len(set(first)) == 1 and first[0]
    assert len(set(second)) == 1 and second[0] != first[0]


def test_agree_keeps_the_first_value():
    class Store(dict):
        def compare_set(self, key, expected, desired):
            if self.get(key, "") == expected:
                self[key] = desired.encode()
            return self[key]

    store = Store()
    assert agree(store, "a") == "a" and agree(store, "b") == "a"


def slurm(procid: int, restart: int = 0, **extra) -> dict:
    env = {"SLURM_JOB_ID": "812345", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid), "SLURM_NTASKS": "8",
           "SLURM_CLUSTER_NAME": "c", "SLURM_RESTART_COUNT": str(restart)}
    env.update(extra)
    return env


def test_a_requeued_slurm_job_is_a_new_run_unless_resumed(tmp_path):
    first, requeued = ids(slurm(0), slurm(0, restart=1))
    assert first == ids(slurm(5))[0]
    assert first != requeued
    layout = layout_from_env(slurm(0, restart=1), project=PROJECT, parent_key=None)
    resumed = resolve_resume(layout, "allow", tmp_path, PROJECT)
    assert resumed.run_id == resolve_resume(layout_from_env(slurm(3), project=PROJECT, parent_key=None), "allow",
                                            tmp_path, PROJECT).run_id
    assert resumed.run_id != layout.run_id


def test_slurm_array_tasks_and_steps_are_separate_runs():
    t1, t2 = ids(slurm(0, SLURM_ARRAY_JOB_ID="9", SLURM_ARRAY_TASK_ID="1"),
                 slurm(0, SLURM_ARRAY_JOB_ID="9", SLURM_ARRAY_TASK_ID="2"))
    step1, = ids(slurm(0, SLURM_STEP_ID="1"))
    assert len({t1, t2, step1, ids(slurm(0))[0]}) == 4


def test_resume_semantics(tmp_path):
    layout = layout_from_env(slurm(0, restart=2), project=PROJECT, parent_key=None)
    assert resolve_resume(layout, None, tmp_path, PROJECT) == layout  # never is the default
    assert resolve_resume(layout, "never", tmp_path, PROJECT) == layout
    with pytest.raises(ResumeError, match="never logged on this host"):
        resolve_resume(layout, "must", tmp_path, PROJECT)
    run_marker(tmp_path, PROJECT, layout.job_id).parent.mkdir(parents=True)
    run_marker(tmp_path, PROJECT, layout.job_id).touch()
    assert resolve_resume(layout, "must", tmp_path, PROJECT).run_id == layout.job_id
    explicit = layout_from_env({}, project=PROJECT, run_id="mine")
    assert resolve_resume(explicit, "must", tmp_path, PROJECT).run_id == "mine"
    with pytest.raises(ValueError, match="resume must be one of"):
        resolve_resume(layout, "sometimes", tmp_path, PROJECT)


def _child_layout(queue) -> None:
    layout = layout_from_env({}, project=PROJECT)
    queue.put((layout.run_id, layout.launcher, layout.rank))


def test_multiprocessing_spawn_children_share_their_parents_run():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child_layout, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert {launcher for _, launcher, _ in got} == {"multiprocessing"}
    assert len({run for run, _, _ in got}) == 1
    assert len({rank for _, _, rank in got}) == 2
    # A plain script (no launcher, no multiprocessing parent) is a run of its own.
    assert layout_from_env({}, project=PROJECT).launcher == "local"


def test_process_key_tells_a_reused_pid_apart():
    import os

    assert process_key(os.getpid()) and process_key(os.getpid()) == process_key(os.getpid())
    assert process_key(os.getppid()) != process_key(os.getpid())
