"""Issue 16: dynamic micro-batching (serving/microbatch.py). Concurrent requests joined into one model call get
exactly their own rows back, in order, the answer each would get alone; a bad request fails alone; the batch sizes
are in /metrics.

The apps run in process (httpx's ASGITransport: one event loop, so the clients really are concurrent). Where a test
needs requests joined into one call, the batch is closed by size (--batch-max-rows = all the rows the test sends) and
its wait is set long: no assertion depends on timing."""
import asyncio
import base64
import io
import json
import re

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from serving.app import ServeSettings, create_app
from serving.microbatch import MicroBatcher, joined
from tests.test_serving_fast import MIXED, build, mixed

CLIENTS = 64
LONG_WAIT_S = 120.0  # a batch closed by size never waits for this; a failing test would, and then fail


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    return str(build(tmp_path_factory.mktemp("microbatch") / "m.pth", mixed(), **MIXED))


@pytest.fixture(scope="module")
def single(mixed_model):
    """The same model served without micro-batching: each request its own ONNX Runtime call."""
    return create_app(ServeSettings(model=mixed_model, batch_max_rows=0, max_in_flight=0))


def batched_app(model: str, max_rows: int, one_batch: bool = True):
    """An app that joins requests of fewer than `max_rows` inputs; with `one_batch`, a batch starts only once
    `max_rows` inputs wait (the tests send exactly that many), else as soon as the model is idle (no waiting)."""
    app = create_app(ServeSettings(model=model, batch_max_rows=max_rows, batch_wait_ms=0, max_in_flight=0))
    state = app.state.serving
    if one_batch:
        state.batcher(state.current).wait_s = LONG_WAIT_S
    return app


async def post_all(app, requests: list[tuple[str, dict]], together: bool = True) -> list[httpx.Response]:
    """Every request at once (together) or one after the other."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=None) as client:
        calls = [_call(client, path, body) for path, body in requests]
        if together:
            return list(await asyncio.gather(*calls))
        return [await call for call in calls]


def _call(client, path: str, body):
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


def answers(responses: list[httpx.Response]) -> list[tuple[int, bytes]]:
    return [(r.status_code, r.content) for r in responses]


def sample(app, name: str) -> float:
    return app.state.serving.metrics.registry.get_sample_value(name) or 0.0


def random_rows(rng: np.random.Generator, n: int) -> list[dict]:
    """Rows of the mixed model: floats (and nulls), integers, known, unseen and null categories, booleans."""
    colours = ["red", "green", "blue", "teal", "mauve", None]
    return [{"size": None if rng.random() < 0.1 else float(np.round(rng.normal() * 60, 3)),
             "count": int(rng.integers(-5, 50)), "colour": colours[int(rng.integers(len(colours)))],
             "grade": int(rng.integers(0, 5)), "flag": bool(rng.random() < 0.5)} for _ in range(n)]


def request_for(rng: np.random.Generator, rows: list[dict]) -> tuple[str, dict]:
    """/predict or /invocations (MLflow's records): both routes share the model's batcher."""
    return ("/predict", {"rows": rows}) if rng.random() < 0.5 else ("/invocations", {"dataframe_records": rows})


# ---------------------------------------------------------------- each caller its own rows, in order

@given(sizes=st.lists(st.integers(1, 9), min_size=CLIENTS, max_size=CLIENTS), seed=st.integers(0, 2 ** 32 - 1),
       one_batch=st.booleans(), max_rows=st.integers(2, 24))
@settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_64_concurrent_clients_each_get_their_own_rows_in_order(mixed_model, single, sizes, seed, one_batch,
                                                                 max_rows):
    """64 clients at once, each a random number of random rows: every answer is byte for byte the one the same
    request gets from a server without micro-batching. Either all 64 are joined into one ONNX Runtime call, or
    (batches of at most `max_rows` rows, no waiting) into however many calls the event loop's order makes; a request
    of `max_rows` rows or more is not batched."""
    rng = np.random.default_rng(seed)
    requests = [request_for(rng, random_rows(rng, size)) for size in sizes]
    limit = sum(sizes) if one_batch else max_rows
    app = batched_app(mixed_model, limit, one_batch)
    together = asyncio.run(post_all(app, requests))
    alone = asyncio.run(post_all(single, requests, together=False))
    assert [r.status_code for r in together] == [200] * CLIENTS
    assert answers(together) == answers(alone)
    batched = [size for size in sizes if size < limit]  # every input of these went through exactly one call
    assert sample(app, "torchyard_micro_batch_inputs_sum") == sum(batched)
    assert sample(app, "torchyard_micro_batch_requests_sum") == len(batched)
    if one_batch:
        assert sample(app, "torchyard_micro_batch_requests_count") == 1  # one call for all 64
    for response, (path, body) in zip(together, requests):  # and, plainly: its own rows, in its order
        predictions = response.json()["predictions"]
        assert len(predictions) == len(body.get("rows") or body.get("dataframe_records"))


def test_a_bad_request_fails_alone_and_the_others_in_its_batch_answer(mixed_model):
    """Requests refused before batching (NaN, a wrong type, too many rows) and requests whose outputs in the joined
    ONNX Runtime call are not finite get the answer they get alone (422, MLflow's 400 on /invocations); the 60
    others in the same call get 200 and their own rows."""
    rng = np.random.default_rng(7)
    marker = {"size": 4321.5, "count": 3, "colour": "red", "grade": 2, "flag": True}  # the model's output: NaN

    def poisoned(original, marked):
        def outputs(inputs):
            out = original(inputs).copy()
            out[(inputs == marked).all(axis=1)] = np.nan  # as a network overflowing on far-out inputs gives
            return out
        return outputs

    good = [request_for(rng, random_rows(rng, int(rng.integers(1, 6)))) for _ in range(CLIENTS - 4)]
    nan = b'{"rows": [{"size": NaN, "count": 1, "colour": null, "grade": 1, "flag": false}]}'
    bad = [(2, ("/predict", {"rows": [random_rows(rng, 1)[0], marker]})),
           (5, ("/invocations", {"dataframe_records": [marker]})),
           (11, ("/predict", nan)),
           (30, ("/predict", {"rows": [{**marker, "size": "abc"}]}))]
    requests = list(good)
    for position, request in bad:
        requests.insert(position, request)
    rows = sum(len(body.get("rows") or body.get("dataframe_records")) for _, body in good) + 3  # + the marked ones

    def app_with(**kwargs):
        app = batched_app(mixed_model, **kwargs) if kwargs else create_app(
            ServeSettings(model=mixed_model, batch_max_rows=0, max_in_flight=0))
        predictor, compiled = app.state.serving.current.predictor, app.state.serving.current.compiled
        marked = compiled.features(compiled.columns_of({"rows": [marker]}))[0][0]
        predictor.outputs = poisoned(predictor.outputs, marked)
        return app

    together = asyncio.run(post_all(app_with(max_rows=rows), requests))
    alone = asyncio.run(post_all(app_with(), requests, together=False))
    statuses = [r.status_code for r in together]
    assert [statuses[p] for p, _ in bad] == [422, 400, 422, 422]
    assert statuses.count(200) == CLIENTS - 4
    assert answers(together) == answers(alone)
    assert "data row 2 of the request" in together[2].text and "not a finite number" in together[2].text
    assert together[5].json()["error_code"] == "BAD_REQUEST"


# ---------------------------------------------------------------- texts and images

def text_model(path) -> str:
    from models import build_model
    from models.config import ModelConfig
    from preprocessing import text
    from preprocessing.config import TextConfig
    from preprocessing.samples import reviews

    frame = reviews(200, seed=3)
    target = {"name": "label", "task": "classification", "classes": sorted(frame["label"].unique()), "mean": 0.0,
              "std": 1.0}
    state, ids = text.fit(frame["text"], target, TextConfig(min_freq=1))
    return _save(path, "text", state, ModelConfig(type="text", encoder="mean", n_layers=1, hidden_size=8,
                                                  embedding_dim=8), state["vocab_size"], torch.from_numpy(ids[:4]))


def image_model(path) -> str:
    from models.config import ModelConfig
    from preprocessing import image
    from preprocessing.config import ImageConfig

    pixels = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 1), dtype=np.uint8)
    state = image.fit(pixels, ["dark", "light", "grey"], ImageConfig(image_size=8, channels=1), "label")
    return _save(path, "image", state, ModelConfig(type="cnn", n_layers=1, conv_channels=[4], hidden_size=8), 1,
                 torch.zeros(2, 1, 8, 8))


def _save(path, data_type: str, state: dict, config, input_size: int, example: torch.Tensor) -> str:
    """An untrained network for `state`, exported as train-flow exports it (TorchScript: the mean encoder has no
    reshapes), saved as a model file."""
    from models import build_model
    from serving.bundle import onnx_metadata, save_bundle
    from serving.export import INPUT_NAMES, export_fast, with_metadata
    from training.objectives import ServingModel, make_objective

    objective = make_objective("classification", len(state["target"]["classes"]))
    torch.manual_seed(0)
    network = build_model(config, input_size, objective.output_size)
    onnx_bytes, _ = export_fast(ServingModel(network, objective).eval(), example, "probabilities",
                                INPUT_NAMES[data_type], True)
    described = {"data_type": data_type, "task": "classification", "preprocessing": state, "metrics": {},
                 "run": {"run_id": "r"}}
    save_bundle(path, onnx_bytes=with_metadata(onnx_bytes, onnx_metadata(**described)), **described)
    return str(path)


def probabilities(response: httpx.Response) -> tuple[list, np.ndarray]:
    predictions = response.json()["predictions"]
    labels = [p["prediction"] for p in predictions]
    return labels, np.array([list(p["probabilities"].values()) if "probabilities" in p else
                             [v for k, v in p.items() if k.startswith("proba_")] for p in predictions])


def test_concurrent_texts_are_tokenized_and_predicted_together_each_getting_its_own(tmp_path):
    """Texts of different lengths (the joined call pads them to the longest; the model masks padding, so the
    probabilities agree to float rounding), nulls, /predict and /invocations, and /invocations records (a `str`
    column, joined only with texts of that dtype): each request gets what it gets alone."""
    from preprocessing.samples import reviews

    model = text_model(tmp_path / "text.pth")
    texts = reviews(120, seed=9)["text"].tolist()
    rng = np.random.default_rng(3)
    requests, total = [], 0
    for i in range(24):
        chosen = [texts[int(j)] for j in rng.integers(0, len(texts), int(rng.integers(1, 5)))]
        if i % 7 == 3:
            chosen[0] = None
        total += len(chosen)
        requests.append([("/predict", {"texts": chosen}), ("/invocations", {"instances": chosen}),
                         ("/invocations", {"dataframe_records": [{"text": t} for t in chosen]})][i % 3])
    together = asyncio.run(post_all(batched_app(model, total), requests))
    alone = asyncio.run(post_all(create_app(ServeSettings(model=model, batch_max_rows=0)), requests, together=False))
    for joint, own in zip(together, alone):
        assert joint.status_code == own.status_code == 200, joint.text
        (labels, p), (own_labels, own_p) = probabilities(joint), probabilities(own)
        assert labels == own_labels and np.allclose(p, own_p, rtol=0, atol=1e-6)


def png(value: int, side: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_that_fails_to_decode_in_a_joined_call_fails_only_its_request(tmp_path):
    """A truncated PNG passes the header check before batching and fails in the joined predict_images: the batch is
    predicted again request by request, so that request gets its own 422 naming the file and the others their
    answers."""
    model = image_model(tmp_path / "image.pth")
    files = [base64.b64encode(png(v)).decode() for v in range(0, 250, 10)]
    truncated = base64.b64encode(png(77, side=64)[:60]).decode()
    requests = [("/predict", {"images": files[i:i + 3]}) for i in range(0, 18, 3)]
    requests.insert(2, ("/predict", {"images": [files[0], truncated], "names": ["fine.png", "cut.png"]}))
    requests.append(("/invocations", {"instances": files[20:24]}))
    total = sum(len(body.get("images") or body.get("instances")) for _, body in requests)
    together = asyncio.run(post_all(batched_app(model, total), requests))
    alone = asyncio.run(post_all(create_app(ServeSettings(model=model, batch_max_rows=0)), requests, together=False))
    assert [r.status_code for r in together] == [200, 200, 422, 200, 200, 200, 200, 200]
    assert "cut.png" in together[2].text
    assert answers(together) == answers(alone)


# ---------------------------------------------------------------- /metrics

def test_metrics_export_the_micro_batch_sizes_and_they_move(mixed_model):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(ServeSettings(model=mixed_model)))  # the defaults: micro-batching on
    before = client.get("/metrics").text
    assert "# TYPE torchyard_micro_batch_inputs histogram" in before
    assert "# TYPE torchyard_micro_batch_requests histogram" in before
    assert "torchyard_micro_batch_inputs_count 0.0" in before
    row = {"size": 1.0, "count": 3, "colour": "red", "grade": 2, "flag": True}
    assert client.post("/predict", json={"rows": [row] * 3}).status_code == 200
    assert client.post("/invocations", json={"dataframe_records": [row] * 5}).status_code == 200
    after = client.get("/metrics").text
    assert "torchyard_micro_batch_inputs_count 2.0" in after and "torchyard_micro_batch_inputs_sum 8.0" in after
    assert 'torchyard_micro_batch_inputs_bucket{le="4.0"} 1.0' in after
    assert 'torchyard_micro_batch_inputs_bucket{le="8.0"} 2.0' in after
    assert "torchyard_micro_batch_requests_count 2.0" in after and "torchyard_micro_batch_requests_sum 2.0" in after

    off = TestClient(create_app(ServeSettings(model=mixed_model, batch_max_rows=0)))
    assert off.post("/predict", json={"rows": [row]}).status_code == 200
    assert re.search(r"^torchyard_micro_batch_inputs_count 0\.0$", off.get("/metrics").text, re.M)


# ---------------------------------------------------------------- the batcher itself

def run_batcher(batcher: MicroBatcher, submissions: list[tuple], cancel: int | None = None) -> list:
    async def scenario():
        tasks = [asyncio.create_task(batcher.submit(*s)) for s in submissions]
        if cancel is not None:
            await asyncio.sleep(0)  # every task has submitted
            tasks[cancel].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(scenario())


def test_batches_join_by_key_up_to_max_rows_and_a_failed_call_is_made_again_per_request():
    calls = []

    def run(items):
        calls.append([list(item) for item in items])
        return joined(items, [len(i) for i in items], lambda parts: _doubled([v for p in parts for v in p]),
                      lambda out, start, stop: out[start:stop])

    batcher = MicroBatcher(run, wait_s=LONG_WAIT_S, max_rows=9)
    assert batcher.takes(8) and not batcher.takes(9) and not batcher.takes(0)
    results = run_batcher(batcher, [([1, 2], 2, "a"), ([3], 1, "b"), ([4, 5, 6], 3, "a"), (["bad"], 1, "a"),
                                    ([7, 8], 2, "a")])
    # 9 inputs waiting: the "a" requests first (as many as fit), then the "b" one; the joined call with "bad" in it
    # failed, so each of its requests was called again on its own
    assert results[0] == [2, 4] and results[2] == [8, 10, 12] and results[4] == [14, 16]
    assert isinstance(results[3], ValueError)
    assert results[1] == [6] and calls == [[[1, 2], [4, 5, 6], ["bad"], [7, 8]], [[3]]]


def test_a_caller_that_goes_away_is_dropped_and_the_others_are_answered():
    seen = []

    def run(items):
        seen.append(list(items))
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, wait_s=0, max_rows=100)
    results = run_batcher(batcher, [(1, 1), (2, 1), (3, 1)], cancel=1)
    assert results[0] == 10 and results[2] == 30 and isinstance(results[1], asyncio.CancelledError)
    assert seen == [[1, 3]]


def test_serve_py_flags_and_defaults():
    import serve
    from serving import app

    args = serve.parse_args(["--batch-max-rows", "16", "--batch-wait-ms", "2.5", "--onnx-threads", "0"])
    assert (args.batch_max_rows, args.batch_wait_ms, args.onnx_threads) == (16, 2.5, 0)
    defaults = serve.parse_args([])
    assert (defaults.batch_max_rows, defaults.batch_wait_ms, defaults.onnx_threads) == (
        app.BATCH_MAX_ROWS, app.BATCH_WAIT_MS, app.ONNX_THREADS)
    settings = ServeSettings(model="m")
    assert (settings.batch_max_rows, settings.batch_wait_ms, settings.onnx_threads) == (
        app.BATCH_MAX_ROWS, app.BATCH_WAIT_MS, app.ONNX_THREADS)
    for bad in (["--batch-max-rows", "-1"], ["--batch-wait-ms", "-1"], ["--batch-wait-ms", "5000"],
                ["--onnx-threads", "-1"]):
        assert serve.main(["--model", "m.pth", *bad]) == 2


def test_the_server_runs_onnx_runtime_on_the_threads_it_is_given(mixed_model):
    """One intra-op thread by default (--onnx-threads), which does not spin; predict.py keeps ONNX Runtime's
    defaults."""
    from serving.inference import Predictor

    def options(predictor):
        return predictor.session.get_session_options()

    served = create_app(ServeSettings(model=mixed_model)).state.serving.current.predictor
    assert options(served).intra_op_num_threads == 1
    assert options(served).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    wide = create_app(ServeSettings(model=mixed_model, onnx_threads=0)).state.serving.current.predictor
    assert options(wide).intra_op_num_threads == 0
    assert options(Predictor.load(mixed_model)).intra_op_num_threads == 0


def _doubled(values: list) -> list:
    if any(not isinstance(v, int) for v in values):
        raise ValueError("not a number")
    return [2 * v for v in values]
