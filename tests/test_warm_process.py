"""The warm process (flows/warm_process.py, issue 18): a train.py run after the first forks from a process that has
done the imports, and loses nothing by it; it is matched on the environment and dropped when the code changes."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from flows import warm_process
from tests.conftest import REPO


def train_py(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def wait_until(condition, what: str, seconds: float = 600) -> None:
    """A generous cap: the warm process imports torch, Prefect and MLflow, slow on a busy 2-core machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds:.0f} s")
        time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def warm_env():
    """The session's environment with warm processes on and a short socket folder of this test's own (a Unix socket
    path has at most 107 bytes); every warm process started under it is stopped afterwards."""
    short = Path(tempfile.mkdtemp(prefix="tw", dir="/tmp"))
    env = {**os.environ, "TORCHYARD_WARM_PROCESS": "300", "TMPDIR": str(short)}
    yield env
    warm_process.stop_all(env)
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_harness")
def test_the_second_run_forks_from_the_warm_process_and_loses_nothing(warm_env, tmp_path, mlflow_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    env = {**warm_env, "PREFECT_API_URL": PREFECT_API_URL.value()}
    experiment, name = f"warm-{uuid.uuid4().hex[:8]}", f"warm-{uuid.uuid4().hex[:8]}"
    args = ["--n_epochs", "2", "--experiment", experiment, "--model_name", name]
    first = train_py(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "; warm process" not in first.stderr  # the first one runs cold
    assert "a warm process takes the next runs" in first.stderr  # and says that it leaves one behind
    log = warm_process.socket_path(env).with_suffix(".log")
    wait_until(lambda: log.exists() and "ready" in log.read_text(), "the warm process is ready")

    model_fn = tmp_path / "m.pth"
    second = train_py(*args, "--model_fn", str(model_fn), env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    daemon = int(re.search(r"warm process (\d+)\)", second.stderr).group(1))
    assert "Traceback" not in second.stderr and "done: test_accuracy" in second.stdout
    assert model_fn.exists() and model_fn.with_suffix(".onnx").exists()  # written in the caller's folder

    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment).experiment_id],
                                     order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    latest = runs[0]
    assert {"test_accuracy", "train_loss", "baseline_test_accuracy"} <= set(latest.data.metrics)
    assert len(mlflow_client.get_metric_history(latest.info.run_id, "train_loss")) == 2  # every epoch's batch sent
    assert "model_file/model.pth" in {a.path for a in mlflow_client.list_artifacts(latest.info.run_id, "model_file")}
    assert {v.run_id for v in mlflow_client.search_model_versions(f"name = '{name}'")} == {r.info.run_id for r in runs}
    with get_client(sync_client=True) as client:
        flow_run_id = latest.data.tags["prefect.flow_run_id"]
        (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.state.is_completed()

    bad = train_py("--data", str(tmp_path / "missing.csv"), env=env)  # the caller's stderr and exit code
    assert bad.returncode != 0 and "missing.csv" in bad.stderr and f"warm process {daemon})" in bad.stderr
    assert "Traceback" not in bad.stderr

    # the caller killed (kill -9, a closed terminal): its run stops as a cold one would, not unseen
    started = time.monotonic()
    long_run = subprocess.Popen([sys.executable, "train.py", "--n_epochs", "100000", "--patience", "100000",
                                 "--experiment", f"{experiment}-killed"], cwd=REPO, env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in long_run.stderr:
        if found := re.search(r"MLflow run ([0-9a-f]{32})", line):
            killed_run = found.group(1)
        if "epoch 1/100000" in line:
            break
    time.sleep(max(0.0, started + 15 - time.monotonic()))  # a warm run lives past the warm process's socket timeout
    assert long_run.poll() is None and mlflow_client.get_run(killed_run).info.status == "RUNNING"
    long_run.kill()
    long_run.wait()
    wait_until(lambda: mlflow_client.get_run(killed_run).info.status != "RUNNING", "the orphaned run stops", 300)
    assert mlflow_client.get_run(killed_run).info.status == "FAILED"
    assert len(mlflow_client.get_metric_history(killed_run, "train_loss")) < 100000

    other = train_py(*args, env={**env, "TORCHYARD_SOME_SETTING": "x"})  # another environment: not this process
    assert other.returncode == 0 and f"warm process {daemon})" not in other.stderr

    assert warm_process.stop(env)
    wait_until(lambda: not alive(daemon), "the warm process exits when told to stop", 120)
    assert not warm_process.socket_path(env).exists()


def test_the_match_is_on_the_environment_less_what_a_shell_changes_per_command():
    env = {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "sqlite:///a.db", "PWD": "/a", "SHLVL": "1"}
    assert warm_process.key(env) == warm_process.key({**env, "PWD": "/b", "SHLVL": "2", "_": "/usr/bin/env"})
    assert warm_process.key(env) != warm_process.key({**env, "MLFLOW_TRACKING_URI": "sqlite:///b.db"})
    assert warm_process.key(env) != warm_process.key({**env, "OMP_NUM_THREADS": "1"})


def test_a_folder_with_prefect_settings_files_gets_its_own(tmp_path):
    """Prefect reads prefect.toml, .env and pyproject.toml from the working folder when it is imported."""
    env = {"PATH": "/usr/bin"}
    plain, other, configured = tmp_path / "plain", tmp_path / "other", tmp_path / "configured"
    for folder in (plain, other, configured):
        folder.mkdir()
    assert warm_process.key(env, str(plain)) == warm_process.key(env, str(other))
    (configured / "prefect.toml").write_text('[logging]\nlevel = "WARNING"\n')
    before = warm_process.key(env, str(configured))
    assert before != warm_process.key(env, str(plain))
    (configured / "prefect.toml").write_text('[logging]\nlevel = "ERROR"\n')
    assert warm_process.key(env, str(configured)) != before


def test_it_is_dropped_when_loaded_code_or_installed_packages_change(tmp_path):
    fingerprint = warm_process._Fingerprint()
    assert any(path.endswith("flows/warm_process.py") for path in fingerprint.files)  # the project's modules
    assert not fingerprint.changed()
    module = tmp_path / "module.py"
    module.write_text("x = 1\n")
    fingerprint.files[str(module)] = os.stat(module).st_mtime_ns
    assert not fingerprint.changed()
    os.utime(module, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fingerprint.changed()


@pytest.mark.parametrize("value, seconds", [("", 600.0), ("0", 0.0), ("off", 0.0), ("90", 90.0)])
def test_the_setting(value, seconds):
    assert warm_process.idle_seconds({"TORCHYARD_WARM_PROCESS": value}) == seconds


def test_the_socket_folder_is_private(tmp_path):
    path = warm_process.folder({"TMPDIR": str(tmp_path)})
    assert path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o755)
    with pytest.raises(PermissionError):
        warm_process.folder({"TMPDIR": str(tmp_path)})
