"""The canonizers a model needs, chosen by the module types it contains (``canonizers='auto'``).

:data:`AUTO_CANONIZERS` is an ordered list of ``(match, factory)`` entries: ``match`` is a
module type, a tuple of types, or a predicate ``module -> bool``; ``factory`` makes the
canonizer (a class, or any callable without arguments). :func:`auto_canonizers` returns one
canonizer per entry that matches some module of the model (an entry whose canonizer type is
already part of an earlier chosen one is skipped). To support more models, add entries::

    from zennit_ext.canonizers.auto import AUTO_CANONIZERS
    AUTO_CANONIZERS.append((MyBlock, MyBlockCanonizer))

:data:`KNOWN_GAPS` lists module types that need more than Zennit's rules and the canonizers
above (attention, LayerNorm, blocks with functional adds outside this table), each with the
reason; :func:`unsupported_modules` reports the modules of a model that match a gap and no
canonizer entry. A block of an unknown type that adds or multiplies in ``forward`` cannot be
detected from its type: NRM's conservation check finds it at run time
(:class:`~zennit_ext.nrm.engine.ConservationError` names it).

:class:`AutoCanonizer` is a single canonizer that makes this choice when it is applied, so a
composite constructed before it sees the model (``canonizers=[AutoCanonizer()]``) canonizes
each model it is registered to as that model needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeAlias

from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.densenet import DenseNet, _DenseLayer
from torchvision.models.efficientnet import EfficientNet, FusedMBConv, MBConv
from torchvision.models.googlenet import GoogLeNet
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE
from torchvision.models.maxvit import MBConv as MaxVitMBConv
from torchvision.models.maxvit import PartitionAttentionLayer, RelativePositionalMultiHeadAttention
from torchvision.models.mnasnet import MNASNet
from torchvision.models.mnasnet import _InvertedResidual as MNASNetBlock
from torchvision.models.mobilenetv2 import InvertedResidual as MobileNetV2Block
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import InvertedResidual as MobileNetV3Block
from torchvision.models.mobilenetv3 import MobileNetV3
from torchvision.models.regnet import RegNet, ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformerBlock
from torchvision.models.vgg import VGG
from torchvision.models.vision_transformer import EncoderBlock
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import Canonizer, CompositeCanonizer

from zennit_ext.canonizers.core import CanonizerGroup
from zennit_ext.canonizers.efficientnet_lite import EfficientNetLiteCanonizer, is_lite_mbconv
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
    "AUTO_CANONIZERS",
    "KNOWN_GAPS",
    "AutoCanonizer",
    "auto_canonizers",
    "canonizer_for",
    "unsupported_modules",
]

Match: TypeAlias = type | tuple[type, ...] | Callable[[nn.Module], bool]

#: ``(match, factory)``: the canonizer a model gets when one of its modules matches. AlexNet,
#: SqueezeNet and VGG without BatchNorm need none (VGGCanonizer then changes nothing).
AUTO_CANONIZERS: list[tuple[Match, Callable[[], Canonizer]]] = [
    ((ResNet, BasicBlock, Bottleneck), ResNetCanonizer),
    (VGG, VGGCanonizer),
    ((DenseNet, _DenseLayer), DenseNetCanonizer),
    (GoogLeNet, GoogLeNetCanonizer),
    ((Inception3, InceptionA, InceptionC, InceptionE), InceptionCanonizer),
    ((MobileNetV2, MobileNetV2Block), MobileNetV2Canonizer),
    ((MobileNetV3, MobileNetV3Block), MobileNetV3Canonizer),
    ((MNASNet, MNASNetBlock), MNASNetCanonizer),
    ((EfficientNet, MBConv, FusedMBConv), EfficientNetCanonizer),
    ((RegNet, ResBottleneckBlock), RegNetCanonizer),
    (ShuffleNetV2, ShuffleNetV2Canonizer),
    (MaxVitMBConv, MaxViTBatchNormCanonizer),
    (SqueezeExcitation, SqueezeExcitationCanonizer),
    (is_lite_mbconv, EfficientNetLiteCanonizer),
]


def _attention(path: str) -> Callable[[], Canonizer]:
    """Factory of ``zennit_ext.attention.<module>.<Class>``, imported when a model needs it
    (``zennit_ext.attention`` registers its composites when imported)."""

    def factory() -> Canonizer:
        module, name = path.rsplit(".", 1)
        return getattr(importlib.import_module(f"zennit_ext.attention.{module}"), name)()

    factory.__qualname__ = path.rsplit(".", 1)[1]
    return factory


def _is_huggingface(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.models.")


AUTO_CANONIZERS += [
    (EncoderBlock, _attention("canonizers.ViTCanonizer")),
    (nn.MultiheadAttention, _attention("canonizers.MultiheadAttentionCanonizer")),
    (CNBlock, _attention("canonizers.ConvNeXtCanonizer")),
    ((SwinTransformerBlock, ShiftedWindowAttention), _attention("swin.SwinCanonizer")),
    (
        (MaxVitMBConv, PartitionAttentionLayer, RelativePositionalMultiHeadAttention),
        _attention("maxvit.MaxViTCanonizer"),
    ),
    (_is_huggingface, _attention("huggingface.HuggingFaceCanonizer")),
]

_ATTENTION = "zennit_ext.attention (AttnLRP, CPLRP) has rules and canonizers for it"

#: ``(match, reason)``: modules that no canonizer above covers and Zennit's composites have no
#: rule for (the attention canonizers' blocks need the rules of AttnLRP / CPLRP too).
KNOWN_GAPS: list[tuple[Match, str]] = [
    (
        (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer),
        "residual adds in forward and fused attention (no canonizer yet)",
    ),
    (
        (nn.LayerNorm, nn.GroupNorm, LayerNorm2d),
        f"no LRP rule in Zennit's composites (its gradient rescales relevance); {_ATTENTION}",
    ),
]


def _matches(match: Match, module: nn.Module) -> bool:
    if isinstance(match, type | tuple):
        return isinstance(module, match)
    return bool(match(module))


def _parts(canonizer: Canonizer) -> list[type]:
    """The canonizer's type and those of the canonizers it groups (recursively)."""
    types: list[type] = [type(canonizer)]
    if isinstance(canonizer, CompositeCanonizer):
        for part in canonizer.canonizers:
            types += _parts(part)
    return types


def auto_canonizers(model: nn.Module) -> list[Canonizer]:
    """Fresh canonizers for the module types in ``model``, one per matching entry of
    :data:`AUTO_CANONIZERS`, in table order.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not changed).

    Returns
    -------
    list of zennit.canonizers.Canonizer
        Empty if nothing in the model needs a canonizer (or none is known for it).
    """
    modules = list(model.modules())
    chosen: list[Canonizer] = []
    for match, factory in AUTO_CANONIZERS:
        if not any(_matches(match, module) for module in modules):
            continue
        canonizer = factory()
        if any(type(canonizer) in _parts(earlier) for earlier in chosen):
            continue
        chosen.append(canonizer)
    return chosen


def canonizer_for(module: nn.Module) -> Callable[[], Canonizer] | None:
    """The factory of the first :data:`AUTO_CANONIZERS` entry that matches ``module``."""
    return next((factory for match, factory in AUTO_CANONIZERS if _matches(match, module)), None)


def unsupported_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The modules of ``model`` that match :data:`KNOWN_GAPS` and no canonizer entry.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not changed).

    Returns
    -------
    list of (str, torch.nn.Module, str)
        ``(name, module, reason)`` in module order; modules inside a listed module are not
        listed again.
    """
    found: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer, _, _ in found if outer):
            continue
        if canonizer_for(module) is not None:
            continue
        reason = next((why for match, why in KNOWN_GAPS if _matches(match, module)), None)
        if reason is not None:
            found.append((name, module, reason))
    return found


class AutoCanonizer(Canonizer):
    """:func:`auto_canonizers` of the model it is applied to, applied as one group.

    All or nothing: if one of the chosen canonizers fails, those applied are undone.
    """

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Choose the canonizers for ``root_module`` and apply them.

        Returns
        -------
        list of Canonizer
            The applied instances (last applied first).
        """
        return CanonizerGroup(auto_canonizers(root_module)).apply(root_module)

    def register(self) -> None:
        """Nothing to do (the applied instances hold the changes)."""

    def remove(self) -> None:
        """Nothing to do (the applied instances hold the changes)."""

    def copy(self) -> AutoCanonizer:
        """A fresh AutoCanonizer."""
        return AutoCanonizer()
