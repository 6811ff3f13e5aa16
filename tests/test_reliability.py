"""Failures of the surroundings: an unreachable tracking server, an output folder that cannot be written, and the
resource-limit flags."""
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from flows.config import ExportConfig
from preprocessing.errors import TorchyardError
from tests.conftest import REPO
from tests.test_flow import mlflow_run
from training.config import TrainerConfig


def test_unreachable_tracking_server_fails_in_seconds_naming_the_uri(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "train.py", "--n_epochs", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                            "PREFECT_HOME": str(tmp_path / "prefect")})
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert f"error: the MLflow tracking server {uri} is unreachable" in done.stderr
    assert "collect" not in done.stdout + done.stderr  # failed before any data was read
    assert "Traceback" not in done.stderr
    print(f"failed after {elapsed:.1f} s (including the temporary Prefect server's start)")


@pytest.mark.usefixtures("prefect_harness")
def test_an_unwritable_model_folder_fails_before_training_and_is_recorded(tmp_path, mlflow_client, fast_train):
    from flows.train_flow import train_flow

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model folder should be")
    state = train_flow(train=fast_train, model_fn=str(blocker / "m.pth"), experiment=f"rel-{uuid.uuid4().hex[:6]}",
                       return_state=True)
    assert state.is_failed()
    with pytest.raises(TorchyardError, match=f"cannot write to the model_fn folder {blocker}: it is a file, not a folder"):
        state.result()
    run = mlflow_run(mlflow_client, state)
    assert run.info.status == "FAILED" and "cannot write to the model_fn folder" in run.data.tags["failure_reason"]
    assert "train_loss" not in run.data.metrics


@pytest.mark.usefixtures("prefect_harness")
def test_cpu_thread_cap_is_applied_and_recorded(mlflow_client):
    from flows.train_flow import train_flow

    before = torch.get_num_threads()
    try:
        state = train_flow(train=TrainerConfig(n_epochs=1, cpu_threads=1), experiment=f"rel-{uuid.uuid4().hex[:6]}",
                           return_state=True)
        assert state.is_completed(), state.message
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert mlflow_run(mlflow_client, state).data.params["train.cpu_threads"] == "1"


@pytest.mark.usefixtures("prefect_harness")
def test_two_runs_at_once_on_one_store_both_complete_and_register(mlflow_client, fast_train):
    """Two train-flow runs at the same time, one Prefect API and one SQLite MLflow store, the same model name."""
    from flows.train_flow import train_flow

    name = f"both-{uuid.uuid4().hex[:6]}"
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(train_flow, train=fast_train.model_copy(update={"lr": lr}),
                               export=ExportConfig(model_name=name), experiment=f"rel-{name}", return_state=True)
                   for lr in (0.01, 0.02)]
        states = [f.result() for f in futures]
    assert all(s.is_completed() for s in states), [s.message for s in states]
    assert {mlflow_run(mlflow_client, s).info.status for s in states} == {"FINISHED"}
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert mlflow_client.get_model_version_by_alias(name, "champion") is not None
