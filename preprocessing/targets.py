"""The target of a supervised table (tabular or text): its fitted state, encoding for training and decoding of
model outputs. Plain data only, so it travels in the preprocessing JSON."""
import numpy as np
import pandas as pd

from preprocessing.errors import DataError
from preprocessing.summaries import NumericSummary


def fit_target(values: "pd.Series | NumericSummary | None", name: str, task: str, classes: list,
               scale: bool = True) -> dict:
    """The target's state; a regression target is standardised with the mean and std of `values` (the training
    targets, or their running summary)."""
    target = {"name": name, "task": task, "classes": list(classes), "mean": 0.0, "std": 1.0}
    if task == "regression" and scale:
        summary = values if isinstance(values, NumericSummary) else NumericSummary.of(values)
        target.update(mean=float(summary.mean), std=summary.std if summary.std > 0 else 1.0)
    return target


class TargetCodec:
    """Mixed into a transform that has `self.target` (the dict from fit_target)."""

    target: dict

    @property
    def n_outputs(self) -> int:
        if self.target["task"] == "regression":
            return 1
        return 1 if len(self.target["classes"]) == 2 else len(self.target["classes"])

    def encode_target(self, values: pd.Series) -> np.ndarray:
        """Class indices (int64) for classification, the scaled value (float32) for regression."""
        if self.target["task"] == "regression":
            y = (values.to_numpy(dtype="float64") - self.target["mean"]) / self.target["std"]
            return y.astype(np.float32)
        index = {c: i for i, c in enumerate(self.target["classes"])}
        plain = [v.item() if hasattr(v, "item") else v for v in values]
        unknown = [v for v in plain if v not in index]
        if unknown:
            raise DataError(f"target '{self.target['name']}' has the value {unknown[0]!r}, which is not among "
                            f"the training classes {self.target['classes']}")
        return np.array([index[v] for v in plain], dtype=np.int64)

    def decode_predictions(self, outputs: np.ndarray) -> tuple[list, np.ndarray | None]:
        """Model outputs (class probabilities, or the unscaled regression value) -> labels and probabilities."""
        if self.target["task"] == "regression":
            return outputs.reshape(-1).astype(float).tolist(), None
        classes = self.target["classes"]
        return [classes[i] for i in outputs.argmax(axis=1)], outputs
