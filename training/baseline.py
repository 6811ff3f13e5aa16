"""A simple scikit-learn model on the same train/test split as the network, so that every run shows whether the
network beats three lines of scikit-learn: tables -> HistGradientBoosting, texts -> tf-idf of word 1-2 grams with
logistic (or ridge) regression, images -> logistic regression on downscaled pixels.

Each baseline returns what the exported network returns (class probabilities [N, C] or values [N, 1] on the
target's original scale), so the same test metrics (training/evaluation.py) score both.
"""
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.metrics import improvement

if TYPE_CHECKING:  # train.py --help imports this module's config: no pandas at run time
    from preprocessing.targets import Target

PREDICT_ROWS = 65536
IMAGE_SIDE = 16  # logistic regression on 16x16 pixels per channel: on 5,000 MNIST digits (bench_quality) 0.880,
# against 0.884 on 32x32 grey, in 2 s instead of 30 s


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Fit a scikit-learn baseline on the same split and log "
                          "baseline_test_<metric> and the network's margin over it.")
    max_train_rows: int = Field(100_000, ge=10, description="Tables and texts with more training rows are "
                                "subsampled (seeded) to this many for the baseline.")
    max_image_rows: int = Field(20_000, ge=10, description="Images: above this many training images the "
                                "baseline is skipped (logged), as logistic regression on pixels gets slow.")


class BaselineSkipped(Exception):
    """The baseline does not apply to this data; the message says why (logged, not an error)."""


@dataclass
class Baseline:
    name: str  # what was fitted, e.g. "HistGradientBoostingClassifier"
    served: np.ndarray  # probabilities [N, C] or values [N, 1], original scale
    seconds: float
    train_rows: int


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Row positions to fit on: all of them, or a seeded sorted sample of `limit`."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _served(model, inputs, task: str, n_classes: int, target: "Target") -> np.ndarray:
    if task == "regression":
        return (model.predict(inputs).astype(np.float64) * target.std + target.mean).reshape(-1, 1)
    proba = model.predict_proba(inputs)
    full = np.zeros((proba.shape[0], n_classes))  # a class missing from the train split gets probability 0
    full[:, model.classes_.astype(np.int64)] = proba
    return full


def _fit(model, name: str, train_inputs, train_targets, test_inputs, target: "Target") -> Baseline:
    task, n_classes = target.task, target.n_classes
    train_targets = np.asarray(train_targets)
    if task == "classification" and len(np.unique(train_targets)) < 2:
        raise BaselineSkipped("the train split holds a single class")
    started = time.perf_counter()
    model.fit(train_inputs, train_targets)
    # in blocks: a streamed table's test split is a memory map, read here a block at a time
    served = np.concatenate([_served(model, np.asarray(test_inputs[i:i + PREDICT_ROWS]), task, n_classes, target)
                             for i in range(0, len(test_inputs), PREDICT_ROWS)])
    return Baseline(name, served, time.perf_counter() - started, len(train_targets))


def tabular(train_features: np.ndarray, train_targets: np.ndarray, test_features: np.ndarray, target: "Target",
            seed: int) -> Baseline:
    """HistGradientBoosting with its defaults on the preprocessed features (imputed, scaled, one-hot)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    model = (HistGradientBoostingRegressor if target.regression else HistGradientBoostingClassifier)(random_state=seed)
    return _fit(model, type(model).__name__, train_features, train_targets, test_features, target)


def text(train_texts: list[str], train_targets: np.ndarray, test_texts: list[str], target: "Target",
         seed: int) -> Baseline:
    """tf-idf of word 1-2 grams (scikit-learn's own tokenizer, on the raw texts), then logistic regression
    (classification) or ridge regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    head = Ridge() if target.regression else LogisticRegression(max_iter=1000, random_state=seed)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), head)
    return _fit(model, f"tfidf-1-2gram+{type(head).__name__}", train_texts, train_targets, test_texts, target)


def downscale(images: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """uint8 [N, H, W, C] square images -> float32 [N, F] in 0..1: block means down to about side x side x C."""
    x = images.astype(np.float32) / 255.0
    factor = max(1, -(-x.shape[1] // side))
    cut = x.shape[1] // factor * factor
    x = x[:, :cut, :cut].reshape(len(x), cut // factor, factor, cut // factor, factor, x.shape[-1]).mean((2, 4))
    return x.reshape(len(x), -1)


def image(train_images: np.ndarray, train_targets: np.ndarray, test_images: np.ndarray, target: "Target",
          seed: int) -> Baseline:
    """Logistic regression on standardised, downscaled pixels (uint8 [N, H, W, C] crops as the network sees)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = downscale(train_images), downscale(test_images)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1, random_state=seed))
    name = f"LogisticRegression on {train_x.shape[1]} downscaled pixel values"
    return _fit(model, name, train_x, train_targets, test_x, target)


def margins(metrics: dict, baseline_metrics: dict) -> dict:
    """margin_<metric>: how much better the network is than the baseline on each test metric (positive = better;
    for errors such as test_mse, the baseline's value minus the network's)."""
    return {f"margin_{name}": improvement(value, theirs, name) for name, value in metrics.items()
            if (theirs := baseline_metrics.get(f"baseline_{name}")) is not None}
