"""Multi-layer perceptron for tabular features."""
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    """(Linear -> BatchNorm -> activation -> Dropout) x (n_layers - 1), then a Linear output layer."""

    def __init__(self, input_size: int, output_size: int, n_layers: int = 3, hidden_size: int = 64,
                 activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        blocks, width = [], input_size
        for _ in range(n_layers - 1):
            blocks.append(nn.Linear(width, hidden_size))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden_size))
            blocks.append(ACTIVATIONS[activation]())
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden_size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(features))
