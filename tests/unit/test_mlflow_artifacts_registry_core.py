"""The pure parts of the mlflow-artifacts proxy and the registry endpoints (no servers)."""

from __future__ import annotations

import pytest

from runwire.ingest.mlflow.artifacts import children, safe_path, split_run_path
from runwire.ingest.mlflow.protocol import MlflowError
from runwire.ingest.mlflow.registry import MlflowRegistry, latest_versions
from runwire.ingest.mlflow.service import record_matcher

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc/passwd", "a%2F..%2Fb", "%252E%252E/x", "a#b",
                                  "a\\b", "C:/x"])
def test_unsafe_paths_get_mlflows_invalid_path(path):
    with pytest.raises(MlflowError) as exc:
        safe_path(path)
    assert (exc.value.error_code, exc.value.status, exc.value.message) == ("INVALID_PARAMETER_VALUE", 400, "Invalid path")


def test_safe_paths_pass_decoded():
    assert safe_path("1/x/artifacts/a%20b.txt") == "1/x/artifacts/a b.txt"
    assert safe_path("a..b/c") == "a..b/c"


def test_run_paths_split_into_experiment_run_and_relative_path():
    assert split_run_path(f"7/{RUN}/artifacts/model/MLmodel") == ("7", RUN, "model/MLmodel")
    assert split_run_path(f"7/{RUN}/artifacts") == ("7", RUN, "")
    assert split_run_path(f"7/{RUN}/other/x") is None
    assert split_run_path("7/models/m-1/artifacts/x") is None


def test_children_lists_one_level_with_dirs_sizeless_and_sorted():
    files = {"a.txt": 5, "data/b.bin": 7, "data/sub/c": 1, "z": 0}
    assert children(files, "") == [{"path": "a.txt", "is_dir": False, "file_size": 5},
                                   {"path": "data", "is_dir": True}, {"path": "z", "is_dir": False, "file_size": 0}]
    assert children(files, "data") == [{"path": "b.bin", "is_dir": False, "file_size": 7},
                                       {"path": "sub", "is_dir": True}]
    assert children(files, "a.txt") == [] and children(files, "nothing") == []


def test_registry_searches_treat_a_missing_tag_as_different():
    rows = [{"name": "ranker", "tags": {}}, {"name": "prompt", "tags": {"mlflow.prompt.is_prompt": "true"}}]
    text = "name LIKE '%r%' AND tag.`mlflow.prompt.is_prompt` != 'true'"
    registry = record_matcher(text, {"name": lambda r: r["name"]}, "search_registered_models", absent_tag_differs=True)
    assert [r["name"] for r in rows if registry(r)] == ["ranker"]
    runs_like = record_matcher(text, {"name": lambda r: r["name"]}, "search_experiments")
    assert [r["name"] for r in rows if runs_like(r)] == []
    with pytest.raises(MlflowError):
        record_matcher("source_path = 'x'", {"name": lambda r: r["name"]}, "search_model_versions")


def test_latest_versions_per_stage():
    versions = [{"version": 1, "stage": "Production"}, {"version": 2, "stage": "Staging"},
                {"version": 3, "stage": "Production"}, {"version": 4, "stage": "None"}]
    assert [v["version"] for v in latest_versions(versions)] == [2, 3, 4]
    assert [v["version"] for v in latest_versions(versions, ["production"])] == [3]


def test_registry_endpoints_over_runwires_registry(tmp_path):
    from runwire import registry

    reg = registry.open_registry(tmp_path / "r.db")
    api = MlflowRegistry(service=None, registry=reg)
    api.create_registered_model({"name": "m", "tags": [{"key": "k", "value": "v"}]}, b"", None)
    with pytest.raises(MlflowError) as exc:
        api.create_registered_model({"name": "m"}, b"", None)
    assert (exc.value.error_code, exc.value.status) == ("RESOURCE_ALREADY_EXISTS", 400)
    made = api.create_model_version({"name": "m", "source": "s3://bucket/model"}, b"", None)["model_version"]
    assert (made["version"], made["source"], made["current_stage"], made["status"]) == ("1", "s3://bucket/model", "None", "READY")
    version = reg.get_version("m", 1)
    assert version["lineage"]["mlflow.digest_of_source"] is True and len(version["digest"]) == 64
    for bad in ({"name": "m", "alias": "latest", "version": "1"}, {"name": "m", "alias": "v3", "version": "1"}):
        with pytest.raises(MlflowError) as exc:
            api.set_alias(bad, b"", None)
        assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowError) as exc:
        api.get_model_version({"name": "m", "version": "2"}, b"", None)
    assert (exc.value.error_code, exc.value.status) == ("RESOURCE_DOES_NOT_EXIST", 404)
    api.set_alias({"name": "m", "alias": "champion", "version": "1"}, b"", None)
    got = api.get_registered_model({"name": "m"}, b"", None)["registered_model"]
    assert got["aliases"] == [{"alias": "champion", "version": "1"}] and got["tags"] == [{"key": "k", "value": "v"}]
    assert [h["action"] for h in reg.history("m")] == ["create_model", "tag", "create_version", "stage", "alias"]
