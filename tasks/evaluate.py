"""evaluate: torchmetrics on the test split, a confusion matrix or predicted-vs-true plot, and a Prefect
markdown artifact that summarises the run and links to it in MLflow."""
import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from models import load_network
from tasks import tracking
from tasks.inputs import batch_source, load_transform, served_outputs
from tasks.steps import Prepared, Trained
from training import evaluation
from training.objectives import ServingModel, make_objective


def serving_model(prepared: Prepared, trained: Trained):
    """The trained network with its output head (probabilities, or values on the target's original scale), the
    run's fitted transform, and the saved network file's contents."""
    transform = load_transform(prepared)
    network, saved = load_network(trained.network)
    target = transform.target
    objective = make_objective(target["task"], len(target["classes"]))
    return ServingModel(network, objective, target["mean"], target["std"]).eval(), transform, saved


def mlflow_run_url(run_id: str) -> str:
    client = tracking.configure()
    experiment_id = client.get_run(run_id).info.experiment_id
    base = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(prepared: Prepared, trained: Trained, run_id: str) -> dict:
    model, transform, _ = serving_model(prepared, trained)
    served, targets = served_outputs(model, batch_source(prepared, transform, "test", batch_size=1024))
    target = transform.target
    work = Path(trained.network).parent  # this training's own folder (sweep trials run side by side)
    if target["task"] == "regression":
        truth = targets.double() * target["std"] + target["mean"]
        metrics = evaluation.test_metrics("regression", served, truth)
        plot = work / "predicted_vs_true.png"
        evaluation.plot_predicted_vs_true(served.reshape(-1).numpy(), truth.numpy(), plot)
    else:
        metrics = evaluation.test_metrics("classification", served, targets)
        plot = work / "confusion_matrix.png"
        evaluation.plot_confusion_matrix(evaluation.confusion_matrix(served, targets), target["classes"], plot)
    tracking.log_metrics(run_id, metrics)
    tracking.configure().log_artifact(run_id, str(plot), "evaluate")

    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    get_run_logger().info(f"test split: {summary}")
    url = mlflow_run_url(run_id)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    create_markdown_artifact(
        key="train-summary",
        markdown=(f"# {target['name']}: {target['task']}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
                  f"Trained {trained.epochs} epoch(s) on {trained.device}. [MLflow run {run_id}]({url})\n"),
        description="test metrics of this train-flow run",
    )
    return metrics
