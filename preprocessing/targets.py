"""The target of a supervised model: its fitted state (`Target`, saved as plain data in the preprocessing JSON),
encoding for training and decoding of model outputs."""
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from preprocessing.errors import DataError
from preprocessing.summaries import NumericSummary

# The squared error of a float32 regression output overflows beyond about 1.8e19: a target that large after scaling
# would train on an infinite loss.
SQUARE_SAFE = float(np.sqrt(np.finfo(np.float32).max))


@dataclass(frozen=True)
class Target:
    """What the model predicts: `task` classification (`labels`: the label of each class index) or regression
    (predicted in units of `std` around `mean`; 0/1 when the target is not scaled). Saved with the key "classes".

    Not `classes`: code that reads `x.classes` in a module that imports torch makes cloudpickle (Dask workers get
    the flow's functions pickled by value) take it for the `torch.classes` submodule, which cannot be pickled."""

    name: str
    task: str
    labels: tuple = ()
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, values: "pd.Series | NumericSummary | None", name: str, task: str, classes: list,
            scale: bool = True) -> "Target":
        """A regression target is standardised with the mean and std of `values` (the training targets, or their
        running summary)."""
        if task == "regression" and scale:
            summary = values if isinstance(values, NumericSummary) else NumericSummary.of(values)
            return cls(name, task, (), float(summary.mean), summary.std if summary.std > 0 else 1.0)
        return cls(name, task, tuple(classes))

    @classmethod
    def from_state(cls, state: dict) -> "Target":
        return cls(state["name"], state["task"], tuple(state.get("classes") or ()), float(state.get("mean", 0.0)),
                   float(state.get("std", 1.0)))

    def to_state(self) -> dict:
        return {"name": self.name, "task": self.task, "classes": list(self.labels), "mean": self.mean,
                "std": self.std}

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def n_outputs(self) -> int:
        return 1 if self.regression or self.n_classes == 2 else self.n_classes

    def encode(self, values: pd.Series) -> np.ndarray:
        """Class indices (int64) for classification, the scaled value (float32) for regression."""
        if self.regression:
            y = (values.to_numpy(dtype="float64") - self.mean) / self.std
            self._check_trainable(y, values)
            return y.astype(np.float32)
        index = {c: i for i, c in enumerate(self.labels)}
        plain = [v.item() if hasattr(v, "item") else v for v in values]
        unknown = [v for v in plain if v not in index]
        if unknown:
            raise DataError(f"target '{self.name}' has the value {unknown[0]!r}, which is not among the training "
                            f"classes {list(self.labels)}")
        return np.array([index[v] for v in plain], dtype=np.int64)

    def _check_trainable(self, scaled: np.ndarray, values: pd.Series) -> None:
        bad = np.flatnonzero(~(np.abs(scaled) <= SQUARE_SAFE))
        if len(bad):
            how = (f"after scaling by the training mean {self.mean:.6g} and std {self.std:.6g}"
                   if self.std != 1.0 or self.mean != 0.0 else "unscaled (preprocess.scale_target is off)")
            label, first = values.index[bad[0]], values.iloc[bad[0]]
            row = label + 1 if isinstance(label, (int, np.integer)) else bad[0] + 1  # a split keeps file row labels
            first = first.item() if isinstance(first, np.generic) else first
            raise DataError(f"target '{self.name}' has {len(bad)} value(s) whose squared error overflows float32 "
                            f"{how} (first: {first!r} at data row {row}); keep "
                            f"preprocess.scale_target on, or rescale the target (e.g. a log scale)")

    def decode(self, outputs: np.ndarray) -> tuple[list, np.ndarray | None]:
        """Model outputs (class probabilities, or the unscaled regression value) -> labels and probabilities."""
        if self.regression:
            return outputs.reshape(-1).astype(float).tolist(), None
        return [self.labels[i] for i in outputs.argmax(axis=1)], outputs


class TargetCodec:
    """Mixed into a transform whose `state["target"]` holds a saved Target: `self.target`, and the encode/decode
    calls the steps make on the transform."""

    state: dict

    @functools.cached_property
    def target(self) -> Target:
        return Target.from_state(self.state["target"])

    @property
    def n_outputs(self) -> int:
        return self.target.n_outputs

    def encode_target(self, values: pd.Series) -> np.ndarray:
        return self.target.encode(values)

    def decode_predictions(self, outputs: np.ndarray) -> tuple[list, np.ndarray | None]:
        return self.target.decode(outputs)
