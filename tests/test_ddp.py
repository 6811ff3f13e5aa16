"""Data-parallel training: 2 CPU processes with gloo under torchrun match a single process."""
import json
import subprocess

import numpy as np
import pytest
import torch

from models import build_model
from models.config import ModelConfig
from tests.conftest import REPO, free_port
from training.config import DistributedConfig, TrainerConfig
from training.data import TensorData
from training.ddp import torchrun_command, write_job
from training.objectives import make_objective
from training.optim import make_trainer

MODEL = ModelConfig(type="mlp", n_layers=3, hidden_size=16, batch_norm=False, dropout=0.0)
TRAIN = TrainerConfig(n_epochs=4, batch_size=32, lr=0.01, early_stopping={"enabled": False},
                      scheduler={"name": "StepLR", "step_size": 2})


def _arrays(path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 12)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    np.savez(path, train_features=x[:256], train_targets=y[:256], val_features=x[256:], val_targets=y[256:])
    return x, y


def test_two_gloo_processes_match_a_single_process(tmp_path):
    x, y = _arrays(tmp_path / "arrays.npz")
    objective = make_objective("classification", 3)
    torch.manual_seed(7)
    network = build_model(MODEL, 12, objective.output_size)
    single = make_trainer(network, objective, TRAIN, 7, torch.device("cpu"), [])
    reference = single.fit(TensorData(torch.from_numpy(x[:256]), torch.from_numpy(y[:256]), 32),
                           TensorData(torch.from_numpy(x[256:]), torch.from_numpy(y[256:]), 32))

    job = write_job(tmp_path, arrays=tmp_path / "arrays.npz", model=MODEL, train=TRAIN, task="classification",
                    n_classes=3, input_size=12, seed=7, device="cpu")
    command = torchrun_command(job, DistributedConfig(nproc_per_node=2, master_port=free_port()))
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "history.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    for ours, theirs in zip(result["history"], reference, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)  # reduced across ranks
        assert ours["lr"] == pytest.approx(theirs["lr"])
    saved = torch.load(tmp_path / "network.pt", weights_only=True)["state_dict"]
    for name, value in single.model.state_dict().items():
        assert torch.allclose(saved[name], value, atol=1e-5), name
    assert (tmp_path / "last.ckpt").exists()
    assert done.stdout.count("epoch 4/4") == 1  # one process prints


@pytest.mark.usefixtures("prefect_harness")
def test_train_flow_launches_torchrun_and_logs_rank_0(mlflow_client):
    import uuid

    from flows.config import ExportConfig
    from flows.train_flow import train_flow
    from tests.test_flow import mlflow_run

    train = TrainerConfig(n_epochs=3, batch_size=16, lr=0.01,
                          distributed={"nproc_per_node": 2, "master_port": free_port()})
    state = train_flow(train=train, export=ExportConfig(register_model=False), experiment=f"ddp-{uuid.uuid4().hex[:6]}",
                       return_state=True)
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    assert run.data.params["train.distributed.nproc_per_node"] == "2"
    assert len(mlflow_client.get_metric_history(run.info.run_id, "val_loss")) == 3  # rank 0's epochs, once each
    assert run.data.metrics["test_accuracy"] > 0.6 and run.data.metrics["export_max_abs_diff"] < 1e-4
