"""torch -> ONNX export with a dynamic batch axis, checked against the torch model with ONNX Runtime."""
import io
import logging
import warnings
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime as ort
import torch

from preprocessing.errors import TorchyardError

# float32 [batch, n_features] / float32 [batch, C, H, W] / int64 [batch, tokens], 0-padded
INPUT_NAMES = {"tabular": "features", "image": "images", "text": "token_ids"}


class ExportError(TorchyardError):
    """The exported model does not reproduce the torch model."""


def export_onnx(model: torch.nn.Module, example: torch.Tensor, output_name: str, input_name: str = "features") -> bytes:
    """Serialised ONNX model taking `input_name` with a dynamic batch axis, returning `output_name`. Integer
    inputs (token ids [batch, tokens]) keep their dtype and get a dynamic sequence axis too."""
    model = model.eval().cpu()
    example = _small_batch(example)
    axes = {0: torch.export.Dim("batch")}
    if example.dtype.is_floating_point:
        example = example.float()
    else:
        if example.shape[1] < 2:  # likewise for the sequence axis
            example = torch.nn.functional.pad(example, (0, 2 - example.shape[1]))
        axes[1] = torch.export.Dim("tokens")
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamic_shapes=(axes,), input_names=[input_name],
                                    output_names=[output_name], verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def export_fast(model: torch.nn.Module, example: torch.Tensor, output_name: str, input_name: str,
                torchscript: bool) -> tuple[bytes, str]:
    """ONNX bytes and the exporter that wrote them: torch's TorchScript exporter when `torchscript` (float inputs;
    0.05-0.3 s against 2-5 s for export_onnx on this project's MLP and CNN, same outputs), else, or should it be gone
    from torch or fail on the network, export_onnx (torch.export). It is deprecated, and it bakes a transformer's
    token count into its reshapes, so token inputs take export_onnx. Either way parity() checks the result."""
    if torchscript:
        try:
            return _torchscript_export(model, example, output_name, input_name), "TorchScript"
        except Exception:  # noqa: BLE001 - gone from torch, or a network it cannot trace: the new exporter decides
            pass
    return export_onnx(model, example, output_name, input_name), "torch.export"


def _torchscript_export(model: torch.nn.Module, example: torch.Tensor, output_name: str, input_name: str) -> bytes:
    model = model.eval().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        torch.onnx.export(model, (_small_batch(example).float(),), buffer, dynamo=False, input_names=[input_name],
                          output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    return buffer.getvalue()


def _small_batch(example: torch.Tensor) -> torch.Tensor:
    """2-8 rows of the example on the CPU: batch >= 2, since an exporter specialises a size-1 axis."""
    return example[: max(2, min(len(example), 8))].cpu()


def with_metadata(onnx_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX model with `metadata` added to its metadata_props (what a bare .onnx file needs to be served)."""
    model = onnx.load_from_string(onnx_bytes)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def parity(onnx_bytes: bytes, model: torch.nn.Module, features: np.ndarray, tolerance: float) -> float:
    """Max |ONNX Runtime - torch| over `features`; ExportError above `tolerance`."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    if np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: features})
    with torch.no_grad():
        torch_out = model.eval().cpu()(torch.from_numpy(features)).numpy()
    diff = float(np.max(np.abs(onnx_out - torch_out))) if onnx_out.size else 0.0
    if not diff <= tolerance:
        raise ExportError(f"the ONNX model differs from the torch model by up to {diff:.3g} on {len(features)} test "
                          f"rows (tolerance {tolerance:g}); the export is not trustworthy")
    return diff


@contextmanager
def _quiet(*names):
    """Silence chatty exporter loggers for the duration of an export."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
