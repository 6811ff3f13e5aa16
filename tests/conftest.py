"""Shared fixtures. Every test session gets its own MLflow store, Prefect database and work folder, so tests never
touch the repo's mlflow/ or .torchyard/ and can run in parallel with a demo."""
import os
import tempfile
from pathlib import Path

import pytest

from flows.prefect_server import free_port  # noqa: F401 - the tests' loopback ports

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="torchyard-tests-"))
_SESSION_URI = f"sqlite:///{_SESSION_DIR / 'mlflow' / 'mlflow.db'}"
os.environ["MLFLOW_TRACKING_URI"] = _SESSION_URI
os.environ["TORCHYARD_WORK_DIR"] = str(_SESSION_DIR / "work")
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["TORCHYARD_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
# train.py subprocesses run cold and leave no warm process behind (flows/warm_process.py); its own tests turn it on
os.environ["TORCHYARD_WARM_PROCESS"] = "0"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite) for flow tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mlflow_client():
    from tasks import tracking

    return tracking.configure()


@pytest.fixture
def wine_frame():
    from preprocessing.sources import load_sample

    return load_sample("wine")


@pytest.fixture(scope="session")
def fast_train():
    """Trainer settings small enough for tests; still enough to learn the bundled samples."""
    from training.config import TrainerConfig

    return TrainerConfig(n_epochs=6, batch_size=32, lr=0.01)


@pytest.fixture(autouse=True)
def _keep_the_session_store():
    """mlflow.set_tracking_uri also rewrites os.environ["MLFLOW_TRACKING_URI"]; a test that points MLflow elsewhere
    must not send every later test's runs there."""
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != _SESSION_URI:
        import mlflow

        mlflow.set_tracking_uri(_SESSION_URI)
