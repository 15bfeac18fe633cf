"""Fig. 6 of the sync suite: landmark-based metric-pair curves.

"Synchronization-inspired Interpretable Neural Networks" (Han et al., arXiv:2310.05419), §III-D
and Fig. 6: Sim = −distance between a filter's focus (the peak of its upsampled map) and a
part's landmark (here the centroid of the part's mask, which the ``parts`` data know), a hit
where the distance is below t; sliding t gives Interp on one axis and Stability, Purity,
Diversity on the other, one curve per variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from benchmarks.sync_protocol import scores

METRICS = ("interp", "stability", "purity", "diversity")


def landmark_curve(
    maps: Tensor, masks: Tensor, thresholds: Sequence[float]
) -> dict[float, dict[str, float]]:
    """Table I's four scores at each distance threshold t (pixels; a hit: distance < t).

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) maps of the regularized layer.
    masks : torch.Tensor
        (N, K, H, W) bool part masks (their centroids are the landmarks).
    thresholds : sequence of float
        Distance thresholds t in pixels of the masks' grid.

    Returns
    -------
    dict
        t → {``interp``, ``stability``, ``purity``, ``diversity``}.
    """
    from captum_ext.metrics.landmarks import landmark_similarity

    sim = landmark_similarity(maps, masks)
    return {float(t): scores(sim, -float(t)) for t in thresholds}


def mean_curves(found: dict[str, list[dict]], key: str) -> dict[str, dict[float, dict[str, float]]]:
    """Per variant, the seed mean of the curves stored under ``key`` in each run."""
    curves = {}
    for variant, runs in found.items():
        points = runs[0][key]
        curves[variant] = {
            p: {m: float(np.mean([r[key][p][m] for r in runs])) for m in METRICS} for p in points
        }
    return curves
