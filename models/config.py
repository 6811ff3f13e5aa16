"""Typed configuration of the network."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["mlp"] = "mlp"
    n_layers: int = Field(3, ge=1, description="Linear layers in all: n_layers-1 hidden blocks, then the output layer.")
    hidden_size: int = Field(64, ge=1)
    activation: Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = "relu"
    batch_norm: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
