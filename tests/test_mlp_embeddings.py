"""Periodic (PLR) embeddings of numeric columns in the MLP (model.numeric_embedding)."""
import pytest
import torch

from models.config import ModelConfig
from models.embeddings import PeriodicEmbeddings
from models.mlp import MLP


def test_periodic_embeddings_shape_and_range():
    embed = PeriodicEmbeddings(3, n_frequencies=8, sigma=0.1, d_embedding=5)
    out = embed(torch.randn(7, 3))
    assert out.shape == (7, 15) and embed.output_size == 15
    assert (out >= 0).all()  # ReLU
    assert embed.frequencies.requires_grad


def test_periodic_embedding_sees_only_the_numeric_columns():
    torch.manual_seed(0)
    net = MLP(6, 1, numeric_embedding="periodic", n_numeric=2, n_frequencies=4, embedding_size=3).eval()
    assert net.features[0].in_features == 2 * 3 + 4  # two embedded columns plus four one-hot columns as they are
    x = torch.randn(5, 6)
    shifted = x.clone()
    shifted[:, 0] += 1.0
    assert not torch.allclose(net(x), net(shifted))
    grads = torch.autograd.grad(net(x).sum(), net.numeric_embedding.frequencies)[0]
    assert grads.abs().sum() > 0  # the frequencies are trained


def test_default_mlp_is_unchanged_by_the_option():
    torch.manual_seed(0)
    plain = MLP(6, 2)
    torch.manual_seed(0)
    off = MLP(6, 2, numeric_embedding="none", n_numeric=2)
    assert off.numeric_embedding is None
    x = torch.randn(4, 6)
    assert torch.equal(plain.eval()(x), off.eval()(x))
    assert ModelConfig().numeric_embedding == "auto"


def test_no_numeric_columns_means_no_embedding():
    net = MLP(4, 1, numeric_embedding="periodic", n_numeric=0)
    assert net.numeric_embedding is None and net.features[0].in_features == 4


@pytest.mark.parametrize("kwargs", [{"n_numeric": 7}, {"numeric_embedding": "bins"}])
def test_bad_embedding_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MLP(6, 1, **{"numeric_embedding": "periodic", **kwargs})


def test_auto_embeds_numeric_columns_only_for_larger_regressions():
    mlp = ModelConfig().resolved("tabular")
    assert mlp.for_data("regression", 2000, 5).numeric_embedding == "periodic"
    assert mlp.for_data("regression", 999, 5).numeric_embedding == "none"
    assert mlp.for_data("multiclass", 5000, 5).numeric_embedding == "none"
    assert mlp.for_data("regression", 5000, 0).numeric_embedding == "none"  # one-hot columns only
    assert mlp.model_copy(update={"numeric_embedding": "periodic"}).for_data("binary", 50, 3).numeric_embedding \
        == "periodic"  # what the user gives wins
    assert mlp.for_data("regression", 2000, 5).n_numeric == 5
    cnn = ModelConfig().resolved("image", 32)
    assert cnn.for_data("regression", 5000, 0) == cnn


def test_a_periodic_mlp_survives_saving_and_transfer(tmp_path):
    from models import build_model, load_network, save_network, transfer

    config = ModelConfig(numeric_embedding="periodic").resolved("tabular").for_data("regression", 2000, 3)
    torch.manual_seed(0)
    net = build_model(config, 5, 1).eval()
    save_network(tmp_path / "n.pt", config, 5, 1, net)
    loaded, saved = load_network(tmp_path / "n.pt")
    x = torch.randn(4, 5)
    assert torch.equal(loaded(x), net(x))
    moved, _ = transfer(saved, 3, freeze_features=True)
    assert torch.equal(moved.numeric_embedding.frequencies, net.numeric_embedding.frequencies)
    assert not moved.numeric_embedding.frequencies.requires_grad and moved.head.weight.requires_grad


def test_model_files_from_before_the_option_build_a_plain_mlp():
    old = {k: v for k, v in ModelConfig().resolved("tabular").model_dump().items()
           if not k.startswith("numeric") and k != "n_numeric"}
    from models import build_model

    assert build_model(ModelConfig(**old), 6, 2).numeric_embedding is None
