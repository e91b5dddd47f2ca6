"""The real `mlflow` client's artifact and model-registry calls against runwire's MLflow API (real
Kafka, real ClickHouse, runwire's artifact store and registry), and the same calls against a real
`mlflow server --serve-artifacts` for parity."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_helpers import mlflow_reference_server, runwire_mlflow, tracking_uri, wait_for

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def rw(kafka_bootstrap, clickhouse_url, tmp_path_factory):
    data = tmp_path_factory.mktemp("rwa")
    with runwire_mlflow(kafka_bootstrap, clickhouse_url, str(data)) as (server, stack):
        yield server, stack, data


@pytest.fixture
def tracking(rw, monkeypatch):
    with tracking_uri(rw[0].url, monkeypatch) as url:
        yield url


def _tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (src / "sub" / "deeper" / "c.json").write_text('{"c": 1}')
    single = tmp_path / "notes.md"
    single.write_text("# notes\n")
    return src, single


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def _artifact_scenario(url: str, tmp_path) -> dict:
    """Artifact calls through the client's own code paths; what a user reads back."""
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    src, single = _tree(tmp_path)
    experiment_id = client.create_experiment(f"art-{uuid.uuid4().hex[:6]}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(single))
        mlflow.log_artifacts(str(src), artifact_path="data")
        mlflow.log_text("hello", "texts/hello.txt")
    run_id = run.info.run_id
    out = {"uri_scheme": run.info.artifact_uri.split(":", 1)[0]}
    out["root"] = sorted((f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id))
    out["data"] = sorted((f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, "data"))
    out["deeper"] = sorted((f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, "data/sub/deeper"))
    out["missing_dir"] = client.list_artifacts(run_id, "nothing/here")
    dest = tmp_path / f"dl-{uuid.uuid4().hex[:6]}"
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data", dst_path=str(dest))
    out["downloaded"] = _files(local)
    out["text"] = mlflow.artifacts.load_text(f"runs:/{run_id}/texts/hello.txt")
    base = f"{url}/api/2.0/mlflow-artifacts/artifacts/{run.info.artifact_uri.split(':/', 1)[1]}"
    bad = [requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts", params={"path": p}, timeout=10)
           for p in ("../etc", "a/../../b", "/etc/passwd", "a%2F..%2F..%2Fb")]
    bad.append(requests.put(f"{base}/..%2F..%2Fescape.txt", data=b"x", timeout=10))
    out["traversal"] = [(r.status_code, r.json()["error_code"]) for r in bad]
    return out


def test_artifacts_round_trip_through_runwires_store(tracking, rw, tmp_path):
    server, stack, data = rw
    mine = _artifact_scenario(server.url, tmp_path)
    assert mine["uri_scheme"] == "mlflow-artifacts"
    assert mine["root"] == [("data", True, None), ("notes.md", False, 8), ("texts", True, None)]
    assert mine["data"] == [("data/a.txt", False, 5), ("data/sub", True, None)]
    assert mine["deeper"] == [("data/sub/deeper/c.json", False, 8)]
    assert mine["missing_dir"] == []
    assert mine["downloaded"] == {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 10,
                                  "sub/deeper/c.json": b'{"c": 1}'}
    assert mine["text"] == "hello"
    assert mine["traversal"] == [(400, "INVALID_PARAMETER_VALUE")] * 5


def test_artifacts_are_runwire_artifacts_and_deletes_apply(tracking, rw, tmp_path):
    server, stack, data = rw
    client = MlflowClient(server.url)
    _, single = _tree(tmp_path)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(single), "docs")
        mlflow.log_artifact(str(single), "keep")
        # Not MLflow tags: the records are the run's artifacts.
    run_id = run.info.run_id
    # Once ingest stored the records, `runwire artifacts ls` shows them like the emitter's.
    from runwire.deploy.cli import main

    def listed():
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["artifacts", "ls", run_id, "--clickhouse-url", stack.clickhouse_url,
                         "--database", stack.database, "--json"]) == 0
        rows = json.loads(out.getvalue())
        return rows if len(rows) == 2 else None

    rows = wait_for(listed, what="the artifact records in ClickHouse")
    assert sorted((r["name"], r["type"], r["size_bytes"], r["files"]) for r in rows) == [
        ("docs/notes.md", "mlflow", 8, 1), ("keep/notes.md", "mlflow", 8, 1)]
    out_dir = tmp_path / "cli"
    with redirect_stdout(io.StringIO()):
        assert main(["artifacts", "get", run_id, "docs/notes.md", "-o", str(out_dir), "--clickhouse-url",
                     stack.clickhouse_url, "--database", stack.database]) == 0
    assert (out_dir / "notes.md").read_text() == "# notes\n"
    assert not any(k.startswith("runwire.artifact.") for k in client.get_run(run_id).data.tags)

    # DELETE (what MLflow's artifact repository sends) removes it: at once here, then in storage.
    path = run.info.artifact_uri.split(":/", 1)[1]
    r = requests.delete(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{path}/docs", timeout=10)
    assert r.status_code == 200, r.text
    assert [f.path for f in client.list_artifacts(run_id)] == ["keep"]
    queries, project = stack_queries(stack), stack_project(stack, run_id)
    wait_for(lambda: [r["name"] for r in queries.run_artifacts(project, run_id)] == ["keep/notes.md"],
             what="the deletion in storage")
    r = requests.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{path}/docs/notes.md", timeout=10)
    assert (r.status_code, r.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


def stack_queries(stack):
    from runwire.storage.query import RunQueries

    return RunQueries(stack.client())


def stack_project(stack, run_id: str) -> str:
    return stack.client().query("SELECT project FROM mlflow_runs FINAL WHERE run_id = {r:String}",
                                parameters={"r": run_id}).result_rows[0][0]


# --- the model registry ----------------------------------------------------------------------


def _train(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    y = (x[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    path = tmp_path / f"model-{uuid.uuid4().hex[:6]}"
    mlflow.sklearn.save_model(model, str(path))
    return model, x, path


def _registry_scenario(url: str, tmp_path, prefix: str = "") -> dict:
    """Registry calls with the client; what a user reads back (timestamps left out; model names
    without ``prefix``, which keeps scenarios apart on one registry)."""
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    model, x, saved = _train(tmp_path)
    name = f"{prefix}ranker"
    out: dict = {}
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(saved), "model")
    client.create_registered_model(name, tags={"team": "search"}, description="ranks things")
    with pytest.raises(MlflowException) as exc:
        client.create_registered_model(name)
    out["dup"] = exc.value.error_code
    v1 = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    v2 = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags={"candidate": "yes"}, description="second")
    out["versions"] = (v1.version, v2.version, v2.source == f"{run.info.artifact_uri}/model", v2.run_id == run.info.run_id)
    client.set_registered_model_alias(name, "champion", v1.version)
    client.set_registered_model_alias(name, "challenger", v2.version)
    by_alias = client.get_model_version_by_alias(name, "champion")
    out["alias"] = (by_alias.version, sorted(by_alias.aliases))
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out["predict_equal"] = bool((loaded.predict(x) == model.predict(x)).all())
    client.transition_model_version_stage(name, v1.version, "Production")
    client.transition_model_version_stage(name, v2.version, "staging")
    out["latest"] = sorted((v.version, v.current_stage) for v in client.get_latest_versions(name))
    out["latest_prod"] = [(v.version, v.current_stage) for v in client.get_latest_versions(name, ["Production"])]
    client.transition_model_version_stage(name, v2.version, "Production", archive_existing_versions=True)
    out["after_archive"] = [(v.version, v.current_stage) for v in
                            sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: v.version)]
    client.set_model_version_tag(name, v1.version, "validated", "true")
    client.set_registered_model_tag(name, "owner", "ana")
    client.delete_registered_model_tag(name, "team")
    client.update_model_version(name, v1.version, description="first")
    got = client.get_registered_model(name)
    out["model"] = (got.name.removeprefix(prefix), got.description, got.tags, sorted(got.aliases.items()))
    mv = client.get_model_version(name, v1.version)
    out["v1"] = (mv.version, mv.current_stage, mv.description, mv.tags, mv.status, sorted(mv.aliases))
    client.create_registered_model(f"{prefix}other-model")
    found = {q: [m.name.removeprefix(prefix) for m in client.search_registered_models(q)]
             for q in (f"name LIKE '{prefix}rank%'", f"tags.owner = 'ana' AND name LIKE '{prefix}%'",
                       f"name LIKE '{prefix}%'")}
    out["search_like"], out["search_tag"], out["search_all"] = found.values()
    out["versions_by_run"] = sorted(v.version for v in client.search_model_versions(f"run_id = '{run.info.run_id}'"))
    client.delete_registered_model_alias(name, "challenger")
    # MLflow 3's log_model: a logged model, its files, a version registered from it.
    with mlflow.start_run() as run2:
        info = mlflow.sklearn.log_model(model, name="sk", registered_model_name=f"{prefix}logged")
    same = lambda uri: bool((mlflow.pyfunc.load_model(uri).predict(x) == model.predict(x)).all())  # noqa: E731
    out["log_model"] = (info.registered_model_version, info.model_uri.startswith("models:/m-"), same(info.model_uri),
                        same(f"models:/{prefix}logged/1"), same(f"runs:/{run2.info.run_id}/sk"),
                        sorted(f.path for f in client.list_artifacts(run2.info.run_id, "sk")))
    for call in (lambda: client.get_registered_model("nope"), lambda: client.get_model_version(name, "99"),
                 lambda: client.get_model_version_by_alias(name, "challenger"),
                 lambda: client.set_registered_model_alias(name, "x", "99"),
                 lambda: client.transition_model_version_stage(name, v1.version, "Bogus")):
        with pytest.raises(MlflowException) as exc:
            call()
        out.setdefault("errors", []).append(exc.value.error_code)
    return out


def test_registry_with_the_mlflow_client(tracking, rw, tmp_path):
    server, stack, data = rw
    mine = _registry_scenario(server.url, tmp_path)
    assert mine["dup"] == "RESOURCE_ALREADY_EXISTS"
    assert mine["versions"] == ("1", "2", True, True)
    assert mine["alias"] == ("1", ["champion"]) and mine["predict_equal"]
    assert mine["latest"] == [("1", "Production"), ("2", "Staging")]
    assert mine["after_archive"] == [("1", "Archived"), ("2", "Production")]
    assert mine["model"] == ("ranker", "ranks things", {"owner": "ana"}, [("challenger", "2"), ("champion", "1")])
    assert mine["v1"] == ("1", "Archived", "first", {"validated": "true"}, "READY", ["champion"])
    assert mine["search_like"] == ["ranker"] and mine["search_all"] == ["other-model", "ranker"]
    # (An unknown alias is INVALID_PARAMETER_VALUE in MLflow's server, not RESOURCE_DOES_NOT_EXIST.)
    assert mine["errors"] == ["RESOURCE_DOES_NOT_EXIST"] * 2 + ["INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                                                                "INVALID_PARAMETER_VALUE"]
    assert mine["log_model"][:5] == ("1", True, True, True, True)
    assert "sk/MLmodel" in mine["log_model"][5]

    # The versions are runwire registry versions: a digest over the model's files, lineage, history.
    from runwire import registry
    from runwire.artifacts import download_artifact

    reg = registry.open_registry(data / "registry.db")
    v1 = reg.get_version("ranker", "champion")
    assert v1["version"] == 1 and v1["stage"] == "Archived" and v1["artifact"] == "model"
    restored = download_artifact({"digest": v1["digest"]}, tmp_path / "restored", store=v1["store"])
    via_mlflow = mlflow.artifacts.download_artifacts("models:/ranker/1", dst_path=str(tmp_path / "via-mlflow"))

    from_mlflow = _files(via_mlflow)
    from_mlflow.pop("registered_model_meta")  # the client writes this one next to what it downloaded
    assert "MLmodel" in _files(restored) and _files(restored) == from_mlflow
    actions = [(h["version"], h["action"], h["new"]) for h in reg.history("ranker") if h["action"] == "stage"]
    assert (1, "stage", "Production") in actions and (1, "stage", "Archived") in actions
    assert all(h["actor"] == "mlflow-api" for h in reg.history("ranker"))

    # A decided difference: versions and models stay (the audit history); archiving is the way.
    with pytest.raises(MlflowException) as exc:
        MlflowClient(server.url).delete_model_version("ranker", "1")
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"


# --- parity with a real `mlflow server --serve-artifacts` ---------------------------------------


def test_artifact_and_registry_parity_with_mlflow_server(rw, tmp_path, monkeypatch):
    server = rw[0]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    results = {}
    for label, url_of in (("mlflow", None), ("runwire", server.url)):
        with (mlflow_reference_server(str(ref_dir)) if url_of is None else _given(url_of)) as url:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
            prefix = f"p{uuid.uuid4().hex[:6]}-"
            (tmp_path / label).mkdir()
            results[label] = {"artifacts": _artifact_scenario(url, tmp_path / label),
                              "registry": _registry_scenario(url, tmp_path / label, prefix)}
            mlflow.set_tracking_uri(None)
    for part in ("artifacts", "registry"):
        ours, theirs = results["runwire"][part], results["mlflow"][part]
        assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {k: theirs[k] for k in theirs
                                                                          if ours.get(k) != theirs[k]}


@contextmanager
def _given(url: str):
    yield url
