"""torch.nn.Module definitions and build_model(config). Imports neither prefect nor mlflow."""
import torch
from torch import nn

from models.config import ModelConfig
from models.mlp import MLP


def build_model(config: ModelConfig, input_size: int, output_size: int) -> nn.Module:
    if config.type == "mlp":
        return MLP(input_size, output_size, n_layers=config.n_layers, hidden_size=config.hidden_size,
                   activation=config.activation, batch_norm=config.batch_norm, dropout=config.dropout)
    raise ValueError(f"unknown model type {config.type!r}")


def save_network(path, config: ModelConfig, input_size: int, output_size: int, network: nn.Module) -> None:
    """Weights plus what is needed to rebuild the module; plain data, loadable with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    torch.save({"model_config": config.model_dump(), "input_size": input_size, "output_size": output_size,
                "state_dict": state}, path)


def load_network(path) -> tuple[nn.Module, dict]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    network = build_model(ModelConfig(**saved["model_config"]), saved["input_size"], saved["output_size"])
    network.load_state_dict(saved["state_dict"])
    return network.eval(), saved
