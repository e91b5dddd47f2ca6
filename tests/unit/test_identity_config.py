"""Run identity and rank layout from launcher environments; configuration building; retry policy.

All pure: environments are plain dicts, nothing is started.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from runwire.proto import retry
from runwire.proto.config import ConfigError, build, secret
from runwire.exporter import EmitterConfig
from runwire.identity import layout_from_env, run_id_from_env
from runwire.ingest.gateway import GatewayConfig

PROJECT = "llm"


def run_id(env: dict, project: str = PROJECT) -> str:
    return run_id_from_env(env, project)[0]


# -- run id ------------------------------------------------------------------------------


def test_run_id_from_runwire_run_id_wins_over_launchers():
    env = {"RUNWIRE_RUN_ID": "my-run", "TORCHELASTIC_RUN_ID": "job1", "SLURM_JOB_ID": "7", "PMIX_NAMESPACE": "ns"}
    assert run_id_from_env(env, PROJECT) == ("my-run", "env", "my-run")
    layout = layout_from_env(env, project=PROJECT)
    assert (layout.run_id, layout.launcher) == ("my-run", "env")


def test_explicit_run_id_argument_wins_over_env():
    layout = layout_from_env({"RUNWIRE_RUN_ID": "from-env"}, project=PROJECT, run_id="explicit-id")
    assert (layout.run_id, layout.launcher) == ("explicit-id", "explicit")


def torchrun_env(rank: int, local_rank: int, node: int, world: int = 16, job: str = "job-1234", **extra) -> dict:
    env = {"TORCHELASTIC_RUN_ID": job, "MASTER_ADDR": "node-00", "MASTER_PORT": "29500", "RANK": str(rank),
           "LOCAL_RANK": str(local_rank), "GROUP_RANK": str(node), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": "8", "TORCHELASTIC_RESTART_COUNT": "0"}
    env.update(extra)
    return env


def test_torchrun_ranks_share_the_run_id():
    rank0 = layout_from_env(torchrun_env(0, 0, 0), project=PROJECT)
    rank9 = layout_from_env(torchrun_env(9, 1, 1), project=PROJECT)
    assert rank0.run_id == rank9.run_id
    assert rank0.launcher == rank9.launcher == "torchrun"
    assert run_id(torchrun_env(0, 0, 0, job="job-9999")) != rank0.run_id
    # The project is part of the derivation: two projects never collide on one job.
    assert run_id(torchrun_env(0, 0, 0), project="other") != rank0.run_id


def test_torchrun_without_rdzv_id_is_told_apart_by_launch_not_by_master_endpoint():
    # Per-launch identity is tested in test_identity_launch.py; here: the endpoint alone is not it.
    a = torchrun_env(0, 0, 0, job="none", TORCHELASTIC_ERROR_FILE="/tmp/torchelastic_a/none_x/attempt_0/0/error.json")
    b = dict(a, TORCHELASTIC_ERROR_FILE="/tmp/torchelastic_b/none_y/attempt_0/0/error.json")
    id_a, launcher, _ = run_id_from_env(a, PROJECT)
    assert launcher == "torchrun"
    assert id_a != run_id(b)
    assert id_a != run_id(torchrun_env(0, 0, 0, job="job-1234"))


def slurm_env(procid: int, localid: int, nodeid: int, job: str = "812345", step: str = "0", **extra) -> dict:
    env = {"SLURM_JOB_ID": job, "SLURM_STEP_ID": step, "SLURM_PROCID": str(procid),
           "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid), "SLURM_NTASKS": "8",
           "SLURM_CLUSTER_NAME": "cluster-a", "SLURMD_NODENAME": f"gpu{nodeid:03d}"}
    env.update(extra)
    return env


def test_slurm_tasks_of_one_step_share_the_run_id():
    a = layout_from_env(slurm_env(0, 0, 0), project=PROJECT)
    b = layout_from_env(slurm_env(7, 3, 1), project=PROJECT)
    assert a.run_id == b.run_id and a.launcher == b.launcher == "slurm"
    assert run_id(slurm_env(0, 0, 0, job="812346")) != a.run_id
    assert run_id(slurm_env(0, 0, 0, step="1")) != a.run_id
    assert run_id(slurm_env(0, 0, 0, SLURM_CLUSTER_NAME="cluster-b")) != a.run_id


def test_slurm_array_tasks_get_their_own_run():
    # Array tasks have their own SLURM_JOB_ID but share SLURM_ARRAY_JOB_ID.
    t1 = slurm_env(0, 0, 0, job="900001", SLURM_ARRAY_JOB_ID="900000", SLURM_ARRAY_TASK_ID="1")
    t2 = slurm_env(0, 0, 0, job="900002", SLURM_ARRAY_JOB_ID="900000", SLURM_ARRAY_TASK_ID="2")
    t1_rank3 = slurm_env(3, 3, 0, job="900001", SLURM_ARRAY_JOB_ID="900000", SLURM_ARRAY_TASK_ID="1")
    assert run_id(t1) == run_id(t1_rank3)
    assert run_id(t1) != run_id(t2)


def ompi_env(rank: int, local_rank: int, node: int, namespace: str = "prterun-login1-4242@1", world: int = 16,
             local_size: int = 8, **extra) -> dict:
    """What Open MPI 5 (prterun) exports to rank `rank` running on node `node`."""
    env = {"PMIX_NAMESPACE": namespace, "PMIX_RANK": str(rank),
           # The URI of this node's PMIx server (its prted daemon): different on every node.
           "PMIX_SERVER_URI2": f"prterun-login1-4242@0.{node};tcp4://10.0.0.{node + 1}:{40000 + node}",
           "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
           "OMPI_COMM_WORLD_SIZE": str(world), "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size),
           # "relative rank of this process on this node looking across all jobs": not the node index.
           "OMPI_COMM_WORLD_NODE_RANK": str(local_rank)}
    env.update(extra)
    return env


def test_mpi_ranks_on_different_nodes_share_the_run_id():
    a = layout_from_env(ompi_env(0, 0, 0), project=PROJECT)
    b = layout_from_env(ompi_env(9, 1, 1), project=PROJECT)
    assert a.launcher == b.launcher == "mpi"
    assert a.run_id == b.run_id
    assert run_id(ompi_env(0, 0, 0, namespace="prterun-login1-5151@1")) != a.run_id


def test_open_mpi_4_job_id_is_shared():
    def env(rank: int, node: int, jobid: str = "3735879681") -> dict:
        return {"OMPI_MCA_ess_base_jobid": jobid, "OMPI_COMM_WORLD_RANK": str(rank),
                "OMPI_COMM_WORLD_SIZE": "4", "PMIX_SERVER_URI2": f"{int(jobid) - 1}.{node};tcp4://10.0.0.{node}:1"}

    assert run_id_from_env(env(0, 0), PROJECT)[1] == "mpi"
    assert run_id(env(0, 0)) == run_id(env(3, 1))
    assert run_id(env(0, 0)) != run_id(env(0, 0, jobid="3735879937"))


def test_mpirun_inside_slurm_batch_shares_one_run_id():
    """mpirun in an sbatch script: ranks on the first node inherit the batch environment, ranks
    on other nodes that of the srun step that started their daemon. The MPI job is the identity."""
    batch = {"SLURM_JOB_ID": "812345", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NTASKS": "16", "SLURM_CLUSTER_NAME": "cluster-a"}
    daemon_step = dict(batch, SLURM_STEP_ID="0", SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_NODEID="0")
    first_node = layout_from_env(dict(batch, **ompi_env(3, 3, 0)), project=PROJECT)
    second_node = layout_from_env(dict(daemon_step, **ompi_env(12, 4, 1)), project=PROJECT)
    assert first_node.run_id == second_node.run_id
    # The innermost launcher (mpirun) knows the ranks; SLURM's variables describe the batch
    # script or the daemon, not this process.
    assert (first_node.rank, first_node.local_rank, first_node.world_size) == (3, 3, 16)
    assert (second_node.rank, second_node.local_rank, second_node.world_size) == (12, 4, 16)


def test_no_launcher_gives_a_fresh_local_id():
    first, launcher, _ = run_id_from_env({}, PROJECT, parent_key=None)
    assert launcher == "local"
    assert first and first != run_id({})


# -- rank layout -------------------------------------------------------------------------


def test_layout_from_torchrun():
    layout = layout_from_env(torchrun_env(rank=13, local_rank=5, node=1, world=16, RUNWIRE_HOST="gpu-b"),
                             project=PROJECT)
    assert (layout.rank, layout.local_rank, layout.node_rank, layout.world_size) == (13, 5, 1, 16)
    assert layout.host == "gpu-b"


def test_layout_from_slurm():
    layout = layout_from_env(slurm_env(procid=6, localid=2, nodeid=1), project=PROJECT)
    assert (layout.rank, layout.local_rank, layout.node_rank, layout.world_size) == (6, 2, 1, 8)


def test_layout_from_open_mpi():
    layout = layout_from_env(ompi_env(rank=13, local_rank=5, node=1, world=16, local_size=8), project=PROJECT)
    assert (layout.rank, layout.local_rank, layout.world_size) == (13, 5, 16)
    assert layout.node_rank == 1  # not OMPI_COMM_WORLD_NODE_RANK, which is a per-node process index


def test_torchrun_under_slurm_uses_torchrun_ranks():
    env = dict(slurm_env(procid=1, localid=0, nodeid=1), **torchrun_env(rank=11, local_rank=3, node=1, world=16))
    layout = layout_from_env(env, project=PROJECT)
    assert layout.launcher == "torchrun"
    assert (layout.rank, layout.local_rank, layout.node_rank, layout.world_size) == (11, 3, 1, 16)


def test_layout_defaults_and_garbage_values():
    layout = layout_from_env({"RANK": "", "LOCAL_RANK": "x", "RUNWIRE_HOST": "h"}, project=PROJECT)
    assert (layout.rank, layout.local_rank, layout.node_rank, layout.world_size) == (0, 0, 0, 1)
    # A garbage value does not hide a valid lower-priority one.
    assert layout_from_env({"RANK": "abc", "SLURM_PROCID": "4"}).rank == 4


# -- configuration -----------------------------------------------------------------------


def test_precedence_arguments_then_environment_then_defaults():
    env = {"RUNWIRE_GATEWAY": "gw-env:1", "RUNWIRE_MAX_QUEUE": "77", "RUNWIRE_FLUSH_INTERVAL_S": "0.25",
           "RUNWIRE_GPU": "false", "RUNWIRE_UNRELATED": "ignored"}
    config = build(EmitterConfig, {"gateway": "gw-arg:2", "batch_points": None}, env=env)
    assert config.gateway == "gw-arg:2"             # argument beats environment
    assert config.max_queue == 77                   # environment, converted to int
    assert config.flush_interval_s == 0.25          # float
    assert config.gpu is False                      # bool
    assert config.batch_points == EmitterConfig.batch_points  # None means "not given": default
    assert build(EmitterConfig, {}, env={}) == EmitterConfig()


@pytest.mark.parametrize("raw,expected", [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)])
def test_boolean_environment_values(raw, expected):
    assert build(EmitterConfig, {}, env={"RUNWIRE_STRICT": raw}).strict is expected


def test_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("RUNWIRE_BATCH_POINTS", "123")
    assert EmitterConfig.from_settings().batch_points == 123
    assert EmitterConfig.from_settings(batch_points=5).batch_points == 5


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown setting 'gatway'"):
        build(EmitterConfig, {"gatway": "x:1"}, env={})


def test_all_errors_are_reported_together():
    env = {"RUNWIRE_MAX_QUEUE": "lots", "RUNWIRE_GPU": "maybe", "RUNWIRE_FLUSH_INTERVAL_S": "soon"}
    with pytest.raises(ConfigError) as info:
        build(EmitterConfig, {"gatway": "x:1", "colour": "red"}, env=env)
    text = str(info.value)
    for part in ("'gatway'", "'colour'", "RUNWIRE_MAX_QUEUE", "RUNWIRE_GPU", "RUNWIRE_FLUSH_INTERVAL_S"):
        assert part in text


def test_unknown_keys_and_range_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        build(EmitterConfig, {"gatway": "x:1", "flush_interval_s": 0}, env={"RUNWIRE_GPU": "maybe"})
    text = str(info.value)
    assert "'gatway'" in text and "RUNWIRE_GPU" in text and "flush_interval_s" in text


def test_range_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        build(EmitterConfig, {"flush_interval_s": 0, "gpu_interval_s": 0.01, "finish_timeout_s": -1}, env={})
    text = str(info.value)
    assert "flush_interval_s" in text and "gpu_interval_s" in text and "finish_timeout_s" in text


def test_secret_token_is_hidden_from_repr_and_errors():
    config = build(EmitterConfig, {"token": "s3cret-token"}, env={})
    assert config.token == "s3cret-token"
    assert "s3cret-token" not in repr(config) and "s3cret-token" not in str(config)
    # Other settings are bad while the token is set: the error never shows it.
    for overrides, env in (({"nope": 1}, {"RUNWIRE_TOKEN": "s3cret-token", "RUNWIRE_MAX_QUEUE": "lots"}),
                           ({"token": "s3cret-token", "nope": 1}, {"RUNWIRE_GPU": "maybe"}),
                           ({"token": "s3cret-token", "flush_interval_s": 0}, {})):
        with pytest.raises(ConfigError) as info:
            build(EmitterConfig, overrides, env=env)
        assert "s3cret-token" not in str(info.value)


def test_gateway_tokens_are_hidden_even_when_malformed():
    good = build(GatewayConfig, {"mode": "kafka", "kafka_bootstrap": "k:9092"},
                 env={"RUNWIRE_TOKENS": "proj=s3cret,other=hunter2"})
    assert good.tokens == {"proj": "s3cret", "other": "hunter2"}
    assert "s3cret" not in repr(good) and "hunter2" not in repr(good)
    with pytest.raises(ConfigError) as info:
        build(GatewayConfig, {"mode": "kafka", "kafka_bootstrap": "k:9092"}, env={"RUNWIRE_TOKENS": "s3cret-no-equals"})
    assert "RUNWIRE_TOKENS=***" in str(info.value)
    assert "s3cret" not in str(info.value)


@dataclasses.dataclass(frozen=True)
class _WithNumericSecret:
    pin: int = secret(0)
    api_key_enabled: bool = secret(False)
    name: str = "x"


@pytest.mark.parametrize("variable", ["RUNWIRE_PIN", "RUNWIRE_API_KEY_ENABLED"])
def test_secret_value_never_in_conversion_errors(variable):
    """int() and the bool parser quote the bad text in their messages; a secret must not leak that way."""
    with pytest.raises(ConfigError) as info:
        build(_WithNumericSecret, {}, env={variable: "hunter2"})
    assert variable in str(info.value)
    assert "hunter2" not in str(info.value)


# -- retry -------------------------------------------------------------------------------


def test_backoff_delays_stay_within_bounds():
    backoff = retry.Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0)
    for attempt in range(-1, 30):
        cap = min(2.0, 0.1 * 2.0 ** max(0, attempt))
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays), attempt
    # Full jitter actually spreads: not every delay is the cap.
    assert len({round(backoff.delay(10), 6) for _ in range(50)}) > 1
    assert max(backoff.delay(1000) for _ in range(100)) <= 2.0  # no overflow for huge attempts


def test_retry_sleep_returns_false_at_once_when_stopped():
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert retry.sleep(retry.Backoff(initial_s=30, max_s=30), 5, stop) is False
    assert time.monotonic() - started < 0.5


class _Fixed(retry.Backoff):
    def delay(self, attempt: int) -> float:
        return 30.0


@pytest.mark.timeout(30)
def test_retry_sleep_is_cut_short_by_stop_from_another_thread():
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    try:
        started = time.monotonic()
        assert retry.sleep(_Fixed(), 0, stop) is False
        assert time.monotonic() - started < 5
    finally:
        timer.cancel()
        timer.join(5)


def test_retry_sleep_respects_deadline():
    stop = threading.Event()
    assert retry.sleep(retry.Backoff(initial_s=30, max_s=30), 0, stop, deadline=time.monotonic() - 1) is False
    started = time.monotonic()
    assert retry.sleep(retry.Backoff(initial_s=0.01, max_s=0.01), 0, stop, deadline=time.monotonic() + 10) is True
    assert time.monotonic() - started < 1


def test_grpc_codes_are_classified_once_for_every_sender():
    from runwire.proto.contract import AUTH, REJECT, RETRY, classify_grpc

    assert classify_grpc("UNAVAILABLE") == RETRY and classify_grpc("RESOURCE_EXHAUSTED") == RETRY
    assert classify_grpc("DEADLINE_EXCEEDED") == RETRY
    assert classify_grpc("INVALID_ARGUMENT") == REJECT
    assert classify_grpc("UNAUTHENTICATED") == AUTH and classify_grpc("PERMISSION_DENIED") == AUTH


def test_retry_call_retries_only_what_the_classifier_allows():
    stop = threading.Event()
    fast = retry.Backoff(initial_s=0.001, max_s=0.001)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "ok"

    seen = []
    assert retry.call(flaky, lambda e: isinstance(e, ConnectionError), stop, fast,
                      on_retry=lambda e, n: seen.append(n)) == "ok"
    assert len(attempts) == 3 and seen == [0, 1]

    def bad():
        raise ValueError("bad data")

    with pytest.raises(ValueError):
        retry.call(bad, lambda e: isinstance(e, ConnectionError), stop, fast)
    with pytest.raises(ConnectionError):
        retry.call(lambda: (_ for _ in ()).throw(ConnectionError("x")),
                   lambda e: True, stop, fast, max_attempts=4)
    stop.set()
    with pytest.raises(ConnectionError):  # shutdown ends the retries with the last error
        retry.call(lambda: (_ for _ in ()).throw(ConnectionError("x")), lambda e: True, stop, fast)


def test_a_mistyped_variable_is_named_with_the_setting_it_resembles(caplog):
    from runwire.exporter import EmitterConfig

    with caplog.at_level("WARNING", logger="runwire"):
        config = build(EmitterConfig, {}, env={"RUNWIRE_GATEWY": "10.0.0.1:50051", "RUNWIRE_RUN_ID": "r",
                                               "RUNWIRE_FLUSH_INTERVAL_S": "1"})
    assert config.gateway == "" and config.flush_interval_s == 1.0  # unset: from_settings() picks the default
    warnings = [r.getMessage() for r in caplog.records]
    assert any("RUNWIRE_GATEWY" in m and "RUNWIRE_GATEWAY" in m for m in warnings), warnings
    assert not any("RUNWIRE_RUN_ID" in m or "RUNWIRE_FLUSH_INTERVAL_S" in m for m in warnings)
