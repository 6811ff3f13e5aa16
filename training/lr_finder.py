"""The learning-rate range test (Smith 2015; Lightning's `lr_find`, fastai's `lr_find`): train for a few hundred
steps while the learning rate grows exponentially from `start` to `end`, record the smoothed training loss, and
pick one tenth of the rate at the lowest smoothed loss, a value safely below where the loss turns up.

The search trains a throw-away copy: the caller builds the real trainer afterwards, from the same seed, with the
rate found here.
"""
import math
from dataclasses import dataclass, field

import torch


class LRFinderError(ValueError):
    """The range test found no usable rate (the loss never went down, or was not finite); says why."""


@dataclass
class LRFinding:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed, bias-corrected
    suggestion: float | None = None
    min_loss_lr: float | None = None


def range_test(model: torch.nn.Module, objective, optimizer: torch.optim.Optimizer, train, generator: torch.Generator,
               device: torch.device, steps: int = 200, start: float = 1e-6, end: float = 1.0,
               smoothing: float = 0.9, diverge: float = 4.0) -> LRFinding:
    """Runs the test on `model` in place (pass a copy). `train` is a batch source (training/data.py), cycled as
    needed. Raises LRFinderError when no rate lowers the loss."""
    finding = LRFinding()
    model.to(device).train()
    average, best, first = 0.0, math.inf, None
    for step, (inputs, targets) in zip(range(steps), _cycle(train.to(device), generator)):
        lr = start * (end / start) ** (step / max(1, steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = objective.loss_value(model(inputs), targets)
        value = loss.item()
        if not math.isfinite(value):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = smoothing * average + (1 - smoothing) * value
        smoothed = average / (1 - smoothing ** (step + 1))
        first = smoothed if first is None else first
        best = min(best, smoothed)
        finding.lrs.append(lr)
        finding.losses.append(smoothed)
        if step > 10 and smoothed > diverge * best:
            break
    return suggest(finding, first)


def pick_lr(model: torch.nn.Module, objective, optimizer: torch.optim.Optimizer, train, generator: torch.Generator,
            device: torch.device, steps: int, default: float) -> tuple[float, LRFinding | None, str | None]:
    """The range test's pick, or `default` with the reason when the test found no usable rate."""
    try:
        finding = range_test(model, objective, optimizer, train, generator, device, steps=steps)
    except LRFinderError as exc:
        return default, None, str(exc)
    return finding.suggestion, finding, None


def _cycle(train, generator):
    """Training batches, epoch after epoch."""
    while True:
        produced = False
        for batch in train.epoch(generator):
            produced = True
            yield batch
        if not produced:
            raise LRFinderError("the training split yields no batch to run the learning-rate range test on")


def suggest(finding: LRFinding, first: float | None) -> LRFinding:
    """One tenth of the rate at the lowest smoothed loss, when that loss is clearly below the first one."""
    if not finding.losses:
        raise LRFinderError("the loss was not finite from the first step of the learning-rate range test")
    lowest = min(range(len(finding.losses)), key=finding.losses.__getitem__)
    if first is None or not finding.losses[lowest] < 0.98 * first or lowest == 0:
        raise LRFinderError(f"the training loss did not go down at any learning rate from {finding.lrs[0]:.0e} to "
                            f"{finding.lrs[-1]:.0e} (first {first:.4g}, lowest {finding.losses[lowest]:.4g})")
    finding.min_loss_lr = finding.lrs[lowest]
    finding.suggestion = finding.min_loss_lr / 10
    return finding


def plot(finding: LRFinding, path) -> None:
    from training.evaluation import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finding.lrs, finding.losses)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate range test")
    if finding.suggestion:
        ax.axvline(finding.suggestion, color="red", linestyle="--", label=f"picked {finding.suggestion:.2e}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
