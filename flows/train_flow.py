"""train-flow: collect -> validate -> split -> preprocess -> train -> evaluate -> export ONNX -> register.

One MLflow run per flow run. A rerun of the same flow run (Prefect retry) reopens that MLflow run and resumes
training from the last checkpoint. Any failure marks the MLflow run FAILED with the reason as a tag.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here; no telemetry errors

import mlflow  # noqa: E402
from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.settings import PREFECT_UI_URL  # noqa: E402

from flows import recovery  # noqa: E402
from flows.config import RunConfig, takes_run_config  # noqa: E402
from preprocessing.errors import TorchyardError  # noqa: E402
from tasks import tracking  # noqa: E402
from tasks.baseline import baseline as baseline_task  # noqa: E402
from tasks.collect import collect as collect_task  # noqa: E402
from tasks.evaluate import evaluate as evaluate_task  # noqa: E402
from tasks.export import export as export_task  # noqa: E402
from tasks.preprocess import preprocess as preprocess_task  # noqa: E402
from tasks.promote import promote as promote_task, unchanged_since_champion  # noqa: E402
from tasks.register import register as register_task  # noqa: E402
from tasks.split import split as split_task  # noqa: E402
from tasks.train import train as train_task  # noqa: E402
from tasks.validate import validate as validate_task  # noqa: E402


def prepare(config: RunConfig, snapshot, run_id: str):
    """validate -> split -> preprocess of a collected snapshot, logging to `run_id`: what training starts from."""
    validated = validate_task(snapshot, config.data, config.image, config.text, run_id, config.parallel)
    splits = split_task(validated, config.split, config.seed, run_id)
    return validated, splits, preprocess_task(validated, splits, config.preprocess, config.image, config.text,
                                              run_id, config.parallel)


def work_root() -> Path:
    """Per-flow-run scratch space (snapshots, arrays, checkpoints): TORCHYARD_WORK_DIR or .torchyard/work."""
    return Path(os.environ.get("TORCHYARD_WORK_DIR", tracking.REPO / ".torchyard" / "work"))


@flow(name="train-flow")
@takes_run_config()
def train_flow(**parameters) -> dict:
    """One parameter per config section (flows/sections.py) plus experiment, seed and model_fn."""
    config = RunConfig(**parameters)
    logger = get_run_logger()
    run_key = str(flow_run.id or "local")
    tracking.check_reachable()  # before any data is read
    work_dir = work_root() / run_key
    client = tracking.configure()
    experiment_id = tracking.ensure_experiment(client, config.experiment_name)
    previous = client.search_runs([experiment_id], f"tags.`prefect.flow_run_id` = '{run_key}'", max_results=1)

    with mlflow.start_run(run_id=previous[0].info.run_id) if previous else mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{config.dataset}-{config.model.type}-{run_key[:8]}",
            tags=_run_tags(config, run_key)) as run:
        run_id = run.info.run_id
        logger.info(f"MLflow run {run_id} in experiment '{config.experiment_name}' ({tracking.tracking_uri()})")
        tracking.set_tags(run_id, recovery.process_tags())
        orphans = recovery.claim_orphans(client, experiment_id, run_id, config.config_hash())
        for orphan in orphans:
            logger.warning(f"run {orphan.info.run_id} of this config was left running by a process that is gone "
                           "(killed or crashed): marked KILLED")
        try:
            writable_folder(work_dir, "the work folder (TORCHYARD_WORK_DIR)")
            if config.model_fn:  # fail now, not after training
                if Path(config.model_fn).expanduser().is_dir():
                    raise TorchyardError(f"model_fn {config.model_fn} is a folder; give the model file's name, e.g. "
                                         f"{Path(config.model_fn) / 'model.pth'}")
                writable_folder(Path(config.model_fn).expanduser().resolve().parent, "the model_fn folder")
            collect = collect_task.with_options(retries=config.data.read_retries,
                                                retry_delay_seconds=config.data.retry_delay_seconds)
            snapshot = collect(config.data, config.image, run_id, work_dir)
            if config.promote.skip_unchanged and config.export.register_model:
                champion = unchanged_since_champion(config.model_name, snapshot.fingerprint, config.config_hash())
                if champion is not None:
                    return _no_new_data(config, champion, run_id, experiment_id, work_dir, logger)
            resumed = recovery.take_checkpoint(client, orphans, snapshot.fingerprint, work_root(),
                                               work_dir / "checkpoints", run_id)
            if resumed:
                logger.info(f"same data and config as the killed run {resumed}: training resumes from its checkpoint")
            validated, splits, prepared = prepare(config, snapshot, run_id)
            primary_metric = config.promote.metric_for(validated.schema["task"])
            baseline = baseline_task(validated, splits, prepared, config.baseline, config.seed, run_id)
            trained = train_task(prepared, config.model, config.train, config.seed, run_id, work_dir / "checkpoints")
            metrics = evaluate_task(prepared, trained, run_id, baseline, primary_metric)
            run_info = {"run_id": run_id, "experiment": config.experiment_name, "flow_run_id": run_key,
                        "data_fingerprint": snapshot.fingerprint, "config": config.model_dump(mode="json")}
            exported = export_task(prepared, trained, config.export.tolerance, run_id, run_info, metrics)
            model_path = Path(exported.bundle)
            if config.model_fn:
                model_path = _publish(exported.bundle, config.model_fn)
                logger.info(f"model file written to {model_path} (and {model_path.with_suffix('.onnx').name} "
                            "beside it)")
            version, promotion = None, None
            if config.export.register_model:
                version = register_task(exported, config.model_name, metrics, run_id, snapshot.fingerprint,
                                        config.config_hash())
                promotion = promote_task(prepared, metrics, primary_metric, config.promote.min_improvement,
                                         config.model_name, version, run_id)
        except BaseException as exc:
            logger.error(f"train-flow failed: {tracking.record_failure(run_id, exc)}")
            raise

    shutil.rmtree(work_dir, ignore_errors=True)  # kept on failure so that a retry resumes from the checkpoint
    return {"run_id": run_id, "experiment_id": experiment_id, "metrics": metrics, "model_name": config.model_name,
            "model_version": version, "model_file": str(model_path) if config.model_fn else None,
            "promotion": promotion, "skipped": False, "baseline": baseline, "primary_metric": primary_metric}


def _no_new_data(config: RunConfig, champion, run_id: str, experiment_id: str, work_dir: Path, logger) -> dict:
    """A retraining run whose data and config equal the champion's: recorded, nothing trained."""
    reason = (f"no new data: the data fingerprint and config hash equal those of champion version "
              f"{champion.version}; nothing trained")
    tracking.set_tags(run_id, {"promotion.decision": "skipped", "promotion.reason": reason,
                               "promotion.champion_version": str(champion.version)})
    logger.info(reason)
    create_markdown_artifact(key="promotion", markdown=f"# {config.model_name}: skipped\n\n{reason}.\n",
                             description="champion/challenger decision of this train-flow run")
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"run_id": run_id, "experiment_id": experiment_id, "metrics": {}, "model_name": config.model_name,
            "model_version": None, "model_file": None, "promotion": None, "skipped": True, "reason": reason}


def writable_folder(folder: Path, what: str) -> Path:
    """`folder`, created if needed; TorchyardError naming it when it cannot be written (read-only, full...)."""
    if folder.exists() and not folder.is_dir():
        raise TorchyardError(f"cannot write to {what} {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".torchyard-write-check-"):
            pass
    except OSError as exc:
        raise TorchyardError(f"cannot write to {what} {folder}: {exc.strerror or exc}") from None
    return folder


def _publish(bundle: Path, model_fn: str) -> Path:
    target = Path(model_fn).expanduser().resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, target)
        shutil.copyfile(Path(bundle).with_suffix(".onnx"), target.with_suffix(".onnx"))
    except OSError as exc:
        raise TorchyardError(f"cannot write the model file {target}: {exc.strerror or exc}") from None
    return target


def _run_tags(config: RunConfig, run_key: str) -> dict:
    tags = {"prefect.flow_run_id": run_key,
            "torchyard.config_hash": config.config_hash(),
            "torchyard.data_type": config.data.data_type}
    if (ui := PREFECT_UI_URL.value()) and flow_run.id:
        tags["prefect.flow_run_url"] = f"{ui.rstrip('/')}/runs/flow-run/{flow_run.id}"
    if commit := _git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tracking.REPO, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
