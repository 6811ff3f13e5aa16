"""The sections of a run's config, in one list: each owned by the part of the code it configures. RunConfig
(flows/config.py) has one field per section and train.py generates its flags from their fields, so a setting is
declared once, here or in its owner's config module. Importing this module imports no torch, pandas or Prefect
(train.py --help reads it)."""
from pydantic import BaseModel, ConfigDict, Field

from models.config import ModelConfig
from preprocessing.config import DataConfig, ImageConfig, SplitConfig, TabularConfig, TextConfig
from tasks.parallel_config import ParallelConfig
from training.baseline import BaselineConfig
from training.config import TrainerConfig


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


# section name -> (config class, description); the order of the CLI's help
SECTIONS = {
    "data": (DataConfig, "Where the data is and what it holds."),
    "split": (SplitConfig, "Train/validation/test shares."),
    "preprocess": (TabularConfig, "Tables: nulls, scaling, categorical encoding."),
    "image": (ImageConfig, "Images: size, channels, augmentation."),
    "text": (TextConfig, "Texts: cleaning, tokens, vocabulary."),
    "model": (ModelConfig, "The network."),
    "train": (TrainerConfig, "Optimizer, schedule, early stopping, device."),
    "export": (ExportConfig, "ONNX export and the MLflow model registry."),
    "promote": (PromoteConfig, "Champion/challenger."),
    "parallel": (ParallelConfig, "Where per-file preprocessing (image decoding, text cleaning) runs: threads here, "
                 "or Dask."),
    "baseline": (BaselineConfig, "A scikit-learn model on the same split, logged beside the network's test "
                 "metrics."),
}
