"""Batch source for images (see training/data.py for the protocol): cached uint8 images, albumentations
augmentation in DataLoader worker processes.

Each worker reads whole batches from the memory-mapped cache (a BatchSampler as the sampler, batch_size=None), so
there is no per-sample collate; workers persist across epochs. On CUDA, workers send uint8 batches into pinned
memory and normalisation runs on the GPU (4x less to copy, no CPU work); on the CPU the workers normalise too, so
that it runs in parallel rather than in the training process (measured: bench/bench_image_pipeline.py).
"""
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from preprocessing.image import ImageTransform


class _AugmentedBatches(Dataset):
    """Indexed by a list of positions; returns (uint8 NHWC batch, int64 targets)."""

    def __init__(self, cache: Path, rows: np.ndarray, targets: np.ndarray, state: dict, normalize: bool):
        self.cache, self.rows, self.targets, self.state, self.normalize = str(cache), rows, targets, state, normalize
        self._images = self._pipeline = self._transform = None

    def _open(self):  # in each worker: its own memory map and its own random stream
        self._images = np.load(self.cache, mmap_mode="r")
        self._pipeline = A.from_dict(self.state["train_pipeline"])
        self._pipeline.set_random_seed(torch.initial_seed() % 2**32)
        self._transform = ImageTransform(self.state) if self.normalize else None

    def __getitem__(self, positions):
        if self._images is None:
            self._open()
        rows = self.rows[positions]
        images = torch.from_numpy(np.stack([self._pipeline(image=np.asarray(self._images[r]))["image"] for r in rows]))
        if self._transform is not None:
            images = self._transform.normalize(images)
        return images, torch.from_numpy(self.targets[positions])


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
            cuda = self.device.type == "cuda"
            dataset = _AugmentedBatches(self.cache, self.rows, self.targets, self.transform.state,
                                        normalize=not cuda and self.workers > 0)
            # drop a last batch of one: BatchNorm cannot train on it
            sampler = BatchSampler(RandomSampler(range(len(self.rows)), generator=self._shuffle), self.batch_size,
                                   drop_last=len(self.rows) % self.batch_size == 1)
            self._loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.workers,
                                      pin_memory=cuda, persistent_workers=self.workers > 0,
                                      prefetch_factor=4 if self.workers else None)
        return self._loader

    def epoch(self, generator: torch.Generator):
        # the trainer's generator (saved in checkpoints) decides the order; the loader's own one follows it
        self._shuffle.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for images, targets in self._loader_for_training():
            inputs = images if images.is_floating_point() else self._inputs(images)  # normalised in a worker or here
            yield inputs, targets.to(self.device, non_blocking=True)

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
