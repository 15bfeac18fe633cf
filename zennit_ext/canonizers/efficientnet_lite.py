"""Canonizers for EfficientNet-Lite models of ``efficientnet_lite_pytorch``.

That package keeps its layers as named attributes (``_expand_conv``, ``_bn0``, …) and writes
the skip of its MBConv blocks as ``x + inputs`` in ``forward``: the BatchNorms are merged by
attribute names (:class:`~zennit_ext.canonizers.merge.AttributeMergeBatchNorm`) and the skip
becomes a Zennit ``Sum`` (a functional add would send the full relevance down both branches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.layer import Sum

from zennit_ext.canonizers.core import CanonizerGroup, ForwardCanonizer
from zennit_ext.canonizers.merge import AttributeMergeBatchNorm

__all__ = ["EFFICIENTNET_LITE_BN_PAIRS", "MBConvSkipCanonizer", "EfficientNetLiteCanonizer"]

EFFICIENTNET_LITE_BN_PAIRS = (
    ("_conv_stem", "_bn0"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
    ("_conv_head", "_bn1"),
)


def _has_identity_skip(block: nn.Module) -> bool:
    args: Any = block._block_args  # efficientnet_lite_pytorch's BlockArgs (untyped)
    return bool(
        args.id_skip
        and args.stride in (1, [1], (1, 1))
        and args.input_filters == args.output_filters
    )


def is_lite_mbconv(module: nn.Module) -> bool:
    """Whether ``module`` is an ``efficientnet_lite_pytorch`` MBConv block (matched by name:
    the package is optional)."""
    return type(module).__name__ == "MBConvBlock" and hasattr(module, "_block_args")


class MBConvSkipCanonizer(ForwardCanonizer):
    """Replace the functional skip ``x + inputs`` of EfficientNet-Lite MBConv blocks by ``Sum``.

    Only blocks without squeeze-and-excitation are changed (EfficientNet-Lite has none);
    the canonized forward is the eval-mode forward: drop-connect (a ``drop_connect_rate`` in
    training mode) raises ``RuntimeError``.
    """

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """An MBConv block without squeeze-and-excitation."""
        return is_lite_mbconv(module) and not getattr(module, "has_se", True)

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The ``Sum`` of the skip."""
        return {"canonizer_sum": Sum()}

    @staticmethod
    def forward(
        self: Any, inputs: torch.Tensor, drop_connect_rate: float | None = None
    ) -> torch.Tensor:
        """MBConv forward (expand → depthwise → project) with the skip through a Sum module.

        ``self`` is an ``efficientnet_lite_pytorch`` ``MBConvBlock`` (a package without type
        information).
        """
        if drop_connect_rate and self.training:
            raise RuntimeError(
                "MBConvSkipCanonizer: drop-connect in training mode is not part of the canonized "
                "(eval-mode) forward; call model.eval() first"
            )
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if _has_identity_skip(self):
            x = self.canonizer_sum(torch.stack([inputs, x], dim=-1))
        return x


class EfficientNetLiteCanonizer(CanonizerGroup):
    """BatchNorm merging and Sum skips for ``efficientnet_lite_pytorch.EfficientNet`` models."""

    def __init__(self) -> None:
        super().__init__(
            (AttributeMergeBatchNorm(EFFICIENTNET_LITE_BN_PAIRS), MBConvSkipCanonizer())
        )
