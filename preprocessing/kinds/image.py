"""Images (folders with one sub-folder per class, manifests, archives): decoded once into a uint8 cache (validate),
crops and augmentation from preprocessing/image.py, batches from preprocessing/image_loader.py."""
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import image
from preprocessing.errors import DataError
from preprocessing.image import IMAGE_SUFFIXES, MANIFEST_SUFFIXES, ImageTransform
from preprocessing.kinds.base import Checked, Collected, Fitted, Kind, Record
from preprocessing.sources import read_table


def image_paths(inputs: list[str], path_column: str) -> list[str]:
    """Image files from files, folders (recursively, sorted) and manifests (their path column, in order)."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [str(f) for f in sorted(path.rglob("*")) if f.is_file() and not f.name.startswith(".")
                      and f.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            table = read_table(item)
            if path_column not in table.columns:
                raise DataError(f"manifest {item} has no column '{path_column}'")
            paths += [str((path.parent / p).resolve()) for p in table[path_column].astype(str)]
        elif path.is_file():
            paths.append(str(path))
        else:
            raise DataError(f"input not found: {item}")
    if not paths:
        raise DataError(f"no image files found in {', '.join(inputs)}")
    return paths


def decode(snapshot, listing: pd.DataFrame, config, cache_dir: Path, mapper, lines: list) -> tuple[Path, list]:
    """The decoded uint8 cache of the listed files (reused when this data and config were decoded before) and the
    files that could not be read."""
    cache = image.cache_path(cache_dir, snapshot.fingerprint, config)
    cached = image.load_cache(cache)
    if cached is not None:
        lines.append(f"decoded images found in the cache {cache}")
        return cache, cached[1]
    with mapper() as map_chunks:
        images, bad = image.decode_all(listing["path"].tolist(), config.channels, config.cache_size,
                                       map_chunks=map_chunks)
    if map_chunks is not None:
        lines.append("decoded on Dask: " + ", ".join(f"{k} {v}" for k, v in map_chunks.record().items()))
    image.save_cache(cache, images, bad)
    lines.append(f"decoded {len(images)} images to {config.cache_size}x{config.cache_size}x{config.channels}, "
                 f"cached in {cache}")
    return cache, bad


class Image(Kind):
    name = "image"
    model_type = "cnn"
    model_types = ("cnn", "torchvision")  # what flows/config.py accepts for image data

    def collect(self, settings, work_dir, snapshot):
        target = settings.data.target_column()
        location = image.materialise(settings.data.source, Path(work_dir))
        listing = image.list_images(location, settings.image, target)
        return Collected(listing, len(listing), image.fingerprint_files(listing, location, target),
                         f"found {len(listing)} image files in {location}")

    def validate(self, snapshot, settings, mapper=nullcontext):
        config = settings.image
        image.train_pipeline(config.augmentations(), config.image_size)  # a bad augmentation: fail now
        record, listing = Record(), pd.read_parquet(snapshot.path)
        cache, bad = decode(snapshot, listing, config, settings.cache_dir, mapper, record.lines)
        if bad:
            listed = Path(snapshot.path).with_name("bad_files.csv")
            pd.DataFrame(bad)[["path", "reason"]].to_csv(listed, index=False)
            record.artifacts.append(listed)
        frame, schema = image.check_decoded(listing, bad, settings.data.target_column(), config.max_bad_fraction,
                                            snapshot.source)
        record.params["bad_files"] = len(bad)
        return Checked(frame, schema, cache, record)

    def describe_inputs(self, schema, settings):
        return "images"

    def fit_parts(self, parts, schema, settings, cache, work, mapper):
        config = settings.image
        images = np.load(cache, mmap_mode="r")
        state = image.fit(images[np.sort(parts["train"]["cache_row"].to_numpy())], schema.classes, config,
                          schema.target)
        index = {c: i for i, c in enumerate(schema.classes)}
        arrays = {}
        for name, part in parts.items():
            arrays[f"{name}_rows"] = part["cache_row"].to_numpy()
            arrays[f"{name}_targets"] = np.array([index[v] for v in part[schema.target]], dtype=np.int64)
        augmentation = work / "augmentation.json"
        augmentation.write_text(json.dumps(state["train_pipeline"], indent=1))
        params = {**{k: v for k, v in config.model_dump().items() if k not in ("augment", "mean", "std")},
                  "augment": ",".join(spec["name"] for spec in config.augmentations()),
                  "mean": [round(m, 4) for m in state["mean"]], "std": [round(s, 4) for s in state["std"]]}
        summary = (f"images {config.image_size}x{config.image_size}x{config.channels}, "
                   f"mean {[round(m, 3) for m in state['mean']]}, std {[round(s, 3) for s in state['std']]}")
        return Fitted(state, arrays, summary, Record(params=params, artifacts=[augmentation]))

    def check_config(self, config):
        if config.data.task == "regression":
            raise ValueError("image data supports classification only (data.task)")
        if config.model.type == "torchvision":
            config.image, config.model = backbone_settings(config.image, config.model)

    def transform(self, state):
        return ImageTransform(state)

    def input_size(self, transform) -> int:
        return transform.config.channels

    def batch_source(self, prepared, transform, split, batch_size, workers=0):
        from preprocessing.image_loader import ImageData

        arrays = np.load(prepared.arrays)
        return ImageData(prepared.cache, arrays[f"{split}_rows"], arrays[f"{split}_targets"], transform, batch_size,
                         workers)

    def loader_workers(self, transform) -> int:
        return transform.config.workers

    def distributed_refusal(self, prepared, pretrained):
        return "train.distributed is offered for tables and texts; images train in one process"

    def read_inputs(self, inputs, fmt, transform):
        return pd.DataFrame({"path": image_paths(inputs, transform.config.path_column)})

    def predict_frame(self, predictor, frame, name="input"):
        """One row per readable file; files that cannot be read are left out and listed in attrs["skipped"] as
        (path, reason), as training lists and skips them. DataError when none can be read."""
        paths = frame["path"].tolist()
        try:
            return predictor.predict_images(paths)
        except DataError:  # at least one bad file: predict file by file to find which (the slow path, once)
            pass
        tables, skipped = [], []
        for path in paths:
            try:
                tables.append(predictor.predict_images([path]))
            except DataError as exc:
                skipped.append((str(path), str(exc)))
        if not tables:
            raise DataError(f"none of the {len(paths)} image(s) in {name} could be read; the first: "
                            f"{skipped[0][1]}")
        table = pd.concat(tables, ignore_index=True)
        table.attrs["skipped"] = skipped
        return table

    def fit_baseline(self, validated, splits, prepared, transform, config, seed):
        from training import baseline

        arrays = np.load(prepared.arrays)
        if len(arrays["train_rows"]) > config.max_image_rows:
            raise baseline.BaselineSkipped(f"{len(arrays['train_rows'])} training images is more than "
                                           f"baseline.max_image_rows ({config.max_image_rows})")
        cache = np.load(prepared.cache, mmap_mode="r")
        crops = {name: transform.eval_crop(cache[np.asarray(arrays[f"{name}_rows"])]) for name in ("train", "test")}
        result = baseline.image(crops["train"], arrays["train_targets"], crops["test"], transform.target, seed)
        return result, arrays["test_targets"]

    def input_schema(self, transform):
        config = transform.state["config"]
        return {"kind": "images", "channels": config["channels"], "image_size": config["image_size"]}


def backbone_settings(image_config, model_config):
    """For a torchvision network: the image section with what the image section leaves unset taken from the
    weights' own preprocessing (image_size and resize, ImageNet mean/std; models/backbones.py), and the model
    section with the image side it is built for. The weights are looked up now, so that a missing file fails before
    any image is decoded."""
    from models.archs import check_image_size
    from models.backbones import locate_weights, preprocessing_of

    if model_config.weights:
        locate_weights(model_config.weights, model_config.arch)
    given = image_config.model_fields_set
    wanted = preprocessing_of(model_config.arch, model_config.weights) or {}
    update = {}
    if wanted and "image_size" not in given:
        update["image_size"] = wanted["image_size"]
        if "resize" not in given:
            update["resize"] = wanted["resize"]
    if wanted and not {"mean", "std", "local_contrast"} & given:
        # one channel: the network repeats it, so its statistics are the average of the three
        update.update({k: [sum(wanted[k]) / 3] if image_config.channels == 1 else wanted[k] for k in ("mean", "std")})
    image_config = image_config.model_copy(update=update) if update else image_config
    model_config = model_config.model_copy(update={"arch_image_size": image_config.image_size})
    check_image_size(model_config.arch, image_config.image_size)
    return image_config, model_config


KIND = Image()
