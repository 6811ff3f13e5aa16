"""The embedded local stack: a Prefect server on SQLite and a process worker, started in the background, with
train-flow deployed from prefect.yaml. Used by `make demo`/`make stop` and by the end-to-end test.

    python scripts/local_stack.py demo [DEPLOYMENT]   # up + deploy + run DEPLOYMENT (default wine-classifier) --watch
    python scripts/local_stack.py up                  # server + worker + deploy, leave them running
    python scripts/local_stack.py down                # stop the worker, then the server
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".torchyard" / "stack"
POOL = "torchyard-process"
DEFAULT_PORT = int(os.environ.get("TORCHYARD_PREFECT_PORT", "4200"))


def stack_env(port: int, home: Path, mlflow_uri: str | None = None) -> dict:
    """Environment for every prefect command and the worker (whose flow runs inherit it)."""
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        # `prefect deployment run --watch` subscribes to the flow run's logs, which the server sends out only with
        # these two (off by default): without them the watch shows state changes but no epoch line
        "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
        "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
        "TORCHYARD_HOME": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **({"MLFLOW_TRACKING_URI": mlflow_uri} if mlflow_uri else {}),
    }


def prefect(*args: str, env: dict, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"`prefect {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
    return result


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_background(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # its own session: it outlives `make demo`, and stop() signals the whole group
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_server(env: dict, port: int, log: Path, timeout: float = 90) -> subprocess.Popen:
    process = start_background([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env, log)
    deadline = time.monotonic() + timeout
    while not healthy(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the Prefect server did not become healthy on port {port}; see {log}")
        time.sleep(0.5)
    return process


def deploy(env: dict) -> None:
    if prefect("work-pool", "inspect", POOL, env=env, check=False).returncode != 0:
        prefect("work-pool", "create", POOL, "--type", "process", env=env)
    prefect("deploy", "--all", env=env)


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    return start_background([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
                             "process"], env, log)


def stop(process_or_pid, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it after `timeout` (a worker whose server is gone ignores TERM)."""
    pid = process_or_pid if isinstance(process_or_pid, int) else process_or_pid.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(process_or_pid):
                return
            time.sleep(0.2)


def _alive(process_or_pid) -> bool:
    if isinstance(process_or_pid, subprocess.Popen):
        return process_or_pid.poll() is None
    try:
        os.kill(process_or_pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(port: int) -> dict:
    env = stack_env(port, STATE / "prefect")
    if not healthy(port):
        server = start_server(env, port, STATE / "server.log")
        (STATE / "server.pid").write_text(str(server.pid))
        print(f"Prefect server started on http://127.0.0.1:{port} (log: {STATE / 'server.log'})")
    record_server(env)
    deploy(env)
    worker_pid = STATE / "worker.pid"
    if not (worker_pid.exists() and _alive(int(worker_pid.read_text()))):
        worker = start_worker(env, STATE / "worker.log")
        worker_pid.write_text(str(worker.pid))
        print(f"worker started on pool '{POOL}' (log: {STATE / 'worker.log'})")
    return env


def record_server(env: dict) -> None:
    """Where the stack's API is and whose Prefect home it serves: train.py runs its flows there instead of starting
    a temporary server (flows/prefect_server.py) while the stack is up."""
    (STATE / "server.url").write_text(env["PREFECT_API_URL"])
    (STATE / "server.home").write_text(env["PREFECT_HOME"])


def down() -> None:
    for name in ("worker", "server"):  # the worker first: it can hang once its server is gone
        pid_file = STATE / f"{name}.pid"
        if pid_file.exists():
            stop(int(pid_file.read_text()))
            pid_file.unlink()
            print(f"stopped the {name}")
    for recorded in ("server.url", "server.home"):
        (STATE / recorded).unlink(missing_ok=True)
    from flows import warm_process

    if stopped := warm_process.stop_all():
        print(f"stopped {stopped} warm train.py process(es)")


def demo(port: int, deployment: str) -> int:
    env = up(port)
    print(f"running train-flow/{deployment} ...", flush=True)
    watch = subprocess.Popen([sys.executable, "-m", "prefect", "deployment", "run", f"train-flow/{deployment}",
                              "--watch"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    flow_run_id = None
    for line in watch.stdout:  # shown as it comes; the flow run's id says which MLflow run to summarise
        print(line, end="", flush=True)
        found = re.search(r"UUID: ([0-9a-f-]{36})", line)
        flow_run_id = flow_run_id or (found and found.group(1))
    watch.wait()
    print()
    print(f"Prefect UI:  http://127.0.0.1:{port}/runs  (flow runs, task runs, the train-summary artifact)")
    print("MLflow UI:   make mlflow-ui, then http://127.0.0.1:5000  (store: mlflow/)")
    summary = subprocess.run([sys.executable, "-c", "import sys; from scripts.local_stack import print_summary; "
                              "print_summary(sys.argv[1])", flow_run_id or ""], env=env, cwd=REPO,
                             capture_output=True, text=True)
    print(summary.stdout.strip() or "Registered:  none (see the flow run's logs in the Prefect UI)")
    print("Stop the stack: make stop")
    return watch.returncode


def run_summary(client, flow_run_id: str, out_dir: Path) -> list[str]:
    """What a demo run produced: the champion of the model that this flow run trained (not the newest model of the
    store), its test metrics, and working commands to predict with and serve it. A few raw rows of the run's own
    data are written to `out_dir` for the Predict command (tables and texts)."""
    from urllib.parse import urlparse

    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`prefect.flow_run_id` = '{flow_run_id}'", max_results=1)
    if not runs:
        return []
    run = runs[0]
    if "registered_model" not in run.data.tags:
        reason = run.data.tags.get("promotion.reason") or run.data.tags.get("failure_reason") or "see its logs"
        return [f"Registered:  nothing new in this run ({reason})"]
    name = run.data.tags["registered_model"].rsplit("/", 1)[0]
    try:  # a version that lost to the champion is registered but not served
        version = client.get_model_version_by_alias(name, "champion")
    except Exception:
        version = client.get_model_version(name, run.data.tags["registered_model"].rsplit("/", 1)[1])
    champion = client.get_run(version.run_id)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(champion.data.metrics.items()) if k.startswith("test_"))
    model_file = urlparse(champion.info.artifact_uri).path + "/model_file/model.pth"
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    lines = [f"Champion:    models:/{name}/{version.version} (run {version.run_id})", f"Test split:  {metrics}"]
    rows = sample_rows(champion, out_dir / f"{name}-rows.csv")
    if rows:
        lines.append(f"Predict:     {python} predict.py --model_fn {model_file} --input {rows}")
    lines.append(f"Serve:       make serve MODEL={name}  (its @champion; API docs on http://127.0.0.1:8000/docs)")
    return lines


def sample_rows(run, path: Path, n: int = 5) -> Path | None:
    """The first rows of the run's source without its target, as predict.py's input; None for image folders."""
    from preprocessing.sources import read_table

    params = run.data.params
    try:
        frame = read_table(params["collect.source"])
    except Exception:  # an image folder, or a file that has moved since
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=[params.get("validate.target", "target")], errors="ignore").head(n).to_csv(path, index=False)
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def print_summary(flow_run_id: str) -> None:
    from tasks import tracking

    if flow_run_id:
        print("\n".join(run_summary(tracking.configure(), flow_run_id, STATE / "demo")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "demo"])
    parser.add_argument("deployment", nargs="?", default="wine-classifier")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    if args.command == "demo":
        return demo(args.port, args.deployment)
    if args.command == "down":
        down()
    else:
        up(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
