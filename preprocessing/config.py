"""Typed configuration of the data steps: where the data comes from, how it is split and preprocessed."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = Field(
        "sklearn:wine",
        description="Local path, http(s):// or file:// URL of a CSV/Parquet/JSON-lines file, "
        "or a bundled sample: sklearn:wine, sklearn:breast_cancer, sklearn:diabetes, sklearn:iris.",
    )
    data_type: Literal["tabular"] = "tabular"
    format: Literal["auto", "csv", "parquet", "json"] = Field(
        "auto", description="File format; auto guesses from the file name and falls back to CSV."
    )
    target: str | None = Field(None, description="Target column; bundled samples default to 'target'.")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="auto: classification for text/bool targets and integer targets with few distinct values.",
    )
    features: list[str] | None = Field(None, description="Feature columns to use; default: all but the target.")
    ignore: list[str] = Field(default_factory=list, description="Columns to leave out (ids, timestamps...).")
    read_retries: int = Field(3, ge=0, description="Retries for transient errors reading a URL.")
    retry_delay_seconds: float = Field(2.0, ge=0)


class SplitConfig(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions train+val+test must sum to 1, got {total:g}")
        return self


class TabularConfig(_Section):
    missing: Literal["impute", "drop_rows", "drop_columns"] = Field(
        "impute",
        description="impute: fill nulls; drop_rows: drop training rows with a null feature; drop_columns: drop "
        "columns whose null fraction exceeds max_null_fraction and impute the rest. Prediction never drops rows: "
        "nulls there are imputed with the training statistics.",
    )
    numeric_impute: Literal["mean", "median", "most_frequent", "constant"] = "median"
    fill_value: float = Field(0.0, description="Value used by numeric_impute=constant.")
    categorical_impute: Literal["most_frequent", "constant"] = Field(
        "constant", description="constant: nulls become their own category '__missing__'."
    )
    max_null_fraction: float = Field(0.5, ge=0, le=1)
    scaler: Literal["standard", "minmax", "robust", "none"] = "standard"
    categorical: Literal["onehot", "index"] = Field(
        "onehot", description="onehot: one column per category plus an unknown bucket; index: one integer code, 0 = unknown."
    )
    max_categories: int = Field(50, ge=1, description="Most frequent categories kept per column; the rest are unknown.")
    scale_target: bool = Field(True, description="Standardise a regression target for training; predictions are unscaled.")
