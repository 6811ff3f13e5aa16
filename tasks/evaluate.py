"""evaluate: scikit-learn's metrics on the test split, a confusion matrix or predicted-vs-true plot, and a Prefect
markdown artifact that summarises the run and links to it in MLflow."""
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from models import load_network
from preprocessing.steps import Prepared, Trained
from tasks import tracking
from tasks.inputs import batch_source, load_transform, served_outputs
from training import evaluation
from training.baseline import margins
from training.objectives import ServingModel, make_objective


def serving_model(prepared: Prepared, trained: Trained):
    """The trained network with its output head (probabilities, or values on the target's original scale), the
    run's fitted transform, and the saved network file's contents."""
    transform = load_transform(prepared)
    network, saved = load_network(trained.network)
    target = transform.target
    objective = make_objective(target.task, target.n_classes)
    return ServingModel(network, objective, target.mean, target.std).eval(), transform, saved


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(prepared: Prepared, trained: Trained, run_id: str, baseline: dict | None = None,
             primary_metric: str | None = None) -> dict:
    """Test metrics of the network; with a baseline (tasks/baseline.py), also margin_<metric> (positive: the
    network is better) and a warning when the network loses on `primary_metric`."""
    model, transform, _ = serving_model(prepared, trained)
    served, targets = served_outputs(model, batch_source(prepared, transform, "test", batch_size=1024))
    target = transform.target
    work = Path(trained.network).parent  # this training's own folder (sweep trials run side by side)
    extra, warning = [], None
    if target.regression:
        truth = targets.double() * target.std + target.mean
        metrics = evaluation.test_metrics("regression", served, truth)
        plot = work / "predicted_vs_true.png"
        evaluation.plot_predicted_vs_true(served.reshape(-1).numpy(), truth.numpy(), plot)
    else:
        metrics = evaluation.test_metrics("classification", served, targets)
        plot = work / "confusion_matrix.png"
        # bounded whatever the class count: the most frequent classes only above evaluation.PLOT_CLASSES, and the
        # whole matrix as CSV only up to evaluation.CSV_CLASSES
        drawn = evaluation.confusion_artifacts(served, targets, list(target.labels), plot,
                                               work / "confusion_matrix.csv")
        if drawn["csv"]:
            extra.append(work / "confusion_matrix.csv")
        warning = evaluation.class_count_warning(drawn["classes"], len(targets))
    tracking.log_metrics(run_id, metrics)
    client = tracking.configure()
    for path in [plot, *extra]:
        client.log_artifact(run_id, str(path), "evaluate")
    # MLflow 3.17's compare page shows only files at the artifact root ("No common artifacts to display" when all
    # are in folders): the plot again there, so that two runs' plots compare side by side
    client.log_artifact(run_id, str(plot))

    logger = get_run_logger()
    if warning:
        logger.warning(warning)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    logger.info(f"test split: {summary}")
    compared = baseline_comparison(metrics, baseline, primary_metric, run_id, logger)
    experiment_id = client.get_run(run_id).info.experiment_id
    if baseline:
        theirs = baseline["metrics"]
        rows = "\n".join(f"| {k} | {v:.4f} | {theirs[f'baseline_{k}']:.4f} | {compared[f'margin_{k}']:+.4f} |"
                         for k, v in metrics.items())
        table = (f"| metric | network | baseline | margin |\n|---|---|---|---|\n{rows}\n\n"
                 f"Baseline: {baseline['model']}.")
    else:
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        table = f"| metric | value |\n|---|---|\n{rows}"
    create_markdown_artifact(
        key="train-summary",
        markdown=(f"# {target.name}: {target.task}\n\n{table}\n\n"
                  f"Trained {trained.epochs} epoch(s) on {trained.device}. [MLflow run {run_id}]"
                  f"({tracking.ui_url(experiment_id, run_id)}); [all runs of the experiment, key metrics as columns]"
                  f"({tracking.ui_url(experiment_id)})\n"),
        description="test metrics of this train-flow run",
    )
    return metrics


def baseline_comparison(metrics: dict, baseline: dict | None, primary_metric: str | None, run_id: str,
                        logger) -> dict:
    """Logs margin_<metric> over the baseline and warns when the network is worse on the primary metric."""
    if not baseline:
        return {}
    compared = margins(metrics, baseline["metrics"])
    tracking.log_metrics(run_id, compared)
    primary = primary_metric if primary_metric in metrics else next(iter(metrics))
    margin = compared.get(f"margin_{primary}")
    if margin is not None and margin < 0:
        logger.warning(f"the network is worse than the baseline ({baseline['model']}) on {primary}: "
                       f"{metrics[primary]:.4f} against {baseline['metrics'][f'baseline_{primary}']:.4f}")
    if margin is not None:
        tracking.set_tags(run_id, {"baseline.beaten": str(margin >= 0).lower()})
    return compared
