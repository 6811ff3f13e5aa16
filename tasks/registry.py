"""The MLflow model registry as serving/registry.py's `Registry`: versions by number or alias, and the torchyard
model file (artifact `model_file/model.pth`) of the run that registered each."""
import os
import tempfile

import mlflow
from mlflow.exceptions import MlflowException

from serving.bundle import ModelBundle, ModelFileError, load_model_file
from serving.registry import ModelRef
from tasks import tracking


def fetch(name: str, version: str | None, alias: str | None) -> tuple[ModelBundle, ModelRef]:
    found, uri = _model_version(name, version, alias), _uri(name, version, alias)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar in flow and server logs
    with tempfile.TemporaryDirectory(prefix="torchyard-model-") as folder:  # read whole, then removed
        try:
            path = mlflow.artifacts.download_artifacts(run_id=found.run_id, artifact_path="model_file/model.pth",
                                                       dst_path=folder)
        except Exception as exc:  # MlflowException, OSError
            raise ModelFileError(f"{uri} (version {found.version}) has no torchyard model file in run "
                                 f"{found.run_id}: {exc}") from exc
        bundle = load_model_file(path)
    metrics = {k: float(v) for k, v in found.tags.items() if k.startswith(("test_", "val_"))} or bundle.metrics
    return bundle, ModelRef(uri, uri, found.name, str(found.version), alias, found.run_id, metrics)


def version(name: str, version: str | None, alias: str | None) -> str:
    return str(_model_version(name, version, alias).version)


def _uri(name: str, version: str | None, alias: str | None) -> str:
    return f"models:/{name}/{version}" if version else f"models:/{name}@{alias}"


def _model_version(name: str, version: str | None, alias: str | None):
    client = tracking.configure()  # where the store is: MLFLOW_TRACKING_URI or the repo's mlflow/ folder
    try:
        if version:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        what = f"version {version}" if version else f"alias '{alias}'"
        raise ModelFileError(f"{_uri(name, version, alias)}: registered model '{name}' has no {what} in the MLflow "
                             f"registry at {tracking.tracking_uri()} "
                             f"({exc.message.splitlines()[0]})") from exc
