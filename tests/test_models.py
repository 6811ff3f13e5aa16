import pytest
import torch
from torch import nn

from models import build_model, load_network, save_network
from models.config import ModelConfig


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid),
                                            ("gelu", nn.GELU), ("leaky_relu", nn.LeakyReLU)])
def test_mlp_layers_from_config(activation, cls):
    model = build_model(ModelConfig(type="mlp", n_layers=5, hidden_size=16, activation=activation, batch_norm=True, dropout=0.2),
                        input_size=7, output_size=3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5 and linears[0].in_features == 7 and linears[-1].out_features == 3
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 4
    assert sum(isinstance(m, cls) for m in model.modules()) == 4
    assert model(torch.randn(4, 7)).shape == (4, 3)


def test_mlp_without_batchnorm_or_dropout():
    model = build_model(ModelConfig(type="mlp", n_layers=1, batch_norm=False, dropout=0.0), 4, 1)
    assert [type(m) for m in model.modules() if not isinstance(m, (nn.Sequential, type(model)))] == [nn.Linear]


def test_network_file_round_trip(tmp_path):
    config = ModelConfig(type="mlp", n_layers=3, hidden_size=8)
    model = build_model(config, 5, 2).eval()
    save_network(tmp_path / "n.pt", config, 5, 2, model)
    loaded, saved = load_network(tmp_path / "n.pt")
    x = torch.randn(3, 5)
    assert torch.equal(loaded(x), model(x)) and saved["input_size"] == 5
