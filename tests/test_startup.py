"""Fast start (issue 18): what train.py imports, which Prefect API it uses, the exporter and requirements of the
export step, the thread count, and that the immediate exit loses nothing. No timings are asserted here; the
timings are bench/bench_startup.py's."""
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_cli
from flows import prefect_server
from tests.conftest import REPO, free_port

HEAVY = ("torch", "mlflow", "prefect", "torchmetrics", "matplotlib", "albumentations", "cv2", "sklearn", "pandas")


def imported_modules(*args: str, env=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, names


def test_help_imports_nothing_heavy():
    done, names = imported_modules("train.py", "--help")
    assert done.returncode == 0 and "--data" in done.stdout
    assert not {name.split(".")[0] for name in names} & set(HEAVY), sorted(n for n in names if n.split(".")[0] in HEAVY)


def test_main_returns_instead_of_exiting(capsys):
    """Only the `python train.py` entry (cli) ends the process with os._exit; main() returns its code."""
    assert train_cli.main(["--n_epochs", "0"]) == 2
    assert "train.n_epochs" in capsys.readouterr().err


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    """Something that answers /api/health like a Prefect server; yields its API URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def test_a_configured_api_url_that_answers_is_used(health_server, tmp_path):
    env = {"PREFECT_API_URL": health_server, "PREFECT_HOME": str(tmp_path)}
    assert prefect_server.connect(env) == (health_server, None, "PREFECT_API_URL")
    assert env["PREFECT_API_URL"] == health_server


def test_the_active_profile_api_url_counts_as_configured(health_server, tmp_path):
    (tmp_path / "profiles.toml").write_text(
        f'active = "dev"\n[profiles.dev]\nPREFECT_API_URL = "{health_server}"\n[profiles.other]\n'
        'PREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    env = {"PREFECT_HOME": str(tmp_path)}
    assert prefect_server.configured_api_url(env) == health_server
    assert prefect_server.configured_api_url({**env, "PREFECT_PROFILE": "other"}) == "http://127.0.0.1:9/api"
    assert prefect_server.connect(env)[:2] == (health_server, None)


def test_the_local_stack_is_reused_only_when_it_answers_and_shares_the_prefect_home(health_server, tmp_path):
    state = tmp_path / "stack"
    state.mkdir()
    home = tmp_path / "stack-home"
    (state / "server.url").write_text(health_server)
    (state / "server.home").write_text(str(home))
    assert prefect_server.local_stack_url({}, state) == health_server  # the default home: the stack is the server
    assert prefect_server.local_stack_url({"PREFECT_HOME": str(home)}, state) == health_server
    assert prefect_server.local_stack_url({"PREFECT_HOME": str(tmp_path / "mine")}, state) is None
    (state / "server.url").write_text(f"http://127.0.0.1:{free_port()}/api")  # stopped without `make stop`
    assert prefect_server.local_stack_url({}, state) is None
    assert prefect_server.local_stack_url({}, tmp_path / "never-started") is None


def test_a_temporary_server_starts_answers_and_stops(tmp_path):
    """Nothing configured, no stack: Prefect's temporary server, on its own port and home, stopped by stop()."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    url, server, source = prefect_server.connect(env)
    try:
        assert server is not None and source == "a temporary server" and env["PREFECT_API_URL"] == url
        assert env["PREFECT_UI_URL"] == ""  # no UI link to a server that is gone after the run
        server.wait()
        assert prefect_server.answers(url)
        with urllib.request.urlopen(f"{url}/health") as response:
            assert response.status == 200
    finally:
        server.stop()
    assert server.process.poll() is not None and not prefect_server.answers(url)


def test_a_temporary_server_keeps_its_state_in_the_project_not_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(prefect_server, "TEMPORARY_HOME", tmp_path / "project-prefect")
    monkeypatch.setattr(prefect_server, "local_stack_url", lambda env: None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_PROFILES_PATH"] = str(tmp_path / "no-profiles.toml")
    url, server, source = prefect_server.connect(env)
    try:
        assert source == "a temporary server" and env["PREFECT_HOME"] == str(tmp_path / "project-prefect")
        server.wait()
        assert list((tmp_path / "project-prefect").glob("*.db")), "the server's database is in the project folder"
    finally:
        server.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_temporary_server_does_not_outlive_a_killed_train_py(tmp_path):
    parent = ("import os, sys, time\nfrom flows import prefect_server\n"
              "server = prefect_server.TemporaryServer(os.environ)\nserver.wait()\n"
              "print(server.process.pid, flush=True)\ntime.sleep(600)\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(process.stdout.readline())
        os.kill(process.pid, signal.SIGKILL)  # kill -9: no atexit, no finally
        process.wait()
        deadline = time.monotonic() + 60
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the temporary Prefect server outlived the process that started it"
    finally:
        process.kill()


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # not our child: raises; reaped zombies are gone either way
    except ChildProcessError:
        pass
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_a_configured_url_that_does_not_answer_gets_a_temporary_server_and_says_so(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_API_URL": dead, "PREFECT_HOME": str(tmp_path / "prefect")}
    url, server, source = prefect_server.connect(env)
    try:
        assert url != dead and env["PREFECT_API_URL"] == url and source.startswith(f"{dead} does not answer")
    finally:
        server.stop()


def test_threads_follow_the_networks_size():
    from models import build_model
    from models.config import ModelConfig
    from training.optim import cpu_threads_for

    small = build_model(ModelConfig(type="mlp").resolved("tabular", 32), 30, 2)
    wide = build_model(ModelConfig(type="mlp", hidden_size=2048).resolved("tabular", 32), 30, 2)
    cnn = build_model(ModelConfig(type="cnn").resolved("image", 32), 3, 10)
    assert cpu_threads_for(small, batch_size=256, available=8) == 1
    assert cpu_threads_for(wide, batch_size=256, available=8) == 8
    assert cpu_threads_for(cnn, batch_size=16, available=8) == 8  # weights reused per pixel: default threads


def test_log_model_requirements_are_the_installed_pins():
    import importlib.metadata

    from tasks.export import pip_requirements

    assert pip_requirements() == [f"onnx=={importlib.metadata.version('onnx')}",
                                  f"onnxruntime=={importlib.metadata.version('onnxruntime')}"]


@pytest.mark.parametrize("data_type, exporter", [("tabular", "TorchScript"), ("image", "TorchScript")])
def test_tables_and_images_use_the_fast_exporter_with_a_dynamic_batch(data_type, exporter):
    from models import build_model
    from models.config import ModelConfig
    from serving.export import parity
    from tasks.export import export_model

    torch.manual_seed(0)
    if data_type == "tabular":
        model, example = build_model(ModelConfig(type="mlp").resolved("tabular", 32), 12, 3), torch.randn(40, 12)
    else:
        model, example = build_model(ModelConfig(type="cnn").resolved("image", 16), 1, 4), torch.randn(40, 1, 16, 16)
    onnx_bytes, used = export_model(model.eval(), example, "probabilities", data_type)
    assert used == exporter
    for rows in (1, 3, 40):  # exported from 8 rows; any batch size runs
        assert parity(onnx_bytes, model, example[:rows].numpy(), 1e-4) < 1e-4


def test_texts_keep_the_torch_export_exporter():
    from models import build_model
    from models.config import ModelConfig
    from serving.export import parity
    from tasks.export import export_model

    model = build_model(ModelConfig(type="text", encoder="transformer").resolved("text", 32), 50, 3).eval()
    tokens = torch.randint(1, 50, (8, 12))
    onnx_bytes, used = export_model(model, tokens, "probabilities", "text")
    assert used == "torch.export"
    assert parity(onnx_bytes, model, torch.randint(1, 50, (5, 20)).numpy(), 1e-4) < 1e-4  # another token count


def test_a_failed_run_exits_with_its_code_and_stops_the_temporary_server(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "d.csv"), "--target", "species"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "error: target column 'species' not found" in done.stderr
    assert "Traceback" not in done.stderr
    (url,) = re.findall(r"Prefect API: (\S+) \(a temporary server\)", done.stderr)
    assert not prefect_server.answers(url)


@pytest.mark.usefixtures("prefect_harness")
def test_nothing_is_lost_by_the_immediate_exit(tmp_path, mlflow_client):
    """train.py against a running Prefect server (the session's): after the process has ended, the MLflow run, its
    artifacts and registered version, and the Prefect flow run with every task run and the last log lines are
    complete; and the tabular run imported no image or text stack."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    experiment, name = f"startup-{uuid.uuid4().hex[:8]}", f"startup-{uuid.uuid4().hex[:8]}"
    model_fn = tmp_path / "m.pth"
    done, modules = imported_modules("train.py", "--n_epochs", "3", "--experiment", experiment, "--model_name", name,
                                     "--model_fn", str(model_fn), env={"PREFECT_API_URL": api_url})
    assert done.returncode == 0, done.stderr[-3000:]
    # a table needs neither the image nor the text stack, nor the torch.export-based exporter's onnxscript
    assert not {"albumentations", "cv2", "preprocessing.image", "preprocessing.text", "onnxscript", "torchvision",
                "transformers", "torchmetrics"} & modules
    assert f"Prefect API: {api_url} (PREFECT_API_URL)" in done.stderr and "Traceback" not in done.stderr
    assert model_fn.exists() and model_fn.with_suffix(".onnx").exists()

    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert {"model_file/model.pth", "evaluate/confusion_matrix.png"} <= {
        f"{folder}/{a.path.split('/')[-1]}" for folder in ("model_file", "evaluate")
        for a in mlflow_client.list_artifacts(run.info.run_id, folder)}
    (version,) = mlflow_client.search_model_versions(f"name = '{name}'")
    assert version.run_id == run.info.run_id
    from mlflow.pyfunc import get_model_dependencies

    pinned = Path(get_model_dependencies(f"models:/{name}/{version.version}")).read_text()
    assert "onnxruntime==" in pinned and "onnx==" in pinned

    flow_run_id = run.data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        assert flow_run.state.is_completed()
        steps = {"collect", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "promote"}
        deadline = time.monotonic() + 120  # task-run states arrive as events; the server records them in the background
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            names = {t.name.rsplit("-", 1)[0] for t in task_runs if t.state and t.state.is_completed()}
            if steps <= names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert steps <= names
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    messages = [log.message for log in logs]
    assert any("registered as models:/" in m for m in messages)
    # every task's and the flow's own last line, sent by the log queue that the exit drains
    assert sum("Finished in state Completed" in m for m in messages) == len(task_runs) + 1
    assert np.isfinite(run.data.metrics["test_accuracy"])
