"""End to end as a user deploys: a real `prefect server` on a free loopback port, a process worker, the
deployments of prefect.yaml, `prefect deployment run ... --watch`, then the MLflow store is checked."""
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, free_port
from scripts.local_stack import deploy, prefect, run_summary, stack_env, start_server, start_worker, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stack")
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    env = stack_env(port, tmp_path / "prefect", mlflow_uri=uri)
    env["TORCHYARD_WORK_DIR"] = str(tmp_path / "work")
    server = start_server(env, port, tmp_path / "server.log")
    worker = None
    try:
        deploy(env)
        worker = start_worker(env, tmp_path / "worker.log")
        yield env, uri
    finally:
        if worker is not None:  # the worker first: once its server is gone it may ignore SIGTERM
            stop(worker)
        stop(server)


def test_deployment_run_completes_and_is_tracked(stack):
    env, uri = stack
    rejected = prefect("deployment", "run", "train-flow/wine-classifier", "--param", 'train={"lr": "fast"}',
                       env=env, check=False)
    assert rejected.returncode != 0 and "train.lr" in rejected.stdout + rejected.stderr

    train = {"n_epochs": 4, "batch_size": 32, "lr": 0.01, "scheduler": {"name": "StepLR", "step_size": 2}}
    result = prefect("deployment", "run", "train-flow/wine-classifier", "--param", f"train={json.dumps(train)}",
                     "--watch", env=env, timeout=420)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "Flow run finished successfully in 'Completed'" in log, log[-3000:]
    assert re.search(r"epoch 4/4: .*val_loss", log), log[-3000:]  # the watch shows training's progress lines

    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("wine")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.n_epochs"] == "4" and run.data.params["train.scheduler.name"] == "StepLR"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr")] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001])
    assert run.data.metrics["test_accuracy"] > 0.5
    assert run.data.tags["prefect.flow_run_url"].startswith(env["PREFECT_UI_URL"])
    (version,) = client.search_model_versions("name = 'wine-mlp'")
    assert version.run_id == run.info.run_id

    # what `make demo` prints after the run: this run's model, and a Predict command that works as printed
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", log).group(1)
    lines = run_summary(client, flow_run_id, REPO / ".torchyard" / "test-demo")
    assert lines[0] == f"Champion:    models:/wine-mlp/{version.version} (run {run.info.run_id})", lines
    (predict_line,) = [line for line in lines if line.startswith("Predict:")]
    predicted = subprocess.run(shlex.split(predict_line.removeprefix("Predict:")), cwd=REPO, capture_output=True,
                               text=True, timeout=300)
    assert predicted.returncode == 0 and len(predicted.stdout.strip().splitlines()) == 6, predicted.stderr[-2000:]

    import mlflow.onnx

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)  # careful: this also sets os.environ["MLFLOW_TRACKING_URI"] for later tests
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.onnx.load_model(f"models:/wine-mlp/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert model.graph.input[0].name == "features"


def _flow_run_processes(flow_run_id: str) -> list[int]:
    """PIDs of the processes the worker started for this flow run (their environment names it)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def _state(flow_run_id: str, env: dict) -> str:
    out = prefect("flow-run", "inspect", flow_run_id, env=env, check=False).stdout
    match = re.search(r"type=StateType\.(\w+)|'type': '(\w+)'|\"type\": \"(\w+)\"", out)
    return next(g for g in match.groups() if g) if match else "UNKNOWN"


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_training_then_retry_resumes_and_matches_an_uninterrupted_run(stack, tmp_path):
    env, uri = stack
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30000, 16))
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(16)])
    frame["target"] = np.where(features[:, 0] + features[:, 1] * features[:, 2] > 0, "yes", "no")
    source = tmp_path / "resume.csv"
    frame.to_csv(source, index=False)
    params = ["--param", f'data={json.dumps({"source": str(source), "target": "target"})}',
              "--param", 'train={"n_epochs": 8, "batch_size": 32, "lr": 0.003, "early_stopping": {"enabled": false}}',
              "--param", 'export={"register_model": false}']

    started = prefect("deployment", "run", "train-flow/wine-classifier", *params, env=env)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    checkpoint = Path(env["TORCHYARD_WORK_DIR"]) / flow_run_id / "checkpoints" / "last.ckpt"
    client = MlflowClient(uri, uri)

    def epochs_logged():
        experiment = client.get_experiment_by_name("resume")
        runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'") \
            if experiment else []
        return runs and checkpoint.exists() and len(client.get_metric_history(runs[0].info.run_id, "val_loss")) >= 3

    _wait(epochs_logged, 300, "three epochs and a checkpoint")
    pids = _wait(lambda: _flow_run_processes(flow_run_id), 10, "the flow run's process")
    killed_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: _state(flow_run_id, env) in ("CRASHED", "FAILED"), 120, "the worker to mark the run crashed")

    retried = prefect("flow-run", "retry", flow_run_id, env=env, timeout=60, check=False)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    def finished():
        state = _state(flow_run_id, env)
        return state if state in ("COMPLETED", "FAILED", "CANCELLED") else None

    final = _wait(finished, 420, "the retried run to finish")
    assert final == "COMPLETED", prefect("flow-run", "logs", flow_run_id, env=env, check=False).stdout[-3000:]
    resumed_seconds = time.monotonic() - killed_at
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                                f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted({m.step for m in history}) == list(range(1, 9))  # every epoch, none lost, none extra
    logs = prefect("flow-run", "logs", flow_run_id, env=env).stdout
    assert re.search(r"resumed from .*last.ckpt after epoch [3-7]", logs), logs[-3000:]

    reference = prefect("deployment", "run", "train-flow/wine-classifier", *params, "--watch", env=env, timeout=420)
    reference_id = re.search(r"UUID: ([0-9a-f-]{36})", reference.stdout).group(1)
    (uninterrupted,) = client.search_runs([run.info.experiment_id], f"tags.`prefect.flow_run_id` = '{reference_id}'")
    for metric in ("test_accuracy", "test_f1", "test_auroc"):
        assert run.data.metrics[metric] == pytest.approx(uninterrupted.data.metrics[metric], abs=1e-6), metric
    print(f"killed after epoch >= 3; retry to completion took {resumed_seconds:.1f} s")
