"""Issue 16 (speed) and issue 14 (serving under load): the tabular fast path gives exactly what the Predictor path
gives; too many requests in flight are answered 503 with Retry-After; multipart uploads parse as Starlette parses
them; `--workers N` starts N server processes.

Models are built directly (the tabular transform fitted, an untrained MLP, the fast ONNX export), no Prefect."""
import asyncio
import json
import re
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from models import build_model
from models.config import ModelConfig
from preprocessing import tabular
from preprocessing.config import TabularConfig
from preprocessing.sources import load_sample
from preprocessing.validate import TableSchema
from serving.app import ServeSettings, _respond, create_app, load, rows_request
from serving.bundle import onnx_metadata, save_bundle
from serving.export import export_fast, with_metadata
from serving.metrics import ServingMetrics
from tests.test_serving import Server
from training.objectives import ServingModel, make_objective


def build(path, frame, target, numeric, categories, task="classification", **config):
    """A tabular model file for `frame` (untrained network: parity, not accuracy, is tested here)."""
    classes = sorted(frame[target].unique().tolist()) if task == "classification" else []
    schema = TableSchema(target, task, numeric, categories, classes, len(frame), [])
    state = tabular.fit(frame, schema, TabularConfig(**config))
    transform = tabular.TabularTransform(state)
    objective = make_objective(task, len(classes) if classes else 1)
    torch.manual_seed(0)
    network = build_model(ModelConfig(type="mlp", n_layers=2, hidden_size=8), transform.n_features,
                          objective.output_size)
    onnx_bytes, _ = export_fast(ServingModel(network, objective).eval(), torch.zeros(4, transform.n_features),
                                "probabilities" if task == "classification" else "prediction", "features", True)
    described = {"data_type": "tabular", "task": task, "preprocessing": state, "metrics": {}, "run": {"run_id": "r"}}
    save_bundle(path, onnx_bytes=with_metadata(onnx_bytes, onnx_metadata(**described)), **described)
    return path


def mixed(n=120, seed=0) -> pd.DataFrame:
    """Floats with nulls, integers, text categories with nulls, integer and boolean categories."""
    rng = np.random.default_rng(seed)
    size = rng.normal(size=n) * 50
    size[::7] = np.nan
    colour = rng.choice(["red", "green", "blue", "teal"], size=n).astype(object)
    colour[::9] = None
    return pd.DataFrame({"size": size, "count": rng.integers(0, 40, size=n),
                         "colour": colour, "grade": rng.integers(1, 4, size=n), "flag": rng.random(n) > 0.5,
                         "label": np.where(size > 0, "big", np.where(colour == "red", "red", "small"))})


MIXED = dict(target="label", numeric=["size", "count"], categories=["colour", "grade", "flag"])
VARIANTS = {
    "wine": lambda p: build(p, load_sample("wine"), "target", [c for c in load_sample("wine") if c != "target"], []),
    "diabetes (regression)": lambda p: build(p, load_sample("diabetes"), "target",
                                             [c for c in load_sample("diabetes") if c != "target"], [],
                                             task="regression"),
    "mixed, onehot, median": lambda p: build(p, mixed(), **MIXED),
    "mixed, index codes, mean, most frequent": lambda p: build(p, mixed(), **MIXED, categorical="index",
                                                               numeric_impute="mean",
                                                               categorical_impute="most_frequent", scaler="minmax"),
    "mixed, few categories, robust": lambda p: build(p, mixed(), **MIXED, max_categories=2, scaler="robust",
                                                     numeric_impute="constant", fill_value=-3.5),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request, tmp_path_factory):
    path = VARIANTS[request.param](tmp_path_factory.mktemp("fast") / "m.pth")
    return load(str(path))


def predictor_path(loaded, body: dict) -> tuple[np.ndarray, dict]:
    """What the Predictor path makes of a /predict body: the features and the response body."""
    validated = rows_request(loaded.schema).model_validate(body)
    frame = pd.DataFrame([row.model_dump(by_alias=True) for row in validated.rows],
                         columns=[c["name"] for c in loaded.schema["columns"]])
    response = _respond(loaded, loaded.predictor.predict(frame, "the request"), ServingMetrics())
    return loaded.predictor.transform.features(frame, "the request"), json.loads(response.body)


def scoring_paths(loaded, records: list[dict]) -> tuple[list, list]:
    """/invocations of `records` (dataframe_records) on the fast path and as serving/scoring.py answers it."""
    from serving import scoring

    compiled = loaded.compiled
    for key in ("dataframe_records", "instances", "inputs"):
        assert compiled.scoring_columns_of({key: records, "params": {}}) is not None
    made = compiled.features(compiled.scoring_columns_of({"dataframe_records": json.loads(json.dumps(records))}))
    assert made is not None
    frame = scoring.parse(json.dumps({"dataframe_records": records}).encode(), None, loaded.schema, 10_000)
    expected = scoring.answer(loaded.predictor.predict(frame, "the request"))["predictions"]
    return loaded.compiled.records(loaded.compiled.outputs(made[0])), expected


def fast_path(loaded, body: dict) -> tuple[np.ndarray, list]:
    compiled = loaded.compiled
    columns = compiled.columns_of(json.loads(json.dumps(body)))
    assert columns is not None
    made = compiled.features(columns)
    assert made is not None, "the fast path refused a plain valid request"
    outputs = compiled.outputs(made[0])
    assert outputs is not None
    return made[0], compiled.predictions(outputs)


def value_strategy(column: dict, frame_values: list):
    if column["type"] == "number":
        return st.one_of(st.none(), st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False),
                         st.sampled_from(frame_values))
    known = [c for c in column["categories"] if not c.startswith("__")]
    return st.one_of(st.none(), st.sampled_from(known or ["x"]), st.text(max_size=5), st.integers(-5, 5),
                     st.booleans())


def rows_strategy(loaded, size):
    columns = loaded.schema["columns"]
    row = st.fixed_dictionaries({c["name"]: value_strategy(c, [0.5, -2.0, 13.25]) for c in columns})
    return st.lists(row, min_size=1, max_size=size)


def test_fast_path_equals_the_predictor_path_on_the_samples(model):
    columns = [c["name"] for c in model.schema["columns"]]
    source = load_sample("wine") if "alcohol" in columns else load_sample("diabetes") if "bmi" in columns else mixed(
        60, seed=5)
    body = {"rows": json.loads(source[columns].to_json(orient="records"))}  # nulls as JSON null
    features, predictions = fast_path(model, body)
    expected_features, expected = predictor_path(model, body)
    assert np.array_equal(features, expected_features)  # bit for bit, so ONNX Runtime answers the same
    assert predictions == expected["predictions"]
    answered, expected = scoring_paths(model, body["rows"])  # /invocations: MLflow's protocol, same rows
    assert answered == expected


@given(data=st.data())
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fast_path_equals_the_predictor_path_on_any_valid_rows(model, data):
    """Random valid requests: numbers, integers and nulls in numeric columns; known, unseen, integer, boolean and
    null categories (a column of integers and nulls is rendered as pandas renders it: '3.0')."""
    body = {"rows": data.draw(rows_strategy(model, 12))}
    features, predictions = fast_path(model, body)
    expected_features, expected = predictor_path(model, body)
    assert np.array_equal(features, expected_features)
    assert predictions == expected["predictions"]
    answered, expected = scoring_paths(model, body["rows"])
    assert answered == expected


def test_requests_the_fast_path_does_not_take_get_the_predictor_paths_answer(tmp_path):
    loaded = load(str(build(tmp_path / "m.pth", mixed(), **MIXED)))
    compiled = loaded.compiled
    row = {"size": 1.0, "count": 3, "colour": "red", "grade": 2, "flag": True}
    for body in ({"rows": [{**row, "size": "1.5"}]},  # a number as text: pydantic converts it
                 {"rows": [{**row, "colour": 2.0}]},  # a float category: pydantic decides
                 {"rows": [{**row, "size": True}]},
                 {"rows": [{k: v for k, v in row.items() if k != "size"}]}, {"rows": [{**row, "x": 1}]},
                 {"rows": []}, {"rows": [row], "more": 1}, [row]):
        columns = compiled.columns_of(body)
        assert columns is None or compiled.features(columns) is None, body
    assert compiled.features(compiled.columns_of({"rows": [{**row, "size": 1e308}]})) is None  # overflows scaled
    for body in ({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}},
                 {"dataframe_records": [row], "instances": [row]}, {"dataframe_records": [row], "other": 1},
                 {"instances": {k: [v] for k, v in row.items()}}, {"inputs": [{**row, "extra": 1}]}):
        assert compiled.scoring_columns_of(body) is None, body

    client = TestClient(create_app(ServeSettings(model=str(tmp_path / "m.pth"))))
    as_text = client.post("/predict", json={"rows": [{**row, "size": "1.5"}]})
    assert as_text.status_code == 200
    assert as_text.json() == client.post("/predict", json={"rows": [{**row, "size": 1.5}]}).json()
    huge = client.post("/predict", json={"rows": [row, {**row, "size": 1e308}]})
    assert huge.status_code == 422 and "column 'size' in the request" in huge.text and "data row 2" in huge.text
    nan = client.post("/predict", content=b'{"rows": [{"size": NaN, "count": 1, "colour": null, "grade": 1, '
                                          b'"flag": false}]}', headers={"content-type": "application/json"})
    assert nan.status_code == 422 and "finite" in nan.text


def test_the_fast_path_counts_metrics_like_the_predictor_path(tmp_path):
    client = TestClient(create_app(ServeSettings(model=str(build(tmp_path / "m.pth", mixed(), **MIXED)))))
    row = {"size": 1e5, "count": 3, "colour": "red", "grade": 2, "flag": True}
    assert client.post("/predict", json={"rows": [row, {**row, "size": None}, {**row, "size": 0.0}]}).status_code == 200
    text = client.get("/metrics").text
    assert re.search(r'torchyard_predicted_inputs_total\{[^}]*\} 3\.0', text)
    assert 'torchyard_feature_out_of_range_ratio{feature="size"} 0.5' in text  # 1 of 2 present values outside


# ---------------------------------------------------------------- 503 + Retry-After when too many are in flight

def test_requests_over_the_in_flight_limit_get_503_with_retry_after(tmp_path):
    path = build(tmp_path / "m.pth", mixed(), **MIXED)
    # no micro-batching: the two held requests must each be inside their own ONNX Runtime call
    app = create_app(ServeSettings(model=str(path), max_in_flight=2, retry_after=3, inline_bytes=0, batch_max_rows=0))
    predictor = app.state.serving.current.predictor
    release, entered = threading.Event(), threading.Semaphore(0)
    original = predictor.outputs

    def held(inputs):
        entered.release()
        assert release.wait(30)
        return original(inputs)

    predictor.outputs = held
    row = {"size": 1.0, "count": 3, "colour": "red", "grade": 2, "flag": True}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            held_requests = [asyncio.create_task(client.post("/predict", json={"rows": [row]})) for _ in range(2)]
            for _ in range(2):  # both are inside ONNX Runtime (on worker threads) now
                while not entered.acquire(blocking=False):
                    await asyncio.sleep(0.01)
            refused = await client.post("/predict", json={"rows": [row]})
            scored = await client.post("/invocations", json={"dataframe_records": [row]})
            health = await client.get("/health")
            metrics = await client.get("/metrics")
            release.set()
            answered = await asyncio.gather(*held_requests)
            after = await client.post("/predict", json={"rows": [row]})
            return refused, scored, health, metrics, answered, after

    refused, scored, health, metrics, answered, after = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert "--max-in-flight" in refused.json()["detail"]
    assert scored.status_code == 503  # /invocations shares the limit
    assert health.status_code == 200 and metrics.status_code == 200  # never refused
    assert [r.status_code for r in answered] == [200, 200] and after.status_code == 200
    assert 'torchyard_requests_total{method="POST",route="/predict",status="503"}' in metrics.text


def test_no_limit_with_max_in_flight_zero(tmp_path):
    from serving.app import InFlightLimit

    path = build(tmp_path / "m.pth", mixed(), **MIXED)
    app = create_app(ServeSettings(model=str(path), max_in_flight=0))
    assert TestClient(app).post("/predict", json={"rows": [{"size": 1.0, "count": 3, "colour": "red", "grade": 2,
                                                            "flag": True}]}).status_code == 200
    assert ServeSettings(model="m").max_in_flight == 64 and InFlightLimit(None, 0).limit == 0


# ---------------------------------------------------------------- multipart parsed off the event loop

def test_multipart_files_parse_as_starlette_parses_them():
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser
    from starlette.exceptions import HTTPException

    from serving import multipart

    files = [("files", ("a.png", b"\x89PNG\r\n\r\n--x\r\nbinary", "image/png")), ("other", (None, b"text")),
             ("files", ("", b"no name", "image/png")), ("files", ("b c.jpg", bytes(range(256)) * 40, "image/jpeg"))]
    request = httpx.Request("POST", "http://t/", files=files, data={"files": "a plain field"})
    body, content_type = request.read(), request.headers["content-type"]

    async def starlette_parse():
        async def stream():
            yield body

        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        return [((u.filename or None), await u.read()) for u in form.getlist("files") if hasattr(u, "read")]

    expected = asyncio.run(starlette_parse())
    assert multipart.files(body, content_type, "files", max_files=10) == expected
    assert [name for name, _ in expected] == ["a.png", "b c.jpg"]  # httpx sends an empty file name as a field
    with pytest.raises(HTTPException, match="Too many files"):
        multipart.files(body, content_type, "files", max_files=1)
    with pytest.raises(HTTPException, match="Missing boundary"):
        multipart.files(body, "multipart/form-data", "files", max_files=10)


# ---------------------------------------------------------------- --workers N

def test_workers_start_several_processes_that_all_answer(tmp_path):
    import os

    path = build(tmp_path / "m.pth", mixed(), **MIXED)
    server = Server("--model", str(path), "--workers", "2", "--max-in-flight", "8")
    log, fd = "", server.process.stdout.fileno()
    os.set_blocking(fd, False)
    try:
        deadline = time.monotonic() + 300  # the second worker may still be loading its copy of the model
        while len(set(re.findall(r"Started server process \[(\d+)\]", log))) < 2:
            assert time.monotonic() < deadline and server.process.poll() is None, log
            try:
                log += os.read(fd, 1 << 16).decode(errors="replace")
            except BlockingIOError:
                time.sleep(0.2)
        row = {"size": 1.0, "count": 3, "colour": "red", "grade": 2, "flag": True}
        statuses = [httpx.post(f"{server.url}/predict", json={"rows": [row]}, timeout=30).status_code
                    for _ in range(20)]  # a connection each, spread over the workers by the kernel
        assert set(statuses) == {200}
    finally:
        os.set_blocking(fd, True)
        log += server.stop()
    assert "Traceback" not in log, log
    assert "with 2 worker processes" in log


def test_worker_connections_get_tcp_nodelay():
    """uvicorn's --workers socket has no protocol number, so asyncio leaves Nagle's algorithm on and responses
    waited ~40 ms for the client's delayed ACK; serving.nodelay sets TCP_NODELAY on every connection."""
    import socket
    from unittest import mock

    from serving.nodelay import NoDelayProtocol, _Protocol

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        transport = mock.Mock()
        transport.get_extra_info.return_value = accepted
        with mock.patch.object(_Protocol, "connection_made") as base:
            NoDelayProtocol.connection_made(mock.Mock(spec=NoDelayProtocol), transport)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0 and base.called
    finally:
        for s in (accepted, client, listener):
            s.close()
