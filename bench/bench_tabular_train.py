"""Benchmark: train-flow's training step versus a bare PyTorch loop, same model, data and epochs, in one process.

    .venv/bin/python bench/bench_tabular_train.py [--rows 200000] [--features 32] [--epochs 5]

Synthetic classification data (rows x features, 4 classes), 5 epochs on the CPU. Prints:
- the flow's training step (trainer.fit inside the train task: per-epoch validation, early stopping, checkpoint
  every epoch, per-epoch MLflow logging) over the bare loop (the same batches, Adam, and a val-loss pass per epoch,
  nothing else), as a ratio; target <= 1.10;
- the one-off overhead of the flow in seconds (everything the flow did that is not the training step: Prefect
  start-up, collect/validate/split/preprocess, evaluate, ONNX export and registration);
- the time the training loop spent in MLflow logging calls, per epoch.
The flow runs twice (the first run pays for starting Prefect's temporary server and creating the MLflow store), the
bare loop three times around them; each side's fastest run is compared (machines here are noisy).
"""
import os
import tempfile
import time
from pathlib import Path

import common

SCRATCH = Path(tempfile.mkdtemp(prefix="torchyard-bench-"))
os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{SCRATCH / 'mlflow.db'}", TORCHYARD_WORK_DIR=str(SCRATCH / "work"),
                  PREFECT_SERVER_ANALYTICS_ENABLED="false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from models import build_model  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from training.config import EarlyStoppingConfig, TrainerConfig  # noqa: E402

N_CLASSES = 4


def synthetic(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    weights = rng.normal(size=(features, N_CLASSES))
    y = (x @ weights + rng.normal(scale=2.0, size=(rows, N_CLASSES))).argmax(1)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["label"] = [f"c{v}" for v in y]
    return frame


def bare_loop(frame: pd.DataFrame, model_config: ModelConfig, config: TrainerConfig, seed: int) -> float:
    """nanoGPT-style: tensors in memory, randperm + slicing, Adam, one val-loss pass per epoch. Seconds."""
    x = frame.drop(columns="label").to_numpy(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = pd.factorize(frame["label"], sort=True)[0]
    n_train, n_val = int(len(x) * 0.7), int(len(x) * 0.15)
    xt, yt = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    xv, yv = torch.from_numpy(x[n_train:n_train + n_val]), torch.from_numpy(y[n_train:n_train + n_val])
    torch.manual_seed(seed)
    model = build_model(model_config, x.shape[1], N_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(config.n_epochs):
        model.train()
        order = torch.randperm(n_train)
        for start in range(0, n_train, config.batch_size):
            index = order[start:start + config.batch_size]
            loss = loss_fn(model(xt[index]), yt[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(xv), yv).item()
    return time.perf_counter() - started


def main() -> None:
    args = common.parser(__doc__, {"--rows": 200_000, "--features": 32, "--epochs": 5}).parse_args()

    frame = synthetic(args.rows, args.features)
    source = SCRATCH / "synthetic.parquet"
    frame.to_parquet(source, index=False)
    model_config = ModelConfig(type="mlp")
    # patience above the epoch count: both sides run every epoch
    config = TrainerConfig(n_epochs=args.epochs, batch_size=256,
                           early_stopping=EarlyStoppingConfig(patience=args.epochs + 1))
    print(f"{args.rows} rows x {args.features} features, {args.epochs} epochs, batch {config.batch_size}, "
          f"{torch.get_num_threads()} torch threads, CPU")

    from flows.config import ExportConfig
    from flows.train_flow import train_flow
    from preprocessing.config import DataConfig
    from tasks import tracking

    bare, steps, totals, logging_ms = [bare_loop(frame, model_config, config, seed=0)], [], [], []
    for _ in range(2):
        total, result = common.timed(train_flow, data=DataConfig(source=str(source), target="label"),
                                     model=model_config, train=config, export=ExportConfig(register_model=False),
                                     experiment="bench")
        totals.append(total)
        metrics = tracking.configure().get_run(result["run_id"]).data.metrics
        steps.append(metrics["train_seconds"])
        logging_ms.append(metrics["mlflow_logging_seconds"] * 1000 / args.epochs)
        bare.append(bare_loop(frame, model_config, config, seed=0))

    step, baseline = min(steps), min(bare)
    print(f"bare loop (s):           {', '.join(f'{b:.2f}' for b in bare)}; baseline {baseline:.2f}")
    print(f"flow training step (s):  {', '.join(f'{t:.2f}' for t in steps)}; best {step:.2f}")
    print(f"ratio flow/bare:         {step / baseline:.3f}  (target <= 1.10)")
    print(f"flow one-off overhead:   {totals[0] - steps[0]:.2f}s first run (cold), {totals[1] - steps[1]:.2f}s second "
          f"(whole flow {totals[0]:.2f}s, {totals[1]:.2f}s)")
    print(f"MLflow logging in loop:  {min(logging_ms):.1f} ms/epoch "
          f"({min(logging_ms) / (step * 1000 / args.epochs):.2%} of an epoch)")

if __name__ == "__main__":
    main()
