"""Running statistics of one column, fed a whole column or many batches of it.

Preprocessing fits its statistics through these, so a table held in memory and one streamed from Parquet in
record batches get the same state from the same code.
"""
import numpy as np
import pandas as pd


class NumericSummary:
    """Exact count, nulls, mean, variance (Chan et al.'s pairwise merge), min and max; the median, quartiles and
    mode come from a uniform sample of at most `sample_size` values (bottom-k of random keys, seeded), which is
    every value when `sample_size` is None or the column is shorter, and then exact."""

    def __init__(self, sample_size: int | None = None, seed: int = 0):
        self.count, self.nulls = 0, 0
        self.mean, self.m2 = 0.0, 0.0
        self.low, self.high = np.inf, -np.inf
        self.sample_size = sample_size
        self._rng = np.random.default_rng(seed)
        self._values, self._keys = np.empty(0), np.empty(0)
        self._parts: list[np.ndarray] = []  # sample_size None: every value, joined once when asked

    @classmethod
    def of(cls, values) -> "NumericSummary":
        summary = cls()
        summary.update(values)
        return summary

    def update(self, values) -> None:
        x = pd.Series(values).to_numpy(dtype="float64", na_value=np.nan)
        present = x[~np.isnan(x)]
        self.nulls += len(x) - len(present)
        n = len(present)
        if n == 0:
            return
        mean = float(present.mean())
        m2 = float(((present - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low, self.high = min(self.low, float(present.min())), max(self.high, float(present.max()))
        if self.sample_size is None:
            self._parts.append(present)
            return
        keys = np.concatenate([self._keys, self._rng.random(n)])
        values = np.concatenate([self._values, present])
        if len(keys) > self.sample_size:
            keep = np.argpartition(keys, self.sample_size)[: self.sample_size]
            keys, values = keys[keep], values[keep]
        self._keys, self._values = keys, values

    @property
    def sample(self) -> np.ndarray:
        if self.sample_size is None:
            if len(self._parts) > 1:
                self._parts = [np.concatenate(self._parts)]
            return self._parts[0] if self._parts else np.empty(0)
        return self._values

    @property
    def exact(self) -> bool:
        """Whether quantiles and the mode were computed from every value."""
        return self.sample_size is None or self.count <= self.sample_size

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.sample, q))

    def mode(self) -> float:
        """The most frequent value; the smallest of those tied."""
        values, counts = np.unique(self.sample, return_counts=True)
        return float(values[counts == counts.max()].min())


class CategoricalSummary:
    """Counts of each value (compared as text) and of nulls."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.nulls = 0

    def update(self, values: pd.Series) -> None:
        text = as_text(values)
        self.nulls += int(text.isna().sum())
        for value, count in text.value_counts(dropna=True).items():
            self.counts[value] = self.counts.get(value, 0) + int(count)

    @property
    def count(self) -> int:
        return sum(self.counts.values())


def as_text(values: pd.Series) -> pd.Series:
    """Categories are compared as text so that 3, 3.0 from JSON and '3' from CSV agree between fit and predict."""
    out = values.astype(object).where(values.notna(), None)
    return out.map(lambda v: None if v is None else str(v))
