"""The training loop. Data are tensors already in memory: batches are sliced from a shuffled index rather than
drawn through a per-sample DataLoader, which is several times faster for tabular data (see FIELD-NOTES)."""
import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from training.callbacks import Callback
from training.objectives import Objective


@dataclass
class Tensors:
    features: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device) -> "Tensors":
        return Tensors(self.features.to(device), self.targets.to(device))


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, scheduler=None,
                 *, max_epochs: int, batch_size: int, device: torch.device, seed: int = 0,
                 monitor: str = "val_loss", callbacks: list[Callback] = (), progress_bar: bool | None = None):
        self.model, self.objective, self.optimizer, self.scheduler = model.to(device), objective, optimizer, scheduler
        self.max_epochs, self.batch_size, self.device, self.monitor = max_epochs, batch_size, device, monitor
        self.callbacks = list(callbacks)
        self.progress_bar = progress_bar  # None: only when writing to a terminal
        self.generator = torch.Generator().manual_seed(seed)  # shuffling order, saved in checkpoints
        torch.manual_seed(seed)  # initial weights and dropout
        self.epoch = 0
        self.history: list[dict] = []
        self.should_stop = False

    def fit(self, train: Tensors, val: Tensors) -> list[dict]:
        train, val = train.to(self.device), val.to(self.device)
        self._hook("on_fit_start")
        while self.epoch < self.max_epochs and not self.should_stop:
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self._train_epoch(train)
            metrics = {"epoch": self.epoch + 1, "train_loss": train_loss, **self.validate(val), "lr": lr}
            self._step_scheduler(metrics)
            self.epoch += 1
            self.history.append(metrics)
            self._hook("on_epoch_end", metrics)
        self._hook("on_fit_end")
        return self.history

    def _train_epoch(self, data: Tensors) -> float:
        self.model.train()
        order = torch.randperm(len(data), generator=self.generator).to(self.device)
        starts = range(0, len(data), self.batch_size)
        total, seen = torch.zeros((), device=self.device), 0
        bar = tqdm(starts, desc=f"epoch {self.epoch + 1}", leave=False, unit="batch",
                   disable=None if self.progress_bar is None else not self.progress_bar)
        for start in bar:
            index = order[start:start + self.batch_size]
            if len(index) < 2 and seen:  # BatchNorm cannot train on a batch of one; skip that last straggler
                continue
            with self._autocast():
                loss = self.objective.loss_value(self.model(data.features[index]), data.targets[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(index)  # stays on the device: no sync per batch
            seen += len(index)
        return (total / seen).item()

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Raw network outputs in eval mode, batched, as float32 on the trainer's device."""
        self.model.eval()
        features = features.to(self.device)
        chunks, step = [], max(self.batch_size, 4096)
        for start in range(0, len(features), step):
            with self._autocast():
                chunks.append(self.model(features[start:start + step]).float())
        return torch.cat(chunks)

    def validate(self, data: Tensors) -> dict[str, float]:
        outputs = self.predict(data.features)
        loss = self.objective.loss_value(outputs, data.targets).item()
        return {"val_loss": loss, **self.objective.val_metrics(outputs, data.targets)}

    def _step_scheduler(self, metrics: dict) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics[self.monitor])
        else:
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
