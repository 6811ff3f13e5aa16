"""sweep-flow: an Optuna study whose trials are MLflow child runs under one parent; search spaces, pruning, a
study that outlives the run, the best trial through the promotion gate, trials on Dask."""
import os
import statistics
import uuid
from pathlib import Path

import pytest
import yaml

from flows import search
from flows.config import ExportConfig, RunConfig
from flows.sweep_flow import SweepConfig, apply, check_space
from tests.conftest import REPO
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")


def children_of(client, result):
    return client.search_runs([result["experiment_id"]], f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'")


def load_study(result):
    import optuna

    return optuna.load_study(study_name=result["study_name"], storage=search.open_storage(result["storage"]))


def test_search_space_of_each_type_and_the_old_list_form():
    space = SweepConfig(parameters={
        "train.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "model.hidden_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "train.scheduler.name": {"type": "categorical", "choices": ["StepLR", "CosineAnnealingLR"]},
        "model.n_layers": [2, 3],
        "model.conv_channels": [[16, 32], [32, 64]],
    }).parameters
    dists = search.distributions(space)
    assert dists["train.lr"].log and (dists["train.lr"].low, dists["train.lr"].high) == (1e-4, 0.1)
    assert (dists["model.hidden_size"].low, dists["model.hidden_size"].high, dists["model.hidden_size"].step) == \
        (16, 64, 16)
    assert dists["train.scheduler.name"].choices == ("StepLR", "CosineAnnealingLR")
    assert dists["model.n_layers"].choices == (2, 3)  # a list is categorical
    assert search.decode(space, {"model.conv_channels": "[32, 64]", "model.n_layers": 3}) == \
        {"model.conv_channels": [32, 64], "model.n_layers": 3}  # lists travel through Optuna as JSON text
    assert space["model.hidden_size"].grid() == [16, 32, 48, 64]

    lists = SweepConfig(parameters={"train.lr": [0.01, 0.003], "model.dropout": [0.0, 0.2]})
    assert lists.sampler_name == "grid" and search.grid_size(lists.parameters) == 4  # the old form's meaning
    assert SweepConfig(parameters={"train.lr": [0.01]}, method="random").sampler_name == "random"
    ranged = SweepConfig(parameters={"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}})
    assert ranged.sampler_name == "tpe" and ranged.direction == "minimize" and ranged.epoch_metric == "val_loss"
    scored = SweepConfig(parameters={"train.lr": [0.1]}, metric="test_accuracy")
    assert scored.direction == "maximize" and scored.epoch_metric == "val_accuracy"


@pytest.mark.parametrize("parameters, message", [
    ({"data.source": ["a"]}, "only model.\\* and train.\\* fields can be swept"),
    ({"train.lr": []}, "has no values"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low 0.1 is above high 0.01"),
    ({"train.lr": {"type": "uniform", "low": 0.1, "high": 0.01}}, "type"),
    ({"train.lr": {"type": "float", "high": 0.1}}, "low"),
])
def test_a_bad_search_space_is_refused(parameters, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(parameters=parameters)


def test_sweep_config_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="there is no config field 'learning_rate'"):
        apply(RunConfig(), {"train.learning_rate": 0.1})
    with pytest.raises(ValueError, match="n_layers"):
        check_space(RunConfig(), SweepConfig(parameters={"model.n_layers": {"type": "int", "low": 0,
                                                                            "high": 3}}).parameters)
    with pytest.raises(ValueError, match="has no grid"):
        SweepConfig(parameters={"train.lr": {"type": "float", "low": 1e-3, "high": 0.1}}, sampler="grid")
    with pytest.raises(ValueError, match="improves the other way"):
        SweepConfig(parameters={"train.lr": [0.1]}, metric="test_accuracy", prune_metric="val_loss")


def test_the_sweep_deployment_is_valid():
    (spec,) = [d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "wine-sweep"]
    assert spec["entrypoint"] == "flows/sweep_flow.py:sweep_flow"
    sweep = SweepConfig(**spec["parameters"]["sweep"])
    base = RunConfig(**{k: v for k, v in spec["parameters"].items() if k != "sweep"})
    check_space(base, sweep.parameters)
    assert sweep.sampler_name == "tpe" and sweep.pruner == "median"
    assert set(sweep.parameters) == {"train.lr", "model.hidden_size", "model.n_layers", "model.dropout"}
    assert sweep.parameters["train.lr"].log


def test_sweep_of_four_trials_creates_a_parent_with_children_and_reports_the_best(mlflow_client):
    """The old list form: a grid of every combination, each a FINISHED child run, the best tagged on the parent."""
    from flows.sweep_flow import sweep_flow

    experiment = f"sweep-{uuid.uuid4().hex[:8]}"
    sweep = SweepConfig(parameters={"train.lr": [0.01, 1e-5], "model.n_layers": [2, 3]}, metric="test_accuracy",
                        max_concurrency=2, register_best=False)
    state = sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=4, batch_size=32), experiment=experiment,
                       return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    parent = mlflow_client.get_run(result["parent_run_id"])
    children = children_of(mlflow_client, result)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    combos = {(c.data.params["sweep.train.lr"], c.data.params["model.n_layers"]) for c in children}
    assert combos == {("0.01", "2"), ("0.01", "3"), ("1e-05", "2"), ("1e-05", "3")}
    assert all({"test_accuracy", "best_val_loss", "val_loss"} <= set(c.data.metrics) for c in children)
    top = max(c.data.metrics["test_accuracy"] for c in children)
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    assert chosen.info.run_id == result["best"]["run_id"]
    assert chosen.data.metrics["test_accuracy"] == top
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(top)
    assert result["best"]["overrides"]["train.lr"] == 0.01  # 1e-5 cannot learn in 4 epochs
    assert parent.data.params["sweep.trials"] == "4" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.sampler"] == "grid" and result["registered"] is None


def test_a_12_trial_tpe_study_on_wine_prunes_beats_the_median_and_registers_the_best(mlflow_client):
    """The issue's check: 12 TPE trials on the wine sample over the wine-sweep deployment's space (lr on a log
    scale, width, depth, dropout), median pruning. lr goes down to 1e-6: a trial drawn below about 2e-3 hardly
    learns in 5 epochs, so trials fall behind the median of the finished ones and the pruner stops them (FINISHED
    child runs tagged sweep.pruned=true, at an epoch after the warm-up and before the last; 3 to 8 of the 12 at
    seeds 0-3, 7 and 42). The best trial's best_val_loss is below the median of the completed trials, it is the
    lowest in MLflow and the study's best trial too; every trial is recorded once in MLflow and in the study; the
    best is registered and becomes champion of a new name."""
    from flows.sweep_flow import sweep_flow
    from tasks.promote import champion_version

    n_trials, n_epochs = 12, 5
    experiment, model_name = f"tpe-{uuid.uuid4().hex[:8]}", f"sweep-best-{uuid.uuid4().hex[:8]}"
    sweep = SweepConfig(parameters={"train.lr": {"type": "float", "low": 1e-6, "high": 0.05, "log": True},
                                    "model.hidden_size": {"type": "int", "low": 16, "high": 64, "step": 16},
                                    "model.n_layers": {"type": "int", "low": 1, "high": 3},
                                    "model.dropout": {"type": "float", "low": 0.0, "high": 0.4}},
                        sampler="tpe", n_trials=n_trials, startup_trials=5, pruner="median", pruner_startup_trials=2,
                        pruner_warmup_epochs=1, metric="best_val_loss", max_concurrency=2)
    state = sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=n_epochs, batch_size=32),
                       export=ExportConfig(model_name=model_name), experiment=experiment, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    seen = [(t["index"], t["status"], t.get("pruned_epoch"), t["overrides"], t["metrics"].get("best_val_loss"),
             t.get("reason")) for t in result["trials"]]
    children = children_of(mlflow_client, result)
    assert len(children) == n_trials and {c.info.status for c in children} == {"FINISHED"}, seen
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == list(range(n_trials))
    pruned = [c for c in children if c.data.tags.get("sweep.pruned") == "true"]
    completed = [c for c in children if c.data.tags.get("sweep.pruned") == "false"]
    assert pruned, f"no trial was pruned: {seen}"
    assert len(pruned) + len(completed) == n_trials
    assert all(2 <= int(c.data.tags["sweep.pruned_epoch"]) < n_epochs for c in pruned), seen  # warm-up 1, not last
    assert all("test_accuracy" not in c.data.metrics for c in pruned)  # a pruned trial is not evaluated
    assert all("test_accuracy" in c.data.metrics for c in completed)

    # the best trial's val metric beats the median of the completed trials, and it is the lowest of them all
    losses = {c.info.run_id: c.data.metrics["best_val_loss"] for c in completed}
    best = result["best"]
    assert best["status"] == "COMPLETE" and best["run_id"] in losses
    assert best["metrics"]["best_val_loss"] == pytest.approx(losses[best["run_id"]])
    assert losses[best["run_id"]] == min(losses.values()), seen
    assert len(completed) >= 3 and losses[best["run_id"]] < statistics.median(losses.values()), seen

    study = load_study(result)
    states = {t.user_attrs["mlflow_run_id"]: t.state.name for t in study.trials}
    assert len(study.trials) == n_trials and set(states) == {c.info.run_id for c in children}
    assert {states[c.info.run_id] for c in pruned} == {"PRUNED"}
    assert {states[c.info.run_id] for c in completed} == {"COMPLETE"}
    assert all(len(t.intermediate_values) >= 2 for t in study.trials)  # every epoch reported
    assert study.best_trial.user_attrs["mlflow_run_id"] == best["run_id"]
    assert study.best_value == pytest.approx(losses[best["run_id"]])

    parent = mlflow_client.get_run(result["parent_run_id"])
    assert parent.data.params["sweep.sampler"] == "tpe" and parent.data.params["sweep.pruner"] == "median"
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png"} <= artifacts
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    assert parent.data.metrics["trials_complete"] == len(completed)

    registered = result["registered"]
    version = mlflow_client.get_model_version(model_name, registered["model_version"])
    assert version.tags["run_id"] == best["run_id"] == parent.data.tags["best_run_id"]
    assert registered["promotion"]["decision"] == "promoted"  # the first version of a new name
    assert champion_version(mlflow_client, model_name).version == version.version
    assert parent.data.tags["registered_model"] == f"{model_name}/{version.version}"


def test_rerunning_a_sweep_continues_its_study(mlflow_client):
    from flows.sweep_flow import sweep_flow, store_folder

    experiment = f"again-{uuid.uuid4().hex[:8]}"
    sweep = SweepConfig(parameters={"train.lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True}},
                        sampler="random", n_trials=2, pruner="none", register_best=False)
    runs = [sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=2, batch_size=32), experiment=experiment)
            for _ in range(2)]
    assert runs[0]["study_name"] == runs[1]["study_name"] and runs[0]["study_name"].startswith(f"{experiment}-")
    assert runs[0]["storage"].endswith(".journal")
    assert Path(runs[0]["storage"].removeprefix("journal://")).parent == (store_folder() / "optuna").resolve()
    assert [t["index"] for t in runs[0]["trials"]] == [0, 1] and [t["index"] for t in runs[1]["trials"]] == [2, 3]
    study = load_study(runs[1])
    assert [t.number for t in study.trials] == [0, 1, 2, 3] and {t.state.name for t in study.trials} == {"COMPLETE"}
    lrs = [t.params["train.lr"] for t in study.trials]
    assert len(set(lrs)) == 4  # the continued run draws new values, not the first run's again
    second = mlflow_client.get_run(runs[1]["parent_run_id"])
    assert second.data.params["sweep.study_trials_before"] == "2" and second.data.tags["optuna.study_trials"] == "4"


def test_sweep_on_a_dask_local_cluster_with_two_workers(mlflow_client):
    from flows.sweep_flow import sweep_flow

    sweep = SweepConfig(parameters={"train.lr": {"type": "float", "low": 3e-3, "high": 0.03, "log": True}},
                        sampler="random", n_trials=3, runner="dask", dask_workers=2, max_concurrency=2,
                        register_best=False)
    state = sweep_flow(sweep=sweep, train=TrainerConfig(n_epochs=3, batch_size=32),
                       experiment=f"dask-{uuid.uuid4().hex[:8]}", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    children = children_of(mlflow_client, result)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    workers = {c.data.tags["torchyard.sweep.worker"].split(":")[1] for c in children}
    assert str(os.getpid()) not in workers  # trained in the Dask worker processes, not here
    study = load_study(result)  # told by the workers, through the journal file
    assert sorted(t.user_attrs["mlflow_run_id"] for t in study.trials) == sorted(c.info.run_id for c in children)
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
