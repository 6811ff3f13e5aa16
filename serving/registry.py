"""Where a served (or pretrained) model comes from: a .pth/.onnx path, or the MLflow registry.

References: `path/to/model.pth`, `path/to/model.onnx`, `models:/<name>/<version>`, `models:/<name>@<alias>`, or a
bare registered model name, which means `models:/<name>@champion`. Registry models are read from the artifact
`model_file/model.pth` of the run that registered them. MLflow is imported only for registry references.
"""
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from serving.bundle import ModelFileError, load_model_file

DEFAULT_ALIAS = "champion"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


@dataclass
class ModelRef:
    reference: str  # as given
    uri: str  # models:/name@alias, models:/name/3, or the file's absolute path
    name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"uri": self.uri, "name": self.name, "version": self.version, "alias": self.alias,
                "run_id": self.run_id, "metrics": self.metrics}


def registry_uri(reference: str) -> str | None:
    """The models:/ URI a reference means, or None for a file path."""
    if reference.startswith("models:/"):
        return reference
    if Path(reference).suffix.lower() in (".pth", ".pt", ".onnx") or "/" in reference or Path(reference).exists():
        return None
    return f"models:/{reference}@{DEFAULT_ALIAS}"


def resolve(reference: str) -> tuple[dict, ModelRef]:
    """The model bundle (what serving.inference.Predictor takes) and where it came from. ModelFileError when the
    reference does not lead to a torchyard model."""
    uri = registry_uri(reference)
    if uri is None:
        bundle = load_model_file(reference)
        run = bundle.get("run") or {}
        return bundle, ModelRef(reference, str(Path(reference).resolve()), Path(reference).stem,
                                run_id=run.get("run_id"), metrics=bundle.get("metrics") or {})
    client, version = _version(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar in flow and server logs
    try:
        import mlflow

        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="model_file/model.pth",
                                                   dst_path=tempfile.mkdtemp(prefix="torchyard-model-"))
    except Exception as exc:  # MlflowException, OSError
        raise ModelFileError(f"{uri} (version {version.version}) has no torchyard model file in run "
                             f"{version.run_id}: {exc}") from exc
    bundle = load_model_file(path)
    match = _URI.match(uri)
    metrics = {k: float(v) for k, v in version.tags.items() if k.startswith(("test_", "val_"))} or bundle.get("metrics")
    return bundle, ModelRef(reference, uri, version.name, str(version.version), match["alias"], version.run_id,
                            metrics or {})


def current_version(reference: str) -> str | None:
    """The registry version a reference points at now (None for files): cheap, for polling an alias."""
    uri = registry_uri(reference)
    return None if uri is None else str(_version(uri)[1].version)


def _version(uri: str):
    match = _URI.match(uri)
    if not match:
        raise ModelFileError(f"{uri} is not a registry URI; expected models:/<name>/<version> or "
                             "models:/<name>@<alias>")
    from mlflow.exceptions import MlflowException

    from tasks import tracking  # where the store is: MLFLOW_TRACKING_URI or the repo's mlflow/ folder

    client = tracking.configure()
    try:
        if match["version"]:
            return client, client.get_model_version(match["name"], match["version"])
        return client, client.get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException as exc:
        what = f"version {match['version']}" if match["version"] else f"alias '{match['alias']}'"
        raise ModelFileError(f"{uri}: registered model '{match['name']}' has no {what} in the MLflow registry at "
                             f"{tracking.tracking_uri()} ({exc.message.splitlines()[0]})") from exc
