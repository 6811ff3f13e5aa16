"""Data-parallel training with torch.distributed (DDP), one process per device, launched by torchrun:

    python -m torch.distributed.run --nproc_per_node 2 -m training.ddp JOB.json
    (multi-node: --nnodes 2 --node_rank 0 --master_addr host --master_port 29500, passed through by the train task)

JOB.json (written by tasks/train.py) names the prepared arrays, the model and trainer configs, the seed and the
output folder. Backend: gloo on the CPU, nccl on CUDA (each process takes cuda:LOCAL_RANK). Every process draws the
same shuffled order and trains on its stride of each global batch (training/data.py ShardedTensorData); DDP
averages the gradients, so a step sees the same rows as a single process would. The train loss is reduced across
processes; validation runs on the full val split in every process (identical weights give identical metrics, so
early stopping and LR schedules decide alike). Only rank 0 writes checkpoints, the network and the history; the
Prefect task that launched torchrun logs them to MLflow. Imports neither prefect nor mlflow.
"""
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models import save_network
from models.config import ModelConfig
from training import fit
from training.config import DistributedConfig, TrainerConfig
from training.data import ShardedTensorData, TensorData, TokenData
from training.trainer import Trainer


def write_job(out_dir, *, arrays, model: ModelConfig, train: TrainerConfig, task: str, n_classes: int,
              input_size: int, seed: int, device: str) -> Path:
    """The job file run() reads; checkpoints, network and history go to `out_dir` too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = {"arrays": str(arrays), "model": model.model_dump(), "train": train.model_dump(), "task": task,
           "n_classes": n_classes, "input_size": input_size, "seed": seed, "device": device,
           "checkpoint_dir": str(out), "out_dir": str(out)}
    (out / "job.json").write_text(json.dumps(job))
    return out / "job.json"


def torchrun_command(job_file, distributed: DistributedConfig) -> list[str]:
    """torchrun (python -m torch.distributed.run) with the configured process and node flags, running run()."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(distributed.nproc_per_node),
            "--nnodes", str(distributed.nnodes), "--node_rank", str(distributed.node_rank),
            "--master_addr", distributed.master_addr, "--master_port", str(distributed.master_port),
            "-m", "training.ddp", str(job_file)]


class DistributedTrainer(Trainer):
    def _train_epoch(self, data) -> float:
        local = super()._train_epoch(data)
        total = torch.tensor([local * data.local_rows, float(data.local_rows)], dtype=torch.float64,
                             device=self.device)
        dist.all_reduce(total)
        return (total[0] / total[1]).item()


def run(job: dict) -> list[dict]:
    """Train in this process as one rank of the job; returns the history (rank 0 also writes the outputs)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = job["device"] == "cuda" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        config = TrainerConfig(**job["train"]).for_task(job["task"])  # a job written by hand may leave them out
        arrays = np.load(job["arrays"])
        kind, val_class = ("ids", TokenData) if "train_ids" in arrays.files else ("features", TensorData)
        train = ShardedTensorData(torch.from_numpy(arrays[f"train_{kind}"]), torch.from_numpy(arrays["train_targets"]),
                                  config.batch_size, rank, world)
        val = val_class(torch.from_numpy(arrays[f"val_{kind}"]), torch.from_numpy(arrays["val_targets"]),
                        config.batch_size)
        log = (lambda line: print(line, flush=True)) if rank == 0 else None
        callbacks = fit.callbacks_for(config, job["checkpoint_dir"], log, write_checkpoints=rank == 0)
        wrap = partial(DistributedDataParallel, device_ids=[local_rank] if cuda else None)
        trainer, _ = fit.build_trainer(ModelConfig(**job["model"]), config, task=job["task"],
                                       n_classes=job["n_classes"], input_size=job["input_size"], seed=job["seed"],
                                       device=device, callbacks=callbacks, wrap=wrap,
                                       trainer_class=DistributedTrainer)
        trainer.progress_bar = False
        started = time.perf_counter()
        history = trainer.fit(train, val)
        seconds = time.perf_counter() - started
        if rank == 0:
            out = Path(job["out_dir"])
            save_network(out / "network.pt", ModelConfig(**job["model"]), job["input_size"],
                         trainer.objective.output_size, trainer.model.module)
            (out / "history.json").write_text(json.dumps({"history": history, "world_size": world,
                                                          "backend": dist.get_backend(), "fit_seconds": seconds}))
        # Every rank waits here until rank 0 has written its outputs: tearing gloo down while a peer is still
        # working aborted a rank with "terminate called without an active exception" (seen once in CI).
        dist.barrier()
        return history
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
    # The group is destroyed and rank 0's outputs are written: end without the interpreter's and C++ static
    # teardown, where a rank aborted now and then ("terminate called without an active exception", SIGABRT, seen
    # in CI with and without a barrier before destroy_process_group). An exception above still exits the usual way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
