"""sweep-flow: an Optuna study over model.* and train.* fields, its trials run concurrently as MLflow child runs.

The data is collected, validated, split and preprocessed once, into the sweep's parent MLflow run. The study's
sampler (TPE, random, grid or CMA-ES, seeded) proposes each trial's values; each trial trains and evaluates into
its own child run (tag mlflow.parentRunId), reporting its per-epoch validation metric to the study, whose pruner
may stop it early (the child run then ends FINISHED with sweep.pruned=true). At most `sweep.max_concurrency`
trials run at once, on a thread pool or on Dask (prefect-dask; a LocalCluster or a given scheduler), chosen by
`sweep.runner`. The study lives in a storage that outlives the run (flows/search.py), so a rerun continues it.
The best trial of the run is tagged on the parent run, reported in a Prefect markdown artifact with Optuna's
plots on the parent, and with `sweep.register_best` exported, registered and put through train-flow's
champion/challenger gate (the same tasks).
"""
import inspect
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import mlflow  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from pydantic import AfterValidator, ConfigDict, Field, model_validator  # noqa: E402

from flows import search  # noqa: E402
from flows.config import RunConfig, takes_run_config  # noqa: E402
from flows.pruning import OptunaPruning  # noqa: E402
from flows.train_flow import prepare, work_root  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from preprocessing.steps import Prepared, Trained  # noqa: E402
from tasks import tracking  # noqa: E402
from tasks.collect import collect as collect_task  # noqa: E402
from tasks.evaluate import evaluate as evaluate_task  # noqa: E402
from tasks.export import export as export_task  # noqa: E402
from tasks.parallel import ParallelConfig  # noqa: E402
from tasks.promote import promote as promote_task  # noqa: E402
from tasks.register import register as register_task  # noqa: E402
from tasks.train import train as train_task  # noqa: E402
from training.config import TrainerConfig  # noqa: E402
from training.metrics import lower_is_better  # noqa: E402

MAX_WORKERS = 16  # the task runner's ceiling; sweep.max_concurrency is the setting
DEFAULT_TRIALS = 20  # a sampled (not grid) sweep with neither n_trials nor timeout_s


class SweepConfig(ParallelConfig):
    model_config = ConfigDict(extra="forbid")

    parameters: Annotated[dict[str, search.Dimension | list[Any]], AfterValidator(search.parse_space)] = Field(
        description="Config fields to vary, by dotted name, each a range or choices: {'train.lr': {type: float, "
        "low: 1e-4, high: 0.1, log: true}, 'model.n_layers': {type: int, low: 1, high: 4}, 'model.hidden_size': "
        "{type: int, low: 32, high: 256, step: 32}, 'train.scheduler.name': {type: categorical, choices: "
        "[StepLR, CosineAnnealingLR]}}; a plain list [a, b] means categorical. model.* and train.* only: the data "
        "is prepared once for all trials.")
    sampler: Literal["tpe", "random", "grid", "cmaes"] | None = Field(
        None, description="Optuna's sampler, seeded with the run's seed: tpe (learns from earlier trials), random, "
        "grid (every combination; ranges need a step), cmaes (numeric ranges). Default: grid when every parameter "
        "is a list of choices, else tpe.")
    method: Literal["grid", "random"] | None = Field(None, description="Old name of sampler (grid or random).")
    n_trials: int | None = Field(None, ge=1, description="Trials this run adds to the study. Default: the grid's "
                                 f"points not run yet (grid), else {DEFAULT_TRIALS} (or as many as timeout_s allows).")
    timeout_s: float | None = Field(None, gt=0, description="No new trial starts after this many seconds; running "
                                    "ones finish.")
    metric: str = Field("best_val_loss", description="What the study optimises and the best trial is chosen by: "
                        "best_val_loss (the lowest val_loss of the trial), or a test metric such as test_accuracy. "
                        "Its direction follows training/metrics.py (lower is better for *_loss/_mse/_mae).")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops hopeless trials from their per-epoch validation metric: median (below the "
        "median of finished trials at the same epoch), hyperband, or none (every trial trains to the end).")
    prune_metric: str | None = Field(None, description="The epoch metric reported to the pruner; default: the val_ "
                                     "metric of `metric` (best_val_loss -> val_loss, test_accuracy -> val_accuracy, "
                                     "others val_loss). It must improve in the same direction as `metric`.")
    pruner_startup_trials: int = Field(5, ge=0, description="median: trials that finish before any is pruned.")
    pruner_warmup_epochs: int = Field(1, ge=0, description="Epochs of every trial that are never pruned "
                                      "(hyperband: its smallest budget).")
    startup_trials: int = Field(10, ge=0, description="tpe, cmaes: random trials before the sampler models the "
                                "space (counted over the whole study).")
    storage: str | None = Field(None, description="Where the Optuna study lives: an RDB URL (sqlite:///..., "
                                "postgresql://...) or a journal file (journal:///path or a path). Default: a "
                                "journal file per study in optuna/ beside the MLflow store.")
    study_name: str | None = Field(None, description="Default: <experiment>-sweep-<hash of the base config, "
                                   "parameters and metric>; the same sweep run again continues its study.")
    register_best: bool = Field(True, description="Export and register the run's best trial and put it through "
                                "the champion/challenger gate, as train-flow does (export.*, promote.*).")
    max_concurrency: int = Field(2, ge=1, le=MAX_WORKERS, description="Trials running at once.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.method and self.sampler and self.method != self.sampler:
            raise ValueError(f"sweep.method {self.method} and sweep.sampler {self.sampler} disagree; give sampler")
        if self.sampler_name == "grid":
            search.grid_size(self.parameters)  # raises for a float range without a step
        if lower_is_better(self.epoch_metric) != lower_is_better(self.metric):
            raise ValueError(f"sweep.prune_metric {self.epoch_metric} improves the other way than sweep.metric "
                             f"{self.metric}")
        return self

    @property
    def sampler_name(self) -> str:
        return self.sampler or self.method or ("grid" if search.all_categorical(self.parameters) else "tpe")

    @property
    def direction(self) -> str:
        return "minimize" if lower_is_better(self.metric) else "maximize"

    @property
    def epoch_metric(self) -> str:
        return self.prune_metric or search.epoch_metric_for(self.metric)

    def study_spec(self, base: RunConfig) -> search.StudySpec:
        name = self.study_name or search.study_name_for(base.experiment_name, base.config_hash(), self.parameters,
                                                        self.metric)
        epochs_swept = "train.n_epochs" in self.parameters
        return search.StudySpec(storage=self.storage or search.default_storage(name, store_folder()),
                                study_name=name, direction=self.direction, pruner=self.pruner,
                                pruner_startup_trials=self.pruner_startup_trials,
                                pruner_warmup_epochs=self.pruner_warmup_epochs,
                                max_epochs=None if epochs_swept else base.train.n_epochs)

    def trials_to_run(self, study) -> int | None:
        """How many trials this run asks for; None: until timeout_s."""
        if self.n_trials:
            return self.n_trials
        if self.sampler_name == "grid":
            return search.unvisited_grid_points(study, self.parameters)
        return None if self.timeout_s else DEFAULT_TRIALS


def store_folder() -> Path:
    """The MLflow store's folder when it is local (a SQLite file or a folder), else the repo's mlflow/."""
    if store := tracking.sqlite_path():
        return store.parent
    parsed = urlparse(tracking.tracking_uri())
    return Path(parsed.path) if parsed.scheme in ("", "file") else tracking.DEFAULT_STORE


def apply(base: RunConfig, overrides: dict) -> tuple[ModelConfig, TrainerConfig]:
    """The model and trainer configs of one trial: the base with the overrides applied (validated)."""
    sections = {"model": base.model.model_dump(), "train": base.train.model_dump()}
    for name, value in overrides.items():
        node = sections
        for key in name.split("."):
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"sweep parameter '{name}': there is no config field '{key}'")
            parent, node = node, node[key]
        parent[key] = value
    model = ModelConfig(**sections["model"]).resolved(base.data.data_type, base.image.image_size)
    return model, TrainerConfig(**sections["train"])


def check_space(base: RunConfig, space: dict) -> None:
    """Every field exists and takes its range's ends and every choice, before any data is read."""
    for name, dimension in space.items():
        for value in dimension.edges():
            apply(base, {name: value})


@task(name="trial", cache_policy=NO_CACHE)
def trial(prepared: Prepared, number: int, trial_id: int, overrides: dict, base: RunConfig, study: search.StudySpec,
          metric: str, epoch_metric: str, tracking_uri: str, experiment_id: str, parent_run_id: str,
          parent_name: str, work_dir) -> dict:
    """Train and evaluate one trial into its own child run of the sweep's parent run, reporting each epoch to the
    study and telling it the result. Runs where the task runner puts it (a thread here, a Dask worker): the
    tracking store and the study are reopened from the URIs given."""
    if tracking.tracking_uri() != tracking_uri:  # a Dask worker: given, not inherited (tasks/tracking.py reads it)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # in the flow's own process it is already the same
    client = tracking.configure()
    child = client.create_run(experiment_id, run_name=f"{parent_name}-trial-{number}",
                              tags={"mlflow.parentRunId": parent_run_id, "torchyard.sweep.trial": str(number),
                                    "optuna.study_name": study.study_name, "optuna.trial_number": str(number),
                                    "prefect.flow_run_id": str(flow_run.id or "local"),
                                    "torchyard.sweep.worker": f"{socket.gethostname()}:{os.getpid()}"}).info.run_id
    summary = {"index": number, "run_id": child, "overrides": overrides, "metrics": {}}
    optuna_trial = None
    try:
        optuna_trial = study.trial(trial_id)
        optuna_trial.set_user_attr("mlflow_run_id", child)
        tracking.log_params(child, "sweep", overrides)
        model_config, train_config = apply(base, overrides)
        pruning = OptunaPruning(optuna_trial, epoch_metric)
        trained = train_task.fn(prepared, model_config, train_config, base.seed, child, work_dir / f"trial-{number}",
                                extra_callbacks=[pruning])
        best_val_loss = min(m.value for m in client.get_metric_history(child, "val_loss"))
        if pruning.pruned_epoch is not None:
            tracking.log_metrics(child, {"best_val_loss": best_val_loss})
            tracking.set_tags(child, {"sweep.pruned": "true", "sweep.pruned_epoch": pruning.pruned_epoch})
            optuna_trial.study.tell(optuna_trial, state=_state("PRUNED"))
            tracking.set_terminated(child, "FINISHED")
            get_run_logger().info(f"trial {number} {overrides} pruned after epoch {pruning.pruned_epoch}")
            return {**summary, "status": "PRUNED", "pruned_epoch": pruning.pruned_epoch,
                    "metrics": {"best_val_loss": best_val_loss}}
        metrics = {**evaluate_task.fn(prepared, trained, child), "best_val_loss": best_val_loss}
        tracking.log_metrics(child, {"best_val_loss": best_val_loss})
        if metric not in metrics:
            raise ValueError(f"sweep.metric '{metric}' is not among the trial metrics: {', '.join(metrics)}")
        optuna_trial.study.tell(optuna_trial, metrics[metric])
        tracking.set_tags(child, {"sweep.pruned": "false"})
        tracking.set_terminated(child, "FINISHED")
        return {**summary, "status": "COMPLETE", "metrics": metrics, "network": str(trained.network),
                "epochs": trained.epochs, "device": trained.device}
    except Exception as exc:  # a failed trial is recorded; the sweep goes on
        reason = tracking.record_failure(child, exc)
        tracking.set_terminated(child, "FAILED")
        if optuna_trial is not None:
            optuna_trial.study.tell(optuna_trial, state=_state("FAIL"), skip_if_finished=True)
        get_run_logger().warning(f"trial {number} {overrides} failed: {reason}")
        return {**summary, "status": "FAILED", "reason": reason}


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


@flow(name="sweep-flow", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
@takes_run_config(inspect.Parameter("sweep", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=SweepConfig),
                  skip=("parallel", "baseline", "model_fn"))
def sweep_flow(sweep: SweepConfig, **parameters) -> dict:
    """The sweep, then train-flow's config sections (less parallel, baseline and model_fn) as the base config."""
    base = RunConfig(**parameters)
    check_space(base, sweep.parameters)  # every field and every range end is valid before any runs
    logger = get_run_logger()
    run_key = str(flow_run.id or "local")
    tracking.check_reachable()
    spec = sweep.study_spec(base)
    study = spec.create()
    work_dir = work_root() / run_key
    work_dir.mkdir(parents=True, exist_ok=True)
    client = tracking.configure()
    experiment_id = tracking.ensure_experiment(client, base.experiment_name)
    name = f"{base.dataset}-sweep-{run_key[:8]}"
    n_trials = sweep.trials_to_run(study)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name,
                          tags={"prefect.flow_run_id": run_key, "torchyard.sweep": "parent",
                                "torchyard.config_hash": base.config_hash(), "optuna.study_name": spec.study_name,
                                "optuna.storage": spec.storage}) as run:
        parent = run.info.run_id
        tracking.log_params(parent, "sweep", {
            "sampler": sweep.sampler_name, "pruner": sweep.pruner, "trials": n_trials, "timeout_s": sweep.timeout_s,
            "metric": sweep.metric, "direction": spec.direction, "prune_metric": sweep.epoch_metric,
            "max_concurrency": sweep.max_concurrency, "study_trials_before": len(study.trials),
            **{k: _described(v) for k, v in sweep.parameters.items()}})
        adds = "as many as fit in timeout_s" if n_trials is None else n_trials
        logger.info(f"study {spec.study_name} ({spec.storage}): {len(study.trials)} trial(s) so far; this run adds "
                    f"{adds} ({sweep.sampler_name}, pruner {sweep.pruner}, {sweep.max_concurrency} at a time"
                    f"{f', {sweep.timeout_s:g} s' if sweep.timeout_s else ''}); "
                    f"MLflow parent run {parent}")
        try:
            snapshot = collect_task(base.data, base.image, parent, work_dir)
            validated, _, prepared = prepare(base, snapshot, parent)
            run_trials = sweep_trials.with_options(task_runner=sweep.task_runner(sweep.max_concurrency))
            results = run_trials(prepared, sweep, base, spec, n_trials, experiment_id, parent, name, work_dir)
            best = _best(results, sweep.metric)
            study = spec.create()  # reloaded: the trials told their results from where they ran
            _record(parent, results, best, sweep.metric, list(sweep.parameters), study, work_dir, name)
            registered = None
            if best is None:
                logger.warning("no trial of this run completed (all pruned or failed, or the grid was already "
                               "done); nothing to register")
            elif sweep.register_best:
                registered = register_best(best, base, prepared, snapshot.fingerprint,
                                           base.promote.metric_for(validated.schema["task"]), parent, run_key)
        except BaseException as exc:
            tracking.record_failure(parent, exc)
            raise
        if best is not None:
            logger.info(f"best trial {best['index']} {best['overrides']}: {sweep.metric} "
                        f"{best['metrics'][sweep.metric]:.4f} (MLflow run {best['run_id']})")
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"parent_run_id": parent, "experiment_id": experiment_id, "best": best, "trials": results,
            "study_name": spec.study_name, "storage": spec.storage, "registered": registered}


@flow(name="sweep-trials", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def sweep_trials(prepared: Prepared, sweep: SweepConfig, base: RunConfig, spec: search.StudySpec,
                 n_trials: int | None, experiment_id: str, parent: str, name: str, work_dir) -> list[dict]:
    """Asks the study for trials and runs them, as a subflow so that sweep.runner picks its task runner (threads
    or Dask) at run time. At most `max_concurrency` trials are in flight; each is asked for when a slot frees, so
    the sampler sees every result told so far. Results in trial order."""
    study = spec.create()
    # the seed moves on with the study: a continued study must not draw the first run's start-up values again
    study.sampler = search.make_sampler(sweep.sampler_name, sweep.parameters, base.seed + len(study.trials),
                                        sweep.startup_trials)
    space = search.distributions(sweep.parameters)
    deadline = time.monotonic() + sweep.timeout_s if sweep.timeout_s else None
    tracking_uri = tracking.tracking_uri()
    running, results = {}, []  # running: trial number by future

    def more() -> bool:
        asked = len(running) + len(results)
        return (n_trials is None or asked < n_trials) and (deadline is None or time.monotonic() < deadline)

    while running or more():
        while more() and len(running) < sweep.max_concurrency:
            asked_trial = study.ask(space)
            overrides = search.decode(sweep.parameters, asked_trial.params)
            # the storage's trial id (not the number) reopens the trial where it runs; Trial has no public name for it
            future = trial.submit(prepared, asked_trial.number, asked_trial._trial_id, overrides, base, spec,
                                  sweep.metric, sweep.epoch_metric, tracking_uri, experiment_id, parent, name, work_dir)
            running[future] = asked_trial.number
        if not running:
            break
        finished = next(as_completed(list(running)))
        results.append(_result_of(finished, running.pop(finished), study))
    return sorted(results, key=lambda r: r["index"])


def _result_of(future, number: int, study) -> dict:
    """The trial's summary; a trial whose task itself crashed (a lost Dask worker) is told FAIL here."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        study.tell(number, state=_state("FAIL"), skip_if_finished=True)
        return {"index": number, "run_id": None, "overrides": {}, "metrics": {}, "status": "FAILED",
                "reason": f"{type(exc).__name__}: {exc}"}


def _best(results: list[dict], metric: str) -> dict | None:
    """The run's best completed trial by `metric` (ties: the first); None when none completed. It fails the
    sweep only when every trial failed."""
    if results and all(r["status"] == "FAILED" for r in results):
        reasons = "; ".join(f"trial {r['index']}: {r['reason']}" for r in results)
        raise RuntimeError(f"every trial failed: {reasons}")
    done = [r for r in results if r["status"] == "COMPLETE"]
    choose = min if lower_is_better(metric) else max
    return choose(done, key=lambda r: r["metrics"][metric], default=None)


def _record(parent: str, results: list[dict], best: dict | None, metric: str, names: list[str], study,
            work_dir: Path, name: str) -> None:
    """The parent run's record of the sweep: best trial tags and metrics, counts, Optuna's plots, the summary."""
    counts = {status: sum(r["status"] == status for r in results) for status in ("COMPLETE", "PRUNED", "FAILED")}
    tracking.log_metrics(parent, {f"trials_{k.lower()}": v for k, v in counts.items()})
    tags = {"optuna.study_trials": len(study.trials)}
    if best is not None:
        tags.update({"best_run_id": best["run_id"], "best_trial": best["index"],
                     "best_parameters": str(best["overrides"])})
        tracking.log_metrics(parent, {k if k.startswith("best_") else f"best_{k}": v
                                      for k, v in best["metrics"].items()})
    try:
        study_best = study.best_trial  # over every run of the study
        tags.update({"optuna.best_trial": study_best.number, "optuna.best_value": study_best.value,
                     "optuna.best_run_id": study_best.user_attrs.get("mlflow_run_id", "")})
    except ValueError:
        pass  # no completed trial in the whole study
    tracking.set_tags(parent, tags)
    written, skipped = search.plot_study(study, work_dir / "optuna", len(names))
    client = tracking.configure()
    for path in written:
        client.log_artifact(parent, str(path), "optuna")
    if skipped:
        get_run_logger().warning("Optuna plots skipped: " + "; ".join(skipped))
    _report(results, best, metric, names, name, study)


def register_best(best: dict, base: RunConfig, prepared: Prepared, fingerprint: str, primary_metric: str,
                  parent: str, run_key: str) -> dict:
    """train-flow's export -> register -> promote for the best trial, into the trial's child run. Export runs as
    a task on the flow's thread pool: it logs the model through MLflow's fluent API, whose active run is per
    thread, and this thread's is the parent run."""
    model_config, train_config = apply(base, best["overrides"])
    config = base.model_copy(update={"model": model_config, "train": train_config})
    child = best["run_id"]
    trained = Trained(Path(best["network"]), best["epochs"], best["device"])
    run_info = {"run_id": child, "experiment": config.experiment_name, "flow_run_id": run_key,
                "data_fingerprint": fingerprint, "sweep_parent_run_id": parent,
                "config": config.model_dump(mode="json")}
    metrics = {k: v for k, v in best["metrics"].items() if k.startswith("test_")}
    exported = export_task.submit(prepared, trained, config.export.tolerance, child, run_info, metrics).result()
    version = register_task(exported, config.model_name, metrics, child, fingerprint, config.config_hash())
    promotion = promote_task(prepared, metrics, primary_metric, config.promote.min_improvement, config.model_name,
                             version, child)
    tracking.set_tags(parent, {"registered_model": f"{config.model_name}/{version}",
                               "promotion.decision": promotion["decision"], "promotion.reason": promotion["reason"]})
    return {"model_name": config.model_name, "model_version": version, "promotion": promotion}


def _report(results: list[dict], best: dict | None, metric: str, names: list[str], name: str, study) -> None:
    header = "| trial | " + " | ".join(names) + f" | {metric} | status |\n|" + "---|" * (len(names) + 3)
    lines = []
    for r in results:
        score = r["metrics"].get(metric)
        mark = " **best**" if r is best else ""
        status = f"pruned after epoch {r['pruned_epoch']}" if r["status"] == "PRUNED" else r["status"].lower()
        lines.append(f"| {r['index']}{mark} | " + " | ".join(str(r["overrides"].get(n, "")) for n in names)
                     + f" | {'' if score is None else f'{score:.4g}'} | {status} |")
    create_markdown_artifact(
        key="sweep-summary",
        markdown=(f"# {name}\n\nOptuna study `{study.study_name}`: {len(study.trials)} trial(s) in all.\n\n"
                  f"{header}\n" + "\n".join(lines) + "\n"),
        description="trials of this sweep run, best marked")


def _described(dimension) -> str:
    return str(dimension.choices if isinstance(dimension, search.Choice) else dimension.model_dump(exclude_none=True))
