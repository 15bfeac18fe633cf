"""Figures of the ``vit`` suite: perturbation curves per method and heatmaps. matplotlib is
imported inside each function; this module never imports its suite."""

from __future__ import annotations

import numpy as np

__all__ = ["curves_figure", "heatmap_figure"]


def curves_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Mean logit drop against the share of patches perturbed: MoRF solid, LeRF dashed.

    Parameters
    ----------
    curves : dict
        Method → (MoRF curve, LeRF curve), each (regions,).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (method, (morf, lerf)) in enumerate(curves.items()):
        share = np.arange(1, len(morf) + 1) / len(morf)
        ax.plot(share, morf, color=f"C{i}", label=method)
        ax.plot(share, lerf, color=f"C{i}", ls="--")
    ax.set_xlabel("share of patches perturbed")
    ax.set_ylabel("logit drop f(x) − f(x̃)")
    ax.set_title("Region perturbation (solid: MoRF, dashed: LeRF)")
    ax.legend(fontsize=8)
    return fig


def heatmap_figure(images: np.ndarray, heatmaps: dict[str, np.ndarray]):
    """Images (first column) and each method's relevance (red +, blue −), one row per image.

    Parameters
    ----------
    images : numpy.ndarray
        (K, 3, H, W) in [0, 1].
    heatmaps : dict
        Method → (K, 1, H, W) relevance.
    """
    import matplotlib.pyplot as plt

    rows, cols = len(images), len(heatmaps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(np.transpose(images[i], (1, 2, 0)))
        for j, (method, a) in enumerate(heatmaps.items(), start=1):
            limit = float(np.abs(a[i]).max()) or 1.0
            axes[i, j].imshow(a[i, 0], cmap="bwr", vmin=-limit, vmax=limit)
            if i == 0:
                axes[i, j].set_title(method, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return fig
