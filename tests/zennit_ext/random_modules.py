"""Small modules with non-trivial random parameters, shared by the zennit_ext tests."""

from __future__ import annotations

import torch
from torch import nn


def random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    """A BatchNorm with non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.copy_(torch.randn(channels, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.bias.data.copy_(torch.randn(channels, generator=g) * 0.1)
    return bn
