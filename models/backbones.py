"""torchvision architectures as image backbones (model.type torchvision): the network with its classifier replaced
by a head for the new classes, the backbone's weights from a local file or the local torch hub cache (never a
download), and the preprocessing its published weights were trained with.

torchvision is imported here only when such a network is built or its weights looked up: a table or text run never
imports it. The arch table is plain data in models/archs.py, so that configs validate without torch."""
from pathlib import Path

import torch
from torch import nn

from models.archs import ARCHS, PATCH_SIZES, arch_of, check_image_size  # noqa: F401 - used from here too
from models.freezing import FrozenNormsStayInEval
from preprocessing.errors import TorchyardError


class WeightsError(TorchyardError):
    """model.weights names a file that is not there, or weights that do not fit model.arch."""


def is_enum_name(weights: str) -> bool:
    return arch_of(weights) is not None and not Path(weights).expanduser().is_file()


class Backbone(FrozenNormsStayInEval, nn.Module):
    """A torchvision network as `features` (everything up to its classifier's last layer, which becomes an identity)
    and `head` (a Linear layer for `output_size` outputs): the layout of the CNN, so freezing, --pretrained transfer
    and the saved form work the same. One-channel images are repeated to the three channels the arch takes."""

    def __init__(self, arch: str, in_channels: int, output_size: int, image_size: int | None = None):
        super().__init__()
        from torchvision import models

        if arch not in ARCHS:
            raise ValueError(f"model.arch {arch!r} is not offered; choose one of {', '.join(ARCHS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"model.type torchvision takes 1- or 3-channel images, not {in_channels}")
        arguments = {"image_size": image_size} if arch in PATCH_SIZES and image_size else {}
        network = getattr(models, arch)(weights=None, **arguments)
        last = ARCHS[arch][1]
        width = network.get_submodule(last).in_features
        parent, _, name = last.rpartition(".")
        setattr(network.get_submodule(parent), name, nn.Identity())  # get_submodule("") is the network itself
        self.arch, self.in_channels = arch, in_channels
        self.features = network
        self.head = nn.Linear(width, output_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.head(self.features(images))


# ---------------------------------------------------------------- weights

def locate_weights(weights: str, arch: str) -> Path:
    """The local file behind model.weights: the path itself, or, for a torchvision weights enum name, its file in the
    torch hub cache. WeightsError naming where to put it when it is not there; nothing is ever downloaded."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    belongs_to = arch_of(weights)
    if belongs_to is None:
        raise WeightsError(f"model.weights: no such file {path.resolve()}; give a torchvision state-dict file (.pth) "
                           f"or a torchvision weights name such as {ARCHS[arch][0]}.DEFAULT")
    if belongs_to != arch:
        raise WeightsError(f"model.weights {weights} are weights of {belongs_to}, not of model.arch {arch}")
    enum = weights_enum(weights)
    # where torch keeps downloaded weights: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)
    file = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    if not file.is_file():
        raise WeightsError(f"model.weights {weights}: {file} not found. Nothing is downloaded at run time: put the "
                           f"file there (published at {enum.url}), set TORCH_HOME to the folder whose "
                           "hub/checkpoints holds it, or give the file's path as model.weights")
    return file


def weights_enum(weights: str):
    """The torchvision weights enum member for a name ('ResNet18_Weights.IMAGENET1K_V1', '...DEFAULT')."""
    from torchvision import models

    try:
        return models.get_weight(weights)
    except (ValueError, KeyError, AttributeError) as exc:
        enum = weights.split(".", 1)[0]
        members = [f"{enum}.{m.name}" for m in getattr(models, enum, [])] + [f"{enum}.DEFAULT"]
        raise WeightsError(f"model.weights {weights} is not a torchvision weights name; those of {enum}: "
                           + ", ".join(members)) from exc


def load_weights(network: Backbone, weights: str) -> Path:
    """Load the backbone's weights (everything but the published classifier's last layer, which the head replaces)
    into `network.features`; ViT position embeddings are interpolated to the network's image size. Returns the file."""
    file = locate_weights(weights, network.arch)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle of a whole module, a truncated file...
        raise WeightsError(f"model.weights {file} is not a loadable state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"model.weights {file} holds a {type(state).__name__}, not a state dict")
    head = ARCHS[network.arch][1] + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    features = network.features
    if network.arch in PATCH_SIZES and "encoder.pos_embedding" in state:
        if state["encoder.pos_embedding"].shape != features.encoder.pos_embedding.shape:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(features.image_size, features.patch_size, state)
    missing, unexpected = features.load_state_dict(state, strict=False)
    if missing or unexpected:
        keys, kind = (missing, "missing") if missing else (unexpected, "unexpected")
        raise WeightsError(f"model.weights {file} do not fit model.arch {network.arch}: {len(keys)} {kind} key(s) "
                           f"({', '.join(keys[:4])})")
    return file


# ---------------------------------------------------------------- preprocessing

def preprocessing_of(arch: str, weights: str | None) -> dict | None:
    """The input the weights were trained on, from torchvision's metadata: {'image_size', 'resize', 'mean', 'std'}
    (crop side, shorter side before cropping, ImageNet statistics). For a weights file, that of the arch's default
    weights (published torchvision state dicts are those). None without weights (random initialisation)."""
    if not weights:
        return None
    from torchvision import models

    enum = weights_enum(weights) if is_enum_name(weights) else models.get_model_weights(arch).DEFAULT
    transforms = enum.transforms()
    return {"image_size": int(transforms.crop_size[0]), "resize": int(transforms.resize_size[0]),
            "mean": [float(m) for m in transforms.mean], "std": [float(s) for s in transforms.std]}
