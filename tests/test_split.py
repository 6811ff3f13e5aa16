import numpy as np
import pandas as pd

from preprocessing.config import SplitConfig
from preprocessing.split import split_indices


def test_stratified_disjoint_covering_and_seeded():
    target = pd.Series(["a"] * 70 + ["b"] * 20 + ["c"] * 3)
    parts = split_indices(target, "classification", SplitConfig(), seed=1)
    together = np.concatenate(list(parts.values()))
    assert sorted(together) == list(range(len(target)))
    for name, rows in parts.items():
        assert set(target.iloc[rows]) == {"a", "b", "c"}, name  # every class in every split
    assert abs(len(parts["train"]) - 0.7 * len(target)) <= 3
    assert (target.iloc[parts["test"]] == "a").sum() == round(70 * 0.15)
    again = split_indices(target, "classification", SplitConfig(), seed=1)
    other = split_indices(target, "classification", SplitConfig(), seed=2)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["train"], other["train"])


def test_regression_fractions():
    parts = split_indices(pd.Series(np.arange(200.0)), "regression", SplitConfig(train=0.8, val=0.1, test=0.1), 0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [160, 20, 20]
