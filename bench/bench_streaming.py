"""Benchmark: peak memory of train-flow on a Parquet table 3x larger than data.memory_budget_mb.

    .venv/bin/python bench/bench_streaming.py [--budget-mb 256] [--factor 3] [--features 32] [--epochs 1]

Writes a synthetic classification table (float64 features, text labels) whose in-memory size is `factor` x the
budget, then runs the whole train-flow (collect -> ... -> export; no registration) in a fresh process per scenario
and reads that process's peak resident memory (ru_maxrss):
- floor:    the streamed path on a table of 20,000 rows: what the process costs whatever the data (Python, torch,
            pandas, pyarrow, Prefect, MLflow, ONNX export);
- streamed: data.memory_budget_mb = budget, on the big table;
- in memory: the same table read whole (the default path).
It prints each peak, the streamed peak above the floor as a share of the budget (target <= 1.0: the data held at
once stays within the budget), and in-memory over streamed. Memory, unlike time, is not noisy here; the times are
printed for information.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

from common import REPO, parser, peak_rss_bytes, run_json, timed

N_CLASSES = 4


def write_table(path: Path, rows: int, features: int, seed: int = 0, chunk: int = 250_000) -> int:
    """A Parquet file of `rows` rows written in chunks (this process never holds it whole); its in-memory bytes."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(features, N_CLASSES))
    writer, size = None, 0
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = rng.normal(size=(n, features))
        y = (x @ weights + rng.normal(scale=2.0, size=(n, N_CLASSES))).argmax(1)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
        frame["label"] = np.array(["c0", "c1", "c2", "c3"], dtype=object)[y]
        size += int(frame.memory_usage(deep=True).sum())
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    writer.close()
    return size


def child(args) -> None:
    """One scenario in this (fresh) process; prints a JSON line with its peak RSS."""
    scratch = Path(args.scratch)
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{scratch / f'mlflow-{args.child}.db'}",
                      TORCHYARD_WORK_DIR=str(scratch / f"work-{args.child}"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from flows.config import ExportConfig
    from flows.train_flow import train_flow
    from models.config import ModelConfig
    from preprocessing.config import DataConfig
    from training.config import EarlyStoppingConfig, TrainerConfig

    budget = None if args.child == "memory" else args.budget_mb
    seconds, result = timed(train_flow, data=DataConfig(source=args.data, target="label", memory_budget_mb=budget),
                            model=ModelConfig(type="mlp"),
                            train=TrainerConfig(n_epochs=args.epochs, batch_size=1024,
                                                early_stopping=EarlyStoppingConfig(patience=args.epochs + 1)),
                            export=ExportConfig(register_model=False), experiment=f"bench-{args.child}")
    print(json.dumps({"scenario": args.child, "peak_bytes": peak_rss_bytes(), "seconds": seconds,
                      "metrics": result["metrics"]}))


def run_child(name: str, data: Path, scratch: Path, args) -> dict:
    return run_json([sys.executable, __file__, "--child", name, "--data", str(data), "--scratch", str(scratch),
                     "--budget-mb", str(args.budget_mb), "--epochs", str(args.epochs)], f"scenario {name}", cwd=REPO)


def main() -> None:
    args = parser(__doc__, {"--budget-mb": 256, "--factor": 3.0, "--features": 32, "--epochs": 1, "--child": None,
                            "--data": None, "--scratch": None}).parse_args()
    if args.child:
        return child(args)

    scratch = Path(tempfile.mkdtemp(prefix="torchyard-bench-stream-"))
    row_bytes = write_table(scratch / "probe.parquet", 10_000, args.features) / 10_000  # pandas bytes per row
    rows = int(args.factor * args.budget_mb * 2**20 / row_bytes)
    big, small = scratch / "big.parquet", scratch / "small.parquet"
    size = write_table(big, rows, args.features)
    write_table(small, 20_000, args.features, seed=1)
    mib = 2**20
    print(f"table: {rows} rows x {args.features} float64 features + text label = {size / mib:.0f} MiB in pandas "
          f"({size / (args.budget_mb * mib):.2f}x the budget of {args.budget_mb} MiB), "
          f"{big.stat().st_size / mib:.0f} MiB of Parquet; {args.epochs} epoch(s), batch 1024, CPU")
    floor = run_child("floor", small, scratch, args)
    streamed = run_child("streamed", big, scratch, args)
    memory = run_child("memory", big, scratch, args)
    for result in (floor, streamed, memory):
        accuracy = result["metrics"].get("test_accuracy", float("nan"))
        print(f"{result['scenario']:>9}: peak RSS {result['peak_bytes'] / mib:7.0f} MiB  "
              f"({result['seconds']:.0f} s, test_accuracy {accuracy:.3f})")
    above = (streamed["peak_bytes"] - floor["peak_bytes"]) / (args.budget_mb * mib)
    print(f"streamed peak above the floor / budget: {above:.2f}  (target <= 1.0)")
    print(f"in-memory peak / streamed peak:         {memory['peak_bytes'] / streamed['peak_bytes']:.2f}")


if __name__ == "__main__":
    main()
