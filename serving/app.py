"""The REST API: FastAPI over serving.inference.Predictor (ONNX Runtime), the same inference path as predict.py.

    POST /predict   tabular rows as JSON records, texts as a list of strings, images as multipart uploads or
                    base64; predictions with class probabilities, in input order
    GET  /health    liveness and whether a model is loaded
    GET  /model     name, version, alias, run id, input schema, classes, metrics it was registered with
    POST /reload    load the reference again (a new champion) without a restart; requests in flight finish on the
                    model they started with

The request model of /predict is built from the loaded model's input schema, so the OpenAPI document says exactly
what to send. Every error is a 4xx with a message; nothing leaks a traceback.

Bounded work per request: the body's size is checked as it arrives (max_body_bytes), the number of rows, texts or
images before any of them is validated (max_batch), and an error body lists at most MAX_ERRORS problems. Decoding
(multipart uploads too), validation, preprocessing and ONNX Runtime run on worker threads, so /health answers while
a large request is worked on; only a tabular body of at most inline_bytes is answered on the event loop, by the fast
path (well under a millisecond: cheaper than the hop to a thread). At most max_in_flight prediction requests are
worked on at once; more are answered 503 with Retry-After at once, instead of queueing without bound. A model
replaces the served one only after a complete check (serving.inference.load_checked).

Tabular /predict and /invocations take the fast path first (serving/compiled.py: rows validated column by column,
preprocessing compiled to numpy, no pandas, orjson); a request it does not take (invalid, or unusual) goes through
the pydantic request model and the Predictor: the two paths give the same predictions and the same errors.

Micro-batching (serving/microbatch.py, --batch-max-rows, --batch-wait-ms): each prediction request is checked on its
own, then joined with the requests waiting at that moment into one model call; each gets exactly its own rows back,
and a request whose part of the joined call fails gets the answer it would get alone. /predict and /invocations of
one model share its batcher. With the defaults nothing waits: requests that arrive while a call runs are joined
into the next one.
"""
import base64
import binascii
import hmac
import email.message
import functools
import io
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from preprocessing.errors import TorchyardError
from serving.compiled import CompiledTable
from serving.inference import Predictor, load_checked
from serving.microbatch import MicroBatcher, joined
from serving import multipart, scoring
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.registry import ModelRef, Registry, current_version, registry_uri, resolve

log = logging.getLogger("torchyard.serving")
MAX_ERRORS = 20  # validation errors listed in one response; the rest are counted
BATCH_MAX_ROWS = 64  # micro-batching's defaults (python -m serving --batch-max-rows, --batch-wait-ms)
BATCH_WAIT_MS = 0.0
ONNX_THREADS = 1  # python -m serving --onnx-threads
INLINE_BATCH_ROWS = 64  # a tabular batch of at most this many rows runs on the event loop (with inline_bytes > 0)


class ServeSettings(BaseModel):
    """The server's settings: each is the python -m serving flag of the same name (serve.py's --help describes them),
    but `loopback`, which serve.py sets from --host. A request over one of the limits is answered 413."""
    model_config = ConfigDict(extra="forbid")

    model: str  # models:/<name>@<alias>, models:/<name>/<version>, a registered name (its @champion), a .pth/.onnx
    max_body_bytes: int = Field(10 * 2 ** 20, ge=1)
    max_batch: int = Field(1024, ge=1)  # rows, texts or images, counted before any of them is validated
    max_image_side: int = Field(4096, ge=1)
    reload_interval: float = Field(0.0, ge=0)  # seconds between checks of the registry alias (0: only POST /reload)
    api_key: str | None = Field(None, repr=False)  # without one, /reload answers only on a loopback address
    loopback: bool = True  # the server listens on a loopback address only
    protect_predict: bool = False  # /predict and /invocations need the api_key too
    max_in_flight: int = Field(64, ge=0)  # per server process; more are answered 503 with Retry-After (0: no limit)
    retry_after: int = Field(1, ge=0)
    inline_bytes: int = Field(16384, ge=0)
    batch_max_rows: int = Field(BATCH_MAX_ROWS, ge=0)
    onnx_threads: int = Field(ONNX_THREADS, ge=0)
    batch_wait_ms: float = Field(BATCH_WAIT_MS, ge=0, le=1000)


class TooLarge(TorchyardError):
    """A request over one of the configured limits (413)."""


class Unauthorized(TorchyardError):
    """A missing or wrong api key (401), or an admin call the server does not take without one (403)."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


def _authorize(request: Request, settings: ServeSettings, admin: bool = False) -> None:
    """Admin calls (/reload) need the api key when one is set, and are refused on a non-loopback address without
    one; predictions need it only with protect_predict. Compared in constant time."""
    if not settings.api_key:
        if admin and not settings.loopback:
            raise Unauthorized("/reload is disabled on a non-loopback address without an api key: start the server "
                               "with --api-key (or TORCHYARD_API_KEY)", status=403)
        return
    if not admin and not settings.protect_predict:
        return
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
        raise Unauthorized("a valid api key is needed (Authorization: Bearer <key>, or X-API-Key: <key>)")


@dataclass
class Loaded:
    predictor: Predictor
    ref: ModelRef
    schema: dict
    _batcher: MicroBatcher | None = None

    @functools.cached_property
    def compiled(self) -> CompiledTable:
        """The fast path of a tabular model (serving/compiled.py), built on first use."""
        return CompiledTable(self.predictor)


def load(reference: str, registry: Registry | None = None, threads: int = ONNX_THREADS) -> Loaded:
    """The model at `reference`; registry references need `registry` (python -m serving passes MLflow's). `threads`:
    ONNX Runtime's intra-op threads (ServeSettings.onnx_threads)."""
    bundle, ref = resolve(reference, registry)
    source = reference if registry_uri(reference) is None else f"{ref.uri} (version {ref.version})"
    # everything checked, one prediction made, before it is served; ONNX Runtime's threads do not spin when idle
    predictor = load_checked(bundle, source, threads=threads, spinning=False)
    return Loaded(predictor, ref, predictor.kind.input_schema(predictor.transform))


# ---------------------------------------------------------------- request and response models

class Prediction(BaseModel):
    prediction: str | int | float | bool
    probabilities: dict[str, float] | None = Field(None, description="Per class, for classification.")


class ModelBrief(BaseModel):
    name: str
    version: str | None


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelBrief


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str | None] = Field(min_length=1, description="Raw texts; null is treated as an empty text.")


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, description="Base64-encoded image files (PNG, JPEG, BMP, WebP, ...).")
    names: list[str] | None = Field(None, description="Optional names, echoed in error messages.")


Number = Annotated[float, Field(allow_inf_nan=False)]


def rows_request(schema: dict) -> type[BaseModel]:
    """The typed request for a tabular model: every training column, null allowed (imputed as in training),
    missing or extra fields refused, NaN and infinity refused."""
    fields = {f"c{i}": (Number | None if column["type"] == "number" else str | int | bool | None,
                        Field(..., alias=column["name"])) for i, column in enumerate(schema["columns"])}
    row = create_model("Row", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)
    return create_model("RowsRequest", __config__=ConfigDict(extra="forbid"),
                        rows=(list[row], Field(min_length=1, description="One record per row to predict.")))


# ---------------------------------------------------------------- the app

class _State:
    def __init__(self, settings: ServeSettings, loaded: Loaded, registry: Registry | None):
        self.settings, self.current, self.registry = settings, loaded, registry
        self.lock = threading.Lock()  # one reload at a time; requests never wait on it
        self.metrics = ServingMetrics()
        self._record_model()

    def batcher(self, current: Loaded) -> MicroBatcher | None:
        """The micro-batcher of `current` (each loaded model has its own: requests of a model being replaced by a
        reload are never joined with the new one's), or None when micro-batching is off."""
        if not self.settings.batch_max_rows:
            return None
        if current._batcher is None:
            tiny = current.schema["kind"] == "rows" and self.settings.inline_bytes  # tiny ONNX Runtime calls inline
            inline = (lambda rows: rows <= INLINE_BATCH_ROWS) if tiny else None
            current._batcher = MicroBatcher(functools.partial(BATCH_RUNS[current.schema["kind"]], current),
                                            self.settings.batch_wait_ms / 1000, self.settings.batch_max_rows,
                                            observe=self.metrics.batched, inline=inline)
        return current._batcher

    def _record_model(self) -> None:
        ref = self.current.ref
        self.metrics.serving(ref.name, ref.version, ref.alias, self.current.predictor.data_type)

    def reload(self) -> dict:
        try:
            result = self._reload()
        except (ReloadRefused, SchemaChanged):
            self.metrics.reloads.labels("refused").inc()
            raise
        except Exception:
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("reloaded" if result["reloaded"] else "unchanged").inc()
        return result

    def _reload(self) -> dict:
        with self.lock:
            previous = self.current
            try:
                fresh = load(self.settings.model, self.registry, self.settings.onnx_threads)
            except TorchyardError as exc:  # a model that fails its check never replaces the served one
                raise ReloadRefused(f"not reloaded, still serving version {previous.ref.version or 'from the file'}"
                                    f" as loaded before: {exc}") from None
            if fresh.schema != previous.schema:
                raise SchemaChanged(f"{fresh.ref.uri} version {fresh.ref.version} takes different inputs than the "
                                    "model being served; restart the server to serve it")
            self.current = fresh  # requests in flight keep their reference to the previous model
            self._record_model()
        changed = (fresh.ref.version, fresh.ref.run_id) != (previous.ref.version, previous.ref.run_id)
        if changed:
            log.info(f"now serving {fresh.ref.uri} version {fresh.ref.version} (was {previous.ref.version})")
        return {"reloaded": changed, "previous_version": previous.ref.version, "version": fresh.ref.version}


class SchemaChanged(TorchyardError):
    """The new model takes different inputs (409)."""


class ReloadRefused(TorchyardError):
    """The model at the reference failed its check; the served one stays (409)."""


def create_app(settings: ServeSettings, loaded: Loaded | None = None, registry: Registry | None = None) -> FastAPI:
    loaded = loaded or load(settings.model, registry, settings.onnx_threads)
    state = _State(settings, loaded, registry)
    app = FastAPI(title="torchyard model server", version="1",
                  description=f"Serves {loaded.ref.uri} ({loaded.predictor.data_type}, "
                              f"{loaded.predictor.bundle.task}).")
    app.state.serving = state
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight, retry_after=settings.retry_after)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: it also counts the 413s
    _error_handlers(app)
    ROUTES[loaded.schema["kind"]](app, state, settings, loaded.schema)  # first: the route matched most often

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/health")
    async def health() -> dict:  # on the event loop, which no request's work occupies: it answers at once
        ref = state.current.ref
        return {"status": "ok", "model_loaded": state.current is not None, "model": ref.name, "version": ref.version}

    @app.get("/model")
    def model() -> dict:
        current = state.current
        ref = current.ref.to_dict()
        if registry_uri(ref["uri"]) is None:  # a file: its name, not where it lies on this machine
            ref["uri"] = ref["uri"].replace("\\", "/").rsplit("/", 1)[-1]
        return {**ref, "data_type": current.predictor.data_type,
                "task": current.predictor.bundle.task, "classes": current.predictor.classes,
                "input_schema": current.schema,
                "limits": settings.model_dump(include={"max_body_bytes", "max_batch", "max_image_side",
                                                       "reload_interval"})}

    @app.post("/reload")
    def reload(request: Request) -> dict:
        _authorize(request, settings, admin=True)
        return state.reload()

    @app.get("/ping", include_in_schema=False)
    async def ping() -> Response:  # MLflow's liveness check, for clients and probes written for it
        return Response("\n", media_type="application/json")

    @app.get("/version", include_in_schema=False)
    async def version() -> Response:
        return Response(_package_version(), media_type="text/plain")

    @app.post("/invocations", openapi_extra=_scoring_body())
    async def invocations(request: Request) -> Response:
        current, raw, content_type, batcher = await _incoming(request, state)
        if batcher is not None and current.schema["kind"] != "rows":
            return await _invoke_batched(state, batcher, current, raw, content_type)
        try:
            response = await _fast_response(state, batcher, current, raw, content_type, "scoring", _records)
        except TorchyardError:  # _invoke answers it in MLflow's error shape
            response = None
        if response is None:
            response = await run_in_threadpool(_invoke, state, current, raw, content_type)
        return response

    if settings.reload_interval > 0:
        _start_polling(state, settings.reload_interval)
    return app


def _rows_route(app: FastAPI, state: _State, settings: ServeSettings, schema: dict) -> None:
    request_model = rows_request(schema)

    def predict(current: Loaded, raw: bytes, content_type: str | None) -> JSONResponse:
        body = _validated(raw, content_type, request_model, "rows", settings)
        frame = pd.DataFrame([row.model_dump(by_alias=True) for row in body.rows],
                             columns=[c["name"] for c in current.schema["columns"]])
        table = current.predictor.predict(frame, "the request")
        state.metrics.observe_features(frame, current.predictor.transform.state.get("numeric", []))
        return _respond(current, table, state.metrics)

    @app.post("/predict", response_model=PredictResponse, openapi_extra=_json_body(request_model))
    async def predict_rows(request: Request) -> Response:
        current, raw, content_type, batcher = await _incoming(request, state)
        response = await _fast_response(state, batcher, current, raw, content_type, "rows", _predictions)
        if response is None:
            response = await run_in_threadpool(predict, current, raw, content_type)
        return response


async def _incoming(request: Request, state: _State) -> tuple[Loaded, bytes, str | None, MicroBatcher | None]:
    """A prediction request, authorized: the model it is answered by, its body (bounded by BodyLimit), its content
    type, and that model's batcher."""
    _authorize(request, state.settings)
    current = state.current  # requests in flight keep the model they started with across a reload
    return current, await request.body(), request.headers.get("content-type"), state.batcher(current)


async def _inline_or_threaded(settings: ServeSettings, raw: bytes, function, *args):
    """`function(*args)` on the event loop for a body of at most inline_bytes (sub-millisecond work on the fast
    path, cheaper than the hop to a thread), else on a worker thread."""
    if len(raw) <= settings.inline_bytes:
        return function(*args)
    return await run_in_threadpool(function, *args)


async def _fast_response(state: _State, batcher: MicroBatcher | None, current: Loaded, raw: bytes,
                         content_type: str | None, route: str, render) -> Response | None:
    """The fast path's (serving/compiled.py) response to a tabular /predict (`route` "rows") or /invocations
    ("scoring") body, metrics counted; None for a request it leaves to the Predictor path (invalid, or an output that
    is not finite: that request alone goes there). With micro-batching, only the ONNX Runtime call is joined with the
    concurrent requests'; each request's rows are checked and made into features on their own."""
    settings = state.settings
    if batcher is None:
        return await _inline_or_threaded(settings, raw, _fast, state, current, raw, content_type, route, render)
    made = await _inline_or_threaded(settings, raw, _fast_features, state, current, raw, content_type, route)
    if made is None:
        return None
    features, raw_numbers = made
    if batcher.takes(len(features)):
        outputs = await batcher.submit(features, len(features))
    else:
        outputs = await _inline_or_threaded(settings, raw, current.compiled.outputs, features)
    if outputs is None:
        return None
    return await _inline_or_threaded(settings, raw, _fast_rendered, state, current, outputs, raw_numbers, render)


def _fast(state: _State, current: Loaded, raw: bytes, content_type: str | None, route: str,
          render) -> Response | None:
    made = _fast_features(state, current, raw, content_type, route)
    if made is None:
        return None
    outputs = current.compiled.outputs(made[0])
    return None if outputs is None else _fast_rendered(state, current, outputs, made[1], render)


def _fast_rendered(state: _State, current: Loaded, outputs: np.ndarray, raw_numbers: np.ndarray,
                   render) -> Response:
    state.metrics.predicted(current.ref.name, current.ref.version, len(outputs))
    state.metrics.observe_counts(*current.compiled.out_of_range(raw_numbers))
    return render(current, outputs)


def _predictions(current: Loaded, outputs: np.ndarray) -> Response:
    """A /predict response of the fast path (PredictResponse's shape)."""
    return OrjsonResponse({"predictions": current.compiled.predictions(outputs), "model": _brief(current)})


def _records(current: Loaded, outputs: np.ndarray) -> Response:
    """An /invocations response of the fast path (MLflow's shape)."""
    return OrjsonResponse({"predictions": current.compiled.records(outputs)})


def _fast_features(state: _State, current: Loaded, raw: bytes, content_type: str | None,
                   route: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The fast path's features of a request (and its raw numbers, for the skew gauge), or None."""
    if current.schema["kind"] != "rows" or (content_type not in (None, "application/json")
                                             and not _is_json(content_type)):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN, Infinity, malformed: json.loads and pydantic say what is wrong
        return None
    compiled = current.compiled
    if route == "rows":
        if type(data) is dict and type(data.get("rows")) is list:
            _check_batch(len(data["rows"]), state.settings)  # 413, as the Predictor path would answer
        columns = compiled.columns_of(data)
    else:
        columns = compiled.scoring_columns_of(data)
        if columns is not None and len(columns[compiled.columns[0]]) > state.settings.max_batch:
            return None  # scoring.parse answers 413 in its words
    if columns is None:
        return None
    return compiled.features(columns)


def _texts_route(app: FastAPI, state: _State, settings: ServeSettings, schema: dict) -> None:
    def texts(current: Loaded, raw: bytes, content_type: str | None) -> pd.DataFrame:
        body = _validated(raw, content_type, TextRequest, "texts", settings)
        return pd.DataFrame({current.schema["text_column"]: pd.Series(body.texts, dtype=object)})

    def predict(current: Loaded, raw: bytes, content_type: str | None) -> JSONResponse:
        frame = texts(current, raw, content_type)
        return _respond(current, current.predictor.predict(frame, "the request"), state.metrics)

    @app.post("/predict", response_model=PredictResponse, openapi_extra=_json_body(TextRequest))
    async def predict_texts(request: Request) -> JSONResponse:
        current, raw, content_type, batcher = await _incoming(request, state)
        if batcher is None:
            return await run_in_threadpool(predict, current, raw, content_type)
        frame = await run_in_threadpool(texts, current, raw, content_type)  # validated on its own first
        if batcher.takes(len(frame)):
            table = await batcher.submit(frame, len(frame), key=_text_key(frame, current))
        else:
            table = await run_in_threadpool(current.predictor.predict, frame, "the request")
        return await run_in_threadpool(_respond, current, table, state.metrics)


def _images_route(app: FastAPI, state: _State, settings: ServeSettings, schema: dict) -> None:
    def predict(current: Loaded, names: list[str], files: list[bytes]) -> JSONResponse:
        return _respond(current, current.predictor.predict_images(files, names=names).drop(columns="path"),
                        state.metrics)

    @app.post("/predict", response_model=PredictResponse, openapi_extra=_image_body())
    async def predict_images(request: Request) -> JSONResponse:
        current, raw, content_type, batcher = await _incoming(request, state)
        names, files = await run_in_threadpool(_read_images, raw, content_type, settings)  # checked on their own first
        if batcher is None or not batcher.takes(len(files)):
            return await run_in_threadpool(predict, current, names, files)
        table = await batcher.submit((names, files), len(files))
        return await run_in_threadpool(_respond, current, table.drop(columns="path"), state.metrics)


# /predict by what a request holds (a kind's input_schema()["kind"]): rows, texts or images
ROUTES = {"rows": _rows_route, "texts": _texts_route, "images": _images_route}


# ---------------------------------------------------------------- micro-batching (serving/microbatch.py)

def _rows_batch(current: Loaded, items: list[np.ndarray]) -> list:
    """The joined call of tabular fast-path requests: their features (checked per request) in one ONNX Runtime call;
    a request whose outputs are not all finite gets None (the Predictor path then names its rows)."""
    return joined(items, [len(x) for x in items],
                  lambda xs: current.predictor.outputs(xs[0] if len(xs) == 1 else np.concatenate(xs)),
                  lambda out, start, stop: out[start:stop],
                  lambda part: part if np.isfinite(part).all() else None)


def _texts_batch(current: Loaded, items: list[pd.DataFrame]) -> list:
    """Texts (one-column DataFrames) in one Predictor.predict: tokenized together, one ONNX Runtime call per
    predict_rows. The model masks padding, so a text's answer does not depend on the others (to float rounding)."""
    return joined(items, [len(f) for f in items],
                  lambda frames: current.predictor.predict(frames[0] if len(frames) == 1
                                                           else pd.concat(frames, ignore_index=True), "the request"),
                  _rows_of)


def _images_batch(current: Loaded, items: list[tuple[list[str], list[bytes]]]) -> list:
    """Image files ((names, files) per request) in one predict_images."""
    return joined(items, [len(files) for _, files in items],
                  lambda parts: current.predictor.predict_images([f for _, files in parts for f in files],
                                                                 names=[n for names, _ in parts for n in names]),
                  _rows_of)


def _rows_of(table: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return table.iloc[start:stop]


def _text_key(frame: pd.DataFrame, current: Loaded) -> str:
    """Texts are joined only with texts of the same column dtype (object, str...), which a join keeps."""
    return str(frame[current.schema["text_column"]].dtype)


BATCH_RUNS = {"rows": _rows_batch, "texts": _texts_batch, "images": _images_batch}


def _check_batch(size: int, settings: ServeSettings) -> None:
    if size > settings.max_batch:
        raise TooLarge(f"a batch of {size} exceeds the limit of {settings.max_batch} per request (--max-batch)")


def _validated(raw: bytes, content_type: str | None, model: type[BaseModel], items: str, settings: ServeSettings):
    """The request body as `model`, decoded as FastAPI would (JSON unless another content type is declared). The
    number of `items` is checked first, so an oversized batch costs one JSON parse, not one validation error per
    missing field of every row. Runs on a worker thread."""
    data: Any = raw
    if raw and _is_json(content_type):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                                           "msg": "JSON decode error"}]) from None
    values = data.get(items) if isinstance(data, dict) else None
    if not isinstance(values, list) or len(values) <= VALIDATION_CHUNK:
        if isinstance(values, list):
            _check_batch(len(values), settings)
        try:
            return model.model_validate(data, from_attributes=True)
        except ValidationError as exc:
            raise RequestValidationError(_capped(_errors(exc), exc.error_count())) from None
    _check_batch(len(values), settings)
    # many items: the envelope is validated once (with the first item), then the items VALIDATION_CHUNK at a time,
    # so that the event loop's thread gets the GIL between chunks (pydantic holds it for a whole call); at most
    # MAX_ERRORS errors are kept, however many there are
    kept, total, envelope = [], 0, None
    try:
        envelope = model.model_validate({**data, items: values[:1]}, from_attributes=True)
    except ValidationError as exc:
        for error in _errors(exc):
            if not (len(error["loc"]) > 2 and error["loc"][1] == items):  # the first item is validated below
                kept.append(error)
                total += 1
    adapter = _item_adapter(model, items)
    validated = []
    for start in range(0, len(values), VALIDATION_CHUNK):
        try:
            validated += adapter.validate_python(values[start:start + VALIDATION_CHUNK], from_attributes=True)
        except ValidationError as exc:
            total += exc.error_count()
            if len(kept) < MAX_ERRORS:
                kept += [{**e, "loc": ("body", items, e["loc"][0] + start, *e["loc"][1:])}
                         for e in exc.errors(include_url=False, include_context=False)[:MAX_ERRORS - len(kept)]]
    if total:
        raise RequestValidationError(_capped(kept, total))
    return envelope.model_copy(update={items: validated})


@functools.cache
def _item_adapter(model: type[BaseModel], items: str) -> TypeAdapter:
    """A validator of a list of `model`'s `items` (list[Row], list[str | None]...), made once per model."""
    return TypeAdapter(model.model_fields[items].annotation)


VALIDATION_CHUNK = 250  # items validated in one call (a few ms: the most the event loop waits for the GIL)


def _errors(exc: ValidationError) -> list[dict]:
    return [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]


def _capped(errors: list[dict], total: int) -> list[dict]:
    """The first MAX_ERRORS errors, and when there are more an entry that counts them all."""
    listed = errors[:MAX_ERRORS]
    if total > len(listed):
        listed.append({"type": "too_many_errors", "loc": (),
                       "msg": f"{total} errors in all; the first {len(listed)} are listed"})
    return listed


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that reads its JSON body itself (to count the rows before validating
    them): `model`'s schema with its definitions inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _invoke(state: _State, current: Loaded, raw: bytes, content_type: str | None) -> Response:
    """POST /invocations (serving/scoring.py): MLflow's request formats in, MLflow's response shape out, through the
    same Predictor as /predict. On a worker thread."""
    try:
        frame = scoring.parse(raw, content_type, current.schema, state.settings.max_batch)
        if current.schema["kind"] == "images":
            names, files = _scoring_images(state, frame)
            table = current.predictor.predict_images(files, names=names)
        else:
            table = current.predictor.predict(frame, "the request")
            state.metrics.observe_features(frame, current.predictor.transform.state.get("numeric", []))
    except SCORING_ERRORS as exc:
        return _scoring_error(exc)
    return _scoring_answer(state, current, table)


def _scoring_images(state: _State, frame: pd.DataFrame) -> tuple[list[str], list[bytes]]:
    names, files = scoring.image_files(frame)
    _check_images(names, files, state.settings)
    return names, files


SCORING_ERRORS = (TorchyardError, ValueError, TypeError, KeyError)  # a frame of any shape can be sent


def _scoring_error(exc: Exception) -> Response:
    """MLflow's 400 for a bad /invocations request; TooLarge (413) raised on to its handler."""
    if isinstance(exc, scoring.TooManyRows):
        raise TooLarge(str(exc)) from None
    if isinstance(exc, TooLarge):
        raise exc
    return JSONResponse({"error_code": "BAD_REQUEST", "message": _short(str(exc), 2000)}, status_code=400)


def _scoring_answer(state: _State, current: Loaded, table: pd.DataFrame) -> Response:
    state.metrics.predicted(current.ref.name, current.ref.version, len(table))
    return OrjsonResponse(scoring.answer(table))


def _scoring_job(state: _State, current: Loaded, raw: bytes, content_type: str | None):
    """An /invocations request of texts or images parsed and checked on its own, for the batcher: (item, inputs,
    key), None for one that is not batched (texts without the text column: _invoke names the problem), or the
    400 response. On a worker thread."""
    try:
        frame = scoring.parse(raw, content_type, current.schema, state.settings.max_batch)
        if current.schema["kind"] == "images":
            names, files = _scoring_images(state, frame)
            return (names, files), len(files), None
        column = current.schema["text_column"]
        if column not in frame.columns:
            return None
        texts = frame[[column]]
        return texts, len(texts), _text_key(texts, current)
    except SCORING_ERRORS as exc:
        return _scoring_error(exc)


async def _invoke_batched(state: _State, batcher: MicroBatcher, current: Loaded, raw: bytes,
                          content_type: str | None) -> Response:
    """/invocations of texts or images with micro-batching: parsed and checked on their own, predicted joined with the
    concurrent requests, answered as _invoke answers."""
    job = await run_in_threadpool(_scoring_job, state, current, raw, content_type)
    if isinstance(job, Response):
        return job
    if job is None or not batcher.takes(job[1]):
        return await run_in_threadpool(_invoke, state, current, raw, content_type)
    item, inputs, key = job
    try:
        table = await batcher.submit(item, inputs, key)
    except SCORING_ERRORS as exc:
        return _scoring_error(exc)
    return await run_in_threadpool(_scoring_answer, state, current, table)


def _scoring_body() -> dict:
    return {"requestBody": {"required": True, "description": "MLflow's scoring protocol (serving/scoring.py)",
                            "content": {"application/json": {"schema": {"type": "object"}},
                                        "text/csv": {"schema": {"type": "string"}}}}}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchyard")
    except PackageNotFoundError:
        return "unknown"


def _respond(current: Loaded, table: pd.DataFrame, metrics: ServingMetrics) -> Response:
    """The response, rendered here on the worker thread (PredictResponse documents it)."""
    metrics.predicted(current.ref.name, current.ref.version, len(table))
    classes, labels = current.predictor.classes, table["prediction"].tolist()
    predictions: list[dict[str, Any]] = [{"prediction": label} for label in labels]
    if classes and len(table):
        for entry, row in zip(predictions, table[[f"proba_{c}" for c in classes]].to_numpy()):
            entry["probabilities"] = {str(c): float(p) for c, p in zip(classes, row)}
    return OrjsonResponse({"predictions": predictions, "model": _brief(current)})


def _brief(current: Loaded) -> dict:
    return {"name": current.ref.name, "version": current.ref.version}


class OrjsonResponse(Response):
    """A JSON response rendered by orjson (several times faster than json.dumps; numpy scalars and arrays too)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _read_images(raw: bytes, content_type: str | None, settings: ServeSettings) -> tuple[list[str], list[bytes]]:
    if (content_type or "").startswith("multipart/form-data"):
        return _uploaded_images(raw, content_type, settings)
    return _decode_images(raw, settings)


def _uploaded_images(raw: bytes, content_type: str, settings: ServeSettings) -> tuple[list[str], list[bytes]]:
    uploads = multipart.files(raw, content_type, "files", max_files=settings.max_batch + 1)
    if not uploads:
        raise RequestError("send the images as multipart form fields named 'files'")
    names = [name or f"files[{i}]" for i, (name, _) in enumerate(uploads)]
    files = [data for _, data in uploads]
    _check_images(names, files, settings)
    return names, files


def _decode_images(raw: bytes, settings: ServeSettings) -> tuple[list[str], list[bytes]]:
    body = _validated(raw, None, ImageRequest, "images", settings)  # anything but multipart is read as JSON
    names = body.names or [f"images[{i}]" for i in range(len(body.images))]
    if len(names) != len(body.images):
        raise RequestError(f"{len(names)} names for {len(body.images)} images")
    files = []
    for name, encoded in zip(names, body.images):
        try:
            files.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(f"{name} is not valid base64") from None
    _check_images(names, files, settings)
    return names, files


def _check_images(names: list[str], files: list[bytes], settings: ServeSettings) -> None:
    _check_batch(len(files), settings)
    for name, data in zip(names, files):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise RequestError(f"{name} is not an image that can be read (PNG, JPEG, BMP, WebP, GIF, TIFF)") from None
        if max(width, height) > settings.max_image_side:
            raise TooLarge(f"{name} is {width}x{height}; the largest side accepted is {settings.max_image_side} "
                           "(--max-image-side)")


class RequestError(TorchyardError):
    """A request the server cannot use (422)."""


def _image_body() -> dict:
    schema = ImageRequest.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    }}}


def _error_handlers(app: FastAPI) -> None:
    status = {TooLarge: 413, SchemaChanged: 409, ReloadRefused: 409}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # what was wrong and where, for the first MAX_ERRORS problems; the offending input is left out (it may be
        # NaN, which JSON cannot carry, or large)
        errors = list(exc.errors())
        if not (errors and errors[-1]["type"] == "too_many_errors"):  # not capped where it was raised
            errors = _capped(errors, len(errors))
        detail = [{"type": e["type"], "loc": [_short(part) for part in e["loc"]], "msg": _short(e["msg"])}
                  for e in errors]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(TorchyardError)
    async def user_error(request: Request, exc: TorchyardError):
        code = exc.status if isinstance(exc, Unauthorized) else status.get(type(exc), 422)
        return JSONResponse({"detail": _scrubbed(str(exc))}, status_code=code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.error(f"{request.method} {request.url.path} failed", exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


def _scrubbed(message: str) -> str:
    """A message with this machine's absolute paths (the model file, the MLflow store) cut to their file names:
    error bodies go to whoever sent the request."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        message = message.replace(uri, "the MLflow store")
    return re.sub(r"(?<![\w:])/(?:[\w.+-]+/)+([\w.+-]+)", r"\1", message)


def _short(value, limit: int = 200):
    """A location part or message as sent back: strings cut to `limit` characters (a key may be long)."""
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or while it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, receive, send)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        response = JSONResponse({"detail": f"request body over the limit of {self.limit} bytes (--max-body-bytes)"},
                                status_code=413)
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


PREDICTION_ROUTES = frozenset({"/predict", "/invocations"})


class InFlightLimit:
    """ASGI middleware: at most `limit` prediction requests worked on at once (0: no limit); one more is answered
    503 with Retry-After at once, before its body is read, instead of waiting behind the others. The other routes
    (/health, /metrics, /reload...) are never refused. One event loop per process: a plain counter is enough."""

    def __init__(self, app, limit: int, retry_after: int = 1):
        self.app, self.limit, self.retry_after = app, limit, retry_after
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.limit or scope["path"] not in PREDICTION_ROUTES:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            response = JSONResponse({"detail": f"the server is busy: {self.active} prediction requests are being "
                                               f"worked on, the most it takes at once (--max-in-flight); retry in "
                                               f"{self.retry_after} s or add workers (--workers)"},
                                    status_code=503, headers={"Retry-After": str(self.retry_after)})
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _start_polling(state: _State, interval: float) -> None:
    """A daemon thread that reloads when the registry alias points at another version."""
    stop = threading.Event()

    def poll():
        while not stop.wait(interval):
            try:
                if current_version(state.settings.model, state.registry) != state.current.ref.version:
                    state.reload()
            except Exception as exc:  # the registry being away must not stop serving
                log.warning(f"reload check failed: {exc}")

    threading.Thread(target=poll, name="torchyard-reload", daemon=True).start()
