"""The typed configuration of a train-flow run, composed from the sections each part of the core owns.

The flow takes the sections as separate parameters so that a deployment run can override one section
(`--param train='{"n_epochs": 5}'`) without restating the others; Prefect validates each against its schema.
"""
import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.config import ModelConfig
from preprocessing import kinds
from preprocessing.config import DataConfig, ImageConfig, SplitConfig, TabularConfig, TextConfig
from preprocessing.errors import TorchyardError
from preprocessing.sources import dataset_name
from tasks.parallel import ParallelConfig
from training.baseline import BaselineConfig
from training.config import TrainerConfig


class ConfigError(TorchyardError):
    """A config file or flag that cannot be used."""


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, description="Registered model name; default '<dataset>-<model type>'.")
    register_model: bool = Field(True, description="Register the exported model in the MLflow registry.")
    tolerance: float = Field(1e-4, gt=0, description="Max |ONNX Runtime - torch| allowed on the test rows.")


class PromoteConfig(BaseModel):
    """Champion/challenger: which registry version the alias `champion` points at after a run."""

    model_config = ConfigDict(extra="forbid")

    metric: str | None = Field(None, description="Test metric compared on the new test split; default "
                               "test_accuracy (classification) or test_r2 (regression). Lower is better for "
                               "*_mse, *_mae and *_loss.")
    min_improvement: float = Field(0.0, ge=0, description="The challenger must beat the champion by more than 0 "
                                   "and by at least this much to become champion.")
    skip_unchanged: bool = Field(False, description="Retraining: when the data fingerprint and config hash equal "
                                 "those the champion was trained on, record 'no new data' and stop without "
                                 "training (the deployments set this).")

    def metric_for(self, task: str) -> str:
        return self.metric or ("test_r2" if task == "regression" else "test_accuracy")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: TabularConfig = Field(default_factory=TabularConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainerConfig = Field(default_factory=TrainerConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Where per-file preprocessing "
                                     "(image decoding, text cleaning) runs: threads here, or Dask.")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig, description="A scikit-learn model on the same "
                                     "split, logged beside the network's test metrics.")
    experiment: str | None = Field(None, description="MLflow experiment; default: the dataset's name.")
    seed: int = 42
    model_fn: str | None = Field(None, description="Also write the model file here (plus .onnx beside it).")

    @model_validator(mode="after")
    def _model_fits_data(self):
        kind = kinds.get(self.data.data_type)
        self.model = self.model.resolved(self.data.data_type, self.image.image_size)
        if self.model.type != kind.model_type and not self.model.pretrained:
            raise ValueError(f"model.type {self.model.type} cannot take {self.data.data_type} data; use "
                             f"{kind.model_type}")
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
        config_json = json.dumps(asked, sort_keys=True)
        return hashlib.sha256(config_json.encode()).hexdigest()[:12]

    def flow_parameters(self) -> dict:
        return {name: getattr(self, name) for name in type(self).model_fields}


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
