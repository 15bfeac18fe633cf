"""The sync suite's measurements of one trained model (cached): Tables I–IV, Figs. 4, 6, 9, 10.

Paper: "Synchronization-inspired Interpretable Neural Networks" (Han et al., arXiv:2310.05419).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.models import evaluate
from benchmarks.sync_landmarks import landmark_curve
from benchmarks.sync_protocol import (
    ARCHS,
    N_PARTS,
    PHI,
    Config,
    Settings,
    cache_path,
    layer_maps,
    save,
    scores,
    train,
)
from benchmarks.sync_pruning import one_shot_curve, sequential_curve

PHIS = tuple(np.round(np.arange(0.05, 0.501, 0.05), 2))


def assess(model: nn.Module, layer: str, test, top_rates: dict[str, float]) -> dict[str, Any]:
    """Accuracy and every filter metric of one model on the test set.

    Parameters
    ----------
    model : nn.Module
        A trained network of :data:`benchmarks.sync_protocol.ARCHS`.
    layer : str
        Its regularized layer.
    test : Dataset
        ``parts`` test images with part masks.
    top_rates : dict
        Label → top rate; the first is the main one (modules, alignment, φ sweep).

    Returns
    -------
    dict
        ``accuracy``; :func:`captum_ext.metrics.filters.filter_metrics` at the first top rate
        (``module_consistency``, ``nmi``, ``ari``, ``avi``, ``dead_filters``, …); per top-rate
        label the Table I scores; the φ sweep ``phi_curve`` (Fig. 6 analogue); ``maps`` and
        ``iou`` at the first rate.
    """
    from captum_ext.metrics.filters import filter_metrics, part_iou

    maps = layer_maps(model, layer, test.x)
    first, *_ = top_rates.values()
    result: dict[str, Any] = {
        "accuracy": evaluate(model, test.x, test.y)["accuracy"],
        **filter_metrics(
            maps, test.mask, n_modules=N_PARTS, top_rate=first, phi=PHI, show_progress=False
        ),
    }
    ious = {label: part_iou(maps, test.mask, top_rate=rate) for label, rate in top_rates.items()}
    for label, iou in ious.items():
        result[label] = scores(iou, PHI)
    main, *_ = ious.values()
    result["phi_curve"] = {phi: scores(main, phi) for phi in PHIS}
    result["maps"], result["iou"] = maps, main
    return result


def _filter_normalized(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian direction rescaled filter by filter to the norms of ``weight``'s filters."""
    direction = torch.randn(weight.shape, generator=generator).to(weight)
    scale = weight.flatten(1).norm(dim=1) / direction.flatten(1).norm(dim=1).clamp_min(1e-12)
    return direction * scale.reshape(-1, *([1] * (weight.ndim - 1)))


@torch.no_grad()
def loss_landscape(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0, conv: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Test loss over a grid of two filter-normalized directions of one conv's weights.

    Li et al., "Visualizing the Loss Landscape of Neural Nets" (arXiv:1712.09913): each
    direction's filters are rescaled to the norms of the weight's filters; biases fixed.
    The weights are restored afterwards, also on error. ``conv``: the perturbed conv's name
    (default: VGGSmall's top conv).

    Returns
    -------
    alphas : np.ndarray
        (steps,) coordinates in [-1, 1] along both directions.
    loss : np.ndarray
        (steps, steps) cross-entropy, ``loss[i, j]`` at ``alphas[i]`` · d1 + ``alphas[j]`` · d2.
    """
    weight = model.get_submodule(conv or ARCHS["VGGSmall"].top_conv).weight
    generator = torch.Generator().manual_seed(seed)
    d1, d2 = (_filter_normalized(weight, generator) for _ in range(2))
    original = weight.detach().clone()
    alphas = np.linspace(-1.0, 1.0, steps)
    loss = np.zeros((steps, steps))
    model.eval()
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(alphas):
                weight.copy_(original + float(a) * d1 + float(b) * d2)
                loss[i, j] = float(nn.functional.cross_entropy(model(x), y))
    finally:
        weight.copy_(original)
    return alphas, loss


def activation_examples(
    iou: torch.Tensor, maps: torch.Tensor, quantiles=(0.95, 0.7, 0.3)
) -> list[tuple[int, int, float]]:
    """Fig. 4's picks: the (image, filter) pair at each quantile of the best-part IoU.

    Dead filters (0 on every image) are left out; absent parts count as IoU 0.

    Returns
    -------
    list of (image, filter, IoU)
    """
    best = iou.nan_to_num(0.0).amax(dim=2)  # (N, C)
    live = maps.amax(dim=(2, 3)) > 0
    index = torch.nonzero(live)
    values = best[live]
    order = torch.argsort(values, stable=True)
    picks = []
    for q in quantiles:
        at = order[min(int(q * len(order)), len(order) - 1)]
        picks.append((int(index[at, 0]), int(index[at, 1]), float(values[at])))
    return picks


def study(
    config: Config,
    train_data,
    test,
    top_rates: dict[str, float],
    settings: Settings,
    progress: bool,
) -> dict[str, Any]:
    """Train (or load) one model and measure everything the tables and figures need (cached).

    Returns
    -------
    dict
        :func:`assess`'s result, ``landmark_curve`` (Fig. 6, t → scores), ``pruning`` and
        ``pruning_sequential`` (Fig. 9 curves), ``landscape`` ((alphas, loss), Fig. 10) and
        ``train_time_s``; the cache key is the config and the evaluation settings.
    """
    key = {
        **asdict(config),
        "n_test": len(test),
        "top_rates": top_rates,
        "landscape": [settings.landscape_images, settings.landscape_grid],
        "prune_fractions": list(settings.prune_fractions),
        "landmark_thresholds": list(settings.landmark_thresholds),
    }
    path = cache_path(key, "-study")
    if path.exists():
        return torch.load(path, weights_only=False)
    arch = ARCHS[config.arch]
    model, log = train(config, (train_data.x, train_data.y), progress)
    result = assess(model, arch.layer, test, top_rates)
    result["landmark_curve"] = landmark_curve(
        result["maps"], test.mask, settings.landmark_thresholds
    )
    rows = slice(0, len(test))  # Taylor scores on as many training images as there are tests
    x, y = train_data.x[rows], train_data.y[rows]
    layer = model.get_submodule(arch.layer)
    result["pruning"] = one_shot_curve(model, layer, (x, y), test, settings.prune_fractions)
    result["pruning_sequential"] = sequential_curve(
        arch.head(model),
        layer_maps(model, arch.layer, x),
        y,
        result["maps"],
        test.y,
        settings.prune_fractions,
    )
    images = slice(0, settings.landscape_images)
    result["landscape"] = loss_landscape(
        model, test.x[images], test.y[images], settings.landscape_grid, conv=arch.top_conv
    )
    result["train_time_s"] = log["train_time_s"]
    save(result, path)
    return result
