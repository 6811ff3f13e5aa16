"""The torchvision architectures model.type torchvision offers, as plain data: the config (read by the CLI's --help,
which imports no torch) and models/backbones.py share it."""

# arch -> (its torchvision weights enum, the path of the classifier's last Linear, which the head replaces)
ARCHS = {
    "resnet18": ("ResNet18_Weights", "fc"),
    "resnet34": ("ResNet34_Weights", "fc"),
    "resnet50": ("ResNet50_Weights", "fc"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "classifier.3"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "classifier.3"),
    "efficientnet_b0": ("EfficientNet_B0_Weights", "classifier.1"),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights", "classifier.2"),
    "vit_b_16": ("ViT_B_16_Weights", "heads.head"),
}
ARCH_OF_WEIGHTS = {enum: arch for arch, (enum, _) in ARCHS.items()}
PATCH_SIZES = {"vit_b_16": 16}  # the image side must be a multiple of it


def arch_of(weights: str | None) -> str | None:
    """The arch a torchvision weights enum name belongs to ('ResNet18_Weights.IMAGENET1K_V1' -> 'resnet18'), or None
    for a file path or an unknown name."""
    if not weights or "/" in weights or "\\" in weights:
        return None
    return ARCH_OF_WEIGHTS.get(weights.split(".", 1)[0])


def check_image_size(arch: str, image_size: int) -> None:
    patch = PATCH_SIZES.get(arch)
    if patch and image_size % patch:
        raise ValueError(f"model.arch {arch} needs image.image_size divisible by {patch} (its patch size), got "
                         f"{image_size}")
