"""The reference of bench/bench_serving.py: the least a FastAPI app can do to serve the same .onnx (issue 16).

    TORCHYARD_ONNX=m.onnx .venv/bin/python -m uvicorn bench.bare_onnx_app:app --port 8001

ONNX Runtime on the exported graph, the preprocessing state read from its metadata and applied with numpy (impute,
scale, one-hot or ordinal codes), rows in as {"rows": [{column: value}]}, torchyard's response shape out. No
validation beyond what numpy refuses, no limits, no metrics, no error bodies: what a hand-written app would be.
"""
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

session = ort.InferenceSession(os.environ["TORCHYARD_ONNX"], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
state = json.loads(meta["torchyard.preprocessing"])
input_name = session.get_inputs()[0].name
numeric, categorical = state["numeric"], state["categorical"]
onehot = state["config"]["categorical"] == "onehot"
fill = np.array([c["fill"] for c in numeric], dtype=np.float64)
center = np.array([c["center"] for c in numeric], dtype=np.float64)
scale = np.array([c["scale"] for c in numeric], dtype=np.float64)
codes = [{name: i for i, name in enumerate(c["categories"])} for c in categorical]
classes = state["target"].get("classes")
app = FastAPI()


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


@app.post("/predict")
async def predict(request: Request):
    rows = json.loads(await request.body())["rows"]
    out = session.run(None, {input_name: features(rows)})[0]
    if classes is None:
        predictions = [{"prediction": float(v)} for v in out.reshape(-1)]
    else:
        predictions = [{"prediction": classes[int(i)], "probabilities": dict(zip(map(str, classes), p.tolist()))}
                       for i, p in zip(out.argmax(axis=1), out.astype(np.float64))]
    return JSONResponse({"predictions": predictions})


@app.get("/health")
async def health():
    return {"status": "ok"}
