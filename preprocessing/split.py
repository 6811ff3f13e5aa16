"""Seeded train/val/test split, stratified by class for classification."""
import numpy as np
import pandas as pd

from preprocessing.config import SplitConfig

SPLITS = ("train", "val", "test")


def split_indices(target: pd.Series, task: str, fractions: SplitConfig, seed: int) -> dict[str, np.ndarray]:
    """Row positions of each split, sorted. Every class gets at least one row in each split (validation
    guarantees three per class); the same seed and data give the same split on any machine."""
    rng = np.random.default_rng(seed)
    if task == "classification":
        codes, _ = pd.factorize(target, sort=True)
        groups = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    else:
        groups = [np.arange(len(target))]
    parts = {name: [] for name in SPLITS}
    for rows in groups:
        rows = rng.permutation(rows)
        n_val, n_test = (max(1, round(len(rows) * share)) for share in (fractions.val, fractions.test))
        parts["val"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
