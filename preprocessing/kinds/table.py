"""Tables (CSV, Parquet, JSON): features from preprocessing/tabular.py. A table larger than memory
(data.memory_budget_mb) is copied, validated and prepared in record batches, and prepared as a folder of .npy memory
maps instead of one .npz: `streamed` tells them apart, and only this module needs to know."""
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from preprocessing import streaming, tabular
from preprocessing.kinds.base import Checked, Collected, Fitted, Kind, Record
from preprocessing.steps import Prepared
from preprocessing.tabular import TabularTransform, check_ranges
from preprocessing.validate import TableSchema, validate_table


def streamed(prepared: Prepared) -> bool:
    return Path(prepared.arrays).is_dir()


class Table(Kind):
    name = "tabular"
    model_type = "mlp"

    def collect(self, settings, work_dir, snapshot):
        config = settings.data
        if not config.memory_budget_mb:
            return super().collect(settings, work_dir, snapshot)
        stream = streaming.ParquetStream(config.source, config.memory_budget_mb)
        digest, head = streaming.copy_with_fingerprint(stream, snapshot)
        return Collected(head, stream.n_rows, digest, (
            f"streamed {stream.n_rows} rows x {len(stream.columns)} columns from {config.source} in record batches "
            f"of {stream.batch_rows} rows (data.memory_budget_mb {config.memory_budget_mb})"), written=True)

    def validate(self, snapshot, settings, mapper=nullcontext):
        if snapshot.memory_budget_mb:  # checked batch by batch; later steps read the snapshot (null targets skipped)
            stream = streaming.ParquetStream(snapshot.path, snapshot.memory_budget_mb, name=snapshot.source)
            return Checked(None, streaming.validate_stream(stream, settings.data))
        raw = pd.read_parquet(snapshot.path)
        frame, schema = validate_table(raw, settings.data, snapshot.source)
        check_ranges(raw, schema, snapshot.source)  # values float32 cannot hold, by the file's data row
        return Checked(frame, schema)

    def prepare(self, validated, splits, settings, work, mapper=nullcontext):
        if not validated.memory_budget_mb:
            return super().prepare(validated, splits, settings, work, mapper)
        # larger than memory: one pass over the record batches fits the statistics on the train rows, a second
        # applies them and appends every split to .npy files that training streams
        schema = TableSchema.from_dict(validated.schema)
        stream = streaming.ParquetStream(validated.path, validated.memory_budget_mb)
        assignment = streaming.split_assignment(stream.n_rows, dict(np.load(splits.path)))
        fitting = streaming.fit_stream(stream, assignment, schema, settings.tabular)
        state, train_rows = fitting.state(), fitting.rows
        manifest = streaming.write_splits(stream, assignment, state, train_rows, work / "arrays",
                                          work / "test_rows.parquet")
        transform = TabularTransform(state)
        params = {**transform.describe(), "memory_budget_mb": stream.budget.mb, "record_batch_rows": stream.batch_rows,
                  "shuffle_buffer_rows": manifest["buffer_rows"],
                  "quantiles": "exact" if fitting.quantiles_exact else f"sample of {streaming.QUANTILE_SAMPLE} values"}
        summary = (f"preprocessed into {transform.n_features} features in record batches of {stream.batch_rows} "
                   f"rows ({train_rows} training rows after null handling); training streams them from disk "
                   f"through a shuffle buffer of {manifest['buffer_rows']} rows")
        return Fitted(state, {}, summary, Record(params=params), arrays_path=work / "arrays")

    def fit_parts(self, parts, schema, settings, cache, work, mapper):
        config = settings.tabular
        state = tabular.fit(parts["train"], schema, config)
        transform = TabularTransform(state)
        if config.missing == "drop_rows":  # only training rows are dropped; val/test are imputed as predict would
            parts["train"] = parts["train"].dropna(subset=transform.input_columns).reset_index(drop=True)
        arrays = {}
        for name, part in parts.items():
            arrays[f"{name}_features"] = transform.features(part, f"{name} split")
            arrays[f"{name}_targets"] = transform.encode_target(part[schema.target])
        return Fitted(state, arrays, (f"preprocessed into {transform.n_features} features "
                                      f"({len(parts['train'])} training rows after null handling)"),
                      Record(params=transform.describe()))

    def transform(self, state):
        return TabularTransform(state)

    def input_size(self, transform) -> int:
        return transform.n_features

    def numeric_inputs(self, transform) -> int:
        return len(transform.state["numeric"])  # TabularTransform.features puts them first

    def split_rows(self, prepared, split):
        if streamed(prepared):  # a memory map's header
            return len(np.load(Path(prepared.arrays) / f"{split}_targets.npy", mmap_mode="r"))
        return super().split_rows(prepared, split)

    def batch_source(self, prepared, transform, split, batch_size, workers=0):
        from training.data import StreamedData, TensorData

        if streamed(prepared):  # read from disk in blocks through a shuffle buffer
            folder = Path(prepared.arrays)
            manifest = json.loads((folder / streaming.STREAM_MANIFEST).read_text())
            return StreamedData(folder / f"{split}_features.npy", folder / f"{split}_targets.npy", batch_size,
                                manifest["block_rows"], manifest["buffer_rows"])
        arrays = np.load(prepared.arrays)
        return TensorData(torch.from_numpy(arrays[f"{split}_features"]), torch.from_numpy(arrays[f"{split}_targets"]),
                          batch_size)

    def distributed_refusal(self, prepared, pretrained):
        if streamed(prepared):
            return ("train.distributed needs the table in memory; a table streamed with data.memory_budget_mb "
                    "trains in one process")
        return super().distributed_refusal(prepared, pretrained)

    def fit_baseline(self, validated, splits, prepared, transform, config, seed):
        from training import baseline

        if streamed(prepared):  # a seeded sample of the training rows, read from disk
            folder = Path(prepared.arrays)
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                      for name in ("train_features", "train_targets", "test_features", "test_targets")}
        else:
            arrays = np.load(prepared.arrays)
        rows = baseline.subsample(len(arrays["train_targets"]), config.max_train_rows, seed)
        result = baseline.tabular(np.asarray(arrays["train_features"][rows]),
                                  np.asarray(arrays["train_targets"][rows]), arrays["test_features"],
                                  transform.target, seed)
        return result, np.asarray(arrays["test_targets"])

    def input_schema(self, transform):
        state = transform.state
        columns = [{"name": c["name"], "type": "number"} for c in state["numeric"]]
        columns += [{"name": c["name"], "type": "category", "categories": c["categories"]}
                    for c in state["categorical"]]
        return {"kind": "rows", "columns": columns}


KIND = Table()
