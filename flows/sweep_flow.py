"""sweep-flow: a grid or random search over model.* and train.* fields, as concurrent trials.

The data is collected, validated, split and preprocessed once, into the sweep's parent MLflow run; each trial trains
and evaluates into its own child run (tag mlflow.parentRunId), so the MLflow UI groups the trials under the parent
and its compare view and parallel-coordinates plot show the trade-off. At most `sweep.max_concurrency` trials run
at once, on a thread pool or on Dask (prefect-dask; a LocalCluster or a given scheduler), chosen by
`sweep.runner`. The best trial by `sweep.metric` is tagged on the parent run and
reported in a Prefect markdown artifact.
"""
import itertools
import os
import random
import shutil
import socket
from typing import Any, Literal

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import mlflow  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from pydantic import ConfigDict, Field, field_validator  # noqa: E402

from flows.config import RunConfig  # noqa: E402
from flows.train_flow import prepare, work_root  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from preprocessing.config import DataConfig, ImageConfig, SplitConfig, TabularConfig, TextConfig  # noqa: E402
from preprocessing.steps import Prepared  # noqa: E402
from tasks import tracking  # noqa: E402
from tasks.collect import collect as collect_task  # noqa: E402
from tasks.evaluate import evaluate as evaluate_task  # noqa: E402
from tasks.parallel import ParallelConfig  # noqa: E402
from tasks.train import train as train_task  # noqa: E402
from training.config import TrainerConfig  # noqa: E402
from training.metrics import lower_is_better  # noqa: E402

MAX_WORKERS = 16  # the task runner's ceiling; sweep.max_concurrency is the setting


class SweepConfig(ParallelConfig):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, list[Any]] = Field(
        description="Config fields to vary and their values, by dotted name: {'train.lr': [0.01, 0.003], "
        "'model.n_layers': [2, 3], 'train.scheduler.name': ['StepLR', 'CosineAnnealingLR']}. model.* and train.* "
        "only: the data is prepared once for all trials.")
    method: Literal["grid", "random"] = Field("grid", description="grid: every combination; random: n_trials "
                                              "combinations drawn with the seed.")
    n_trials: int | None = Field(None, ge=1, description="random: how many; grid: at most this many.")
    metric: str = Field("best_val_loss", description="Chooses the best trial: best_val_loss (the lowest val_loss "
                        "of the trial), or a test metric such as test_accuracy. Lower is better for *_loss/_mse/_mae.")
    max_concurrency: int = Field(2, ge=1, le=MAX_WORKERS, description="Trials running at once.")

    def task_runner(self, max_workers: int | None = None):
        return super().task_runner(max_workers or self.max_concurrency)

    @field_validator("parameters")
    @classmethod
    def _model_and_train_only(cls, parameters):
        if not parameters:
            raise ValueError("sweep.parameters is empty; give at least one field and its values")
        for name, values in parameters.items():
            if not name.startswith(("model.", "train.")):
                raise ValueError(f"sweep parameter '{name}': only model.* and train.* fields can be swept")
            if not values:
                raise ValueError(f"sweep parameter '{name}' has no values")
        return parameters

    def trials(self, seed: int) -> list[dict]:
        names = list(self.parameters)
        grid = [dict(zip(names, combo)) for combo in itertools.product(*self.parameters.values())]
        if self.method == "random":
            return random.Random(seed).sample(grid, min(self.n_trials or len(grid), len(grid)))
        return grid[: self.n_trials] if self.n_trials else grid


def apply(base: RunConfig, overrides: dict) -> tuple[ModelConfig, TrainerConfig]:
    """The model and trainer configs of one trial: the base with the overrides applied (validated)."""
    sections = {"model": base.model.model_dump(), "train": base.train.model_dump()}
    for name, value in overrides.items():
        node = sections
        *path, leaf = name.split(".")
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"sweep parameter '{name}': there is no config field '{key}'")
            node = node[key]
        if leaf not in node:
            raise ValueError(f"sweep parameter '{name}': there is no config field '{leaf}'")
        node[leaf] = value
    model = ModelConfig(**sections["model"]).resolved(base.data.data_type, base.image.image_size)
    return model, TrainerConfig(**sections["train"])


@task(name="trial", cache_policy=NO_CACHE)
def trial(prepared: Prepared, index: int, overrides: dict, model_config: ModelConfig, train_config: TrainerConfig,
          seed: int, experiment_id: str, parent_run_id: str, parent_name: str, work_dir) -> dict:
    """Train and evaluate one combination into its own child run of the sweep's parent run."""
    client = tracking.configure()
    child = client.create_run(experiment_id, run_name=f"{parent_name}-trial-{index}",
                              tags={"mlflow.parentRunId": parent_run_id, "torchyard.sweep.trial": str(index),
                                    "prefect.flow_run_id": str(flow_run.id or "local"),
                                    "torchyard.sweep.worker": f"{socket.gethostname()}:{os.getpid()}"}).info.run_id
    summary = {"index": index, "run_id": child, "overrides": overrides}
    try:
        tracking.log_params(child, "sweep", overrides)
        trained = train_task.fn(prepared, model_config, train_config, seed, child, work_dir / f"trial-{index}")
        metrics = evaluate_task.fn(prepared, trained, child)
        history = client.get_metric_history(child, "val_loss")
        metrics["best_val_loss"] = min(m.value for m in history)
        tracking.log_metrics(child, {"best_val_loss": metrics["best_val_loss"]})
        client.set_terminated(child, "FINISHED")
        return {**summary, "status": "FINISHED", "metrics": metrics}
    except Exception as exc:  # a failed trial is recorded; the sweep goes on
        reason = tracking.record_failure(child, exc)
        client.set_terminated(child, "FAILED")
        get_run_logger().warning(f"trial {index} {overrides} failed: {reason}")
        return {**summary, "status": "FAILED", "reason": reason, "metrics": {}}


@flow(name="sweep-flow", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def sweep_flow(
    sweep: SweepConfig,
    data: DataConfig = DataConfig(),
    split: SplitConfig = SplitConfig(),
    preprocess: TabularConfig = TabularConfig(),
    image: ImageConfig = ImageConfig(),
    text: TextConfig = TextConfig(),
    model: ModelConfig = ModelConfig(),
    train: TrainerConfig = TrainerConfig(),
    experiment: str | None = None,
    seed: int = 42,
) -> dict:
    base = RunConfig(data=data, split=split, preprocess=preprocess, image=image, text=text, model=model, train=train,
                     experiment=experiment, seed=seed)
    trials = sweep.trials(seed)
    configs = [apply(base, overrides) for overrides in trials]  # every trial's config is valid before any runs
    logger = get_run_logger()
    run_key = str(flow_run.id or "local")
    tracking.check_reachable()
    work_dir = work_root() / run_key
    work_dir.mkdir(parents=True, exist_ok=True)
    client = tracking.configure()
    experiment_id = tracking.ensure_experiment(client, base.experiment_name)
    name = f"{base.dataset}-sweep-{run_key[:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name,
                          tags={"prefect.flow_run_id": run_key, "torchyard.sweep": "parent",
                                "torchyard.config_hash": base.config_hash()}) as run:
        parent = run.info.run_id
        tracking.log_params(parent, "sweep", {"method": sweep.method, "trials": len(trials), "metric": sweep.metric,
                                              "max_concurrency": sweep.max_concurrency,
                                              **{k: str(v) for k, v in sweep.parameters.items()}})
        logger.info(f"sweep of {len(trials)} trial(s), {sweep.max_concurrency} at a time; MLflow parent run {parent}")
        try:
            snapshot = collect_task(base.data, base.image, parent, work_dir)
            _, _, prepared = prepare(base, snapshot, parent)
            run_trials = sweep_trials.with_options(task_runner=sweep.task_runner())
            results = run_trials(prepared, trials, configs, sweep.max_concurrency, seed, experiment_id, parent, name,
                                 work_dir)
            best = _best(results, sweep.metric)
        except BaseException as exc:
            tracking.record_failure(parent, exc)
            raise
        tracking.set_tags(parent, {"best_run_id": best["run_id"], "best_trial": str(best["index"]),
                                   "best_parameters": str(best["overrides"])})
        tracking.log_metrics(parent, {f"best_{k}" if not k.startswith("best_") else k: v
                                      for k, v in best["metrics"].items()})
        _report(results, best, sweep.metric, name)
        logger.info(f"best trial {best['index']} {best['overrides']}: {sweep.metric} "
                    f"{best['metrics'][sweep.metric]:.4f} (MLflow run {best['run_id']})")
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"parent_run_id": parent, "experiment_id": experiment_id, "best": best, "trials": results}


@flow(name="sweep-trials", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def sweep_trials(prepared: Prepared, trials: list[dict], configs: list, concurrency: int, seed: int,
                 experiment_id: str, parent: str, name: str, work_dir) -> list[dict]:
    """The trials, as a subflow so that sweep.runner picks its task runner (threads or Dask) at run time. At most
    `concurrency` trials are in flight; results in trial order."""
    queue = list(enumerate(zip(trials, configs)))
    running, results = [], []
    while queue or running:
        while queue and len(running) < concurrency:
            index, (overrides, (model_config, train_config)) = queue.pop(0)
            running.append(trial.submit(prepared, index, overrides, model_config, train_config, seed, experiment_id,
                                        parent, name, work_dir))
        finished = next(as_completed(running))
        running.remove(finished)
        results.append(finished.result())
    return sorted(results, key=lambda r: r["index"])


def _best(results: list[dict], metric: str) -> dict:
    done = [r for r in results if r["status"] == "FINISHED"]
    if not done:
        reasons = "; ".join(f"trial {r['index']}: {r['reason']}" for r in results)
        raise RuntimeError(f"every trial failed: {reasons}")
    if metric not in done[0]["metrics"]:
        raise ValueError(f"sweep.metric '{metric}' is not among the trial metrics: {', '.join(done[0]['metrics'])}")
    choose = min if lower_is_better(metric) else max
    return choose(done, key=lambda r: r["metrics"][metric])


def _report(results: list[dict], best: dict, metric: str, name: str) -> None:
    names = list(results[0]["overrides"])
    header = "| trial | " + " | ".join(names) + f" | {metric} | status |\n|" + "---|" * (len(names) + 3)
    lines = []
    for r in results:
        score = r["metrics"].get(metric)
        mark = " **best**" if r is best else ""
        lines.append(f"| {r['index']}{mark} | " + " | ".join(str(r["overrides"][n]) for n in names)
                     + f" | {'' if score is None else f'{score:.4f}'} | {r['status']} |")
    create_markdown_artifact(key="sweep-summary", markdown=f"# {name}\n\n{header}\n" + "\n".join(lines) + "\n",
                             description="trials of this sweep, best marked")
