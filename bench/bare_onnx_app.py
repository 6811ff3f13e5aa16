"""The reference of bench/bench_serving.py: the least a FastAPI app can do to serve the same .onnx (issue 16).

    TORCHYARD_ONNX=m.onnx .venv/bin/python -m uvicorn bench.bare_onnx_app:app --port 8001

ONNX Runtime on the exported graph, the preprocessing state read from its metadata, torchyard's request and response
shapes. Tables: the state applied with numpy (impute, scale, one-hot or ordinal codes), rows in as
{"rows": [{column: value}]}. Texts and images: the same preprocessing as torchyard's, called directly (the text
pipeline's encode on the list of texts, then the padding no text uses cut off; the image files decoded, cropped and
normalised by the image transform), {"texts": [...]} or {"images": [base64, ...]} in. No validation beyond what
numpy refuses, no limits, no metrics, no pandas on the request path, no error bodies, one request per ONNX Runtime
call: what a hand-written app would be.
"""
import base64
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

session = ort.InferenceSession(os.environ["TORCHYARD_ONNX"], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
state = json.loads(meta["torchyard.preprocessing"])
data_type = state.get("data_type", "tabular")
input_name = session.get_inputs()[0].name
classes = state["target"].get("classes")
app = FastAPI()

if data_type == "tabular":
    numeric, categorical = state["numeric"], state["categorical"]
    onehot = state["config"]["categorical"] == "onehot"
    fill = np.array([c["fill"] for c in numeric], dtype=np.float64)
    center = np.array([c["center"] for c in numeric], dtype=np.float64)
    scale = np.array([c["scale"] for c in numeric], dtype=np.float64)
    codes = [{name: i for i, name in enumerate(c["categories"])} for c in categorical]
else:  # torchyard's own transform for the state (tokenizer and vocabulary, or the image pipeline)
    from preprocessing import kinds

    transform = kinds.transform_for(state)


def features(rows: list[dict]) -> np.ndarray:
    x = np.array([[r[c["name"]] for c in numeric] for r in rows], dtype=np.float64).reshape(len(rows), len(numeric))
    x = np.where(np.isnan(x), fill, x)
    blocks = [(x - center) / scale]
    for spec, code in zip(categorical, codes):
        text = [spec["fill"] if r[spec["name"]] is None else str(r[spec["name"]]) for r in rows]
        index = np.array([code.get(t, -1) for t in text])
        if onehot:
            block = np.zeros((len(rows), len(code) + 1))
            block[np.arange(len(rows)), np.where(index < 0, len(code), index)] = 1.0
        else:
            block = (index + 1).reshape(-1, 1).astype(np.float64)
        blocks.append(block)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def inputs(data: dict) -> np.ndarray:
    if data_type == "tabular":
        return features(data["rows"])
    if data_type == "text":
        from preprocessing.text import trim

        return trim(transform.encode(data["texts"]))
    files = [base64.b64decode(encoded) for encoded in data["images"]]
    return transform.features(files, [f"images[{i}]" for i in range(len(files))])


@app.post("/predict")
async def predict(request: Request):
    out = session.run(None, {input_name: inputs(json.loads(await request.body()))})[0]
    if classes is None:
        predictions = [{"prediction": float(v)} for v in out.reshape(-1)]
    else:
        predictions = [{"prediction": classes[int(i)], "probabilities": dict(zip(map(str, classes), p.tolist()))}
                       for i, p in zip(out.argmax(axis=1), out.astype(np.float64))]
    return JSONResponse({"predictions": predictions})


@app.get("/health")
async def health():
    return {"status": "ok"}
