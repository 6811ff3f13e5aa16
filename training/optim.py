"""Optimizer and LR-scheduler factories from TrainerConfig, and what makes an optimizer's first step cheap: torch's
CPU thread count for the network's size, and torch._dynamo imported ahead of it."""
import math

import torch
from torch import nn
from torch.optim import lr_scheduler

from training.config import SchedulerConfig, TrainerConfig
from training.metrics import resolve_mode

# Multiply-adds per training step below which one CPU thread is fastest. Measured on the 2-core machine with an
# MLP, batch 256: at 1.6M (hidden 64) 1 thread 0.6 ms against 2 threads 1.2-7.3 ms, at 69M (hidden 512) 10 ms against
# 18-51 ms whenever another process was busy; torch's own threads only paid off beyond that, on an idle machine.
SINGLE_THREAD_WORK = 2 ** 26
# Layers whose work is not their parameter count times the batch (weights reused per pixel, token or time step).
_REUSED_WEIGHTS = (nn.modules.conv._ConvNd, nn.RNNBase, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag)


def build_optimizer(params, config: TrainerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return adam(params, lr=config.lr, weight_decay=config.weight_decay)


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
    if name == "auto":
        raise ValueError("scheduler 'auto' is made per task first: SchedulerConfig.for_task")
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


def param_groups(network: nn.Module, lr: float, backbone_lr_mult: float = 1.0, keep_frozen: bool = False):
    """What the optimizer steps: the trainable parameters (all of them with `keep_frozen`, for feature layers that
    are unfrozen later: a parameter without a gradient is skipped by every torch optimizer), as one list, or, with
    a backbone_lr_mult other than 1, two groups: the head's (and anything else outside the feature layers) at `lr`
    first, so the logged lr is the head's, then the feature layers' at lr x backbone_lr_mult."""
    from models.freezing import feature_parameters

    chosen = [p for p in network.parameters() if keep_frozen or p.requires_grad]
    if backbone_lr_mult == 1.0:
        return chosen
    features = {id(p) for p in feature_parameters(network)}
    head = [p for p in chosen if id(p) not in features]
    backbone = [p for p in chosen if id(p) in features]
    return [group for group in ({"params": head, "lr": lr}, {"params": backbone, "lr": lr * backbone_lr_mult})
            if group["params"]]


def make_trainer(network, objective, config: TrainerConfig, seed: int, device, callbacks, trainer_class=None,
                 backbone_lr_mult: float = 1.0, keep_frozen: bool = False):
    """Optimizer (trainable parameters only, unless `keep_frozen`; the feature layers at lr x backbone_lr_mult) and
    scheduler from config (its task defaults made for the objective's task), wired into a Trainer (or a subclass)."""
    from training.trainer import Trainer

    config = config.for_task(objective.task)
    optimizer = build_optimizer(param_groups(network, config.lr, backbone_lr_mult, keep_frozen), config)
    monitor = config.early_stopping.monitor
    scheduler = build_scheduler(optimizer, config.scheduler, config.n_epochs,
                                resolve_mode(monitor, config.early_stopping.mode))
    return (trainer_class or Trainer)(network, objective, optimizer, scheduler, max_epochs=config.n_epochs,
                                      device=device, seed=seed, monitor=monitor, callbacks=callbacks)


def cpu_threads_for(network: nn.Module, batch_size: int, available: int) -> int:
    """torch's CPU thread count for training `network` on batches of `batch_size` rows (the batch size follows the
    data's size), when train.cpu_threads does not set it. One thread for a fully connected network whose step is
    smaller than SINGLE_THREAD_WORK multiply-adds (about parameters x batch rows): such steps are too short to share,
    and under CPU contention torch's threads wait on each other (a 2-epoch MLP on 100k rows with one busy competing
    process: 2 threads 4.98 s, 1 thread 0.97 s). Convolutional, recurrent, attention and embedding networks, whose
    work the parameter count does not show, and larger networks keep `available` (torch's default)."""
    if any(isinstance(module, _REUSED_WEIGHTS) for module in network.modules()):
        return available
    work = batch_size * sum(p.numel() for p in network.parameters())
    return 1 if work < SINGLE_THREAD_WORK else available


def import_dynamo() -> None:
    """Import torch._dynamo now, e.g. on a background thread while the process waits (train.py does).

    Every torch.optim optimizer imports torch._dynamo on first use, even when nothing is compiled:
    Optimizer.__init__'s add_param_group and zero_grad are wrapped in torch._disable_dynamo, which imports it on the
    first call, and step() runs `import torch._dynamo` and torch._dynamo.graph_break() on every call. That import
    (sympy, mpmath, torch.fx's symbolic shapes; 1.3-2.3 s here) was the 2.2 s before the first epoch. It cannot be
    skipped without patching torch, only moved off the critical path. Python's import lock makes an optimizer created
    meanwhile wait for the half-finished import rather than see a partial module."""
    import torch._dynamo  # noqa: F401
