"""Figures of the sync suite (the paper's Figs. 4–10 on our data)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional  # noqa: E402

_COLOURS = {
    "baseline": "tab:grey",
    "+L_lac": "tab:orange",
    "+both": "tab:blue",
    "+both (eq. 6 sum)": "tab:green",
    "+both (eq. 6 sum, eq. 1 self)": "tab:purple",
}


def _upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(..., h, w) maps → (..., size, size), bilinear as the IoU metric does."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    up = functional.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return up.reshape(*lead, size, size)


def _image(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).clamp(0, 1).numpy()


def activation_examples(test, picks: dict, top_rate: float) -> plt.Figure:
    """Fig. 4: one row per variant, the maps at the 95/70/30th IoU percentile over images.

    ``picks``: variant → (maps (N, C, h, w), iou (N, C, K), [(image, filter, IoU), …]). The
    white outline is the filter's region at ``top_rate`` (threshold over all images).
    """
    columns = max(len(p[2]) for p in picks.values())
    fig, axes = plt.subplots(
        len(picks), columns, figsize=(2.3 * columns, 2.4 * len(picks)), squeeze=False
    )
    labels = ("95th", "70th", "30th")
    size = test.x.shape[-1]
    for row, (variant, (maps, _iou, chosen)) in enumerate(picks.items()):
        for col, (image, unit, value) in enumerate(chosen):
            ax = axes[row, col]
            channel = maps[:, unit]
            threshold = torch.quantile(channel.flatten().double(), 1.0 - top_rate)
            up = _upsample(channel[image], size)
            ax.imshow(_image(test.x[image]))
            ax.imshow(up.numpy(), cmap="jet", alpha=0.45)
            ax.contour((up >= threshold).numpy(), levels=[0.5], colors="white", linewidths=1)
            ax.set_title(
                f"{variant}: {labels[col] if col < 3 else ''} f{unit}, IoU {value:.2f}", fontsize=7
            )
            ax.axis("off")
    fig.tight_layout()
    return fig


def mean_maps(test, maps: dict[str, torch.Tensor], images: int = 5) -> plt.Figure:
    """Fig. 5: per variant, the mean over filters of the maps (each filter scaled by its max)."""
    size = test.x.shape[-1]
    fig, axes = plt.subplots(
        len(maps), images, figsize=(1.9 * images, 2.0 * len(maps)), squeeze=False
    )
    for row, (variant, layer_maps) in enumerate(maps.items()):
        peak = layer_maps.amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
        mean = _upsample((layer_maps[:images] / peak).mean(dim=1), size)
        for col in range(images):
            ax = axes[row, col]
            ax.imshow(_image(test.x[col]))
            ax.imshow(mean[col].numpy(), cmap="jet", alpha=0.5)
            ax.axis("off")
            if col == 0:
                ax.set_title(variant, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def metric_pairs(curves: dict[str, dict[float, dict[str, float]]]) -> plt.Figure:
    """Fig. 6: Stability, Purity, Diversity against Interp, one threshold sliding per line.

    ``curves``: variant → threshold (φ on IoUs, or t on landmark distances) → scores.
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    for ax, metric in zip(axes, ("stability", "purity", "diversity"), strict=True):
        for variant, by_phi in curves.items():
            phis = sorted(by_phi)
            ax.plot(
                [by_phi[p]["interp"] for p in phis],
                [by_phi[p][metric] for p in phis],
                "o-",
                ms=3,
                color=_COLOURS.get(variant),
                label=variant,
            )
        ax.set_xlabel("Interp", fontsize=8)
        ax.set_ylabel(metric.capitalize(), fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def pruning(curves: dict[str, list[dict]], sequential: dict[str, list[dict]]) -> plt.Figure:
    """Fig. 9: accuracy vs fraction of filters pruned, mean ± sd over seeds per variant.

    ``curves``: the one-shot ranking (solid); ``sequential``: one by one, re-scored (dashed).
    """
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    for runs_of, style, how in ((curves, "o-", "one shot"), (sequential, "s--", "sequential")):
        for variant, runs in runs_of.items():
            fraction = np.asarray(runs[0]["fraction"])
            accuracy = np.asarray([r["accuracy"] for r in runs])
            mean = accuracy.mean(0)
            colour = _COLOURS.get(variant)
            ax.plot(fraction, mean, style, ms=3, color=colour, label=f"{variant}, {how}")
            if len(runs) > 1:
                sd = accuracy.std(0, ddof=1)
                ax.fill_between(fraction, mean - sd, mean + sd, color=colour, alpha=0.15)
    ax.set_xlabel("fraction of filters pruned (lowest Taylor score first)", fontsize=8)
    ax.set_ylabel("test accuracy", fontsize=8)
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    return fig


def landscapes(surfaces: dict[str, tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """Fig. 10: test loss contours over two filter-normalized directions, shared colour scale."""
    high = max(float(loss.max()) for _, loss in surfaces.values())
    low = min(float(loss.min()) for _, loss in surfaces.values())
    levels = np.linspace(low, high, 15)
    fig, axes = plt.subplots(1, len(surfaces), figsize=(3.4 * len(surfaces), 3.0), squeeze=False)
    for ax, (variant, (alphas, loss)) in zip(axes[0], surfaces.items(), strict=True):
        filled = ax.contourf(alphas, alphas, loss.T, levels=levels, cmap="viridis")
        ax.set_title(f"{variant}: mean {loss.mean():.3f}", fontsize=8)
        ax.set_xlabel("α (direction 1)", fontsize=8)
        ax.set_ylabel("β (direction 2)", fontsize=8)
    fig.colorbar(filled, ax=axes[0].tolist(), fraction=0.03)
    return fig


def sensitivity(sweeps: dict[str, dict[float, dict]]) -> plt.Figure:
    """Fig. 7: Interp, Stability, Purity, Diversity and accuracy vs each swept setting."""
    metrics = ("interp", "stability", "purity", "diversity", "accuracy")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 2.8))
    for ax, metric in zip(axes, metrics, strict=True):
        for name, results in sweeps.items():
            values = sorted(results)
            y = [
                results[v][metric] if metric == "accuracy" else results[v]["main"][metric]
                for v in values
            ]
            ax.plot(values, y, "o-", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_title(metric, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep_maps(image: torch.Tensor, sweeps: dict[str, dict[float, dict]]) -> plt.Figure:
    """Fig. 8: the filter-mean map on one image for every swept setting."""
    columns = max(len(v) for v in sweeps.values())
    fig, axes = plt.subplots(
        len(sweeps), columns, figsize=(1.7 * columns, 1.9 * len(sweeps)), squeeze=False
    )
    for row, (name, results) in enumerate(sweeps.items()):
        for col, value in enumerate(sorted(results)):
            ax = axes[row, col]
            ax.imshow(_image(image))
            ax.imshow(
                _upsample(results[value]["mean_map"], image.shape[-1]).numpy(),
                cmap="jet",
                alpha=0.5,
            )
            ax.set_title(f"{name} = {value:g}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    return fig
