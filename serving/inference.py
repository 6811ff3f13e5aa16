"""Inference on ONNX Runtime from a model file: raw rows in, labels and probabilities out.

predict.py and the REST API both go through Predictor, so there is one inference path to test.
"""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from preprocessing.tabular import TabularTransform
from serving.bundle import load_bundle
from serving.export import INPUT_NAME


class Predictor:
    def __init__(self, bundle: dict):
        self.bundle = bundle
        self.transform = TabularTransform(bundle["preprocessing"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(bundle["onnx"], options, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        return cls(load_bundle(path))

    @property
    def classes(self) -> list:
        return self.transform.target["classes"]

    def outputs(self, features: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {INPUT_NAME: features})
        return out

    def predict(self, frame: pd.DataFrame, name: str = "input") -> pd.DataFrame:
        """One row per input row, in input order: `prediction` (original label or value) and, for
        classification, `proba_<class>` per class. The target column, if present, is ignored."""
        if len(frame) == 0:
            return pd.DataFrame({"prediction": []})
        labels, probabilities = self.transform.decode_predictions(self.outputs(self.transform.features(frame, name)))
        result = pd.DataFrame({"prediction": labels}, index=frame.index)
        if probabilities is not None:
            for j, label in enumerate(self.classes):
                result[f"proba_{label}"] = probabilities[:, j].astype(np.float64)
        return result
