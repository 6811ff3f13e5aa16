"""REST API throughput and latency, against the same model called in process.

    .venv/bin/python bench/bench_serving.py                    # trains a wine model first (make bench-serving)
    .venv/bin/python bench/bench_serving.py --model m.pth --seconds 10

Starts `python -m serving` on a loopback port and drives it from a second process (an asyncio httpx client with
--concurrency requests in flight) for --seconds per scenario: single-row and 64-row tabular requests. Prints
requests/s, rows/s and p50/p99 latency, next to the baselines measured in this run: the ONNX Runtime session alone
(InferenceSession.run on already-preprocessed rows) and the whole in-process path (Predictor.predict: preprocessing
+ ONNX Runtime). Compare ratios, not seconds: the machine is noisy.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    values = np.array(latencies) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


async def _drive(url: str, body: bytes, seconds: float, concurrency: int) -> dict:
    import httpx

    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
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


def _in_process(function, seconds: float) -> dict:
    latencies, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        function()
        latencies.append(time.perf_counter() - started)
    p50, p99 = _percentiles(latencies)
    return {"requests": len(latencies), "seconds": sum(latencies), "p50_ms": p50, "p99_ms": p99}


def _train(directory: Path) -> Path:
    model_fn = directory / "wine.pth"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}",
           "PREFECT_HOME": str(directory / "prefect"), "TORCHYARD_WORK_DIR": str(directory / "work")}
    subprocess.run([sys.executable, "train.py", "--model_fn", str(model_fn), "--n_epochs", "5", "--gpu_id", "-1"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return model_fn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a tabular .pth model file (default: train one on the wine sample)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per scenario")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--drive", nargs=3, metavar=("URL", "BODY_FILE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:  # the load-generating second process
        url, body_file, seconds = args.drive
        print(json.dumps(asyncio.run(_drive(url, Path(body_file).read_bytes(), float(seconds), args.concurrency))))
        return 0


    from preprocessing.sources import load_sample
    from serving.inference import Predictor

    work = Path(tempfile.mkdtemp(prefix="torchyard-bench-serving-"))
    model_fn = Path(args.model) if args.model else _train(work)
    predictor = Predictor.load(model_fn)
    rows = load_sample("wine").drop(columns="target")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(model_fn), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"model {model_fn.name}; {args.seconds:.0f} s per scenario, {args.concurrency} requests in flight; "
              f"{os.cpu_count()} cores shared by server and client")
        print(f"{'scenario':<22}{'req/s':>10}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for batch in (1, 64):
            frame = rows.iloc[:batch]
            body = work / f"body{batch}.json"
            body.write_text(json.dumps({"rows": json.loads(frame.to_json(orient="records"))}))
            done = subprocess.run([sys.executable, __file__, "--concurrency", str(args.concurrency), "--drive",
                                   f"http://127.0.0.1:{port}/predict", str(body), str(args.seconds)],
                                  capture_output=True, text=True, check=True)
            served = json.loads(done.stdout)
            features = predictor.transform.features(frame)
            direct = _in_process(lambda: predictor.outputs(features), min(args.seconds, 5))
            whole = _in_process(lambda: predictor.predict(frame), min(args.seconds, 5))
            for name, result in ((f"HTTP, {batch} row(s)", served), (f"ORT alone, {batch}", direct),
                                 (f"Predictor, {batch}", whole)):
                rate = result["requests"] / result["seconds"]
                print(f"{name:<22}{rate:>10.0f}{rate * batch:>10.0f}{result['p50_ms']:>9.2f}{result['p99_ms']:>9.2f}"
                      f"{result.get('errors', 0):>8}")
            rate = {name: r["requests"] / r["seconds"] for name, r in (("http", served), ("ort", direct),
                                                                         ("predictor", whole))}
            print(f"  HTTP / ORT alone: {rate['http'] / rate['ort']:.3f}  HTTP / Predictor: "
                  f"{rate['http'] / rate['predictor']:.3f}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
