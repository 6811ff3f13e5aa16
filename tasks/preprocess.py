"""preprocess: fit the type's transform on the train split only, apply it, save its state.

Tables: imputation, scaling and encoding, applied to every split and written as arrays. Images: normalisation
statistics from the train split and the albumentations pipelines (serialised); the images stay in the cache and
are augmented while training. Texts: cleaning steps, vocabulary (min_freq, max_vocab) and max_len from the train
split; every split written as 0-padded token ids."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import image, streaming, tabular, text
from preprocessing.config import ImageConfig, TabularConfig, TextConfig
from preprocessing.split import SPLITS
from preprocessing.targets import fit_target
from preprocessing.validate import TableSchema
from tasks import tracking
from tasks.parallel import ParallelConfig, chunk_mapper
from tasks.steps import Prepared, Splits, Validated


def _tabular(parts: dict, schema: TableSchema, config: TabularConfig, run_id: str) -> tuple[dict, dict, str]:
    state = tabular.fit(parts["train"], schema, config)
    transform = tabular.TabularTransform(state)
    if config.missing == "drop_rows":  # only training rows are dropped; val/test are imputed as predict would
        parts["train"] = parts["train"].dropna(subset=transform.input_columns).reset_index(drop=True)
    arrays = {}
    for name, part in parts.items():
        arrays[f"{name}_features"] = transform.features(part, f"{name} split")
        arrays[f"{name}_targets"] = transform.encode_target(part[schema.target])
    tracking.log_params(run_id, "preprocess", transform.describe())
    return state, arrays, (f"preprocessed into {transform.n_features} features "
                           f"({len(parts['train'])} training rows after null handling)")


def _image(parts: dict, schema: TableSchema, config: ImageConfig, cache: Path, run_id: str, work: Path):
    images = np.load(cache, mmap_mode="r")
    state = image.fit(images[np.sort(parts["train"]["cache_row"].to_numpy())], schema.classes, config, schema.target)
    index = {c: i for i, c in enumerate(schema.classes)}
    arrays = {}
    for name, part in parts.items():
        arrays[f"{name}_rows"] = part["cache_row"].to_numpy()
        arrays[f"{name}_targets"] = np.array([index[v] for v in part[schema.target]], dtype=np.int64)
    augmentation = work / "augmentation.json"
    augmentation.write_text(json.dumps(state["train_pipeline"], indent=1))
    tracking.configure().log_artifact(run_id, str(augmentation), "preprocess")
    tracking.log_params(run_id, "preprocess", {
        **{k: v for k, v in config.model_dump().items() if k not in ("augment", "mean", "std")},
        "augment": ",".join(spec["name"] for spec in config.augmentations()),
        "mean": [round(m, 4) for m in state["mean"]], "std": [round(s, 4) for s in state["std"]]})
    return state, arrays, (f"images {config.image_size}x{config.image_size}x{config.channels}, "
                           f"mean {[round(m, 3) for m in state['mean']]}, std {[round(s, 3) for s in state['std']]}")


def _text(parts: dict, schema: TableSchema, config: TextConfig, run_id: str, work: Path, parallel: ParallelConfig):
    column, train = config.text_column, parts["train"]
    target = fit_target(train[schema.target], schema.target, schema.task, schema.classes)
    arrays = {}
    with chunk_mapper(parallel) as map_chunks:  # cleaning and tokenization, chunk by chunk on Dask if asked
        state, arrays["train_ids"] = text.fit(train[column], target, config, map_chunks)
        transform = text.TextTransform(state)
        for name, part in parts.items():
            if name != "train":
                arrays[f"{name}_ids"] = transform.encode(part[column], map_chunks)
        if map_chunks is not None:
            tracking.log_params(run_id, "preprocess", map_chunks.record())
    for name, part in parts.items():
        arrays[f"{name}_targets"] = transform.encode_target(part[schema.target])
    stats = state["stats"]
    val_unk = text.unk_share(arrays["val_ids"])
    tracking.log_params(run_id, "preprocess", transform.describe())
    tracking.log_metrics(run_id, {"vocab_size_before": stats["vocab_before"], "vocab_size_after": stats["vocab_after"],
                                  "train_unk_share": stats["train_unk_share"], "val_unk_share": val_unk,
                                  "train_truncated_share": stats["train_truncated_share"]})
    examples = work / "cleaning_examples.csv"
    sample = train[column].head(20)
    pd.DataFrame({"raw": sample, "cleaned": text.clean(sample, config)}).to_csv(examples, index=False)
    tracking.configure().log_artifact(run_id, str(examples), "preprocess")
    return state, arrays, (f"vocabulary {stats['vocab_after']} tokens (of {stats['vocab_before']} in the train split, "
                           f"min_freq {config.min_freq}, max_vocab {config.max_vocab}); max_len {state['max_len']} "
                           f"({stats['train_truncated_share']:.1%} of train texts truncated); <unk> share "
                           f"{stats['train_unk_share']:.1%} train, {val_unk:.1%} val")


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(validated: Validated, splits: Splits, config: TabularConfig, image_config: ImageConfig,
               text_config: TextConfig, run_id: str, parallel: ParallelConfig = ParallelConfig()) -> Prepared:
    schema = TableSchema.from_dict(validated.schema)
    if validated.memory_budget_mb:
        return _streamed(validated, splits, schema, config, run_id)
    frame = pd.read_parquet(validated.path)
    rows = np.load(splits.path)
    parts = {name: frame.iloc[rows[name]].reset_index(drop=True) for name in SPLITS}
    work = Path(validated.path).parent
    if validated.cache is not None:
        state, arrays, summary = _image(parts, schema, image_config, validated.cache, run_id, work)
    elif validated.data_type == "text":
        state, arrays, summary = _text(parts, schema, text_config, run_id, work, parallel)
    else:
        state, arrays, summary = _tabular(parts, schema, config, run_id)
    np.savez(work / "arrays.npz", **arrays)
    parts["test"].to_parquet(work / "test_rows.parquet", index=False)
    return _prepared(work, work / "arrays.npz", state, summary, run_id, validated.cache)


def _streamed(validated: Validated, splits: Splits, schema: TableSchema, config: TabularConfig,
              run_id: str) -> Prepared:
    """A table larger than memory: one pass over the record batches fits the statistics on the train rows, a
    second applies them and appends every split to .npy files that training streams."""
    work = Path(validated.path).parent
    stream = streaming.ParquetStream(validated.path, validated.memory_budget_mb)
    assignment = streaming.split_assignment(stream.n_rows, dict(np.load(splits.path)))
    fitting = streaming.fit_stream(stream, assignment, schema, config)
    state, train_rows = fitting.state(), fitting.rows
    manifest = streaming.write_splits(stream, assignment, state, train_rows, work / "arrays",
                                      work / "test_rows.parquet")
    transform = tabular.TabularTransform(state)
    tracking.log_params(run_id, "preprocess", {**transform.describe(), "memory_budget_mb": stream.budget.mb,
                                               "record_batch_rows": stream.batch_rows,
                                               "shuffle_buffer_rows": manifest["buffer_rows"],
                                               "quantiles": "exact" if fitting.quantiles_exact else
                                               f"sample of {streaming.QUANTILE_SAMPLE} values"})
    summary = (f"preprocessed into {transform.n_features} features in record batches of {stream.batch_rows} rows "
               f"({train_rows} training rows after null handling); training streams them from disk through a "
               f"shuffle buffer of {manifest['buffer_rows']} rows")
    return _prepared(work, work / "arrays", state, summary, run_id)


def _prepared(work: Path, arrays: Path, state: dict, summary: str, run_id: str, cache: Path | None = None) -> Prepared:
    state_path = work / "preprocessing.json"
    state_path.write_text(json.dumps(state, indent=1))
    tracking.configure().log_artifact(run_id, str(state_path), "preprocess")
    get_run_logger().info(summary)
    return Prepared(arrays, state_path, work / "test_rows.parquet", cache)
