"""validate: check the snapshot against the config before anything is trained."""
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing.config import DataConfig
from preprocessing.validate import validate_table
from tasks import tracking
from tasks.steps import Snapshot, Validated


@task(name="validate", cache_policy=NO_CACHE)
def validate(snapshot: Snapshot, config: DataConfig, run_id: str) -> Validated:
    logger = get_run_logger()
    frame, schema = validate_table(pd.read_parquet(snapshot.path), config, snapshot.source)
    for note in schema.notes:
        logger.warning(note)
    path = Path(snapshot.path).with_name("validated.parquet")
    frame.to_parquet(path, index=False)
    tracking.log_params(run_id, "validate", {
        "target": schema.target, "task": schema.task, "n_classes": len(schema.classes),
        "numeric_columns": len(schema.numeric), "categorical_columns": len(schema.categorical),
        "rows": schema.n_rows})
    logger.info(f"{schema.task} on '{schema.target}': {len(schema.numeric)} numeric and "
                f"{len(schema.categorical)} categorical feature(s), {schema.n_rows} rows"
                + (f", classes {schema.classes}" if schema.classes else ""))
    return Validated(path, schema.to_dict())
