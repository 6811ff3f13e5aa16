"""validate: check the snapshot against the config before anything is trained. Images are decoded here, once:
unreadable files are listed in an artifact and skipped, and the decoded images are cached by fingerprint."""
import os
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import image, text
from preprocessing.config import DataConfig, ImageConfig, TextConfig
from preprocessing.streaming import ParquetStream, validate_stream
from preprocessing.validate import TableSchema, validate_table
from tasks import tracking
from tasks.parallel import ParallelConfig, chunk_mapper
from tasks.steps import Snapshot, Validated


def cache_root() -> Path:
    """Decoded images, kept across runs (keyed by data fingerprint): TORCHYARD_CACHE_DIR or .torchyard/cache."""
    return Path(os.environ.get("TORCHYARD_CACHE_DIR", tracking.REPO / ".torchyard" / "cache"))


def _decode(snapshot: Snapshot, listing: pd.DataFrame, config: ImageConfig, parallel: ParallelConfig, logger):
    cache = image.cache_path(cache_root(), snapshot.fingerprint, config)
    cached = image.load_cache(cache)
    if cached is not None:
        logger.info(f"decoded images found in the cache {cache}")
        return cache, cached[1]
    with chunk_mapper(parallel) as map_chunks:
        images, bad = image.decode_all(listing["path"].tolist(), config.channels, config.cache_size,
                                       map_chunks=map_chunks)
    if map_chunks is not None:
        logger.info("decoded on Dask: " + ", ".join(f"{k} {v}" for k, v in map_chunks.record().items()))
    image.save_cache(cache, images, bad)
    logger.info(f"decoded {len(images)} images to {config.cache_size}x{config.cache_size}x{config.channels}, "
                f"cached in {cache}")
    return cache, bad


@task(name="validate", cache_policy=NO_CACHE)
def validate(snapshot: Snapshot, config: DataConfig, image_config: ImageConfig, text_config: TextConfig,
             run_id: str, parallel: ParallelConfig = ParallelConfig()) -> Validated:
    logger = get_run_logger()
    if snapshot.memory_budget_mb:
        return _validated(_validate_stream(snapshot, config), snapshot.path, None, config, text_config, run_id)
    frame = pd.read_parquet(snapshot.path)
    cache = None
    if config.data_type == "image":
        image.train_pipeline(image_config.augmentations(), image_config.image_size)  # a bad augmentation: fail now
        cache, bad = _decode(snapshot, frame, image_config, parallel, logger)
        if bad:
            listed = Path(snapshot.path).with_name("bad_files.csv")
            pd.DataFrame(bad)[["path", "reason"]].to_csv(listed, index=False)
            tracking.configure().log_artifact(run_id, str(listed), "validate")
        frame, schema = image.check_decoded(frame, bad, config.target_column(), image_config.max_bad_fraction,
                                            snapshot.source)
        tracking.log_params(run_id, "validate", {"bad_files": len(bad)})
    elif config.data_type == "text":
        frame, schema = text.validate_texts(frame, config, text_config, snapshot.source)
        tracking.log_params(run_id, "validate", {"text_column": text_config.text_column,
                                                 "dropped_rows": snapshot.n_rows - schema.n_rows})
    else:
        frame, schema = validate_table(frame, config, snapshot.source)
    path = Path(snapshot.path).with_name("validated.parquet")
    frame.to_parquet(path, index=False)
    return _validated(schema, path, cache, config, text_config, run_id)


def _validate_stream(snapshot: Snapshot, config: DataConfig) -> TableSchema:
    """A streamed table is checked batch by batch; its snapshot is what later steps read (null targets skipped)."""
    stream = ParquetStream(snapshot.path, snapshot.memory_budget_mb, name=snapshot.source)
    return validate_stream(stream, config)


def _validated(schema: TableSchema, path: Path, cache, config: DataConfig, text_config: TextConfig,
               run_id: str) -> Validated:
    logger = get_run_logger()
    for note in schema.notes:
        logger.warning(note)
    tracking.log_params(run_id, "validate", {
        "target": schema.target, "task": schema.task, "n_classes": len(schema.classes),
        "numeric_columns": len(schema.numeric), "categorical_columns": len(schema.categorical),
        "rows": schema.n_rows})
    inputs = {"image": "images", "text": f"texts in '{text_config.text_column}'"}.get(
        config.data_type, f"rows, {len(schema.numeric)} numeric and {len(schema.categorical)} categorical feature(s)")
    logger.info(f"{schema.task} on '{schema.target}': {schema.n_rows} {inputs}"
                + (f", classes {schema.classes}" if schema.classes else ""))
    return Validated(path, schema.to_dict(), cache, config.data_type, config.memory_budget_mb)
