"""Multi-layer perceptron for tabular features."""
import torch
from torch import nn

from models.embeddings import PeriodicEmbeddings

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    """(Linear -> BatchNorm -> activation -> Dropout) x (n_layers - 1), then a Linear output layer.

    numeric_embedding "periodic": the first n_numeric inputs (the numeric columns, which the tabular transform puts
    first; None: all inputs) go through PeriodicEmbeddings before the first layer; the rest (one-hot columns) are
    passed as they are."""

    def __init__(self, input_size: int, output_size: int, n_layers: int = 3, hidden_size: int = 64,
                 activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
                 numeric_embedding: str = "none", n_numeric: int | None = None, n_frequencies: int = 48,
                 frequency_sigma: float = 0.1, embedding_size: int = 24):
        super().__init__()
        self.n_numeric = input_size if n_numeric is None else n_numeric
        if not 0 <= self.n_numeric <= input_size:
            raise ValueError(f"n_numeric {n_numeric} must be between 0 and input_size {input_size}")
        self.numeric_embedding = None
        width = input_size
        if numeric_embedding == "periodic" and self.n_numeric:
            self.numeric_embedding = PeriodicEmbeddings(self.n_numeric, n_frequencies, frequency_sigma, embedding_size)
            width = self.numeric_embedding.output_size + input_size - self.n_numeric
        elif numeric_embedding not in ("none", "periodic"):
            raise ValueError(f"numeric_embedding {numeric_embedding!r} must be 'none' or 'periodic'")
        blocks = []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(width, hidden_size)] + ([nn.BatchNorm1d(hidden_size)] if batch_norm else [])
            blocks += [ACTIVATIONS[activation]()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = hidden_size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.numeric_embedding is not None:
            embedded = self.numeric_embedding(features[:, :self.n_numeric])
            features = torch.cat([embedded, features[:, self.n_numeric:]], dim=1)
        return self.head(self.features(features))
