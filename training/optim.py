"""Optimizer and LR-scheduler factories from TrainerConfig."""
import math

import torch
from torch.optim import lr_scheduler

from training.config import SchedulerConfig, TrainerConfig


def build_optimizer(params, config: TrainerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


class WarmupDecay:
    """LambdaLR factor: linear warm-up, then linear/cosine decay to final_factor, or constant. A class, not a
    closure, so the scheduler's state_dict stays plain data."""

    def __init__(self, warmup_epochs: int, total_epochs: int, decay: str, final_factor: float):
        self.warmup, self.total, self.decay, self.final = warmup_epochs, total_epochs, decay, final_factor

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        if self.decay == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (epoch - self.warmup) / span)
        shape = 1 - progress if self.decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return self.final + (1 - self.final) * shape


def build_scheduler(optimizer, config: SchedulerConfig, n_epochs: int, monitor_mode: str):
    """The configured scheduler, or None. All are stepped once per epoch by the trainer."""
    name = config.name
    if name == "none":
        return None
    if name == "LambdaLR":
        return lr_scheduler.LambdaLR(optimizer, WarmupDecay(config.warmup_epochs, n_epochs, config.decay,
                                                            config.final_factor))
    if name == "StepLR":
        return lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if name == "MultiStepLR":
        return lr_scheduler.MultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma)
    if name == "ExponentialLR":
        return lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if name == "CosineAnnealingLR":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.t_max or n_epochs, eta_min=config.eta_min)
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=config.factor, patience=config.patience)


def make_trainer(network, objective, config: TrainerConfig, seed: int, device, callbacks, trainer_class=None):
    """Optimizer (trainable parameters only) and scheduler from config, wired into a Trainer (or a subclass)."""
    from training.callbacks import resolve_mode
    from training.trainer import Trainer

    optimizer = build_optimizer([p for p in network.parameters() if p.requires_grad], config)
    monitor = config.early_stopping.monitor
    scheduler = build_scheduler(optimizer, config.scheduler, config.n_epochs,
                                resolve_mode(monitor, config.early_stopping.mode))
    return (trainer_class or Trainer)(network, objective, optimizer, scheduler, max_epochs=config.n_epochs,
                                      device=device, seed=seed, monitor=monitor, callbacks=callbacks)
