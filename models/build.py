"""build_model(config), transfer learning, and the saved form of a network. Imports neither prefect nor mlflow."""
import torch
from torch import nn

from models.cnn import CNN
from models.config import ModelConfig
from models.freezing import set_features_trainable
from models.mlp import MLP
from models.text import TextNet


def build_model(config: ModelConfig, input_size: int, output_size: int, hf_config: dict | None = None) -> nn.Module:
    """input_size: features for an MLP, image channels for a CNN or a torchvision network, vocabulary size for a text
    model. A torchvision network starts from random weights here: training loads model.weights (load_weights).
    hf_config: for model.encoder hf, the encoder's saved config (HF_CONFIG): built from it, random weights, instead
    of loaded from model.pretrained_hf."""
    if config.type != "auto":
        config = config.resolved()  # n_layers' default for the type
    if config.type == "mlp":
        return MLP(input_size, output_size, n_layers=config.n_layers, hidden_size=config.hidden_size,
                   activation=config.activation, batch_norm=config.batch_norm, dropout=config.dropout,
                   numeric_embedding=config.numeric_embedding.replace("auto", "none"), n_numeric=config.n_numeric,
                   n_frequencies=config.numeric_frequencies, frequency_sigma=config.numeric_sigma,
                   embedding_size=config.numeric_embedding_size)
    if config.type == "cnn":
        return CNN(input_size, output_size, config.channels(), kernel_size=config.kernel_size, stride=config.stride,
                   padding=config.padding, pool=config.pool, activation=config.activation,
                   batch_norm=config.batch_norm, hidden_size=config.hidden_size, dropout=config.dropout)
    if config.type == "text" and config.encoder == "hf":
        from models.hf_text import HFTextNet  # imports transformers: only for these networks

        return HFTextNet(config.pretrained_hf, output_size, pooling=config.pooling, dropout=config.dropout,
                         encoder_config=hf_config)
    if config.type == "text":
        return TextNet(input_size, output_size, encoder=config.encoder, embedding_dim=config.embedding_dim,
                       hidden_size=config.hidden_size, n_layers=config.n_layers, kernel_size=config.kernel_size,
                       activation=config.activation, batch_norm=config.batch_norm, dropout=config.dropout,
                       n_heads=config.n_heads, max_positions=config.max_positions)
    if config.type == "torchvision":
        from models.backbones import Backbone  # imports torchvision: only for these networks

        return Backbone(config.arch, input_size, output_size, config.arch_image_size)
    raise ValueError(f"model type {config.type!r} must be resolved (ModelConfig.resolved) before building")


def transfer(saved: dict, output_size: int, freeze_features: bool) -> tuple[nn.Module, ModelConfig]:
    """A network with the architecture and feature weights of a saved one (a model file's 'network' entry) and a
    fresh head for `output_size` outputs."""
    config, hf_config = saved_config(saved)
    network = build_model(config, saved["input_size"], output_size, hf_config)
    features = {k: v for k, v in saved["state_dict"].items() if k.startswith(("features.", "numeric_embedding."))}
    network.load_state_dict(features, strict=False)
    if freeze_features:
        set_features_trainable(network, False)
    return network, config


def load_weights(network: nn.Module, config: ModelConfig) -> str | None:
    """A torchvision network's model.weights loaded into its feature layers; the file read, or None without."""
    if config.type != "torchvision" or not config.weights:
        return None
    from models.backbones import load_weights as load

    return str(load(network, config.weights))


# Key of the saved model_config that holds an hf encoder's config.json (HFTextNet.encoder_config), so that the saved
# form (and the model file's 'network' entry, which export copies) rebuilds the network without the Hugging Face
# folder. Not a ModelConfig field: set from the network when it is saved, never by a user, never logged as a param.
HF_CONFIG = "hf_config"


def save_network(path, config: ModelConfig, input_size: int, output_size: int, network: nn.Module) -> None:
    """Weights plus what is needed to rebuild the module; plain data, loadable with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    model_config = config.model_dump()
    encoder_config = getattr(getattr(network, "module", network), "encoder_config", None)  # DDP wraps it
    if encoder_config is not None:
        model_config[HF_CONFIG] = encoder_config()
    torch.save({"model_config": model_config, "input_size": input_size, "output_size": output_size,
                "state_dict": state}, path)


def saved_config(saved: dict) -> tuple[ModelConfig, dict | None]:
    """The ModelConfig of a saved form, and its hf encoder's config (None for other networks or an older file)."""
    entries = dict(saved["model_config"])
    hf_config = entries.pop(HF_CONFIG, None)
    return ModelConfig(**entries), hf_config


def load_network(path) -> tuple[nn.Module, dict]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return network_from(saved), saved


def network_from(saved: dict) -> nn.Module:
    """The network of a saved form (save_network's file, or a model file's 'network' entry), in eval mode."""
    config, hf_config = saved_config(saved)
    network = build_model(config, saved["input_size"], saved["output_size"], hf_config)
    network.load_state_dict(saved["state_dict"])
    return network.eval()
