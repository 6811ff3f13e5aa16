"""What the network's raw outputs mean for each task: the loss, the probabilities/values served, a val metric."""
from dataclasses import dataclass

import torch
from torch import nn

@dataclass
class Objective:
    task: str
    n_classes: int  # 0 for regression
    loss: nn.Module
    output_size: int

    def loss_value(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.output_size == 1:
            return self.loss(outputs.squeeze(1), targets.to(outputs.dtype))
        return self.loss(outputs, targets)

    def serve(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> what the exported model returns: class probabilities [N, C], or values [N, 1]."""
        if self.task == "regression":
            return outputs
        if self.output_size == 1:
            positive = torch.sigmoid(outputs)
            return torch.cat([1 - positive, positive], dim=1)
        return torch.softmax(outputs, dim=1)

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Cheap metrics computed every epoch next to val_loss (the full set is for evaluate)."""
        served = self.serve(outputs.float())
        if self.task == "regression":  # plain torch, per epoch; evaluate computes the full set
            return {"val_mae": (served.squeeze(1) - targets).abs().mean().item()}
        return {"val_accuracy": (served.argmax(1) == targets).float().mean().item()}

def make_objective(task: str, n_classes: int) -> Objective:
    if task == "regression":
        return Objective(task, 0, nn.MSELoss(), 1)
    if n_classes == 2:
        return Objective(task, 2, nn.BCEWithLogitsLoss(), 1)
    return Objective(task, n_classes, nn.CrossEntropyLoss(), n_classes)

class ServingModel(nn.Module):
    """The network plus its output head (softmax/sigmoid, or unscaling of a regression target): what is exported."""

    def __init__(self, network: nn.Module, objective: Objective, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        self.network = network
        self.objective = objective
        self.target_mean, self.target_std = target_mean, target_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        served = self.objective.serve(self.network(features))
        if self.objective.task == "regression":
            served = served * self.target_std + self.target_mean
        return served

