"""What the train, evaluate and export tasks share: the fitted transform of a run, its batch sources and model
inputs, whatever the data type."""
import json
from pathlib import Path

import numpy as np
import torch

from preprocessing.image import ImageTransform
from preprocessing.image_loader import ImageData
from preprocessing.streaming import STREAM_MANIFEST
from preprocessing.tabular import TabularTransform
from preprocessing.text import TextTransform
from preprocessing.transforms import transform_for
from tasks.steps import Prepared
from training.data import StreamedData, TensorData, TokenData

PARITY_ROWS = 512


def load_transform(prepared: Prepared) -> TabularTransform | ImageTransform | TextTransform:
    return transform_for(json.loads(Path(prepared.state_path).read_text()))


def input_size(transform) -> int:
    """What build_model takes as input_size: feature count (MLP), image channels (CNN) or vocabulary size."""
    if isinstance(transform, ImageTransform):
        return transform.config.channels
    if isinstance(transform, TextTransform):
        return transform.vocab_size
    return transform.n_features


def split_rows(prepared: Prepared, split: str) -> int:
    """Rows in a split, read from its targets alone (a memory map's header for a streamed table)."""
    if Path(prepared.arrays).is_dir():
        return len(np.load(Path(prepared.arrays) / f"{split}_targets.npy", mmap_mode="r"))
    return len(np.load(prepared.arrays)[f"{split}_targets"])


def batch_source(prepared: Prepared, transform, split: str, batch_size: int, workers: int = 0):
    if Path(prepared.arrays).is_dir():  # a streamed table: read from disk in blocks
        folder = Path(prepared.arrays)
        manifest = json.loads((folder / STREAM_MANIFEST).read_text())
        return StreamedData(folder / f"{split}_features.npy", folder / f"{split}_targets.npy", batch_size,
                            manifest["block_rows"], manifest["buffer_rows"])
    arrays = np.load(prepared.arrays)
    targets = arrays[f"{split}_targets"]
    if isinstance(transform, ImageTransform):
        return ImageData(prepared.cache, arrays[f"{split}_rows"], targets, transform, batch_size, workers)
    if isinstance(transform, TextTransform):
        return TokenData(torch.from_numpy(arrays[f"{split}_ids"]), torch.from_numpy(targets), batch_size)
    return TensorData(torch.from_numpy(arrays[f"{split}_features"]), torch.from_numpy(targets), batch_size)


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
