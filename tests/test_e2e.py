"""End to end as a user deploys: a real `prefect server` on a free loopback port, a process worker, the
deployments of prefect.yaml, `prefect deployment run ... --watch`, then the MLflow store is checked."""
import json
import socket

import pytest
from mlflow import MlflowClient

from scripts.local_stack import deploy, prefect, stack_env, start_server, start_worker, stop

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stack(tmp_path):
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


def test_deployment_run_completes_and_is_tracked(stack, tmp_path):
    env, uri = stack
    rejected = prefect("deployment", "run", "train-flow/wine-classifier", "--param", 'train={"lr": "fast"}',
                       env=env, check=False)
    assert rejected.returncode != 0 and "train.lr" in rejected.stdout + rejected.stderr

    train = {"n_epochs": 4, "batch_size": 32, "lr": 0.01, "scheduler": {"name": "StepLR", "step_size": 2}}
    result = prefect("deployment", "run", "train-flow/wine-classifier", "--param", f"train={json.dumps(train)}",
                     "--watch", env=env, timeout=420)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "Flow run finished successfully in 'Completed'" in log, (
        log[-3000:] + (tmp_path / "worker.log").read_text()[-5000:])

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

    import mlflow.onnx

    mlflow.set_tracking_uri(uri)
    model = mlflow.onnx.load_model(f"models:/wine-mlp/{version.version}")
    assert model.graph.input[0].name == "features"
