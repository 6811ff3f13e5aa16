"""Screenshots of the MLflow UI for the README, from real runs (needs Debian's chromium: apt-get install chromium).

    .venv/bin/python scripts/mlflow_screenshots.py docs/screenshots

Trains in a temporary store: a weak wine model, the wine-classifier config (which becomes champion), the same again
(skipped: no new data) and a 6-trial sweep; serves the MLflow UI from that store; and photographs the runs list, the
comparison of the two models, the registry page and the sweep's comparison with headless Chromium.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=20000"]


def main(out: str) -> int:
    work = Path(tempfile.mkdtemp(prefix="torchyard-shots-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", PREFECT_HOME=str(work / "prefect"),
                      TORCHYARD_WORK_DIR=str(work / "work"))
    from flows.config import RunConfig, load_config_file
    from flows.sweep_flow import SweepConfig, sweep_flow
    from flows.train_flow import train_flow

    base = load_config_file(ROOT / "configs" / "wine.yaml")
    weak = train_flow(**RunConfig(**{**base, "train": {**base["train"], "n_epochs": 2, "lr": 0.0005}}).flow_parameters())
    good = RunConfig(**base)
    champion = train_flow(**good.flow_parameters())
    train_flow(**good.flow_parameters())  # no new data
    sweep = sweep_flow(sweep=SweepConfig(parameters={"train.lr": [0.01, 0.003, 0.0005], "model.n_layers": [2, 3]},
                                         metric="test_accuracy", register_best=False),  # keep the champion shown
                       data=good.data, train=good.train.model_copy(update={"n_epochs": 15}))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
                           os.environ["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        base_url, experiment = f"http://127.0.0.1:{port}/#", champion["experiment_id"]
        trials = json.dumps([t["run_id"] for t in sweep["trials"]])
        pages = {  # landing.png: the experiment as a fresh browser opens it from the links torchyard prints
            "landing.png": (f"{base_url}/experiments/{experiment}?workflowType=machine_learning", "1500,900"),
            "runs.png": (f"{base_url}/experiments/{experiment}/runs", "1500,900"),
            "compare.png": (f'{base_url}/compare-runs?runs={json.dumps([weak["run_id"], champion["run_id"]])}'
                            f'&experiments=["{experiment}"]', "1700,1300"),
            "registry.png": (f"{base_url}/models/{champion['model_name']}", "1700,800"),
            "sweep.png": (f'{base_url}/compare-runs?runs={trials}&experiments=["{experiment}"]', "1700,1100"),
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        for name, (url, size) in pages.items():
            profile = tempfile.mkdtemp(prefix="chromium-")
            subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--window-size={size}",
                            f"--screenshot={Path(out).resolve() / name}", url.replace(" ", "")],
                           check=True, capture_output=True, timeout=120)
            print(f"wrote {Path(out) / name}")
    finally:
        ui.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
