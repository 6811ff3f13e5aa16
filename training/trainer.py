"""The training loop: epochs of batches from a batch source (training/data.py), validation after each epoch,
callbacks for everything else."""
import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from training.callbacks import Callback
from training.objectives import Objective


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, scheduler=None,
                 *, max_epochs: int, device: torch.device, seed: int = 0,
                 monitor: str = "val_loss", callbacks: list[Callback] = (), progress_bar: bool | None = None):
        self.model, self.objective, self.optimizer, self.scheduler = model.to(device), objective, optimizer, scheduler
        self.max_epochs, self.device, self.monitor = max_epochs, device, monitor
        self.callbacks = list(callbacks)
        self.progress_bar = progress_bar  # None: only when writing to a terminal
        self.generator = torch.Generator().manual_seed(seed)  # shuffling order, saved in checkpoints
        torch.manual_seed(seed)  # initial weights and dropout
        self.epoch = 0
        self.history: list[dict] = []
        self.should_stop = False

    def fit(self, train, val) -> list[dict]:
        """Train on batch source `train`, validating on `val` after every epoch; returns the epoch metrics."""
        train, val = train.to(self.device), val.to(self.device)
        self._hook("on_fit_start")
        while self.epoch < self.max_epochs and not self.should_stop:
            lr = self.optimizer.param_groups[0]["lr"]  # the epoch's rate, before the scheduler steps
            metrics = {"epoch": self.epoch + 1, "train_loss": self._train_epoch(train), **self.validate(val), "lr": lr}
            self._step_scheduler(metrics)
            self.epoch += 1
            self.history.append(metrics)
            self._hook("on_epoch_end", metrics)
        self._hook("on_fit_end")
        return self.history

    def _train_epoch(self, data) -> float:
        self.model.train()
        total, seen = torch.zeros((), device=self.device), 0
        bar = tqdm(data.epoch(self.generator), total=data.n_batches(), desc=f"epoch {self.epoch + 1}", leave=False,
                   unit="batch", disable=None if self.progress_bar is None else not self.progress_bar)
        for inputs, targets in bar:
            with self._autocast():
                loss = self.objective.loss_value(self.model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(targets)  # stays on the device: no sync per batch
            seen += len(targets)
        return (total / seen).item()

    @torch.no_grad()
    def predict(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw network outputs (float32) in eval mode over `data` in row order, and the matching targets."""
        self.model.eval()
        outputs, targets = [], []
        for inputs, batch_targets in data.to(self.device).ordered():
            with self._autocast():
                outputs.append(self.model(inputs).float())
            targets.append(batch_targets)
        return torch.cat(outputs), torch.cat(targets)

    def validate(self, data) -> dict[str, float]:
        outputs, targets = self.predict(data)
        loss = self.objective.loss_value(outputs, targets).item()
        return {"val_loss": loss, **self.objective.val_metrics(outputs, targets)}

    def _step_scheduler(self, metrics: dict) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics[self.monitor])
        elif self.scheduler is not None:
            self.scheduler.step()

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _hook(self, name: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(self, *args)

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "history": self.history,
            "should_stop": self.should_stop,
            "rng": {"shuffle": self.generator.get_state(), "torch": torch.get_rng_state()},
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.should_stop = state["epoch"], state["history"], state["should_stop"]
        self.generator.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for callback in self.callbacks:
            if callback.state_key and callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
