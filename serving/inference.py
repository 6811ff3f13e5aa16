"""Inference on ONNX Runtime from a model file: raw rows (tables, texts) or image files in, labels and
probabilities out.

predict.py and the REST API both go through Predictor, so there is one inference path to test. A model is checked
completely before it is used (`load_checked`: every field of the file, the preprocessing state, the ONNX graph and
one prediction on a sample input built from its input schema), and a prediction that is not a finite number is an
error naming the rows, never a null probability.
"""
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from preprocessing import kinds
from preprocessing.errors import DataError, TorchyardError, rows_text
from preprocessing.tabular import row_numbers
from serving.bundle import ModelBundle, ModelFileError, load_model_file


class Predictor:
    def __init__(self, bundle: ModelBundle, source: str = "the model", threads: int = 0, spinning: bool = True):
        """ModelFileError naming `source` when the preprocessing state or the ONNX graph cannot be used.

        threads: ONNX Runtime's intra-op threads (0: its default, one per core). spinning=False: those threads sleep
        when they have no work instead of spinning (busy waiting) for the next. predict.py keeps ONNX Runtime's
        defaults; the server (serving.app.load) runs one thread per model, which does not spin: on a small or busy
        machine a call split over threads waited for a thread to be scheduled, on the event loop, and the spinning
        threads burned the CPU the server's Python and other processes need (see README, micro-batching)."""
        self.bundle = bundle
        self.source = source
        self.data_type = bundle.data_type
        try:
            self.transform = kinds.transform_for(bundle.preprocessing)
            self.kind = kinds.of(self.transform)
            self.classes  # noqa: B018 - the target's state is read on every prediction
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            missing = f"the entry {exc} is missing" if isinstance(exc, KeyError) else _short(exc)
            raise ModelFileError(f"{source} has an unusable preprocessing state ({missing}); train it again") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(bundle.onnx, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's InvalidGraph, InvalidProtobuf, Fail...
            raise ModelFileError(f"{source} holds an ONNX model that ONNX Runtime cannot load: {_short(exc)}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(self.session.get_outputs()) < 1:
            raise ModelFileError(f"{source} holds an ONNX model with {len(inputs)} inputs and "
                                 f"{len(self.session.get_outputs())} outputs; a torchyard model has one of each")
        self.input_name = inputs[0].name

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        """The model file at `path` (.pth, or an .onnx with torchyard metadata), checked (see load_checked)."""
        return load_checked(load_model_file(path), str(path))

    @property
    def classes(self) -> list:
        return list(self.transform.target.labels)

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: inputs})[:1]
        expected = 1 if self.bundle.task == "regression" else len(self.classes)
        if out.ndim != 2 or out.shape[0] != len(inputs) or out.shape[1] != expected:
            raise ModelFileError(f"{self.source} returned outputs of shape {list(out.shape)} for {len(inputs)} "
                                 f"input(s); its preprocessing expects [{len(inputs)}, {expected}]")
        return out

    def predict(self, frame: pd.DataFrame, name: str = "input") -> pd.DataFrame:
        """Tables and texts: one row per input row, in input order: `prediction` (original label or value) and, for
        classification, `proba_<class>` per class. The target column, if present, is ignored."""
        if len(frame) == 0:
            return pd.DataFrame({"prediction": []})
        step = self.kind.predict_rows or len(frame)  # texts: batches bound [rows, tokens, width] activations
        numbers = row_numbers(frame)
        outputs = [_finite(self.outputs(self.transform.features(frame.iloc[i:i + step], name)),
                           lambda bad: f"{rows_text(numbers[i:i + step][bad])} of {name}")
                   for i in range(0, len(frame), step)]
        return self._table(np.concatenate(outputs), frame.index)

    def predict_images(self, paths: list, batch_size: int = 256, names: list[str] | None = None) -> pd.DataFrame:
        """Images (file paths, or their bytes with `names`): one row per file, in the given order: `path`,
        `prediction`, `proba_<class>`..."""
        names = names or [str(p) for p in paths]
        batches = [(paths[i:i + batch_size], names[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
        outputs = [_finite(self.outputs(self.transform.features(files, some)),
                           lambda bad: ", ".join(np.asarray(some)[bad][:5])) for files, some in batches]
        return self._table(np.concatenate(outputs), pd.RangeIndex(len(paths)), path=names)

    def check(self) -> "Predictor":
        """One prediction on a sample input built from the input schema (null rows, a text, a grey image), with 1
        and 2 inputs; ModelFileError naming the model when it fails. Cheap (milliseconds), and it is what tells a
        model that loads from a model that serves."""
        schema = self.kind.input_schema(self.transform)
        try:
            for size in (1, 2):
                if schema["kind"] == "images":
                    self.predict_images([_sample_image(schema)] * size, names=["a sample image"] * size)
                elif schema["kind"] == "texts":
                    self.predict(pd.DataFrame({schema["text_column"]: ["a sample text 1"] * size}), "a sample")
                else:
                    self.predict(pd.DataFrame({c["name"]: [None] * size for c in schema["columns"]}), "a sample")
        except ModelFileError:
            raise
        except Exception as exc:  # a broken graph, a state that does not fit it, NaN weights...
            raise ModelFileError(f"{self.source} failed one prediction on a sample input: {_short(exc)}") from None
        return self

    def _table(self, outputs: np.ndarray, index, **first) -> pd.DataFrame:
        """`first` (columns put before the predictions), `prediction` and the `proba_<class>` columns."""
        labels, probabilities = self.transform.decode_predictions(outputs)
        columns = {**first, "prediction": labels}
        if probabilities is not None:  # built at once: a column inserted per class cost ~1 ms each (pandas)
            for j, label in enumerate(self.classes):
                columns[f"proba_{label}"] = probabilities[:, j].astype(np.float64)
        return pd.DataFrame(columns, index=index)


def load_checked(bundle: ModelBundle, source: str, threads: int = 0, spinning: bool = True) -> Predictor:
    """The Predictor of `bundle`, checked completely: what predict.py, the server's start and /reload use before a
    model replaces the one in use. ModelFileError naming `source` and what is wrong."""
    try:
        return Predictor(bundle, source, threads=threads, spinning=spinning).check()
    except ModelFileError:
        raise
    except TorchyardError as exc:  # e.g. a text pipeline version this torchyard cannot apply
        raise ModelFileError(f"{source}: {exc}") from None


def _finite(outputs: np.ndarray, where) -> np.ndarray:
    """`outputs`, or DataError naming the inputs (`where(bad)` for the mask of bad rows) whose outputs are NaN or
    infinite: with float32 inputs far beyond the training data a network's arithmetic overflows."""
    bad = ~np.isfinite(outputs).all(axis=1)
    if bad.any():
        raise DataError(f"the model's output for {where(bad)} is not a finite number (NaN or infinity): the "
                        "inputs there are probably far outside the range the model was trained on")
    return outputs


def _sample_image(schema: dict) -> bytes:
    from PIL import Image

    side = int(schema["image_size"])
    buffer = io.BytesIO()
    Image.new("L" if schema["channels"] == 1 else "RGB", (side, side), "gray").save(buffer, format="PNG")  # gray: 128
    return buffer.getvalue()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "..."
