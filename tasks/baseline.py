"""baseline: a scikit-learn model on the same split as the network (training/baseline.py), logged to the run as
baseline_test_<metric>. A baseline that cannot be fitted is logged and skipped; it never fails the run."""
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.inputs import load_transform
from tasks.steps import Prepared, Splits, Validated
from training import baseline as core
from training import evaluation


def _tabular(prepared: Prepared, target: dict, config: core.BaselineConfig, seed: int):
    if Path(prepared.arrays).is_dir():  # a streamed table: a seeded sample of the training rows, read from disk
        folder = Path(prepared.arrays)
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                  for name in ("train_features", "train_targets", "test_features", "test_targets")}
    else:
        arrays = np.load(prepared.arrays)
    rows = core.subsample(len(arrays["train_targets"]), config.max_train_rows, seed)
    result = core.tabular(np.asarray(arrays["train_features"][rows]), np.asarray(arrays["train_targets"][rows]),
                          arrays["test_features"], target, seed)
    return result, np.asarray(arrays["test_targets"])


def _text(validated: Validated, splits: Splits, prepared: Prepared, target: dict, config: core.BaselineConfig,
          seed: int):
    transform = load_transform(prepared)
    column = transform.config.text_column
    frame = pd.read_parquet(validated.path, columns=[column])
    positions = np.load(splits.path)
    arrays = np.load(prepared.arrays)
    rows = core.subsample(len(positions["train"]), config.max_train_rows, seed)
    texts = {name: transform.texts(frame.iloc[positions[name]]).fillna("").tolist() for name in ("train", "test")}
    result = core.text([texts["train"][i] for i in rows], arrays["train_targets"][rows], texts["test"], target, seed)
    return result, arrays["test_targets"]


def _image(prepared: Prepared, target: dict, config: core.BaselineConfig, seed: int):
    arrays = np.load(prepared.arrays)
    if len(arrays["train_rows"]) > config.max_image_rows:
        raise core.BaselineSkipped(f"{len(arrays['train_rows'])} training images is more than "
                                   f"baseline.max_image_rows ({config.max_image_rows})")
    transform = load_transform(prepared)
    cache = np.load(prepared.cache, mmap_mode="r")
    crops = {name: transform.eval_crop(cache[np.asarray(arrays[f"{name}_rows"])]) for name in ("train", "test")}
    result = core.image(crops["train"], arrays["train_targets"], crops["test"], target, seed)
    return result, arrays["test_targets"]


def fit_baseline(validated: Validated, splits: Splits, prepared: Prepared, config: core.BaselineConfig,
                 seed: int) -> tuple[core.Baseline, dict]:
    """The data type's baseline fitted on the train split and its test metrics (original scale)."""
    target = json.loads(Path(prepared.state_path).read_text())["target"]
    if validated.data_type == "text":
        result, test_targets = _text(validated, splits, prepared, target, config, seed)
    elif validated.data_type == "image":
        result, test_targets = _image(prepared, target, config, seed)
    else:
        result, test_targets = _tabular(prepared, target, config, seed)
    served = torch.from_numpy(np.asarray(result.served, dtype=np.float32))
    truth = torch.from_numpy(np.array(test_targets))
    if target["task"] == "regression":
        truth = truth.double() * target["std"] + target["mean"]
    metrics = evaluation.test_metrics(target["task"], served, truth)
    return result, {f"baseline_{name}": value for name, value in metrics.items()}


@task(name="baseline", cache_policy=NO_CACHE)
def baseline(validated: Validated, splits: Splits, prepared: Prepared, config: core.BaselineConfig, seed: int,
             run_id: str) -> dict | None:
    """baseline_test_<metric> for every test metric, or None when disabled, skipped or failed (logged why)."""
    logger = get_run_logger()
    if not config.enabled:
        tracking.set_tags(run_id, {"baseline.status": "disabled"})
        return None
    started = time.perf_counter()
    try:
        result, metrics = fit_baseline(validated, splits, prepared, config, seed)
    except core.BaselineSkipped as exc:
        logger.info(f"baseline skipped: {exc}")
        tracking.set_tags(run_id, {"baseline.status": "skipped", "baseline.reason": str(exc)[:5000]})
        return None
    except Exception as exc:  # noqa: BLE001 - a baseline is a yardstick; its failure must not cost the model
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(f"baseline failed ({reason}); the run goes on without it")
        tracking.set_tags(run_id, {"baseline.status": "failed", "baseline.reason": reason[:5000]})
        return None
    seconds = time.perf_counter() - started
    tracking.log_params(run_id, "baseline", {"model": result.name, "train_rows": result.train_rows})
    tracking.log_metrics(run_id, {**metrics, "baseline_seconds": seconds})
    tracking.set_tags(run_id, {"baseline.status": "fitted"})
    summary = ", ".join(f"{k.removeprefix('baseline_')} {v:.4f}" for k, v in metrics.items())
    logger.info(f"baseline {result.name} ({result.train_rows} training rows, {seconds:.1f}s): {summary}")
    return {"model": result.name, "seconds": seconds, "metrics": metrics}
