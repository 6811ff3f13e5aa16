"""preprocess: fit the tabular transform on the train split only, apply it to every split, save its state."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import tabular
from preprocessing.config import TabularConfig
from preprocessing.validate import TableSchema
from tasks import tracking
from tasks.steps import Prepared, Splits, Validated


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(validated: Validated, splits: Splits, config: TabularConfig, run_id: str) -> Prepared:
    schema = TableSchema.from_dict(validated.schema)
    frame = pd.read_parquet(validated.path)
    rows = np.load(splits.path)
    parts = {name: frame.iloc[rows[name]].reset_index(drop=True) for name in ("train", "val", "test")}

    state = tabular.fit(parts["train"], schema, config)
    transform = tabular.TabularTransform(state)
    if config.missing == "drop_rows":  # only training rows are dropped; val/test are imputed as predict would
        parts["train"] = parts["train"].dropna(subset=transform.input_columns).reset_index(drop=True)
    arrays = {}
    for name, part in parts.items():
        arrays[f"{name}_features"] = transform.features(part, f"{name} split")
        arrays[f"{name}_targets"] = transform.encode_target(part[schema.target])
    work = Path(validated.path).parent
    np.savez(work / "arrays.npz", **arrays)
    state_path = work / "preprocessing.json"
    state_path.write_text(json.dumps(state, indent=1))
    parts["test"].to_parquet(work / "test_rows.parquet", index=False)

    tracking.log_params(run_id, "preprocess", transform.describe())
    tracking.configure().log_artifact(run_id, str(state_path), "preprocess")
    get_run_logger().info(f"preprocessed into {transform.n_features} features "
                          f"({len(parts['train'])} training rows after null handling)")
    return Prepared(work / "arrays.npz", state_path, work / "test_rows.parquet")
