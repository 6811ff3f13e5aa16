"""The interface every data type implements (preprocessing/kinds/<type>.py), with the defaults most share.

The pipeline steps call a kind and record what it returns: collect -> `collect`, validate -> `validate`,
preprocess -> `prepare`, baseline -> `fit_baseline`, train -> `batch_source`, `input_size`, `loader_workers`,
`distributed_refusal`; predict.py, serving and promotion -> `read_inputs`, `predict_frame`, `input_schema`. A kind
imports neither Prefect nor MLflow: what a step should log comes back as a `Record`.
"""
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from preprocessing.config import DataConfig, ImageConfig, TabularConfig, TextConfig
from preprocessing.errors import DataError
from preprocessing.sources import fingerprint, read_table
from preprocessing.split import SPLITS
from preprocessing.steps import Prepared, Snapshot, Splits, Validated
from preprocessing.validate import TableSchema


@dataclass
class Settings:
    """The data-side config sections a kind reads."""

    data: DataConfig | None = None  # collect and validate read it; preprocess does not
    tabular: TabularConfig = field(default_factory=TabularConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    cache_dir: Path | None = None  # images: decoded files kept across runs, keyed by the data's fingerprint
    registry: Any = None  # the model registry (tasks/registry.py) for a models:/ reference; the core imports no MLflow


@dataclass
class Record:
    """What a step should log for its kind: params (under the step's prefix), metrics, artifact files, info lines."""

    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class Collected:
    frame: pd.DataFrame  # the snapshot's rows, or its first rows when it was copied in record batches
    n_rows: int
    fingerprint: str
    summary: str
    written: bool = False  # the kind wrote the snapshot itself


@dataclass
class Checked:
    frame: pd.DataFrame | None  # usable rows, to be written as the validated snapshot; None: the snapshot as it is
    schema: TableSchema
    cache: Path | None = None
    record: Record = field(default_factory=Record)


@dataclass
class Fitted:
    state: dict  # the fitted preprocessing state (JSON)
    arrays: dict  # what arrays.npz holds
    summary: str
    record: Record = field(default_factory=Record)
    arrays_path: Path | None = None  # set when the kind wrote the arrays itself (a streamed table)


class Kind:
    name: str
    model_type: str  # the model type that takes this data (models/config.py's ModelConfig.type)
    predict_rows: int | None = None  # rows per ONNX Runtime call when predicting (None: all at once)
    torchscript_export: bool = True  # ONNX through torch's fast TorchScript exporter (tasks/export.py says why)

    @property
    def model_types(self) -> tuple[str, ...]:
        """Every model type that can take this data (the default one first)."""
        return (self.model_type,)

    # ---------------------------------------------------------------- the pipeline steps

    def collect(self, settings: Settings, work_dir: Path, snapshot: Path) -> Collected:
        """Read the source: a table of rows (here), or for images the listing of files and labels."""
        config = settings.data
        frame = read_table(config.source, config.format, encoding_errors=config.encoding_errors,
                           max_file_mb=config.max_file_mb, max_line_mb=config.max_line_mb)
        summary = f"read {len(frame)} rows x {len(frame.columns)} columns from {config.source}"
        summary += "".join(f"; warning: {note}" for note in frame.attrs.get("warnings", []))
        if frame.attrs.get("replaced_characters"):
            summary += (f"; {frame.attrs['replaced_characters']} invalid UTF-8 byte sequence(s) replaced by U+FFFD "
                        "(data.encoding_errors: replace)")
        return Collected(frame, len(frame), fingerprint(frame), summary)

    def validate(self, snapshot: Snapshot, settings: Settings, mapper=nullcontext) -> Checked:
        """The usable rows and the schema, or DataError. `mapper()` is a context manager giving a chunk mapper for
        per-file work (Dask) or None."""
        raise NotImplementedError

    def describe_inputs(self, schema: TableSchema, settings: Settings) -> str:
        return f"rows, {len(schema.numeric)} numeric and {len(schema.categorical)} categorical feature(s)"

    def prepare(self, validated: Validated, splits: Splits, settings: Settings, work: Path,
                mapper=nullcontext) -> Fitted:
        """Fit the transform on the train split, apply it to every split. Here: the validated rows in memory, split
        into parts for fit_parts; the raw test rows are written for promotion."""
        schema = TableSchema.from_dict(validated.schema)
        frame = pd.read_parquet(validated.path)
        rows = np.load(splits.path)
        parts = {name: frame.iloc[rows[name]].reset_index(drop=True) for name in SPLITS}
        fitted = self.fit_parts(parts, schema, settings, validated.cache, work, mapper)
        parts["test"].to_parquet(work / "test_rows.parquet", index=False)
        return fitted

    def fit_parts(self, parts: dict, schema: TableSchema, settings: Settings, cache: Path | None, work: Path,
                  mapper) -> Fitted:
        raise NotImplementedError

    def fit_baseline(self, validated: Validated, splits: Splits, prepared: Prepared, transform, config,
                     seed: int) -> tuple:
        """training/baseline.py's model for this data type fitted on (a seeded sample of at most
        config.max_train_rows of) the train split: (Baseline, test targets as prepared)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- training

    def transform(self, state: dict):
        """The transform (raw inputs -> model inputs, model outputs -> labels) of a fitted state."""
        raise NotImplementedError

    def input_size(self, transform) -> int:
        """What build_model takes as input_size (features, channels or vocabulary size)."""
        raise NotImplementedError

    def numeric_inputs(self, transform) -> int:
        """How many leading inputs are numeric columns (an MLP's periodic embeddings take those); 0: none."""
        return 0

    def split_rows(self, prepared: Prepared, split: str) -> int:
        return len(np.load(prepared.arrays)[f"{split}_targets"])

    def batch_source(self, prepared: Prepared, transform, split: str, batch_size: int, workers: int = 0):
        """A training/data.py-style source (batches(generator), ordered()) over one prepared split."""
        raise NotImplementedError

    def loader_workers(self, transform) -> int:
        """Worker processes for the training batch source (only images decode and augment on the side)."""
        return 0

    def distributed_refusal(self, prepared: Prepared, pretrained: bool) -> str | None:
        """Why train.distributed cannot run on this data, or None."""
        return "train.distributed trains from scratch; model.pretrained trains in one process" if pretrained else None

    def check_config(self, config) -> None:
        """Rules between this data type and the rest of a run's config (flows/config.py's RunConfig); ValueError
        when they clash. The config may be adjusted in place (a default that depends on the data type)."""

    # ---------------------------------------------------------------- prediction and serving

    def read_inputs(self, inputs: list[str], fmt: str, transform) -> pd.DataFrame:
        """What predict.py's --input names, as the table predict_frame takes: here one table of rows."""
        if len(inputs) > 1:
            raise DataError(f"a {self.name} model takes one --input table")
        return read_table(inputs[0], fmt)

    def predict_frame(self, predictor, frame: pd.DataFrame, name: str = "input") -> pd.DataFrame:
        """Predictions for a table of inputs (rows; for images a table of file paths), as promotion scores a test
        split and predict.py answers its input."""
        return predictor.predict(frame, name)

    def input_schema(self, transform) -> dict:
        """What a request to the REST API holds (`kind`: rows, texts or images, and their fields)."""
        raise NotImplementedError
