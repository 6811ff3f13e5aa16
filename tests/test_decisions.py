"""The pure rules: which way a metric improves, and the champion/challenger decision, on numbers."""
import numpy as np
import pandas as pd
import pytest

from training.callbacks import EarlyStopping
from training.metrics import improvement, lower_is_better, resolve_mode
from training.promotion import decide, score


@pytest.mark.parametrize("name, lower", [
    ("val_loss", True), ("train_loss", True), ("test_mse", True), ("test_rmse", True), ("test_mae", True),
    ("val_accuracy", False), ("test_f1", False), ("test_auroc", False), ("test_r2", False), ("val_r2", False),
    ("baseline_test_accuracy", False), ("test_mape", True)])
def test_one_direction_rule_for_every_metric_name(name, lower):
    assert lower_is_better(name) is lower
    assert resolve_mode(name) == ("min" if lower else "max")
    assert EarlyStopping(monitor=name).mode == resolve_mode(name)  # early stopping asks the same rule


def test_an_explicit_mode_wins_and_improvement_has_the_metric_direction():
    assert resolve_mode("val_loss", "max") == "max"
    assert improvement(0.9, 0.8, "test_accuracy") == pytest.approx(0.1)
    assert improvement(0.9, 0.8, "test_mse") == pytest.approx(-0.1)


def test_challenger_must_improve_by_more_than_zero_and_the_minimum():
    assert decide(0.91, 0.90, "test_accuracy", 0.0)[0] is True
    assert decide(0.90, 0.90, "test_accuracy", 0.0)[0] is False  # a tie keeps the champion
    promoted, reason = decide(0.905, 0.90, "test_accuracy", 0.01)
    assert not promoted and "at least 0.01" in reason and "better is higher" in reason
    assert decide(1.0, 2.0, "test_mse", 0.5)[0] is True  # errors improve downwards
    assert decide(2.0, 1.0, "test_mse", 0.0)[0] is False
    assert "better is lower" in decide(2.0, 1.0, "test_mse", 0.0)[1]


@pytest.mark.parametrize("champion", [None, float("nan"), float("inf")])
def test_a_champion_that_cannot_be_scored_is_replaced(champion):
    promoted, reason = decide(0.5, champion, "test_accuracy", 0.1)
    assert promoted and "could not be scored" in reason


def test_score_reads_frame_by_frame_and_orders_probabilities_by_the_known_classes():
    frames = [pd.DataFrame({"y": ["a", "b"]}), pd.DataFrame({"y": ["c", "a"]})]
    answers = {"a": [0.9, 0.1], "b": [0.2, 0.8], "c": [0.6, 0.4]}  # the model does not know class c

    def predict(frame):
        rows = np.array([answers[v] for v in frame["y"]])
        return pd.DataFrame({"prediction": frame["y"], "proba_b": rows[:, 1], "proba_a": rows[:, 0]})

    assert score(predict, iter(frames), "y", "classification", ["a", "b", "c"], "test_accuracy") == 0.75
    values = [pd.DataFrame({"y": [1.0, 2.0, 3.0]})]
    assert score(lambda f: pd.DataFrame({"prediction": f["y"] * 2}), values, "y", "regression", [],
                 "test_mae") == pytest.approx(2.0)
