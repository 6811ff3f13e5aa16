import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import build_model
from models.config import ModelConfig
from serving.bundle import ModelFileError, load_bundle, save_bundle
from serving.export import ExportError, export_onnx, parity
from training import evaluation
from training.objectives import ServingModel, make_objective


def serving(task="classification", classes=3, inputs=6):
    torch.manual_seed(0)
    objective = make_objective(task, classes)
    net = build_model(ModelConfig(type="mlp", n_layers=3, hidden_size=8), inputs, objective.output_size)
    net.eval()
    return ServingModel(net, objective, 5.0, 2.0).eval()


@pytest.mark.parametrize("task,classes", [("classification", 3), ("classification", 2), ("regression", 0)])
def test_onnx_export_has_a_dynamic_batch_and_matches_torch(task, classes):
    model = serving(task, classes)
    features = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    onnx_bytes = export_onnx(model, torch.from_numpy(features), "out")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 7, 40):
        (out,) = session.run(None, {"features": features[:batch]})
        expected = model(torch.from_numpy(features[:batch])).detach().numpy()
        assert out.shape == expected.shape and np.allclose(out, expected, atol=1e-5)
    assert parity(onnx_bytes, model, features, tolerance=1e-4) < 1e-4


def test_parity_failure_is_an_export_error():
    model = serving()
    features = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    onnx_bytes = export_onnx(model, torch.from_numpy(features), "out")
    with torch.no_grad():
        model.network.head.bias[0] += 3.0  # the torch model drifts from what was exported
    with pytest.raises(ExportError, match="differs from the torch model by up to"):
        parity(onnx_bytes, model, features, tolerance=1e-4)


def test_bundle_loads_without_unpickling_code(tmp_path):
    path = save_bundle(tmp_path / "m.pth", onnx_bytes=b"\x08\x01onnx", preprocessing={"a": [1, 2.5, "x"]},
                       data_type="tabular", task="classification", network={"state_dict": {"w": torch.ones(2)}})
    assert path.with_suffix(".onnx").read_bytes() == b"\x08\x01onnx"
    raw = torch.load(path, weights_only=True)  # would raise if anything but plain data had been saved
    assert raw["format"] == "torchyard.model/1"
    bundle = load_bundle(path)
    assert bundle.onnx == b"\x08\x01onnx" and bundle.preprocessing == {"a": [1, 2.5, "x"]}
    assert bundle.task == "classification" and torch.equal(bundle.network["state_dict"]["w"], torch.ones(2))
    with pytest.raises(TypeError, match="unexpected keyword argument 'label_map'"):  # the contract is typed
        save_bundle(tmp_path / "x.pth", onnx_bytes=b"", preprocessing={}, data_type="tabular", task="regression",
                    label_map={})


def test_bundle_errors(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_bundle(tmp_path / "none.pth")
    torch.save({"state_dict": {}}, tmp_path / "plain.pth")
    with pytest.raises(ModelFileError, match="not a torchyard model file"):
        load_bundle(tmp_path / "plain.pth")
    (tmp_path / "junk.pth").write_text("hello")
    with pytest.raises(ModelFileError, match="not a torchyard model file"):
        load_bundle(tmp_path / "junk.pth")


def test_metrics_on_hand_computed_numbers():
    """torchmetrics' definitions: a binary prediction is positive above 0.5, macro F1 averages the classes present
    in the truth or the predictions, AUROC is undefined (NaN) for a one-class test split."""
    # binary: truth 1 1 0 0, positive probabilities .9 .4 .6 .1 -> predicted 1 0 1 0: accuracy 2/4, F1 1/2
    p1 = torch.tensor([0.9, 0.4, 0.6, 0.1])
    binary = evaluation.test_metrics("classification", torch.stack([1 - p1, p1], 1), torch.tensor([1, 1, 0, 0]))
    assert binary["test_accuracy"] == pytest.approx(0.5) and binary["test_f1"] == pytest.approx(0.5)
    assert binary["test_auroc"] == pytest.approx(0.75)  # of the 4 (positive, negative) pairs, 3 ranked right
    edge = evaluation.test_metrics("classification", torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    assert edge["test_accuracy"] == 1.0 and np.isnan(edge["test_auroc"])  # 0.5 is not above 0.5
    # 4 classes, class 3 never seen: truth 0 0 1 2, predicted 0 1 1 2 -> F1 per class 2/3, 2/3, 1
    scores = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 4).float()
    multi = evaluation.test_metrics("classification", scores, torch.tensor([0, 0, 1, 2]))
    assert multi["test_accuracy"] == pytest.approx(0.75)
    assert multi["test_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert evaluation.confusion_matrix(scores, torch.tensor([0, 0, 1, 2])).tolist() == [
        [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # regression: errors 1, -1, 0, 2 around truth 1 2 3 4 (mean 2.5, sum of squares 5)
    reg = evaluation.test_metrics("regression", torch.tensor([[2.0], [1.0], [3.0], [6.0]]),
                                  torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert reg == pytest.approx({"test_mse": 1.5, "test_mae": 1.0, "test_r2": 1 - 6 / 5})


def test_plots_are_written(tmp_path):
    evaluation.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "cm.png")
    evaluation.plot_predicted_vs_true(np.arange(5.0), np.arange(5.0) + 1, tmp_path / "pv.png")
    for name in ("cm.png", "pv.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
