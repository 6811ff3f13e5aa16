"""The registered MLflow model: a python-function model that takes the raw inputs a user has and answers what
predict.py answers, through serving.inference.Predictor on ONNX Runtime (the one inference path; nothing here
preprocesses).

    mlflow.pyfunc.load_model("models:/wine-mlp/1").predict(raw_rows)      # prediction, proba_<class>...
    mlflow models serve -m models:/wine-mlp/1 --env-manager local          # POST raw dataframe_records

What `predict` takes, by data type (the model's signature says the same):
- tables: a DataFrame of the raw feature columns, typed as in the training data (nulls are imputed as in
  training; extra columns are dropped by MLflow with a warning);
- texts: a DataFrame with the text column;
- images: a DataFrame with a `path` column of image files or an `image` column of the files' bytes, one of the
  two per row (over HTTP: `image` in every record, as base64, which MLflow decodes for a binary column).
It returns predict.py's table: `prediction` and, for classification, `proba_<class>` per class; for images `path`
first (the file, or `image[i]` for bytes).

Layout of the logged model: `artifacts/model.onnx` is the exported network with the torchyard preprocessing state
in its metadata (what serving.bundle.load_model_file reads), shared by two flavors: `python_function` (this
module's RawInputModel) and `onnx` (`mlflow.onnx.load_model` gives the bare network, which takes preprocessed
features).

The loader finds this class through the installed torchyard package (`pip install -e .`), as it finds the
Predictor and the preprocessing it runs: the model is logged from code (MLflow's models-from-code), and its code,
tasks/pyfunc_entry.py, copied into the model, imports RawInputModel from here. No pickle: nothing of a class's
state is frozen into the model, and a model logged before a change here runs the current Predictor on its own
.onnx and preprocessing state. Copying the packages in with code_paths would not make the model self-contained
(torch and onnxruntime come from the environment anyway) and would make the code a process runs depend on what it
had imported before: a process that already imported torchyard keeps its modules, a fresh one takes the copies.
"""
import importlib.metadata
import os
import sys
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

MODEL_CODE = Path(__file__).with_name("pyfunc_entry.py")  # what MLflow copies into the model and runs to load it
ONNX_ARTIFACT = "onnx_model"  # the key of the .onnx in the pyfunc's artifacts (stored as artifacts/<file name>)
IMAGE_PATH, IMAGE_BYTES = "path", "image"  # the columns an image model's input has
EXAMPLE_ROWS = 5
MAX_EXAMPLE_IMAGE_BYTES = 1 << 20  # image files in the input example, together (at least one file)
# what the Predictor imports to answer besides ONNX and ONNX Runtime, by data type; pinned at the installed versions
REQUIREMENTS = ("numpy", "pandas", "pyarrow", "pydantic", "torch")
KIND_REQUIREMENTS = {"image": ("pillow", "albumentations", "opencv-python-headless")}


class RawInputModel(mlflow.pyfunc.PythonModel):
    """Raw inputs in, predict.py's table out, through the Predictor of the model's .onnx (with its metadata)."""

    def load_context(self, context):
        from serving.bundle import load_model_file
        from serving.inference import Predictor

        self.predictor = Predictor(load_model_file(context.artifacts[ONNX_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_raw(self.predictor, model_input)


def predict_raw(predictor, model_input) -> pd.DataFrame:
    """What predict.py answers for `model_input` (see the module's docstring)."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if predictor.kind.input_schema(predictor.transform)["kind"] != "images":
        return predictor.kind.predict_frame(predictor, frame, "the model input")
    from preprocessing.errors import DataError

    missing = pd.Series(None, index=frame.index, dtype=object)
    paths, files = frame.get(IMAGE_PATH, missing), frame.get(IMAGE_BYTES, missing)
    images = []  # (source, name)
    for i, (path, data) in enumerate(zip(paths, files)):
        if isinstance(path, (str, os.PathLike)) and str(path):
            images.append((str(path), str(path)))
        elif isinstance(data, (bytes, bytearray)):
            images.append((bytes(data), f"{IMAGE_BYTES}[{i}]"))
        else:
            raise DataError(f"row {i} of the model input has neither an image file '{IMAGE_PATH}' nor the bytes of "
                            f"one in '{IMAGE_BYTES}'")
    if not images:
        return pd.DataFrame({IMAGE_PATH: [], "prediction": []})
    return predictor.predict_images([s for s, _ in images], names=[n for _, n in images])


def input_example(predictor, test_frame: Path) -> pd.DataFrame:
    """A few raw rows a user would send: the first test rows as they were read (tables, texts), only the columns
    the model takes; for images the bytes of the first test files (at most MAX_EXAMPLE_IMAGE_BYTES together)."""
    import pyarrow.parquet as pq

    schema = predictor.kind.input_schema(predictor.transform)
    columns = {"rows": lambda: [c["name"] for c in schema["columns"]], "texts": lambda: [schema["text_column"]],
               "images": lambda: [IMAGE_PATH]}[schema["kind"]]()
    batch = next(pq.ParquetFile(test_frame).iter_batches(EXAMPLE_ROWS, columns=columns), None)
    rows = batch.to_pandas() if batch is not None else pd.DataFrame(columns=columns)
    if schema["kind"] != "images":
        return rows.reset_index(drop=True)
    files, size = [], 0
    for path in rows[IMAGE_PATH]:
        data = Path(path).read_bytes()
        if files and size + len(data) > MAX_EXAMPLE_IMAGE_BYTES:
            break
        files.append(data)
        size += len(data)
    return pd.DataFrame({IMAGE_BYTES: files})


def signature(predictor, example: pd.DataFrame) -> ModelSignature:
    """Inputs: the raw columns as the data has them (tables: integers as long, floats and integers with nulls as
    double, categories as they come; texts: a string; images: optional `path` and `image` columns); outputs:
    predict.py's columns, as the Predictor answers the example. MLflow enforces the input types before predict: an
    integer column takes no nulls (its hint says so), a double column no int64 (as it refuses all unsafe casts)."""
    schema = predictor.kind.input_schema(predictor.transform)
    with warnings.catch_warnings():  # its hint on integer columns and nulls: the docstring's choice, made knowingly
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        inferred = infer_signature(example.dropna(axis=1, how="all"), predict_raw(predictor, example))
    if schema["kind"] == "images":
        inputs = Schema([ColSpec("string", IMAGE_PATH, required=False), ColSpec("binary", IMAGE_BYTES, required=False)])
    elif schema["kind"] == "rows":
        found = {c.name: c for c in inferred.inputs.inputs}  # a column with no value in the example: by its type
        inputs = Schema([found.get(c["name"], ColSpec("double" if c["type"] == "number" else "string", c["name"]))
                         for c in schema["columns"]])
    else:
        inputs = Schema([ColSpec("string", schema["text_column"])])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def predictor_requirements(data_type: str) -> list[str]:
    """What the Predictor imports besides ONNX Runtime, at the installed versions (given, not inferred: inferring
    loads the model in a subprocess, ~2-3 s). torchyard itself is no requirement MLflow could install: the model
    loads where torchyard is installed."""
    names = REQUIREMENTS + KIND_REQUIREMENTS.get(data_type, ())
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def log_model(onnx_path: Path, predictor, example: pd.DataFrame, pip_requirements: list[str], metadata: dict,
              name: str = "model"):
    """Log the raw-input model to the active run and return its ModelInfo. `onnx_path`: the .onnx with torchyard
    metadata; `predictor`: a Predictor of it (the signature's outputs are its answers to `example`)."""
    return Model.log(artifact_path=None, name=name, flavor=sys.modules[__name__],
                     flavor_name="pyfunc.ModelFromCode", onnx_path=str(onnx_path),
                     signature=signature(predictor, example), input_example=example,
                     pip_requirements=pip_requirements, metadata=metadata,
                     # MLflow's check that loads the model back and answers the example through its JSON path
                     # (0.15 s): signature() has answered the example through the Predictor, save_model checks it
                     # against the signature, and tests/test_pyfunc.py loads and serves the model
                     validate_serving_input=False)


def save_model(path, mlflow_model: Model, onnx_path: str, **kwargs) -> None:
    """The flavor hook Model.log calls: the pyfunc model with the .onnx as its artifact, and the `onnx` flavor on
    the same file, so that mlflow.onnx.load_model still gives the network."""
    import onnx

    kwargs.pop("validate_serving_input", None)
    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, python_model=str(MODEL_CODE),
                             artifacts={ONNX_ARTIFACT: onnx_path}, **kwargs)
    stored = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]["artifacts"][ONNX_ARTIFACT]["path"]
    mlflow_model.add_flavor("onnx", onnx_version=onnx.__version__, data=stored, providers=["CPUExecutionProvider"],
                            code=None)
    mlflow_model.save(str(Path(path) / "MLmodel"))
