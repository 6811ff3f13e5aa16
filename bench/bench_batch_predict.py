"""Batch prediction (issue 16): rows/s and peak memory on a large Parquet file, chunked predict.py against what a
user would do instead, loading the registered model with mlflow.pyfunc.load_model and predicting the whole frame.

    python bench/bench_batch_predict.py                       # 5,000,000 rows (623 MB of Parquet), 3 rounds, ~7 min
    python bench/bench_batch_predict.py --rows 500000 --rounds 1   # a quick run
    python bench/bench_batch_predict.py --chunk_rows 100000 --keep /tmp/bench-batch

Set-up, in a temporary folder with its own MLflow store, Prefect home and work folder: train.py trains and
registers the wine MLP (sklearn:wine, 5 epochs) and writes its model file; the input is --rows rows with the wine
feature schema (13 float columns: wine rows drawn with replacement plus 5% Gaussian noise, and the target column,
which prediction ignores), written in row groups of 100,000 rows.

Each scenario runs in a fresh process (its peak RSS is the process's ru_maxrss, nothing left from the others) and
writes its predictions to a Parquet file; the scenarios run interleaved, --rounds times, and their medians are
compared:
- chunked:  predict.py's main() (serving/batch.py), --chunk_rows rows at a time;
- whole:    predict.py before streaming: read the whole file (read_table), Predictor.predict, write;
- pyfunc:   mlflow.pyfunc.load_model("models:/wine-mlp/1"), pd.read_parquet of the whole file, predict, write.
rows/s counts from the scenario's start (model load included) to the written output; the interpreter's start and
the imports (torch, pandas, MLflow: ~5 s, the same for every scenario) are not in it but in the process time shown.
Peak RSS includes those imports (~0.4 GB). Prints a table and the ratios.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, interleaved, medians, parser, peak_rss_bytes, run_json, store_env

SCENARIOS = ("chunked", "whole", "pyfunc")
ROW_GROUP = 100_000


def environment(work: Path) -> dict:
    return store_env(work, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def train(work: Path) -> Path:
    model = work / "wine.pth"
    if not model.exists():
        done = subprocess.run([sys.executable, "train.py", "--data", "sklearn:wine", "--n_epochs", "5",
                               "--model_name", "wine-mlp", "--model_fn", str(model)], cwd=REPO,
                              env=environment(work), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            sys.exit(f"train.py failed:\n{done.stderr[-3000:]}")
    return model


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` rows with the wine feature schema, in row groups (the generator never holds the whole table)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocessing.sources import load_sample

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    wine = load_sample("wine")
    features = [c for c in wine.columns if c != "target"]
    values, scale = wine[features].to_numpy(), wine[features].std().to_numpy()
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - start)
        picked = rng.integers(0, len(wine), n)
        block = values[picked] + rng.normal(size=(n, len(features))) * scale * 0.05
        table = pa.table({**{c: block[:, j] for j, c in enumerate(features)},
                          "target": wine["target"].to_numpy()[picked].astype(str)})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


# ---------------------------------------------------------------- one scenario, in its own process

def scenario(name: str, model: Path, source: Path, output: Path, chunk_rows: int, uri: str) -> dict:
    import mlflow.pyfunc  # imports before the clock starts: the same few seconds for every scenario
    import pandas as pd
    import pyarrow.parquet as pq

    import predict
    from preprocessing.sources import read_table
    from serving.inference import Predictor

    started = time.perf_counter()
    if name == "chunked":
        code = predict.main(["--model_fn", str(model), "--input", str(source), "--output", str(output),
                             "--chunk_rows", str(chunk_rows)])
        assert code == 0
    elif name == "whole":
        predictions = Predictor.load(model).predict(read_table(str(source)), str(source))
        predict.write(predictions, str(output))
    else:
        loaded = mlflow.pyfunc.load_model(uri)
        predictions = loaded.predict(pd.read_parquet(source))
        predictions.to_parquet(output, index=False)
    seconds = time.perf_counter() - started
    rows = pq.ParquetFile(output).metadata.num_rows
    return {"scenario": name, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_mb": peak_rss_bytes() / 2**20}


def run_scenario(name: str, args, work: Path, model: Path, source: Path) -> dict:
    output = work / f"out-{name}.parquet"
    command = [sys.executable, __file__, "--scenario", name, "--model", str(model), "--input", str(source),
               "--output", str(output), "--chunk_rows", str(args.chunk_rows)]
    started = time.perf_counter()
    result = run_json(command, name, cwd=REPO, env=environment(work), timeout=3600)
    result["process_seconds"] = time.perf_counter() - started
    output.unlink(missing_ok=True)
    return result


def main(argv=None) -> int:
    p = parser(__doc__, {"--rows": 5_000_000, "--chunk_rows": 50_000,
                         "--keep": (None, "work folder to keep (and reuse: the model and the input are made once)"),
                         "--rounds": (3, "interleaved rounds; medians are compared")})
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)  # one scenario, in this process
    for hidden in ("--model", "--input", "--output"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scenario:
        print(json.dumps(scenario(args.scenario, Path(args.model), Path(args.input), Path(args.output),
                                  args.chunk_rows, "models:/wine-mlp/1")))
        return 0

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="torchyard-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    model = train(work)
    source = work / f"wine-{args.rows}.parquet"
    make_input(source, args.rows)
    print(f"set-up {time.perf_counter() - tick:.0f} s: {source} ({args.rows:,} rows x 14 columns, "
          f"{source.stat().st_size / 2**20:.0f} MB), model {model.name} registered as models:/wine-mlp/1; "
          f"chunk_rows {args.chunk_rows:,}; {os.cpu_count()} CPUs", flush=True)
    runs = {name: [] for name in args.only}
    for round_no, name in interleaved(args.only, args.rounds):
        r = run_scenario(name, args, work, model, source)
        runs[name].append(r)
        print(f"  round {round_no + 1} {name:8s} {r['seconds']:7.1f} s  {r['rows_per_s']:>10,.0f} rows/s  "
              f"peak RSS {r['peak_rss_mb']:6,.0f} MB  (process {r['process_seconds']:.1f} s)", flush=True)
    results = {name: medians(found, ("rows", "seconds", "rows_per_s", "peak_rss_mb", "process_seconds"))
               for name, found in runs.items()}
    print(f"medians of {args.rounds} round(s):")
    for name, r in results.items():
        print(f"  {name:8s} {r['rows']:>10,.0f} rows  {r['seconds']:7.1f} s  {r['rows_per_s']:>10,.0f} rows/s  "
              f"peak RSS {r['peak_rss_mb']:6,.0f} MB  (process {r['process_seconds']:.1f} s)")
    chunked = results.get("chunked")
    for other in ("pyfunc", "whole"):
        if chunked and other in results:
            o = results[other]
            print(f"chunked predict.py vs {other}: {chunked['rows_per_s'] / o['rows_per_s']:.2f}x the rows/s, "
                  f"{chunked['peak_rss_mb'] / o['peak_rss_mb']:.2f}x the peak RSS "
                  f"({o['peak_rss_mb'] / chunked['peak_rss_mb']:.1f}x less memory)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
