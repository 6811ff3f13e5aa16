"""Tabular preprocessing: null handling, scaling, categorical and label encoding.

`fit` computes every statistic from the training split and returns a JSON-serialisable state; `TabularTransform`
applies that state to any rows (val, test, prediction input), so training, predict.py and the REST API transform
data identically. The state is plain lists and numbers rather than a pickled scikit-learn pipeline so that a model
file can be loaded without unpickling code (torch.load(weights_only=True) or JSON).
"""
import numpy as np
import pandas as pd

from preprocessing.config import TabularConfig
from preprocessing.errors import DataError
from preprocessing.targets import TargetCodec, fit_target
from preprocessing.validate import TableSchema

MISSING = "__missing__"
UNKNOWN = "__unknown__"


def fit(train: pd.DataFrame, schema: TableSchema, config: TabularConfig) -> dict:
    """Fit the transform on the training rows. Returns the state dict that TabularTransform applies."""
    numeric, categorical, dropped = list(schema.numeric), list(schema.categorical), []
    if config.missing == "drop_columns":
        null_share = train[numeric + categorical].isna().mean()
        dropped = [c for c in numeric + categorical if null_share[c] > config.max_null_fraction]
        numeric = [c for c in numeric if c not in dropped]
        categorical = [c for c in categorical if c not in dropped]
        if not numeric and not categorical:
            raise DataError(f"every feature column has more than {config.max_null_fraction:.0%} nulls in the "
                            "training split; raise preprocess.max_null_fraction or use missing=impute")
    rows = train
    if config.missing == "drop_rows":
        rows = train.dropna(subset=numeric + categorical)
        if rows.empty:
            raise DataError("missing=drop_rows leaves no training rows: every row has a null feature; "
                            "use missing=impute or drop_columns")
    state = {
        "data_type": "tabular",
        "config": config.model_dump(),
        "numeric": [_fit_numeric(rows[c], c, config) for c in numeric],
        "categorical": [_fit_categorical(rows[c], c, config) for c in categorical],
        "dropped_columns": dropped,
        "target": fit_target(rows[schema.target], schema.target, schema.task, schema.classes, config.scale_target),
    }
    state["feature_names"] = _feature_names(state)
    return state


def _fit_numeric(values: pd.Series, name: str, config: TabularConfig) -> dict:
    x = values.astype("float64").dropna()
    if x.empty:
        fill = config.fill_value
    elif config.numeric_impute == "mean":
        fill = x.mean()
    elif config.numeric_impute == "median":
        fill = x.median()
    elif config.numeric_impute == "most_frequent":
        fill = x.mode().min()
    else:
        fill = config.fill_value
    x = x if not x.empty else pd.Series([fill])
    if config.scaler == "standard":
        center, scale = x.mean(), x.std(ddof=0)
    elif config.scaler == "minmax":
        center, scale = x.min(), x.max() - x.min()
    elif config.scaler == "robust":
        center, scale = x.median(), x.quantile(0.75) - x.quantile(0.25)
    else:
        center, scale = 0.0, 1.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    return {"name": name, "fill": float(fill), "center": float(center), "scale": float(scale)}


def _fit_categorical(values: pd.Series, name: str, config: TabularConfig) -> dict:
    text = _as_text(values)
    counts = text.value_counts(dropna=True)
    if config.categorical_impute == "most_frequent" and not counts.empty:
        fill = str(counts.index[0])
    else:
        fill = MISSING
    counts = text.fillna(fill).value_counts()
    # most frequent first; ties in name order so that refits of the same data give the same columns
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


def _as_text(values: pd.Series) -> pd.Series:
    """Categories are compared as text so that 3, 3.0 from JSON and '3' from CSV agree between fit and predict."""
    out = values.astype(object).where(values.notna(), None)
    return out.map(lambda v: None if v is None else str(v))


class TabularTransform(TargetCodec):
    """Applies a fitted state to rows. Used for val/test during training and for prediction."""

    def __init__(self, state: dict):
        self.state = state
        self.onehot = state["config"]["categorical"] == "onehot"
        self.target = state["target"]
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
        for j, spec in enumerate(specs):
            column = frame[spec["name"]]
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan, copy=True)
            bad = np.isnan(values) & column.notna().to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"column '{spec['name']}' in {name} must be numeric but data row {row + 1} has "
                                f"{column.iloc[row]!r}")
            if np.isinf(values).any():
                row = int(np.flatnonzero(np.isinf(values))[0])
                raise DataError(f"column '{spec['name']}' in {name} has an infinite value at data row {row + 1}")
            values[np.isnan(values)] = spec["fill"]
            out[:, j] = (values - spec["center"]) / spec["scale"]
        return out

    def _categorical(self, column: pd.Series, spec: dict) -> np.ndarray:
        text = _as_text(column).fillna(spec["fill"])
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
        cfg = self.state["config"]
        return {
            **{k: v for k, v in cfg.items()},
            "n_numeric": len(self.state["numeric"]),
            "n_categorical": len(self.state["categorical"]),
            "n_features": self.n_features,
            "dropped_columns": ",".join(self.state["dropped_columns"]) or "none",
        }
