"""Filter metrics of a conv layer against part masks (Han et al., IEEE TNNLS 2024, §III-D).

From "Synchronization-Inspired Interpretable Neural Networks"
(doi:10.1109/TNNLS.2023.3297672). A filter's region on an image is where its upsampled map
reaches the filter's top-``top_rate`` value over the whole evaluation set (the convention of
CSGCNN's evaluation code); the filter hits part k on image I when IoU_{f,k}^I > φ.

- :func:`part_iou`: IoU_{f,k}^I, (N, C, K), NaN where image I has no part k.
- :func:`interp` (eq. 11), :func:`stability` (eq. 12), :func:`purity` (eq. 13): (C,);
  :func:`diversity` (eq. 14): (N,). Entropies are of vectors divided by their sum, divided by
  log K; the entropy of an all-zero vector is 0.
- :func:`module_consistency`, :func:`module_part_alignment`: functional modules found by
  spectral clustering of the filters' cosine similarities.
- :func:`filter_metrics`: all of them as scalars; :data:`DIRECTION` says which way is better.

The eq. 11–14 functions take any similarity Sim_{f,k}^I with NaN for absent parts, not only
IoUs: on landmark data, :func:`captum_ext.metrics.landmarks.landmark_similarity` gives
Sim = −distance, and ``interp(sim, -t)`` counts a hit where the distance is below t.

IoUs are compared with φ in their own dtype (an IoU equal to φ is no hit in float32 as in
float64); upsampled maps, IoUs, rates, entropies and their means are computed in float64 and
returned in the input's dtype, so float32 input decides every tie as float64 does.
scikit-learn is imported inside the clustering functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from captum_ext.module.sync import check_maps
from zennit_ext._checks import real_number

__all__ = [
    "part_iou",
    "interp",
    "stability",
    "purity",
    "diversity",
    "module_consistency",
    "module_part_alignment",
    "filter_metrics",
    "DIRECTION",
]

DIRECTION = {
    "interp": "higher",
    "stability": "lower",
    "purity": "lower",
    "diversity": "higher",
    "module_consistency": "lower",
    "nmi": "higher",
    "ari": "higher",
    "avi": "higher",
    "dead_filters": "lower",
}
"""Which way each key of :func:`filter_metrics` is better (for ``Report.add_table``)."""

_CHUNK = 1 << 23  # upsampled values per chunk of images in part_iou (float64: 64 MB)


def _check_iou(iou: object) -> Tensor:
    if not isinstance(iou, Tensor) or iou.ndim != 3 or not iou.is_floating_point():
        got = tuple(iou.shape) if isinstance(iou, Tensor) else type(iou).__name__
        raise ValueError(f"iou must be a float tensor (N, C, K) from part_iou, got {got}")
    if bool(iou.isinf().any()):  # NaN marks an absent part (part_iou); ±inf is never an IoU
        raise ValueError("iou must hold IoUs in [0, 1] or NaN for absent parts, got ±inf")
    return iou


def check_masks(maps: Tensor, masks: object) -> Tensor:
    """``masks`` if it is a bool (N, K, H, W) tensor with one entry per map, else an error.

    Raises
    ------
    TypeError
        Not a 4-D bool tensor.
    ValueError
        Not as many images as ``maps``.
    """
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.dtype != torch.bool:
        got = (masks.dtype, tuple(masks.shape)) if isinstance(masks, Tensor) else type(masks)
        raise TypeError(f"masks must be a bool tensor (N, K, H, W), got {got}")
    if len(masks) != len(maps):
        raise ValueError(
            f"maps and masks must hold the same images, got {len(maps)} and {len(masks)}"
        )
    return masks


def part_iou(maps: Tensor, masks: Tensor, top_rate: float = 0.3) -> Tensor:
    """IoU of each filter's region with each part mask, per image.

    The threshold of filter c is the k-th largest of its N·h·w low-resolution values over all
    images, k = max(1, ⌊top_rate · N·h·w⌋); its region on an image is where the
    map, upsampled bilinearly to the masks' size (align_corners=False), is ≥ the threshold
    (CSGCNN's convention). When the threshold is the filter's minimum (a ReLU filter that is
    0 on more than a 1 − top_rate share of all positions), "≥" would make the region the
    whole image; the region is then where the map exceeds it (its support; empty for a dead
    filter). The upsampling runs in float64: for float32 maps and an integer scale factor it
    is exact, so a region of values equal to the threshold stays in the region.

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations of the evaluated layer.
    masks : torch.Tensor
        (N, K, H, W) bool part masks.
    top_rate : float
        Share of each filter's values, over all images, at or above its threshold, in (0, 1].

    Returns
    -------
    torch.Tensor
        (N, C, K) IoU in the maps' dtype on their device; NaN where image n has no part k.
    """
    check_masks(check_maps(maps), masks)
    if not 0.0 < top_rate <= 1.0:
        raise ValueError(f"top_rate must lie in (0, 1], got {top_rate!r}")
    c = maps.shape[1]
    size = masks.shape[-2:]
    values = maps.detach().transpose(0, 1).reshape(c, -1)
    k = max(1, int(top_rate * values.shape[1]))
    threshold = values.kthvalue(values.shape[1] - k + 1, dim=1).values  # k-th largest, (C,)
    minimum = threshold <= values.amin(1)
    threshold = threshold.to(torch.float64)
    # "> t" where t is the minimum, as "≥ the next float above t": one comparison for all
    above = torch.nextafter(threshold, torch.full_like(threshold, float("inf")))
    threshold = torch.where(minimum, above, threshold)[:, None, None]
    area = masks.flatten(2).sum(-1)  # (N, K)
    out = []
    for start, up in upsampled_chunks(maps, (size[0], size[1])):
        region = up.sub_(threshold).heaviside_(up.new_ones(())).flatten(2)  # 1[up ≥ t]
        part = masks[start : start + len(up)].to(device=maps.device, dtype=torch.float64)
        part = part.flatten(2)
        part = torch.cat([part, part.new_ones(len(part), 1, part.shape[-1])], 1)  # + image
        inter = region @ part.transpose(1, 2)  # (n, C, K + 1); the last column is |region|
        union = inter[..., -1:] + part[:, None, :-1].sum(-1) - inter[..., :-1]
        out.append(inter[..., :-1] / union.clamp(min=1))
    iou = torch.cat(out)
    missing = (area == 0).to(maps.device)[:, None, :].expand_as(iou)
    return iou.masked_fill(missing, float("nan")).to(maps.dtype)


def _linear_interpolation(small: int, big: int, device: torch.device) -> Tensor:
    """(big, small) float64 matrix of 1-D linear upsampling with align_corners=False."""
    eye = torch.eye(small, device=device, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=big, mode="linear", align_corners=False)[:, 0, :].T


def upsampled_chunks(maps: Tensor, size: tuple[int, int]) -> Iterator[tuple[int, Tensor]]:
    """The maps upsampled bilinearly (align_corners=False) to ``size``, in float64, by chunks.

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations (detached here).
    size : (int, int)
        (H, W) of the output.

    Yields
    ------
    start : int
        Index of the chunk's first image.
    up : torch.Tensor
        (n, C, H, W) float64 on the maps' device, n ≤ N images (about 64 MB a chunk). For
        float32 maps and an integer scale factor the upsampling is exact.
    """
    n, c, h, w = maps.shape
    rows, cols = (
        _linear_interpolation(m, big, maps.device) for m, big in zip((h, w), size, strict=True)
    )
    step = max(1, _CHUNK // (c * size[0] * size[1]))
    for start in range(0, n, step):
        # bilinear upsampling (align_corners=False) is separable: rows @ map @ colsᵀ
        yield start, rows @ maps[start : start + step].detach().to(torch.float64) @ cols.T


def _hits(iou: Tensor, phi: float) -> Tensor:
    """1[IoU > φ], decided in the IoU's dtype, as float64 0/1 (NaN: no hit)."""
    phi = real_number("phi", phi)
    return (_check_iou(iou) > phi).to(torch.float64)


def _normalized_entropy(v: Tensor) -> Tensor:
    """Entropy of v / Σv over the last axis, divided by log K; 0 where Σv = 0 or K = 1."""
    k = v.shape[-1]
    total = v.sum(-1, keepdim=True)
    p = v / total.clamp(min=torch.finfo(v.dtype).tiny)
    h = -torch.where(p > 0, p * p.clamp(min=torch.finfo(v.dtype).tiny).log(), 0.0).sum(-1)
    if k < 2:
        return torch.zeros_like(h)
    return torch.where(total[..., 0] > 0, h / math.log(k), 0.0)


def _part_rates(iou: Tensor, phi: float) -> Tensor:
    """(C, K) float64: share of the images having part k on which the filter hits it (eq. 11)."""
    present = (~torch.isnan(iou)).sum(0)
    return _hits(iou, phi).sum(0) / present.clamp(min=1)


def interp(iou: Tensor, phi: float = 0.2) -> Tensor:
    """Interp(f) = max_k mean_I 1[IoU > φ] (eq. 11), mean over the images having part k.

    Parameters
    ----------
    iou : torch.Tensor
        (N, C, K) from :func:`part_iou`.
    phi : float
        Assignment threshold φ.

    Returns
    -------
    torch.Tensor
        (C,) in the IoU's dtype, higher is better.
    """
    return _part_rates(iou, phi).amax(-1).to(iou.dtype)


def stability(iou: Tensor, phi: float = 0.2) -> Tensor:
    """Stability(f) = H_k(mean_I 1[IoU > φ]) / log K (eq. 12); (C,), lower is better."""
    return _normalized_entropy(_part_rates(iou, phi)).to(iou.dtype)


def purity(iou: Tensor, phi: float = 0.2) -> Tensor:
    """Purity(f) = mean_I H_k(1[IoU > φ]) / log K (eq. 13); (C,), lower is better.

    Absent parts count as misses; images on which the filter hits nothing contribute 0.
    """
    return _normalized_entropy(_hits(iou, phi)).mean(0).to(iou.dtype)


def diversity(iou: Tensor, phi: float = 0.2) -> Tensor:
    """Diversity(I) = H_k(max_f 1[IoU > φ]) / log K (eq. 14); (N,), higher is better."""
    return _normalized_entropy(_hits(iou, phi).amax(1)).to(iou.dtype)


def _live(maps: Tensor) -> Tensor:
    """(C,) bool: filters not 0 on every image."""
    return (maps.detach() != 0).flatten(2).any(-1).any(0)


def _affinities(maps: Tensor) -> Tensor:
    """(N, C, C) per-image cosine similarity of flattened maps, negatives → 0, + 1e-6."""
    flat = maps.detach().flatten(2)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(flat.dtype).tiny)
    return (unit @ unit.transpose(1, 2)).clamp(min=0.0) + 1e-6


def _spectral(affinities: np.ndarray, n_modules: int, seed: int, show_progress: bool) -> np.ndarray:
    """(N, C) module labels of (N, C, C) affinities, one spectral clustering each.

    One thread: on problems this small, thread start-up in KMeans costs ~10× the work.
    """
    from sklearn.cluster import SpectralClustering
    from threadpoolctl import threadpool_limits

    model = SpectralClustering(n_clusters=n_modules, affinity="precomputed", random_state=seed)
    bar = tqdm(
        affinities, desc="modules", disable=None if show_progress and len(affinities) > 1 else True
    )
    with threadpool_limits(limits=1):
        return np.stack([model.fit_predict(a) for a in bar])


def _check_modules(n_modules: int, n_filters: int) -> None:
    if not 1 <= n_modules <= n_filters:
        raise ValueError(
            f"n_modules must lie in [1, {n_filters}] (the filters clustered), got {n_modules}"
        )


def module_consistency(
    maps: Tensor, n_modules: int, seed: int = 0, live_only: bool = True, show_progress: bool = False
) -> float:
    """How much the filters' module co-membership varies across images (lower is better).

    Per image, the filters are clustered into ``n_modules`` by spectral clustering of their
    cosine similarities (negatives set to 0, + 1e-6 to keep the graph connected); the score
    is the mean over filter pairs of the standard deviation over images of "same module".

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations.
    n_modules : int
        Number of clusters per image (e.g. the number of parts).
    seed : int
        Random state of the clustering.
    live_only : bool
        Drop filters that are 0 on every image.
    show_progress : bool
        Progress bar over images (tqdm, silent when the output is not a terminal).

    Returns
    -------
    float
        In [0, 0.5]; 0 when every image yields the same partition.
    """
    check_maps(maps)
    if live_only:
        maps = maps[:, _live(maps)]
    _check_modules(n_modules, maps.shape[1])
    labels = _spectral(_affinities(maps).cpu().double().numpy(), n_modules, seed, show_progress)
    rows, cols = np.triu_indices(maps.shape[1], k=1)
    same = labels[:, rows] == labels[:, cols]  # (N, pairs)
    return float(same.std(0).mean()) if same.size else 0.0


def module_part_alignment(
    maps: Tensor,
    iou: Tensor,
    n_modules: int,
    phi: float = 0.2,
    seed: int = 0,
    live_only: bool = True,
) -> dict[str, float]:
    """Agreement of filter → module with filter → part (NMI, ARI, AVI; higher is better).

    Modules: spectral clustering of the image-averaged affinity of :func:`module_consistency`.
    A filter's part is the argmax of its eq. 11 rates, or 'none' when it hits no part.
    AVI, the adjusted variation of information, is reported as the adjusted mutual
    information with arithmetic normalization (equivalent; Vinh et al., JMLR 2010).

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations.
    iou : torch.Tensor
        (N, C, K) from :func:`part_iou` on the same maps.
    n_modules : int
        Number of modules.
    phi : float
        Assignment threshold φ.
    seed : int
        Random state of the clustering.
    live_only : bool
        Drop filters that are 0 on every image.

    Returns
    -------
    dict
        ``nmi``, ``ari``, ``avi`` floats.
    """
    from sklearn import metrics

    check_maps(maps)
    if _check_iou(iou).shape[:2] != maps.shape[:2]:
        raise ValueError(
            f"iou must have shape (N, C, K) = ({maps.shape[0]}, {maps.shape[1]}, "
            f"K) for these maps, got {tuple(iou.shape)}"
        )
    rates = _part_rates(iou, phi)
    parts = torch.where(rates.amax(-1) > 0, rates.argmax(-1), rates.shape[-1])
    if live_only:
        keep = _live(maps)
        maps, parts = maps[:, keep], parts[keep.to(parts.device)]
    _check_modules(n_modules, maps.shape[1])
    affinity = _affinities(maps).mean(0, keepdim=True).cpu().double().numpy()
    modules = _spectral(affinity, n_modules, seed, show_progress=False)[0]
    truth = parts.cpu().numpy()
    return {
        "nmi": float(metrics.normalized_mutual_info_score(truth, modules)),
        "ari": float(metrics.adjusted_rand_score(truth, modules)),
        "avi": float(
            metrics.adjusted_mutual_info_score(truth, modules, average_method="arithmetic")
        ),
    }


def filter_metrics(
    maps: Tensor,
    masks: Tensor,
    *,
    n_modules: int | None = None,
    top_rate: float = 0.3,
    phi: float = 0.2,
    seed: int = 0,
    live_only: bool = True,
    show_progress: bool = False,
) -> dict[str, float]:
    """Every filter metric of one layer as a scalar (keys as in :data:`DIRECTION`).

    Parameters
    ----------
    maps : torch.Tensor
        (N, C, h, w) activations.
    masks : torch.Tensor
        (N, K, H, W) bool part masks.
    n_modules : int, optional
        Number of modules; default K, the number of parts.
    top_rate, phi, seed, live_only, show_progress
        As in :func:`part_iou`, :func:`interp` and :func:`module_consistency`.

    Returns
    -------
    dict
        ``interp``, ``stability``, ``purity`` (means over all C filters), ``diversity`` (mean
        over images), ``module_consistency``, ``nmi``, ``ari``, ``avi`` and ``dead_filters``
        (filters 0 on every image).
    """
    iou = part_iou(maps, masks, top_rate)
    n_modules = masks.shape[1] if n_modules is None else n_modules
    return {
        "interp": float(interp(iou, phi).mean()),
        "stability": float(stability(iou, phi).mean()),
        "purity": float(purity(iou, phi).mean()),
        "diversity": float(diversity(iou, phi).mean()),
        "module_consistency": module_consistency(maps, n_modules, seed, live_only, show_progress),
        **module_part_alignment(maps, iou, n_modules, phi, seed, live_only),
        "dead_filters": int((~_live(maps)).sum()),
    }
