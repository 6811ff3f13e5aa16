"""Inference on ONNX Runtime from a model file: raw rows (tables, texts) or image files in, labels and
probabilities out.

predict.py and the REST API both go through Predictor, so there is one inference path to test.
"""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from preprocessing import kinds
from serving.bundle import ModelBundle, load_bundle

class Predictor:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.data_type = bundle.data_type
        self.transform = kinds.transform_for(bundle.preprocessing)
        self.kind = kinds.of(self.transform)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(bundle.onnx, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        return cls(load_bundle(path))

    @property
    def classes(self) -> list:
        return self.transform.target["classes"]

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: inputs})
        return out

    def predict(self, frame: pd.DataFrame, name: str = "input") -> pd.DataFrame:
        """Tables and texts: one row per input row, in input order: `prediction` (original label or value) and, for
        classification, `proba_<class>` per class. The target column, if present, is ignored."""
        if len(frame) == 0:
            return pd.DataFrame({"prediction": []})
        step = self.kind.predict_rows or len(frame)  # texts: batches bound [rows, tokens, width] activations
        outputs = [self.outputs(self.transform.features(frame.iloc[i:i + step], name))
                   for i in range(0, len(frame), step)]
        return self._table(np.concatenate(outputs), frame.index)

    def predict_images(self, paths: list, batch_size: int = 256, names: list[str] | None = None) -> pd.DataFrame:
        """Images (file paths, or their bytes with `names`): one row per file, in the given order: `path`,
        `prediction`, `proba_<class>`..."""
        names = names or [str(p) for p in paths]
        outputs = [self.outputs(self.transform.features(paths[i:i + batch_size], names[i:i + batch_size]))
                   for i in range(0, len(paths), batch_size)]
        table = self._table(np.concatenate(outputs), pd.RangeIndex(len(paths)))
        table.insert(0, "path", names)
        return table

    def _table(self, outputs: np.ndarray, index) -> pd.DataFrame:
        labels, probabilities = self.transform.decode_predictions(outputs)
        result = pd.DataFrame({"prediction": labels}, index=index)
        if probabilities is not None:
            for j, label in enumerate(self.classes):
                result[f"proba_{label}"] = probabilities[:, j].astype(np.float64)
        return result
