"""sweep-flow: concurrent trials as MLflow child runs under one parent, best trial reported."""
import os
import uuid

import pytest
import yaml

from flows.sweep_flow import SweepConfig, apply
from flows.config import RunConfig
from tests.conftest import REPO
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_sweep_of_four_trials_creates_a_parent_with_children_and_reports_the_best(mlflow_client):
    from flows.sweep_flow import sweep_flow

    experiment = f"sweep-{uuid.uuid4().hex[:8]}"
    sweep = SweepConfig(parameters={"train.lr": [0.01, 1e-5], "model.n_layers": [2, 3]}, metric="test_accuracy",
                        max_concurrency=2)
    state = sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=4, batch_size=32), experiment=experiment,
                       return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    parent = mlflow_client.get_run(result["parent_run_id"])
    children = mlflow_client.search_runs([result["experiment_id"]],
                                         f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    combos = {(c.data.params["sweep.train.lr"], c.data.params["model.n_layers"]) for c in children}
    assert combos == {("0.01", "2"), ("0.01", "3"), ("1e-05", "2"), ("1e-05", "3")}
    assert all({"test_accuracy", "best_val_loss", "val_loss"} <= set(c.data.metrics) for c in children)
    top = max(c.data.metrics["test_accuracy"] for c in children)
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    assert chosen.info.run_id == result["best"]["run_id"]
    assert chosen.data.metrics["test_accuracy"] == top  # (ties go to the first trial)
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(top)
    assert result["best"]["overrides"]["train.lr"] == 0.01  # 1e-5 cannot learn in 4 epochs
    assert parent.data.params["sweep.trials"] == "4" and parent.info.status == "FINISHED"


def test_sweep_config_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="only model.\\* and train.\\* fields can be swept"):
        SweepConfig(parameters={"data.source": ["a"]})
    with pytest.raises(ValueError, match="there is no config field 'learning_rate'"):
        apply(RunConfig(), {"train.learning_rate": 0.1})
    with pytest.raises(ValueError, match="n_layers"):
        apply(RunConfig(), {"model.n_layers": 0})
    random = SweepConfig(parameters={"train.lr": [1, 2, 3], "model.dropout": [0.0, 0.5]}, method="random", n_trials=3)
    assert len(random.trials(seed=1)) == 3 and random.trials(seed=1) == random.trials(seed=1)


def test_the_sweep_deployment_is_valid():
    (spec,) = [d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "wine-sweep"]
    assert spec["entrypoint"] == "flows/sweep_flow.py:sweep_flow"
    sweep = SweepConfig(**spec["parameters"]["sweep"])
    base = RunConfig(**{k: v for k, v in spec["parameters"].items() if k != "sweep"})
    assert len([apply(base, t) for t in sweep.trials(42)]) == 8


def test_sweep_on_a_dask_local_cluster_with_two_workers(mlflow_client):
    from flows.sweep_flow import sweep_flow

    sweep = SweepConfig(parameters={"train.lr": [0.01, 0.003]}, runner="dask", dask_workers=2, max_concurrency=2)
    state = sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=3, batch_size=32),
                       experiment=f"dask-{uuid.uuid4().hex[:8]}", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    children = mlflow_client.search_runs([result["experiment_id"]],
                                         f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    workers = {c.data.tags["torchyard.sweep.worker"].split(":")[1] for c in children}
    assert str(os.getpid()) not in workers  # trained in the Dask worker processes, not here
