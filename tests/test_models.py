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


@pytest.mark.parametrize("image_size, blocks", [(16, 2), (32, 3), (64, 4), (128, 5), (224, 5)])
def test_default_cnn_depth_follows_the_image_size(image_size, blocks):
    config = ModelConfig().resolved("image", image_size)
    assert config.type == "cnn" and config.n_layers == blocks
    net = build_model(config, 3, 10)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == blocks
    assert net(torch.zeros(2, 3, image_size, image_size)).shape == (2, 10)


def test_default_depths_for_tables_and_texts_and_an_explicit_one_wins():
    assert ModelConfig().resolved("tabular").n_layers == 3
    assert ModelConfig().resolved("text").n_layers == 1
    assert ModelConfig(n_layers=4).resolved("image", 224).n_layers == 4
    # BatchNorm: off for the MLP by default (noisy with the small batches of small tables), on for CNNs
    assert not ModelConfig().resolved("tabular").batch_norm and ModelConfig().resolved("image").batch_norm
    assert ModelConfig(batch_norm=True).resolved("tabular").batch_norm
    assert not any(isinstance(m, nn.BatchNorm1d) for m in build_model(ModelConfig(type="mlp"), 4, 2).modules())
