"""baseline: a scikit-learn model on the same split as the network (training/baseline.py), logged to the run as
baseline_test_<metric>. A baseline that cannot be fitted is logged and skipped; it never fails the run."""
import time

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import kinds
from preprocessing.steps import Prepared, Splits, Validated
from tasks import tracking
from tasks.inputs import load_transform
from training import baseline as core
from training import evaluation


def fit_baseline(validated: Validated, splits: Splits, prepared: Prepared, config: core.BaselineConfig,
                 seed: int) -> tuple[core.Baseline, dict]:
    """The data type's baseline fitted on the train split and its test metrics (original scale)."""
    transform = load_transform(prepared)
    result, test_targets = kinds.of(transform).fit_baseline(validated, splits, prepared, transform, config, seed)
    target = transform.target
    served = torch.from_numpy(np.asarray(result.served, dtype=np.float32))
    truth = torch.from_numpy(np.array(test_targets))
    if target.regression:
        truth = truth.double() * target.std + target.mean
    metrics = evaluation.test_metrics(target.task, served, truth)
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
