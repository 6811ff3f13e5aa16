"""What the benchmarks share: the repository on sys.path, a private store environment, argument parsing, timing,
scenario processes that answer with a JSON line, and medians of interleaved rounds."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flows.prefect_server import free_port  # noqa: E402,F401 - stdlib only; the benchmarks' loopback ports


def store_env(folder: Path, mlflow_db: str = "mlflow/mlflow.db", base=os.environ, **extra: str) -> dict:
    """`base` with its own MLflow store, Prefect home, work folder and image cache under `folder`."""
    return {**base, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / mlflow_db}", "PREFECT_HOME": str(folder / "prefect"),
            "TORCHYARD_WORK_DIR": str(folder / "work"), "TORCHYARD_CACHE_DIR": str(folder / "cache"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def parser(doc: str, options: dict | None = None) -> argparse.ArgumentParser:
    """A parser whose --help shows `doc` as written, with `options` {"--flag": default or (default, help)}: the
    type is the default's."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, value in (options or {}).items():
        default, help_ = value if isinstance(value, tuple) else (value, None)
        p.add_argument(flag, type=None if default is None else type(default), default=default, help=help_)
    return p


def timed(function, *args, repeat: int = 1, **kwargs) -> tuple[float, object]:
    """The fewest seconds of `repeat` calls of function(*args, **kwargs), and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - started)
    return best, result


def run_json(command: list[str], what: str, **kwargs) -> dict:
    """Run a scenario process and return the JSON object of its last stdout line that holds one; exit with the end
    of its stderr when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"')]
    if done.returncode != 0 or not lines:
        sys.exit(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def interleaved(names, rounds: int, rotate: bool = False):
    """(round, name) for every name in every round: a busy moment on the machine hits them all alike. `rotate`
    starts each round one name later."""
    names = list(names)
    for round_no in range(rounds):
        shift = round_no % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            yield round_no, name


def medians(runs: list[dict], keys) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in keys}
