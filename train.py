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

def parse_args(argv=None) -> argparse.Namespace:
    from flows.flags import add_setting_flags

    p = argparse.ArgumentParser(usage="train.py [--config FILE] [--model_fn PATH] [--<section>.<field> VALUE | "
                                "--<field> VALUE ...]",
                                description="Train a model through train-flow (Prefect) with MLflow tracking. "
                                "Every setting of the config sections is a flag: --<section>.<field>, or the "
                                "field's name alone where only one section has it.")
    p.add_argument("--config", help="YAML file with sections data, split, preprocess, image, text, model, train, "
                   "export, promote, parallel, baseline; flags override it")
    p.add_argument("--model_fn", help="where to write the model file (.pth; the .onnx goes beside it)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the dataset's name)")
    p.add_argument("--seed", type=int, help="split, initialisation and baseline seed (default 42)")
    p.add_argument("--no_baseline", dest="baseline.enabled", action="store_const", const=False,
                   help="skip the scikit-learn baseline fitted beside the network")
    add_setting_flags(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from flows import flags
    from flows.config import RunConfig, load_config_file

    values = flags.merge(load_config_file(args.config) if args.config else {}, flags.given(args))
    for name in ("experiment", "seed", "model_fn"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return RunConfig(**values)


def _no_traceback_for_user_errors(record: logging.LogRecord) -> bool:
    """Prefect logs every task failure with its traceback; for bad input the one-sentence reason is enough."""
    from preprocessing.errors import user_facing

    if record.exc_info and record.exc_info[1] is not None and user_facing(record.exc_info[1]):
        record.exc_info, record.exc_text = None, None
    return True


def quiet_user_errors() -> None:
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")]
    for logger in [logging.getLogger(), *loggers]:
        for handler in logger.handlers:
            handler.addFilter(_no_traceback_for_user_errors)


def main(argv=None, prefect_server=None, warm_up: bool = False, private_api: bool = False) -> int:
    """Parse, build the config, run train-flow in this process and print the summary; returns the exit code.
    `prefect_server`: a flows.prefect_server.TemporaryServer started by cli(), waited for just before the flow.
    `private_api`: the Prefect API is a temporary server that lives only as long as this process or the warm
    process it was forked from (implied by `prefect_server`).
    `warm_up`: load what the train and export steps load on first use on a background thread while the flow
    starts; nothing depends on the thread finishing."""
    from pydantic import ValidationError

    from preprocessing.errors import user_facing

    try:
        config = build_config(parse_args(argv))
        problem = model_fn_problem(config.model_fn)  # the flag or the config file's model_fn
    except ValidationError as exc:
        problem = f"invalid configuration:\n{exc}"
    except Exception as exc:
        if not user_facing(exc):
            raise
        problem = exc
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from flows.train_flow import train_flow

    trace("imports done")
    if warm_up:  # while the flow's first steps mostly wait (Prefect API calls, the MLflow database); a step that
        # gets there first waits on Python's import lock or computes the same itself
        threading.Thread(target=load_first_use, name="torchyard-warm-up", daemon=True).start()
    quiet_user_errors()
    settings = contextlib.nullcontext()
    if prefect_server is not None:
        try:
            prefect_server.wait()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        trace("server ready")
    if prefect_server is not None or private_api:
        # no heartbeats to a server that lives as long as this process: nothing watches them there, and joining the
        # heartbeat thread (it sleeps in 1 s steps) held up the end of every flow run by up to a second
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        settings = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    try:
        with settings:
            result = train_flow(**config.flow_parameters())
    except Exception as exc:
        if (reason := user_facing(exc)) is None:
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
    from tasks.tracking import ui_url  # loaded with the flow already

    print(f"MLflow run: {result['run_id']} (make mlflow-ui, then {ui_url(result['experiment_id'], result['run_id'])})")
    print(f"all runs, key metrics as columns: {ui_url(result['experiment_id'])}")
    trace("flow done")
    return 0


def model_fn_problem(model_fn: str | None) -> str | None:
    """Why the model file cannot be written at `model_fn` (an existing folder, or a name ending in a slash), found
    before anything runs rather than after training; None when it can be tried."""
    if not model_fn:
        return None
    from pathlib import Path

    path = Path(model_fn).expanduser()
    if model_fn.endswith(("/", os.sep)) or path.is_dir():
        return (f"--model_fn {model_fn} is a folder; give the model file's name, e.g. "
                f"--model_fn {path / 'model.pth'} (the .onnx is written beside it)")
    if path.with_suffix(".onnx").is_dir():
        return (f"--model_fn {model_fn}: the .onnx written beside it, {path.with_suffix('.onnx')}, is an existing "
                "folder; choose another name")
    return None


def load_first_use() -> None:
    """What later steps load on their first use: MLflow's SQL store (tasks/tracking.py's warm_up_store),
    torch._dynamo, which the first optimizer imports (training/optim.py's import_dynamo), and the installed-package
    map behind log_model's requirement check (tasks/export.py). Best effort: a step that fails raises again where
    it matters."""
    from tasks.export import warm_up_requirement_check
    from tasks.tracking import warm_up_store
    from training.optim import import_dynamo

    for step in (warm_up_store, import_dynamo, warm_up_requirement_check):
        with contextlib.suppress(Exception):
            step()


def load_ahead() -> None:
    """Everything a run imports or loads on first use, for a warm process (flows/warm_process.py) before it forks:
    the flow and its tasks, load_first_use()'s steps, scikit-learn's baseline, metrics and sample datasets,
    matplotlib's Agg backend."""
    import flows.train_flow  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from training.evaluation import pyplot

    pyplot()
    load_first_use()


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
    verdict = "warning: the network is worse than" if margin < 0 else "the network is at least as good as"
    print(f"{verdict} the baseline on {primary} ({ours:.4f} against {theirs:.4f})")


def cli(argv=None) -> None:
    """The command line: a warm process's run when one is ready for this environment (flows/warm_process.py), else
    main() with a Prefect API chosen before the heavy imports, then a flushed, immediate exit, and a warm process
    left for the next run. Only for `python train.py`: os._exit ends the process, so library code and tests call
    main() instead."""
    trace("start")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)  # --help and flag errors exit here, before anything is started
    if problem := model_fn_problem(args.model_fn):
        print(f"error: {problem}", file=sys.stderr, flush=True)
        os._exit(2)
    from flows import prefect_server, warm_process

    environment = dict(os.environ)  # before connect() adds the Prefect API: what a warm process is matched on
    if (code := warm_process.run(argv, environment)) is not None:
        os._exit(code)
    api_url, server, source = prefect_server.connect()
    print(f"Prefect API: {api_url} ({source})", file=sys.stderr, flush=True)
    code = run_and_finish(argv, server, warm_up=True)
    if warm_process.start(environment):
        print(f"a warm process takes the next runs in this environment (it exits after "
              f"{warm_process.idle_seconds(environment) / 60:g} idle minutes; TORCHYARD_WARM_PROCESS=0 turns it off, "
              "make stop stops it)", file=sys.stderr, flush=True)
    os._exit(code)


def run_and_finish(argv: list[str], server, warm_up: bool = False, private_api: bool = False) -> int:
    """main() with an interrupt or a bug turned into an exit code, then finish(): what a cold process and a warm
    process's child both run."""
    code = 1
    try:
        code = main(argv, prefect_server=server, warm_up=warm_up, private_api=private_api)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # whoever read the summary left (`train.py ... | head -3`); it is printed after the run
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except BaseException:  # a bug: its traceback, as Python would print it
        import traceback

        traceback.print_exc()
    finally:
        code = finish(server, code)
    return code


def finish(server, code: int) -> int:
    """Everything this process started or queued, written and stopped: MLflow's asynchronous logging, Prefect's
    log and event queues (task-run states travel as events), DataLoader workers, the temporary server, the output
    streams. After this, the interpreter's teardown (seconds of module and thread clean-up) has nothing to do."""
    trace("flush")
    loaded = sys.modules
    steps = [step for module, step in (
        ("mlflow", lambda: loaded["mlflow"].flush_async_logging()),
        ("prefect.logging.handlers", lambda: loaded["prefect.logging.handlers"].APILogWorker.drain_all(timeout=60)),
        ("prefect.events.worker", lambda: loaded["prefect.events.worker"].EventsWorker.drain_all(timeout=60)),
        ("multiprocessing", _stop_children)) if module in loaded]
    for step in steps + ([server.stop] if server is not None else []):
        try:
            step()
        except Exception as exc:  # a failed flush is reported; it must not hide the run's own exit code
            first_line = (str(exc).strip().splitlines() or [""])[0]
            print(f"warning: at exit: {type(exc).__name__}: {first_line}", file=sys.stderr)
            code = code or 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
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
