"""preprocess: fit the data type's transform on the train split only, apply it, save its state
(preprocessing/kinds/ does the work; this task records it).

Tables: imputation, scaling and encoding, applied to every split and written as arrays (in record batches, as .npy
files that training streams, for a table larger than memory). Images: normalisation statistics from the train split
and the albumentations pipelines (serialised); the images stay in the cache and are augmented while training.
Texts: cleaning steps, vocabulary (min_freq, max_vocab) and max_len from the train split; every split written as
0-padded token ids."""
import json
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import kinds
from preprocessing.config import ImageConfig, TabularConfig, TextConfig
from preprocessing.kinds.base import Settings
from preprocessing.steps import Prepared, Splits, Validated
from tasks import registry, tracking
from tasks.inputs import record
from tasks.parallel import ParallelConfig, chunk_mapper


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(validated: Validated, splits: Splits, config: TabularConfig, image_config: ImageConfig,
               text_config: TextConfig, run_id: str, parallel: ParallelConfig = ParallelConfig()) -> Prepared:
    logger = get_run_logger()
    work = Path(validated.path).parent
    settings = Settings(None, config, image_config, text_config, registry=registry)
    fitted = kinds.get(validated.data_type).prepare(validated, splits, settings, work, lambda: chunk_mapper(parallel))
    if (arrays := fitted.arrays_path) is None:
        arrays = work / "arrays.npz"
        np.savez(arrays, **fitted.arrays)
    record(run_id, "preprocess", fitted.record, logger)
    state_path = work / "preprocessing.json"
    state_path.write_text(json.dumps(fitted.state, indent=1))
    tracking.configure().log_artifact(run_id, str(state_path), "preprocess")
    logger.info(fitted.summary)
    return Prepared(arrays, state_path, work / "test_rows.parquet", validated.cache)
