"""REST API throughput and latency: torchyard's server against a bare FastAPI + ONNX Runtime app and MLflow's own
server on the same model, driven by the same client in one run, for tables, texts and images; and micro-batching on
against off under many concurrent single-input requests (issue 16).

    .venv/bin/python bench/bench_serving.py                    # trains and registers a wine, a text, an image model
    .venv/bin/python bench/bench_serving.py --model m.pth --registered models:/wine-mlp/1 \\
        --tracking-uri sqlite:///mlflow.db --text-model t.pth --image-model i.pth --seconds 10
    .venv/bin/python bench/bench_serving.py --kinds tabular --batching-concurrency 0    # the table comparison only

The servers, each one process on a loopback port:
- torchyard: `python -m serving --model <the .pth>` with its defaults (POST /predict {"rows": [...]}, {"texts":
  [...]} or {"images": [base64, ...]}),
- torchyard-nobatch: the same with micro-batching off (--batch-max-rows 0), for the on/off comparison,
- bare: bench/bare_onnx_app.py on the .onnx exported beside it (ONNX Runtime, the preprocessing state from the
  .onnx's metadata: for tables applied with numpy, for texts and images torchyard's own tokenizer and image pipeline
  called directly; the same request and response shapes; no validation, limits, metrics or batching),
- mlflow (tables): `mlflow models serve -m <registered model> --env-manager local` (POST /invocations
  {"dataframe_records": [...]}; the registered pyfunc runs the Predictor).
A second process drives each (--client, below), --concurrency requests in flight, for --seconds per scenario
(tables: 1 and 64 rows per request; texts and images: 1 and 16); --repeats interleaved repetitions (server order
rotated each round), medians reported. Then micro-batching on and off at 1 input per request with
--batching-concurrency requests in flight. Before timing, the servers must give the same predictions for the same
inputs. Prints requests/s, inputs/s (rows, texts, images), p50/p99 latency and the ratios torchyard/bare and
torchyard/mlflow (target: >= 0.9 and >= 3), torchyard/torchyard-nobatch, of the medians and paired (the median of
each repetition's ratio). Compare ratios, not seconds: the machine is shared and noisy, and the client runs on the
same cores.
"""
import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, free_port, interleaved, medians, run_json, store_env
from scripts.local_stack import stop as stop_group

SERVERS = ("torchyard", "bare", "mlflow")
UNITS = {"tabular": "rows", "text": "texts", "image": "images"}


async def _drive(url: str, body: bytes, seconds: float, concurrency: int, client: str = "raw") -> dict:
    """`concurrency` keep-alive connections, each posting `body` again as soon as its answer is in, for `seconds`."""
    latencies, deadline = [], time.perf_counter() + seconds
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        session = httpx.AsyncClient(limits=limits, timeout=60)

        async def post() -> int:
            return (await session.post(url, content=body, headers={"content-type": "application/json"})).status_code

        posts, close = [post] * concurrency, session.aclose
    else:
        connections = [await _RawConnection.open(url, body) for _ in range(concurrency)]
        posts = [c.post for c in connections]

        async def close() -> None:
            for connection in connections:
                connection.close()
    try:
        started = time.perf_counter()
        errors = await _workers(posts, deadline, latencies)
        elapsed = time.perf_counter() - started
    finally:
        await close()
    ms = np.array(latencies or [np.nan]) * 1000
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


async def _workers(posts: list, deadline: float, latencies: list) -> int:
    """One loop of requests per `posts` callable until the deadline; the number of answers that were not 200."""
    errors = 0

    async def worker(post):
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await post()
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    await asyncio.gather(*(worker(post) for post in posts))
    return errors


class _RawConnection:
    """One keep-alive HTTP/1.1 connection that posts the same JSON body again and again: a few microseconds of
    client work per request (httpx's pool costs ~1 ms of CPU per request, which on 2 shared cores is taken from
    the server being measured, and more with many connections)."""

    @classmethod
    async def open(cls, url: str, body: bytes) -> "_RawConnection":
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        return self

    async def post(self) -> int:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")),
                      None)
        if length is None:  # chunked (neither uvicorn nor the servers measured here answer so)
            raise RuntimeError("a response without Content-Length")
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


TRAIN_ARGS = {  # train.py arguments per kind: small, quick models (accuracy is not what is measured)
    "tabular": ["--n_epochs", "5"],
    "text": ["--config", "configs/reviews.yaml", "--n_epochs", "2"],
    "image": ["--config", "configs/digits.yaml", "--n_epochs", "2"],
}


def _train(directory: Path, kind: str = "tabular") -> tuple[Path, str, str]:
    """A model of `kind` (a wine MLP, a reviews text model, a digits CNN) trained and registered in the MLflow store
    in `directory`: (model file, registered URI, tracking URI)."""
    model_fn, env = directory / f"{kind}.pth", store_env(directory, "mlflow.db")
    done = subprocess.run([sys.executable, "train.py", *TRAIN_ARGS[kind], "--model_fn", str(model_fn), "--gpu_id",
                           "-1"], cwd=REPO, env=env, check=True, capture_output=True, text=True)
    registered = re.search(r"^registered: (models:/\S+)", done.stdout, re.M)
    if not registered:
        raise SystemExit(f"train.py registered no model:\n{done.stdout[-2000:]}")
    return model_fn, registered.group(1), env["MLFLOW_TRACKING_URI"]


class Server:
    def __init__(self, name: str, command: list[str], health: str, predict: str, log: Path, env: dict | None = None,
                 cwd: Path = REPO):
        self.name, self.port = name, free_port()
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
        stop_group(self.process, timeout=30)  # its process group: mlflow's CLI and the uvicorn it starts
        self.log.close()


def _inputs(kind: str):
    """What the requests of `kind` hold: wine rows, review texts, digit images (PNG files, base64)."""
    if kind == "tabular":
        from preprocessing.sources import load_sample

        return json.loads(load_sample("wine").drop(columns="target").to_json(orient="records"))
    if kind == "text":
        from preprocessing.samples import reviews

        return reviews(n=256, seed=1)["text"].tolist()
    import base64
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    encoded = []
    for pixels in load_digits().images[:256]:
        buffer = io.BytesIO()
        Image.fromarray((pixels * 15.9).astype(np.uint8), mode="L").save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded


def _body(server: str, kind: str, inputs: list, batch: int) -> bytes:
    """The request body of `batch` inputs for `server` (torchyard's /predict shape; MLflow's dataframe_records)."""
    chosen = [inputs[i % len(inputs)] for i in range(batch)]
    return json.dumps({"dataframe_records" if server == "mlflow" else UNITS[kind]: chosen}).encode()


def _same_answers(servers: dict, kind: str, inputs: list) -> None:
    """The servers predict the same classes and probabilities for the same 16 inputs (or the bench stops)."""
    import httpx

    answers = {}
    for name, server in servers.items():
        response = httpx.post(server.predict, content=_body(name, kind, inputs, 16),
                              headers={"content-type": "application/json"}, timeout=60)
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
            raise SystemExit(f"{name} answers differently from {next(iter(answers))} on the same {kind} inputs")


def _scenario(title: str, kind: str, servers: dict, inputs: list, batch: int, concurrency: int, args, work: Path,
              ratios: list[tuple[str, str, str]]) -> None:
    """Drive each of `servers` with `concurrency` requests of `batch` inputs in flight, --repeats interleaved rounds;
    print the table and the ratios (a, b, target) of the medians and paired."""
    results = {name: [] for name in servers}
    for _, name in interleaved(servers, args.repeats, rotate=True):
        body = work / f"{kind}-{name}-{batch}.json"
        body.write_bytes(_body(name, kind, inputs, batch))
        results[name].append(run_json([sys.executable, __file__, "--concurrency", str(concurrency), "--client",
                                       args.client, "--drive", servers[name].predict, str(body), str(args.seconds)],
                                      f"the client of {name}"))
    unit = UNITS[kind]
    print(f"\n{title}: {batch} {unit[:-1] if batch == 1 else unit} per request, {concurrency} requests in flight")
    print(f"  {'server':<20}{'req/s':>9}{unit + '/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   runs (req/s)")
    rate = {}
    for name, runs in results.items():
        rates = [r["requests"] / r["seconds"] for r in runs]
        rate[name], m = statistics.median(rates), medians(runs, ("p50_ms", "p99_ms"))
        print(f"  {name:<20}{rate[name]:>9.0f}{rate[name] * batch:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
              f"{sum(r['errors'] for r in runs):>8}   " + " ".join(f"{r:.0f}" for r in rates))
    said = []
    for a, b, target in ratios:
        if a in rate and b in rate:
            # each repetition's servers ran back to back: the median of the per-repetition ratios is less
            # sensitive to the machine's load changing between repetitions than the ratio of the medians
            paired = statistics.median(x["requests"] / x["seconds"] / (y["requests"] / y["seconds"])
                                       for x, y in zip(results[a], results[b]))
            said.append(f"{a}/{b} {rate[a] / rate[b]:.2f}x (paired {paired:.2f}x)" + (f" (target: {target})"
                                                                                        if target else ""))
    if said:
        print("  " + ", ".join(said), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a tabular .pth model file with its .onnx beside it (default: train one)")
    parser.add_argument("--registered", help="the same model in the MLflow registry (models:/<name>/<version>)")
    parser.add_argument("--tracking-uri", help="the MLflow store --registered is in")
    parser.add_argument("--text-model", help="a text .pth model file with its .onnx beside it (default: train one)")
    parser.add_argument("--image-model", help="an image .pth model file with its .onnx beside it (default: train one)")
    parser.add_argument("--kinds", nargs="+", default=list(UNITS), choices=list(UNITS), help="what to measure")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario, server and repetition")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="rows per request, per scenario")
    parser.add_argument("--media-batches", type=int, nargs="+", default=[1, 16],
                        help="texts or images per request, per scenario")
    parser.add_argument("--batching-concurrency", type=int, default=64, help="requests in flight when micro-batching "
                        "on (the server's defaults) and off (--batch-max-rows 0) are compared, at 1 input per "
                        "request (0: not compared)")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--serving-args", default="", help="extra arguments of python -m serving (e.g. "
                        "'--workers 2')")
    parser.add_argument("--serving-root", help="run torchyard's `python -m serving` from this folder instead (a copy "
                        "of an earlier serving/ and serve.py, e.g. from `git archive`, to measure before and after)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the load generator: keep-alive "
                        "connections writing HTTP/1.1 by hand (a few microseconds per request), or an httpx "
                        "AsyncClient (what earlier runs used; its own CPU use, taken from the servers on a small "
                        "machine, grows with the connections)")
    parser.add_argument("--drive", nargs=3, metavar=("URL", "BODY_FILE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:  # the load-generating second process
        url, body_file, seconds = args.drive
        print(json.dumps(asyncio.run(_drive(url, Path(body_file).read_bytes(), float(seconds), args.concurrency,
                                            args.client))))
        return 0

    work = Path(tempfile.mkdtemp(prefix="torchyard-bench-serving-"))
    given = {"tabular": args.model, "text": args.text_model, "image": args.image_model}
    if args.model and "mlflow" in args.servers and "tabular" in args.kinds and not (args.registered
                                                                                     and args.tracking_uri):
        parser.error("--model with the mlflow server needs --registered and --tracking-uri")
    python = sys.executable
    path = os.pathsep.join([os.path.dirname(python), os.environ.get("PATH", "")])  # mlflow starts `uvicorn`
    if args.serving_root:
        print(f"torchyard's server from {args.serving_root}")
    print(f"{args.seconds:.0f} s per scenario and server, medians of {args.repeats} interleaved repetitions; "
          f"{os.cpu_count()} cores shared by the servers and the client", flush=True)
    for kind in args.kinds:
        registered, tracking = (args.registered, args.tracking_uri) if kind == "tabular" else (None, None)
        if given[kind]:
            model_fn = Path(given[kind]).resolve()
        else:
            print(f"\ntraining and registering a {kind} model ...", flush=True)
            model_fn, registered, tracking = _train(work, kind)
        names = [n for n in args.servers if n != "mlflow" or (kind == "tabular" and registered)]
        if args.batching_concurrency and "torchyard" in names:
            names.insert(names.index("torchyard") + 1, "torchyard-nobatch")
        serving = [python, "-m", "serving", "--model", str(model_fn), "--port", "{port}", *args.serving_args.split()]
        commands = {
            "torchyard": (serving, "/health", "/predict", {}),
            "torchyard-nobatch": (serving + ["--batch-max-rows", "0"], "/health", "/predict", {}),
            "bare": ([python, "-m", "uvicorn", "bench.bare_onnx_app:app", "--port", "{port}", "--no-access-log",
                      "--log-level", "warning"], "/health", "/predict",
                     {"TORCHYARD_ONNX": str(model_fn.with_suffix(".onnx"))}),
            "mlflow": ([python, "-m", "mlflow", "models", "serve", "-m", str(registered), "--env-manager", "local",
                        "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"], "/ping", "/invocations",
                       {"MLFLOW_TRACKING_URI": str(tracking), "PATH": path,
                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}),
        }
        inputs = _inputs(kind)
        servers = {}
        try:
            for name in names:
                command, health, predict, env = commands[name]
                cwd = Path(args.serving_root) if name.startswith("torchyard") and args.serving_root else REPO
                servers[name] = Server(name, command, health, predict, work / f"{kind}-{name}.log", env, cwd)
            for server in servers.values():
                server.wait()
            _same_answers(servers, kind, inputs)
            print(f"\n== {kind}: model {model_fn.name} ({registered or 'not registered'})", flush=True)
            compared = {n: s for n, s in servers.items() if n != "torchyard-nobatch"}
            for batch in (args.batches if kind == "tabular" else args.media_batches):
                _scenario(kind, kind, compared, inputs, batch, args.concurrency, args, work,
                          [("torchyard", "bare", ">= 0.9x"), ("torchyard", "mlflow", ">= 3x")])
            if "torchyard-nobatch" in servers:
                _scenario(f"{kind}, micro-batching on (default settings) and off (--batch-max-rows 0)", kind,
                          {n: servers[n] for n in ("torchyard", "torchyard-nobatch")}, inputs, 1,
                          args.batching_concurrency, args, work, [("torchyard", "torchyard-nobatch", "")])
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
