"""Embeddings of numeric table columns for the MLP: PLR ("periodic -> linear -> ReLU", the lite variant) from
Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep Learning". Imports neither prefect
nor mlflow."""
import math

import torch
from torch import nn


class PeriodicEmbeddings(nn.Module):
    """Each of n_features scalar columns x -> ReLU(Linear([cos(2 pi c x), sin(2 pi c x)])), a vector of
    d_embedding values. The frequencies c (n_frequencies per column, initialised from N(0, sigma^2)) are trained;
    the linear layer is shared by the columns (the 'lite' variant). Input [N, n_features], output
    [N, n_features * d_embedding]."""

    def __init__(self, n_features: int, n_frequencies: int = 48, sigma: float = 0.1, d_embedding: int = 24):
        super().__init__()
        self.n_features, self.d_embedding = n_features, d_embedding
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * sigma)
        self.linear = nn.Linear(2 * n_frequencies, d_embedding)

    @property
    def output_size(self) -> int:
        return self.n_features * self.d_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * self.frequencies * x.unsqueeze(-1)  # [N, F, K]
        periodic = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return torch.relu(self.linear(periodic)).flatten(1)
