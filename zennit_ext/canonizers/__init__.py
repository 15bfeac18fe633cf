"""Canonizers beyond Zennit's own: torchvision's CNN families, EfficientNet-Lite, ``'auto'``.

A canonizer changes a model for the duration of a Zennit composite so that every step of its
forward that LRP rules must see is a module, with outputs unchanged; removing the composite
restores the model exactly. Modules:

- :mod:`~zennit_ext.canonizers.core`: :class:`ForwardCanonizer` (overload a block's method)
  and :class:`CanonizerGroup` (several canonizers, all or nothing);
- :mod:`~zennit_ext.canonizers.merge`: exact BatchNorm merges
  (:class:`AdjacentMergeBatchNorm`, :class:`AttributeMergeBatchNorm`) and
  :class:`KeepBatchNorm` for BatchNorms that cannot be merged;
- :mod:`~zennit_ext.canonizers.residual`: residual adds as ``Sum``, squeeze-and-excitation
  gates as :class:`~zennit_ext.layers.Multiply`;
- :mod:`~zennit_ext.canonizers.torchvision`: one canonizer per torchvision CNN family;
- :mod:`~zennit_ext.canonizers.efficientnet_lite`: ``efficientnet_lite_pytorch`` models;
- :mod:`~zennit_ext.canonizers.auto`: :func:`auto_canonizers`, :class:`AutoCanonizer` and
  :func:`unsupported_modules`.
"""

from zennit_ext.canonizers.auto import (
    AUTO_CANONIZERS,
    KNOWN_GAPS,
    AutoCanonizer,
    auto_canonizers,
    canonizer_for,
    unsupported_modules,
)
from zennit_ext.canonizers.core import CanonizerGroup, ForwardCanonizer
from zennit_ext.canonizers.efficientnet_lite import (
    EfficientNetLiteCanonizer,
    MBConvSkipCanonizer,
)
from zennit_ext.canonizers.merge import (
    AdjacentMergeBatchNorm,
    AttributeMergeBatchNorm,
    ExactMergeBatchNorm,
    KeepBatchNorm,
)
from zennit_ext.canonizers.residual import SqueezeExcitationCanonizer
from zennit_ext.canonizers.torchvision import (
    DenseNetCanonizer,
    EfficientNetCanonizer,
    GoogLeNetCanonizer,
    InceptionCanonizer,
    MaxViTBatchNormCanonizer,
    MNASNetCanonizer,
    MobileNetV2Canonizer,
    MobileNetV3Canonizer,
    RegNetCanonizer,
    ResNetCanonizer,
    ShuffleNetV2Canonizer,
    VGGCanonizer,
)

__all__ = [
    "AttributeMergeBatchNorm",
    "MBConvSkipCanonizer",
    "EfficientNetLiteCanonizer",
    "AdjacentMergeBatchNorm",
    "ExactMergeBatchNorm",
    "KeepBatchNorm",
    "ForwardCanonizer",
    "CanonizerGroup",
    "SqueezeExcitationCanonizer",
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
    "AUTO_CANONIZERS",
    "KNOWN_GAPS",
    "AutoCanonizer",
    "auto_canonizers",
    "canonizer_for",
    "unsupported_modules",
    "MaxViTBatchNormCanonizer",
]
