"""Typed configuration of the network."""
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.archs import ARCHS, arch_of, check_image_size

PERIODIC_MIN_ROWS = 1000


def default_layers(model_type: str, image_size: int | None = None) -> int:
    """n_layers when not given: 3 for an MLP, 1 for texts, and for a CNN one pooling block per halving
    from image_size down to about 4 px (2 to 5 blocks), so the receptive field grows with the image."""
    if model_type == "cnn":
        return int(min(5, max(2, round(math.log2((image_size or 32) / 4)))))
    return 1 if model_type == "text" else 3


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "mlp", "cnn", "text", "torchvision"] = Field(
        "auto", description="auto: mlp for tables, cnn for images (torchvision when model.arch or torchvision "
        "model.weights are given), text for texts; torchvision: a torchvision architecture (model.arch) for images, "
        "from scratch or from pretrained model.weights, its classifier replaced by a head for the classes.")
    n_layers: int | None = Field(None, ge=1, description="mlp: Linear layers in all (n_layers-1 hidden blocks, then "
                                 "the output layer; default 3); cnn: convolution blocks (default from "
                                 "image.image_size: log2(size/4) between 2 and 5, so 3 at 32 px, 5 from 91 px); "
                                 "text: the encoder's depth (see encoder; default 1).")
    hidden_size: int = Field(64, ge=1, description="mlp: hidden width; cnn: width of the hidden fully connected layer.")
    activation: Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = Field(
        "relu", description="Activation after each hidden layer.")
    batch_norm: bool | None = Field(None, description="BatchNorm after each hidden layer; default: on for cnn and "
                                    "text, off for mlp (with the small batches that small tables get it made the "
                                    "MLP worse on regression: ames R2 0.883 -> 0.897 without it, over 3 splits).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer.")
    numeric_embedding: Literal["auto", "none", "periodic"] = Field(
        "auto", description="mlp: periodic = PLR embeddings of the numeric columns (Gorishniy et al. 2022, 'lite' "
        "variant): each becomes ReLU(Linear([cos(2 pi c x), sin(2 pi c x)])) with trained frequencies c; one-hot "
        "columns pass as they are. auto: periodic for a regression with at least "
        f"{PERIODIC_MIN_ROWS} training rows, none otherwise (README, quality benchmark).")
    numeric_frequencies: int = Field(48, ge=1, description="periodic embeddings: frequencies per numeric column.")
    numeric_sigma: float = Field(0.1, gt=0, description="periodic embeddings: std of the initial frequencies "
                                 "(inputs are standardised; larger = wigglier functions of each column).")
    numeric_embedding_size: int = Field(24, ge=1, description="periodic embeddings: values per numeric column.")
    n_numeric: int | None = Field(None, ge=0, description="mlp: how many leading inputs are numeric columns (set "
                                  "by training from the tabular transform; default: all inputs).")
    # CNN
    conv_channels: list[int] | None = Field(None, description="Channels per conv block; default 32, 64, 128, ... "
                                            "(doubling, n_layers blocks).")
    kernel_size: int = Field(3, ge=1, description="cnn (and the text cnn encoder): convolution kernel size.")
    stride: int = Field(1, ge=1, description="cnn: convolution stride.")
    padding: int | None = Field(None, ge=0, description="Default kernel_size // 2 (same size at stride 1).")
    pool: Literal["max", "avg", "none"] = Field("max", description="cnn: pooling after each block.")
    # text
    encoder: Literal["mean", "cnn", "lstm", "gru", "transformer", "hf"] = Field(
        "mean", description="text: mean = masked mean of the embeddings then n_layers-1 hidden layers (fastText-like); "
        "cnn = n_layers Conv1d blocks then masked max pooling; lstm/gru = n_layers bidirectional layers of "
        "hidden_size per direction; transformer = n_layers encoder layers (n_heads, feed-forward hidden_size) "
        "with learned positions. All but cnn end in masked mean pooling. hf = the Hugging Face model in "
        "model.pretrained_hf, with its own tokenizer (models/hf_text.py).")
    embedding_dim: int = Field(64, ge=1, description="text: token embedding width (transformer: d_model).")
    n_heads: int = Field(4, ge=1, description="text transformer: attention heads (must divide embedding_dim).")
    max_positions: int = Field(512, ge=1, description="text transformer: learned positions; later tokens share the "
                               "last one (text.max_len is usually shorter).")
    pretrained_hf: str | None = Field(None, description="text, encoder hf: a local Hugging Face model folder "
                                      "(save_pretrained: config.json, weights, tokenizer files); never downloaded. "
                                      "Its tokenizer replaces torchyard's vocabulary and is saved in the model file. "
                                      "Not needed with model.pretrained (a torchyard model trained with encoder hf: "
                                      "its encoder and tokenizer are taken from the model file).")
    pooling: Literal["mean", "cls"] = Field("mean", description="text, encoder hf: masked mean of the last hidden "
                                            "states, or the first ([CLS]) token's.")
    # transfer learning
    pretrained: str | None = Field(None, description="Start from a torchyard model: a .pth model file or a registry "
                                   "URI (models:/name/version or models:/name@alias). Its architecture and feature "
                                   "weights are kept; the classifier head is replaced for the new classes.")
    freeze_features: bool = Field(False, description="With pretrained or model.weights: train only the new head "
                                  "(frozen layers' BatchNorm statistics stay as they were).")
    # torchvision backbones (models/backbones.py)
    arch: Literal[tuple(ARCHS)] | None = Field(None, description="torchvision: the architecture.")
    weights: str | None = Field(None, description="torchvision: the backbone's weights, a torchvision state-dict file "
                                "(.pth) or a torchvision weights name such as ResNet18_Weights.IMAGENET1K_V1, read "
                                "from the torch hub cache ($TORCH_HOME/hub/checkpoints); never downloaded. With "
                                "weights the images are prepared as for them (size, ImageNet mean/std) unless the "
                                "image section says otherwise; without, the network starts from random weights.")
    unfreeze_after: int | None = Field(None, ge=1, description="With pretrained or model.weights: train only the head "
                                       "for this many epochs, then the whole network.")
    backbone_lr_mult: float = Field(1.0, gt=0, description="The learning rate of the feature layers (the "
                                    "backbone) as a multiple of train.lr; the head trains at train.lr.")
    arch_image_size: int | None = Field(None, ge=1, description="torchvision: the image side the network is built "
                                        "for (set from image.image_size; vit_b_16's position embeddings depend on "
                                        "it).")

    def channels(self) -> list[int]:
        return self.conv_channels or [32 * 2 ** i for i in range(self.n_layers)]

    def resolved(self, data_type: str | None = None, image_size: int | None = None) -> "ModelConfig":
        """This config with the defaults that depend on the data made: type 'auto' replaced by the model type for
        the data type, n_layers by the type's default (the CNN's from the image size)."""
        update = {}
        if self.arch is None and arch_of(self.weights):
            update["arch"] = arch_of(self.weights)  # --weights ResNet18_Weights.DEFAULT alone
        if self.type != "auto":
            kind = self.type
        elif (self.arch or update.get("arch")) and data_type in (None, "image"):
            kind = "torchvision"
        else:  # the data type's model (preprocessing/kinds/ holds the one rule)
            from preprocessing import kinds

            kind = kinds.get(data_type or "tabular").model_type
        update["type"] = kind
        if kind == "torchvision" and image_size is not None:
            update["arch_image_size"] = image_size
        if self.n_layers is None:
            update["n_layers"] = default_layers(kind, image_size)
        if self.batch_norm is None:
            update["batch_norm"] = kind != "mlp"
        return self.model_copy(update=update)

    def for_data(self, task: str, n_train: int, n_numeric: int) -> "ModelConfig":
        """This (resolved) config for the data it is about to train on: numeric_embedding 'auto' made (periodic for
        an MLP on a regression with at least PERIODIC_MIN_ROWS training rows and a numeric column, else none) and
        n_numeric, the count of leading numeric inputs, recorded so that the saved model rebuilds the same way."""
        if self.type != "mlp":
            return self
        embedding = self.numeric_embedding
        if embedding == "auto":
            big_regression = task == "regression" and n_train >= PERIODIC_MIN_ROWS
            embedding = "periodic" if big_regression and n_numeric else "none"
        return self.model_copy(update={"numeric_embedding": embedding, "n_numeric": n_numeric})

    @model_validator(mode="after")
    def _consistent(self):
        if self.type == "text" and self.encoder == "transformer" and self.embedding_dim % self.n_heads:
            raise ValueError(f"model.embedding_dim {self.embedding_dim} must be divisible by model.n_heads "
                             f"{self.n_heads} for the transformer encoder")
        if self.encoder == "hf" and self.type in ("auto", "text") and not (self.pretrained_hf or self.pretrained):
            raise ValueError("model.encoder hf needs model.pretrained_hf: a local Hugging Face model folder (or "
                             "model.pretrained: a torchyard model trained with model.encoder hf)")
        if self.type == "torchvision":
            self.arch = self.arch or arch_of(self.weights)  # --weights ResNet18_Weights.DEFAULT alone
            if self.arch is None:
                raise ValueError("model.type torchvision needs model.arch (one of " + ", ".join(ARCHS) + ")")
            if self.arch_image_size is not None:
                check_image_size(self.arch, self.arch_image_size)
        elif self.type in ("mlp", "cnn", "text") and (self.arch or self.weights):
            raise ValueError(f"model.arch and model.weights are for model.type torchvision, not {self.type}")
        return self
