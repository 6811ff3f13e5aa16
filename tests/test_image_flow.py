"""Images through train-flow and predict.py, against a temporary Prefect API and the session's MLflow store."""
import io
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flows.config import ExportConfig
from models.config import ModelConfig
from preprocessing.config import DataConfig, ImageConfig
from serving.bundle import load_bundle
from tests.conftest import REPO
from tests.test_flow import mlflow_run
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = TrainerConfig(n_epochs=4, batch_size=16, lr=0.01)
SMALL = ImageConfig(image_size=12, resize=14, workers=1, augment=[{"name": "HorizontalFlip", "p": 0.5}])
TINY_CNN = ModelConfig(type="cnn", n_layers=2, conv_channels=[8, 16], hidden_size=16)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def colour_folder(root, per_class=12, classes=COLOURS, size=(12, 12)):
    """One sub-folder per class of noisy solid-colour images: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    for name, rgb in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def run_images(source, **params):
    from flows.train_flow import train_flow

    params.setdefault("image", SMALL)
    params.setdefault("model", TINY_CNN)
    params.setdefault("train", FAST)
    params.setdefault("experiment", f"img-{uuid.uuid4().hex[:8]}")
    return train_flow(data=DataConfig(source=str(source), data_type="image"), **params, return_state=True)


def test_digits_sample_trains_exports_and_predicts(tmp_path, mlflow_client):
    model_fn = tmp_path / "digits.pth"
    name = f"digits-{uuid.uuid4().hex[:6]}"
    state = run_images("sklearn:digits", image=ImageConfig(image_size=16, channels=1, workers=2,
                                                          augment=[{"name": "Affine", "translate_percent": 0.05}]),
                       train=TrainerConfig(n_epochs=5, batch_size=64, lr=0.005), export=ExportConfig(model_name=name),
                       model_fn=str(model_fn))
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    assert run.data.metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert run.data.params["model.type"] == "cnn" and run.data.params["preprocess.channels"] == "1"
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "preprocess")}
    assert "preprocess/augmentation.json" in artifacts
    bundle = load_bundle(model_fn)
    assert bundle.data_type == "image" and bundle.preprocessing["target"]["classes"] == [str(d) for d in range(10)]

    import onnx

    graph = onnx.load_from_string(bundle.onnx).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert graph.input[0].name == "images" and dims[1:] == [1, 16, 16] and isinstance(dims[0], str)

    from preprocessing.image import write_digits

    folder = write_digits(tmp_path / "to_label")
    result = subprocess.run([sys.executable, "predict.py", "--model_fn", str(model_fn), "--input",
                             str(folder / "4"), str(folder / "7" / "0007.png"), "--output", str(tmp_path / "p.csv")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns[:2]) == ["path", "prediction"] and len(preds.columns) == 12
    assert preds["path"].iloc[-1].endswith("7/0007.png") and len(preds) == len(list((folder / "4").iterdir())) + 1
    assert (preds["prediction"].iloc[:-1] == 4).mean() > 0.5

    (folder / "4" / "broken.png").write_bytes((folder / "7" / "0007.png").read_bytes()[:40])  # a truncated file
    result = subprocess.run([sys.executable, "predict.py", "--model_fn", str(model_fn), "--input", str(folder / "4")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "skipped: cannot read image" in result.stderr and "broken.png" in result.stderr
    assert "1 of" in result.stderr and len(pd.read_csv(io.StringIO(result.stdout))) == len(preds) - 1
    result = subprocess.run([sys.executable, "predict.py", "--model_fn", str(model_fn), "--input",
                             str(folder / "4" / "broken.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "none of the 1 image(s)" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_and_odd_files_are_skipped_listed_and_cached(tmp_path, mlflow_client):
    root = colour_folder(tmp_path / "photos", per_class=14)
    Image.open(root / "red" / "0.png").convert("RGB").resize((48, 48)).save(root / "red" / "photo.jpg", quality=90)
    jpeg = (root / "red" / "photo.jpg").read_bytes()
    (root / "red" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a corrupt JPEG among good ones
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 2], rgba[..., 3] = 220, 255
    Image.fromarray(rgba, "RGBA").save(root / "blue" / "rgba.png")
    Image.fromarray((np.full((6, 6), 30, dtype=np.uint16) * 256)).save(root / "green" / "gray16.png")  # small, 16-bit
    state = run_images(root, image=SMALL.model_copy(update={"max_bad_fraction": 0.1}))
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    assert run.data.params["validate.bad_files"] == "1" and run.data.params["validate.rows"] == str(3 * 14 + 3)
    path = mlflow_client.download_artifacts(run.info.run_id, "validate/bad_files.csv", str(tmp_path))
    listed = pd.read_csv(path)
    assert listed["path"].tolist() == [str(root / "red" / "broken.jpg")] and "corrupt" in listed["reason"][0]

    from tasks.validate import cache_root

    (cached,) = [p for p in cache_root().glob(f"{run.data.tags['data_fingerprint']}-*.npy")]
    before = cached.stat().st_mtime_ns
    again = run_images(root, image=SMALL.model_copy(update={"max_bad_fraction": 0.1}))
    assert again.is_completed() and cached.stat().st_mtime_ns == before  # decoded once, reused


def test_transfer_learning_from_a_model_file_and_the_registry(tmp_path, mlflow_client):
    base_fn = tmp_path / "base.pth"
    name = f"colours-{uuid.uuid4().hex[:6]}"
    assert run_images(colour_folder(tmp_path / "base"), model_fn=str(base_fn),
                      export=ExportConfig(model_name=name)).is_completed()
    two = {k: COLOURS[k] for k in ("red", "blue")}
    state = run_images(colour_folder(tmp_path / "new", classes=two), model_fn=str(tmp_path / "new.pth"),
                       model=ModelConfig(pretrained=str(base_fn), freeze_features=True),
                       export=ExportConfig(register_model=False))
    assert state.is_completed(), state.message
    base, new = load_bundle(base_fn).network, load_bundle(tmp_path / "new.pth").network
    assert new["output_size"] == 1 and base["output_size"] == 3  # binary head replaces the 3-class one
    for key, value in base["state_dict"].items():
        if key.startswith("features.") and "num_batches" not in key and "running" not in key:
            assert torch.equal(value, new["state_dict"][key]), key  # frozen
    assert mlflow_run(mlflow_client, state).data.params["model.conv_channels"] == "[8, 16]"

    from_registry = run_images(tmp_path / "new", model=ModelConfig(pretrained=f"models:/{name}/1"),
                               export=ExportConfig(register_model=False))
    assert from_registry.is_completed(), from_registry.message
    missing = run_images(tmp_path / "new", model=ModelConfig(pretrained=f"models:/{name}/99"))
    assert missing.is_failed() and "has no version 99 in the MLflow registry" in missing.message


def _write_manifest_with_missing(tmp_path):
    root = colour_folder(tmp_path / "m")
    pd.DataFrame({"path": ["red/0.png", "red/gone.png"], "label": ["red", "red"]}).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def _all_corrupt(tmp_path):
    root = colour_folder(tmp_path / "c", per_class=3)
    for f in root.rglob("*.png"):
        f.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    return root


BAD = {
    "empty folder": (lambda p: (p / "empty").mkdir() or p / "empty", {}, "no images found in"),
    "one class only": (lambda p: colour_folder(p / "one", classes={"red": COLOURS["red"]}), {},
                       "has a single class 'red'"),
    "all files corrupt": (_all_corrupt, {}, "9 of 9 image files are unreadable"),
    "manifest with missing files": (_write_manifest_with_missing, {}, "points at 1 missing file"),
    "unknown augmentation": (lambda p: colour_folder(p / "aug"), {"image": SMALL.model_copy(
        update={"augment": [{"name": "RandomFlipz"}]})}, "unknown augmentation 'RandomFlipz'; valid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_input(case, tmp_path, mlflow_client):
    make, params, message = BAD[case]
    state = run_images(make(tmp_path), **params)
    assert state.is_failed()
    with pytest.raises(Exception, match=message) as info:
        state.result()
    run = mlflow_run(mlflow_client, state)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == str(info.value)
