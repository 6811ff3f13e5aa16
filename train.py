"""Classic CLI: flags -> one typed config -> the same train-flow that deployments run, in-process.

    python train.py --model_fn tmp.pth --gpu_id -1 --batch_size 256 --n_epochs 20 --n_layers 5
    python train.py --data iris.csv --target species --model_fn m.pth --n_epochs 30 --scheduler CosineAnnealingLR
    python train.py --config configs/wine.yaml --model_fn m.pth
    python train.py --data photos/ --data_type image --model_fn m.pth --n_epochs 10
    python train.py --data sample:reviews --data_type text --encoder lstm --model_fn t.pth

Start-up is kept short (`make bench-startup`): nothing heavy is imported before the flags are parsed, the Prefect API
is a running server when one answers (PREFECT_API_URL, or `make demo`'s) or else Prefect's temporary server started
before the imports so that both proceed at once, and the process ends with os._exit once every run, artifact and log
has been written and the temporary server has stopped (the interpreter's own teardown took seconds).
"""
import argparse
import contextlib
import logging
import os
import sys
import threading
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# flag -> (section, field); a flag left out keeps the config file's value or the default
FLAGS = {
    "data": ("data", "source"), "target": ("data", "target"), "task": ("data", "task"),
    "format": ("data", "format"), "data_type": ("data", "data_type"),
    "text_column": ("text", "text_column"), "max_len": ("text", "max_len"), "min_freq": ("text", "min_freq"),
    "max_vocab": ("text", "max_vocab"), "tokenizer": ("text", "tokenizer"),
    "subwords": ("text", "subwords"), "word_ngrams": ("text", "word_ngrams"), "encoder": ("model", "encoder"),
    "embedding_dim": ("model", "embedding_dim"), "encoding_errors": ("data", "encoding_errors"),
    "memory_budget_mb": ("data", "memory_budget_mb"), "runner": ("parallel", "runner"),
    "dask_address": ("parallel", "dask_address"), "dask_workers": ("parallel", "dask_workers"),
    "image_size": ("image", "image_size"), "channels": ("image", "channels"), "workers": ("image", "workers"),
    "pretrained": ("model", "pretrained"), "freeze_features": ("model", "freeze_features"),
    "model_type": ("model", "type"),
    "n_layers": ("model", "n_layers"), "hidden_size": ("model", "hidden_size"),
    "activation": ("model", "activation"), "dropout": ("model", "dropout"),
    "numeric_embedding": ("model", "numeric_embedding"),
    "n_epochs": ("train", "n_epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"), "gpu_id": ("train", "gpu_id"), "cpu_threads": ("train", "cpu_threads"),
    "gpu_memory_fraction": ("train", "gpu_memory_fraction"),
    "nproc_per_node": ("train.distributed", "nproc_per_node"), "nnodes": ("train.distributed", "nnodes"),
    "node_rank": ("train.distributed", "node_rank"), "master_addr": ("train.distributed", "master_addr"),
    "master_port": ("train.distributed", "master_port"),
    "scheduler": ("train.scheduler", "name"), "patience": ("train.early_stopping", "patience"),
    "scaler": ("preprocess", "scaler"), "missing": ("preprocess", "missing"),
    "model_name": ("export", "model_name"), "baseline_enabled": ("baseline", "enabled"),
    "experiment": (None, "experiment"), "seed": (None, "seed"), "model_fn": (None, "model_fn"),
}


def _rate(value: str):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a model through train-flow (Prefect) with MLflow tracking.")
    p.add_argument("--config", help="YAML file with sections data, split, preprocess, image, text, model, train, "
                   "export")
    p.add_argument("--model_fn", help="where to write the model file (.pth; the .onnx goes beside it)")
    p.add_argument("--data", help="path, http(s)/file URL, sklearn:wine|breast_cancer|diabetes|iris|digits or "
                   "sample:reviews")
    p.add_argument("--target", help="target column")
    p.add_argument("--task", choices=["auto", "classification", "regression"])
    p.add_argument("--format", choices=["auto", "csv", "parquet", "json"])
    p.add_argument("--data_type", choices=["tabular", "image", "text"], help="image: a folder with one sub-folder "
                   "per class, a manifest, a .zip/.tar.gz, or sklearn:digits; text: a table with a text column, or "
                   "sample:reviews")
    p.add_argument("--text_column", help="text: the column holding the texts (default 'text')")
    p.add_argument("--tokenizer", choices=["word", "char_ngram"], help="text: word boundaries or character n-grams")
    p.add_argument("--min_freq", type=int, help="text: tokens seen fewer times in the train split become <unk>")
    p.add_argument("--max_vocab", type=int, help="text: most frequent tokens kept")
    p.add_argument("--subwords", choices=["all", "oov", "none"], help="text: character n-gram pieces of every word "
                   "(all, fastText; the default for the mean encoder), of unknown words only (oov; the default for "
                   "the others), or none")
    p.add_argument("--word_ngrams", type=int, help="text, mean encoder: add n-grams of consecutive words up to n")
    p.add_argument("--max_len", type=int, help="text: tokens per text (default: 95th percentile of the train split)")
    p.add_argument("--encoder", choices=["mean", "cnn", "lstm", "gru", "transformer"], help="text model encoder")
    p.add_argument("--embedding_dim", type=int, help="text: token embedding width")
    p.add_argument("--encoding_errors", choices=["error", "replace"], help="bytes that are not UTF-8 in the data "
                   "file: stop with the line, or replace them and count")
    p.add_argument("--memory_budget_mb", type=int, help="tabular Parquet larger than memory: stream it in record "
                   "batches, holding about this many MiB of data at once")
    p.add_argument("--runner", choices=["threads", "dask"], help="per-file preprocessing (image decoding, text "
                   "cleaning): threads here, or Dask (prefect-dask)")
    p.add_argument("--dask_address", help="--runner dask: an existing scheduler (tcp://host:8786); default: a "
                   "LocalCluster")
    p.add_argument("--dask_workers", type=int, help="--runner dask: LocalCluster worker processes")
    p.add_argument("--image_size", type=int, help="side of the square images the model sees")
    p.add_argument("--channels", type=int, choices=[1, 3])
    p.add_argument("--workers", type=int, help="DataLoader worker processes for image augmentation")
    p.add_argument("--model_type", choices=["auto", "mlp", "cnn", "text"])
    p.add_argument("--pretrained", help="start from a torchyard model: a .pth file or models:/name/version")
    p.add_argument("--freeze_features", action="store_true", default=None, help="with --pretrained: train the head only")
    p.add_argument("--gpu_id", type=int, help="-1 for CPU, N for cuda:N")
    p.add_argument("--cpu_threads", type=int, help="cap torch's CPU threads")
    p.add_argument("--nproc_per_node", type=int, help="data-parallel training (DDP under torchrun): processes here")
    p.add_argument("--nnodes", type=int, help="DDP: machines in all")
    p.add_argument("--node_rank", type=int, help="DDP: this machine's rank")
    p.add_argument("--master_addr", help="DDP: rank 0's address")
    p.add_argument("--master_port", type=int, help="DDP: rank 0's port")
    p.add_argument("--gpu_memory_fraction", type=float, help="cap this process's share of the GPU memory (0-1]")
    p.add_argument("--batch_size", type=int, help="default: from the train split's size (rows/32 as a power of two, "
                   "16 to 256)")
    p.add_argument("--n_epochs", type=int, help="a cap (default 100, 200 for regression): early stopping ends "
                   "training before it")
    p.add_argument("--n_layers", type=int, help="linear layers in all (hidden blocks + output)")
    p.add_argument("--hidden_size", type=int)
    p.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "gelu", "leaky_relu"])
    p.add_argument("--dropout", type=float)
    p.add_argument("--numeric_embedding", choices=["auto", "none", "periodic"], help="MLP: periodic (PLR) "
                   "embeddings of numeric columns; auto (default): periodic for regressions of 1,000+ training rows")
    p.add_argument("--lr", type=_rate, help="learning rate, or 'auto' for a learning-rate range test (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--scheduler", help="auto (default: ReduceLROnPlateau for classification, 5-epoch warm-up + "
                   "cosine LambdaLR for regression), none, LambdaLR, StepLR, MultiStepLR, ExponentialLR, "
                   "CosineAnnealingLR, ReduceLROnPlateau")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 10, 30 for regression)")
    p.add_argument("--scaler", choices=["standard", "minmax", "robust", "none"])
    p.add_argument("--missing", choices=["impute", "drop_rows", "drop_columns"])
    p.add_argument("--model_name", help="registered model name")
    p.add_argument("--no_baseline", dest="baseline_enabled", action="store_const", const=False,
                   help="skip the scikit-learn baseline fitted beside the network")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--seed", type=int)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from flows.config import RunConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    for flag, (section, field) in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        node = values
        for key in (section.split(".") if section else []):
            node = node.setdefault(key, {})
        node[field] = value
    return RunConfig(**values)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task failure with its traceback; for bad input the one-sentence reason is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        from preprocessing.errors import user_facing

        if record.exc_info and record.exc_info[1] is not None and user_facing(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")]
    for logger in [logging.getLogger(), *loggers]:
        for handler in logger.handlers:
            handler.addFilter(_NoTracebackForUserErrors())


def main(argv=None, prefect_server=None, warm_up: bool = False) -> int:
    """Parse, build the config, run train-flow in this process and print the summary; returns the exit code.
    `prefect_server`: a flows.prefect_server.TemporaryServer started by cli(), waited for just before the flow.
    `warm_up`: load what the train and export steps load on first use on a background thread while the flow
    starts (see warm_up_in_background)."""
    from pydantic import ValidationError

    from preprocessing.errors import user_facing

    args = parse_args(argv)
    try:
        config = build_config(args)
    except ValidationError as exc:
        print(f"error: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if user_facing(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise

    from flows.train_flow import train_flow

    trace("imports done")
    if warm_up:
        warm_up_in_background()
    quiet_user_errors()
    settings = contextlib.nullcontext()
    if prefect_server is not None:
        try:
            prefect_server.wait()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        trace("server ready")
        # no heartbeats to a server that lives as long as this process: nothing watches them there, and joining the
        # heartbeat thread (it sleeps in 1 s steps) held up the end of every flow run by up to a second
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        settings = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    try:
        with settings:
            result = train_flow(**config.flow_parameters())
    except Exception as exc:
        reason = user_facing(exc)
        if reason is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if result.get("skipped"):
        print(f"done: {result['reason']}")
        return 0
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"done: {metrics}")
    print_baseline(result)
    if result["model_file"]:
        print(f"model file: {result['model_file']}")
    if result["model_version"]:
        promotion = result["promotion"]
        print(f"registered: models:/{result['model_name']}/{result['model_version']} ({promotion['decision']}: "
              f"{promotion['reason']})")
    print(f"MLflow run: {result['run_id']} (make mlflow-ui, then http://127.0.0.1:5000)")
    trace("flow done")
    return 0


def warm_up_in_background() -> threading.Thread:
    """Loads, on a daemon thread, what later steps would load on their first use, while the flow's first steps
    mostly wait (Prefect API calls, the MLflow database, the baseline's OpenMP threads): torch._dynamo, which the
    first optimizer imports (training/optim.py's import_dynamo), and the installed-package map behind log_model's
    requirement check (tasks/export.py). A step that gets there first waits on Python's import lock or computes the
    same itself; nothing depends on the thread finishing."""
    def run():
        from tasks.export import warm_up_requirement_check
        from training.optim import import_dynamo

        for step in (import_dynamo, warm_up_requirement_check):
            try:
                step()
            except Exception:  # noqa: BLE001 - the step that needs it raises it where it matters
                pass

    thread = threading.Thread(target=run, name="torchyard-warm-up", daemon=True)
    thread.start()
    return thread


def print_baseline(result: dict) -> None:
    """The baseline's test metrics beside the network's, and a warning line when the network loses."""
    baseline = result.get("baseline")
    if not baseline:
        return
    values = ", ".join(f"{k.removeprefix('baseline_')} {v:.4f}" for k, v in baseline["metrics"].items())
    print(f"baseline ({baseline['model']}, {baseline['seconds']:.1f}s): {values}")
    from training.baseline import margins

    primary = result["primary_metric"]
    margin = margins(result["metrics"], baseline["metrics"]).get(f"margin_{primary}")
    if margin is None:
        return
    ours, theirs = result["metrics"][primary], baseline["metrics"][f"baseline_{primary}"]
    if margin < 0:
        print(f"warning: the network is worse than the baseline on {primary} ({ours:.4f} against {theirs:.4f})")
    else:
        print(f"the network is at least as good as the baseline on {primary} ({ours:.4f} against {theirs:.4f})")


def cli(argv=None) -> None:
    """The command line: main() with a Prefect API chosen before the heavy imports, then a flushed, immediate exit.
    Only for `python train.py`: os._exit ends the process, so library code and tests call main() instead."""
    trace("start")
    parse_args(argv)  # --help and flag errors exit here, before anything is started
    # idle OpenMP threads sleep instead of spinning: torch's and scikit-learn's thread pools share 2 cores here, and
    # spinning ones slowed the baseline's HistGradientBoosting fit 3-10x (bench/bench_startup.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from flows import prefect_server

    api_url, server, source = prefect_server.connect()
    print(f"Prefect API: {api_url} ({source})", file=sys.stderr, flush=True)
    code = 1
    try:
        code = main(argv, prefect_server=server, warm_up=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BaseException:  # a bug: its traceback, as Python would print it
        import traceback

        traceback.print_exc()
    finally:
        code = finish(server, code)
    os._exit(code)


def finish(server, code: int) -> int:
    """Everything this process started or queued, written and stopped: MLflow's asynchronous logging, Prefect's
    log and event queues (task-run states travel as events), DataLoader workers, the temporary server, the output
    streams. After this, the interpreter's teardown (seconds of module and thread clean-up) has nothing to do."""
    trace("flush")
    steps = []
    if "mlflow" in sys.modules:
        steps.append(lambda: sys.modules["mlflow"].flush_async_logging())
    if "prefect.logging.handlers" in sys.modules:
        steps.append(lambda: sys.modules["prefect.logging.handlers"].APILogWorker.drain_all(timeout=60))
    if "prefect.events.worker" in sys.modules:
        steps.append(lambda: sys.modules["prefect.events.worker"].EventsWorker.drain_all(timeout=60))
    if "multiprocessing" in sys.modules:
        steps.append(_stop_children)
    if server is not None:
        steps.append(server.stop)
    for step in steps:
        try:
            step()
        except Exception as exc:  # a failed flush is reported; it must not hide the run's own exit code
            print(f"warning: at exit: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = code or 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    trace("exit")
    return code


def trace(step: str) -> None:
    """With TORCHYARD_STARTUP_TRACE=1: when `step` was reached (wall clock), for bench/bench_startup.py's table."""
    if os.environ.get("TORCHYARD_STARTUP_TRACE"):
        print(f"[startup-trace] {step} {time.time():.3f}", file=sys.stderr, flush=True)


def _stop_children() -> None:
    """multiprocessing's own at-exit step (persistent DataLoader workers, a Dask LocalCluster's nannies)."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(10)


if __name__ == "__main__":
    cli()
