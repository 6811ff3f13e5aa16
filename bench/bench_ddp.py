"""Data-parallel training on the CPU: 2 gloo processes under torchrun against one process, same data and steps.

    .venv/bin/python bench/bench_ddp.py [--rows 200000 --epochs 3 --nproc 2]

The single process uses torch's default threads (all cores); each DDP process is given cores / nproc threads.
Prints both wall times (torchrun's process start included, and without it: the fit time rank 0 reports) and
the ratio. On a 2-core machine DDP can only show its overhead; the point of DDP is more devices.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import REPO, free_port, parser, timed
from models import build_model
from models.config import ModelConfig
from training.config import DistributedConfig, TrainerConfig
from training.data import TensorData
from training.ddp import torchrun_command, write_job
from training.objectives import make_objective
from training.optim import make_trainer


def main(argv=None) -> int:
    args = parser(__doc__, {"--rows": 200_000, "--epochs": 3, "--nproc": 2}).parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="torchyard-bench-ddp-"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows + 10_000, 32)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) > 0).astype(np.int64)
    np.savez(work / "arrays.npz", train_features=x[:args.rows], train_targets=y[:args.rows],
             val_features=x[args.rows:], val_targets=y[args.rows:])
    model = ModelConfig(type="mlp", n_layers=4, hidden_size=256, batch_norm=False, dropout=0.0)
    train = TrainerConfig(n_epochs=args.epochs, batch_size=512, lr=1e-3, early_stopping={"enabled": False})

    objective = make_objective("classification", 2)
    torch.manual_seed(0)
    trainer = make_trainer(build_model(model, 32, objective.output_size), objective, train, 0, torch.device("cpu"), [])
    trainer.progress_bar = False
    single, _ = timed(trainer.fit, TensorData(torch.from_numpy(x[:args.rows]), torch.from_numpy(y[:args.rows]), 512),
                      TensorData(torch.from_numpy(x[args.rows:]), torch.from_numpy(y[args.rows:]), 512))

    job = write_job(work, arrays=work / "arrays.npz", model=model, train=train, task="classification", n_classes=2,
                    input_size=32, seed=0, device="cpu")
    threads = max(1, (os.cpu_count() or 1) // args.nproc)
    command = torchrun_command(job, DistributedConfig(nproc_per_node=args.nproc, master_port=free_port()))
    ddp, _ = timed(subprocess.run, command, cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    fit = json.loads((work / "history.json").read_text())["fit_seconds"]
    print(f"{args.rows:,} rows x 32, {args.epochs} epochs, MLP 4x256, batch 512, {os.cpu_count()} cores")
    print(f"single process      {single:7.2f} s")
    print(f"DDP {args.nproc} x gloo        {ddp:7.2f} s (torchrun and process start included)")
    print(f"DDP fit alone       {fit:7.2f} s (rank 0's training loop)")
    print(f"speed-up            {single / ddp:7.2f}x with start-up, {single / fit:.2f}x training loop only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
