"""Fast start (issue 18): a whole `train.py --data sklearn:breast_cancer --n_epochs 30` process against a
scikit-learn script with HistGradientBoosting on the same data, in the same run, 3 interleaved rounds, medians.

    python bench/bench_startup.py                      # train.py as a user runs it again and again (forked from the
                                                       # warm process the first run left), train.py cold (a temporary
                                                       # Prefect server), cold with a Prefect server already running,
                                                       # and the scikit-learn script
    python bench/bench_startup.py --compare ../old     # also another checkout's train.py, e.g. the previous commit
    python bench/bench_startup.py --rounds 5

Every variant gets its own MLflow store, Prefect home and work folder in a temporary folder, and one untimed run
first (database creation and migrations are a first-run cost, not a per-run one); the warm variant a second one,
which waits for the warm process the first left behind (flows/warm_process.py). Prints the median seconds of each
variant, the ratio of train.py to the scikit-learn script (target: at most 4x, train.py under 8 s) and a per-step
table from the run logs: Prefect's log timestamps and, from this checkout, the `[startup-trace]` lines that
TORCHYARD_STARTUP_TRACE=1 makes train.py print.
"""
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, interleaved, parser, store_env

COMMAND = ["--data", "sklearn:breast_cancer", "--n_epochs", "30"]
TARGET_SECONDS, TARGET_RATIO = 8.0, 4.0

SKLEARN_SCRIPT = """
import sys
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.15, stratify=y, random_state=42)
model = HistGradientBoostingClassifier(random_state=42).fit(X_train, y_train)
print(f"test_accuracy {model.score(X_test, y_test):.4f}")
"""

# (row, from-event, to-event): events are trace names or regexes over the log
STEPS = [
    ("imports (from process start)", "start", "imports done"),
    ("wait for the Prefect server", "imports done", "server ready"),
    ("process start to flow start", "start", "flow begins"),
    ("MLflow run set-up", "flow begins", "mlflow run"),
    ("collect, validate, split, preprocess", "mlflow run", "preprocess done"),
    ("baseline", "preprocess done", "baseline done"),
    ("train before epoch 1", "baseline done", "epoch 1"),
    ("training", "epoch 1", "train done"),
    ("evaluate", "train done", "evaluate done"),
    ("export", "evaluate done", "export done"),
    ("register + promote", "export done", "promote done"),
    ("flow end", "promote done", "flow done"),
    ("exit (flush, server stop, teardown)", "flow done", "end"),
]
LOG_EVENTS = {
    "flow begins": r"Beginning flow run",
    "mlflow run": r"MLflow run [0-9a-f]{32} in experiment",
    "epoch 1": r"Task run 'train-.*epoch 1/",
    **{f"{task} done": rf"Task run '{task}-.*Finished in state"
       for task in ("preprocess", "baseline", "train", "evaluate", "export", "promote")},
    "flow done": r"Flow run '.*Finished in state",
}
TIMESTAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \|")
TRACE = re.compile(r"^\[startup-trace\] (.+) (\d+\.\d+)$")


def events(log: str, started: float, ended: float) -> dict[str, float]:
    """Seconds since the process started for each event found in a run's output."""
    day = dt.datetime.fromtimestamp(started).date()
    found = {"start": 0.0, "end": ended - started}
    for line in log.splitlines():
        if trace := TRACE.match(line):
            name = {"flow done": "flow returned"}.get(trace.group(1), trace.group(1))
            found.setdefault(name, float(trace.group(2)) - started)
            continue
        if not (stamp := TIMESTAMP.match(line)):
            continue
        h, m, s, ms = map(int, stamp.groups())
        when = dt.datetime.combine(day, dt.time(h, m, s, ms * 1000)).timestamp()
        for name, pattern in LOG_EVENTS.items():
            if name not in found and re.search(pattern, line):
                found[name] = when - started
    return found


def run_once(command: list[str], cwd: Path, env: dict, log_path: Path) -> tuple[float, dict]:
    started = time.time()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    ended = time.time()
    log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd} exited with {done.returncode}; see {log_path}")
    return ended - started, events(done.stdout + done.stderr, started, ended)


def variant_env(folder: Path, **extra: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    return store_env(folder, base=base, TORCHYARD_STARTUP_TRACE="1", **extra)


def log_name(variant: str, suffix) -> str:
    return f"{re.sub(r'[^a-z]+', '-', variant.lower())}-{suffix}.log"


def main() -> int:
    options = parser(__doc__, {"--rounds": 3})
    options.add_argument("--compare", type=Path, help="another checkout whose train.py is timed too (same venv)")
    args = options.parse_args()

    from flows import warm_process
    from flows.prefect_server import TemporaryServer

    work = Path(tempfile.mkdtemp(prefix="torchyard-bench-startup-"))
    script = work / "hgb_breast_cancer.py"
    script.write_text(SKLEARN_SCRIPT)
    train = [sys.executable, "train.py", *COMMAND]
    sockets = Path(tempfile.mkdtemp(prefix="tyb", dir="/tmp"))  # this benchmark's own warm process, a short path
    warm_env = variant_env(work / "warm", TORCHYARD_WARM_PROCESS="900", TMPDIR=str(sockets))
    variants = {"train.py": (train, REPO, warm_env),
                "train.py, cold": (train, REPO, variant_env(work / "cold", TORCHYARD_WARM_PROCESS="0"))}
    server_env = variant_env(work / "running", TORCHYARD_WARM_PROCESS="0")
    server = TemporaryServer(server_env)  # a server that is already up, as with `make demo` or PREFECT_API_URL
    server.wait()
    variants["train.py, cold, server running"] = (train, REPO, {**server_env, "PREFECT_API_URL": server.api_url})
    if args.compare:
        variants[f"train.py in {args.compare}"] = (train, args.compare.resolve(),
                                                  variant_env(work / "compare", TORCHYARD_WARM_PROCESS="0"))
    variants["scikit-learn script"] = ([sys.executable, str(script)], REPO, variant_env(work / "sklearn"))

    seconds = {name: [] for name in variants}
    steps = {name: [] for name in variants}
    try:
        for name, (command, cwd, env) in variants.items():  # untimed: creates each store and database
            run_once(command, cwd, env, work / log_name(name, "first"))
        # untimed: the first run left a warm process behind; this one waits until it is ready
        run_once(train, REPO, warm_env, work / "train-py-second.log")
        for round_no, name in interleaved(variants, args.rounds):
            total, found = run_once(*variants[name], work / log_name(name, round_no))
            seconds[name].append(total)
            steps[name].append(found)
            print(f"round {round_no + 1}: {name}: {total:.2f} s", flush=True)
    finally:
        server.stop()
        warm_process.stop_all(warm_env)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    sklearn = median["scikit-learn script"]
    print(f"\nmedians of {args.rounds} interleaved rounds (logs in {work}):")
    for name, value in median.items():
        spread = ", ".join(f"{v:.2f}" for v in seconds[name])
        print(f"  {name:32s} {value:6.2f} s  ({value / sklearn:4.1f}x the scikit-learn script; runs: {spread})")
    for name in ("train.py", "train.py, cold"):
        ours = median[name]
        print(f"ratio {name} / scikit-learn script: {ours / sklearn:.1f}x (target <= {TARGET_RATIO:.0f}x); "
              f"{name} {ours:.2f} s (target < {TARGET_SECONDS:.0f} s)")

    trains = [name for name in variants if name.startswith("train.py")]
    print("\nper step, median seconds:")
    print("| step | " + " | ".join(trains) + " |")
    print("|---|" + "---|" * len(trains))
    for row, begin, end in STEPS:
        values = [[found[end] - found[begin] for found in steps[name] if begin in found and end in found]
                  for name in trains]
        print(f"| {row} | " + " | ".join(f"{statistics.median(v):.2f}" if v else "-" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
