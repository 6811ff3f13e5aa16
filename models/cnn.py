"""Convolutional network for images, built from config."""
import torch
from torch import nn

from models.freezing import FrozenNormsStayInEval
from models.mlp import ACTIVATIONS

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class CNN(FrozenNormsStayInEval, nn.Module):
    """(Conv -> BatchNorm -> activation -> pool) x n_blocks, global average pooling, then fully connected layers.

    `features` (the conv blocks) and `head` (the classifier) are separate attributes, so transfer learning can keep
    the one and replace the other; frozen BatchNorm layers stay in eval mode. Global pooling makes the network independent of the input size."""

    def __init__(self, in_channels: int, output_size: int, channels: list[int], kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, pool: str = "max", activation: str = "relu",
                 batch_norm: bool = True, hidden_size: int = 64, dropout: float = 0.0):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        blocks, width = [], in_channels
        for out in channels:
            blocks.append(nn.Conv2d(width, out, kernel_size, stride=stride, padding=padding, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(out))
            blocks.append(ACTIVATIONS[activation]())
            if pool != "none":
                blocks.append(POOLS[pool](2, ceil_mode=True))
            width = out
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*blocks)
        head = [nn.Linear(width, hidden_size), ACTIVATIONS[activation]()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden_size, output_size))
        self.head = nn.Sequential(*head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
