"""validate: check the snapshot against the config before anything is trained, through the data type's kind (tables
in memory or batch by batch, texts, images). Images are decoded here, once: unreadable files are listed in an
artifact and skipped, and the decoded images are cached by fingerprint."""
import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import kinds
from preprocessing.config import DataConfig, ImageConfig, TextConfig
from preprocessing.kinds.base import Settings
from preprocessing.steps import Snapshot, Validated
from tasks import tracking
from tasks.inputs import record
from tasks.parallel import ParallelConfig, chunk_mapper


def cache_root() -> Path:
    """Decoded images, kept across runs (keyed by data fingerprint): TORCHYARD_CACHE_DIR or .torchyard/cache."""
    return Path(os.environ.get("TORCHYARD_CACHE_DIR", tracking.REPO / ".torchyard" / "cache"))


@task(name="validate", cache_policy=NO_CACHE)
def validate(snapshot: Snapshot, config: DataConfig, image_config: ImageConfig, text_config: TextConfig,
             run_id: str, parallel: ParallelConfig = ParallelConfig()) -> Validated:
    logger = get_run_logger()
    kind = kinds.get(config.data_type)
    settings = Settings(config, image=image_config, text=text_config, cache_dir=cache_root())
    checked = kind.validate(snapshot, settings, lambda: chunk_mapper(parallel))
    record(run_id, "validate", checked.record, logger)
    path = Path(snapshot.path)
    if checked.frame is not None:
        path = path.with_name("validated.parquet")
        checked.frame.to_parquet(path, index=False)
    schema = checked.schema
    for note in schema.notes:
        logger.warning(note)
    tracking.log_params(run_id, "validate", {
        "target": schema.target, "task": schema.task, "n_classes": len(schema.classes),
        "numeric_columns": len(schema.numeric), "categorical_columns": len(schema.categorical),
        "rows": schema.n_rows})
    logger.info(f"{schema.task} on '{schema.target}': {schema.n_rows} {kind.describe_inputs(schema, settings)}"
                + (f", classes {schema.classes}" if schema.classes else ""))
    return Validated(path, schema.to_dict(), checked.cache, config.data_type, config.memory_budget_mb)
