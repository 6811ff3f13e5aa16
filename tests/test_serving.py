"""The REST API as a client sees it: real `python -m serving` processes on loopback ports, models trained by the
real flow, and property-based fuzzing of /predict from the server's own OpenAPI document."""
import base64
import collections
import io
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error

from flows.config import ExportConfig
from models.config import ModelConfig
from preprocessing.config import DataConfig, ImageConfig, TextConfig
from preprocessing.sources import load_sample
from serving.inference import Predictor
from tests.conftest import REPO, free_port
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = TrainerConfig(n_epochs=3, batch_size=32, lr=0.01)


def _train(tmp_path_factory, name, **params):
    from flows.train_flow import train_flow

    model_fn = tmp_path_factory.mktemp(name) / f"{name}.pth"
    params.setdefault("train", FAST)
    state = train_flow(experiment=f"serve-{uuid.uuid4().hex[:6]}", model_fn=str(model_fn), return_state=True,
                       **params)
    assert state.is_completed(), state.message
    return model_fn, state.result()


@pytest.fixture(scope="module")
def wine_rows():
    frame = load_sample("wine")
    frame["region"] = np.where(np.arange(len(frame)) % 2, "north", "south")  # a categorical column
    return frame


@pytest.fixture(scope="module")
def tabular_model(tmp_path_factory, wine_rows):
    path = tmp_path_factory.mktemp("wine-data") / "wine.csv"
    wine_rows.to_csv(path, index=False)
    name = f"wine-serve-{uuid.uuid4().hex[:6]}"
    return _train(tmp_path_factory, "wine", data=DataConfig(source=str(path)), export=ExportConfig(model_name=name))


class Server:
    def __init__(self, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(self.port), *args], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ})
        deadline = time.monotonic() + 300  # generous: CI machines are shared; a dead server fails at once below
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 300 s")

    def post(self, path, **kwargs):
        return httpx.post(f"{self.url}{path}", timeout=30, **kwargs)

    def get(self, path):
        return httpx.get(f"{self.url}{path}", timeout=30)

    def stop(self) -> str:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return out


@pytest.fixture(scope="module")
def tabular_server(tabular_model):
    server = Server("--model", str(tabular_model[0]), "--max-batch", "64", "--max-body-bytes", "200000")
    yield server
    log = server.stop()
    assert "Traceback" not in log, log  # no request, however bad, reached the 500 handler


def records(frame):
    return json.loads(frame.drop(columns="target").to_json(orient="records"))


def test_health_model_and_predictions_in_input_order(tabular_server, tabular_model, wine_rows):
    health = tabular_server.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    info = tabular_server.get("/model").json()
    assert info["task"] == "classification" and info["classes"] == ["class_0", "class_1", "class_2"]
    columns = {c["name"]: c for c in info["input_schema"]["columns"]}
    assert columns["region"]["type"] == "category" and columns["alcohol"]["type"] == "number"
    assert "test_accuracy" in info["metrics"] and info["run_id"] == tabular_model[1]["run_id"]

    rows = wine_rows.sample(40, random_state=1)
    response = tabular_server.post("/predict", json={"rows": records(rows)})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    direct = Predictor.load(tabular_model[0]).predict(rows.drop(columns="target"))  # predict.py's path
    assert [p["prediction"] for p in served] == direct["prediction"].tolist()
    assert np.allclose([p["probabilities"]["class_1"] for p in served], direct["proba_class_1"], atol=1e-6)


def test_nulls_and_unknown_categories_are_handled_as_in_training(tabular_server, wine_rows):
    row = records(wine_rows.head(1))[0]
    response = tabular_server.post("/predict", json={"rows": [{**row, "alcohol": None, "region": "atlantis"}]})
    assert response.status_code == 200, response.text
    assert sum(response.json()["predictions"][0]["probabilities"].values()) == pytest.approx(1.0)


BAD_REQUESTS = {
    "malformed JSON": (dict(content=b'{"rows": [', headers={"content-type": "application/json"}), 422, "json_invalid"),
    "missing field": (lambda row: {"rows": [{k: v for k, v in row.items() if k != "alcohol"}]}, 422, "alcohol"),
    "extra field": (lambda row: {"rows": [{**row, "colour": "red"}]}, 422, "colour"),
    "wrong type": (lambda row: {"rows": [{**row, "alcohol": "strong"}]}, 422, "alcohol"),
    "NaN": (lambda row: json.dumps({"rows": [row]}).replace('"alcohol": ' + json.dumps(row["alcohol"]),
                                                            '"alcohol": NaN'), 422, "finite"),
    "infinity": (lambda row: json.dumps({"rows": [row]}).replace('"alcohol": ' + json.dumps(row["alcohol"]),
                                                                 '"alcohol": Infinity'), 422, "finite"),
    "empty batch": ({"rows": []}, 422, "at least 1"),
    "batch over the limit": (lambda row: {"rows": [row] * 65}, 413, "exceeds the limit of 64"),
    "body over the limit": (lambda row: {"rows": [{**row, "region": "x" * 250_000}]}, 413, "over the limit"),
    "not an object": ([1, 2, 3], 422, "model_attributes_type"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message(case, tabular_server, wine_rows):
    body, status, message = BAD_REQUESTS[case]
    row = records(wine_rows.head(1))[0]
    body = body(row) if callable(body) else body
    if isinstance(body, str):
        kwargs = dict(content=body.encode(), headers={"content-type": "application/json"})
    elif isinstance(body, dict) and "content" in body:
        kwargs = body
    else:
        kwargs = dict(json=body)
    response = tabular_server.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.text and "Traceback" not in response.text


def test_fuzzed_requests_never_get_a_server_error(tabular_server):
    """schemathesis generates requests from the server's OpenAPI document, valid and invalid (its pytest plugin
    does not load under pytest 9, so hypothesis drives its strategies directly)."""
    schema = schemathesis.openapi.from_url(f"{tabular_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/health", "/model", "/reload"}
    seen = collections.Counter()
    for operation in operations:
        if operation.path == "/reload":
            continue  # reloading the model file mid-fuzz proves nothing more than the reload test does

        for mode in schemathesis.GenerationMode:  # valid requests, then requests that break the schema
            if mode == schemathesis.GenerationMode.NEGATIVE and operation.path != "/predict":
                continue

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=50 if operation.path == "/predict" else 5, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                response = case.call_and_validate(checks=[not_a_server_error])
                seen[response.status_code] += 1

            fuzz()
    assert not any(code >= 500 for code in seen) and seen[200] and seen[422], seen


def test_mlflow_scoring_protocol_answers_like_predict_py_in_every_format(tabular_server, tabular_model, wine_rows):
    rows = wine_rows.sample(6, random_state=3).drop(columns="target")
    direct = Predictor.load(tabular_model[0]).predict(rows)
    expected = json.loads(direct.to_json(orient="records"))
    split = json.loads(rows.to_json(orient="split", index=False))
    bodies = [{"json": {"dataframe_records": records(wine_rows.loc[rows.index])}},
              {"json": {"dataframe_split": split}},
              {"json": {"instances": json.loads(rows.to_json(orient="records"))}},
              {"json": {"inputs": {c: rows[c].tolist() for c in rows.columns}}},
              {"content": rows.to_csv(index=False), "headers": {"Content-Type": "text/csv"}}]
    for body in bodies:
        response = tabular_server.post("/invocations", **body)
        assert response.status_code == 200, (body, response.text)
        answered = response.json()["predictions"]
        assert [p["prediction"] for p in answered] == [p["prediction"] for p in expected]
        assert np.allclose([p["proba_class_0"] for p in answered], [p["proba_class_0"] for p in expected], atol=1e-6)
    for bad in ({"json": {"rows": []}}, {"json": {"dataframe_records": [], "instances": []}},
                {"content": b"{", "headers": {"Content-Type": "application/json"}},
                {"json": {"dataframe_records": [{"alcohol": 1.0}]}}):
        response = tabular_server.post("/invocations", **bad)
        assert response.status_code == 400 and response.json()["error_code"] == "BAD_REQUEST", response.text
    assert tabular_server.post("/invocations", json={"instances": [{}] * 65}).status_code == 413
    assert tabular_server.get("/ping").status_code == 200 and tabular_server.get("/version").text


def test_prometheus_metrics_count_requests_inputs_and_out_of_range_features(tabular_server, wine_rows):
    def scrape():
        text = tabular_server.get("/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = scrape()
    rows = records(wine_rows.head(3))
    rows[0]["alcohol"] = 1000.0  # far outside the training range
    assert tabular_server.post("/predict", json={"rows": rows}).status_code == 200
    assert tabular_server.post("/predict", json={"rows": "no"}).status_code == 422
    after = scrape()
    ok = 'torchyard_requests_total{method="POST",route="/predict",status="200"}'
    assert after[ok] == before.get(ok, 0) + 1
    bad = 'torchyard_requests_total{method="POST",route="/predict",status="422"}'
    assert after[bad] == before.get(bad, 0) + 1
    (inputs,) = [k for k in after if k.startswith("torchyard_predicted_inputs_total{")]
    assert after[inputs] >= before.get(inputs, 0) + 3
    assert any(k.startswith("torchyard_model_info{") and 'data_type="tabular"' in k for k in after)
    assert after['torchyard_feature_out_of_range_ratio{feature="alcohol"}'] > 0
    assert 'torchyard_request_duration_seconds_count{route="/predict"}' in after
    assert "torchyard_requests_in_flight" in after


def test_skew_gauge_is_the_share_of_values_outside_the_training_range():
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    numeric = [{"name": "a", "min": 0.0, "max": 10.0}, {"name": "b", "min": 0.0, "max": 1.0}, {"name": "old"}]
    metrics.observe_features(pd.DataFrame({"a": [1, 11, None, -1], "b": [0.5, 0.5, 0.5, 0.5], "old": [9] * 4}),
                             numeric)
    metrics.observe_features(pd.DataFrame({"a": [5.0], "b": [2.0], "old": [9]}), numeric)
    gauge = {s.labels["feature"]: s.value for s in metrics.skew.collect()[0].samples}
    assert gauge == {"a": pytest.approx(2 / 4), "b": pytest.approx(1 / 5)}  # nulls not counted; no range: no gauge


def test_registry_uri_alias_and_reload_without_restart(tabular_model, wine_rows, mlflow_client):
    model_fn, result = tabular_model
    name = result["model_name"]
    assert mlflow_client.get_registered_model(name).aliases == {"champion": 1}  # the first became champion
    server = Server("--model", name)  # a bare name means models:/<name>@champion
    try:
        info = server.get("/model").json()
        assert (info["uri"], info["version"], info["alias"]) == (f"models:/{name}@champion", "1", "champion")
        assert float(info["metrics"]["test_accuracy"]) > 0

        first = mlflow_client.get_model_version(name, "1")
        second = mlflow_client.create_model_version(name, first.source, run_id=first.run_id)
        mlflow_client.set_registered_model_alias(name, "champion", second.version)
        body = {"rows": records(wine_rows.head(5))}
        with ThreadPoolExecutor(4) as pool:  # requests keep being answered while the model is swapped
            futures = [pool.submit(server.post, "/predict", json=body) for _ in range(20)]
            reloaded = server.post("/reload").json()
            statuses = {f.result().status_code for f in futures}
        assert statuses == {200}
        assert reloaded == {"reloaded": True, "previous_version": "1", "version": "2"}
        assert server.get("/model").json()["version"] == "2"
        assert server.post("/predict", json=body).json()["model"]["version"] == "2"
    finally:
        server.stop()


def test_a_model_uri_that_does_not_exist_stops_at_startup():
    done = subprocess.run([sys.executable, "-m", "serving", "--model", "models:/no-such-model@champion", "--port",
                           str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: cannot serve models:/no-such-model@champion" in done.stderr
    assert "has no alias 'champion' in the MLflow registry" in done.stderr and "Traceback" not in done.stderr


def test_the_exported_onnx_file_alone_serves_the_same_predictions(tabular_model, wine_rows):
    from serving.app import load

    model_fn, _ = tabular_model
    rows = wine_rows.head(10).drop(columns="target")
    from_onnx = load(str(model_fn.with_suffix(".onnx"))).predictor.predict(rows)
    assert from_onnx.equals(Predictor.load(model_fn).predict(rows))


def test_text_server(tmp_path_factory):
    model_fn, _ = _train(tmp_path_factory, "reviews", data=DataConfig(source="sample:reviews", data_type="text"),
                         text=TextConfig(), export=ExportConfig(register_model=False))
    server = Server("--model", str(model_fn), "--max-batch", "8")
    try:
        texts = ["정말 재미있어요 😍", None, "너무 지루해요 👎", "<b>그냥</b> 그래요 https://x.co"]
        response = server.post("/predict", json={"texts": texts})
        assert response.status_code == 200, response.text
        direct = Predictor.load(model_fn).predict(pd.DataFrame({"text": texts}))
        assert [p["prediction"] for p in response.json()["predictions"]] == direct["prediction"].tolist()
        assert server.post("/predict", json={"texts": ["a"] * 9}).status_code == 413
        assert server.post("/predict", json={"texts": [3]}).status_code == 422
        assert server.get("/model").json()["input_schema"]["kind"] == "texts"
        scored = server.post("/invocations", json={"instances": texts})
        assert scored.status_code == 200, scored.text
        assert [p["prediction"] for p in scored.json()["predictions"]] == direct["prediction"].tolist()
    finally:
        assert "Traceback" not in server.stop()


def _png(colour, size=(12, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_server_takes_uploads_and_base64(tmp_path_factory):
    from tests.test_image_flow import COLOURS, colour_folder

    root = colour_folder(tmp_path_factory.mktemp("colours") / "c")
    model_fn, _ = _train(tmp_path_factory, "colours", data=DataConfig(source=str(root), data_type="image"),
                         image=ImageConfig(image_size=12, resize=14, workers=0), train=TrainerConfig(n_epochs=6),
                         model=ModelConfig(type="cnn", n_layers=2, conv_channels=[8, 16], hidden_size=16),
                         export=ExportConfig(register_model=False))
    server = Server("--model", str(model_fn), "--max-image-side", "64")
    try:
        files = [("files", ("red.png", _png(COLOURS["red"]), "image/png")),
                 ("files", ("blue.png", _png(COLOURS["blue"]), "image/png"))]
        uploaded = server.post("/predict", files=files)
        assert uploaded.status_code == 200, uploaded.text
        encoded = [base64.b64encode(_png(COLOURS["red"])).decode(), base64.b64encode(_png(COLOURS["blue"])).decode()]
        as_json = server.post("/predict", json={"images": encoded})
        assert as_json.status_code == 200, as_json.text
        assert uploaded.json()["predictions"] == as_json.json()["predictions"]
        direct = Predictor.load(model_fn).predict_images([_png(COLOURS["red"]), _png(COLOURS["blue"])],
                                                         names=["red.png", "blue.png"])
        assert [p["prediction"] for p in as_json.json()["predictions"]] == direct["prediction"].tolist()
        assert np.allclose([p["probabilities"]["red"] for p in as_json.json()["predictions"]], direct["proba_red"])

        not_image = server.post("/predict", files=[("files", ("notes.txt", b"hello", "text/plain"))])
        assert not_image.status_code == 422 and "notes.txt is not an image" in not_image.text
        huge = server.post("/predict", files=[("files", ("big.png", _png((0, 0, 0), (65, 10)), "image/png"))])
        assert huge.status_code == 413 and "big.png is 65x10" in huge.text
        assert server.post("/predict", json={"images": ["%%%"]}).status_code == 422
        scored = server.post("/invocations", json={"dataframe_records": [{"image": e} for e in encoded]})
        assert scored.status_code == 200, scored.text
        assert [p["prediction"] for p in scored.json()["predictions"]] == direct["prediction"].tolist()
        assert [p["path"] for p in scored.json()["predictions"]] == ["image[0]", "image[1]"]
    finally:
        assert "Traceback" not in server.stop()
