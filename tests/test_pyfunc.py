"""The registered MLflow model takes raw inputs: mlflow.pyfunc.load_model(uri).predict(raw) and `mlflow models serve`
answer what predict.py answers, for a table, texts and images (issue 16)."""
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest

import predict
from flows.config import ExportConfig
from flows.prefect_server import free_port
from preprocessing.config import DataConfig
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = TrainerConfig(n_epochs=4, batch_size=32, lr=0.01)
SERVE_TIMEOUT = 300  # seconds for `mlflow models serve` to answer /ping: CI machines are slow and shared


def train(data: DataConfig, **params) -> str:
    """train-flow on `data`, registered under a fresh name: the registered model's URI."""
    from flows.train_flow import train_flow

    name = f"pyfunc-{uuid.uuid4().hex[:8]}"
    params.setdefault("train", FAST)
    state = train_flow(data=data, experiment=name, export=ExportConfig(model_name=name), return_state=True, **params)
    assert state.is_completed(), state.message
    return f"models:/{name}/{state.result()['model_version']}"


def predict_py(tmp_path, uri: str, inputs: list[str]) -> pd.DataFrame:
    """predict.py's output for `inputs`, with the model file of the run that registered `uri`."""
    import mlflow.artifacts

    from serving.registry import parse
    from tasks import tracking

    name, version, _ = parse(uri)
    run_id = tracking.configure().get_model_version(name, version).run_id
    model_fn = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_file/model.pth",
                                                   dst_path=str(tmp_path / uuid.uuid4().hex[:6]))
    output = tmp_path / f"{uuid.uuid4().hex[:6]}.parquet"
    assert predict.main(["--model_fn", model_fn, "--input", *inputs, "--output", str(output)]) == 0
    return pd.read_parquet(output)


def load_fresh(uri: str, frame: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """mlflow.pyfunc.load_model(uri).predict(frame) in a fresh interpreter, run from outside the repository."""
    given, answered = tmp_path / f"in-{uuid.uuid4().hex[:6]}.pkl", tmp_path / f"out-{uuid.uuid4().hex[:6]}.pkl"
    frame.to_pickle(given)
    code = ("import sys, mlflow.pyfunc, pandas as pd\n"
            "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
            "model.predict(pd.read_pickle(sys.argv[2])).to_pickle(sys.argv[3])\n")
    done = subprocess.run([sys.executable, "-c", code, uri, str(given), str(answered)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_pickle(answered)


def same(answer: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(answer.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


def mixed_table(n=90) -> pd.DataFrame:
    """Integers, floats with nulls, a categorical with nulls and an id column the model does not use."""
    rng = np.random.default_rng(0)
    size = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n).astype(object)
    label = np.where(size + (colour == "red") > 0.5, "big", "small")
    size[::7] = np.nan
    colour[::9] = None
    return pd.DataFrame({"id": np.arange(n), "count": rng.integers(0, 50, size=n), "size": size, "colour": colour,
                         "label": label})


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    mixed_table().to_csv(folder / "rows.csv", index=False)
    uri = train(DataConfig(source=str(folder / "rows.csv"), target="label", ignore=["id"]))
    return uri, folder / "rows.csv"


def test_the_registered_table_model_takes_raw_rows(table_model, tmp_path, mlflow_client):
    import mlflow.models
    import mlflow.onnx
    import mlflow.pyfunc

    uri, csv = table_model
    info = mlflow.models.get_model_info(uri)
    columns = {c["name"]: c["type"] for c in info.signature.inputs.to_dict()}
    assert columns == {"count": "long", "size": "double", "colour": "string"}  # as the data has them
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["prediction", "proba_big", "proba_small"]
    assert info.saved_input_example_info is not None and {"onnx", "python_function"} <= set(info.flavors)
    assert mlflow.onnx.load_model(uri).graph.input[0].name == "features"  # the bare network stays available
    pinned = open(mlflow.pyfunc.get_model_dependencies(uri)).read()
    assert "onnxruntime==" in pinned and "torch==" in pinned

    raw = pd.read_csv(csv)  # the raw table as a user has it: ids, integers, nulls and the label included
    expected = predict_py(tmp_path, uri, [str(csv)])
    same(load_fresh(uri, raw, tmp_path), expected)
    model = mlflow.pyfunc.load_model(uri)
    same(model.predict(raw.drop(columns=["id", "label"])), expected)
    example = model.input_example  # the logged example: a few raw rows, answered like any others
    assert list(example.columns) == ["count", "size", "colour"] and len(model.predict(example)) == len(example)


def test_the_registered_text_model_takes_raw_texts(tmp_path):
    import mlflow.pyfunc

    uri = train(DataConfig(source="sample:reviews", data_type="text"))
    texts = pd.DataFrame({"text": ["an absolute delight, I loved it", "dull and far too long", None, "it was okay",
                                   "정말 재미있어요 😍"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    expected = predict_py(tmp_path, uri, [str(tmp_path / "texts.csv")])
    assert mlflow.pyfunc.load_model(uri).metadata.get_input_schema().input_names() == ["text"]
    same(load_fresh(uri, pd.read_csv(tmp_path / "texts.csv"), tmp_path), expected)


def test_the_registered_image_model_takes_files_or_their_bytes(tmp_path):
    import mlflow.pyfunc

    from tests.test_image_flow import SMALL, TINY_CNN, colour_folder

    root = colour_folder(tmp_path / "train", per_class=8)
    uri = train(DataConfig(source=str(root), data_type="image"), image=SMALL, model=TINY_CNN)
    new = colour_folder(tmp_path / "new", per_class=2)
    expected = predict_py(tmp_path, uri, [str(new)])
    paths = expected["path"].tolist()
    assert list(expected.columns[:2]) == ["path", "prediction"] and len(paths) == 6

    same(load_fresh(uri, pd.DataFrame({"path": paths}), tmp_path), expected)
    model = mlflow.pyfunc.load_model(uri)
    from_bytes = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in paths]}))
    assert from_bytes["path"].tolist() == [f"image[{i}]" for i in range(len(paths))]
    same(from_bytes.drop(columns="path"), expected.drop(columns="path"))
    example = model.input_example
    assert list(example.columns) == ["image"] and isinstance(example["image"].iloc[0], bytes)

    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    # what `mlflow models serve` does with a request body: parse by the schema (base64-decoding the binary column)
    body = {"dataframe_records": [{"image": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]}
    served = model.predict(infer_and_parse_data(body, model.metadata.get_input_schema()))
    same(served.drop(columns="path"), expected.drop(columns="path"))


def test_mlflow_models_serve_answers_raw_rows_like_predict_py(table_model, tmp_path):
    """`mlflow models serve` on the registered model, as anyone would run it: raw dataframe_records in over HTTP."""
    uri, csv = table_model
    raw = pd.read_csv(csv).head(12)
    raw.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict_py(tmp_path, uri, [str(tmp_path / "rows.csv")])
    records = json.loads(raw.drop(columns=["id", "label"]).to_json(orient="records"))  # nulls as JSON null
    assert any(r["size"] is None for r in records) and any(r["colour"] is None for r in records)

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    # the server runs `uvicorn` from PATH: the venv's, which `make test` (.venv/bin/python -m pytest) does not put there
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "no /ping answer: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"dataframe_records": records}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            served = pd.DataFrame(json.loads(answer.read())["predictions"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    assert served["prediction"].tolist() == expected["prediction"].tolist()
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    assert np.allclose(served[probabilities].to_numpy(), expected[probabilities].to_numpy(), rtol=0, atol=1e-12)
