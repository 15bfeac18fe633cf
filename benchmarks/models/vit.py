"""A small Vision Transformer for the offline 64² data (torchvision's ``VisionTransformer``)."""

from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["parts_vit"]


def parts_vit(num_classes: int = 3, image_size: int = 64) -> nn.Module:
    """torchvision's ``VisionTransformer``: 8×8 patches, 4 blocks of 4 heads, 64 dims, MLP 128.

    The ViT of Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
    Recognition at Scale" (arXiv:2010.11929), shrunk to train in minutes on 2 cores; the
    :mod:`benchmarks.transformers` suite explains it with AttnLRP and CP-LRP.

    Parameters
    ----------
    num_classes : int
        Logits, (N, num_classes).
    image_size : int
        Input side; inputs are (N, 3, image_size, image_size), a multiple of 8.

    Returns
    -------
    nn.Module
        Randomly initialised (call under your own seed); 64 patch tokens and a class token.
    """
    return torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )
