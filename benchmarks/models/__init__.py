"""Reference models: small architectures, cached training, and a pretrained ImageNet net."""

from benchmarks.models.architectures import DNACNN, MNISTMLP, ResNetSmall, SynergyMLP, VGGSmall
from benchmarks.models.pretrained import imagenet_classes, load_efficientnet_lite0, load_photos
from benchmarks.models.training import MODEL_NAMES, evaluate, fit, get_trained, trained_info

__all__ = [
    "DNACNN",
    "MNISTMLP",
    "MODEL_NAMES",
    "ResNetSmall",
    "SynergyMLP",
    "VGGSmall",
    "evaluate",
    "fit",
    "get_trained",
    "imagenet_classes",
    "load_efficientnet_lite0",
    "load_photos",
    "trained_info",
]
