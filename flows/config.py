"""The typed configuration of a train-flow run, composed from the sections each part of the core owns.

The flow takes the sections as separate parameters so that a deployment run can override one section
(`--param train='{"n_epochs": 5}'`) without restating the others; Prefect validates each against its schema.
"""
import hashlib
import inspect
import json
from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, create_model, model_validator

from flows.sections import SECTIONS, ExportConfig, PromoteConfig  # noqa: F401 - imported from here by users
from preprocessing import kinds
from preprocessing.errors import TorchyardError
from preprocessing.sources import dataset_name


class ConfigError(TorchyardError):
    """A config file or flag that cannot be used."""


class RunConfig(create_model("Sections", __config__=ConfigDict(extra="forbid"), **{
        name: (section, Field(default_factory=section, description=description))
        for name, (section, description) in SECTIONS.items()})):
    """The sections of flows/sections.py (one field each), plus the run's own settings."""

    experiment: str | None = Field(None, description="MLflow experiment; default: the dataset's name.")
    seed: int = 42
    model_fn: str | None = Field(None, description="Also write the model file here (plus .onnx beside it).")

    @model_validator(mode="after")
    def _model_fits_data(self):
        kind = kinds.get(self.data.data_type)
        self.model = self.model.resolved(self.data.data_type, self.image.image_size)
        if self.model.type not in kind.model_types and not self.model.pretrained:
            raise ValueError(f"model.type {self.model.type} cannot take {self.data.data_type} data; use "
                             + " or ".join(kind.model_types))
        kind.check_config(self)
        return self

    @property
    def dataset(self) -> str:
        return dataset_name(self.data.source)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.dataset

    @property
    def model_name(self) -> str:
        return self.export.model_name or f"{self.dataset}-{self.model.type}"

    def config_hash(self) -> str:
        """Identifies what was asked for (not where the model file goes): equal hashes, equal training."""
        asked = self.model_dump(mode="json", exclude={"model_fn", "promote", "parallel", "baseline"})
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:12]

    def flow_parameters(self) -> dict:
        return {name: getattr(self, name) for name in type(self).model_fields}


def takes_run_config(*first: inspect.Parameter, skip: tuple[str, ...] = ()):
    """Give a flow written as `fn(**parameters)` one typed parameter per RunConfig field (the sections of
    flows/sections.py, then experiment, seed, model_fn), less `skip`, after `first`: Prefect builds the deployment
    forms and validates `--param` from this signature, so a new section reaches every flow by being listed once."""
    fields = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=field.annotation,
                                default=field.get_default(call_default_factory=True))
              for name, field in RunConfig.model_fields.items() if name not in skip]

    def wrap(fn):
        parameters = [*first, *fields]
        fn.__signature__ = inspect.Signature(parameters, return_annotation=dict)
        fn.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": dict}
        return fn
    return wrap


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, split, preprocess, image, text, model, "
                          "train, export)")
    return loaded
