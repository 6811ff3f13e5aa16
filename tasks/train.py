"""train: build the network from config and run the trainer, with checkpoints, early stopping and per-epoch
metrics sent to MLflow asynchronously so that logging does not slow the loop."""
import json
import time
from pathlib import Path

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models import build_model, save_network
from models.config import ModelConfig
from preprocessing.tabular import TabularTransform
from tasks import tracking
from tasks.steps import Prepared, Trained
from training.callbacks import Callback, EarlyStopping, EpochSummary, ModelCheckpoint, resolve_mode
from training.config import TrainerConfig
from training.device import select_device
from training.objectives import make_objective
from training.optim import build_optimizer, build_scheduler
from training.trainer import Tensors, Trainer


class MlflowEpochLogger(Callback):
    """Sends each epoch's metrics in one asynchronous batch; waits for them once, at the end of training."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending = []
        self.seconds = 0.0  # time the training loop spent in logging calls

    def on_epoch_end(self, trainer, metrics):
        started = time.perf_counter()
        values = {k: v for k, v in metrics.items() if k != "epoch"}
        self.pending.append(tracking.log_metrics(self.run_id, values, step=metrics["epoch"], synchronous=False))
        self.seconds += time.perf_counter() - started

    def on_fit_end(self, trainer):
        started = time.perf_counter()
        for operation in self.pending:
            operation.wait()
        self.pending.clear()
        self.seconds += time.perf_counter() - started


def tensors(arrays, split: str) -> Tensors:
    return Tensors(torch.from_numpy(arrays[f"{split}_features"]), torch.from_numpy(arrays[f"{split}_targets"]))


def build_trainer(transform: TabularTransform, model_config: ModelConfig, config: TrainerConfig, seed: int,
                  device: torch.device, callbacks: list[Callback]) -> Trainer:
    """The network, optimizer and scheduler for this run, wired into a Trainer (also used by the benchmark)."""
    torch.manual_seed(seed)
    objective = make_objective(transform.target["task"], len(transform.target["classes"]))
    network = build_model(model_config, transform.n_features, objective.output_size)
    optimizer = build_optimizer(network.parameters(), config)
    monitor = config.early_stopping.monitor
    scheduler = build_scheduler(optimizer, config.scheduler, config.n_epochs,
                                resolve_mode(monitor, config.early_stopping.mode))
    return Trainer(network, objective, optimizer, scheduler, max_epochs=config.n_epochs,
                   batch_size=config.batch_size, device=device, seed=seed, monitor=monitor, callbacks=callbacks)


@task(name="train", cache_policy=NO_CACHE)
def train(prepared: Prepared, model_config: ModelConfig, config: TrainerConfig, seed: int, run_id: str,
          checkpoint_dir: Path) -> Trained:
    logger = get_run_logger()
    device, warning = select_device(config.gpu_id)
    if warning:
        logger.warning(warning)
    transform = TabularTransform(json.loads(Path(prepared.state_path).read_text()))
    arrays = np.load(prepared.arrays)
    stopping = config.early_stopping
    mlflow_logger = MlflowEpochLogger(run_id)
    callbacks = [mlflow_logger, EpochSummary(logger.info), ModelCheckpoint(checkpoint_dir, logger.info)]
    if stopping.enabled:
        callbacks.insert(0, EarlyStopping(stopping.monitor, stopping.mode, stopping.patience, stopping.min_delta,
                                          stopping.restore_best))
    trainer = build_trainer(transform, model_config, config, seed, device, callbacks)
    tracking.log_params(run_id, "model", model_config.model_dump())
    tracking.log_params(run_id, "train", {**config.model_dump(), "seed": seed, "device": str(device)})

    started = time.perf_counter()
    history = trainer.fit(tensors(arrays, "train"), tensors(arrays, "val"))
    seconds = time.perf_counter() - started
    tracking.log_metrics(run_id, {"train_seconds": seconds, "epochs_run": len(history),
                                  "mlflow_logging_seconds": mlflow_logger.seconds})
    logger.info(f"trained {len(history)} epoch(s) on {device} in {seconds:.1f}s "
                f"({mlflow_logger.seconds * 1000 / max(1, len(history)):.1f} ms/epoch in MLflow logging)")
    path = Path(prepared.arrays).with_name("network.pt")
    save_network(path, model_config, transform.n_features, trainer.objective.output_size, trainer.model)
    return Trained(path, len(history), str(device))
