"""Canonizers PLRP needs beyond Zennit's own: BatchNorm merging by attribute names, and the
residual adds of EfficientNet-Lite (``efficientnet_lite_pytorch``) as Zennit ``Sum`` modules.

Zennit's :class:`~zennit.canonizers.SequentialMergeBatchNorm` only sees BatchNorms that follow
a linear layer inside an ``nn.Sequential``, and a functional ``x + inputs`` skip sends the
full relevance down both branches; these canonizers fix both for models that keep their
layers as named attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, MergeBatchNorm
from zennit.layer import Sum

from zennit_ext._rules import ModuleState

__all__ = ["AttributeMergeBatchNorm", "MBConvSkipCanonizer", "EfficientNetLiteCanonizer"]

EFFICIENTNET_LITE_BN_PAIRS = (
    ("_conv_stem", "_bn0"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
    ("_conv_head", "_bn1"),
)


class AttributeMergeBatchNorm(MergeBatchNorm):
    """Merge ``module.<bn>`` into ``module.<linear>`` for every module that has both attributes.

    Parameters
    ----------
    pairs : sequence of (str, str)
        Attribute names ``(linear, batch_norm)``, e.g. ``("conv1", "bn1")``.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.pairs = tuple((str(linear), str(bn)) for linear, bn in pairs)

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorm]:
        """Merge all matching pairs; return one merge instance per pair (undone by ``remove``)."""
        instances = []
        for module in root_module.modules():
            for linear_name, bn_name in self.pairs:
                linear = getattr(module, linear_name, None)
                batch_norm = getattr(module, bn_name, None)
                if isinstance(linear, nn.Module) and isinstance(batch_norm, nn.BatchNorm2d):
                    instance = self.copy()
                    instance.register([linear], batch_norm)
                    instances.append(instance)
        return instances

    def register(self, linears: Sequence[nn.Module], batch_norm: nn.BatchNorm2d) -> None:
        """Merge ``batch_norm`` into ``linears`` and make it the exact identity (eps = 0).

        zennit 0.5 keeps ``eps`` in the merged BatchNorm, which then scales by
        1/sqrt(1 + eps); with eps = 1e-3 (EfficientNet) this adds up over 49 layers.
        """
        self.batch_norm_eps = batch_norm.eps
        self.module_states = [ModuleState(module) for module in (*linears, batch_norm)]
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        """Undo the merge, including ``eps`` and (zennit 1.0) biases added to bias-free layers."""
        super().remove()
        for state in self.module_states:
            state.restore()
        self.batch_norm.eps = self.batch_norm_eps

    def copy(self) -> AttributeMergeBatchNorm:
        """A fresh canonizer with the same pairs."""
        return self.__class__(self.pairs)


def _has_identity_skip(block: nn.Module) -> bool:
    args: Any = block._block_args  # efficientnet_lite_pytorch's BlockArgs (untyped)
    return bool(
        args.id_skip
        and args.stride in (1, [1], (1, 1))
        and args.input_filters == args.output_filters
    )


class MBConvSkipCanonizer(AttributeCanonizer):
    """Replace the functional skip ``x + inputs`` of EfficientNet-Lite MBConv blocks by ``Sum``.

    Only blocks without squeeze-and-excitation are changed (EfficientNet-Lite has none);
    the canonized forward is the eval-mode forward (no drop-connect).
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if type(module).__name__ != "MBConvBlock" or getattr(module, "has_se", True):
            return None
        return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}

    @staticmethod
    def forward(
        self: Any, inputs: torch.Tensor, drop_connect_rate: float | None = None
    ) -> torch.Tensor:
        """MBConv forward (expand → depthwise → project) with the skip through a Sum module.

        ``self`` is an ``efficientnet_lite_pytorch`` ``MBConvBlock`` (a package without type
        information).
        """
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if _has_identity_skip(self):
            x = self.canonizer_sum(torch.stack([inputs, x], dim=-1))
        return x


class EfficientNetLiteCanonizer(CompositeCanonizer):
    """BatchNorm merging and Sum skips for ``efficientnet_lite_pytorch.EfficientNet`` models."""

    def __init__(self) -> None:
        super().__init__(
            (AttributeMergeBatchNorm(EFFICIENTNET_LITE_BN_PAIRS), MBConvSkipCanonizer())
        )
