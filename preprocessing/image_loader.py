"""Batch source for images (see training/data.py for the protocol): cached uint8 images, albumentations
augmentation in DataLoader worker processes, normalisation on the training device.

Each worker reads whole batches from the memory-mapped cache (a BatchSampler as the sampler, batch_size=None), so
there is no per-sample collate; workers persist across epochs; memory is pinned when training on CUDA.
"""
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from preprocessing.image import ImageTransform


class _AugmentedBatches(Dataset):
    """Indexed by a list of positions; returns (uint8 NHWC batch, int64 targets)."""

    def __init__(self, cache: Path, rows: np.ndarray, targets: np.ndarray, pipeline: dict):
        self.cache, self.rows, self.targets, self.pipeline_dict = str(cache), rows, targets, pipeline
        self._images = self._pipeline = None

    def _open(self):  # in each worker: its own memory map and its own random stream
        self._images = np.load(self.cache, mmap_mode="r")
        self._pipeline = A.from_dict(self.pipeline_dict)
        self._pipeline.set_random_seed(torch.initial_seed() % 2**32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions):
        if self._images is None:
            self._open()
        rows = self.rows[positions]
        images = np.stack([self._pipeline(image=np.asarray(self._images[r]))["image"] for r in rows])
        return torch.from_numpy(images), torch.from_numpy(self.targets[positions])


class ImageData:
    def __init__(self, cache: Path, rows: np.ndarray, targets: np.ndarray, transform: ImageTransform,
                 batch_size: int, workers: int = 0, device: torch.device = torch.device("cpu")):
        self.cache, self.rows, self.targets = Path(cache), np.asarray(rows), np.asarray(targets, dtype=np.int64)
        self.transform, self.batch_size, self.workers, self.device = transform, batch_size, workers, device
        self._loader = None
        self._shuffle = torch.Generator()

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> "ImageData":
        self.device = torch.device(device)
        return self

    def n_batches(self) -> int:
        return len(self.rows) // self.batch_size + (len(self.rows) % self.batch_size > 1)

    def _loader_for_training(self) -> DataLoader:
        if self._loader is None:
            dataset = _AugmentedBatches(self.cache, self.rows, self.targets, self.transform.state["train_pipeline"])
            # drop a last batch of one: BatchNorm cannot train on it
            sampler = BatchSampler(RandomSampler(range(len(self.rows)), generator=self._shuffle), self.batch_size,
                                   drop_last=len(self.rows) % self.batch_size == 1)
            cuda = self.device.type == "cuda"
            self._loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.workers,
                                      pin_memory=cuda, persistent_workers=self.workers > 0,
                                      prefetch_factor=4 if self.workers else None)
        return self._loader

    def epoch(self, generator: torch.Generator):
        # the trainer's generator (saved in checkpoints) decides the order; the loader's own one follows it
        self._shuffle.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for images, targets in self._loader_for_training():
            yield self._inputs(images), targets.to(self.device, non_blocking=True)

    def ordered(self):
        images = np.load(self.cache, mmap_mode="r")
        for start in range(0, len(self.rows), self.batch_size):
            rows = self.rows[start:start + self.batch_size]
            cropped = self.transform.eval_crop(np.stack([np.asarray(images[r]) for r in rows]))
            yield self._inputs(torch.from_numpy(cropped)), torch.from_numpy(self.targets[start:start + len(rows)]).to(
                self.device)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transform.normalize(images.to(self.device, non_blocking=True))  # normalised on the device
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x
