"""Reference samples of a unit with their conditional heatmaps, localized from the output.

A reference heatmap is the input relevance of the walks from the sample's class through the
unit (CRP's conditional heatmap, "From attribution maps to human-understandable explanations
through Concept Relevance Propagation", Achtibat et al., arXiv:2206.03208): NRM's
``heatmap({layer: [unit]})`` (eq. 37 of arXiv:2606.00557), one full backward pass from the
output for all references at once. It sums to the unit's relevance ``R(n_l = unit)``; a
backward pass started at the unit's activation instead (the start-layer shortcut) sums to a
positive number even where the unit's relevance is negative, which inverts the heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zennit_ext.atlas.collect import evaluating
from zennit_ext.nrm.api import NRM

__all__ = ["References", "conditional_heatmaps", "support_boxes", "localized"]


@dataclass(frozen=True)
class References:
    """The reference samples of one unit.

    Attributes
    ----------
    layer : str
        The layer.
    unit : int
        The channel (or neuron) of the layer.
    mode : str
        The top-k order they come from: 'relmax', 'actmax' or 'actmean'.
    indices : torch.Tensor
        (k,) int64 sample indices, best first.
    values : torch.Tensor
        (k,) their statistic (relevance or activation), in the model's dtype.
    inputs : torch.Tensor
        (k, ...) the samples, on the model's device in its dtype.
    targets : torch.Tensor
        (k,) int64 their classes (the explained outputs).
    heatmaps : torch.Tensor or None
        (k, ...) like ``inputs``: the conditional heatmaps (None without localization).
    boxes : torch.Tensor or None
        (k, n_spatial, 2) int64: per spatial axis of the input ``[start, stop)`` of the
        heatmap's support (None without localization).
    """

    layer: str
    unit: int
    mode: str
    indices: torch.Tensor
    values: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    heatmaps: torch.Tensor | None
    boxes: torch.Tensor | None

    def crops(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per reference ``(input, heatmap)`` cut to its box (the whole sample without one)."""
        out = []
        for row in range(len(self.indices)):
            window: tuple[slice, ...] = (slice(None),)  # the channel axis
            if self.boxes is not None:
                window += tuple(slice(int(a), int(b)) for a, b in self.boxes[row].tolist())
            heat = None if self.heatmaps is None else self.heatmaps[row][window]
            out.append((self.inputs[row][window], heat))
        return out


def conditional_heatmaps(
    nrm: NRM, x: torch.Tensor, y: torch.Tensor, layer: str, unit: int
) -> torch.Tensor:
    """Input relevance of the walks from class ``y`` through ``unit`` of ``layer``, like ``x``.

    Parameters
    ----------
    nrm : NRM
        With ``layer`` among its layers.
    x : torch.Tensor
        (k, ...) samples on the model's device.
    y : torch.Tensor
        (k,) their classes.
    layer : str
        The conditioned layer.
    unit : int
        The channel (or neuron) of ``layer``.

    Returns
    -------
    torch.Tensor
        (k, ...): per sample, sums to ``R(n_layer = unit)`` (times the share reaching the input).
    """
    with nrm.explain(x, y.to(x.device)) as explanation:
        return explanation.heatmap({layer: [unit]}, level="channel").detach()


def localized(
    nrm: NRM, x: torch.Tensor, y: torch.Tensor, layer: str, unit: int, support: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`conditional_heatmaps` (in eval mode, restored after) and, for inputs with spatial
    axes, their :func:`support_boxes` (else None)."""
    with evaluating(nrm.model):
        heatmaps = conditional_heatmaps(nrm, x, y, layer, unit)
    return heatmaps, support_boxes(heatmaps, float(support)) if x.dim() > 2 else None


def support_boxes(heatmaps: torch.Tensor, support: float) -> torch.Tensor:
    """Bounding boxes of the pixels whose channel-summed ``|heatmap|`` ≥ ``support`` × its maximum.

    Parameters
    ----------
    heatmaps : torch.Tensor
        ``(k, C, *spatial)``.
    support : float
        In [0, 1]; 0 keeps every pixel with a non-zero heatmap.

    Returns
    -------
    torch.Tensor
        (k, n_spatial, 2) int64 ``[start, stop)`` per spatial axis; the whole axis for a heatmap
        that is 0 everywhere.
    """
    plane = heatmaps.detach().sum(1).abs()  # (k, *spatial)
    peak = plane.flatten(1).amax(1).view(-1, *[1] * (plane.dim() - 1))
    inside = (plane >= support * peak) & (plane > 0)
    boxes = []
    for axis in range(1, plane.dim()):
        others = [d for d in range(1, plane.dim()) if d != axis]
        line = inside.any(dim=others) if others else inside  # (k, size)
        size = line.shape[1]
        position = torch.arange(size, device=line.device)
        start = torch.where(line, position, size).amin(1)
        stop = torch.where(line, position + 1, 0).amax(1)
        empty = ~line.any(1)
        start, stop = torch.where(empty, 0, start), torch.where(empty, size, stop)
        boxes.append(torch.stack([start, stop], 1))
    return torch.stack(boxes, 1).cpu()
