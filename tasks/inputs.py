"""What the tasks share: logging what a kind reports for a step; the fitted transform of a run and, through its
data type's kind (preprocessing/kinds/), the batch sources and model inputs of a split."""
import json
from pathlib import Path

import numpy as np
import torch

from preprocessing import kinds
from preprocessing.kinds.base import Record
from preprocessing.steps import Prepared
from tasks import tracking

PARITY_ROWS = 512


def record(run_id: str, step: str, what: Record, logger) -> None:
    """Log what a kind reported for a step: params under the step's prefix, metrics, artifacts, info lines."""
    for line in what.lines:
        logger.info(line)
    if what.params:
        tracking.log_params(run_id, step, what.params)
    if what.metrics:
        tracking.log_metrics(run_id, what.metrics)
    for path in what.artifacts:
        tracking.configure().log_artifact(run_id, str(path), step)


def load_transform(prepared: Prepared):
    return kinds.transform_for(json.loads(Path(prepared.state_path).read_text()))


def input_size(transform) -> int:
    """What build_model takes as input_size: feature count (MLP), image channels (CNN) or vocabulary size."""
    return kinds.of(transform).input_size(transform)


def split_rows(prepared: Prepared, transform, split: str) -> int:
    """Rows in a split, read from its targets alone."""
    return kinds.of(transform).split_rows(prepared, split)


def batch_source(prepared: Prepared, transform, split: str, batch_size: int, workers: int = 0):
    return kinds.of(transform).batch_source(prepared, transform, split, batch_size, workers)


def model_inputs(prepared: Prepared, transform, split: str, limit: int = PARITY_ROWS) -> np.ndarray:
    """The first `limit` rows of a split exactly as the model receives them (float32, or int64 token ids)."""
    source = batch_source(prepared, transform, split, batch_size=limit)
    inputs, _ = next(iter(source.ordered()))
    return inputs[:limit].cpu().contiguous().numpy()


@torch.no_grad()
def served_outputs(model: torch.nn.Module, source) -> tuple[torch.Tensor, torch.Tensor]:
    """The serving model's outputs over a whole split in row order, and the targets (CPU tensors)."""
    outputs, targets = [], []
    for inputs, batch_targets in source.ordered():
        outputs.append(model(inputs.cpu()))
        targets.append(batch_targets.cpu())
    return torch.cat(outputs), torch.cat(targets)
