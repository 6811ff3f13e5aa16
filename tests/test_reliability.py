"""Failures of the surroundings: an unreachable tracking server, an output folder that cannot be written, and the
resource-limit flags."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from flows.config import ExportConfig
from preprocessing.errors import TorchyardError
from tests.conftest import REPO, free_port
from tests.test_flow import mlflow_run
from training.config import TrainerConfig


def test_unreachable_tracking_server_fails_in_seconds_naming_the_uri(tmp_path):
    port = free_port()  # nothing listens there
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


def test_a_relative_sqlite_store_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    from tasks import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store/mlflow.db")  # SQLAlchemy: relative to the cwd
    assert tracking.sqlite_path() == Path("store/mlflow.db")
    assert tracking.artifact_root() == (tmp_path / "store" / "artifacts").as_uri()
    assert tracking.sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert tracking.sqlite_path("http://127.0.0.1:5000") is None


def test_a_damaged_mlflow_store_is_named_with_what_to_do_in_train_py_and_serving(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))  # the header survived, the pages did not
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "PREFECT_HOME": str(tmp_path / "prefect")}
    for command in (["train.py", "--n_epochs", "1"], ["serve.py", "--model", "models:/wine-mlp@champion"]):
        done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=env)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert f"the MLflow store {store} is damaged" in done.stderr and f"mv {store} {store}.broken" in done.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_an_unwritable_model_folder_fails_before_training_and_is_recorded(tmp_path, mlflow_client, fast_train):
    from flows.train_flow import train_flow

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model folder should be")
    state = train_flow(train=fast_train, model_fn=str(blocker / "m.pth"), experiment=f"rel-{uuid.uuid4().hex[:6]}",
                       return_state=True)
    assert state.is_failed()
    message = f"cannot write to the model_fn folder {blocker}: it is a file, not a folder"
    with pytest.raises(TorchyardError, match=message):
        state.result()
    run = mlflow_run(mlflow_client, state)
    assert run.info.status == "FAILED" and "cannot write to the model_fn folder" in run.data.tags["failure_reason"]
    assert "train_loss" not in run.data.metrics

    folder = tmp_path / "models"
    folder.mkdir()
    state = train_flow(train=fast_train, model_fn=str(folder), experiment=f"rel-{uuid.uuid4().hex[:6]}",
                       return_state=True)
    assert state.is_failed() and "is a folder; give the model file's name" in state.message
    assert "train_loss" not in mlflow_run(mlflow_client, state).data.metrics


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


def test_two_runs_logging_the_same_new_dataset_at_once_both_record_it(tmp_path):
    """MLflow's store looks for a dataset, then inserts it: two runs of the same data in one experiment at the same
    moment collided on the unique key and one failed in collect (UNIQUE constraint failed: datasets...; about two
    pairs in three here without tracking.log_dataset's retry)."""
    import threading

    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from tasks import tracking

    client = MlflowClient(f"sqlite:///{tmp_path / 'race.db'}")
    experiment = client.create_experiment("race")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    together, errors = threading.Barrier(2), []

    def log(run_id: str, i: int) -> None:
        dataset = Dataset(name=f"data{i}", digest=f"digest{i}", source_type="local", source="{}")
        together.wait()
        try:
            tracking.log_dataset(client, run_id, DatasetInput(dataset, [InputTag("mlflow.data.context", "training")]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    for i in range(20):
        threads = [threading.Thread(target=log, args=(run_id, i)) for run_id in runs]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors, errors[0]
    for run_id in runs:
        assert sorted(d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs) == \
            sorted(f"data{i}" for i in range(20))


def test_tracking_server_down_mid_training_loses_no_epoch(tmp_path):
    """A real `mlflow server`, killed after the second epoch and back 5 s later: MLflow's client retries the
    metric batches, the run completes, and every epoch is recorded once."""
    import signal
    import threading
    import urllib.request

    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    port = free_port()
    db = tmp_path / "server.db"

    def start():
        return subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                                 f"sqlite:///{db}", "--artifacts-destination", str(tmp_path / "artifacts"),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(server):
        deadline = time.monotonic() + 600  # a busy machine can take minutes; a dead server fails at once
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"mlflow server did not start (exit code {server.poll()})")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30000, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame["target"] = np.where(x[:, 0] > 0, "a", "b")
    frame.to_csv(tmp_path / "outage.csv", index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "TORCHYARD_WORK_DIR": str(tmp_path / "work")}
    servers, lines, process = [start()], [], None
    restart = threading.Timer(5, lambda: servers.__setitem__(1, start()))
    try:  # every server and the run end with the test, whatever fails
        wait_healthy(servers[0])
        process = subprocess.Popen([sys.executable, "train.py", "--data", str(tmp_path / "outage.csv"), "--n_epochs",
                                    "6", "--batch_size", "32", "--patience", "20"], cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in process.stdout:
            lines.append(line)
            if "epoch 2/6" in line and len(servers) == 1:
                os.killpg(servers[0].pid, signal.SIGKILL)
                servers[0].wait()
                servers.append(None)
                restart.start()
        assert process.wait(timeout=300) == 0, "".join(lines[-30:])
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if restart.is_alive():
            restart.join()  # the restart may still be pending
        for server in servers:
            if server is not None and server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
    assert any("Connection refused" in line for line in lines)  # the outage really happened mid-run
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3, 4, 5, 6]


def test_ending_a_run_while_another_thread_logs_asynchronously_loses_nothing(mlflow_client):
    """MLflow's asynchronous logging queue is one per process and ending any run shuts it down: concurrent sweep
    trials failed with "cannot schedule new futures after shutdown". The enqueue is slowed to make the race sure."""
    import threading

    from tasks import tracking

    experiment = tracking.ensure_experiment(mlflow_client, f"race-{uuid.uuid4().hex[:6]}")
    logging_run, ended_run = (mlflow_client.create_run(experiment).info.run_id for _ in range(2))
    tracking.log_metrics(logging_run, {"x": 0.0}, synchronous=False).wait()  # the process's queue is active
    queue = mlflow_client._tracking_client.store._async_logging_queue
    put, entered = queue._queue.put, threading.Event()

    def slow_put(item, *args, **kwargs):
        entered.set()
        time.sleep(3)  # longer than the queue's shutdown (its worker polls the queue each second)
        return put(item, *args, **kwargs)

    queue._queue.put = slow_put
    try:
        with ThreadPoolExecutor(1) as pool:
            logged = pool.submit(lambda: tracking.log_metrics(logging_run, {"x": 1.0}, step=1,
                                                              synchronous=False).wait())
            assert entered.wait(60)
            tracking.set_terminated(ended_run)
            logged.result()
    finally:
        del queue._queue.put
    assert [m.value for m in mlflow_client.get_metric_history(logging_run, "x")] == [0.0, 1.0]
    assert mlflow_client.get_run(ended_run).info.status == "FINISHED"
