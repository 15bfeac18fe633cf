"""Canonizers for every family of torchvision's classification CNNs.

One :class:`~zennit_ext.canonizers.core.CanonizerGroup` per family (applied all or nothing,
removed in reverse): it merges the BatchNorms that follow a linear layer
(:mod:`zennit_ext.canonizers.merge`), makes residual adds and squeeze-and-excitation gates
modules (:mod:`zennit_ext.canonizers.residual`), and makes the remaining expressions in
``forward`` that change relevance modules:

- global average pooling written as ``x.mean((2, 3))`` or ``F.adaptive_avg_pool2d``
  (MobileNetV2, MNASNet, ShuffleNetV2, DenseNet) becomes ``nn.AdaptiveAvgPool2d``: its rule
  (``Norm``) shares relevance in proportion to the activations, where the gradient would
  spread it evenly over all positions, also those with zero activation;
- Inception v3's branch pooling ``F.avg_pool2d(x, 3, 1, 1)`` becomes ``nn.AvgPool2d``: the
  gradient loses relevance at the borders (zero padding counts in the mean);
- GoogLeNet's and Inception v3's ``transform_input`` (a per-channel affine map written in
  ``forward``, on for ImageNet weights) becomes :class:`ChannelAffine`, a BatchNorm that
  composites pass relevance through; the gradient would scale it by 0.45;
- DenseNet's final ``F.relu`` becomes ``nn.ReLU`` and a memory-efficient dense layer does not
  checkpoint (a checkpoint reruns the forward in the backward pass, with the hooks).

The merged BatchNorm of a block is the one its forward applies to the convolution's output;
DenseNet's first BatchNorm of each layer (BN–ReLU–conv) and its transition and final
BatchNorms have no such convolution: :class:`~zennit_ext.canonizers.merge.KeepBatchNorm`
declares them (Zennit's composites: ``Pass``). Nothing is needed for AlexNet, SqueezeNet and
VGG without BatchNorm (every operation is a module there).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseLayer, _Transition
from torchvision.models.googlenet import BasicConv2d as GoogLeNetConv
from torchvision.models.googlenet import GoogLeNet
from torchvision.models.inception import BasicConv2d as InceptionConv
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE
from torchvision.models.maxvit import MBConv as MaxViTMBConv
from torchvision.models.mnasnet import MNASNet
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from zennit_ext.canonizers.core import CanonizerGroup, ForwardCanonizer
from zennit_ext.canonizers.merge import (
    AdjacentMergeBatchNorm,
    AttributeMergeBatchNorm,
    KeepBatchNorm,
)
from zennit_ext.canonizers.residual import (
    MBConvResidualCanonizer,
    MNASNetResidualCanonizer,
    MobileNetV2ResidualCanonizer,
    MobileNetV3ResidualCanonizer,
    RegNetResidualCanonizer,
    SqueezeExcitationCanonizer,
)

__all__ = [
    "ChannelAffine",
    "InputTransformCanonizer",
    "InceptionPoolCanonizer",
    "GlobalPoolCanonizer",
    "DenseLayerCanonizer",
    "ResNetCanonizer",
    "VGGCanonizer",
    "DenseNetCanonizer",
    "GoogLeNetCanonizer",
    "InceptionCanonizer",
    "MobileNetV2Canonizer",
    "MobileNetV3Canonizer",
    "MNASNetCanonizer",
    "EfficientNetCanonizer",
    "RegNetCanonizer",
    "ShuffleNetV2Canonizer",
    "MaxViTBatchNormCanonizer",
]

# torchvision's transform_input: ImageNet normalization undone, then (x - 0.5) / 0.5
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ChannelAffine(nn.BatchNorm2d):
    """``x * scale + shift`` per channel, as a BatchNorm that never uses batch statistics.

    A BatchNorm so that rule composites recognize it (Zennit's composites pass relevance
    through BatchNorms); running mean 0, variance 1, ``eps = 0``, so the output is exactly
    ``x * weight + bias`` in train and eval mode.

    Parameters
    ----------
    scale, shift : sequence of float
        One value per channel.
    dtype, device
        Of the parameters (those of the model it joins).
    """

    def __init__(
        self,
        scale: tuple[float, ...],
        shift: tuple[float, ...],
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(len(scale), eps=0.0, dtype=dtype, device=device)
        with torch.no_grad():
            self.weight.copy_(torch.tensor(scale, dtype=torch.float64))
            self.bias.copy_(torch.tensor(shift, dtype=torch.float64))
        self.eval()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``input * weight + bias`` per channel (input (batch, C, H, W))."""
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 0.0
        )


def _first_parameter(module: nn.Module) -> torch.Tensor:
    return next(module.parameters())


class InputTransformCanonizer(ForwardCanonizer):
    """GoogLeNet's and Inception v3's ``transform_input`` as ``canonizer_input``
    (:class:`ChannelAffine`); models with ``transform_input=False`` are left alone."""

    block_types = (GoogLeNet, Inception3)
    method = "_transform_input"

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """A model that transforms its input."""
        return super().applies(module) and bool(module.transform_input)

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The affine map: ``x * std / 0.5 + (mean - 0.5) / 0.5`` per channel."""
        reference = _first_parameter(module)
        scale = tuple(std / 0.5 for std in _STD)
        shift = tuple((mean - 0.5) / 0.5 for mean in _MEAN)
        affine = ChannelAffine(scale, shift, dtype=reference.dtype, device=reference.device)
        return {"canonizer_input": affine}

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """The transformed input."""
        return self.canonizer_input(x)


def _chain(block: Any, x: torch.Tensor, *names: str) -> torch.Tensor:
    for name in names:
        x = getattr(block, name)(x)
    return x


def _pair(block: Any, x: torch.Tensor, first: str, second: str) -> torch.Tensor:
    return torch.cat([getattr(block, first)(x), getattr(block, second)(x)], 1)


class InceptionPoolCanonizer(ForwardCanonizer):
    """Inception v3's ``InceptionA``/``C``/``E``: the branch pooling ``F.avg_pool2d(x, 3, 1, 1)``
    as ``canonizer_avgpool`` (``nn.AvgPool2d``)."""

    block_types = (InceptionA, InceptionC, InceptionE)
    method = "_forward"

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The average pooling of the pool branch."""
        return {"canonizer_avgpool": nn.AvgPool2d(kernel_size=3, stride=1, padding=1)}

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs, concatenated by the block's ``forward``."""
        first = self.branch1x1(x)
        if isinstance(self, InceptionA):
            middle = [
                _chain(self, x, "branch5x5_1", "branch5x5_2"),
                _chain(self, x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            ]
        elif isinstance(self, InceptionC):
            middle = [
                _chain(self, x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
                _chain(self, x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
            ]
        else:  # InceptionE
            middle = [
                _pair(self, self.branch3x3_1(x), "branch3x3_2a", "branch3x3_2b"),
                _pair(
                    self,
                    _chain(self, x, "branch3x3dbl_1", "branch3x3dbl_2"),
                    "branch3x3dbl_3a",
                    "branch3x3dbl_3b",
                ),
            ]
        pooled = self.branch_pool(self.canonizer_avgpool(x))
        return [first, *middle, pooled]


class GlobalPoolCanonizer(ForwardCanonizer):
    """The global average pooling of MobileNetV2, MNASNet, ShuffleNetV2 and DenseNet (written
    in ``forward``) as ``canonizer_avgpool`` (``nn.AdaptiveAvgPool2d(1)``); DenseNet's final
    ``F.relu`` as ``canonizer_relu``."""

    block_types = (MobileNetV2, MNASNet, ShuffleNetV2, DenseNet)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """One of these models, not a subclass (e.g. torchvision's quantizable models, whose
        ``forward`` adds quantization steps)."""
        return type(module) in cls.block_types

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The pooling (and DenseNet's ReLU)."""
        attached: dict[str, nn.Module] = {"canonizer_avgpool": nn.AdaptiveAvgPool2d(1)}
        if isinstance(module, DenseNet):
            attached["canonizer_relu"] = nn.ReLU()
        return attached

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """The model's forward with the pooling as a module."""
        if isinstance(self, MobileNetV2):
            x = self.features(x)
        elif isinstance(self, MNASNet):
            x = self.layers(x)
        elif isinstance(self, ShuffleNetV2):
            x = _chain(self, x, "conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")
        else:  # DenseNet
            x = self.canonizer_relu(self.features(x))
        x = torch.flatten(self.canonizer_avgpool(x), 1)
        return self.fc(x) if isinstance(self, ShuffleNetV2) else self.classifier(x)


class DenseLayerCanonizer(ForwardCanonizer):
    """A memory-efficient DenseNet layer without checkpointing (same values; a checkpoint
    would rerun the layer, and the rules' hooks, in the backward pass)."""

    block_types = (_DenseLayer,)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """A dense layer that checkpoints."""
        return super().applies(module) and bool(module.memory_efficient)

    @staticmethod
    def forward(self: Any, input: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """``_DenseLayer.forward`` without ``torch.utils.checkpoint``."""
        features = [input] if isinstance(input, torch.Tensor) else input
        new = self.conv2(self.relu2(self.norm2(self.bn_function(features))))
        if self.drop_rate > 0:
            new = F.dropout(new, p=self.drop_rate, training=self.training)
        return new


_CONV_BN = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


class ResNetCanonizer(CanonizerGroup):
    """ResNet, ResNeXt, Wide ResNet: Zennit's ``Sum`` blocks, exact BatchNorm merges."""

    def __init__(self) -> None:
        super().__init__(
            (
                ResNetBottleneckCanonizer(),
                ResNetBasicBlockCanonizer(),
                AttributeMergeBatchNorm(_CONV_BN, types=(ResNet, BasicBlock, Bottleneck)),
                AdjacentMergeBatchNorm(),  # the downsample branches
            )
        )


class VGGCanonizer(CanonizerGroup):
    """VGG (with or without BatchNorm): exact BatchNorm merges."""

    def __init__(self) -> None:
        super().__init__((AdjacentMergeBatchNorm(),))


class DenseNetCanonizer(CanonizerGroup):
    """DenseNet: pooling and ReLU modules, no checkpointing, the BatchNorms after a
    convolution merged (``conv0``–``norm0``, ``conv1``–``norm2``), the others kept."""

    def __init__(self) -> None:
        super().__init__(
            (
                GlobalPoolCanonizer(),
                DenseLayerCanonizer(),
                AdjacentMergeBatchNorm(),
                AttributeMergeBatchNorm((("conv1", "norm2"),), types=(_DenseLayer,)),
                KeepBatchNorm(
                    ((_DenseLayer, "norm1"), (_Transition, "norm"), (DenseNet, "features.norm5"))
                ),
            )
        )


_BASIC_CONV = AttributeMergeBatchNorm((("conv", "bn"),), types=(GoogLeNetConv, InceptionConv))


class GoogLeNetCanonizer(CanonizerGroup):
    """GoogLeNet: the input transform as a module, ``BasicConv2d`` BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (
                InputTransformCanonizer(),
                KeepBatchNorm(((GoogLeNet, "canonizer_input"),)),
                _BASIC_CONV.copy(),
            )
        )


class InceptionCanonizer(CanonizerGroup):
    """Inception v3: the input transform and branch pooling as modules, BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (
                InputTransformCanonizer(),
                KeepBatchNorm(((Inception3, "canonizer_input"),)),
                InceptionPoolCanonizer(),
                _BASIC_CONV.copy(),
            )
        )


class MobileNetV2Canonizer(CanonizerGroup):
    """MobileNetV2: ``Sum`` skips, pooling module, BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (MobileNetV2ResidualCanonizer(), GlobalPoolCanonizer(), AdjacentMergeBatchNorm())
        )


class MobileNetV3Canonizer(CanonizerGroup):
    """MobileNetV3: ``Sum`` skips, ``Multiply`` gates, BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (
                MobileNetV3ResidualCanonizer(),
                SqueezeExcitationCanonizer(),
                AdjacentMergeBatchNorm(),
            )
        )


class MNASNetCanonizer(CanonizerGroup):
    """MNASNet: ``Sum`` skips, pooling module, BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (MNASNetResidualCanonizer(), GlobalPoolCanonizer(), AdjacentMergeBatchNorm())
        )


class EfficientNetCanonizer(CanonizerGroup):
    """EfficientNet B0–B7 and V2: ``Sum`` skips (MBConv, FusedMBConv), ``Multiply`` gates,
    BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (MBConvResidualCanonizer(), SqueezeExcitationCanonizer(), AdjacentMergeBatchNorm())
        )


class RegNetCanonizer(CanonizerGroup):
    """RegNet X and Y: ``Sum`` adds, ``Multiply`` gates (Y), BatchNorms merged."""

    def __init__(self) -> None:
        super().__init__(
            (RegNetResidualCanonizer(), SqueezeExcitationCanonizer(), AdjacentMergeBatchNorm())
        )


class ShuffleNetV2Canonizer(CanonizerGroup):
    """ShuffleNetV2: pooling module, BatchNorms merged (chunk, concatenation and channel
    shuffle only move values: their gradient keeps relevance)."""

    def __init__(self) -> None:
        super().__init__((GlobalPoolCanonizer(), AdjacentMergeBatchNorm()))


class MaxViTBatchNormCanonizer(CanonizerGroup):
    """MaxViT's BatchNorms: those right after a convolution (the stem, each MBConv's
    ``conv_a`` and ``conv_b``) merged, each MBConv's ``pre_norm`` (before its first
    convolution, no linear layer precedes it) kept. The attention and the residual adds are
    :class:`~zennit_ext.attention.maxvit.MaxViTCanonizer`'s, the gates
    ``SqueezeExcitationCanonizer``'s (``'auto'`` applies all three)."""

    def __init__(self) -> None:
        super().__init__(
            (AdjacentMergeBatchNorm(), KeepBatchNorm(((MaxViTMBConv, "layers.pre_norm"),)))
        )
