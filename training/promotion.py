"""Champion/challenger, the pure part: score a served model on test rows, and decide whether the challenger
replaces the champion. The promote task (tasks/promote.py) reads the registry and moves the alias."""
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from training import evaluation
from training.metrics import improvement, lower_is_better


def served_outputs(table: pd.DataFrame, task: str, classes: list) -> torch.Tensor:
    """A predictions table (prediction, proba_<class>...) as the tensor the test metrics take: values [N, 1], or
    probabilities [N, C] in the order of `classes` (a class the model does not know scores 0)."""
    if task == "regression":
        return torch.tensor(np.asarray(table["prediction"], dtype=np.float64)).reshape(-1, 1)
    columns = [table[f"proba_{c}"].to_numpy() if f"proba_{c}" in table else np.zeros(len(table)) for c in classes]
    return torch.from_numpy(np.stack(columns, axis=1)).float()


def true_targets(values: pd.Series, task: str, classes: list) -> torch.Tensor:
    if task == "regression":
        return torch.tensor(values.to_numpy(dtype=np.float64))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v.item() if hasattr(v, "item") else v] for v in values])


def score(predict, frames: Iterable[pd.DataFrame], target: str, task: str, classes: list, metric: str) -> float:
    """`metric` of predict(frame) -> predictions table over the test rows, read frame by frame (so a test split
    larger than memory is scored too)."""
    served, truth = [], []
    for frame in frames:
        served.append(served_outputs(predict(frame), task, classes))
        truth.append(true_targets(frame[target], task, classes))
    return evaluation.test_metrics(task, torch.cat(served), torch.cat(truth))[metric]


def decide(challenger: float, champion: float | None, metric: str, min_improvement: float) -> tuple[bool, str]:
    """(promote?, why): the challenger wins when the champion could not be scored, or when `metric` improved by
    more than 0 and by at least `min_improvement`."""
    if champion is None or not np.isfinite(champion):
        return True, "the champion could not be scored on the new test split"
    gain = improvement(challenger, champion, metric)
    if gain > 0 and gain >= min_improvement:
        return True, f"{metric} improved by {gain:.4g} (at least {min_improvement:g} required)"
    better = "lower" if lower_is_better(metric) else "higher"
    return False, (f"{metric} changed by {gain:+.4g} (better is {better}); "
                   f"promotion needs an improvement above 0 and of at least {min_improvement:g}")
