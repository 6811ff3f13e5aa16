"""Benchmark: the image input pipeline, and a training epoch on the digits sample.

    .venv/bin/python bench/bench_image_pipeline.py [--images 4000] [--workers 2]

1. Images/second for 64x64 RGB images with a typical augmentation list: the project's loader (ImageData: batches
   from the memory-mapped uint8 cache, albumentations in persistent DataLoader workers, normalisation in torch)
   against a bare loop of the same albumentations pipeline over the same arrays in one process, run in the same
   process run. Each side runs two epochs; the second (warm workers) counts.
2. Seconds per training epoch on the digits sample (1,257 training images, 16x16, the digits-cnn config), CPU.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, parser, timed
from preprocessing import image
from preprocessing.config import ImageConfig
from preprocessing.image_loader import ImageData

AUGMENT = [
    {"name": "RandomResizedCrop", "size": [56, 56], "scale": [0.6, 1.0]},
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "rotate": [-10, 10], "p": 0.5},
    {"name": "RandomBrightnessContrast", "p": 0.5},
    {"name": "CoarseDropout", "num_holes_range": [1, 4], "hole_height_range": [4, 12], "hole_width_range": [4, 12],
     "p": 0.5},
]


def loader_rate(cache: Path, transform, n: int, workers: int, batch: int) -> float:
    data = ImageData(cache, np.arange(n), np.zeros(n, dtype=np.int64), transform, batch, workers)
    generator = torch.Generator().manual_seed(0)
    for _ in data.epoch(generator):  # warm-up epoch: starts the workers
        pass
    seconds, count = timed(lambda: sum(len(targets) for _, targets in data.epoch(generator)))
    return count / seconds


def bare_rate(images: np.ndarray, pipeline, mean, std, batch: int) -> float:
    """The same augmentation, then the same float conversion and normalisation, in a plain loop."""
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        out = np.stack([pipeline(image=im)["image"] for im in images[start:start + batch]])
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)
        (x - mean) / std
    return len(images) / (time.perf_counter() - started)


def digits_epoch_seconds(epochs: int = 3) -> float:
    import yaml

    from models.config import ModelConfig
    from preprocessing.split import split_indices
    from preprocessing.config import SplitConfig
    from training.config import TrainerConfig
    from training.objectives import make_objective
    from training.optim import build_optimizer
    from training.trainer import Trainer
    from models import build_model
    import pandas as pd

    config = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    image_config, model_config = ImageConfig(**config["image"]), ModelConfig(**config["model"])
    train_config = TrainerConfig(**config["train"])
    scratch = Path(tempfile.mkdtemp())
    folder = image.write_digits(scratch / "digits")
    listing = image.list_images(folder, image_config, "label")
    images, _ = image.decode_all(listing["path"].tolist(), image_config.channels, image_config.cache_size)
    np.save(scratch / "cache.npy", images)
    labels = pd.factorize(listing["label"], sort=True)[0]
    parts = split_indices(listing["label"], "classification", SplitConfig(), seed=0)
    state = image.fit(images[parts["train"]], sorted(set(listing["label"])), image_config, "label")
    transform = image.ImageTransform(state)
    source = lambda split, workers: ImageData(scratch / "cache.npy", parts[split], labels[parts[split]], transform,  # noqa: E731
                                              train_config.batch_size, workers)
    objective = make_objective("classification", 10)
    network = build_model(model_config, image_config.channels, 10)
    trainer = Trainer(network, objective, build_optimizer(network.parameters(), train_config), None,
                      max_epochs=epochs, device=torch.device("cpu"), progress_bar=False)
    seconds, history = timed(trainer.fit, source("train", image_config.workers), source("val", 0))
    return seconds / len(history)


def main() -> None:
    args = parser(__doc__, {"--images": 4000, "--workers": 2, "--batch": 128}).parse_args()

    config = ImageConfig(image_size=56, resize=64, augment=AUGMENT, workers=args.workers)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
    cache = Path(tempfile.mkdtemp()) / "cache.npy"
    np.save(cache, images)
    transform = image.ImageTransform(image.fit(images[:500], ["a"], config, "label"))
    pipeline = image.train_pipeline(AUGMENT, config.image_size)
    mean, std = transform.mean, transform.std

    bare_rate(images[:256], pipeline, mean, std, args.batch)  # warm-up
    bare = bare_rate(images, pipeline, mean, std, args.batch)
    ours = loader_rate(cache, transform, args.images, args.workers, args.batch)
    in_process = loader_rate(cache, transform, args.images, 0, args.batch)
    print(f"{args.images} images 64x64x3 -> 56x56, {len(AUGMENT)} augmentations, batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"bare albumentations loop:     {bare:8.0f} images/s")
    print(f"project loader, {args.workers} workers:   {ours:8.0f} images/s   ratio {ours / bare:.2f}")
    print(f"project loader, in process:   {in_process:8.0f} images/s   ratio {in_process / bare:.2f}")
    print(f"digits epoch (digits-cnn config, CPU): {digits_epoch_seconds():.2f} s")


if __name__ == "__main__":
    main()
