"""train-flow in process against a temporary Prefect API and a per-session MLflow store."""
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import RunStatus

from flows.config import ExportConfig
from preprocessing.config import DataConfig
from serving.inference import Predictor

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_flow(fast_train, **params):
    from flows.train_flow import train_flow

    params.setdefault("train", fast_train)
    params.setdefault("experiment", f"test-{uuid.uuid4().hex[:8]}")
    return train_flow(**params, return_state=True)


def mlflow_run(client, state):
    flow_run_id = str(state.state_details.flow_run_id)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1, f"expected one MLflow run for flow run {flow_run_id}"
    return runs[0]


RUN_NAMES = Path(__file__).parent / "data" / "wine_run_names.json"


def assert_names_unchanged(params: dict, metrics: dict) -> None:
    """The wine run logs the same param and metric names as the checked-in list: renaming or dropping one breaks
    users' MLflow comparisons and queries. A deliberate change rewrites the list (write `names` to RUN_NAMES)."""
    names = {"params": sorted(params), "metrics": sorted(metrics)}
    expected = json.loads(RUN_NAMES.read_text())
    for kind in ("params", "metrics"):
        missing, new = set(expected[kind]) - set(names[kind]), set(names[kind]) - set(expected[kind])
        assert not missing and not new, f"{kind}: missing {sorted(missing)}, new {sorted(new)}"


def test_classification_run_is_recorded_registered_and_predictable(fast_train, mlflow_client, tmp_path, wine_frame):
    model_fn = tmp_path / "wine.pth"
    name = f"wine-{uuid.uuid4().hex[:6]}"
    state = run_flow(fast_train, export=ExportConfig(model_name=name), model_fn=str(model_fn))
    assert state.is_completed(), state.message
    result = state.result()
    run = mlflow_run(mlflow_client, state)

    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("wine-mlp-")
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["train.lr"] == "0.01" and params["preprocess.scaler"] == "standard"
    assert params["validate.task"] == "classification" and params["split.train_rows"] == "124"
    assert set(metrics) >= {"train_loss", "val_loss", "val_accuracy", "lr", "test_accuracy", "test_f1",
                            "export_max_abs_diff"}
    assert metrics["test_accuracy"] > 0.8
    assert len(mlflow_client.get_metric_history(run.info.run_id, "val_loss")) == fast_train.n_epochs
    assert tags["data_fingerprint"] and tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.inputs.dataset_inputs[0].dataset.name == "wine"

    assert_names_unchanged(params, metrics)

    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "evaluate")}
    artifacts |= {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "preprocess")}
    assert {"evaluate/confusion_matrix.png", "preprocess/preprocessing.json"} <= artifacts
    # the plot at the root too: MLflow 3.17's compare page shows only files there ("No common artifacts" otherwise)
    assert "confusion_matrix.png" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    # the saved view that shows the key metrics as columns in the runs list (the UI's Views menu)
    view = json.loads(mlflow_client.get_experiment(run.info.experiment_id).tags["mlflow.sharedViewState.torchyard"])
    assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
    assert "metrics.`test_accuracy`" in json.loads(view["state"])["selectedColumns"]

    version = mlflow_client.get_model_version(name, result["model_version"])
    assert version.run_id == run.info.run_id and "test_accuracy" in version.description
    import tempfile

    from tasks import registry

    downloads = lambda: set(Path(tempfile.gettempdir()).glob("torchyard-model-*"))  # noqa: E731
    before = downloads()
    bundle, ref = registry.fetch(name, str(version.version), None)
    assert bundle.data_type == "tabular" and ref.version == str(version.version)
    assert downloads() <= before  # the downloaded model file is not left in the temp folder
    import mlflow.models
    import mlflow.onnx
    import onnxruntime as ort

    info = mlflow.models.get_model_info(f"models:/{name}/{version.version}")
    inputs = info.signature.inputs.to_dict()  # the raw columns (the registered model preprocesses itself)
    assert len(inputs) == 13 and {"alcohol", "proline"} <= {c["name"] for c in inputs}
    assert info.saved_input_example_info is not None
    onnx_model = mlflow.onnx.load_model(f"models:/{name}/{version.version}")
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])

    # the model file predicts the same as the registered ONNX model, and gets the labels right
    predictor = Predictor.load(model_fn)
    rows = wine_frame.sample(20, random_state=0)
    predictions = predictor.predict(rows)
    features = predictor.transform.features(rows)
    (registered,) = session.run(None, {"features": features})
    assert np.allclose(predictions[[f"proba_class_{i}" for i in range(3)]].to_numpy(), registered, atol=1e-6)
    assert (predictions["prediction"] == rows["target"]).mean() > 0.8


def test_prefect_artifact_links_to_the_mlflow_run(fast_train, mlflow_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = run_flow(fast_train, export=ExportConfig(register_model=False))
    run = mlflow_run(mlflow_client, state)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (summary,) = [a for a in artifacts if a.key == "train-summary"]
    assert f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning" in summary.data
    assert (f"#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=torchyard"
            in summary.data)
    assert "test_accuracy" in summary.data


def test_regression_run(fast_train, mlflow_client):
    state = run_flow(fast_train, data=DataConfig(source="sklearn:diabetes", task="regression"),
                     export=ExportConfig(register_model=False))
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    assert {"test_mse", "test_mae", "test_r2", "val_mae"} <= set(run.data.metrics)
    assert run.data.metrics["test_r2"] > 0.2  # the mean predictor scores 0
    assert "evaluate/predicted_vs_true.png" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "evaluate")}
    assert "predicted_vs_true.png" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}


def test_binary_run_logs_auroc(fast_train, mlflow_client):
    state = run_flow(fast_train, data=DataConfig(source="sklearn:breast_cancer"),
                     export=ExportConfig(register_model=False))
    assert state.is_completed(), state.message
    metrics = mlflow_run(mlflow_client, state).data.metrics
    assert metrics["test_auroc"] > 0.9 and metrics["test_accuracy"] > 0.85


def test_same_seed_same_metrics(fast_train, mlflow_client):
    first = run_flow(fast_train, export=ExportConfig(register_model=False), seed=7)
    second = run_flow(fast_train, export=ExportConfig(register_model=False), seed=7)
    third = run_flow(fast_train, export=ExportConfig(register_model=False), seed=8)
    assert first.result()["metrics"] == second.result()["metrics"]
    history = [[m.value for m in mlflow_client.get_metric_history(mlflow_run(mlflow_client, s).info.run_id,
                                                                   "train_loss")] for s in (first, second, third)]
    assert history[0] == history[1] and history[0] != history[2]


def _good_rows(n=30):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "label": (["a", "b", "c"] * n)[:n]})


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    else:
        path.write_bytes(content)
    return str(path)


BAD_INPUTS = {
    "missing file": (lambda p: str(p / "nope.csv"), {}, "data file not found"),
    "unreachable URL": (lambda p: "http://127.0.0.1:9/data.csv", {"read_retries": 1, "retry_delay_seconds": 0},
                        r"could not reach http://127.0.0.1:9/data.csv: .* \(tried 2 times\)"),
    "empty file": (lambda p: _write(p, "empty.csv", b""), {}, r"is empty \(0 bytes\)"),
    "header only": (lambda p: _write(p, "header.csv", b"x1,x2,label\n"), {}, "has a header but no data rows"),
    "target absent": (lambda p: _write(p, "d.csv", _good_rows()), {"target": "species"},
                      "target column 'species' not found in .*d.csv; columns are: 'x1', 'x2', 'label'"),
    "target all null": (lambda p: _write(p, "d.csv", _good_rows().assign(label=None)), {},
                        "target column 'label' in .*d.csv has no values"),
    "class with one row": (lambda p: _write(p, "d.csv", pd.concat([_good_rows(), _good_rows(1).assign(label="z")])),
                           {}, "class 'z' of target 'label' in .*d.csv has only 1 row"),
    "numeric with text": (lambda p: _write(p, "d.csv", _good_rows().astype({"x1": str}).assign(
        x1=lambda d: d["x1"].where(d.index != 4, "twelve"))), {},
        "column 'x1' in .*d.csv holds numbers .* but data row 5 has the text 'twelve'"),
    "all features null": (lambda p: _write(p, "d.csv", _good_rows().assign(x1=None, x2=None)), {},
                          "all feature columns in .*d.csv are empty"),
    "inf values": (lambda p: _write(p, "d.csv", _good_rows().assign(x2=lambda d: d["x2"].where(d.index != 2, np.inf))),
                   {}, "column 'x2' in .*d.csv has infinite values \\(first at data row 3"),
    "not CSV": (lambda p: _write(p, "d.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00"), {},
                "does not look like a CSV file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_one_clear_sentence(case, tmp_path, fast_train, mlflow_client):
    make_source, data_options, message = BAD_INPUTS[case]
    name = f"bad-{uuid.uuid4().hex[:6]}"
    data = DataConfig(source=make_source(tmp_path), **{"target": "label", **data_options})
    state = run_flow(fast_train, data=data, export=ExportConfig(model_name=name))
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    assert pytest.importorskip("re").search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)

    run = mlflow_run(mlflow_client, state)
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED)
    assert run.data.tags["failure_reason"] == str(info.value)
    assert not mlflow_client.search_model_versions(f"name = '{name}'")  # nothing partial registered
