"""Where a served (or pretrained) model comes from: a .pth/.onnx path, or a model registry.

References: `path/to/model.pth`, `path/to/model.onnx`, `models:/<name>/<version>`, `models:/<name>@<alias>`, or a
bare registered model name, which means `models:/<name>@champion`. Files are read here; registry references are
handed to a `registry` object (tasks/registry.py, MLflow) that the caller passes in, so serving itself imports
neither MLflow nor Prefect and file models serve on a machine without them.
"""
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from serving.bundle import ModelBundle, ModelFileError, load_model_file

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
        return {k: v for k, v in asdict(self).items() if k != "reference"}


class Registry(Protocol):
    def fetch(self, name: str, version: str | None, alias: str | None) -> tuple[ModelBundle, ModelRef]: ...
    def version(self, name: str, version: str | None, alias: str | None) -> str: ...


def registry_uri(reference: str) -> str | None:
    """The models:/ URI a reference means, or None for a file path."""
    if reference.startswith("models:/"):
        return reference
    if Path(reference).suffix.lower() in (".pth", ".pt", ".onnx") or "/" in reference or Path(reference).exists():
        return None
    return f"models:/{reference}@{DEFAULT_ALIAS}"


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """models:/name/version or models:/name@alias -> (name, version, alias)."""
    match = _URI.match(uri)
    if not match:
        raise ModelFileError(f"{uri} is not a registry URI; expected models:/<name>/<version> or "
                             "models:/<name>@<alias>")
    return match["name"], match["version"], match["alias"]


def resolve(reference: str, registry: Registry | None = None) -> tuple[ModelBundle, ModelRef]:
    """The model bundle (what serving.inference.Predictor takes) and where it came from. ModelFileError when the
    reference does not lead to a torchyard model."""
    uri = registry_uri(reference)
    if uri is None:
        bundle = load_model_file(reference)
        return bundle, ModelRef(reference, str(Path(reference).resolve()), Path(reference).stem,
                                run_id=bundle.run.get("run_id"), metrics=bundle.metrics)
    bundle, ref = _registry(uri, registry).fetch(*parse(uri))
    ref.reference = reference
    return bundle, ref


def current_version(reference: str, registry: Registry | None = None) -> str | None:
    """The registry version a reference points at now (None for files): cheap, for polling an alias."""
    uri = registry_uri(reference)
    return None if uri is None else _registry(uri, registry).version(*parse(uri))


def _registry(uri: str, registry: Registry | None) -> Registry:
    if registry is None:
        raise ModelFileError(f"{uri} is a registry reference but no model registry is connected; give a .pth or "
                             ".onnx path, or serve it with python -m serving")
    return registry
