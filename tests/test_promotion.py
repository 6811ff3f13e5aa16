"""Scheduled retraining: schedules, 'no new data', champion/challenger promotion, failures leave the champion."""
import uuid

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule

from flows.config import ExportConfig, PromoteConfig
from tests.conftest import REPO
from tests.test_flow import mlflow_run
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

WEAK = TrainerConfig(n_epochs=1, batch_size=32, lr=1e-4, early_stopping={"enabled": False})
WORSE = TrainerConfig(n_epochs=1, batch_size=32, lr=2e-4, early_stopping={"enabled": False})


def test_every_deployment_has_a_valid_active_retraining_schedule():
    deployments = [d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                   if d["entrypoint"] == "flows/train_flow.py:train_flow"]
    assert len(deployments) >= 5
    for deployment in deployments:
        (schedule,) = deployment["schedules"]
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron or zone
        assert schedule["active"] is True
        assert deployment["parameters"]["promote"]["skip_unchanged"] is True


def retrain(name, train, **params):
    from flows.train_flow import train_flow

    params.setdefault("promote", PromoteConfig(skip_unchanged=True))
    state = train_flow(train=train, export=ExportConfig(model_name=name), experiment=f"promo-{name}",
                       return_state=True, **params)
    return state


def test_unchanged_data_and_config_train_nothing(fast_train, mlflow_client):
    name = f"wine-{uuid.uuid4().hex[:6]}"
    first = retrain(name, fast_train)
    assert first.is_completed(), first.message
    again = retrain(name, fast_train)
    assert again.is_completed() and again.result()["skipped"] is True
    run = mlflow_run(mlflow_client, again)
    assert run.info.status == "FINISHED" and run.data.tags["promotion.decision"] == "skipped"
    assert "no new data" in run.data.tags["promotion.reason"] and "train_loss" not in run.data.metrics
    assert len(mlflow_client.search_model_versions(f"name = '{name}'")) == 1
    changed = retrain(name, fast_train.model_copy(update={"lr": 0.02}))  # new config: trains again
    assert changed.is_completed() and changed.result()["skipped"] is False


def test_challenger_is_promoted_only_when_better_and_failures_keep_the_champion(fast_train, mlflow_client):
    name = f"wine-{uuid.uuid4().hex[:6]}"
    weak = retrain(name, WEAK)
    assert weak.is_completed(), weak.message
    assert weak.result()["promotion"]["decision"] == "promoted"  # first of its name
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "1"
    weak_accuracy = weak.result()["metrics"]["test_accuracy"]

    better = retrain(name, fast_train)
    promotion = better.result()["promotion"]
    assert promotion["decision"] == "promoted", promotion
    # the champion was scored on the new test split through the serving path: same data, same split, same score
    assert promotion["champion_score"] == pytest.approx(weak_accuracy, abs=1e-6)
    assert promotion["challenger_score"] > weak_accuracy
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "2"
    tags = mlflow_run(mlflow_client, better).data.tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_version"] == "1"
    assert "promoted" in mlflow_client.get_model_version(name, "2").description

    worse = retrain(name, WORSE)
    promotion = worse.result()["promotion"]
    assert promotion["decision"] == "not promoted" and "test_accuracy changed by -" in promotion["reason"]
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "2"
    assert mlflow_client.get_model_version(name, "3").tags["promotion"].startswith("not promoted")

    failed = retrain(name, fast_train.model_copy(update={"lr": 0.005}),
                     promote=PromoteConfig(metric="test_nonsense", skip_unchanged=True))
    assert failed.is_failed() and "promote.metric 'test_nonsense' is not a test metric" in failed.message
    assert mlflow_run(mlflow_client, failed).info.status == "FAILED"
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "2"
