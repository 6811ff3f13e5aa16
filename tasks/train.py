"""train: build the network from config and run the trainer, with checkpoints, early stopping and per-epoch
metrics sent to MLflow from a background thread so that logging does not slow the loop."""
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models import save_network
from models.config import ModelConfig
from preprocessing import kinds
from preprocessing.errors import DataError
from preprocessing.steps import Prepared, Trained
from serving.bundle import ModelFileError
from serving.registry import resolve
from tasks import registry, tracking
from tasks.inputs import batch_source, input_size, load_transform, split_rows
from training import ddp, fit, lr_finder
from training.callbacks import Callback
from training.config import DEFAULT_LR, TrainerConfig
from training.device import apply_limits, select_device
from training.optim import cpu_threads_for
from training.trainer import Trainer


class MlflowEpochLogger(Callback):
    """Sends each epoch's metrics as one batch from a thread of its own, so that logging does not slow the loop;
    waits for them once, at the end of training. Not MLflow's asynchronous queue: ending the run joins that queue's
    thread, which polls in 1 s steps (0.8 s of a small run's end, bench/bench_startup.py); this thread leaves at once
    when the last batch is written."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchyard-epoch-metrics")
        self.pending = []
        self.seconds = 0.0  # time the training loop spent in logging calls

    def on_epoch_end(self, trainer, metrics):
        started = time.perf_counter()
        values = {k: v for k, v in metrics.items() if k != "epoch"}
        self.pending.append(self.sender.submit(tracking.log_metrics, self.run_id, values, step=metrics["epoch"]))
        self.seconds += time.perf_counter() - started

    def on_fit_end(self, trainer):
        started = time.perf_counter()
        self.sender.shutdown(wait=True)
        for sent in self.pending:
            sent.result()  # a failed batch fails the task here
        self.pending.clear()
        self.seconds += time.perf_counter() - started


def build_trainer(transform, model_config: ModelConfig, config: TrainerConfig, seed: int, device: torch.device,
                  callbacks: list[Callback], logger=None) -> tuple[Trainer, ModelConfig]:
    """training.fit.build_trainer for this run's prepared data; model.pretrained (a model file's path or a registry
    URI: models:/name/1, models:/name@champion) is fetched here and checked against the data's input size."""
    pretrained = None
    if reference := model_config.pretrained:
        try:
            pretrained = resolve(reference, registry)[0].network
        except ModelFileError as exc:
            raise DataError(f"model.pretrained {reference} could not be loaded: {exc}") from exc
        if pretrained is None:
            raise DataError(f"model.pretrained {reference} holds no network weights; give the .pth model file")
        if pretrained["input_size"] != input_size(transform):
            raise DataError(f"model.pretrained {reference} takes {pretrained['input_size']} input "
                            f"channel(s)/feature(s) but this data has {input_size(transform)}")
    target = transform.target
    trainer, built_from = fit.build_trainer(model_config, config, task=target.task, n_classes=target.n_classes,
                                            input_size=input_size(transform), seed=seed, device=device,
                                            callbacks=callbacks, pretrained=pretrained)
    if pretrained is not None and logger:
        logger.info(f"starting from {model_config.pretrained} ({built_from.type}, new head for "
                    f"{trainer.objective.output_size} outputs"
                    + (", feature layers frozen)" if model_config.freeze_features else ")"))
    return trainer, built_from


def train_distributed(prepared: Prepared, transform, model_config: ModelConfig, config: TrainerConfig, seed: int,
                      device: torch.device, run_id: str, checkpoint_dir: Path, logger) -> tuple[list[dict], Path]:
    """Run training/ddp.py under torchrun; rank 0's history is logged to MLflow here, after the fact."""
    if refusal := kinds.of(transform).distributed_refusal(prepared, bool(model_config.pretrained)):
        raise DataError(refusal)
    dist = config.distributed
    out = Path(checkpoint_dir)
    job = ddp.write_job(out, arrays=prepared.arrays, model=model_config, train=config, task=transform.target.task,
                        n_classes=transform.target.n_classes, input_size=input_size(transform), seed=seed,
                        device=device.type)
    command = ddp.torchrun_command(job, dist)
    logger.info(f"data-parallel training: {dist.nproc_per_node} process(es) x {dist.nnodes} node(s) "
                f"({'nccl' if device.type == 'cuda' else 'gloo'})")
    process = subprocess.Popen(command, cwd=tracking.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    tail = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line.startswith("epoch ") or "resumed from" in line:
            logger.info(line)
    if process.wait() != 0:
        raise RuntimeError(f"torchrun exited with {process.returncode}:\n" + "\n".join(tail))
    history = json.loads((out / "history.json").read_text())["history"]
    for metrics in history:
        tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])
    return history, out / "network.pt"


def find_lr(prepared: Prepared, transform, model_config: ModelConfig, config: TrainerConfig, seed: int,
            device: torch.device, run_id: str, work: Path, logger) -> float:
    """lr auto: the range test on a throw-away copy of the network; its curve is logged as train/lr_find.png.
    When no rate lowers the loss, the default rate is used and a warning says so."""
    trainer, _ = build_trainer(transform, model_config, config.model_copy(update={"lr": DEFAULT_LR}), seed, device, [])
    source = batch_source(prepared, transform, "train", config.batch_size)
    started = time.perf_counter()
    lr, finding, failure = lr_finder.pick_lr(trainer.model, trainer.objective, trainer.optimizer, source,
                                             torch.Generator().manual_seed(seed), device, config.lr_find_steps,
                                             DEFAULT_LR)
    if failure:
        logger.warning(f"lr auto: {failure}; training with the default lr {lr:g} instead")
        tracking.set_tags(run_id, {"train.lr_find": f"fell back to {lr:g}: {failure}"[:5000]})
        return lr
    plot = Path(work) / "lr_find.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    lr_finder.plot(finding, plot)
    tracking.configure().log_artifact(run_id, str(plot), "train")
    tracking.log_metrics(run_id, {"lr_find_seconds": time.perf_counter() - started,
                                  "lr_find_min_loss_lr": finding.min_loss_lr})
    logger.info(f"lr auto: range test over {len(finding.lrs)} steps, lowest loss at {finding.min_loss_lr:.2e}; "
                f"training with lr {finding.suggestion:.2e}")
    return lr


def resolve_config(prepared: Prepared, transform, model_config: ModelConfig, config: TrainerConfig, seed: int,
                   device: torch.device, run_id: str, work: Path, logger) -> tuple[ModelConfig, TrainerConfig]:
    """Both configs with the automatic choices made for this data: the task's defaults (epochs, schedule,
    patience; an MLP's numeric embeddings), the batch size from the train split's size, lr auto."""
    n_train = split_rows(prepared, transform, "train")
    if n_train < 2:
        raise DataError(f"the train split holds {n_train} row(s); training needs at least 2 (BatchNorm): add rows "
                        "or give split.train a larger share")
    task_name = transform.target.task
    model_config = model_config.for_data(task_name, n_train, kinds.of(transform).numeric_inputs(transform))
    resolved = config.resolved(n_train, task=task_name)
    if config.batch_size is None:
        logger.info(f"batch size {resolved.batch_size} chosen for {n_train} training rows "
                    f"({-(-n_train // resolved.batch_size)} steps per epoch)")
    elif resolved.batch_size != config.batch_size:
        logger.warning(f"batch_size {config.batch_size} is more than the {n_train} training rows; one batch of "
                       f"{n_train} per epoch instead")
    if config.lr == "auto":
        resolved.lr = find_lr(prepared, transform, model_config, resolved, seed, device, run_id, work, logger)
    return model_config, resolved


@task(name="train", cache_policy=NO_CACHE)
def train(prepared: Prepared, model_config: ModelConfig, config: TrainerConfig, seed: int, run_id: str,
          checkpoint_dir: Path, extra_callbacks: list[Callback] | tuple = ()) -> Trained:
    """`extra_callbacks`: the caller's own, run after the MLflow logger (a sweep trial's pruning)."""
    logger = get_run_logger()
    device, warning = select_device(config.gpu_id)
    if warning:
        logger.warning(warning)
    if limits := apply_limits(device, config.cpu_threads, config.gpu_memory_fraction):
        logger.info("resource limits: " + ", ".join(limits))
    transform = load_transform(prepared)
    asked = config
    model_config, config = resolve_config(prepared, transform, model_config, config, seed, device, run_id,
                                          checkpoint_dir, logger)
    tracking.log_params(run_id, "train", {**config.model_dump(), "seed": seed, "device": str(device),
                                          "batch_size_auto": asked.batch_size is None, "lr_auto": asked.lr == "auto"})
    if config.distributed.enabled:
        if extra_callbacks:
            logger.warning("the caller's training callbacks do not run under data-parallel training")
        tracking.log_params(run_id, "model", model_config.model_dump())  # pretrained networks are refused there
        started = time.perf_counter()
        history, path = train_distributed(prepared, transform, model_config, config, seed, device, run_id,
                                          checkpoint_dir, logger)
        tracking.log_metrics(run_id, {"train_seconds": time.perf_counter() - started, "epochs_run": len(history)})
        processes = config.distributed.nproc_per_node * config.distributed.nnodes
        return Trained(path, len(history), f"{device} x {processes} processes")
    mlflow_logger = MlflowEpochLogger(run_id)
    callbacks = fit.callbacks_for(config, checkpoint_dir, logger.info, extra=[mlflow_logger, *extra_callbacks])
    trainer, built_from = build_trainer(transform, model_config, config, seed, device, callbacks, logger)
    tracking.log_params(run_id, "model", built_from.model_dump())

    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and config.cpu_threads is None:  # a given train.cpu_threads was applied above
        threads = cpu_threads_for(trainer.model, config.batch_size, previous_threads)
        torch.set_num_threads(threads)
        tracking.log_params(run_id, "train", {"cpu_threads_chosen": threads})
    workers = kinds.of(transform).loader_workers(transform)
    started = time.perf_counter()
    try:
        history = trainer.fit(batch_source(prepared, transform, "train", config.batch_size, workers),
                              batch_source(prepared, transform, "val", config.batch_size))
    finally:
        torch.set_num_threads(previous_threads)  # in-process callers (sweeps, tests) keep their own setting
    seconds = time.perf_counter() - started
    tracking.log_metrics(run_id, {"train_seconds": seconds, "epochs_run": len(history),
                                  "mlflow_logging_seconds": mlflow_logger.seconds})
    logger.info(f"trained {len(history)} epoch(s) on {device} in {seconds:.1f}s "
                f"({mlflow_logger.seconds * 1000 / max(1, len(history)):.1f} ms/epoch in MLflow logging)")
    path = Path(checkpoint_dir) / "network.pt"  # beside this run's checkpoints: concurrent sweep trials differ
    path.parent.mkdir(parents=True, exist_ok=True)
    save_network(path, built_from, input_size(transform), trainer.objective.output_size, trainer.model)
    return Trained(path, len(history), str(device))
