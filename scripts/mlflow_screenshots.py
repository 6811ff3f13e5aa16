"""Screenshots of the MLflow UI for the README, from real runs, and a check of what a new user sees there (needs
Debian's chromium: apt-get install chromium).

    .venv/bin/python scripts/mlflow_screenshots.py docs/screenshots
    .venv/bin/python scripts/mlflow_screenshots.py /tmp/shots --store sqlite:///$PWD/mlflow/mlflow.db --check

Without --store it trains in a temporary store: a weak wine model, the wine-classifier config (which becomes
champion), the same again (skipped: no new data) and a 6-trial sweep. With --store it trains nothing and photographs
that store's experiment (--experiment, default the one with the newest run) and its two newest finished runs.

It serves the MLflow UI from the store and photographs it with headless Chromium, one fresh browser profile per
page (no column choice or view remembered, as a new user's browser): landing.png (the experiment as torchyard's
links open it, MLflow's default columns), runs.png (the runs list in torchyard's saved view, when the experiment
has it), compare.png and compare_artifacts.png (two runs compared; the artifacts section with the first common file
opened), registry.png (the registered model of those runs, if any) and, when it trained, sweep.png. The
temporary store is deleted afterwards unless --keep. MLflow's Assistant side panel is closed before each
shot, as one click does in the UI. It prints what it found (the metric columns shown, the artifacts the compare page
has in common); with --check it exits 1 when the runs list shows no metric column or the compare page says "No
common artifacts".
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from flows.prefect_server import free_port  # noqa: E402
from scripts.local_stack import stop  # noqa: E402
VIEW_PREFIX = "mlflow.sharedViewState."  # a saved view of the runs list (MLflow 3.17's Views menu): an experiment tag
HEADERS = "[...document.querySelectorAll('[role=columnheader]')].map(e => e.innerText.trim()).filter(Boolean)"
NO_COMMON = "No common artifacts to display."
COMMON_FILES = """(() => {  // the file names between the compare page's Artifacts and Tags headings
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), files = [];
    let inside = false;
    while (walker.nextNode()) {
        const text = walker.currentNode.textContent.trim();
        if (text === 'Artifacts') inside = true;
        else if (text === 'Tags' && inside) break;
        else if (inside && /^[^\\s]+\\.[A-Za-z0-9]+$/.test(text)) files.push(text);
    }
    return files; })()"""


def train_demo_runs(work: Path) -> dict:
    """The README's runs in a temporary store under `work`: what to photograph."""
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
    return {"uri": os.environ["MLFLOW_TRACKING_URI"], "experiment": champion["experiment_id"],
            "compare": [weak["run_id"], champion["run_id"]], "model": champion["model_name"],
            "trials": [t["run_id"] for t in sweep["trials"]]}


def existing_runs(uri: str, experiment: str | None) -> dict:
    """The experiment (by name; default: the one with the newest run) and its two newest finished top-level runs."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            sys.exit(f"no experiment named {experiment!r} in {uri}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(ids, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                max_results=200)
    runs = [r for r in newest
            if "mlflow.parentRunId" not in r.data.tags and any(k.startswith("test_") for k in r.data.metrics)]
    if not runs:
        sys.exit(f"no finished run with test metrics in {uri}" + (f", experiment {experiment!r}" if experiment else ""))
    experiment_id = runs[0].info.experiment_id
    same = [r for r in runs if r.info.experiment_id == experiment_id]
    registered = [r.data.tags["registered_model"] for r in same if r.data.tags.get("registered_model")]
    return {"uri": uri, "experiment": experiment_id, "compare": [r.info.run_id for r in same[:2]] if same[1:] else [],
            "model": registered[0].rsplit("/", 1)[0] if registered else None, "trials": []}


def saved_view(uri: str, experiment_id: str) -> str | None:
    """The id of torchyard's saved view on the experiment (the tag tasks/tracking.py writes), else None."""
    from mlflow import MlflowClient

    from tasks.tracking import RUNS_VIEW

    tags = MlflowClient(uri).get_experiment(experiment_id).tags
    return RUNS_VIEW if f"{VIEW_PREFIX}{RUNS_VIEW}" in tags else None


def metric_names(uri: str, experiment_id: str) -> set:
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([experiment_id], max_results=200)
    return {k for r in runs for k in r.data.metrics}


def start_ui(uri: str, timeout: float = 300) -> tuple[subprocess.Popen, int]:
    """`mlflow ui` on a free loopback port, in its own process group (its server runs in a child process)."""
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout  # a busy 2-core machine took 45 s
    while time.monotonic() < deadline:
        if ui.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {ui.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return ui, port
        except OSError:
            time.sleep(1)
    stop(ui)
    raise TimeoutError(f"mlflow ui did not answer within {timeout:.0f} s")


def photograph(runs: dict, out: Path, port: int) -> list[str]:
    """Takes the shots; returns the problems a new user would meet (empty: none)."""
    from scripts.headless import Browser

    base, experiment = f"http://127.0.0.1:{port}/#", runs["experiment"]
    problems = []

    def shot(name: str, url: str, width: int, height: int, until, then=None):
        with Browser(width, height) as b:
            if not b.open(url, until=until):
                print(f"{name}: the page did not show {until!r} in time; photographed as it was")
            b.click("Close")  # MLflow Assistant's side panel
            result = then(b) if then else None
            b.screenshot(out / name)
            print(f"wrote {out / name}")
            return result

    def columns(b):
        return list(dict.fromkeys(b.js(HEADERS) or []))

    known = metric_names(runs["uri"], experiment)
    plain = shot("landing.png", f"{base}/experiments/{experiment}?workflowType=machine_learning", 1500, 900,
                 "matching run", columns)
    print(f"  a fresh browser's runs list: columns {plain}")
    view = saved_view(runs["uri"], experiment)
    url = f"{base}/experiments/{experiment}/runs?workflowType=machine_learning"
    shown = shot("runs.png", url + (f"&viewStateShareKey={view}" if view else ""), 1500, 900, "matching run", columns)
    if view:
        print(f"  in the saved view {view!r}: columns {shown}")
    else:
        print(f"  the experiment has no saved view ({VIEW_PREFIX}<id> tag): MLflow's default columns {shown}")
    metrics_shown = [c for c in shown if c in known]
    if not metrics_shown:
        problems.append("the runs list shows no metric column")

    def compare_url(ids: list) -> str:
        return f'{base}/compare-runs?runs={json.dumps(ids)}&experiments=["{experiment}"]&workflowType=machine_learning'

    if runs["compare"]:
        url = compare_url(runs["compare"])
        shot("compare.png", url, 1700, 1300, "Run details")

        def artifacts(b, timeout=60):
            """The files the two runs have in common (the first one opened), None for "No common artifacts",
            [] when the section showed neither in time."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                b.scroll_to("Artifacts")
                if NO_COMMON in b.text():
                    return None
                if files := list(dict.fromkeys(b.js(COMMON_FILES) or [])):
                    b.click(files[0], selector="*", settle=3)
                    b.scroll_to("Artifacts")
                    return files
                time.sleep(1)
            return []

        common = shot("compare_artifacts.png", url, 1700, 1100, "Artifacts", artifacts)
        if common is None:
            problems.append(f'the compare page says "{NO_COMMON}"')
            print(f"  compare {runs['compare']}: {NO_COMMON}")
        elif not common:
            problems.append("the compare page's Artifacts section showed no file in time")
            print(f"  compare {runs['compare']}: the Artifacts section showed no file in time")
        else:
            print(f"  compare {runs['compare']}: common artifacts {common}")
    if runs["model"]:
        shot("registry.png", f"{base}/models/{runs['model']}?workflowType=machine_learning", 1700, 800, "Version")
    if runs["trials"]:
        shot("sweep.png", compare_url(runs["trials"]), 1700, 1100, "Run details")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default="docs/screenshots", help="folder for the PNGs")
    p.add_argument("--store", help="photograph this tracking URI (e.g. sqlite:///.../mlflow.db) instead of training")
    p.add_argument("--experiment", help="with --store: the experiment's name (default: the one with the newest run)")
    p.add_argument("--check", action="store_true", help="exit 1 when a new user would see no metric column in the "
                   "runs list or no common artifact on the compare page")
    p.add_argument("--keep", action="store_true", help="without --store: keep the temporary store it trained into "
                   "(its path is printed)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = None if args.store else Path(tempfile.mkdtemp(prefix="torchyard-shots-"))
    try:
        runs = existing_runs(args.store, args.experiment) if args.store else train_demo_runs(work)
        ui, port = start_ui(runs["uri"])
        try:
            problems = photograph(runs, out, port)
        finally:
            stop(ui, timeout=20)
    finally:
        if work and args.keep:
            print(f"the store is kept: MLFLOW_TRACKING_URI=sqlite:///{work / 'mlflow.db'}")
        elif work:
            shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
