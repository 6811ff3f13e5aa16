"""The scikit-learn baseline (training/baseline.py), the learning-rate range test and the automatic batch size,
as plain functions and through train-flow."""
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from preprocessing.targets import Target
from training import baseline, lr_finder
from training.config import TrainerConfig, auto_batch_size
from training.data import TensorData
from training.objectives import make_objective

CLASSES = Target("y", "classification", ("a", "b", "c"))


def test_tabular_baseline_returns_probabilities_for_every_class_even_one_missing_from_train():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    y = (x[:, 0] > 0).astype(np.int64)  # classes 0 and 1 only: class 2 ("c") exists in the target but not in train
    result = baseline.tabular(x, y, x[:10], CLASSES, seed=0)
    assert result.served.shape == (10, 3)
    assert np.allclose(result.served.sum(1), 1) and np.all(result.served[:, 2] == 0)
    assert result.name == "HistGradientBoostingClassifier" and result.train_rows == 120


def test_single_class_train_split_is_skipped_not_fitted():
    with pytest.raises(baseline.BaselineSkipped, match="single class"):
        baseline.tabular(np.zeros((5, 2)), np.zeros(5, dtype=np.int64), np.zeros((2, 2)), CLASSES, seed=0)


def test_regression_baseline_predicts_on_the_original_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    scaled = x[:, 0] * 2.0  # the training targets as preprocess writes them: (y - mean) / std
    target = Target("y", "regression", mean=100.0, std=10.0)
    result = baseline.tabular(x, scaled, x[:50], target, seed=0)
    assert result.served.shape == (50, 1)
    assert np.corrcoef(result.served[:, 0], 100 + 10 * scaled[:50])[0, 1] > 0.95
    assert abs(result.served.mean() - 100) < 5


def test_text_baseline_learns_words():
    texts = ["good great fine", "bad awful poor", "great good", "poor bad"] * 10
    labels = np.array([0, 1, 0, 1] * 10)
    target = Target("y", "classification", ("pos", "neg"))
    result = baseline.text(texts, labels, ["so good", "so bad"], target, seed=0)
    assert result.served.argmax(1).tolist() == [0, 1]
    assert result.name.startswith("tfidf-1-2gram+LogisticRegression")


@pytest.mark.parametrize("shape, features", [((4, 100, 100, 3), 768), ((4, 32, 32, 1), 256), ((4, 8, 8, 3), 192)])
def test_downscale_bounds_the_pixel_count(shape, features):
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x = baseline.downscale(images)
    assert x.shape[0] == 4 and x.shape[1] <= features and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1


def test_margins_are_positive_when_the_network_is_better_in_both_directions():
    got = baseline.margins({"test_accuracy": 0.9, "test_mse": 2.0, "test_r2": 0.5},
                           {"baseline_test_accuracy": 0.8, "baseline_test_mse": 3.0, "baseline_test_r2": 0.7})
    assert got["margin_test_accuracy"] == pytest.approx(0.1)
    assert got["margin_test_mse"] == pytest.approx(1.0)
    assert got["margin_test_r2"] == pytest.approx(-0.2)


@pytest.mark.parametrize("rows, size", [(2, 16), (500, 16), (1300, 32), (5000, 128), (10**6, 256)])
def test_auto_batch_size_gives_small_data_enough_steps(rows, size):
    assert auto_batch_size(rows) == size
    assert TrainerConfig().resolved(rows).batch_size == min(size, rows)


def test_batch_size_larger_than_the_train_split_becomes_one_batch():
    assert TrainerConfig(batch_size=256).resolved(40).batch_size == 40
    assert TrainerConfig(batch_size=32).resolved(40).batch_size == 32


def test_lr_auto_is_accepted_and_other_strings_are_not():
    assert TrainerConfig(lr="auto").lr == "auto"
    with pytest.raises(ValueError):
        TrainerConfig(lr="fast")
    with pytest.raises(ValueError):
        TrainerConfig(lr=-1.0)


def _blobs(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.0 * y[:, None]
    return TensorData(x, y, 32)


def test_range_test_picks_a_rate_below_where_the_loss_turns_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    finding = lr_finder.range_test(model, make_objective("classification", 2), torch.optim.AdamW(model.parameters()),
                                   _blobs(), torch.Generator().manual_seed(0), torch.device("cpu"), steps=150)
    assert 1e-5 < finding.suggestion < 0.5
    assert finding.suggestion == pytest.approx(finding.min_loss_lr / 10)
    assert len(finding.lrs) == len(finding.losses) >= 50
    assert min(finding.losses) < 0.9 * finding.losses[0]


class _Diverging(nn.Module):
    """A network whose loss is not finite at any rate (as on data with infinite values)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x):
        return self.linear(x) * float("inf")


def test_diverging_loss_falls_back_to_the_default_rate_and_says_why():
    model = _Diverging()
    lr, finding, reason = lr_finder.pick_lr(model, make_objective("classification", 2),
                                            torch.optim.AdamW(model.parameters()), _blobs(),
                                            torch.Generator().manual_seed(0), torch.device("cpu"), 50, 1e-3)
    assert lr == 1e-3 and finding is None
    assert "not finite" in reason


class _Flat(_Diverging):
    """A network whose output ignores its weights: the loss is the same at every rate."""

    def forward(self, x):
        return self.linear(x) * 0.0


def test_flat_loss_falls_back_too():
    model = _Flat()
    lr, _, reason = lr_finder.pick_lr(model, make_objective("classification", 2),
                                      torch.optim.AdamW(model.parameters()), _blobs(),
                                      torch.Generator().manual_seed(0), torch.device("cpu"), 50, 1e-3)
    assert lr == 1e-3 and "did not go down" in reason


# --- through train-flow -------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("prefect_harness")
def test_flow_logs_the_baseline_margin_auto_batch_size_and_lr_auto(mlflow_client, tmp_path):
    from flows.config import ExportConfig
    from flows.train_flow import train_flow

    state = train_flow(train=TrainerConfig(n_epochs=3, lr="auto", lr_find_steps=40),
                       export=ExportConfig(register_model=False), experiment=f"baseline-{uuid.uuid4().hex[:8]}",
                       return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run = mlflow_client.get_run(result["run_id"])
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert 0.5 < metrics["baseline_test_accuracy"] <= 1
    assert metrics["margin_test_accuracy"] == pytest.approx(metrics["test_accuracy"]
                                                            - metrics["baseline_test_accuracy"])
    assert params["baseline.model"] == "HistGradientBoostingClassifier" and tags["baseline.status"] == "fitted"
    assert tags["baseline.beaten"] in ("true", "false")
    # 124 training rows of wine: the automatic batch size is 16, and lr auto logged its pick and its curve
    assert params["train.batch_size"] == "16" and params["train.batch_size_auto"] == "True"
    assert params["train.lr_auto"] == "True" and float(params["train.lr"]) > 0
    assert "train/lr_find.png" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "train")}
    assert result["baseline"]["metrics"]["baseline_test_accuracy"] == metrics["baseline_test_accuracy"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_baseline_is_recorded_and_does_not_fail_the_run(mlflow_client, monkeypatch, fast_train):
    from flows.config import ExportConfig
    from flows.train_flow import train_flow

    def broken(*args, **kwargs):
        raise MemoryError("no room for the baseline")

    monkeypatch.setattr(baseline, "tabular", broken)  # fault injection: the sklearn fit itself runs out of memory
    state = train_flow(train=fast_train, export=ExportConfig(register_model=False),
                       experiment=f"baseline-{uuid.uuid4().hex[:8]}", return_state=True)
    assert state.is_completed(), state.message
    run = mlflow_client.get_run(state.result()["run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.data.tags["baseline.status"] == "failed"
    assert "MemoryError: no room for the baseline" in run.data.tags["baseline.reason"]
    assert not any(k.startswith("baseline_test") for k in run.data.metrics)


@pytest.mark.usefixtures("prefect_harness")
def test_baseline_off_and_a_batch_larger_than_the_train_split(mlflow_client):
    from flows.config import ExportConfig
    from flows.train_flow import train_flow

    state = train_flow(train=TrainerConfig(n_epochs=2, batch_size=1000), export=ExportConfig(register_model=False),
                       baseline={"enabled": False}, experiment=f"baseline-{uuid.uuid4().hex[:8]}", return_state=True)
    assert state.is_completed(), state.message
    run = mlflow_client.get_run(state.result()["run_id"])
    assert run.data.tags["baseline.status"] == "disabled"
    assert not any(k.startswith(("baseline_", "margin_")) for k in run.data.metrics)
    # wine's 124 training rows: one batch of the whole split per epoch, logged as what was used
    assert run.data.params["train.batch_size"] == "124" and run.data.params["train.batch_size_auto"] == "False"
