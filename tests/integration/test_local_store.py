"""The local store every command finds by itself: a recorded stack, `runwire demo` logging into
it, `runwire runs ls` and the emitter finding it without flags, `runwire ui` refusing a port in use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest


@pytest.fixture
def recorded_stack(tmp_path, monkeypatch, clickhouse_url):
    """A local stack recorded in a private RUNWIRE_HOME (ClickHouse: the session's server, a
    fresh database; gateway on a free port)."""
    from runwire.deploy.local.stack import LocalStack
    from runwire.proto import localstack

    home = tmp_path / "store"
    monkeypatch.setenv("RUNWIRE_HOME", str(home))
    for name in ("RUNWIRE_CLICKHOUSE_URL", "RUNWIRE_GATEWAY", "RUNWIRE_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    database = f"store_{uuid.uuid4().hex[:10]}"
    stack = LocalStack(data_dir=str(home), clickhouse_url=clickhouse_url, database=database, record=True).start()
    try:
        assert localstack.read_record()["gateway"] == stack.gateway.address
        yield stack
    finally:
        stack.stop()
        assert localstack.read_record() is None  # the record goes with the stack
        import clickhouse_connect

        admin = clickhouse_connect.get_client(dsn=clickhouse_url)
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()


def test_demo_logs_into_the_running_stack_and_commands_find_it(recorded_stack, capsys):
    from runwire.deploy.local.demo import run_demo

    assert run_demo(duration_s=3, nodes=1, ranks_per_node=2) == 0
    out = capsys.readouterr().out
    assert f"using the running local stack (pid {os.getpid()}" in out
    assert "points stored" in out and "ranks reporting" in out and "alert(s)" in out  # the live line
    assert "Open it in the web UI:" in out and " ui\n" in out
    run_id = out.split("#/run/")[1].split()[0]

    env = dict(os.environ, RUNWIRE_CLICKHOUSE_DATABASE=recorded_stack.database)
    ls = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "runs", "ls"], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ls.returncode == 0, ls.stderr
    assert run_id in ls.stdout
    assert f"using the local stack's ClickHouse at {recorded_stack.clickhouse_url}" in ls.stderr

    # A training script with no gateway configured logs into the recorded stack.
    script = ("import runwire; r = runwire.init(project='demo', name='no-flags', run_id='no-flags-run', gpu=False); "
              "r.log({'loss': 1.0}, step=0); print(r.finish()['runwire.acked'])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and float(done.stdout.split()[-1]) >= 1, done.stderr
    assert recorded_stack.gateway.address in done.stderr  # it says which gateway it uses


def test_runwire_ui_refuses_a_port_in_use(recorded_stack):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "ui", "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert done.returncode == 2
    assert done.stderr.strip() == f"runwire ui: 127.0.0.1:{port} is already in use (pick another with --listen)"
