"""Convolutional network for images, built from config."""
import torch
from torch import nn

from models.freezing import FrozenNormsStayInEval
from models.mlp import ACTIVATIONS

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class CNN(FrozenNormsStayInEval, nn.Module):
    """(Conv -> BatchNorm -> activation -> pool) x n_blocks, global average pooling, then fully connected layers.

    `features` (the conv blocks) and `head` (the classifier) are separate attributes, so transfer learning can keep
    the one and replace the other; frozen BatchNorm layers stay in eval mode. Global pooling makes the network
    independent of the input size."""

    def __init__(self, in_channels: int, output_size: int, channels: list[int], kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, pool: str = "max", activation: str = "relu",
                 batch_norm: bool = True, hidden_size: int = 64, dropout: float = 0.0):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        blocks, width = [], in_channels
        for out in channels:
            blocks.append(nn.Conv2d(width, out, kernel_size, stride=stride, padding=padding, bias=not batch_norm))
            blocks += ([nn.BatchNorm2d(out)] if batch_norm else []) + [ACTIVATIONS[activation]()]
            blocks += [POOLS[pool](2, ceil_mode=True)] if pool != "none" else []
            width = out
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*blocks)
        dropouts = [nn.Dropout(dropout)] if dropout > 0 else []
        self.head = nn.Sequential(nn.Linear(width, hidden_size), ACTIVATIONS[activation](), *dropouts,
                                  nn.Linear(hidden_size, output_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
