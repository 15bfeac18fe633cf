"""Residual adds and squeeze-and-excitation gates of torchvision blocks as modules.

Module hooks do not see an add ``x + f(x)`` or a gate ``x * s`` written in ``forward``: the
gradient, which stands in for relevance there, copies the full relevance into both branches
of an add (relevance is created) and scales it by the gate. Each canonizer here overloads the
``forward`` of one torchvision block type so that

- the residual add is a :class:`zennit.layer.Sum` of the branches stacked on a new last axis
  (Zennit's composites give ``Sum`` the ``Norm`` rule: each branch gets relevance in
  proportion to its contribution), and
- the squeeze-and-excitation gate is :class:`zennit_ext.layers.Multiply` with the activation
  first and the gate second (``ProductRule((1, 0))`` holds the gate constant: the activation
  gets all relevance, as in the LRP treatment of gates, e.g. Arras et al., "Explaining
  Recurrent Neural Network Predictions in Sentiment Analysis", WASSA 2017, arXiv:1706.07206).

Every overloaded forward computes what the block's own forward computes (the stochastic
depth module is still called, so train and eval mode behave as before).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mnasnet import _InvertedResidual as MNASNetBlock
from torchvision.models.mobilenetv2 import InvertedResidual as MobileNetV2Block
from torchvision.models.mobilenetv3 import InvertedResidual as MobileNetV3Block
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.ops.misc import SqueezeExcitation
from zennit.layer import Sum

from zennit_ext.canonizers.core import ForwardCanonizer
from zennit_ext.layers import Multiply

__all__ = [
    "MobileNetV2ResidualCanonizer",
    "MobileNetV3ResidualCanonizer",
    "MNASNetResidualCanonizer",
    "MBConvResidualCanonizer",
    "RegNetResidualCanonizer",
    "SqueezeExcitationCanonizer",
]


def _summed(module: Any, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first + second`` through the block's ``canonizer_sum``."""
    return module.canonizer_sum(torch.stack([first, second], dim=-1))


class _SumCanonizer(ForwardCanonizer):
    """A block whose add becomes ``canonizer_sum``."""

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The ``Sum`` of the residual add."""
        return {"canonizer_sum": Sum()}


class MobileNetV2ResidualCanonizer(_SumCanonizer):
    """MobileNetV2's ``InvertedResidual``: ``x + conv(x)`` (blocks with a skip only)."""

    block_types = (MobileNetV2Block,)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """An inverted residual block with its skip."""
        return super().applies(module) and bool(module.use_res_connect)

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """``x + conv(x)`` through ``Sum``."""
        return _summed(self, x, self.conv(x))


class MobileNetV3ResidualCanonizer(_SumCanonizer):
    """MobileNetV3's ``InvertedResidual``: ``block(x) + x`` (blocks with a skip only)."""

    block_types = (MobileNetV3Block,)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """An inverted residual block with its skip."""
        return super().applies(module) and bool(module.use_res_connect)

    @staticmethod
    def forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``input + block(input)`` through ``Sum``."""
        return _summed(self, input, self.block(input))


class MNASNetResidualCanonizer(_SumCanonizer):
    """MNASNet's ``_InvertedResidual``: ``layers(x) + x`` (blocks with a skip only)."""

    block_types = (MNASNetBlock,)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """An inverted residual block with its skip."""
        return super().applies(module) and bool(module.apply_residual)

    @staticmethod
    def forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``input + layers(input)`` through ``Sum``."""
        return _summed(self, input, self.layers(input))


class MBConvResidualCanonizer(_SumCanonizer):
    """EfficientNet's ``MBConv`` and EfficientNetV2's ``FusedMBConv``: ``sd(block(x)) + x``.

    ``sd`` is the block's stochastic depth module (the identity in eval mode).
    """

    block_types = (MBConv, FusedMBConv)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """A block with its skip."""
        return super().applies(module) and bool(module.use_res_connect)

    @staticmethod
    def forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``input + stochastic_depth(block(input))`` through ``Sum``."""
        return _summed(self, input, self.stochastic_depth(self.block(input)))


class RegNetResidualCanonizer(_SumCanonizer):
    """RegNet's ``ResBottleneckBlock``: ``activation(proj(x) + f(x))`` or ``activation(x + f(x))``.

    Both adds become ``Sum``: with a projection the block still adds two branches.
    """

    block_types = (ResBottleneckBlock,)

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """``activation(skip + f(x))`` through ``Sum``."""
        skip = x if self.proj is None else self.proj(x)
        return self.activation(_summed(self, skip, self.f(x)))


class SqueezeExcitationCanonizer(ForwardCanonizer):
    """torchvision's ``SqueezeExcitation`` (MobileNetV3, EfficientNet, RegNet-Y, MaxViT):
    the gate ``scale * input`` becomes ``canonizer_multiply(input, scale)``.

    The activation is the first factor, the gate the second: a composite that maps
    :class:`~zennit_ext.layers.Multiply` to ``ProductRule((1, 0))`` passes all relevance to
    the activation and none into the gate's branch.
    """

    block_types = (SqueezeExcitation,)

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The ``Multiply`` of the gate."""
        return {"canonizer_multiply": Multiply()}

    @staticmethod
    def forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``input * scale`` through ``Multiply`` (activation first, gate second)."""
        return self.canonizer_multiply(input, self._scale(input))
