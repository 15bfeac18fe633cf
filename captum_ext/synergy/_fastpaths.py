"""Exact fast paths: a layer that feeds an ``nn.Linear`` or ``nn.Conv2d`` in an ``nn.Sequential``.

``split_after`` finds the linear map L the layer feeds (with an eval-mode BatchNorm right after
it folded in) and cuts the network around it; ``contributions`` gives, for a chunk of rows,
L's output z and each unit's contribution C_g to it, from which
``captum_ext.synergy._evaluators.ContributionEvaluator`` scores every mask without re-running the
prefix (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_ext.synergy._masking import Units

__all__ = [
    "Split",
    "split_after",
    "channel_groups",
    "contributions",
    "elements_per_row",
    "RankOne",
    "Materialized",
]

_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)


def _is_plain_sequential(module: nn.Module) -> TypeGuard[nn.Sequential]:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _leaves(module: nn.Module, layer: nn.Module) -> list[nn.Module]:
    """Children of nested plain ``nn.Sequential`` containers in call order (``layer`` kept)."""
    if module is not layer and _is_plain_sequential(module):
        return [leaf for child in module for leaf in _leaves(child, layer)]
    return [module]


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
    linear: nn.Linear | nn.Conv2d
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
        conv = cast(nn.Conv2d, self.linear)  # called only when is_conv
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


def _folded_batchnorm(norm: Any, linear: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Scale and shift of ``norm`` if it is an eval-mode BatchNorm of ``linear``'s kind."""
    kind = nn.BatchNorm2d if isinstance(linear, nn.Conv2d) else nn.BatchNorm1d
    if not isinstance(norm, kind) or norm.training:
        return None
    mean, var = norm.running_mean, norm.running_var
    if mean is None or var is None:
        return None
    scale = (var + norm.eps).rsqrt()
    shift = -mean * scale
    if norm.affine:
        return scale * norm.weight.detach(), shift * norm.weight.detach() + norm.bias.detach()
    return scale, shift


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
    if isinstance(linear, nn.Conv2d):
        if linear.groups != 1 or linear.padding_mode != "zeros":
            return None
    elif not isinstance(linear, nn.Linear):
        return None
    weight = linear.weight.detach().clone()
    out = weight.shape[0]
    bias = weight.new_zeros(out) if linear.bias is None else linear.bias.detach().clone()
    folded = _folded_batchnorm(leaves[k + 1] if k + 1 < len(leaves) else None, linear)
    if folded is not None:
        scale, shift = folded
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


def _one_unit_per_column(split: Split, units: Units) -> bool:
    index = units.index[0]
    return not split.is_conv and bool(
        (index[0] == torch.arange(index.shape[1], device=index.device)).all()
    )


def elements_per_row(split: Split, units: Units, activation: Tensor) -> int:
    """Elements held per row of a chunk: z, the contributions (unless kept as rank one), and
    the (R, n) float64 tables of scores and differences (two float32 elements each)."""
    out = split.z(activation[:1]).numel()
    if _one_unit_per_column(split, units):
        return out + 12 * units.n
    return out * (units.n + 1)


class RankOne:
    """C_k = δ_k · w_k of a dense map with one unit per column, never materialized.

    Parameters
    ----------
    delta : torch.Tensor
        (R, n) layer output minus baseline.
    weight_t : torch.Tensor
        (n, m) the map's (folded) weight, transposed.
    """

    def __init__(self, delta: Tensor, weight_t: Tensor) -> None:
        self.n = delta.shape[1]
        self.active = delta != 0
        self._delta, self._weight_t = delta, weight_t

    def single(self, rows: Tensor, units: Tensor | int) -> Tensor:
        """(B, m) contributions of unit ``units[b]`` (or of one unit) in row ``rows[b]``."""
        return self._delta[rows, units, None] * self._weight_t[units]

    def minus_pairs(self, base: Tensor, rows: Tensor, j: Tensor) -> Tensor:
        """(Ri, k, m) = base[:, None] - C_j for the rows ``rows`` and units ``j`` (k,)."""
        weight_j = self._weight_t[j][None]
        return torch.addcmul(base[:, None, :], self._delta[rows][:, j, None], weight_j, value=-1)


class Materialized:
    """Contributions C (R, n, *out) held as a tensor (unit groups, conv channels)."""

    def __init__(self, contributions: Tensor) -> None:
        self.n = contributions.shape[1]
        self.active = contributions.reshape(len(contributions), self.n, -1).ne(0).any(2)
        self._c = contributions

    def single(self, rows: Tensor, units: Tensor | int) -> Tensor:
        """(B, *out) contributions of unit ``units[b]`` (or of one unit) in row ``rows[b]``."""
        return self._c[rows, units]

    def minus_pairs(self, base: Tensor, rows: Tensor, j: Tensor) -> Tensor:
        """(Ri, k, *out) = base[:, None] - C_j for the rows ``rows`` and units ``j`` (k,)."""
        return base[:, None] - self._c[rows[:, None], j[None, :]]


@torch.no_grad()
def contributions(
    split: Split, units: Units, activation: Tensor
) -> tuple[Tensor, RankOne | Materialized]:
    """L's output z (R, *out) and each unit's contribution C_g to it, for these rows.

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
    z = split.z(activation)
    if _one_unit_per_column(split, units):
        return z, RankOne(delta, weight.t().contiguous())
    if split.is_conv:
        channels, outputs = weight.shape[1], weight.shape[0]
        # input channel c, output o → grouped-conv channel c·O + o: one pass for all channels
        per_channel = weight.transpose(0, 1).reshape(channels * outputs, 1, *weight.shape[2:])
        parts = split._conv(delta, per_channel, None, groups=channels)
        parts = parts.reshape(rows, channels, outputs, *parts.shape[2:])
        channel_units = channel_groups(units)
        if channel_units is None:
            raise ValueError("the channel fast path needs units that are sets of whole channels")
        groups = channel_units
    else:
        parts = delta[:, :, None] * weight.t()[None]  # (R, n_elements, m)
        groups = units.index[0][0]
    if units.n == parts.shape[1] and torch.equal(
        groups, torch.arange(units.n, device=groups.device)
    ):
        return z, Materialized(parts)
    grouped = parts.new_zeros(rows, units.n, *parts.shape[2:])
    return z, Materialized(grouped.index_add_(1, groups.to(parts.device), parts))
