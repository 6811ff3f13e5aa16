"""Image preprocessing core: finding, decoding, pipelines, the transform and the batch source."""
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models import build_model, transfer
from models.config import ModelConfig
from preprocessing import image
from preprocessing.config import ImageConfig
from preprocessing.errors import DataError
from preprocessing.image_loader import ImageData


def save(path, array, mode=None, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **options)
    return path


def rgb(seed=0, size=(20, 24)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_modes_are_converted(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    save(tmp_path / "a.png", rgba, "RGBA")
    out = image.load_image(tmp_path / "a.png", channels=3, size=10)
    assert out.shape == (10, 10, 3) and out[0, 0].tolist() == [200, 0, 0]
    assert out[9, 9].tolist() == [255, 255, 255]  # transparent composited onto white

    sixteen = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)  # up to 59,400 of 65,535
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    gray = image.load_image(tmp_path / "g16.png", channels=1, size=10)
    assert gray.shape == (10, 10, 1) and gray.max() == round(59400 * 255 / 65535)  # scaled, not clipped to 255
    assert image.load_image(tmp_path / "g16.png", channels=3, size=10).shape == (10, 10, 3)


def test_tiny_image_is_upscaled_to_the_cache_size(tmp_path):
    save(tmp_path / "tiny.png", rgb(size=(3, 5)))
    assert image.load_image(tmp_path / "tiny.png", channels=3, size=36).shape == (36, 36, 3)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"not an image at all", "not an image file"),
])
def test_unreadable_files_give_a_reason(tmp_path, content, reason):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        image.load_image(tmp_path / "x.png", 3, 8)


def test_truncated_jpeg_is_reported_by_decode_all(tmp_path):
    good = save(tmp_path / "good.jpg", rgb(1, (64, 64)), quality=90)
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    images, bad = image.decode_all([str(good), str(tmp_path / "cut.jpg"), str(good)], channels=3, size=16)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert [b["row"] for b in bad] == [1] and "corrupt image" in bad[0]["reason"]


def test_folder_listing_manifest_and_archive(tmp_path):
    for label in ("cat", "dog"):
        for i in range(2):
            save(tmp_path / "photos" / label / f"{i}.png", rgb(i))
    listing = image.list_images(tmp_path / "photos", ImageConfig(), "label")
    assert listing["label"].tolist() == ["cat", "cat", "dog", "dog"]

    manifest = tmp_path / "photos" / "m.csv"
    pd.DataFrame({"path": ["cat/0.png", "dog/1.png"], "label": ["c", "d"]}).to_csv(manifest, index=False)
    from_manifest = image.list_images(manifest, ImageConfig(), "label")
    assert from_manifest["path"].tolist() == [str(tmp_path / "photos/cat/0.png"), str(tmp_path / "photos/dog/1.png")]

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "photos").rglob("*.png"):
            z.write(f, f.relative_to(tmp_path))
    root = image.materialise(str(archive), tmp_path / "work")
    assert root.name == "photos" and len(image.list_images(root, ImageConfig(), "label")) == 4
    fingerprints = {image.fingerprint_files(image.list_images(r, ImageConfig(), "label"), r, "label")
                    for r in (root, tmp_path / "photos")}
    assert len(fingerprints) == 1  # same content, wherever it lives


def test_empty_folder_and_missing_manifest_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty: expected one sub-folder per class"):
        image.list_images(tmp_path / "empty", ImageConfig(), "label")
    pd.DataFrame({"path": ["a.png", "gone.png"], "label": [1, 2]}).to_csv(tmp_path / "m.csv", index=False)
    save(tmp_path / "a.png", rgb())
    with pytest.raises(DataError, match=r"m.csv points at 1 missing file\(s\), the first at data row 2: .*gone.png"):
        image.list_images(tmp_path / "m.csv", ImageConfig(), "label")


def test_check_decoded_thresholds():
    listing = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "label": ["a", "b"] * 20})
    bad = [{"row": 3, "path": "3.png", "reason": "corrupt image: x"}]
    good, schema = image.check_decoded(listing, bad, "label", 0.05, "photos")
    assert len(good) == 39 and good["cache_row"].tolist() == list(range(39)) and "skipped 1 of 40" in schema.notes[0]
    with pytest.raises(DataError, match="3 of 40 image files are unreadable .*more than image.max_bad_fraction 5%"):
        image.check_decoded(listing, bad * 3, "label", 0.05, "photos")
    all_b = [{"row": i, "path": f"{i}.png", "reason": "x"} for i in range(1, 40, 2)]
    with pytest.raises(DataError, match="class 'b' in photos has no readable images"):
        image.check_decoded(listing, all_b, "label", 1.0, "photos")


def test_unknown_augmentation_lists_valid_names():
    with pytest.raises(image.AugmentationError, match="unknown augmentation 'Flipp'; valid albumentations "
                                                      "transforms: .*HorizontalFlip.*RandomCrop"):
        image.train_pipeline([{"name": "Flipp"}], 32)
    with pytest.raises(image.AugmentationError, match="RandomCrop rejects its arguments"):
        image.train_pipeline([{"name": "RandomCrop", "heigth": 3}], 32)


def test_fit_and_transform_round_trip(tmp_path):
    config = ImageConfig(image_size=8, resize=10, channels=3)
    cache = np.stack([image.load_image(save(tmp_path / f"{i}.png", rgb(i)), 3, config.cache_size)
                      for i in range(6)])
    state = image.fit(cache, ["x", "y"], config, "label")
    transform = image.ImageTransform(json.loads(json.dumps(state)))  # the state is plain JSON
    features = transform.features([str(tmp_path / "0.png"), str(tmp_path / "1.png")])
    assert features.shape == (2, 3, 8, 8) and features.dtype == np.float32
    crops = transform.eval_crop(cache).astype(np.float64) / 255
    assert np.allclose(state["mean"], crops.mean(axis=(0, 1, 2)), atol=1e-6)
    whole = transform.normalize(torch.from_numpy(transform.eval_crop(cache)))
    assert abs(whole.mean().item()) < 1e-4 and abs(whole.std().item() - 1) < 0.02
    with pytest.raises(DataError, match="cannot read image .*missing.png"):
        transform.features([str(tmp_path / "missing.png")])


def test_local_contrast_normalisation_removes_lighting():
    x = torch.rand(2, 3, 16, 16)
    brighter = x * 3 + 0.5
    a, b = image.local_contrast_normalize(x), image.local_contrast_normalize(brighter)
    assert torch.allclose(a, b, atol=1e-2)


def test_image_batches_augment_in_workers_and_cover_each_row_once(tmp_path):
    config = ImageConfig(image_size=8, resize=10, augment=[{"name": "HorizontalFlip", "p": 0.5}], workers=2)
    cache = np.random.default_rng(0).integers(0, 256, (21, 10, 10, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", cache)
    state = image.fit(cache, ["a", "b", "c"], config, "label")
    data = ImageData(tmp_path / "c.npy", np.arange(21), np.arange(21) % 3, image.ImageTransform(state), batch_size=5,
                     workers=2)
    seen = []
    for inputs, targets in data.epoch(torch.Generator().manual_seed(0)):
        assert inputs.dtype == torch.float32 and inputs.shape[1:] == (3, 8, 8)
        seen += targets.tolist()
    assert len(seen) == 20  # 21 = 4 x 5 + a batch of one, which BatchNorm cannot train on
    ordered = list(data.ordered())
    assert sum(len(t) for _, t in ordered) == 21 and ordered[0][1].tolist() == [0, 1, 2, 0, 1]


def test_cnn_shapes_and_transfer():
    config = ModelConfig(type="cnn", n_layers=3, hidden_size=16)
    net = build_model(config, input_size=1, output_size=10)
    assert net(torch.randn(4, 1, 16, 16)).shape == (4, 10)
    assert net(torch.randn(2, 1, 40, 28)).shape == (2, 10)  # global pooling: any input size
    saved = {"model_config": config.model_dump(), "input_size": 1, "output_size": 10, "state_dict": net.state_dict()}
    new, _ = transfer(saved, output_size=3, freeze_features=True)
    assert new.head[-1].out_features == 3
    assert all(torch.equal(a, b) for a, b in zip(new.features.state_dict().values(), net.features.state_dict().values()))
    assert not any(p.requires_grad for p in new.features.parameters())
    assert all(p.requires_grad for p in new.head.parameters())


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (its data is 2 bytes: it never decodes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x78\x9c") + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, reason", [(10_000, "declares 10000x10000 pixels"),  # Pillow only warns here
                                          (100_000, "decompression bomb")])
def test_a_huge_declared_size_is_refused_before_decoding(tmp_path, side, reason):
    """A 60-byte file that declares 100 MP or 10 GP: refused by its header (an unreadable file, listed and skipped
    in training, a DataError in predict.py), not decoded into a 300 MB-30 GB buffer first."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ValueError, match=reason):
        image.load_image(path, 3, 8)
    with pytest.raises(ValueError, match=reason):  # bytes as the REST API passes them
        image.load_image(path.read_bytes(), 3, 8)


def test_manifest_paths_and_links_must_stay_inside_the_data_folder(tmp_path):
    save(tmp_path / "elsewhere" / "secret.png", rgb())
    data = tmp_path / "data"
    save(data / "cat" / "0.png", rgb())
    pd.DataFrame({"path": ["cat/0.png", "../elsewhere/secret.png"], "label": ["c", "d"]}).to_csv(data / "m.csv",
                                                                                                index=False)
    with pytest.raises(DataError, match=r"m.csv: .*secret.png leads outside the data folder.*allow_outside_paths"):
        image.list_images(data / "m.csv", ImageConfig(), "label")
    assert len(image.list_images(data / "m.csv", ImageConfig(allow_outside_paths=True), "label")) == 2

    (data / "dog").mkdir()
    (data / "dog" / "link.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    with pytest.raises(DataError, match="link.png leads outside the data folder"):
        image.list_images(data, ImageConfig(), "label")
    (data / "m.csv").unlink()
    assert len(image.list_images(data, ImageConfig(allow_outside_paths=True), "label")) == 2


def test_fingerprinting_reads_a_large_file_in_chunks(tmp_path):
    import hashlib
    import tracemalloc

    big = tmp_path / "cat" / "big.png"
    big.parent.mkdir()
    with open(big, "wb") as file:
        file.truncate(64 * 2**20)  # 64 MiB of zeros (sparse: instant to write)
    listing = pd.DataFrame({"path": [str(big)], "label": ["cat"]})
    tracemalloc.start()
    try:
        fingerprint = image.fingerprint_files(listing, tmp_path, "label")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256(b"cat/big.png\0cat\0" + hashlib.sha256(bytes(64 * 2**20)).digest()).hexdigest()[:16]
    assert fingerprint == expected
    assert peak < 8 * 2**20, f"hashing held {peak / 2**20:.0f} MiB at once"
