"""Exact fast paths: a layer that feeds an ``nn.Linear`` or ``nn.Conv2d`` in an ``nn.Sequential``.

``split_after`` finds the linear map L the layer feeds (with an eval-mode BatchNorm right after
it folded in) and cuts the network around it; ``contributions`` gives, for a chunk of rows,
L's output z and each unit's contribution C_g to it, from which
``captum_ext._evaluators.ContributionEvaluator`` scores every mask without re-running the
prefix (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_ext._masking import Units

__all__ = ["Split", "split_after", "contributions", "elements_per_row"]

_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _leaves(module: nn.Module, layer: nn.Module) -> list[nn.Module]:
    """Children of nested plain ``nn.Sequential`` containers in call order (``layer`` kept)."""
    if module is layer or not _is_plain_sequential(module):
        return [module]
    return [leaf for child in module for leaf in _leaves(child, layer)]


@dataclass(frozen=True)
class Split:
    """The network around the linear map L that ``layer`` feeds.

    Attributes
    ----------
    prefix : nn.Sequential
        Input → the layer's output.
    linear : nn.Linear or nn.Conv2d
        L.
    weight, bias : torch.Tensor
        L's parameters with the BatchNorm after it folded in (new tensors).
    suffix : nn.Sequential
        Everything after L (and the folded BatchNorm).
    """

    prefix: nn.Sequential
    linear: nn.Module
    weight: Tensor
    bias: Tensor
    suffix: nn.Sequential

    @property
    def is_conv(self) -> bool:
        return isinstance(self.linear, nn.Conv2d)

    def z(self, activation: Tensor) -> Tensor:
        """L's output (with the folded BatchNorm) for the layer output ``activation``."""
        if self.is_conv:
            return self._conv(activation, self.weight, self.bias, groups=1)
        return torch.addmm(self.bias, activation, self.weight.t())

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        conv = self.linear
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


def _foldable(norm: Any, linear: nn.Module) -> bool:
    kind = nn.BatchNorm2d if isinstance(linear, nn.Conv2d) else nn.BatchNorm1d
    return isinstance(norm, kind) and not norm.training and norm.running_var is not None


def split_after(forward_func: Any, layer: nn.Module) -> Split | None:
    """The split around the ``nn.Linear`` / ``nn.Conv2d`` that ``layer`` feeds, or None.

    Applies when ``forward_func`` is a plain ``nn.Sequential`` (nested plain Sequentials are
    flattened; wrap a model as ``nn.Sequential(model.features, model.classifier)`` when its
    forward is just that chain), ``layer`` is one of its leaves exactly once, and the next leaf
    that is not an Identity or Dropout (both pass their input on in eval mode) is an
    ``nn.Linear`` or an ``nn.Conv2d`` with zero padding and ``groups=1``. An eval-mode
    BatchNorm right after it is folded in (exact up to rounding).
    """
    if not _is_plain_sequential(forward_func):
        return None
    leaves = _leaves(forward_func, layer)
    where = [k for k, leaf in enumerate(leaves) if leaf is layer]
    if len(where) != 1:
        return None
    k = where[0] + 1
    while k < len(leaves) and isinstance(leaves[k], _PASS_THROUGH):
        k += 1
    linear = leaves[k] if k < len(leaves) else None
    conv_ok = (
        isinstance(linear, nn.Conv2d) and linear.groups == 1 and linear.padding_mode == "zeros"
    )
    if not (isinstance(linear, nn.Linear) or conv_ok):
        return None
    weight = linear.weight.detach().clone()
    out = weight.shape[0]
    bias = weight.new_zeros(out) if linear.bias is None else linear.bias.detach().clone()
    norm = leaves[k + 1] if k + 1 < len(leaves) else None
    if _foldable(norm, linear):
        scale = (norm.running_var + norm.eps).rsqrt()
        shift = -norm.running_mean * scale
        if norm.affine:
            scale, shift = (
                scale * norm.weight.detach(),
                shift * norm.weight.detach() + norm.bias.detach(),
            )
        weight = scale.reshape(out, *([1] * (weight.dim() - 1))) * weight
        bias = scale * bias + shift
        k += 1
    prefix = nn.Sequential(*leaves[: where[0] + 1])
    return Split(prefix, linear, weight, bias, nn.Sequential(*leaves[k + 1 :]))


def channel_groups(units: Units) -> Tensor | None:
    """(C,) unit of each channel if every unit is a set of whole channels, else None."""
    (index,) = units.index
    if index.dim() != 4 or len(index) != 1:
        return None
    groups = index[0, :, 0, 0]
    return groups if bool((index[0] == groups[:, None, None]).all()) else None


def elements_per_row(split: Split, units: Units, activation: Tensor) -> int:
    """Elements of z and of the n contributions for one row (to size row chunks)."""
    out = split.z(activation[:1]).numel()
    return out * (units.n + 1)


@torch.no_grad()
def contributions(split: Split, units: Units, activation: Tensor) -> tuple[Tensor, Tensor]:
    """L's output z (R, *out) and each unit's contribution C (R, n, *out) for these rows.

    Parameters
    ----------
    split : Split
    units : Units
        Units of the layer output, cut to these rows; one tensor, the same units in every
        row. For a conv map every unit is a set of whole channels.
    activation : torch.Tensor
        (R, ...) the layer's output.
    """
    rows = len(activation)
    delta = activation - units.baselines[0].to(activation)
    weight = split.weight.to(activation)
    if split.is_conv:
        channels, outputs = weight.shape[1], weight.shape[0]
        # input channel c, output o → grouped-conv channel c·O + o: one pass for all channels
        per_channel = weight.transpose(0, 1).reshape(channels * outputs, 1, *weight.shape[2:])
        parts = split._conv(delta, per_channel, None, groups=channels)
        parts = parts.reshape(rows, channels, outputs, *parts.shape[2:])
        groups = channel_groups(units)
    else:
        parts = delta[:, :, None] * weight.t()[None]  # (R, n_elements, m)
        groups = units.index[0][0]
    identity = torch.arange(units.n, device=groups.device)
    if units.n == parts.shape[1] and bool((groups == identity).all()):
        contribution = parts
    else:
        contribution = parts.new_zeros(rows, units.n, *parts.shape[2:])
        contribution.index_add_(1, groups.to(parts.device), parts)
    return split.z(activation), contribution
