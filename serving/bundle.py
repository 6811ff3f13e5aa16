"""The model file (`--model_fn x.pth`): everything predict and serve need, loadable without unpickling code.

It is a torch.save of plain data only (dicts, lists, numbers, strings, tensors), read back with
torch.load(weights_only=True): the preprocessing state, the label map, the network weights, the ONNX model as
bytes, the config and the metrics. `x.onnx` is written beside it for tools such as Netron; the .pth copy is the
one predict uses, so a single file can be moved around.
"""
from pathlib import Path

import torch

from preprocessing.errors import TorchyardError

FORMAT = "torchyard.model/1"


class ModelFileError(TorchyardError):
    """The model file is missing or is not a torchyard model."""


def save_bundle(path: str | Path, *, onnx_bytes: bytes, **contents) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_tensor = torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8)
    torch.save({"format": FORMAT, "onnx": onnx_tensor, **contents}, path)
    path.with_suffix(".onnx").write_bytes(onnx_bytes)
    return path


def load_bundle(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not its own
        raise ModelFileError(f"{path} is not a torchyard model file: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a torchyard model file (expected format {FORMAT}); "
                             "train one with train.py --model_fn")
    bundle["onnx"] = bundle["onnx"].numpy().tobytes()
    return bundle
