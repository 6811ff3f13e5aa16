"""Tables larger than memory: a Parquet file (or a folder of Parquet files) read in record batches with
pyarrow.parquet, validated, split and preprocessed one batch at a time.

The statistics are fitted by the same TabularFit and applied by the same TabularTransform as for a table in
memory; the features of each split are appended to .npy files that training reads back in blocks
(training/data.py StreamedData). How many rows are in memory at once follows from `data.memory_budget_mb`.
"""
import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from preprocessing.config import DataConfig, TabularConfig
from preprocessing.errors import DataError
from preprocessing.split import SPLITS
from preprocessing.tabular import TabularFit, TabularTransform, check_float32, row_numbers
from preprocessing.validate import (MAX_CLASSES_FOR_INTEGER_TARGET, MIN_ROWS_PER_CLASS, TableSchema,
                                    check_class_counts, check_target, decide_task, feature_candidates,
                                    is_numeric_feature, numeric_target, usable_features)

STREAM_MANIFEST = "stream.json"  # in the arrays folder: rows per split and the reader's block sizes
QUANTILE_SAMPLE = 100_000  # values kept per numeric column for the median, quartiles and mode
# Integers and booleans read as pandas' nullable types, so a batch with a null has the same dtype as one without.
_NULLABLE = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
             pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
             pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype()}


@dataclass(frozen=True)
class MemoryBudget:
    """How a budget in MiB becomes batch sizes. A record batch converted to pandas and transformed makes a few
    copies of itself (float64 columns, the encoded matrix, its float32 copy), so it gets 1/32 of the budget; the
    training shuffle buffer, held with its shuffled copy, gets 1/16. The rest is for what the budget does not
    set: the Parquet reader's row group (the file's writer chose its size), the split's row positions (8 bytes a
    row) and the allocators' slack (bench/bench_streaming.py measures the whole)."""

    mb: int

    @property
    def bytes(self) -> int:
        return self.mb * 2**20

    def record_batch_rows(self, schema: pa.Schema) -> int:
        row_bytes = sum(8 if pa.types.is_primitive(f.type) else 64 for f in schema) + 8  # text: ~one Python str
        return int(np.clip(self.bytes // (32 * row_bytes), 1024, 1_000_000))

    def buffer_rows(self, n_features: int) -> int:
        """Rows of float32 features in the training shuffle buffer (the reader keeps at least 2 batches)."""
        return int(max(1024, self.bytes // (16 * 4 * max(1, n_features))))


class ParquetStream:
    """Record batches of a local Parquet file or folder of Parquet files, in file order, one batch in memory."""

    def __init__(self, source: str | Path, memory_budget_mb: int, name: str | None = None,
                 batch_rows: int | None = None):
        self.path = Path(source).expanduser()
        self.name = name or str(source)
        if "://" in str(source):
            raise DataError(f"data.memory_budget_mb streams a local Parquet file or folder; {source} is a URL: "
                            "download it first")
        if not self.path.exists():
            raise DataError(f"data file not found: {source} (looked for {self.path.resolve()})")
        self.files = sorted(self.path.rglob("*.parquet")) if self.path.is_dir() else [self.path]
        if not self.files:
            raise DataError(f"{self.name} is a folder without .parquet files")
        try:
            self.schema = pq.read_schema(self.files[0])
            self.n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{self.name} could not be read as Parquet (data.memory_budget_mb streams Parquet "
                            f"only; convert CSV/JSON with pandas or pyarrow first): {exc}") from exc
        if not self.schema.names:
            raise DataError(f"{self.name} has no columns")
        if self.n_rows == 0:
            raise DataError(f"{self.name} has a schema but no data rows")
        self.columns = list(self.schema.names)
        self.budget = MemoryBudget(memory_budget_mb)
        self.batch_rows = batch_rows or self.budget.record_batch_rows(self.schema)

    def batches(self, columns: list[str] | None = None):
        """(first row, arrow RecordBatch) pairs, file after file. Column chunks are not pre-buffered and nothing is
        read ahead, so the reader holds about one row group of the file (its writer's choice) and one batch."""
        first = 0
        for path in self.files:
            reader = pq.ParquetFile(path, pre_buffer=False)
            if reader.schema_arrow != self.schema:
                raise DataError(f"{path} in {self.name} has other columns or types than {self.files[0].name}: "
                                "every file of a streamed folder must have the same schema")
            for batch in reader.iter_batches(batch_size=self.batch_rows, columns=columns, use_threads=False):
                if batch.num_rows:
                    yield first, batch
                    first += batch.num_rows

    def frames(self, columns: list[str] | None = None):
        for first, batch in self.batches(columns):
            yield first, to_frame(batch)


def to_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    return batch.to_pandas(types_mapper=_NULLABLE.get)


def copy_with_fingerprint(stream: ParquetStream, target: Path) -> tuple[str, pd.DataFrame]:
    """Write the snapshot (a Parquet copy, batch by batch) and return its content hash and its first rows.

    The hash covers the Arrow schema and every row's pandas hash; it does not depend on the batch size, but it
    differs from the fingerprint of the same table read whole (other dtypes)."""
    digest = hashlib.sha256(str(stream.schema).encode())
    head = None
    with pq.ParquetWriter(target, stream.schema) as writer:
        for _, batch in stream.batches():
            writer.write_batch(batch)
            frame = to_frame(batch)
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            head = frame.head(1000) if head is None else head
    return digest.hexdigest()[:16], head


def validate_stream(stream: ParquetStream, config: DataConfig) -> TableSchema:
    """What validate_table decides for a table in memory, in one pass over the batches: the same checks and
    messages, with data rows numbered from the start of the file. Rows with a null target are counted and left
    out by every later pass."""
    name, target, notes = stream.name, check_target(stream.columns, config, stream.name), []
    candidates = feature_candidates(stream.columns, config, target, name)
    numeric: dict[str, bool] = {}  # the columns with a value, and whether they are numeric
    null_targets, counts, distinct, dtype = 0, pd.Series(dtype="int64"), set(), None
    for first, frame in stream.frames(candidates + [target]):
        for column in candidates:
            if frame[column].notna().any():
                numeric[column] = is_numeric_feature(frame[column], column, name, first)
                if numeric[column]:  # values float32 cannot hold, named by the file's data row
                    present_values = frame[column].to_numpy(dtype="float64", na_value=0.0)
                    check_float32(present_values, column, name, frame[column], first + row_numbers(frame))
        labels = frame[target].dropna()  # index: row in the batch, for the row numbers in errors
        null_targets += len(frame) - len(labels)
        dtype = labels.dtype
        numbers = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if config.task == "regression" or (config.task == "auto" and numbers):
            numbers_ = numeric_target(labels, target, name, first)  # infinities or text: raises naming the row
            check_float32(numbers_.to_numpy(dtype="float64"), target, name, labels, first + row_numbers(labels))
        if len(distinct) <= MAX_CLASSES_FOR_INTEGER_TARGET:
            distinct.update(labels.unique().tolist())
        if config.task == "classification" or (config.task == "auto" and (
                not numbers or len(distinct) <= MAX_CLASSES_FOR_INTEGER_TARGET)):
            counts = counts.add(labels.value_counts(), fill_value=0)
    n_rows = stream.n_rows - null_targets
    if n_rows == 0:
        raise DataError(f"target column '{target}' in {name} has no values: all {stream.n_rows} rows are null")
    if null_targets:
        notes.append(f"dropped {null_targets} rows whose target '{target}' is null")
    usable = usable_features(candidates, [c for c in candidates if c not in numeric], name, notes)
    typed = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    task = decide_task(pd.Series(list(distinct), dtype=dtype if typed else object), config.task)
    classes = check_class_counts(counts.astype("int64"), target, name) if task == "classification" else []
    if task == "regression" and n_rows < MIN_ROWS_PER_CLASS:
        raise DataError(f"{name} has {n_rows} rows with a target; a train/val/test split needs at least 3")
    return TableSchema(target, task, [c for c in usable if numeric[c]], [c for c in usable if not numeric[c]],
                       classes, n_rows, notes)


def target_rows(stream: ParquetStream, target: str) -> tuple[np.ndarray, pd.Series]:
    """Positions (in the file) of the rows that have a target, and their targets: what the split is drawn from.
    Text labels are read dictionary-encoded (a few bytes a row), not as Python strings."""
    positions, parts = [], []
    for first, batch in stream.batches([target]):
        column = batch.column(0)
        keep = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        positions.append(keep + first)
        parts.append(column.take(pa.array(keep)))
    labels = pa.chunked_array(parts, type=stream.schema.field(target).type)
    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        encoded = labels.combine_chunks().dictionary_encode()
        categories = encoded.dictionary.to_pylist()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        series = pd.Series(pd.Categorical.from_codes(codes, categories).reorder_categories(sorted(categories)))
    else:
        series = pd.Series(labels.to_pandas(types_mapper=_NULLABLE.get))
    return np.concatenate(positions), series


def split_assignment(n_rows: int, parts: dict[str, np.ndarray]) -> np.ndarray:
    """One byte per file row: the index in SPLITS of the split it belongs to, -1 for none (null target)."""
    assignment = np.full(n_rows, -1, dtype=np.int8)
    for index, name in enumerate(SPLITS):
        assignment[parts[name]] = index
    return assignment


def fit_stream(stream: ParquetStream, assignment: np.ndarray, schema: TableSchema, config: TabularConfig,
               seed: int = 0) -> TabularFit:
    """The statistics of the training rows (`.state()`, `.rows` after null handling, `.quantiles_exact`)."""
    fitting = TabularFit(schema, config, sample_size=QUANTILE_SAMPLE, seed=seed)
    columns = list(schema.numeric) + list(schema.categorical) + [schema.target]
    train = SPLITS.index("train")
    for first, frame in stream.frames(columns):
        fitting.update(frame[assignment[first:first + len(frame)] == train])
    return fitting


class NpyWriter:
    """An .npy file of known shape written in row blocks, so the array never has to be in memory at once."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.path, self.shape, self.dtype, self.rows = Path(path), shape, np.dtype(dtype), 0
        self.file = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": shape})

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def check(self) -> None:
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")


def write_splits(stream: ParquetStream, assignment: np.ndarray, state: dict, train_rows: int, out: Path,
                 test_rows: Path) -> dict:
    """Apply the fitted transform batch by batch: features and targets of each split appended to
    `out/{split}_features.npy` and `{split}_targets.npy`, the raw test rows to `test_rows` (Parquet).
    Returns the manifest written to `out/stream.json`."""
    out.mkdir(parents=True, exist_ok=True)
    transform = TabularTransform(state)
    sizes = {name: int((assignment == i).sum()) for i, name in enumerate(SPLITS)}
    sizes["train"] = train_rows
    target_dtype = np.float32 if transform.target.regression else np.int64
    writers = {name: (NpyWriter(out / f"{name}_features.npy", (sizes[name], transform.n_features), np.float32),
                      NpyWriter(out / f"{name}_targets.npy", (sizes[name],), target_dtype)) for name in SPLITS}
    every_writer = [writer for pair in writers.values() for writer in pair]
    drop_rows = state["config"]["missing"] == "drop_rows"
    test_writer = None
    with ExitStack() as files:
        for writer in every_writer:
            files.enter_context(writer.file)
        for first, batch in stream.batches():
            where = assignment[first:first + batch.num_rows]
            frame = to_frame(batch)
            frame.index = pd.RangeIndex(first, first + len(frame))  # errors name the file's data row
            for index, name in enumerate(SPLITS):
                mask = where == index
                if not mask.any():
                    continue
                part = frame[mask]
                if name == "test":
                    rows = batch.filter(pa.array(mask))
                    test_writer = test_writer or files.enter_context(pq.ParquetWriter(test_rows, rows.schema))
                    test_writer.write_batch(rows)
                if name == "train" and drop_rows:
                    part = part.dropna(subset=transform.input_columns)
                features, targets = writers[name]
                features.write(transform.features(part, f"the {name} split"))
                targets.write(transform.encode_target(part[transform.target.name]))
    for writer in every_writer:
        writer.check()
    buffer_rows = stream.budget.buffer_rows(transform.n_features)
    manifest = {"rows": sizes, "n_features": transform.n_features, "memory_budget_mb": stream.budget.mb,
                "buffer_rows": buffer_rows, "block_rows": min(stream.batch_rows, buffer_rows)}
    (out / STREAM_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
