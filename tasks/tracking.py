"""MLflow plumbing shared by the flow and its tasks: where the store is, and logging to one run by id.

Tasks log through MlflowClient with an explicit run id rather than the fluent API's thread-local active run, so
logging works the same whether Prefect runs a task inline or in a worker thread.
"""
import contextlib
import functools
import json
import os
import threading
import time
from pathlib import Path
import urllib.error
import urllib.request
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param
from mlflow.exceptions import MlflowException

from preprocessing.errors import TorchyardError, user_facing

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORE = REPO / "mlflow"
MAX_PARAM_LENGTH = 6000


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store under the repo's mlflow/ folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


def sqlite_path(uri: str | None = None) -> Path | None:
    """The database file of a SQLite tracking URI (default: this process's), else None. SQLAlchemy's rule:
    `sqlite:///relative.db`, `sqlite:////absolute.db`."""
    uri = uri or tracking_uri()
    return Path(uri.split(":///", 1)[1]) if uri.startswith("sqlite:///") else None


def artifact_root() -> str:
    """Artifacts sit beside a local SQLite database; a remote server decides for itself."""
    store = sqlite_path()
    return (store.parent / "artifacts").resolve().as_uri() if store else ""


class TrackingUnavailable(TorchyardError):
    """The MLflow store cannot be reached or written."""


def check_reachable(timeout: float = 5.0) -> None:
    """Fail in seconds, naming the URI, when the tracking server does not answer or a local store's folder
    cannot be created (MLflow's own client would retry for minutes before giving up)."""
    uri = tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            return  # something answered; MLflow reports its own errors from here on
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"the MLflow tracking server {uri} is unreachable ({reason}); start it or "
                                      "point MLFLOW_TRACKING_URI at one that runs") from None
    elif store := sqlite_path(uri):
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"cannot create the MLflow store folder {store.parent}: {exc.strerror}") from None
        check_sqlite_store(store)


def check_sqlite_store(path: Path, full_check_below_mb: int = 256) -> None:
    """TrackingUnavailable naming the file when a local SQLite store is not a database or is damaged (SQLAlchemy's
    traceback said neither which file nor what to do). PRAGMA quick_check reads the whole file, so it runs on
    stores up to `full_check_below_mb`; larger ones get the header check only."""
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return  # MLflow creates it
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if path.stat().st_size < full_check_below_mb * 2**20:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(result)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return  # busy, not broken: MLflow waits for it
        raise TrackingUnavailable(f"the MLflow store {path} is damaged ({exc}); restore it from a backup, or move it "
                                  f"aside (mv {path} {path}.broken) and a new, empty store is created on the next "
                                  "run (the artifacts beside it are not touched)") from None


def record_failure(run_id: str, exc: BaseException) -> str:
    """Tag the run with why it failed: the user-facing sentence, or the exception type and message of a bug."""
    reason = str(user_facing(exc) or f"{type(exc).__name__}: {exc}")
    set_tags(run_id, {"failure_reason": reason[:5000]})
    return reason


def configure() -> MlflowClient:
    """Point the fluent API at the store and return a client for it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return _client(uri)


def warm_up_store() -> None:
    """Import the SQL store's modules (SQLAlchemy, alembic, MLflow's table models: about a second, most of the
    first client's cost) ahead of configure(), on train.py's warm-up thread. Nothing for a tracking server."""
    if not tracking_uri().startswith(("http:", "https:", "databricks")):
        import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


@functools.cache
def _client(uri: str) -> MlflowClient:
    if store := sqlite_path(uri):
        store.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(uri, uri)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on training runs, not GenAI

# MLflow 3.17's runs list shows no metric, parameter or tag column until a user picks them, and keeps that choice in
# the browser. A saved view is an experiment tag `mlflow.sharedViewState.<id>` (what the UI's *Views* menu writes):
# every browser lists it under *Views*, and `?viewStateShareKey=<id>` opens it. Columns that no run of the experiment
# has are not shown, so one list serves classification and regression; the test metrics come first.
RUNS_VIEW = "torchyard"
RUNS_VIEW_NAME = "torchyard: key metrics"
RUNS_VIEW_COLUMNS = (
    [f"metrics.`{k}`" for k in ("test_accuracy", "test_f1", "test_auroc", "test_r2", "test_mae", "test_mse",
                                "baseline_test_accuracy", "margin_test_accuracy", "baseline_test_r2",
                                "margin_test_r2", "epochs_run")]
    + [f"params.`{k}`" for k in ("model.type", "train.lr", "train.n_epochs")]
    + [f"tags.`{k}`" for k in ("promotion.decision", "registered_model")])


def runs_view_tag() -> tuple[str, str]:
    """The saved view's experiment tag: its key and the JSON envelope the UI reads ({name, createdAt, updatedAt,
    state}, the state a JSON string of the runs list's UI state: columns shown, their order and widths)."""
    now = int(time.time() * 1000)
    widths = {c: 180 if c.startswith(("metrics.`baseline_", "metrics.`margin_")) else 150
              for c in RUNS_VIEW_COLUMNS if c.startswith("metrics.`") and c != "metrics.`epochs_run`"}
    state = json.dumps({"selectedColumns": RUNS_VIEW_COLUMNS, "columnOrder": RUNS_VIEW_COLUMNS,
                        "columnWidths": widths})
    return f"mlflow.sharedViewState.{RUNS_VIEW}", json.dumps({"name": RUNS_VIEW_NAME, "createdAt": now,
                                                               "updatedAt": now, "state": state})


def ui_url(experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI (MLFLOW_UI_URL, default http://127.0.0.1:5000) in its *Model training* view (a fresh
    browser opens an experiment on the GenAI one): a run's page, or the experiment's runs list in the saved view."""
    base = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created when missing, with the training-runs kind and the saved view (added to an
    existing experiment once; a view a user has since changed in the UI is theirs and left alone)."""
    view_key, view = runs_view_tag()
    tags = {**EXPERIMENT_KIND, view_key: view}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root()
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=tags)
    for key, value in tags.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def flat(prefix: str, values: dict):
    """{'a': {'b': 1}} -> ('prefix.a.b', 1): step-prefixed names that compare across runs in the UI."""
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        yield from flat(name, value) if isinstance(value, dict) else [(name, value)]


DUPLICATE_KEY_ERRORS = ("IntegrityError", "UniqueViolation", "UNIQUE constraint")  # SQLite, PostgreSQL, MySQL


def log_dataset(client: MlflowClient, run_id: str, dataset: DatasetInput, attempts: int = 5) -> None:
    """client.log_inputs, again when another run inserted the same new dataset at that moment. MLflow's store looks
    for the dataset, then inserts it: two runs of the same data in one experiment at once collide on the datasets
    table's unique key (one of them failed in collect); the next attempt finds the row and links it to the run."""
    for attempt in range(attempts):
        try:
            return client.log_inputs(run_id, datasets=[dataset])
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(s in str(exc) for s in DUPLICATE_KEY_ERRORS):
                raise
            time.sleep(0.05 * (attempt + 1))


def log_params(run_id: str, prefix: str, values: dict) -> None:
    params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flat(prefix, values)]
    configure().log_batch(run_id, params=params)


# MLflow's asynchronous logging queue is one per process, and ending any run shuts it down: a run ended in one thread
# while another thread enqueues its epoch metrics failed that thread ("cannot schedule new futures after shutdown";
# concurrent sweep trials). Enqueueing and ending runs take turns.
_ASYNC_QUEUE = threading.Lock()


def log_metrics(run_id: str, values: dict, step: int = 0, synchronous: bool = True):
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
    if synchronous:
        return configure().log_batch(run_id, metrics=metrics)
    with _ASYNC_QUEUE:
        return configure().log_batch(run_id, metrics=metrics, synchronous=False)


def set_terminated(run_id: str, status: str = "FINISHED") -> None:
    """End a run (FINISHED, FAILED, KILLED) without racing another thread's asynchronous logging."""
    with _ASYNC_QUEUE:
        configure().set_terminated(run_id, status)


def set_tags(run_id: str, tags: dict) -> None:
    client = configure()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def active_run(run_id: str):
    """The fluent API's active run for `run_id`, for the few calls that need one (log_model).

    Tasks run inline in the flow's thread, where the flow's run is already active. If Prefect runs a task in
    another thread, the run is attached there; leaving it marks it FINISHED for a moment, until the flow sets
    the final status."""
    run = mlflow.active_run()
    if run is not None and run.info.run_id == run_id:
        yield run
        return
    with mlflow.start_run(run_id=run_id) as run:
        yield run
