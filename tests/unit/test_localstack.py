"""Where the local stack lives (runwire.proto.localstack) and who uses it: the storage commands'
URL resolution and the emitter's default gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runwire.proto import localstack


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNWIRE_HOME", str(tmp_path / "store"))
    monkeypatch.delenv("RUNWIRE_CLICKHOUSE_URL", raising=False)
    monkeypatch.delenv("RUNWIRE_GATEWAY", raising=False)
    return tmp_path / "store"


def test_home_order(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNWIRE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert localstack.home() == tmp_path / "xdg" / "runwire"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert localstack.home() == tmp_path / "user" / ".local" / "share" / "runwire"
    monkeypatch.setenv("RUNWIRE_HOME", str(tmp_path / "mine"))
    assert localstack.home() == tmp_path / "mine"


def test_record_round_trip_and_stale_records(home):
    assert localstack.read_record() is None
    path = localstack.write_record(gateway="127.0.0.1:5", clickhouse_url="http://127.0.0.1:6", database="runwire")
    record = localstack.read_record()
    assert record["pid"] == os.getpid() and record["gateway"] == "127.0.0.1:5" and record["path"] == str(path)
    # A record left by a process that is gone is ignored.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "gateway": "127.0.0.1:5"}))
    assert localstack.read_record() is None
    path.write_text("{not json")
    assert localstack.read_record() is None
    # clear_record removes only this process's own record.
    localstack.write_record(gateway="x")
    localstack.clear_record()
    assert not path.exists()


def test_commands_find_the_local_stack(home, monkeypatch, capsys):
    import argparse

    from runwire.proto.config import UsageError
    from runwire.storage.client import clickhouse_target

    def target(url=None):
        return clickhouse_target(argparse.Namespace(clickhouse_url=url, database=None)).clickhouse_url

    with pytest.raises(UsageError, match="runwire up"):
        target()
    (home / "clickhouse").mkdir(parents=True)
    assert target() == f"chdb://{home / 'clickhouse'}"
    assert "local store" in capsys.readouterr().err
    localstack.write_record(clickhouse_url="http://127.0.0.1:7", gateway="127.0.0.1:8")
    assert target() == "http://127.0.0.1:7"
    err = capsys.readouterr().err
    assert "using the local stack's ClickHouse at http://127.0.0.1:7" in err and "stack.json" in err
    monkeypatch.setenv("RUNWIRE_CLICKHOUSE_URL", "http://env:1")
    assert target() == "http://env:1"
    assert target("http://given:2") == "http://given:2"
    assert capsys.readouterr().err == ""  # named: nothing to announce


def test_emitter_defaults_to_the_local_stack_gateway(home, monkeypatch, capsys):
    from runwire.exporter import EmitterConfig

    assert EmitterConfig.from_settings().gateway == f"127.0.0.1:{localstack.DEFAULT_GATEWAY_PORT}"
    localstack.write_record(gateway="127.0.0.1:50999", clickhouse_url="http://127.0.0.1:7")
    assert EmitterConfig.from_settings().gateway == "127.0.0.1:50999"
    assert "local stack's gateway 127.0.0.1:50999" in capsys.readouterr().err
    assert EmitterConfig.from_settings(gateway="10.0.0.1:1").gateway == "10.0.0.1:1"
    monkeypatch.setenv("RUNWIRE_GATEWAY", "10.0.0.2:2")
    assert EmitterConfig.from_settings().gateway == "10.0.0.2:2"


def test_tokens_parse_and_match():
    from runwire.proto.auth import bearer_token, parse_tokens, projects_for

    tokens = parse_tokens("llm=s1, vision = s2,,shared=s1")
    assert tokens == {"llm": "s1", "vision": "s2", "shared": "s1"}
    assert projects_for(tokens, "s1") == {"llm", "shared"} and projects_for(tokens, "") == set()
    assert projects_for(tokens, "nope") == set()
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("Basic abc") == "" and bearer_token(None) == ""
    with pytest.raises(ValueError) as err:
        parse_tokens("llm:s1")
    assert "s1" not in str(err.value)
