"""split: seeded train/val/test row positions, stratified for classification."""
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing.config import SplitConfig
from preprocessing.split import split_indices
from preprocessing.steps import Splits, Validated
from preprocessing.streaming import ParquetStream, target_rows
from tasks import tracking


@task(name="split", cache_policy=NO_CACHE)
def split(validated: Validated, config: SplitConfig, seed: int, run_id: str) -> Splits:
    schema = validated.schema
    if validated.memory_budget_mb:  # positions in the file of the rows with a target; the file is never read whole
        stream = ParquetStream(validated.path, validated.memory_budget_mb)
        positions, target = target_rows(stream, schema["target"])
        parts = {name: positions[rows] for name, rows in split_indices(target, schema["task"], config, seed).items()}
    else:
        target = pd.read_parquet(validated.path, columns=[schema["target"]])[schema["target"]]
        parts = split_indices(target, schema["task"], config, seed)
    path = Path(validated.path).with_name("splits.npz")
    np.savez(path, **parts)
    sizes = {name: len(rows) for name, rows in parts.items()}
    tracking.log_params(run_id, "split", {**config.model_dump(), "seed": seed,
                                          "stratified": schema["task"] == "classification",
                                          **{f"{k}_rows": v for k, v in sizes.items()}})
    get_run_logger().info(f"split {sizes['train']}/{sizes['val']}/{sizes['test']} rows (train/val/test)")
    return Splits(path, sizes)
