"""The training set-up, assembled in one place from the configs: seed, objective, network, optimizer, scheduler
and the standard callbacks, wired into a Trainer. Used by the train task (which adds its MLflow callback), by the
data-parallel worker (training/ddp.py) and, through the task, by sweeps and the LR range test."""
from pathlib import Path

import torch

from models import build_model, load_weights, transfer
from models.config import ModelConfig
from models.freezing import set_features_trainable
from training.callbacks import Callback, EarlyStopping, EpochSummary, ModelCheckpoint, UnfreezeFeatures
from training.config import TrainerConfig
from training.objectives import make_objective
from training.optim import make_trainer
from training.trainer import Trainer


def callbacks_for(config: TrainerConfig, checkpoint_dir: str | Path | None, log=None, extra=(),
                  write_checkpoints: bool = True) -> list[Callback]:
    """Early stopping (when enabled) first, so the checkpoint written after it holds its state; then `extra`
    (e.g. MLflow logging), the checkpoint and, when `log` is given, one summary line per epoch."""
    stopping = config.early_stopping
    callbacks = [EarlyStopping(stopping.monitor, stopping.mode, stopping.patience, stopping.min_delta,
                               stopping.restore_best)] if stopping.enabled else []
    callbacks += list(extra)
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(checkpoint_dir, log, write=write_checkpoints))
    if log is not None:
        callbacks.append(EpochSummary(log))
    return callbacks


def build_network(model_config: ModelConfig, input_size: int, output_size: int,
                  pretrained: dict | None = None) -> tuple[torch.nn.Module, ModelConfig]:
    """The configured network (a torchvision one with model.weights loaded), or `pretrained` (a saved 'network'
    entry) with a new head for `output_size`; its feature layers frozen for freeze_features and unfreeze_after.
    Returns it and the config it was built from."""
    frozen = model_config.freeze_features or model_config.unfreeze_after is not None
    if pretrained is not None:
        return transfer(pretrained, output_size, frozen)
    network = build_model(model_config, input_size, output_size)
    load_weights(network, model_config)
    if frozen:
        set_features_trainable(network, False)
    return network, model_config


def build_trainer(model_config: ModelConfig, config: TrainerConfig, *, task: str, n_classes: int, input_size: int,
                  seed: int, device: torch.device, callbacks: list[Callback], pretrained: dict | None = None,
                  wrap=None, trainer_class: type[Trainer] | None = None) -> tuple[Trainer, ModelConfig]:
    """The seeded network for this task, optimizer and scheduler from `config`, wired into a Trainer. `wrap`
    turns the network (on its device) into what the trainer steps, e.g. DistributedDataParallel. With
    model.unfreeze_after, a callback unfreezes the feature layers then (after the caller's callbacks)."""
    torch.manual_seed(seed)
    objective = make_objective(task, n_classes)
    network, built_from = build_network(model_config, input_size, objective.output_size, pretrained)
    if device.type == "cuda" and built_from.type in ("cnn", "torchvision"):
        network = network.to(memory_format=torch.channels_last)
    if wrap is not None:
        network = wrap(network.to(device))
    unfreeze = model_config.unfreeze_after
    if unfreeze is not None:
        callbacks = [*callbacks, UnfreezeFeatures(unfreeze)]
    trainer = make_trainer(network, objective, config, seed, device, callbacks, trainer_class,
                           backbone_lr_mult=model_config.backbone_lr_mult, keep_frozen=unfreeze is not None)
    return trainer, built_from
