"""Issue 14 (hardening): values float32 cannot hold, /predict with very many rows, model files checked completely
before use, confusion matrices of many classes, and --model_fn naming a folder.

Models here are built directly (fit the tabular transform, an untrained MLP, the fast ONNX export, save_bundle), in
well under a second, so only the one flow test needs a Prefect server."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from models import build_model
from models.config import ModelConfig
from preprocessing import tabular
from preprocessing.config import DataConfig, TabularConfig
from preprocessing.errors import DataError
from preprocessing.kinds.base import Settings
from preprocessing.steps import Snapshot
from preprocessing.validate import TableSchema
from serving.bundle import FORMAT, ModelFileError, load_bundle, load_model_file, onnx_metadata, save_bundle
from serving.export import export_fast, with_metadata
from serving.inference import Predictor, load_checked
from tests.conftest import REPO, free_port
from tests.test_serving import Server
from training import evaluation
from training.objectives import ServingModel, make_objective

import train as train_cli

CLASSES = ["p", "q", "r"]


def rows(n=60, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n) * 10, "c": rng.choice(["x", "y"], n),
                         "label": (CLASSES * n)[:n]})


def make_model(path, frame=None, *, onnx_inputs=None, nan_weights=False, **overrides):
    """A tabular model file (and .onnx beside it) for `frame`; `onnx_inputs` exports a graph taking another number
    of features than the preprocessing makes, `nan_weights` one whose every output is NaN; `overrides` replace
    fields of the saved dict."""
    frame = rows() if frame is None else frame
    schema = TableSchema("label", "classification", ["a", "b"], ["c"], CLASSES, len(frame), [])
    state = tabular.fit(frame, schema, TabularConfig())
    transform = tabular.TabularTransform(state)
    objective = make_objective("classification", len(CLASSES))
    torch.manual_seed(0)
    inputs = onnx_inputs or transform.n_features
    network = build_model(ModelConfig(type="mlp", n_layers=2, hidden_size=8), inputs, objective.output_size)
    if nan_weights:
        with torch.no_grad():
            next(network.parameters()).fill_(float("nan"))
    model = ServingModel(network, objective).eval()
    example = torch.zeros(4, inputs)
    onnx_bytes, _ = export_fast(model, example, "probabilities", "features", True)
    described = {"data_type": "tabular", "task": "classification", "preprocessing": state, "metrics": {},
                 "run": {"run_id": "r1"}}
    onnx_bytes = with_metadata(onnx_bytes, onnx_metadata(**described))
    save_bundle(path, onnx_bytes=onnx_bytes, **described)
    if overrides:
        saved = torch.load(path, weights_only=True)
        for key, value in overrides.items():
            if value is None:
                saved.pop(key)
            else:
                saved[key] = value
        torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m.pth")


def run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- 1. values float32 cannot hold

def test_transform_names_column_and_rows_of_values_beyond_float32(model_file):
    transform = Predictor.load(model_file).transform
    frame = rows(8).drop(columns="label")
    frame.loc[[1, 4], "a"] = [1e308, -1e300]
    with pytest.raises(DataError, match=r"column 'a' in rows.csv has 2 values too large for float32.*"
                                        r"at data rows 2, 5 \(first: 1e\+308\)"):
        transform.features(frame, "rows.csv")
    many = rows(30).drop(columns="label").assign(b=1e41)  # b is scaled by ~10
    with pytest.raises(DataError, match=r"column 'b' .* 30 values .* data rows 1, 2, 3, 4, 5 and 25 more"):
        transform.features(many, "rows.csv")
    chunk = frame.iloc[4:6]  # a slice keeps the labels of the rows it came from
    with pytest.raises(DataError, match=r"at data row 5 "):
        transform.features(chunk, "rows.csv")
    assert np.isfinite(transform.features(rows(8).assign(a=3e38 * 1e-10))).all()


def test_a_value_that_overflows_only_after_scaling_is_caught():
    train = pd.DataFrame({"x": [0.0] * 8 + [1e-30, 2e-30], "label": ["a", "b"] * 5})
    schema = TableSchema("label", "classification", ["x"], [], ["a", "b"], 10, [])
    transform = tabular.TabularTransform(tabular.fit(train, schema, TabularConfig(scaler="minmax")))
    assert transform.state["numeric"][0]["scale"] == pytest.approx(2e-30)
    with pytest.raises(DataError, match=r"column 'x' .* after scaling with the training statistics.* data row 2"):
        transform.features(pd.DataFrame({"x": [1.0, 1e10]}), "the request")


def test_validation_refuses_huge_values_by_the_files_data_row(tmp_path):
    from preprocessing.kinds.table import KIND

    frame = rows(30)
    frame.loc[6, "b"] = 1e308
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    snapshot = Snapshot(tmp_path / "d.parquet", "d.csv", "f", len(frame))
    with pytest.raises(DataError, match=r"column 'b' in d.csv has a value too large for float32.* at data row 7 "
                                        r"\(first: 1e\+308\)"):
        KIND.validate(snapshot, Settings(data=DataConfig(source="d.csv", target="label")))
    regression = pd.DataFrame({"x": np.arange(30.0), "y": np.arange(30.0)})
    regression.loc[3, "y"] = -5e38
    regression.to_parquet(tmp_path / "r.parquet", index=False)
    with pytest.raises(DataError, match=r"column 'y' in r.csv has a value too large .* data row 4 "):
        KIND.validate(Snapshot(tmp_path / "r.parquet", "r.csv", "f", 30),
                      Settings(data=DataConfig(source="r.csv", target="y", task="regression")))


def test_streamed_validation_names_the_files_data_row(tmp_path):
    from preprocessing import streaming

    frame = rows(5000)
    frame.loc[3456, "a"] = 1e300
    frame.to_parquet(tmp_path / "big.parquet", index=False, row_group_size=1000)
    stream = streaming.ParquetStream(tmp_path / "big.parquet", 64, batch_rows=1024)
    with pytest.raises(DataError, match=r"column 'a' in .*big.parquet has a value too large .* data row 3457 "):
        streaming.validate_stream(stream, DataConfig(source=str(tmp_path / "big.parquet"), target="label"))


def test_non_finite_model_outputs_are_an_error_not_null_probabilities(tmp_path):
    # inputs within float32 mostly saturate a softmax rather than break it; a network that does produce NaN
    # (here: NaN weights, which the load check would refuse) must not answer with null probabilities
    unchecked = Predictor(load_model_file(make_model(tmp_path / "nan.pth", nan_weights=True)))
    with pytest.raises(DataError, match=r"the model's output for data rows 1, 2, 3, 4, 5 and 1 more of the request "
                                        r"is not a finite number \(NaN or infinity\)"):
        unchecked.predict(rows(6).drop(columns="label"), "the request")
    assert Predictor.load(make_model(tmp_path / "ok.pth")).predict(rows(6)).notna().all().all()


def test_predict_cli_exits_non_zero_on_a_value_beyond_float32(model_file, tmp_path):
    frame = rows(5).drop(columns="label")
    frame.loc[1, "a"] = 1e308
    frame.to_csv(tmp_path / "huge.csv", index=False)
    result = run("predict.py", "--model_fn", str(model_file), "--input", str(tmp_path / "huge.csv"),
                 "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 1, result.stderr
    assert "error: column 'a' in" in result.stderr and "data row 2" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.csv").exists()


def test_serving_answers_422_naming_column_and_row(model_file):
    from serving.app import ServeSettings, create_app

    client = TestClient(create_app(ServeSettings(model=str(model_file))))
    body = json.loads(rows(3).drop(columns="label").to_json(orient="records"))
    body[2]["b"] = 1e308
    response = client.post("/predict", json={"rows": body})
    assert response.status_code == 422, response.text
    assert "column 'b' in the request" in response.json()["detail"] and "data row 3" in response.json()["detail"]
    from serving.app import Loaded
    from serving.registry import ModelRef

    unchecked = Predictor(load_model_file(make_model(model_file.with_name("nan.pth"), nan_weights=True)))
    loaded = Loaded(unchecked, ModelRef("nan.pth", "nan.pth", "nan"), unchecked.kind.input_schema(unchecked.transform))
    client = TestClient(create_app(ServeSettings(model="nan.pth"), loaded))
    response = client.post("/predict", json={"rows": body[:2]})
    assert response.status_code == 422, response.text
    assert "the model's output for data rows 1, 2 of the request is not a finite number" in response.text


@pytest.mark.usefixtures("prefect_harness")
def test_training_fails_at_validation_and_the_mlflow_run_says_why(tmp_path, fast_train, mlflow_client):
    from mlflow.entities import RunStatus

    from flows.config import ExportConfig
    from tests.test_flow import mlflow_run, run_flow

    frame = rows(60)
    frame.loc[9, "a"] = 1e308
    frame.to_csv(tmp_path / "huge.csv", index=False)
    name = f"huge-{uuid.uuid4().hex[:6]}"
    state = run_flow(fast_train, data=DataConfig(source=str(tmp_path / "huge.csv"), target="label"),
                     export=ExportConfig(model_name=name))
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    assert "column 'a' in" in str(info.value) and "data row 10" in str(info.value), str(info.value)
    run_ = mlflow_run(mlflow_client, state)
    assert run_.info.status == RunStatus.to_string(RunStatus.FAILED)
    assert run_.data.tags["failure_reason"] == str(info.value)


# ---------------------------------------------------------------- 2. /predict with very many rows

def health_latencies_during(url: str, request) -> tuple[httpx.Response, list[float]]:
    """`request()` on this thread while another polls /health; the /health latencies seen meanwhile."""
    latencies, done = [], threading.Event()

    def poll():
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                start = time.perf_counter()
                client.get(f"{url}/health")
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        response = request()
    finally:
        done.set()
        poller.join()
    return response, latencies


def test_many_empty_rows_are_refused_quickly_with_a_small_body_and_health_stays_up(model_file):
    body = b'{"rows": [' + b",".join([b"{}"] * 100_000) + b"]}"  # 300 KB
    default = Server("--model", str(model_file))
    try:
        start = time.perf_counter()
        response = httpx.post(f"{default.url}/predict", content=body, headers={"content-type": "application/json"},
                              timeout=60)
        elapsed = time.perf_counter() - start
        assert response.status_code == 413, response.text
        assert "a batch of 100000 exceeds the limit of 1024 per request (--max-batch)" in response.text
        assert len(response.content) < 500 and elapsed < 3, (len(response.content), elapsed)
    finally:
        assert "Traceback" not in default.stop()

    # with the row limit raised, all 100,000 rows are validated: 300,000 missing fields, listed 20 at most, on a
    # worker thread while /health keeps answering
    raised = Server("--model", str(model_file), "--max-batch", "200000")
    try:
        response, latencies = health_latencies_during(raised.url, lambda: httpx.post(
            f"{raised.url}/predict", content=body, headers={"content-type": "application/json"}, timeout=120))
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert len(detail) == 21 and detail[-1]["type"] == "too_many_errors"
        assert detail[-1]["msg"] == "300000 errors in all; the first 20 are listed"
        assert len(response.content) < 5000
        assert latencies and max(latencies) < 1.0, latencies
    finally:
        assert "Traceback" not in raised.stop()


def test_error_bodies_list_at_most_twenty_problems(model_file):
    from serving.app import ServeSettings, create_app

    client = TestClient(create_app(ServeSettings(model=str(model_file))))
    response = client.post("/predict", json={"rows": [{"a": "x", "zzz" * 200: 1}] * 50})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 21 and "200 errors in all" in detail[-1]["msg"]
    assert all(len(str(part)) <= 203 for entry in detail for part in entry["loc"])  # a long key is cut
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]["rows"]["items"]["properties"]) == {"a", "b", "c"}  # still documented


def test_a_large_valid_batch_is_validated_in_chunks_and_answered_in_order(model_file):
    from serving.app import VALIDATION_CHUNK, ServeSettings, create_app

    client = TestClient(create_app(ServeSettings(model=str(model_file), max_batch=5000)))
    frame = rows(2 * VALIDATION_CHUNK + 7, seed=3).drop(columns="label")
    response = client.post("/predict", json={"rows": json.loads(frame.to_json(orient="records"))})
    assert response.status_code == 200, response.text[:500]
    direct = Predictor.load(model_file).predict(frame)
    served = response.json()["predictions"]
    assert [p["prediction"] for p in served] == direct["prediction"].tolist()
    assert np.allclose([p["probabilities"]["q"] for p in served], direct["proba_q"], atol=1e-6)
    bad = json.loads(frame.to_json(orient="records"))
    bad[VALIDATION_CHUNK + 3]["a"] = "x"
    response = client.post("/predict", json={"rows": bad, "extra": 1})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "extra"],
                                                             ["body", "rows", VALIDATION_CHUNK + 3, "a"]]


# ---------------------------------------------------------------- 3. model files checked completely

def test_a_model_file_missing_keys_names_them(tmp_path):
    path = make_model(tmp_path / "m.pth", preprocessing=None, task=None)
    with pytest.raises(ModelFileError, match=r"m.pth is an incomplete torchyard model file: it lacks task, "
                                             r"preprocessing"):
        load_bundle(path)
    result = run("predict.py", "--model_fn", str(path), "--input", "x.csv")
    assert result.returncode == 1 and "it lacks task, preprocessing" in result.stderr
    assert "Traceback" not in result.stderr
    path = make_model(tmp_path / "s.pth", preprocessing={"data_type": "tabular", "config": {}})
    with pytest.raises(ModelFileError, match=r"s.pth has an unusable preprocessing state \(the entry "):
        Predictor.load(path)
    path = make_model(tmp_path / "t.pth", task="clustering")
    with pytest.raises(ModelFileError, match="task is 'clustering', not one of classification, regression"):
        load_bundle(path)


def test_an_onnx_with_partial_or_bad_metadata_stops_the_server_start_cleanly(tmp_path):
    import onnx

    make_model(tmp_path / "m.pth")
    for case, change in {"partial": lambda meta: meta.pop("torchyard.task"),
                         "bad": lambda meta: meta.update({"torchyard.preprocessing": "{not json"})}.items():
        model = onnx.load(str(tmp_path / "m.onnx"))
        meta = {p.key: p.value for p in model.metadata_props}
        change(meta)
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp_path / f"{case}.onnx"))
    with pytest.raises(ModelFileError, match="incomplete torchyard metadata: it lacks torchyard.task"):
        load_model_file(tmp_path / "partial.onnx")
    done = run("-m", "serving", "--model", str(tmp_path / "bad.onnx"), "--port", str(free_port()), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "bad torchyard metadata: torchyard.preprocessing is not valid JSON" in done.stderr


def test_broken_graphs_fail_their_check_before_use(tmp_path):
    wrong_width = make_model(tmp_path / "w.pth", onnx_inputs=7)  # the preprocessing makes 5 features
    with pytest.raises(ModelFileError, match=r"w.pth failed one prediction on a sample input: .*features"):
        Predictor.load(wrong_width)
    nan = make_model(tmp_path / "n.pth", nan_weights=True)
    with pytest.raises(ModelFileError, match=r"n.pth failed one prediction on a sample input: DataError: the "
                                             r"model's output for data row 1 of a sample is not a finite number"):
        Predictor.load(nan)
    garbage = make_model(tmp_path / "g.pth", onnx=torch.frombuffer(bytearray(b"\x08\x07garbage"), dtype=torch.uint8))
    with pytest.raises(ModelFileError, match="g.pth holds an ONNX model that ONNX Runtime cannot load"):
        load_checked(load_model_file(garbage), str(garbage))
    assert torch.load(garbage, weights_only=True)["format"] == FORMAT


def test_reload_of_a_bad_model_keeps_serving_the_old_one(tmp_path):
    from serving.app import ServeSettings, create_app

    path = make_model(tmp_path / "m.pth")
    client = TestClient(create_app(ServeSettings(model=str(path))))
    body = {"rows": json.loads(rows(4).drop(columns="label").to_json(orient="records"))}
    before = client.post("/predict", json=body)
    assert before.status_code == 200
    for broken in ({"onnx_inputs": 7}, {"preprocessing": None}, {"nan_weights": True}):
        make_model(path, **broken)
        response = client.post("/reload")
        assert response.status_code == 409, response.text
        assert response.json()["detail"].startswith("not reloaded, still serving") and "m.pth" in response.text
        assert client.post("/predict", json=body).json() == before.json()
    make_model(path)
    assert client.post("/reload").status_code == 200


def test_reload_needs_the_api_key_and_no_response_shows_server_paths(tmp_path):
    from serving.app import ServeSettings, create_app

    path = make_model(tmp_path / "secret-folder" / "m.pth")
    body = {"rows": json.loads(rows(2).drop(columns="label").to_json(orient="records"))}
    open_on_lan = TestClient(create_app(ServeSettings(model=str(path), loopback=False)))
    refused = open_on_lan.post("/reload")
    assert refused.status_code == 403 and "--api-key" in refused.text
    assert open_on_lan.post("/predict", json=body).status_code == 200
    model = open_on_lan.get("/model").json()
    assert model["uri"] == "m.pth" and "secret-folder" not in json.dumps(model)

    keyed = TestClient(create_app(ServeSettings(model=str(path), loopback=False, api_key="s3cret",
                                                protect_predict=True)))
    assert keyed.post("/reload").status_code == 401
    assert keyed.post("/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert keyed.post("/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert keyed.post("/predict", json=body).status_code == 401
    assert keyed.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert "s3cret" not in keyed.get("/model").text

    make_model(path, preprocessing=None)  # a failing reload names the file, not where it lies
    failed = keyed.post("/reload", headers={"X-API-Key": "s3cret"})
    assert failed.status_code == 409 and "m.pth" in failed.text and "secret-folder" not in failed.text


# ---------------------------------------------------------------- 4. confusion matrices of many classes

def test_confusion_plot_of_hundreds_of_classes_is_quick_and_bounded(tmp_path):
    rng = np.random.default_rng(0)
    n, rows_ = 400, 4000
    targets = torch.from_numpy(rng.zipf(1.5, rows_) % n)
    served = torch.softmax(torch.from_numpy(rng.normal(size=(rows_, n))).float(), 1)
    served[torch.arange(rows_), targets] += 1  # mostly right
    start = time.perf_counter()
    drawn = evaluation.confusion_artifacts(served, targets, [f"c{i}" for i in range(n)], tmp_path / "cm.png",
                                           tmp_path / "cm.csv")
    assert time.perf_counter() - start < 10
    assert drawn == {"classes": 400, "classes_plotted": 30, "csv": False} and not (tmp_path / "cm.csv").exists()
    assert (tmp_path / "cm.png").stat().st_size < 400_000

    few = evaluation.confusion_artifacts(served[:, :3], targets % 3, ["a", "b", "c"], tmp_path / "few.png",
                                         tmp_path / "few.csv")
    matrix = pd.read_csv(tmp_path / "few.csv", index_col=0)
    assert few == {"classes": 3, "classes_plotted": 3, "csv": True} and int(matrix.to_numpy().sum()) == rows_
    assert (matrix.to_numpy() == evaluation.confusion_matrix(served[:, :3], targets % 3)).all()


def test_class_count_warning():
    assert evaluation.class_count_warning(3, 30) is None
    assert "400 classes for 600 test rows (1.5 per class" in evaluation.class_count_warning(400, 600)


# ---------------------------------------------------------------- 5. --model_fn naming a folder

def test_model_fn_naming_a_folder_fails_before_anything_runs(tmp_path):
    start = time.perf_counter()
    result = run("train.py", "--model_fn", str(tmp_path), "--n_epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: --model_fn {tmp_path} is a folder" in result.stderr
    assert time.perf_counter() - start < 20 and "Prefect API" not in result.stderr  # no server was started
    config = tmp_path / "c.yaml"
    config.write_text(f"model_fn: {tmp_path}/out/\ndata: {{source: 'sklearn:iris'}}\n")
    assert train_cli.main(["--config", str(config)]) == 2
    (tmp_path / "m.onnx").mkdir()
    assert "m.onnx, is an existing folder" in train_cli.model_fn_problem(str(tmp_path / "m.pth"))
    assert train_cli.model_fn_problem(str(tmp_path / "new.pth")) is None
