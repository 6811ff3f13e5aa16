"""Benchmark: training throughput of a torchvision backbone (resnet18) with its features frozen and trained, against
torchyard's from-scratch CNN, in the same run.

    .venv/bin/python bench/bench_backbones.py [--images 512] [--size 64] [--batch 64] [--workers 2] [--device cpu]

Each network trains one epoch (after a warm-up epoch) on the same synthetic images through the project's image
loader (ImageData: batches from a memory-mapped uint8 cache, the default RandomCrop in DataLoader workers,
normalisation in torch) and the project's training set-up (training/fit.py: on CUDA the network is channels_last and
the Trainer's steps run under bf16 autocast). Reported per network: images/second of the epoch and the share of the
epoch spent waiting for the next batch (the input pipeline's share; on CUDA the steps are synchronised, so the rest
is GPU time). Ratios are against the CNN. Random weights: throughput does not depend on their values, and nothing is
downloaded. On a GPU, run it with --device cuda --size 224.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import parser
from models.config import ModelConfig
from preprocessing import image
from preprocessing.config import ImageConfig
from preprocessing.image_loader import ImageData
from training.config import TrainerConfig
from training.fit import build_trainer

CLASSES = 10


def networks(size: int) -> dict[str, ModelConfig]:
    return {
        "cnn (from scratch)": ModelConfig().resolved("image", size),
        "resnet18 frozen": ModelConfig(arch="resnet18", freeze_features=True).resolved("image", size),
        "resnet18 unfrozen": ModelConfig(arch="resnet18").resolved("image", size),
    }


def timed_epoch(trainer, data) -> tuple[float, float, int]:
    """Seconds of one training epoch, of it the seconds spent waiting for batches, and the images seen: the
    Trainer's own step, with the waits measured around the batch iterator."""
    model, waited, seen = trainer.model.train(), 0.0, 0
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    started = time.perf_counter()
    batches = iter(data.epoch(trainer.generator))
    while True:
        before = time.perf_counter()
        try:
            inputs, targets = next(batches)
        except StopIteration:
            break
        sync()
        waited += time.perf_counter() - before
        with trainer._autocast():
            loss = trainer.objective.loss_value(model(inputs), targets)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        sync()
        seen += len(targets)
    return time.perf_counter() - started, waited, seen


def main() -> None:
    args = parser(__doc__, {"--images": 512, "--size": (64, "image side the networks see"), "--batch": 64,
                            "--workers": (2, "DataLoader workers (image.workers)"),
                            "--device": "cuda" if torch.cuda.is_available() else "cpu"}).parse_args()
    device = torch.device(args.device)

    config = ImageConfig(image_size=args.size, workers=args.workers)
    rng = np.random.default_rng(0)
    cache_images = rng.integers(0, 256, (args.images, config.cache_size, config.cache_size, 3), dtype=np.uint8)
    targets = np.arange(args.images) % CLASSES
    scratch = Path(tempfile.mkdtemp())
    np.save(scratch / "cache.npy", cache_images)
    transform = image.ImageTransform(image.fit(cache_images[:64], list(range(CLASSES)), config, "label"))
    train = TrainerConfig(n_epochs=1, batch_size=args.batch, lr=0.001, optimizer="adam")

    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.images} images "
          f"{args.size}x{args.size}, batch {args.batch}, {args.workers} loader workers"
          + (", channels_last + bf16 autocast" if device.type == "cuda" else ""))
    rates = {}
    for name, model in networks(args.size).items():
        trainer, _ = build_trainer(model, train, task="classification", n_classes=CLASSES, input_size=3, seed=0,
                                   device=device, callbacks=[])
        data = ImageData(scratch / "cache.npy", np.arange(args.images), targets, transform, args.batch,
                         args.workers).to(device)
        timed_epoch(trainer, data)  # warm-up: workers started, kernels chosen
        seconds, waited, seen = timed_epoch(trainer, data)
        rates[name] = seen / seconds
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"  {name:20s} {rates[name]:8.1f} images/s   waiting for input {waited / seconds:5.1%}   "
              f"{trainable / 1e6:6.2f}M trainable parameters")
    base = rates["cnn (from scratch)"]
    print("ratios to the CNN: " + ", ".join(f"{name} {rate / base:.2f}x" for name, rate in rates.items()
                                             if name != "cnn (from scratch)")
          + f"; frozen/unfrozen {rates['resnet18 frozen'] / rates['resnet18 unfrozen']:.2f}x")


if __name__ == "__main__":
    main()
