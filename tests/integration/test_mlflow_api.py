"""The real `mlflow` client against runwire's MLflow API, writing through a real Kafka broker into
a real ClickHouse; and the same calls against a real `mlflow server` (sqlite) for parity."""

from __future__ import annotations

import io
import json
import math
import time
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException, RestException

from mlflow_helpers import mlflow_reference_server, runwire_mlflow, tracking_uri, wait_for

pytestmark = pytest.mark.infra

T0 = 1_760_000_000_000  # ms: fixed metric timestamps so both servers store identical points


@pytest.fixture(scope="module")
def rw(kafka_bootstrap, clickhouse_url, tmp_path_factory):
    with runwire_mlflow(kafka_bootstrap, clickhouse_url, str(tmp_path_factory.mktemp("rw"))) as pair:
        yield pair


@pytest.fixture
def fluent(rw, monkeypatch):
    """The fluent API pointed at runwire (as MLFLOW_TRACKING_URI would), reset after the test."""
    server, _ = rw
    with tracking_uri(server.url, monkeypatch):
        yield server


def _settled(client: MlflowClient, run_id: str, params: int, tags: int, metrics: int):
    """Wait until ingest stored what was logged (params, tags, metrics are eventually visible)."""
    def check():
        run = client.get_run(run_id)
        ok = len(run.data.params) == params and len(run.data.tags) >= tags and len(run.data.metrics) == metrics
        return run if ok else None
    return wait_for(check, what=f"run {run_id} to show {params} params, {tags} tags, {metrics} metrics")


# --- the fluent API ----------------------------------------------------------------------


def test_fluent_api_nested_runs_and_datasets_land_in_runwire(fluent, rw):
    server, stack = rw
    experiment = f"fluent-{uuid.uuid4().hex[:6]}"
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    dataset = mlflow.data.from_pandas(frame, source="/data/train.csv", name="toy", targets="y")
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_param("lr", 0.001)
        mlflow.log_params({"layers": 4, "optimizer": "adam"})
        mlflow.set_tag("team", "speech")
        mlflow.set_tags({"stage": "dev", "owner": "ana"})
        mlflow.log_input(dataset, context="training")
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": float("nan")}, step=19)
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("child_metric", 3.5)
    client = MlflowClient(server.url)
    got = _settled(client, parent.info.run_id, params=3, tags=5, metrics=3)
    assert got.info.status == "FINISHED" and got.info.end_time and got.info.run_name == "parent"
    assert got.info.experiment_id == experiment_id
    assert got.data.params == {"lr": "0.001", "layers": "4", "optimizer": "adam"}
    assert got.data.metrics["loss"] == pytest.approx(1 / 20) and got.data.metrics["acc"] == 0.9
    assert math.isnan(got.data.metrics["f1"])
    assert {k: got.data.tags[k] for k in ("team", "stage", "owner", "mlflow.runName")} == {
        "team": "speech", "stage": "dev", "owner": "ana", "mlflow.runName": "parent"}
    [dataset_input] = got.inputs.dataset_inputs
    assert dataset_input.dataset.name == "toy" and dataset_input.dataset.digest == dataset.digest
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}
    kid = _settled(client, child.info.run_id, params=0, tags=2, metrics=1)
    assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id and kid.info.status == "FINISHED"
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(20)]

    # Datasets and MLflow's attribute forms in the filter grammar.
    found = mlflow.search_runs([experiment_id], filter_string="datasets.name = 'toy' and `Run name` = 'parent'")
    assert list(found["run_id"]) == [parent.info.run_id]
    found = client.search_runs([experiment_id], "datasets.context = 'training'")
    assert [r.info.run_id for r in found] == [parent.info.run_id]

    # The same run is an ordinary runwire run: ClickHouse rows, the CLI.
    ch = stack.client()
    assert ch.query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String}",
                    parameters={"r": parent.info.run_id}).result_rows == [(22,)]
    # The run's end travels on the runs topic, apart from the metrics: wait for it.
    deadline = time.monotonic() + 60
    while True:
        row = ch.query("SELECT toString(project), status, toString(launcher) FROM runs FINAL WHERE run_id = {r:String}",
                       parameters={"r": parent.info.run_id}).result_rows
        if row == [(experiment, "FINISHED", "mlflow")] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row == [(experiment, "FINISHED", "mlflow")]
    from runwire.deploy.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["runs", "show", parent.info.run_id, "--clickhouse-url", stack.clickhouse_url,
                     "--database", stack.database, "--json"]) == 0
    shown = json.loads(out.getvalue())
    assert shown["status"] == "FINISHED" and shown["params"]["optimizer"] == "adam"
    assert shown["metrics"]["loss"]["last"] == pytest.approx(1 / 20)


def test_sklearn_autolog_logs_params_metrics_and_dataset(fluent, rw, tmp_path):
    from sklearn.linear_model import LogisticRegression

    server, _ = rw
    # The plots autolog makes go through runwire's mlflow-artifacts proxy into its artifact store.
    experiment_id = MlflowClient(server.url).create_experiment(f"sklearn-{uuid.uuid4().hex[:6]}")
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.sklearn.autolog(log_models=False, silent=True)
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 4))
        y = (x[:, 0] + x[:, 1] > 0).astype(int)
        with mlflow.start_run() as run:
            model = LogisticRegression(C=0.5, max_iter=200).fit(x, y)
        accuracy = model.score(x, y)
    finally:
        mlflow.sklearn.autolog(disable=True)
    client = MlflowClient(server.url)
    got = wait_for(lambda: (lambda r: r if "training_accuracy_score" in r.data.metrics and "C" in r.data.params
                            else None)(client.get_run(run.info.run_id)), what="autologged values")
    assert got.data.params["C"] == "0.5" and got.data.params["max_iter"] == "200"
    assert got.data.metrics["training_accuracy_score"] == pytest.approx(accuracy)
    assert got.data.tags["estimator_name"] == "LogisticRegression"
    assert got.info.experiment_id == experiment_id and got.info.status == "FINISHED"
    assert got.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert "training_confusion_matrix.png" in [f.path for f in client.list_artifacts(run.info.run_id)]
    assert [d.dataset.name for d in got.inputs.dataset_inputs] == ["dataset"]


# --- MlflowClient: search, paging, history -------------------------------------------------


def test_paging_through_2500_runs_and_search_runs_into_pandas(rw):
    server, _ = rw
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment(f"paging-{uuid.uuid4().hex[:6]}")

    def make(i: int) -> str:
        return client.create_run(experiment_id, run_name=f"r{i:04d}", start_time=T0 + i,
                                 tags={"bucket": str(i % 7)}).info.run_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(make, range(2500)))
    seen, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        seen.extend(r.info.run_id for r in page)
        token = page.token
        if not token:
            break
    assert seen == ids[::-1]  # newest start first, every run exactly once
    frame = wait_for(lambda: (lambda f: f if len(f) == 357 else None)(_search_frame(server.url, experiment_id)),
                     what="the tags of 2,500 runs")
    assert list(frame["run_id"]) == [ids[i] for i in range(2500) if i % 7 == 3]
    assert set(frame["tags.bucket"]) == {"3"} and list(frame["status"].unique()) == ["RUNNING"]


def _search_frame(url: str, experiment_id: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(url)
    try:
        return mlflow.search_runs([experiment_id], filter_string="tags.bucket = '3'",
                                  order_by=["attributes.start_time ASC"])
    finally:
        mlflow.set_tracking_uri(None)


def test_log_batch_retry_is_stored_once_and_history_pages(rw):
    server, stack = rw
    client = MlflowClient(server.url)
    run = client.create_run(client.create_experiment(f"retry-{uuid.uuid4().hex[:6]}"))
    body = {"run_id": run.info.run_id, "metrics": [
        {"key": "loss", "value": 1.0 / (s + 1), "timestamp": T0 + s, "step": s} for s in range(1000)]}
    for _ in range(2):  # a client retrying after a lost answer sends the identical request
        answer = requests.post(f"{server.url}/api/2.0/mlflow/runs/log-batch", json=body, timeout=30)
        assert answer.status_code == 200 and answer.json() == {}
    history = wait_for(lambda: (lambda h: h if len(h) >= 1000 else None)(
        client.get_metric_history(run.info.run_id, "loss")), what="1,000 points")
    assert [(m.step, m.timestamp, m.value) for m in history] == [(s, T0 + s, 1.0 / (s + 1)) for s in range(1000)]
    wait_for(lambda: stack.client().query("SELECT count() FROM metrics FINAL WHERE run_id = {r:String}",
                                          parameters={"r": run.info.run_id}).result_rows == [(1000,)],
             what="exactly 1,000 stored points")
    page = requests.get(f"{server.url}/api/2.0/mlflow/metrics/get-history", timeout=30, params={
        "run_id": run.info.run_id, "metric_key": "loss", "max_results": 300}).json()
    assert len(page["metrics"]) == 300 and page["next_page_token"]


def test_errors_have_mlflows_codes_and_statuses(rw):
    server, _ = rw
    client = MlflowClient(server.url)
    with pytest.raises(RestException) as err:
        client.get_run("0" * 32)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_experiment_by_name(f"absent-{uuid.uuid4().hex}") is None
    name = f"dup-{uuid.uuid4().hex[:6]}"
    experiment_id = client.create_experiment(name)
    with pytest.raises(MlflowException) as err:
        client.create_experiment(name)
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert [e.experiment_id for e in client.search_experiments(filter_string=f"name = '{name}'")] == [experiment_id]
    client.rename_experiment(experiment_id, f"{name}-renamed")
    assert client.get_experiment(experiment_id).name == f"{name}-renamed"
    with pytest.raises(MlflowException) as err:
        client.search_runs([experiment_id], "metrics.loss < 'low'")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    answer = requests.get(f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": "nope"}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    answer = requests.post(f"{server.url}/api/2.0/mlflow/runs/log-batch", data=b"{not json", timeout=10)
    assert answer.status_code == 400
    run = client.create_run(experiment_id)
    client.delete_run(run.info.run_id)
    with pytest.raises(MlflowException) as err:
        client.log_metric(run.info.run_id, "loss", 1.0)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "active" in err.value.message
    client.restore_run(run.info.run_id)
    client.log_metric(run.info.run_id, "loss", 1.0)


def test_tokens_are_the_gateways(kafka_bootstrap, clickhouse_url, tmp_path, monkeypatch):
    with runwire_mlflow(kafka_bootstrap, clickhouse_url, str(tmp_path), tokens={"secured": "s3cret"}) as (server, _):
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        with pytest.raises(MlflowException) as err:
            MlflowClient(server.url).create_experiment("secured")
        assert err.value.error_code == "UNAUTHENTICATED"
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("secured"))
        client.log_metric(run.info.run_id, "loss", 0.5)
        with pytest.raises(MlflowException) as err:
            client.create_experiment("elsewhere")  # a project the token is not for
        assert err.value.error_code == "PERMISSION_DENIED"


# --- parity with a real `mlflow server` --------------------------------------------------


FILTERS = [
    ("", None),
    ("metrics.loss < 2.5", ["metrics.loss ASC"]),
    ("params.lr = '0.01'", None),
    ("tags.team = 'a' and metrics.acc >= 0.2", ["params.layers DESC", "attributes.run_name"]),
    ("attributes.status = 'FINISHED'", ["attributes.end_time DESC"]),
    ("`Run name` LIKE 'run-%' and params.layers != '1'", ["metrics.acc DESC"]),
    ("run_name != 'run-2'", ["tags.team DESC", "run_name"]),
    ("params.layers ILIKE '2' and tags.i IS NOT NULL", None),
    ("attributes.start_time > 1760000002000", ["start_time ASC"]),
    ("metrics.`val loss` <= 0.5", None),
]


def _scenario(url: str, settle) -> dict:
    """The same calls for both servers; what they read back."""
    client = MlflowClient(url)
    experiment_id = client.create_experiment("parity")
    runs = []
    for i in range(6):
        run = client.create_run(experiment_id, run_name=f"run-{i}", start_time=T0 + i * 1000,
                                tags={"team": "ab"[i % 2], "i": str(i)})
        metrics = [Metric("loss", 1.0 / (s + 1) + i * 0.5, T0 + s * 10, s) for s in range(40)]
        metrics += [Metric("acc", i / 10, T0, 0), Metric("val loss", i / 8, T0 + 5, 3)]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("lr", str(10.0 ** -i)), Param("layers", str(i % 3))],
                         tags=[RunTag("phase", "train")])
        runs.append(run.info.run_id)
    client.set_terminated(runs[0], "FINISHED", end_time=T0 + 9000)
    client.set_terminated(runs[3], "FINISHED", end_time=T0 + 9500)
    client.set_terminated(runs[5], "KILLED", end_time=T0 + 9900)
    client.set_tag(runs[2], "note", "to delete")
    client.delete_tag(runs[2], "note")
    client.delete_run(runs[4])
    settle(client, runs)
    names = {run_id: f"run-{i}" for i, run_id in enumerate(runs)}
    out: dict = {"runs": {}}
    for run_id in runs:
        run = client.get_run(run_id)
        out["runs"][names[run_id]] = {
            "status": run.info.status, "end_time": run.info.end_time, "lifecycle": run.info.lifecycle_stage,
            "params": run.data.params, "tags": run.data.tags, "metrics": run.data.metrics,
            "history": [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, "loss")]}
    for filter_string, order_by in FILTERS:
        found = client.search_runs([experiment_id], filter_string, order_by=order_by)
        out[f"search {filter_string!r} {order_by}"] = [names[r.info.run_id] for r in found]
    pages, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=2, page_token=token)
        pages.append([names[r.info.run_id] for r in page])
        token = page.token
        if not token:
            break
    out["pages"] = pages
    out["deleted"] = [names[r.info.run_id] for r in client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)]
    out["all"] = [names[r.info.run_id] for r in client.search_runs([experiment_id], run_view_type=ViewType.ALL)]
    bulk = requests.get(f"{url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval", timeout=30, params={
        "run_ids": runs[:3], "metric_key": "loss", "max_results": 7}).json()["metrics"]
    out["bulk"] = [(names[m["run_id"]], int(m["step"]), int(m["timestamp"]), m["value"]) for m in bulk]
    errors = []
    for call in (lambda: client.get_run("f" * 32), lambda: client.create_experiment("parity"),
                 lambda: client.search_runs([experiment_id], "metrics.loss = 'x'"),
                 lambda: client.get_experiment("123456789")):
        try:
            call()
            errors.append(None)
        except MlflowException as exc:
            errors.append(exc.error_code)
    out["errors"] = errors
    out["by_name"] = client.get_experiment_by_name("parity").experiment_id == experiment_id
    return out


def test_parity_with_mlflow_server(rw, tmp_path):
    server, _ = rw

    def settle_runwire(client, runs):
        expected = {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
        for i, run_id in enumerate(runs):
            wait_for(lambda: (lambda r: r if len(r.data.params) == expected[i] and len(r.data.metrics) == 3
                              and "note" not in r.data.tags and len(client.get_metric_history(run_id, "loss")) == 40
                              else None)(client.get_run(run_id)), what=f"run {i} stored")

    with mlflow_reference_server(str(tmp_path)) as reference:
        theirs = _scenario(reference, lambda client, runs: None)
    ours = _scenario(server.url, settle_runwire)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key] == theirs[key], key
