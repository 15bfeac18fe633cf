"""Threshold tuning of the neuron graph: restricted heatmaps against the full one over ``c``.

Our definition for "Neural Network Interpretability With Layer-Wise Relevance Propagation:
Novel Techniques for Neuron Selection and Visualization" (Bhati et al., arXiv:2412.05686),
which tunes the threshold by "averaging MSE" without details; see
:meth:`zennit_ext.paths.api.NeuronPaths.tune_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from zennit_ext._checks import real_number
from zennit_ext.paths.graph import select_units

if TYPE_CHECKING:
    from zennit_ext.paths.api import NeuronPaths

__all__ = ["Threshold", "tune_threshold"]


@dataclass(frozen=True)
class Threshold:
    """Curves of :meth:`NeuronPaths.tune_threshold` over the grid of ``c`` (our definition).

    Attributes
    ----------
    grid : tuple of float
        The multipliers ``c``.
    kept_fraction : torch.Tensor
        (n_c, batch, L): kept units per layer.
    nmse, smape : torch.Tensor
        (n_c, batch): errors of the restricted heatmap against the full one.
    kept_relevance : torch.Tensor
        (n_c, batch): joint relevance ``R(S_Λ)`` of the kept units of all layers.
    score_ratio : torch.Tensor
        (n_c, batch): class score with the unkept units zeroed over the class score.
    chosen : float
        The ``c`` with the smallest mean kept fraction among those with mean nMSE ≤
        ``max_error``; if none, the ``c`` with the smallest mean nMSE (``met`` False).
    met : bool
        Whether ``chosen`` meets ``max_error``.
    """

    grid: tuple[float, ...]
    kept_fraction: torch.Tensor
    nmse: torch.Tensor
    smape: torch.Tensor
    kept_relevance: torch.Tensor
    score_ratio: torch.Tensor
    chosen: float
    met: bool


def tune_threshold(
    paths: NeuronPaths,
    x: torch.Tensor,
    target: Any,
    grid: Sequence[float],
    max_error: float,
    relevance: str,
) -> Threshold:
    """:meth:`NeuronPaths.tune_threshold` (see there)."""
    if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or not grid:
        raise ValueError(f"grid must be a non-empty sequence of numbers, got {grid!r}")
    grid = tuple(real_number("grid values", value) for value in grid)
    if len(set(grid)) != len(grid):
        raise ValueError(f"grid must not repeat values, got {grid!r}")
    if real_number("max_error", max_error) <= 0:
        raise ValueError(f"max_error must be positive, got {max_error!r}")
    lrp = paths._lrp_scores(x, target, relevance)
    with paths._explain(x, target) as (explanation, _, shapes):
        scores = paths._unit_relevance(explanation) if lrp is None else lrp
        kept = [{n: select_units(scores[n], c) for n in paths.layers} for c in grid]
        restricted = explanation.heatmaps([paths._kept_sets(k, shapes) for k in kept])
        full = explanation.heatmap()
    plane, restricted_plane = _colour_sum(full, x.dim()), _colour_sum(restricted, x.dim())
    difference = restricted_plane - plane
    nmse = _ratio(difference.square().mean(-1), plane.square().mean(-1))
    smape = _ratio(2 * difference.abs(), restricted_plane.abs() + plane.abs()).mean(-1)
    fraction = torch.stack(
        [torch.stack([k[n].to(x.dtype).mean(1) for n in paths.layers], 1) for k in kept]
    )
    class_scores = torch.stack([paths._class_score(x, target, k) for k in kept])
    baseline = paths._class_score(x, target, None)
    mean_nmse, mean_kept = nmse.mean(1), fraction.mean((1, 2))
    feasible = (mean_nmse <= max_error).nonzero()[:, 0]
    if len(feasible):
        index = int(feasible[mean_kept[feasible].argmin()])
    else:
        index = int(mean_nmse.argmin())
    return Threshold(
        grid,
        fraction,
        nmse,
        smape,
        restricted.flatten(2).sum(2),
        class_scores / baseline,
        grid[index],
        bool(len(feasible)),
    )


def _colour_sum(heatmap: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per sample pixels: (..., batch, C, H, W) → (..., batch, H·W) for images (``ndim`` 4),
    else the sample's values flattened."""
    if ndim == 4:
        return heatmap.sum(-3).flatten(-2)
    return heatmap.flatten(heatmap.dim() - ndim + 1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator with 0/0 := 0 (and x/0 := inf for x > 0)."""
    safe = torch.where(denominator != 0, denominator, 1.0)
    zero_case = torch.where(numerator == 0, 0.0, math.inf).to(numerator.dtype)
    return torch.where(denominator != 0, numerator / safe, zero_case)
