"""The fast path of tabular /predict and /invocations (records): a request's rows validated column by column and
preprocessed with numpy operations compiled once from the model's saved preprocessing state, with no pydantic model
per row and no pandas on the request path (issue 16).

It gives exactly what the Predictor path gives (serving.inference.Predictor.predict on the DataFrame the validated
request makes): the same float32 features bit for bit, so the same ONNX Runtime outputs, labels and probabilities
(tests/test_serving_fast.py checks this on numeric, categorical and null-holding samples). It takes only requests
whose outcome it knows: every row an object with exactly the model's columns; numbers (not booleans) or null in a
numeric column; text, integers, booleans or null in a categorical one; every value, scaled value and output finite.
Anything else (a missing or extra field, a number as a string, a value beyond float32, a NaN output) returns None
and the caller takes the Predictor path, which answers with the validation errors or the DataError it always has: a
request's status code and body never depend on which path answered it.
"""
from itertools import chain

import numpy as np

from preprocessing.tabular import FLOAT32_MAX

_NONE = type(None)
NUMERIC_TYPES = frozenset({float, int, _NONE})
CATEGORY_TYPES = frozenset({str, int, bool, _NONE})
SCORING_RECORDS = ("dataframe_records", "instances", "inputs")  # serving.scoring.FORMATS but dataframe_split
EXACT_FLOAT_INT = 2 ** 53  # integers that float64 holds exactly (pandas renders int+null columns as floats)


class CompiledTable:
    """The preprocessing state of a tabular Predictor as arrays and lookup tables."""

    def __init__(self, predictor):
        self.predictor = predictor
        state = predictor.transform.state
        numeric, categorical = state["numeric"], state["categorical"]
        self.numeric_names = [c["name"] for c in numeric]
        self.fill, self.center, self.scale = np.array([[c[k] for c in numeric] for k in ("fill", "center", "scale")],
                                                      dtype=np.float64)
        # the training range of the numeric features that have one in the model file, for the skew gauge
        ranged = [c for c in numeric if "min" in c]
        self.ranged = [c["name"] for c in ranged]
        self.low, self.high = np.array([[c["min"] for c in ranged], [c["max"] for c in ranged]], dtype=np.float64)
        self.has_range = np.array(["min" in c for c in numeric], dtype=bool)
        self.categorical = [(c["name"], c["fill"], {v: i for i, v in enumerate(c["categories"])},
                             len(c["categories"])) for c in categorical]
        self.onehot = state["config"]["categorical"] == "onehot"
        self.columns = self.numeric_names + [c["name"] for c in categorical]
        self.column_set = frozenset(self.columns)
        self.n_features = predictor.transform.n_features
        self.classes = predictor.classes if predictor.bundle.task != "regression" else None
        self.class_keys = [str(c) for c in self.classes] if self.classes else None

    def columns_of(self, data) -> dict[str, list] | None:
        """The rows of a decoded /predict body as one list per column, or None when the body is not a plain valid
        request (the Predictor path then answers it, with its validation errors if it is not valid)."""
        return self._columns(data.get("rows")) if type(data) is dict and len(data) == 1 else None

    def scoring_columns_of(self, data) -> dict[str, list] | None:
        """The same for a decoded /invocations body (MLflow's scoring protocol) holding records: `dataframe_records`,
        or `instances` / `inputs` as a list of records (optional `params`, ignored as serving/scoring.py ignores
        it), each record with exactly the model's columns; None for anything else (scoring.parse then reads it)."""
        given = [key for key in SCORING_RECORDS if key in data] if type(data) is dict else []
        if len(given) != 1 or len(data) - ("params" in data) != 1:
            return None
        return self._columns(data[given[0]])

    def _columns(self, rows) -> dict[str, list] | None:
        names = self.column_set
        if type(rows) is not list or not rows or any(type(row) is not dict or row.keys() != names for row in rows):
            return None
        return {name: [row[name] for row in rows] for name in self.columns}

    def features(self, columns: dict[str, list]) -> tuple[np.ndarray, np.ndarray] | None:
        """(float32 features [rows, n_features], the raw numeric values with NaN for null), or None when a value is
        one the fast path does not take (see the module's docstring)."""
        n = len(columns[self.columns[0]])
        numbers = [columns[name] for name in self.numeric_names]
        if not set(map(type, chain.from_iterable(numbers))) <= NUMERIC_TYPES:
            return None
        try:
            raw = np.array(numbers, dtype=np.float64).reshape(len(numbers), n).T  # null -> NaN
        except (OverflowError, ValueError, TypeError):
            return None
        if np.isinf(raw).any():
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (np.where(np.isnan(raw), self.fill, raw) - self.center) / self.scale
        if not (np.abs(scaled) <= FLOAT32_MAX).all():  # the Predictor path names the column and rows
            return None
        blocks = [scaled]
        for name, fill, codes, size in self.categorical:
            if (text := _as_text(columns[name])) is None:
                return None
            index = np.fromiter((codes.get(fill if t is None else t, -1) for t in text), dtype=np.int64, count=n)
            if self.onehot:
                block = np.zeros((n, size + 1), dtype=np.float64)
                block[np.arange(n), np.where(index < 0, size, index)] = 1.0
            else:
                block = (index + 1).reshape(-1, 1).astype(np.float64)
            blocks.append(block)
        features = np.concatenate(blocks, axis=1).astype(np.float32, copy=False)
        return (features, raw) if features.shape[1] == self.n_features else None

    def outputs(self, features: np.ndarray) -> np.ndarray | None:
        out = self.predictor.outputs(features)
        return out if np.isfinite(out).all() else None  # the Predictor path names the rows

    def predictions(self, outputs: np.ndarray) -> list[dict]:
        """The `predictions` of the response, as the Predictor path renders them."""
        if self.classes is None:
            return self.records(outputs)  # {"prediction": value} on both routes
        classes, keys = self.classes, self.class_keys
        return [{"prediction": classes[i], "probabilities": dict(zip(keys, p))}
                for i, p in zip(outputs.argmax(axis=1).tolist(), outputs.astype(np.float64).tolist())]

    def records(self, outputs: np.ndarray) -> list[dict]:
        """The `predictions` of an /invocations response, as serving.scoring.answer renders the Predictor's table:
        `prediction` and, for classification, `proba_<class>` per class."""
        if self.classes is None:
            labels, _ = self.predictor.transform.decode_predictions(outputs)
            return [{"prediction": label} for label in labels]
        classes, keys = self.classes, ["prediction"] + [f"proba_{c}" for c in self.classes]
        return [dict(zip(keys, (classes[i], *p)))
                for i, p in zip(outputs.argmax(axis=1).tolist(), outputs.astype(np.float64).tolist())]

    def out_of_range(self, raw: np.ndarray) -> tuple[list[str], list[int], list[int]]:
        """Per numeric feature with a stored training range: (names, values seen, values outside the range)."""
        values = raw[:, self.has_range]
        present = ~np.isnan(values)
        with np.errstate(invalid="ignore"):
            outside = present & ((values < self.low) | (values > self.high))
        return self.ranged, present.sum(axis=0).tolist(), outside.sum(axis=0).tolist()


def _as_text(values: list) -> list | None:
    """preprocessing.summaries.as_text of the column pandas would build from `values` (None for null), or None
    for a column the fast path leaves to pandas. pandas stores integers with nulls as float64, so those render as
    '3.0'; integers alone, or mixed with text or booleans, as '3'."""
    types = set(map(type, values))
    if not types <= CATEGORY_TYPES:
        return None
    if types == {int, _NONE}:
        if any(v is not None and abs(v) >= EXACT_FLOAT_INT for v in values):
            return None
        return [None if v is None else str(float(v)) for v in values]
    if types == {str}:
        return values
    return [None if v is None else str(v) for v in values]
