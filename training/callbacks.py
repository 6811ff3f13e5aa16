"""Small callback objects with hooks, in the manner of Lightning: the loop stays readable and each concern
(early stopping, checkpoints, progress, logging) lives in one place.

Hooks: on_fit_start(trainer), on_epoch_end(trainer, metrics), on_fit_end(trainer). A callback with state to
resume implements state_dict()/load_state_dict() and is saved in every checkpoint under its `state_key`.
"""
import logging
import os
from pathlib import Path

import torch

from models.freezing import set_features_trainable
from training.metrics import resolve_mode

_LOGGER = logging.getLogger("torchyard.training")  # where callbacks log when given no `log`


class Callback:
    state_key: str | None = None

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_end(self, trainer, metrics: dict) -> None: ...
    def on_fit_end(self, trainer) -> None: ...


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved by min_delta for `patience` epochs; restores the best weights."""

    state_key = "early_stopping"

    def __init__(self, monitor="val_loss", mode="auto", patience=5, min_delta=0.0, restore_best=True):
        self.monitor, self.mode = monitor, resolve_mode(monitor, mode)
        self.patience, self.min_delta, self.restore_best = patience, min_delta, restore_best
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.best_weights: dict | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, trainer, metrics):
        if self.monitor not in metrics:
            raise ValueError(f"early_stopping.monitor '{self.monitor}' is not an epoch metric; "
                             f"available: {', '.join(sorted(metrics))}")
        value = metrics[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, metrics["epoch"], 0
            if self.restore_best:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True

    def on_fit_end(self, trainer):
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state["best_weights"]


class ModelCheckpoint(Callback):
    """Writes the whole training state (model, optimizer, scheduler, epoch, RNG, callbacks) after every epoch and
    resumes from it at fit start, so a retried task continues where the last one stopped."""

    def __init__(self, dirpath: str | os.PathLike, log=None, write: bool = True):
        self.path = Path(dirpath) / "last.ckpt"
        self.log = log or _LOGGER.info
        self.write = write  # data-parallel training: every process resumes, only rank 0 writes
        self.resumed_from: int | None = None

    def on_fit_start(self, trainer):
        if self.path.exists():
            trainer.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
            self.resumed_from = trainer.epoch
            self.log(f"resumed from {self.path} after epoch {trainer.epoch}")

    def on_epoch_end(self, trainer, metrics):
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        torch.save(trainer.state_dict(), partial)
        os.replace(partial, self.path)  # a crash mid-write never leaves a truncated checkpoint


class UnfreezeFeatures(Callback):
    """model.unfreeze_after: the feature layers (frozen until then) train from the end of epoch `after` on. The
    optimizer already holds their parameters (training/optim.py), so only requires_grad changes; a run resumed after
    that epoch unfreezes at its start (this callback runs after the checkpoint's)."""

    def __init__(self, after: int, log=None):
        self.after = after
        self.log = log or _LOGGER.info

    def on_fit_start(self, trainer):
        if trainer.epoch >= self.after:
            set_features_trainable(trainer.model, True)

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == self.after:
            set_features_trainable(trainer.model, True)
            self.log(f"feature layers unfrozen after epoch {self.after}")


class EpochSummary(Callback):
    """One line per epoch: the metrics and the learning rate."""

    def __init__(self, log=None):
        self.log = log or _LOGGER.info

    def on_epoch_end(self, trainer, metrics):
        parts = [f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"]
        self.log(f"epoch {metrics['epoch']}/{trainer.max_epochs}: " + ", ".join(parts))

    def on_fit_end(self, trainer):
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.best is not None:
                self.log(f"best {callback.monitor} {callback.best:.4g} at epoch {callback.best_epoch}"
                         + (" (stopped early)" if trainer.should_stop else ""))
