"""Tabular preprocessing: null handling, scaling, categorical and label encoding.

`fit` computes every statistic from the training split and returns a JSON-serialisable state; `TabularTransform`
applies that state to any rows (val, test, prediction input), so training, predict.py and the REST API transform
data identically. The state is plain lists and numbers rather than a pickled scikit-learn pipeline so that a model
file can be loaded without unpickling code (torch.load(weights_only=True) or JSON).
"""
import numpy as np
import pandas as pd

from preprocessing.config import TabularConfig
from preprocessing.errors import DataError, rows_text
from preprocessing.summaries import CategoricalSummary, NumericSummary, as_text
from preprocessing.targets import Target, TargetCodec
from preprocessing.validate import TableSchema

MISSING = "__missing__"
UNKNOWN = "__unknown__"
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's inputs are float32: about 3.4e38


def check_float32(values: np.ndarray, column: str, name: str, raw: pd.Series | None = None,
                  row_numbers: np.ndarray | None = None, scaled: bool = False) -> None:
    """DataError naming the column and the first rows when a value is beyond float32's range (or not finite):
    the model computes in float32, where such a value becomes infinity and the outputs NaN. `row_numbers`: the
    1-based data row of each value (default: its position + 1); `raw`: the values as given, for the message."""
    bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN (nothing to impute it with) counts as bad too
    if not bad.any():
        return
    positions = np.flatnonzero(bad)
    numbers = positions + 1 if row_numbers is None else np.asarray(row_numbers)[positions]
    shown = raw.iloc[positions[0]] if raw is not None else values[positions[0]]
    shown = shown.item() if isinstance(shown, np.generic) else shown
    what = "a value" if len(positions) == 1 else f"{len(positions)} values"
    where = " after scaling with the training statistics" if scaled else ""
    raise DataError(f"column '{column}' in {name} has {what} too large for float32, the model's number type "
                    f"(at most {FLOAT32_MAX:.3g} in magnitude{where}), at {rows_text(numbers)} "
                    f"(first: {shown!r}); remove or rescale such values (e.g. a log scale)")


def check_ranges(frame: pd.DataFrame, schema: TableSchema, name: str, first_row: int = 0) -> None:
    """check_float32 on the numeric feature columns of raw rows (and on a regression target), so that training
    stops at validation naming the file's data row; nulls are fine (they are imputed or dropped)."""
    columns = list(schema.numeric) + ([schema.target] if schema.task == "regression" else [])
    for column in [c for c in columns if c in frame.columns]:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        values = np.where(np.isnan(values), 0.0, values)  # nulls (and text, which validation reports) pass here
        check_float32(values, column, name, frame[column], first_row + row_numbers(frame))


def row_numbers(frame: pd.DataFrame) -> np.ndarray:
    """The 1-based data row of each row of `frame` for messages: its integer index label + 1 (a split, a chunk of
    a request or a record batch keeps the labels of the rows it came from), else its position + 1."""
    if pd.api.types.is_integer_dtype(frame.index.dtype):
        return frame.index.to_numpy(dtype=np.int64) + 1
    return np.arange(1, len(frame) + 1)


def fit(train: pd.DataFrame, schema: TableSchema, config: TabularConfig) -> dict:
    """Fit the transform on the training rows. Returns the state dict that TabularTransform applies."""
    fitting = TabularFit(schema, config)
    fitting.update(train)
    return fitting.state()


class TabularFit:
    """The statistics of the training rows, fed as one frame or as many record batches (streamed Parquet).

    `sample_size` bounds the values kept per numeric column for the median, quartiles and mode (None: every
    value, exact); means, standard deviations, minima, maxima and category counts are always exact."""

    def __init__(self, schema: TableSchema, config: TabularConfig, sample_size: int | None = None, seed: int = 0):
        self.schema, self.config = schema, config
        self.features = list(schema.numeric) + list(schema.categorical)
        self.numeric = {c: NumericSummary(sample_size, seed + i) for i, c in enumerate(schema.numeric)}
        self.categorical = {c: CategoricalSummary() for c in schema.categorical}
        self.target = NumericSummary(sample_size, seed) if schema.task == "regression" else None
        self.rows = 0  # training rows the statistics come from (after missing=drop_rows)

    def update(self, frame: pd.DataFrame) -> None:
        if self.config.missing == "drop_rows":
            frame = frame.dropna(subset=self.features)
        self.rows += len(frame)
        for column, summary in {**self.numeric, **self.categorical}.items():
            summary.update(frame[column])
        if self.target is not None:
            self.target.update(frame[self.schema.target])

    @property
    def quantiles_exact(self) -> bool:
        """Whether every median, quartile and mode came from all of its column's values, not a sample."""
        summaries = list(self.numeric.values()) + ([self.target] if self.target is not None else [])
        return all(summary.exact for summary in summaries)

    def state(self) -> dict:
        config, schema = self.config, self.schema
        numeric, categorical, dropped = list(schema.numeric), list(schema.categorical), []
        if config.missing == "drop_columns":
            summaries = {**self.numeric, **self.categorical}
            dropped = [c for c in numeric + categorical
                       if summaries[c].nulls > config.max_null_fraction * (summaries[c].nulls + summaries[c].count)]
            numeric = [c for c in numeric if c not in dropped]
            categorical = [c for c in categorical if c not in dropped]
            if not numeric and not categorical:
                raise DataError(f"every feature column has more than {config.max_null_fraction:.0%} nulls in the "
                                "training split; raise preprocess.max_null_fraction or use missing=impute")
        if config.missing == "drop_rows" and self.rows == 0:
            raise DataError("missing=drop_rows leaves no training rows: every row has a null feature; "
                            "use missing=impute or drop_columns")
        state = {
            "data_type": "tabular",
            "config": config.model_dump(),
            "numeric": [_numeric_state(self.numeric[c], c, config) for c in numeric],
            "categorical": [_categorical_state(self.categorical[c], c, config) for c in categorical],
            "dropped_columns": dropped,
            "target": Target.fit(self.target, schema.target, schema.task, schema.classes,
                                 config.scale_target).to_state(),
        }
        state["feature_names"] = _feature_names(state)
        return state


def _numeric_state(summary: NumericSummary, name: str, config: TabularConfig) -> dict:
    impute = {"mean": lambda: summary.mean, "median": lambda: summary.quantile(0.5), "most_frequent": summary.mode}
    fill = impute[config.numeric_impute]() if summary.count and config.numeric_impute in impute else config.fill_value
    if not summary.count:  # an all-null training column: centred on its fill value
        center, scale = (0.0, 1.0) if config.scaler == "none" else (fill, 1.0)
    elif config.scaler == "standard":
        center, scale = summary.mean, summary.std
    elif config.scaler == "minmax":
        center, scale = summary.low, summary.high - summary.low
    elif config.scaler == "robust":
        center, scale = summary.quantile(0.5), summary.quantile(0.75) - summary.quantile(0.25)
    else:
        center, scale = 0.0, 1.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    spec = {"name": name, "fill": float(fill), "center": float(center), "scale": float(scale)}
    if summary.count:  # the training range, for serving's train/serve skew gauge
        spec["min"], spec["max"] = float(summary.low), float(summary.high)
    return spec


def _categorical_state(summary: CategoricalSummary, name: str, config: TabularConfig) -> dict:
    # most frequent first; ties in name order so that refits of the same data give the same columns
    ranked = sorted(summary.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fill = ranked[0][0] if config.categorical_impute == "most_frequent" and ranked else MISSING
    counts = dict(summary.counts)
    if summary.nulls:
        counts[fill] = counts.get(fill, 0) + summary.nulls
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"name": name, "fill": fill, "categories": [k for k, _ in ranked[: config.max_categories]]}


def _feature_names(state: dict) -> list[str]:
    names = [n["name"] for n in state["numeric"]]
    for column in state["categorical"]:
        if state["config"]["categorical"] == "onehot":
            names += [f"{column['name']}={c}" for c in column["categories"]] + [f"{column['name']}={UNKNOWN}"]
        else:
            names.append(column["name"])
    return names


class TabularTransform(TargetCodec):
    """Applies a fitted state to rows. Used for val/test during training and for prediction."""

    def __init__(self, state: dict):
        self.state = state
        self.onehot = state["config"]["categorical"] == "onehot"
        self.feature_names: list[str] = state["feature_names"]
        self.input_columns = [c["name"] for c in state["numeric"] + state["categorical"]]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def features(self, frame: pd.DataFrame, name: str = "input") -> np.ndarray:
        """float32 matrix [rows, n_features]; nulls imputed, unknown categories to the unknown bucket."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise DataError(f"{name} lacks the feature column(s) {', '.join(repr(c) for c in missing)} "
                            "that the model was trained on")
        blocks = [self._numeric(frame, name)] + [self._categorical(frame[c["name"]], c) for c in self.state["categorical"]]
        return np.concatenate(blocks, axis=1).astype(np.float32, copy=False)

    def _numeric(self, frame: pd.DataFrame, name: str) -> np.ndarray:
        specs = self.state["numeric"]
        if not specs:
            return np.zeros((len(frame), 0), dtype=np.float32)
        out = np.empty((len(frame), len(specs)), dtype=np.float64)
        numbers = row_numbers(frame)
        for j, spec in enumerate(specs):
            column = frame[spec["name"]]
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan, copy=True)
            bad = np.isnan(values) & column.notna().to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"column '{spec['name']}' in {name} must be numeric but data row {numbers[row]} has "
                                f"{column.iloc[row]!r}")
            if np.isinf(values).any():
                row = int(np.flatnonzero(np.isinf(values))[0])
                raise DataError(f"column '{spec['name']}' in {name} has an infinite value at data row {numbers[row]}")
            values[np.isnan(values)] = spec["fill"]
            with np.errstate(over="ignore", invalid="ignore"):  # what overflows is reported just below
                out[:, j] = (values - spec["center"]) / spec["scale"]
            check_float32(out[:, j], spec["name"], name, column, numbers, scaled=True)
        return out

    def _categorical(self, column: pd.Series, spec: dict) -> np.ndarray:
        text = as_text(column).fillna(spec["fill"])
        categories = spec["categories"]
        codes = pd.Categorical(text, categories=categories).codes.astype(np.int64)  # -1 = unseen
        if not self.onehot:
            return (codes + 1).reshape(-1, 1).astype(np.float64)  # 0 = unknown
        codes[codes < 0] = len(categories)
        onehot = np.zeros((len(column), len(categories) + 1), dtype=np.float64)
        onehot[np.arange(len(column)), codes] = 1.0
        return onehot

    def describe(self) -> dict:
        """Flat parameters worth logging (prefixed by the caller)."""
        return {
            **self.state["config"],
            "n_numeric": len(self.state["numeric"]),
            "n_categorical": len(self.state["categorical"]),
            "n_features": self.n_features,
            "dropped_columns": ",".join(self.state["dropped_columns"]) or "none",
        }
