"""Typed configuration of the network."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "mlp", "cnn"] = Field("auto", description="auto: mlp for tables, cnn for images.")
    n_layers: int = Field(3, ge=1, description="mlp: Linear layers in all (n_layers-1 hidden blocks, then the output "
                          "layer); cnn: convolution blocks.")
    hidden_size: int = Field(64, ge=1, description="mlp: hidden width; cnn: width of the hidden fully connected layer.")
    activation: Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = "relu"
    batch_norm: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    # CNN
    conv_channels: list[int] | None = Field(None, description="Channels per conv block; default 32, 64, 128, ... "
                                            "(doubling, n_layers blocks).")
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(1, ge=1)
    padding: int | None = Field(None, ge=0, description="Default kernel_size // 2 (same size at stride 1).")
    pool: Literal["max", "avg", "none"] = "max"
    # transfer learning
    pretrained: str | None = Field(None, description="Start from a torchyard model: a .pth model file or a registry "
                                   "URI (models:/name/version or models:/name@alias). Its architecture and feature "
                                   "weights are kept; the classifier head is replaced for the new classes.")
    freeze_features: bool = Field(False, description="With pretrained: train only the new head.")

    def channels(self) -> list[int]:
        return self.conv_channels or [32 * 2 ** i for i in range(self.n_layers)]

    def resolved(self, data_type: str) -> "ModelConfig":
        """This config with type 'auto' replaced by the model type for the data type."""
        if self.type != "auto":
            return self
        return self.model_copy(update={"type": "cnn" if data_type == "image" else "mlp"})
