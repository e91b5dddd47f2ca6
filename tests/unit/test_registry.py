"""Model registry: version numbers under concurrent registration by real processes, aliases,
stages with archiving, and the audit history answering "what was in production at time T"."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from runwire import registry
from runwire.registry import RegistryError

DIGEST = "a" * 64

# Each process waits for the start file, then registers as fast as it can.
_WORKER = """
import json, os, sys, time
from runwire.registry import open_registry
path, go, n, who = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reg = open_registry(path)
while not os.path.exists(go):
    time.sleep(0.001)
got = [reg.create_version("ranker", "%s", run_id=who, actor=who)["version"] for _ in range(n)]
print(json.dumps(got))
""" % DIGEST


def test_concurrent_registration_gives_unique_strictly_increasing_versions(tmp_path):
    path = tmp_path / "registry.db"
    registry.open_registry(path)  # schema in place before the race
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(go), "15", f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    time.sleep(0.5)  # let every process open the registry and spin on the start file
    go.write_text("")
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    everything = sorted(v for got in results for v in got)
    assert everything == list(range(1, 61))  # unique, no gaps
    for got in results:
        assert got == sorted(got) and len(set(got)) == len(got)  # increasing within each process
    reg = registry.open_registry(path)
    versions = reg.get_model("ranker")["versions"]
    # The number order is the commit order: creation times never go backwards.
    times = [v["created_at"] for v in versions]
    assert times == sorted(times)
    assert {v["version"]: v["run_id"] for v in versions} == {
        n: f"p{i}" for i, got in enumerate(results) for n in got}
    assert reg.get_model("ranker")["last_version"] == 60


def test_aliases_move_atomically_and_resolve(tmp_path):
    reg = registry.open_registry(tmp_path / "r.db")
    v1 = reg.create_version("m", DIGEST, run_id="r1")["version"]
    v2 = reg.create_version("m", "b" * 64, run_id="r2")["version"]
    reg.set_alias("m", "champion", v1, actor="ann", reason="first")
    assert reg.get_version("m", "champion")["run_id"] == "r1"
    t_between = time.time()
    time.sleep(0.01)
    reg.set_alias("m", "champion", v2, actor="bob", reason="better eval")
    assert reg.get_version("m", "champion")["version"] == v2
    assert reg.get_version("m", v1)["aliases"] == []
    assert reg.get_version("m", v2)["aliases"] == ["champion"]
    assert reg.alias_at("m", "champion", t_between) == v1
    assert reg.alias_at("m", "champion", time.time()) == v2
    moves = [(h["old"], h["new"], h["actor"], h["reason"]) for h in reg.history("m") if h["action"] == "alias"]
    assert moves == [(None, "1", "ann", "first"), ("1", "2", "bob", "better eval")]
    reg.delete_alias("m", "champion", actor="ann")
    assert reg.alias_at("m", "champion", time.time()) is None
    with pytest.raises(RegistryError, match="no version or alias"):
        reg.get_version("m", "champion")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("m", "candidate", 9)
    with pytest.raises(RegistryError, match="confused"):
        reg.set_alias("m", "3", v1)


def test_stage_history_answers_what_was_in_production(tmp_path):
    reg = registry.open_registry(tmp_path / "r.db")
    for i in range(3):
        reg.create_version("m", DIGEST, run_id=f"r{i}")
    assert reg.get_version("m", 1)["stage"] == "None"
    reg.transition("m", 1, "staging", actor="ann")
    reg.transition("m", 1, "Production", actor="ann", reason="launch")
    t1 = time.time()
    time.sleep(0.01)
    reg.transition("m", 2, "Production", archive_existing=True, actor="bob", reason="v2 wins A/B")
    t2 = time.time()
    time.sleep(0.01)
    reg.transition("m", 3, "Production", actor="cy")  # without archiving: two in production
    assert reg.versions_in_stage_at("m", "Production", t1) == [1]
    assert reg.versions_in_stage_at("m", "Production", t2) == [2]
    assert reg.versions_in_stage_at("m", "Production", time.time()) == [2, 3]
    assert reg.versions_in_stage_at("m", "Archived", t2) == [1]
    assert reg.versions_in_stage_at("m", "Production", 0) == []
    v1 = [(h["old"], h["new"], h["actor"]) for h in reg.history("m", 1) if h["action"] == "stage"]
    assert v1 == [(None, "None", v1[0][2]), ("None", "Staging", "ann"), ("Staging", "Production", "ann"),
                  ("Production", "Archived", "bob")]
    archived = [h for h in reg.history("m", 1) if h["new"] == "Archived"][0]
    assert "version 2 moved to Production" in archived["reason"] and "v2 wins A/B" in archived["reason"]
    with pytest.raises(RegistryError, match="not one of"):
        reg.transition("m", 1, "Prod")


def test_lineage_is_kept(tmp_path):
    reg = registry.open_registry(tmp_path / "r.db")
    tags = {"runwire.git.commit": "abc", "runwire.git.dirty": "true", "runwire.python.version": "3.11.7",
            "runwire.artifact.runwire/git.diff": json.dumps({"digest": "d" * 64}), "runwire.user": "x"}
    lineage = registry.lineage_from_tags(tags, {"wiki": {"digest": "e" * 64, "source": "/data", "context": "training"}})
    assert lineage == {"git.commit": "abc", "git.dirty": "true", "python.version": "3.11.7",
                       "git.diff.digest": "d" * 64,
                       "datasets": {"wiki": {"digest": "e" * 64, "source": "/data", "context": "training"}}}
    v = reg.create_version("m", DIGEST, run_id="r1", project="p", artifact="model", lineage=lineage)
    assert reg.get_version("m", v["version"])["lineage"] == lineage
    with pytest.raises(RegistryError, match="SHA-256"):
        reg.create_version("m", "short")
