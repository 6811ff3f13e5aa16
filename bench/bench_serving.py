"""REST API throughput and latency: torchyard's server against a bare FastAPI + ONNX Runtime app and MLflow's own
server on the same model, driven by the same client in one run (issue 16).

    .venv/bin/python bench/bench_serving.py                    # trains and registers a wine model first
    .venv/bin/python bench/bench_serving.py --model m.pth --registered models:/wine-mlp/1 \\
        --tracking-uri sqlite:///mlflow.db --seconds 10

Three servers, each one process on a loopback port:
- torchyard: `python -m serving --model <the .pth>` (POST /predict {"rows": [...]}),
- bare: bench/bare_onnx_app.py on the .onnx exported beside it (~60 lines: ONNX Runtime, the same preprocessing
  state applied with numpy, the same request and response shapes; no validation, limits or metrics),
- mlflow: `mlflow models serve -m <registered model> --env-manager local` (POST /invocations
  {"dataframe_records": [...]}; the registered pyfunc runs the Predictor).
A second process drives each (an asyncio httpx client, --concurrency requests in flight) for --seconds per scenario
(1 row and 64 rows per request); --repeats interleaved repetitions (server order rotated each round), medians
reported. Before timing, the three must give the same predictions for the same rows. Prints requests/s, rows/s,
p50/p99 latency and the ratios torchyard/bare and torchyard/mlflow (target: >= 0.9 and >= 3), of the medians and
paired (the median of each repetition's ratio). Compare ratios, not seconds: the machine is shared and noisy, and
the client runs on the same cores.
"""
import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVERS = ("torchyard", "bare", "mlflow")


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    values = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


async def _drive(url: str, body: bytes, seconds: float, concurrency: int) -> dict:
    import httpx

    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = _percentiles(latencies)
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "p50_ms": p50, "p99_ms": p99}


def _train(directory: Path) -> tuple[Path, str, str]:
    """A wine model trained and registered in a fresh MLflow store: (model file, registered URI, tracking URI)."""
    model_fn = directory / "wine.pth"
    tracking = f"sqlite:///{directory / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_HOME": str(directory / "prefect"),
           "TORCHYARD_WORK_DIR": str(directory / "work")}
    done = subprocess.run([sys.executable, "train.py", "--model_fn", str(model_fn), "--n_epochs", "5", "--gpu_id",
                           "-1"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    registered = re.search(r"^registered: (models:/\S+)", done.stdout, re.M)
    if not registered:
        raise SystemExit(f"train.py registered no model:\n{done.stdout[-2000:]}")
    return model_fn, registered.group(1), tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, command: list[str], health: str, predict: str, log: Path, env: dict | None = None,
                 cwd: Path = ROOT):
        self.name, self.port = name, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health, self.predict = self.url + health, self.url + predict
        self.log = open(log, "w")
        self.process = subprocess.Popen([c.replace("{port}", str(self.port)) for c in command], cwd=cwd,
                                        env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the {self.name} server exited; its log: {self.log.name}")
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"the {self.name} server did not answer in {timeout:.0f} s; its log: {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # mlflow's CLI and the uvicorn it starts
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def _bodies(rows, batch: int) -> dict[str, bytes]:
    records = json.loads(rows.iloc[:batch].to_json(orient="records"))
    return {"torchyard": json.dumps({"rows": records}).encode(), "bare": json.dumps({"rows": records}).encode(),
            "mlflow": json.dumps({"dataframe_records": records}).encode()}


def _same_answers(servers: dict, rows) -> None:
    """The three servers predict the same classes and probabilities for the same 64 rows (or the bench stops)."""
    import httpx

    bodies, answers = _bodies(rows, 64), {}
    for name, server in servers.items():
        response = httpx.post(server.predict, content=bodies[name], headers={"content-type": "application/json"},
                              timeout=60)
        response.raise_for_status()
        predictions = response.json()["predictions"]
        if name == "mlflow":
            answers[name] = [(p["prediction"], [v for k, v in p.items() if k.startswith("proba_")]) for p in predictions]
        else:
            answers[name] = [(p["prediction"], list(p.get("probabilities", {}).values())) for p in predictions]
    reference = next(iter(answers.values()))
    for name, answer in answers.items():
        labels = [a[0] for a in answer] == [r[0] for r in reference]
        close = np.allclose([a[1] for a in answer], [r[1] for r in reference], rtol=0, atol=1e-6)
        if not (labels and close):
            raise SystemExit(f"{name} answers differently from {next(iter(answers))} on the same rows")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a tabular .pth model file with its .onnx beside it (default: train one)")
    parser.add_argument("--registered", help="the same model in the MLflow registry (models:/<name>/<version>)")
    parser.add_argument("--tracking-uri", help="the MLflow store --registered is in")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario, server and repetition")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="rows per request, per scenario")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--serving-args", default="", help="extra arguments of python -m serving (e.g. "
                        "'--workers 2')")
    parser.add_argument("--serving-root", help="run torchyard's `python -m serving` from this folder instead (a copy "
                        "of an earlier serving/ and serve.py, e.g. from `git archive`, to measure before and after)")
    parser.add_argument("--drive", nargs=3, metavar=("URL", "BODY_FILE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:  # the load-generating second process
        url, body_file, seconds = args.drive
        print(json.dumps(asyncio.run(_drive(url, Path(body_file).read_bytes(), float(seconds), args.concurrency))))
        return 0

    from preprocessing.sources import load_sample

    work = Path(tempfile.mkdtemp(prefix="torchyard-bench-serving-"))
    if args.model:
        model_fn, registered, tracking = Path(args.model).resolve(), args.registered, args.tracking_uri
        if "mlflow" in args.servers and not (registered and tracking):
            parser.error("--model with the mlflow server needs --registered and --tracking-uri")
    else:
        print("training and registering a wine model ...", flush=True)
        model_fn, registered, tracking = _train(work)
    rows = load_sample("wine").drop(columns="target")
    python = sys.executable
    path = os.pathsep.join([os.path.dirname(python), os.environ.get("PATH", "")])  # mlflow starts `uvicorn`
    commands = {
        "torchyard": ([python, "-m", "serving", "--model", str(model_fn), "--port", "{port}",
                       *args.serving_args.split()], "/health", "/predict", {}),
        "bare": ([python, "-m", "uvicorn", "bench.bare_onnx_app:app", "--port", "{port}", "--no-access-log",
                  "--log-level", "warning"], "/health", "/predict", {"TORCHYARD_ONNX": str(model_fn.with_suffix(".onnx"))}),
        "mlflow": ([python, "-m", "mlflow", "models", "serve", "-m", str(registered), "--env-manager", "local",
                    "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"], "/ping", "/invocations",
                   {"MLFLOW_TRACKING_URI": str(tracking), "PATH": path, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}),
    }
    servers = {}
    try:
        for name in args.servers:
            command, health, predict, env = commands[name]
            cwd = Path(args.serving_root) if name == "torchyard" and args.serving_root else ROOT
            servers[name] = Server(name, command, health, predict, work / f"{name}.log", env, cwd)
        for server in servers.values():
            server.wait()
        _same_answers(servers, rows)
        if args.serving_root:
            print(f"torchyard's server from {args.serving_root}")
        print(f"model {model_fn.name} ({registered or 'not registered'}); {args.seconds:.0f} s per scenario and "
              f"server, {args.concurrency} requests in flight, medians of {args.repeats} interleaved repetitions; "
              f"{os.cpu_count()} cores shared by the servers and the client", flush=True)
        for batch in args.batches:
            bodies = _bodies(rows, batch)
            results = {name: [] for name in servers}
            for repeat in range(args.repeats):
                order = list(servers)[repeat % len(servers):] + list(servers)[:repeat % len(servers)]
                for name in order:
                    body = work / f"{name}-{batch}.json"
                    body.write_bytes(bodies[name])
                    done = subprocess.run([python, __file__, "--concurrency", str(args.concurrency), "--drive",
                                           servers[name].predict, str(body), str(args.seconds)],
                                          capture_output=True, text=True, check=True)
                    results[name].append(json.loads(done.stdout))
            print(f"\n{batch} row(s) per request")
            print(f"  {'server':<12}{'req/s':>9}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   runs (req/s)")
            rate = {}
            for name, runs in results.items():
                rates = [r["requests"] / r["seconds"] for r in runs]
                rate[name] = statistics.median(rates)
                p50 = statistics.median(r["p50_ms"] for r in runs)
                p99 = statistics.median(r["p99_ms"] for r in runs)
                errors = sum(r["errors"] for r in runs)
                print(f"  {name:<12}{rate[name]:>9.0f}{rate[name] * batch:>10.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}   "
                      + " ".join(f"{r:.0f}" for r in rates))
            ratios = []
            for other in ("bare", "mlflow"):
                if other in rate and "torchyard" in rate:
                    # each repetition's servers ran back to back: the median of the per-repetition ratios is less
                    # sensitive to the machine's load changing between repetitions than the ratio of the medians
                    paired = statistics.median(a["requests"] / a["seconds"] / (b["requests"] / b["seconds"])
                                               for a, b in zip(results["torchyard"], results[other]))
                    ratios.append(f"torchyard/{other} {rate['torchyard'] / rate[other]:.2f}x (paired {paired:.2f}x)")
            print("  " + ", ".join(ratios) + "   (target: >= 0.9x bare, >= 3x mlflow)", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
