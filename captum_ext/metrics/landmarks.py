"""Landmark similarity of filters: Sim = −distance between a filter's focus and a part's landmark.

From "Synchronization-Inspired Interpretable Neural Networks" (Han et al., IEEE TNNLS 2024,
doi:10.1109/TNNLS.2023.3297672, arXiv:2310.05419), §III-D and Fig. 6: on data with landmark
annotations, the similarity of filter f and part k on image I is the negative distance between
the filter's focus and the part's landmark, used in place of IoU_{f,k}^I in eq. 11–14; a hit
is a distance below a threshold t, i.e. ``Sim > −t``, and sliding t traces metric-pair curves.

- :func:`part_landmarks`: a part's landmark is the centroid of its mask (data with masks
  know it; landmark data give it directly), NaN where the image has no such part.
- :func:`filter_foci`: a filter's focus is the peak of its map upsampled bilinearly to the
  masks' size (align_corners=False, as :func:`~captum_ext.metrics.filters.part_iou`); the
  peak, not the soft-argmax x̄ of the losses, so the metric does not score what L_lac
  optimises. Ties go to the first peak in row-major order; a map constant on an image (a
  filter dead there) has no focus.
- :func:`landmark_similarity`: (N, C, K) Sim for :func:`~captum_ext.metrics.filters.interp`,
  :func:`~captum_ext.metrics.filters.stability`, :func:`~captum_ext.metrics.filters.purity`
  and :func:`~captum_ext.metrics.filters.diversity` with ``phi = -t``.

Coordinates are (row, column) pixel indices of the masks' grid and distances are in pixels.
Foci, landmarks and distances are computed in float64 and returned in the maps' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_ext.metrics.filters import check_masks, upsampled_chunks
from captum_ext.module.sync import check_maps

__all__ = ["part_landmarks", "filter_foci", "landmark_similarity"]


def _grid(masks: Tensor) -> tuple[Tensor, Tensor]:
    """(H, 1) row and (1, W) column indices, float64, on the masks' device."""
    h, w = masks.shape[-2:]
    rows = torch.arange(h, device=masks.device, dtype=torch.float64)
    cols = torch.arange(w, device=masks.device, dtype=torch.float64)
    return rows[:, None], cols[None, :]


def part_landmarks(masks: Tensor) -> Tensor:
    """Centroid of each part mask, the part's landmark.

    Parameters
    ----------
    masks : torch.Tensor
        (N, K, H, W) bool part masks.

    Returns
    -------
    torch.Tensor
        (N, K, 2) float64 (row, column) in pixels on the masks' device; NaN where image n has
        no part k (an empty mask).
    """
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.dtype != torch.bool:
        got = (masks.dtype, tuple(masks.shape)) if isinstance(masks, Tensor) else type(masks)
        raise TypeError(f"masks must be a bool tensor (N, K, H, W), got {got}")
    rows, cols = _grid(masks)
    weight = masks.to(torch.float64)
    area = weight.sum((-2, -1))
    centre = torch.stack([(weight * rows).sum((-2, -1)), (weight * cols).sum((-2, -1))], -1)
    return torch.where(area[..., None] > 0, centre / area.clamp(min=1)[..., None], torch.nan)


def filter_foci(maps: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The peak of each filter's map, upsampled bilinearly to ``size``, on each image.

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations.
    size : (int, int)
        (H, W) of the grid the foci are given on (the masks' size).

    Returns
    -------
    focus : torch.Tensor
        (N, C, 2) float64 (row, column) of the first maximum in row-major order, on the maps'
        device.
    alive : torch.Tensor
        (N, C) bool: False where the upsampled map is constant (no peak; ``focus`` is then
        (0, 0)).
    """
    check_maps(maps)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be two positive ints (H, W), got {size!r}")
    width = size[1]
    foci, alive = [], []
    for _, up in upsampled_chunks(maps, (size[0], size[1])):
        flat = up.flatten(2)
        peak = flat.argmax(-1)  # the first maximum
        foci.append(torch.stack([peak // width, peak % width], -1).to(torch.float64))
        alive.append(flat.amax(-1) > flat.amin(-1))
    return torch.cat(foci), torch.cat(alive)


def landmark_similarity(maps: Tensor, masks: Tensor) -> Tensor:
    """Sim_{f,k}^I = −‖focus(f, I) − landmark(k, I)‖ in pixels, for eq. 11–14 with φ = −t.

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations of the evaluated layer.
    masks : torch.Tensor
        (N, K, H, W) bool part masks (their centroids are the landmarks).

    Returns
    -------
    torch.Tensor
        (N, C, K) in the maps' dtype on their device: NaN where image n has no part k; the
        dtype's lowest finite value where the filter has no focus on the image (constant map:
        a miss at every finite threshold).

    Examples
    --------
    >>> from captum_ext.metrics import interp
    >>> sim = landmark_similarity(maps, masks)            # doctest: +SKIP
    >>> interp(sim, phi=-8.0)  # hit: focus within 8 px   # doctest: +SKIP
    """
    check_masks(check_maps(maps), masks)
    focus, alive = filter_foci(maps, (masks.shape[-2], masks.shape[-1]))
    landmark = part_landmarks(masks).to(maps.device)
    distance = (focus[:, :, None, :] - landmark[:, None, :, :]).square().sum(-1).sqrt()
    lowest = torch.finfo(maps.dtype).min
    sim = torch.where(alive[..., None], -distance, lowest)
    return torch.where(landmark[:, None, :, 0].isnan(), torch.nan, sim).to(maps.dtype)
