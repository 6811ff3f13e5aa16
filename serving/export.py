"""torch -> ONNX export with a dynamic batch axis, checked against the torch model with ONNX Runtime."""
import io
import logging
import warnings

import numpy as np
import onnxruntime as ort
import torch

from preprocessing.errors import TorchyardError

INPUT_NAMES = {"tabular": "features", "image": "images"}  # float32 [batch, n_features] / [batch, C, H, W]


class ExportError(TorchyardError):
    """The exported model does not reproduce the torch model."""


def export_onnx(model: torch.nn.Module, example: torch.Tensor, output_name: str, input_name: str = "features") -> bytes:
    """Serialised ONNX model taking float32 `input_name` with a dynamic batch axis, returning `output_name`."""
    model = model.eval().cpu()
    example = example[: max(2, min(len(example), 8))].float().cpu()  # batch >= 2: a size-1 axis is specialised
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), input_names=[input_name],
                                    output_names=[output_name], verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def parity(onnx_bytes: bytes, model: torch.nn.Module, features: np.ndarray, tolerance: float) -> float:
    """Max |ONNX Runtime - torch| over `features`; ExportError above `tolerance`."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)})
    with torch.no_grad():
        torch_out = model.eval().cpu()(torch.from_numpy(features.astype(np.float32))).numpy()
    diff = float(np.max(np.abs(onnx_out - torch_out))) if onnx_out.size else 0.0
    if not diff <= tolerance:
        raise ExportError(f"the ONNX model differs from the torch model by up to {diff:.3g} on {len(features)} test "
                          f"rows (tolerance {tolerance:g}); the export is not trustworthy")
    return diff


class _quiet:
    """Silence chatty exporter loggers for the duration of an export."""

    def __init__(self, *names):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
