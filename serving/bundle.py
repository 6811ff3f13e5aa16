"""The model file (`--model_fn x.pth`): everything predict and serve need, loadable without unpickling code.

It is a torch.save of plain data only (dicts, lists, numbers, strings, tensors), read back with
torch.load(weights_only=True): the preprocessing state, the label map, the network weights, the ONNX model as
bytes, the config and the metrics. `x.onnx` is written beside it for tools such as Netron; the .pth copy is the
one predict uses, so a single file can be moved around.
"""
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from preprocessing.errors import TorchyardError

FORMAT = "torchyard.model/1"


class ModelFileError(TorchyardError):
    """The model file is missing or is not a torchyard model."""


@dataclass
class ModelBundle:
    """What a model file holds: everything Predictor, serving and model.pretrained need."""

    onnx: bytes  # the exported network, preprocessing applied outside it
    data_type: str  # tabular | image | text: which kind (preprocessing/kinds/) reads its inputs
    task: str  # classification | regression
    preprocessing: dict  # the fitted preprocessing state (with the target and its label map)
    metrics: dict = field(default_factory=dict)  # test metrics at export
    run: dict = field(default_factory=dict)  # where it was trained: run_id, experiment, config, ...
    network: dict | None = None  # model_config, input_size, output_size, state_dict: for model.pretrained
    format: str = FORMAT


def save_bundle(path: str | Path, *, onnx_bytes: bytes, **contents) -> Path:
    """Write ModelBundle(onnx=onnx_bytes, **contents) as a model file, and the .onnx beside it."""
    bundle = ModelBundle(onnx=onnx_bytes, **contents)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**asdict(bundle), "onnx": torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8)}, path)
    path.with_suffix(".onnx").write_bytes(onnx_bytes)
    return path


def onnx_metadata(data_type: str, task: str, preprocessing: dict, metrics: dict, run: dict) -> dict[str, str]:
    """What goes into the .onnx file's metadata_props, so that the .onnx alone can be served."""
    return {"torchyard.format": FORMAT, "torchyard.data_type": data_type, "torchyard.task": task,
            "torchyard.preprocessing": json.dumps(preprocessing), "torchyard.metrics": json.dumps(metrics),
            "torchyard.run": json.dumps({k: v for k, v in run.items() if k != "config"})}


def load_model_file(path: str | Path) -> ModelBundle:
    """A model file (.pth) or an exported .onnx (with torchyard metadata) as the bundle Predictor takes; every
    field checked (ModelFileError naming the file and what is missing or wrong)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return load_bundle(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFileError(f"{path} is not an ONNX model: {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("torchyard.format") != FORMAT:
        raise ModelFileError(f"{path} has no torchyard preprocessing metadata; serve the .pth model file written "
                             "beside it, or an .onnx exported by torchyard")
    if missing := [key for key in _ONNX_REQUIRED if key not in meta]:
        raise ModelFileError(f"{path} has incomplete torchyard metadata: it lacks {', '.join(missing)}; export it "
                             "again (train.py --model_fn writes both files)")
    parsed = {}
    for key in ("torchyard.preprocessing", "torchyard.metrics", "torchyard.run"):
        try:
            parsed[key.removeprefix("torchyard.")] = json.loads(meta.get(key, "{}"))
        except ValueError as exc:
            raise ModelFileError(f"{path} has bad torchyard metadata: {key} is not valid JSON ({exc})") from None
    bundle = ModelBundle(onnx=path.read_bytes(), data_type=meta["torchyard.data_type"], task=meta["torchyard.task"],
                         **parsed)
    return check_fields(bundle, str(path))


def load_bundle(path: str | Path) -> ModelBundle:
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
    if missing := [key for key in _REQUIRED if key not in bundle]:
        raise ModelFileError(f"{path} is an incomplete torchyard model file: it lacks {', '.join(missing)}; "
                             "train it again with train.py --model_fn")
    onnx_bytes = bundle["onnx"]
    if not isinstance(onnx_bytes, torch.Tensor) or onnx_bytes.dtype != torch.uint8 or onnx_bytes.dim() != 1:
        raise ModelFileError(f"{path} is a damaged torchyard model file: its 'onnx' entry is not the ONNX model's "
                             "bytes; train it again with train.py --model_fn")
    bundle["onnx"] = onnx_bytes.numpy().tobytes()
    known = {f.name for f in fields(ModelBundle)}  # entries a newer torchyard may add are left out
    return check_fields(ModelBundle(**{k: v for k, v in bundle.items() if k in known}), str(path))


_REQUIRED = ("onnx", "data_type", "task", "preprocessing")  # what Predictor needs; metrics, run, network optional
_ONNX_REQUIRED = ("torchyard.data_type", "torchyard.task", "torchyard.preprocessing")
TASKS = ("classification", "regression")


def check_fields(bundle: ModelBundle, source: str) -> ModelBundle:
    """The bundle, when its fields have the types and values a model needs; else ModelFileError naming `source`
    and the field. (serving.inference.Predictor then checks the preprocessing state and the ONNX graph, and
    Predictor.check() makes one prediction.)"""
    from preprocessing.kinds import DATA_TYPES

    problems = []
    for name, allowed in (("data_type", DATA_TYPES), ("task", TASKS)):
        if getattr(bundle, name) not in allowed:
            problems.append(f"{name} is {getattr(bundle, name)!r}, not one of {', '.join(allowed)}")
    for name in ("preprocessing", "metrics", "run"):
        if not isinstance(getattr(bundle, name), dict):
            problems.append(f"{name} is a {type(getattr(bundle, name)).__name__}, not a mapping")
    if not bundle.onnx:
        problems.append("the ONNX model is empty")
    if problems:
        raise ModelFileError(f"{source} is not a usable torchyard model: {'; '.join(problems)}")
    return bundle
