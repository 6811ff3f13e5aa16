"""kill -9 of train.py mid-training, then the same command again: the orphaned MLflow run is marked KILLED with the
reason, and the new run resumes from its checkpoint with a whole epoch history (issue 14)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO


def test_rerun_after_kill_9_closes_the_orphan_and_resumes_from_its_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TORCHYARD_WORK_DIR": str(tmp_path / "work"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "train.py", "--data", "sklearn:breast_cancer", "--n_epochs", "40", "--patience", "50",
               "--batch_size", "16", "--hidden_size", "512", "--experiment", "recovery", "--no_baseline",
               "--model_fn", str(tmp_path / "m.pth")]
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list((tmp_path / "work").glob("*/checkpoints/last.ckpt")):
            assert first.poll() is None, "train.py ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
        time.sleep(1.0)  # an epoch or two more
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("recovery")
    (orphan,) = client.search_runs([experiment.experiment_id])
    assert orphan.info.status == "RUNNING"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert "marked KILLED" in output and "resumes from its checkpoint" in output
    killed = client.get_run(orphan.info.run_id)
    assert killed.info.status == "KILLED" and "ended without closing this run" in killed.data.tags["failure_reason"]
    (new,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != orphan.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags["torchyard.resumed_from"] == orphan.info.run_id
    steps = sorted(m.step for m in client.get_metric_history(new.info.run_id, "val_loss"))
    assert steps == list(range(1, int(new.data.metrics["epochs_run"]) + 1)), steps  # every epoch once
    assert "resumed from" in output and "after epoch 0" not in output
