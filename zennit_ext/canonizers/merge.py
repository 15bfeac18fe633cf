"""BatchNorm merging that keeps outputs exactly and restores the model exactly.

A BatchNorm in eval mode right after a linear layer is an affine map of that layer's output,
so it can be folded into the layer's weight and bias; LRP rules then see one linear layer
(Zennit's :class:`~zennit.canonizers.MergeBatchNorm`). Two things differ from Zennit's merges:

- which pairs are merged: Zennit's :class:`~zennit.canonizers.SequentialMergeBatchNorm` pairs
  a BatchNorm with the leaf registered just before it, wherever it is, which is wrong when the
  registration order is not the data flow (DenseNet: the last convolution of one dense layer
  is followed by the first BatchNorm of the next, which reads the concatenation of all
  previous features: a shape error). :class:`AdjacentMergeBatchNorm` merges only within one
  ``nn.Sequential`` whose ``forward`` is ``nn.Sequential.forward``, and
  :class:`AttributeMergeBatchNorm` by attribute names of known blocks;
- exactness: zennit 0.5 keeps ``eps`` in the merged BatchNorm, which then still divides by
  ``sqrt(1 + eps)`` (1e-3 in EfficientNet and Inception: the output moves by about 5e-4 per
  merged layer), and zennit 1.0 leaves merged tensors behind in ``state_dict()`` after
  removal (upstream issue #237). Both merges here set ``eps = 0`` while merged and put back
  the original parameter and buffer objects on removal.

A BatchNorm in training mode normalizes with batch statistics, so merging it would change the
output: both merges raise instead. BatchNorms that no linear layer precedes (DenseNet's
BN–ReLU–conv order) cannot be merged; :class:`KeepBatchNorm` declares them, so that rule
composites can give them their BatchNorm rule (Zennit's composites: ``Pass``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from zennit.canonizers import Canonizer, MergeBatchNorm
from zennit.types import ConvolutionTranspose
from zennit.types import Linear as AnyLinear

from zennit_ext._rules import ModuleState
from zennit_ext.canonizers.core import remove_all

__all__ = [
    "ExactMergeBatchNorm",
    "AttributeMergeBatchNorm",
    "AdjacentMergeBatchNorm",
    "KeepBatchNorm",
    "kept_batch_norms",
]

_BatchNorm = nn.modules.batchnorm._BatchNorm
Pair = tuple[str, nn.Module, str, _BatchNorm]  # (linear name, linear, BatchNorm name, BatchNorm)


def _out_channels(linear: nn.Module) -> int:
    weight = linear.weight
    if not isinstance(weight, torch.Tensor):
        return -1
    if isinstance(linear, ConvolutionTranspose):
        return int(weight.shape[1]) * int(getattr(linear, "groups", 1))
    return int(weight.shape[0])


def _mergeable(linear: object, batch_norm: object) -> tuple[nn.Module, _BatchNorm] | None:
    """``(linear, batch_norm)`` if they are a linear layer and a BatchNorm (with running
    statistics and affine parameters) over its output channels, else None."""
    if not (
        isinstance(linear, nn.Module)
        and isinstance(linear, AnyLinear)
        and isinstance(batch_norm, _BatchNorm)
    ):
        return None
    usable = batch_norm.track_running_stats and batch_norm.affine
    if not usable or _out_channels(linear) != batch_norm.num_features:
        return None
    return linear, batch_norm


class ExactMergeBatchNorm(MergeBatchNorm):
    """Base of the merges: ``eps = 0`` while merged, original objects back on removal.

    Subclasses implement ``apply`` by finding ``(linear, batch_norm)`` pairs and calling
    :meth:`merge_pairs`.
    """

    def register(self, linears: Sequence[nn.Module], batch_norm: _BatchNorm) -> None:
        """Merge ``batch_norm`` into ``linears`` and make it the exact identity (eps = 0)."""
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

    def merge_pairs(self, pairs: Sequence[Pair]) -> list[Canonizer]:
        """Merge every pair, all or nothing; one applied instance per pair.

        Raises
        ------
        ValueError
            If a BatchNorm is in training mode (nothing is merged then).
        """
        for linear_name, _, bn_name, batch_norm in pairs:
            if batch_norm.training:
                raise ValueError(
                    f"{type(self).__name__}: BatchNorm {bn_name!r} is in training mode, where "
                    f"it normalizes with batch statistics, so merging it into {linear_name!r} "
                    "would change the output; call model.eval() first"
                )
        instances: list[Canonizer] = []
        try:
            for _, linear, _, batch_norm in pairs:
                instance = self.copy()
                instance.register([linear], batch_norm)
                instances.append(instance)
        except BaseException:
            remove_all(instances)
            raise
        return instances


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class AttributeMergeBatchNorm(ExactMergeBatchNorm):
    """Merge ``module.<bn>`` into ``module.<linear>`` for every module that has both attributes.

    Parameters
    ----------
    pairs : sequence of (str, str)
        Attribute names ``(linear, batch_norm)``, e.g. ``("conv1", "bn1")``: blocks whose
        forward applies the BatchNorm directly to the linear layer's output.
    types : tuple of type, optional
        Only modules of these types (default: every module with both attributes).
    """

    def __init__(
        self, pairs: Sequence[tuple[str, str]], types: tuple[type, ...] | None = None
    ) -> None:
        super().__init__()
        self.pairs = tuple((str(linear), str(bn)) for linear, bn in pairs)
        self.types = types

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Merge all matching pairs; return one merge instance per pair (undone by ``remove``)."""
        found: list[Pair] = []
        for name, module in root_module.named_modules():
            if self.types is not None and not isinstance(module, self.types):
                continue
            for linear_name, bn_name in self.pairs:
                pair = _mergeable(
                    getattr(module, linear_name, None), getattr(module, bn_name, None)
                )
                if pair is not None:
                    found.append((_join(name, linear_name), pair[0], _join(name, bn_name), pair[1]))
        return self.merge_pairs(found)

    def copy(self) -> AttributeMergeBatchNorm:
        """A fresh canonizer with the same pairs and types."""
        return self.__class__(self.pairs, self.types)


class AdjacentMergeBatchNorm(ExactMergeBatchNorm):
    """Merge a BatchNorm into the linear layer right before it in the same ``nn.Sequential``.

    Only containers whose ``forward`` is ``nn.Sequential.forward`` count (a subclass that
    overrides it may not call its children in order); the linear layer and the BatchNorm are
    direct children, one after the other, and the BatchNorm normalizes the layer's output
    channels.
    """

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Merge all adjacent pairs; return one merge instance per pair."""
        found: list[Pair] = []
        for name, module in root_module.named_modules():
            if not isinstance(module, nn.Sequential):
                continue
            if type(module).forward is not nn.Sequential.forward:
                continue
            children = list(module.named_children())
            for (linear_name, linear), (bn_name, batch_norm) in itertools.pairwise(children):
                pair = _mergeable(linear, batch_norm)
                if pair is not None:
                    found.append((_join(name, linear_name), pair[0], _join(name, bn_name), pair[1]))
        return self.merge_pairs(found)


class KeepBatchNorm(Canonizer):
    """Declare BatchNorms that stay unmerged (no linear layer precedes them), changing nothing.

    Rule composites give a BatchNorm their BatchNorm rule (``Pass`` in Zennit's composites);
    NRM's :class:`~zennit_ext.nrm.rules.NormalizedComposite` accepts exactly the BatchNorms a
    canonizer merged or declared here (see :func:`kept_batch_norms`), and rejects others.

    Parameters
    ----------
    places : sequence of (type, str)
        ``(block type, dotted attribute path)`` of the BatchNorms, e.g.
        ``(_DenseLayer, "norm1")``.
    """

    def __init__(self, places: Sequence[tuple[type, str]] = ()) -> None:
        self.places = tuple(places)
        self.batch_norm: nn.Module | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """One instance per declared BatchNorm found in ``root_module``."""
        instances: list[Canonizer] = []
        for module in root_module.modules():
            for block_type, path in self.places:
                if not isinstance(module, block_type):
                    continue
                try:
                    batch_norm = module.get_submodule(path)
                except AttributeError:
                    continue
                if isinstance(batch_norm, _BatchNorm):
                    instance = KeepBatchNorm()
                    instance.register(batch_norm)
                    instances.append(instance)
        return instances

    def register(self, batch_norm: nn.Module | None = None) -> None:
        """Record ``batch_norm`` (the model is not changed)."""
        self.batch_norm = batch_norm

    def remove(self) -> None:
        """Nothing to undo."""

    def copy(self) -> KeepBatchNorm:
        """A fresh canonizer with the same places."""
        return KeepBatchNorm(self.places)


def kept_batch_norms(instances: Iterable[object]) -> list[nn.Module]:
    """The BatchNorms declared by the applied :class:`KeepBatchNorm` instances among
    ``instances`` (e.g. a composite's handles)."""
    return [
        item.batch_norm
        for item in instances
        if isinstance(item, KeepBatchNorm) and item.batch_norm is not None
    ]
