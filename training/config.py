"""Typed configuration of the trainer: optimizer, LR scheduler, early stopping, device."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEDULERS = ("none", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "ReduceLROnPlateau")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerConfig(_Section):
    """One of torch.optim.lr_scheduler's schedulers, stepped once per epoch. Only the fields of the chosen one apply."""

    name: Literal[SCHEDULERS] = "none"
    # LambdaLR, expressed in config: linear warm-up for warmup_epochs, then decay to final_factor x lr.
    warmup_epochs: int = Field(0, ge=0)
    decay: Literal["linear", "cosine", "constant"] = "linear"
    final_factor: float = Field(0.0, ge=0)
    # StepLR / MultiStepLR / ExponentialLR
    step_size: int = Field(10, ge=1)
    milestones: list[int] = Field(default_factory=lambda: [10, 20])
    gamma: float = Field(0.1, gt=0)
    # CosineAnnealingLR (t_max defaults to n_epochs)
    t_max: int | None = Field(None, ge=1)
    eta_min: float = Field(0.0, ge=0)
    # ReduceLROnPlateau (watches early_stopping.monitor)
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(3, ge=0)

    @field_validator("name", mode="before")
    @classmethod
    def _canonical_name(cls, value):
        """Accept any capitalisation (steplr, cosineannealinglr) and the short names lambda/step/cosine/plateau."""
        if not isinstance(value, str):
            return value
        aliases = {s.lower(): s for s in SCHEDULERS} | {
            "lambda": "LambdaLR", "step": "StepLR", "multistep": "MultiStepLR", "exponential": "ExponentialLR",
            "cosine": "CosineAnnealingLR", "plateau": "ReduceLROnPlateau"}
        return aliases.get(value.lower(), value)


class DistributedConfig(_Section):
    """Data-parallel training (DDP) launched by torchrun; 1 process per node means no DDP. The flags are torchrun's."""

    nproc_per_node: int = Field(1, ge=1, description="Processes on this machine: GPUs on CUDA, or CPU processes.")
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, ge=1, le=65535)

    @property
    def enabled(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1


class EarlyStoppingConfig(_Section):
    enabled: bool = True
    monitor: str = Field("val_loss", description="Any logged epoch metric: val_loss, val_accuracy, val_mae, ...")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: max for accuracy/f1/auroc/r2, else min.")
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True


class TrainerConfig(_Section):
    n_epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="SGD only.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    gpu_id: int = Field(-1, ge=-1, description="-1: CPU; N: cuda:N (falls back to CPU with a warning if absent).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    cpu_threads: int | None = Field(None, ge=1, description="Cap on torch's CPU threads for this training "
                                    "(torch.set_num_threads); default: torch's own choice.")
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1, description="Cap on the share of the GPU's memory "
                                              "this process may allocate (torch.cuda.set_per_process_memory_fraction).")
