"""torchvision backbones (model.type torchvision): config and flags, weights from a file or the torch hub cache (never
downloaded), fine-tuning (frozen features and BatchNorm statistics, unfreeze_after, backbone_lr_mult), and for every
arch one epoch on tiny images from random weights saved to a file, ONNX export with ONNX Runtime parity, the model
file as export writes it, predictions on raw image files through predict.py's code and one /predict request to the
serving app, in process. The whole path through the command lines (train.py, predict.py, python -m serving as a
server process) runs for resnet18."""
import copy
import os

import numpy as np
import pandas as pd
import pytest
import torch

from models.archs import ARCHS, PATCH_SIZES
from models.config import ModelConfig
from preprocessing.config import ImageConfig
from training.config import TrainerConfig
from training.data import TensorData

IMAGENET_MEAN = [0.485, 0.456, 0.406]
SIDE = 32  # small enough for every arch on 2 CPU cores, a multiple of vit_b_16's patch


def random_weights(arch: str, path, image_size: int | None = None):
    """A torchvision state dict as torchvision publishes them (its own classifier included), random weights."""
    from torchvision import models

    arguments = {"image_size": image_size} if image_size else {}
    torch.save(getattr(models, arch)(weights=None, **arguments).state_dict(), path)
    return path


def tiny_images(n=8, classes=3, side=SIDE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % classes
    images = torch.randn(n, 3, side, side, generator=generator) + targets.view(-1, 1, 1, 1).float()
    return images, targets


def trainer_for(model, epochs=1, callbacks=(), lr=0.01):
    from training.fit import build_trainer

    config = TrainerConfig(n_epochs=epochs, batch_size=4, lr=lr, optimizer="adam")
    trainer, _ = build_trainer(model, config, task="classification", n_classes=3, input_size=3, seed=0,
                               device=torch.device("cpu"), callbacks=list(callbacks))
    trainer.progress_bar = False
    return trainer


# ---------------------------------------------------------------- config, flags, weights

def test_arch_or_weights_name_chooses_torchvision_for_images():
    assert ModelConfig(arch="resnet18").resolved("image", 32).type == "torchvision"
    by_name = ModelConfig(weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1").resolved("image", 32)
    assert (by_name.type, by_name.arch, by_name.arch_image_size) == ("torchvision", "mobilenet_v3_small", 32)
    assert ModelConfig().resolved("image", 32).type == "cnn"
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig(type="torchvision")
    with pytest.raises(ValueError, match="not offered|Input should be"):
        ModelConfig(type="torchvision", arch="resnet1000")
    with pytest.raises(ValueError, match="for model.type torchvision, not cnn"):
        ModelConfig(type="cnn", arch="resnet18")
    with pytest.raises(ValueError, match="divisible by 16"):
        ModelConfig(type="torchvision", arch="vit_b_16", arch_image_size=40)


def test_arch_weights_and_fine_tuning_flags_have_bare_names():
    from flows import flags

    short = flags.short_names([path for path, _ in flags.settings()])
    for name in ("arch", "weights", "unfreeze_after", "backbone_lr_mult", "freeze_features"):
        assert short[name] == f"model.{name}"
    assert short["image_size"] == "image.image_size"  # arch_image_size did not take the image section's name


def test_missing_weights_name_the_file_to_put_there(tmp_path, monkeypatch):
    from models.backbones import Backbone, WeightsError, load_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    network = Backbone("resnet18", 3, 3)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError, match=str(expected)):
        load_weights(network, "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsError, match=str(tmp_path / "nowhere.pth")):
        load_weights(network, str(tmp_path / "nowhere.pth"))
    with pytest.raises(WeightsError, match="weights of resnet50, not of model.arch resnet18"):
        load_weights(network, "ResNet50_Weights.DEFAULT")
    with pytest.raises(WeightsError, match="not a torchvision weights name"):
        load_weights(network, "ResNet18_Weights.IMAGENET9K")

    expected.parent.mkdir(parents=True)
    random_weights("resnet18", expected)  # in the hub cache under its published name: found there, no download
    assert load_weights(network, "ResNet18_Weights.DEFAULT") == expected
    published = torch.load(expected, weights_only=True)
    assert torch.equal(network.features.conv1.weight, published["conv1.weight"])
    wrong = random_weights("mobilenet_v3_small", tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit model.arch resnet18"):
        load_weights(network, str(wrong))


def test_weights_bring_their_preprocessing_unless_the_image_section_sets_it(tmp_path, monkeypatch):
    from preprocessing.kinds.image import backbone_settings

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").touch()  # looked up, not read, here
    model = ModelConfig(type="torchvision", arch="resnet50", weights="ResNet50_Weights.IMAGENET1K_V2")
    image, model_out = backbone_settings(ImageConfig(), model)
    assert (image.image_size, image.resize, image.mean) == (224, 232, IMAGENET_MEAN)
    assert model_out.arch_image_size == 224
    image, model_out = backbone_settings(ImageConfig(image_size=64, mean=[0.5] * 3, std=[0.2] * 3), model)
    assert (image.image_size, image.cache_size, image.mean, model_out.arch_image_size) == (64, 73, [0.5] * 3, 64)
    grey, _ = backbone_settings(ImageConfig(channels=1, image_size=32), model)
    assert grey.mean == [pytest.approx(sum(IMAGENET_MEAN) / 3)]
    scratch, _ = backbone_settings(ImageConfig(), ModelConfig(type="torchvision", arch="resnet18"))
    assert scratch.image_size == 32 and scratch.mean is None  # random weights: torchyard's own statistics
    with pytest.raises(ValueError, match="divisible by 16"):
        backbone_settings(ImageConfig(image_size=40), ModelConfig(type="torchvision", arch="vit_b_16"))


# ---------------------------------------------------------------- every arch: one epoch, export, predict, serve

CLASSES = ["red", "green", "blue"]
PICTURES = {"red.png": ((220, 30, 30), (40, 36)), "green.png": ((30, 200, 40), (36, 44)),
            "blue.png": ((30, 40, 220), (SIDE, SIDE))}


def write_model_file(path, onnx_bytes, model, image_config, network):
    """The model file as tasks/export.py writes it (less the ONNX metadata, which only the .onnx beside it is read
    for: serving/bundle.py): the ONNX bytes, the fitted image preprocessing (for three colour classes) and the network
    entry that --pretrained reads."""
    from preprocessing import image
    from serving.bundle import save_bundle

    state = image.fit(None, CLASSES, image_config, "label")  # mean and std given: no train images to read
    network_entry = {"model_config": model.model_dump(), "input_size": 3, "output_size": 3,
                     "state_dict": {k: v.detach() for k, v in network.state_dict().items()}}
    return save_bundle(path, onnx_bytes=onnx_bytes, data_type="image", task="classification", preprocessing=state,
                       metrics={}, run={"run_id": "test"}, network=network_entry)


def picture_folder(folder):
    """Noisy colour pictures, of other sides than SIDE and not all square: the saved decode resizes and crops."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, (colour, size) in PICTURES.items():
        pixels = np.clip(np.array(colour) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return folder


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_trains_exports_predicts_and_serves(arch, tmp_path):
    """One epoch from a weights file, the ONNX export, then the model file, predicted on raw image files by
    predict.py's code (ONNX Runtime within export.tolerance's default of the torch network: the export's parity) and
    served one /predict request by the real app, in process, with the same answers."""
    from fastapi.testclient import TestClient

    from models import network_from
    from preprocessing import kinds
    from preprocessing.kinds.image import backbone_settings
    from serving.app import ServeSettings, create_app, load
    from serving.export import export_fast
    from training.objectives import ServingModel, make_objective

    weights = random_weights(arch, tmp_path / f"{arch}.pth")
    model = ModelConfig(type="torchvision", arch=arch, weights=str(weights), arch_image_size=SIDE,
                        backbone_lr_mult=0.1)
    trainer = trainer_for(model)
    published = torch.load(weights, weights_only=True)
    name, loaded = next((k, v) for k, v in trainer.model.features.state_dict().items() if v.is_floating_point())
    assert torch.equal(loaded, published[name])  # the file's weights, not a random start
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.01, pytest.approx(0.001)]
    images, targets = tiny_images()
    history = trainer.fit(TensorData(images, targets, 4), TensorData(images, targets, 4))
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])

    network = trainer.model.eval()
    served = ServingModel(network, make_objective("classification", 3), 0.0, 1.0).eval()  # what export exports
    onnx_bytes, exporter = export_fast(served, images, "probabilities", "images", torchscript=True)
    assert exporter == "TorchScript"

    # the model file, with the preprocessing a run with these weights gets (the weights' ImageNet mean/std)
    image_config, model = backbone_settings(ImageConfig(image_size=SIDE), model)
    assert image_config.mean == IMAGENET_MEAN and model.arch_image_size == SIDE
    model_fn = write_model_file(tmp_path / "model.pth", onnx_bytes, model, image_config, network)
    current = load(str(model_fn))  # what python -m serving loads; for a file the same as predict.py's
    predictor = current.predictor  # Predictor.load: load_model_file, then load_checked (one sample prediction)
    if arch in PATCH_SIZES:  # built for the image side the model file records: no weights file needed
        with torch.no_grad():
            assert torch.allclose(network_from(predictor.bundle.network)(images), network(images), atol=1e-5)

    # predict.py's path (predict.main less the argument parsing): a folder of raw files -> a table
    photos = picture_folder(tmp_path / "photos")
    kind = kinds.of(predictor.transform)
    predicted = kind.predict_frame(predictor, kind.read_inputs([str(photos)], "auto", predictor.transform),
                                   str(photos)).set_index("path")
    files = [str(photos / name) for name in PICTURES]
    with torch.no_grad():
        expected = served(torch.from_numpy(predictor.transform.features(files))).numpy()
    probabilities = predicted.loc[files, [f"proba_{c}" for c in CLASSES]].to_numpy()
    assert np.abs(probabilities - expected).max() < 1e-4  # export.tolerance's default
    assert predicted.loc[files, "prediction"].tolist() == [CLASSES[i] for i in probabilities.argmax(1)]

    # one request to the real app (the model loaded above), the same files uploaded
    client = TestClient(create_app(ServeSettings(model=str(model_fn)), loaded=current))
    uploads = [("files", (name, (photos / name).read_bytes(), "image/png")) for name in PICTURES]
    response = client.post("/predict", files=uploads)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["prediction"] for a in answers] == predicted.loc[files, "prediction"].tolist()
    assert np.abs(np.array([[a["probabilities"][c] for c in CLASSES] for a in answers]) - probabilities).max() < 1e-6


# ---------------------------------------------------------------- fine-tuning

def test_frozen_features_keep_weights_and_batchnorm_statistics_until_unfrozen(tmp_path):
    from training.callbacks import Callback

    weights = random_weights("resnet18", tmp_path / "r18.pth")
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer, metrics):
            snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    model = ModelConfig(type="torchvision", arch="resnet18", weights=str(weights), arch_image_size=SIDE,
                        unfreeze_after=1, backbone_lr_mult=0.5)
    trainer = trainer_for(model, epochs=2, callbacks=[Snapshot()])
    before = copy.deepcopy(trainer.model.state_dict())
    features = [p for p in trainer.model.features.parameters()]
    assert not any(p.requires_grad for p in features)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in features} <= in_optimizer  # there already, for when they unfreeze
    trainer.model.train()
    assert not trainer.model.features.bn1.training and trainer.model.training  # frozen BatchNorm: eval mode

    images, targets = tiny_images()
    trainer.fit(TensorData(images, targets, 4), TensorData(images, targets, 4))
    first, second = snapshots
    for key in ("features.conv1.weight", "features.bn1.running_mean", "features.layer4.1.bn2.running_var"):
        assert torch.equal(first[key], before[key]), key  # epoch 1: frozen, statistics included
        assert not torch.equal(second[key], first[key]), key  # epoch 2: unfrozen
    assert not torch.equal(first["head.weight"], before["head.weight"])
    assert all(p.requires_grad for p in features)
    trainer.model.train()
    assert trainer.model.features.bn1.training


def test_freeze_features_trains_the_head_only(tmp_path):
    weights = random_weights("mobilenet_v3_small", tmp_path / "m.pth")
    model = ModelConfig(type="torchvision", arch="mobilenet_v3_small", weights=str(weights), arch_image_size=SIDE,
                        freeze_features=True)
    trainer = trainer_for(model)
    before = copy.deepcopy(trainer.model.state_dict())
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    images, targets = tiny_images()
    trainer.fit(TensorData(images, targets, 4), TensorData(images, targets, 4))
    after = trainer.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"head.weight", "head.bias"}


# ---------------------------------------------------------------- the whole path, one arch

@pytest.mark.usefixtures("prefect_harness")
def test_train_py_with_arch_and_weights_then_predict_and_serve(tmp_path):
    from serving.bundle import load_bundle
    from tests.test_cli import run
    from tests.test_image_flow import COLOURS, colour_folder
    from tests.test_serving import Server, _png

    photos = colour_folder(tmp_path / "photos", per_class=8)
    weights = random_weights("resnet18", tmp_path / "resnet18.pth")
    model_fn = tmp_path / "model.pth"
    result = run("train.py", "--data", str(photos), "--data_type", "image", "--arch", "resnet18", "--weights",
                 str(weights), "--image_size", str(SIDE), "--workers", "0", "--n_epochs", "1", "--batch_size", "8",
                 "--model_fn", str(model_fn), "--no-register_model", "--gpu_id", "-1", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = load_bundle(model_fn)
    assert bundle.network["model_config"]["type"] == "torchvision"
    assert bundle.network["model_config"]["arch"] == "resnet18"
    assert bundle.preprocessing["mean"] == pytest.approx(IMAGENET_MEAN)  # the weights' statistics, recorded
    assert bundle.preprocessing["config"]["image_size"] == SIDE

    predicted = run("predict.py", "--model_fn", str(model_fn), "--input", str(photos / "red"),
                    "--output", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 8 and set(preds["prediction"]) <= set(COLOURS)

    server = Server("--model", str(model_fn))
    try:
        answer = server.post("/predict", files=[("files", ("red.png", _png(COLOURS["red"]), "image/png"))])
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["prediction"] in COLOURS
    finally:
        assert "Traceback" not in server.stop()


def test_torchvision_is_imported_only_for_its_networks():
    """torchyard's own modules leave torchvision alone until a torchvision network is built."""
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = ("import sys; from models import build_model, load_weights; from models.config import ModelConfig; "
             "import models.backbones, models.freezing, preprocessing.kinds.image, training.optim; "
             "config = ModelConfig(arch='resnet18').resolved('image', 32); "
             "build_model(ModelConfig(type='cnn'), 3, 2); build_model(ModelConfig(type='mlp'), 4, 2); "
             "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ})
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_a_model_on_a_backbone_is_the_pretrained_of_a_later_run(tmp_path):
    """--pretrained of a torchyard model trained on a backbone: its arch and feature weights, a new head."""
    from models import build_model, save_network
    from training.fit import build_network

    first = ModelConfig(type="torchvision", arch="mobilenet_v3_small", arch_image_size=SIDE)
    save_network(tmp_path / "network.pt", first, 3, 3, build_model(first, 3, 3))
    saved = torch.load(tmp_path / "network.pt", weights_only=True)
    network, built_from = build_network(ModelConfig(freeze_features=True), 3, 5, pretrained=saved)
    assert built_from.arch == "mobilenet_v3_small" and network.head.out_features == 5
    assert torch.equal(network.features.features[0][0].weight, saved["state_dict"]["features.features.0.0.weight"])
    assert [name for name, p in network.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
