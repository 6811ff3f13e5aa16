"""Image preprocessing: finding images (folders, manifests, archives, the digits sample), decoding each file once
into a uint8 cache, albumentations pipelines built from config and saved with albumentations' own serialisation,
and the transform that turns raw files into the float NCHW batches the model and its ONNX export take.
"""
import hashlib
import io
import json
import os
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from albumentations.core.transforms_interface import BasicTransform
from PIL import Image, UnidentifiedImageError

from preprocessing.config import ImageConfig
from preprocessing.errors import DataError, TorchyardError
from preprocessing.sources import SAMPLE_PREFIX, fetch, read_table
from preprocessing.targets import Target, TargetCodec

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DECODE_CHUNK = 512  # files per task when decoding runs on Dask
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's limit (~89 MP, 268 MB as RGB); the bound of one decode


class AugmentationError(TorchyardError):
    """An augmentation in the config that albumentations does not know or cannot build."""


# ---------------------------------------------------------------- finding images

def materialise(source: str, dest: Path) -> Path:
    """A local folder or manifest for `source`: archives are unpacked and the digits sample written under `dest`."""
    if source == f"{SAMPLE_PREFIX}digits":
        return write_digits(dest / "digits")
    if source.startswith(SAMPLE_PREFIX):
        raise DataError(f"unknown image sample '{source}'; available: {SAMPLE_PREFIX}digits")
    if source.startswith(("http://", "https://")):
        name = Path(source.split("?")[0]).name or "download"
        archive = dest / name
        archive.write_bytes(fetch(source, timeout=60))
        return unpack(archive, dest / "unpacked")
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise DataError(f"image source not found: {source} (looked for {path.resolve()})")
    if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return unpack(path, dest / "unpacked")
    return path.resolve()


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                t.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive.name} could not be unpacked: {exc}") from exc
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    # an archive of one folder (photos.zip -> photos/cat, photos/dog) unpacks to that folder
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def write_digits(dest: Path) -> Path:
    """scikit-learn's bundled 8x8 digits as PNG files, one sub-folder per digit: an image sample with no network."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    if (dest / ".complete").exists():
        return dest
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = dest / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * (255 / 16)).astype(np.uint8), mode="L").save(folder / f"{index:04d}.png")
    (dest / ".complete").touch()
    return dest


def list_images(location: Path, config: ImageConfig, label_column: str) -> pd.DataFrame:
    """Rows of (path, label) from a class-per-folder tree or a manifest; paths absolute."""
    if location.is_file():
        listing = _from_manifest(location, config.path_column, label_column)
        _inside(listing["path"], location.parent, config.allow_outside_paths, f"manifest {location}")
        return listing
    classes = sorted(p for p in location.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [(str(f), c.name) for c in classes for f in sorted(c.rglob("*")) if f.is_file()
            and not f.name.startswith(".")]
    _inside([path for path, _ in rows], location, config.allow_outside_paths, f"the folder {location}")
    if not rows:
        loose = [f for f in location.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f" ({len(loose)} image files lie directly in it; put them in one sub-folder per class)"
                if loose else "")
        raise DataError(f"no images found in {location}: expected one sub-folder per class, each holding that "
                        f"class's images{hint}")
    return pd.DataFrame(rows, columns=["path", label_column])


def _inside(paths, root: Path, allowed: bool, where: str) -> None:
    """DataError naming the first file that leads outside `root` (a manifest's '../../etc/passwd', a symbolic link
    to elsewhere) unless image.allow_outside_paths: a data folder from someone else must not read this machine's
    other files into a model."""
    if allowed:
        return
    root = Path(root).resolve()
    for path in paths:
        if not Path(path).resolve().is_relative_to(root):
            raise DataError(f"{where}: {path} leads outside the data folder (to {Path(path).resolve()}); move the "
                            "file in, or set image.allow_outside_paths: true")


def _from_manifest(manifest: Path, path_column: str, label_column: str) -> pd.DataFrame:
    if not manifest.name.lower().endswith(MANIFEST_SUFFIXES):
        raise DataError(f"{manifest} is neither a folder, an archive ({', '.join(ARCHIVE_SUFFIXES)}) nor a "
                        f"manifest table ({', '.join(MANIFEST_SUFFIXES)})")
    table = read_table(str(manifest))
    for column in (path_column, label_column):
        if column not in table.columns:
            raise DataError(f"manifest {manifest} has no column '{column}'; columns are: "
                            + ", ".join(f"'{c}'" for c in table.columns))
    table = table.dropna(subset=[path_column])
    paths = [str((manifest.parent / p).resolve()) for p in table[path_column].astype(str)]
    missing = [(i, p) for i, p in enumerate(paths) if not Path(p).is_file()]
    if missing:
        row, path = missing[0]
        raise DataError(f"manifest {manifest} points at {len(missing)} missing file(s), the first at data row "
                        f"{row + 1}: {path}")
    labels = table[label_column].map(lambda v: None if pd.isna(v) else str(v))
    return pd.DataFrame({"path": paths, label_column: labels.to_numpy()})


def fingerprint_files(listing: pd.DataFrame, root: Path, label_column: str) -> str:
    """Content hash of the images and their labels, independent of where the folder lives."""
    digest = hashlib.sha256()
    for path, label in zip(listing["path"], listing[label_column]):
        relative = os.path.relpath(path, root) if root.is_dir() else Path(path).name
        digest.update(f"{relative}\0{label}\0".encode())
        with open(path, "rb") as file:  # in chunks: a large file is not held in memory to be hashed
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- decoding

def load_image(source: str | Path | bytes, channels: int, size: int) -> np.ndarray:
    """Decode one file (a path, or its bytes) to uint8 [size, size, channels]: shorter side resized to `size`,
    then center-cropped. Raises ValueError with a short reason for a file that is not a readable image."""
    data = isinstance(source, (bytes, bytearray))
    if (len(source) if data else Path(source).stat().st_size) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(source) if data else Path(source)) as image:  # reads the header only
            if image.width * image.height > MAX_PIXELS:  # checked before decoding: a small file can declare GBs
                raise ValueError(f"declares {image.width}x{image.height} pixels, more than the {MAX_PIXELS:,} "
                                 "decoded per file (PIL.Image.MAX_IMAGE_PIXELS)")
            image.load()  # the whole decode: a truncated file fails here, not later
            pixels = _to_channels(image, channels)
    except Image.DecompressionBombError as exc:  # Pillow's own refusal, raised while opening
        raise ValueError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ValueError("not an image file PIL can read") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt image: {exc}") from None
    return decode_pipeline(size)(image=pixels)["image"].reshape(size, size, channels)


def _to_channels(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit: scale to 8-bit instead of clipping
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def decode_files(paths: list[str], channels: int, size: int) -> list[tuple[np.ndarray | None, str | None]]:
    """(image, None) or (None, reason) per file, in order."""
    results = []
    for path in paths:
        try:
            results.append((load_image(path, channels, size), None))
        except ValueError as exc:
            results.append((None, str(exc)))
    return results


def decode_all(paths: list[str], channels: int, size: int, workers: int = 0,
               map_chunks=None) -> tuple[np.ndarray, list[dict]]:
    """Decode every file once. Returns the uint8 array [n_good, size, size, channels] in input order, and the bad
    files as {'row', 'path', 'reason'} (row = position in `paths`). `map_chunks(function, [args, ...])` runs the
    chunks elsewhere (Dask workers); by default a thread pool here decodes them (PIL releases the GIL)."""
    if map_chunks is not None:
        chunks = [(paths[s:s + DECODE_CHUNK], channels, size) for s in range(0, len(paths), DECODE_CHUNK)]
        results = [r for part in map_chunks(decode_files, chunks) for r in part]
    else:
        with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda p: decode_files([p], channels, size)[0], paths))
    bad = [{"row": i, "path": p, "reason": reason} for i, (p, (_, reason)) in enumerate(zip(paths, results)) if reason]
    good = [image for image, _ in results if image is not None]
    return (np.stack(good) if good else np.zeros((0, size, size, channels), dtype=np.uint8)), bad


# ---------------------------------------------------------------- pipelines

def decode_pipeline(size: int) -> A.Compose:
    """Applied once per file (at caching and at prediction): shorter side to `size`, square center crop."""
    return A.Compose([A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size, pad_if_needed=True)])


def eval_pipeline(image_size: int) -> A.Compose:
    """Deterministic: center crop of the cached image to the training size."""
    return A.Compose([A.CenterCrop(height=image_size, width=image_size, pad_if_needed=True)])


def train_pipeline(specs: list[dict], image_size: int) -> A.Compose:
    """The configured augmentations; a final center crop (a no-op when they already end at image_size) keeps every
    training image the size the model and the eval pipeline use."""
    return A.Compose([*(build_transform(spec) for spec in specs),
                      A.CenterCrop(height=image_size, width=image_size, pad_if_needed=True)])


def transform_names() -> list[str]:
    return sorted(n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), BasicTransform)
                  and not n.startswith(("Basic", "Dual", "ImageOnly", "NoOp")))


def build_transform(spec: dict) -> BasicTransform:
    if not isinstance(spec, dict) or "name" not in spec:
        raise AugmentationError(f"each augmentation must be a mapping with a 'name', got {spec!r}")
    name, arguments = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    if name not in transform_names():
        raise AugmentationError(f"unknown augmentation '{name}'; valid albumentations transforms: "
                                + ", ".join(transform_names()))
    try:
        return getattr(A, name)(**arguments)
    except Exception as exc:  # albumentations validates arguments with pydantic and raises several types
        raise AugmentationError(f"augmentation {name} rejects its arguments {arguments}: {exc}") from exc


def channel_stats(images: np.ndarray, image_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of the center crops the model sees, over `images` (the train split)."""
    crop = eval_pipeline(image_size)
    sums, squares = np.zeros(images.shape[-1]), np.zeros(images.shape[-1])
    for start in range(0, len(images), 1024):  # chunks: bounded memory for large caches
        chunk = np.stack([crop(image=im)["image"] for im in images[start:start + 1024]]).astype(np.float64) / 255
        sums += chunk.sum(axis=(0, 1, 2))
        squares += (chunk ** 2).sum(axis=(0, 1, 2))
    count = len(images) * image_size * image_size
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


# ---------------------------------------------------------------- the fitted transform

def fit(train_images: np.ndarray, classes: list, config: ImageConfig, target: str) -> dict:
    """The state predict and serve need, as plain data: pipelines (albumentations dicts), statistics, classes."""
    train_pipeline(config.augmentations(), config.image_size)  # fail now on a bad augmentation, not in a worker
    if config.local_contrast:
        mean, std = [0.0] * config.channels, [1.0] * config.channels  # LCN already centres and scales each image
    elif config.mean is not None and config.std is not None:
        mean, std = config.mean, config.std
    else:
        mean, std = channel_stats(train_images, config.image_size)
    if len(mean) != config.channels or len(std) != config.channels:
        raise DataError(f"image.mean/std need {config.channels} value(s), one per channel")
    return {
        "data_type": "image",
        "config": config.model_dump(),
        "decode_pipeline": A.to_dict(decode_pipeline(config.cache_size)),
        "eval_pipeline": A.to_dict(eval_pipeline(config.image_size)),
        "train_pipeline": A.to_dict(train_pipeline(config.augmentations(), config.image_size)),
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "target": Target(target, "classification", tuple(classes)).to_state(),
    }


def local_contrast_normalize(x: torch.Tensor, sigma: float = 2.0, eps: float = 1e-2) -> torch.Tensor:
    """Per-image, per-channel: subtract a Gaussian-weighted local mean, divide by the local standard deviation."""
    radius = max(1, int(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]

    def blur(t):
        t = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="reflect")
        t = torch.nn.functional.conv2d(t, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        return torch.nn.functional.conv2d(t, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)

    centred = x - blur(x)
    return centred / torch.sqrt(blur(centred ** 2)).clamp_min(eps)


class ImageTransform(TargetCodec):
    """Applies a fitted image state: raw files -> float32 NCHW model inputs, and outputs -> labels."""

    def __init__(self, state: dict):
        self.state = state
        self.config = ImageConfig(**state["config"])
        self.decode = A.from_dict(state["decode_pipeline"])
        self.eval = A.from_dict(state["eval_pipeline"])
        self.mean = torch.tensor(state["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(state["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self._affine_cache = {}

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (on any device) -> normalised float32 NCHW on the same device."""
        x = batch.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        if self.config.local_contrast:
            return local_contrast_normalize(x.div_(255))  # mean 0, std 1 by construction
        if x.device not in self._affine_cache:
            self._affine_cache[x.device] = ((1 / (255 * self.std)).to(x.device), (-self.mean / self.std).to(x.device))
        scale, shift = self._affine_cache[x.device]
        return torch.addcmul(shift, x, scale)  # (x / 255 - mean) / std in one pass

    def eval_crop(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.eval(image=im)["image"] for im in images]) if len(images) else images

    def features(self, paths: list, names: list[str] | None = None) -> np.ndarray:
        """Model inputs for raw image files (paths, or their bytes with `names`); DataError naming the first file
        that cannot be read."""
        images = []
        for i, path in enumerate(paths):
            try:
                images.append(load_image(path, self.config.channels, self.config.cache_size))
            except (ValueError, OSError) as exc:
                raise DataError(f"cannot read image {names[i] if names else path}: {exc}") from exc
        return self.normalize(torch.from_numpy(self.eval_crop(np.stack(images)))).numpy()


def cache_path(cache_root: Path, fingerprint: str, config: ImageConfig) -> Path:
    return Path(cache_root) / f"{fingerprint}-{config.cache_size}px-{config.channels}ch.npy"


def save_cache(path: Path, images: np.ndarray, bad: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npy")
    np.save(partial, images)
    path.with_suffix(".bad.json").write_text(json.dumps(bad))
    os.replace(partial, path)  # the .npy appears only when complete


def load_cache(path: Path) -> tuple[np.ndarray, list[dict]] | None:
    if not path.exists():
        return None
    return np.load(path, mmap_mode="r"), json.loads(path.with_suffix(".bad.json").read_text())


def check_decoded(listing: pd.DataFrame, bad: list[dict], target: str, max_bad_fraction: float, name: str):
    """The usable rows (with the 'cache_row' of each in the decoded array) and the schema, or DataError when too
    many files are unreadable or a class is left without images."""
    from preprocessing.validate import TableSchema, check_classes

    notes = []
    total = len(listing)
    if bad:
        first = bad[0]
        summary = f"{len(bad)} of {total} image files are unreadable (first: {first['path']}: {first['reason']})"
        if len(bad) > max_bad_fraction * total:
            raise DataError(f"{summary}, more than image.max_bad_fraction {max_bad_fraction:.0%}; the list is the "
                            "MLflow run's artifact validate/bad_files.csv")
        notes.append(f"skipped {summary}; listed in validate/bad_files.csv")
    bad_rows = {b["row"] for b in bad}
    good = listing.drop(index=listing.index[list(bad_rows)]).assign(cache_row=np.arange(total - len(bad)))
    lost = sorted(set(listing[target].dropna()) - set(good[target].dropna()))
    if lost:
        raise DataError(f"class '{lost[0]}' in {name} has no readable images; every file of it is in "
                        "validate/bad_files.csv")
    if good[target].isna().any():
        notes.append(f"dropped {int(good[target].isna().sum())} image(s) without a label")
        good = good.dropna(subset=[target])
    classes = check_classes(good[target], target, name)
    schema = TableSchema(target, "classification", [], [], classes, len(good), notes)
    return good.reset_index(drop=True), schema
