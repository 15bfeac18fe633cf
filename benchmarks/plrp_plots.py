"""Figures of the PLRP suite: metric curves (as the paper's Figures 2 and 8), faithfulness
curves for both tie orders, and heatmaps. matplotlib is imported inside each function."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.plrp_common import DIRECTION, METHOD_NAMES, TIE_ORDERS, Task

__all__ = ["curves_figure", "faithfulness_figure", "heatmap_figure"]

_COLORS = ("C0", "C3")
_TIES = {"": "ties in raster order", "_rand": "ties in random order (seed 0)"}


def curves_figure(rows: list[dict], tasks: Sequence[Task], title: str):
    """Every metric against p, one row of panels per task (dashed: LRP, ★: sparsity gain 1)."""
    import matplotlib.pyplot as plt

    names = {t.name for t in tasks}
    mine_all = [r for r in rows if r["task"] in names]
    metrics = [m for m in DIRECTION if any(m in r for r in mine_all)]
    fig, axes = plt.subplots(
        len(tasks),
        len(metrics),
        figsize=(3.2 * len(metrics), 2.6 * len(tasks) + 0.4),
        squeeze=False,
    )
    for i, task in enumerate(tasks):
        mine = [r for r in mine_all if r["task"] == task.name]
        lrp = next(r for r in mine if r["method"] == "LRP")
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            if metric not in lrp:
                ax.axis("off")
                continue
            ax.axhline(lrp[metric], color="k", ls="--", lw=1, label="LRP")
            for method, color in zip(METHOD_NAMES, _COLORS, strict=True):
                pts = sorted(
                    (r["p"], r[metric]) for r in mine if r["method"] == method and r["p"] == r["p"]
                )
                xs, ys = zip(*([(0.0, lrp[metric])] + pts), strict=True)
                ax.plot(xs, ys, "o-", color=color, ms=3, label=method)
                sg = next(r for r in mine if r["method"] == method and r["p"] != r["p"])
                ax.plot(
                    [max(xs) * 1.1 + 0.02],
                    [sg[metric]],
                    "*",
                    color=color,
                    ms=9,
                    label=f"{method} SG",
                )
            ax.set_title(f"{task.name}: {metric} ({DIRECTION[metric]} better)", fontsize=8)
            ax.set_xlabel("p (★ = sparsity gain 1)", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def faithfulness_figure(curves: dict, tasks: Sequence[Task], ps: Sequence[float]):
    """Mean normalised class probability vs fraction of regions perturbed, per tie order.

    ``curves[(task, label)][suffix]`` is a (steps + 1,) mean curve; one panel per task and tie
    order, lines for LRP and both variants at the smallest p > 0 and at the largest p.
    """
    import matplotlib.pyplot as plt

    shown = [t for t in tasks if t.patch]
    pos = [p for p in ps if p > 0]
    labels = ["LRP"] + [f"{m} p={p:g}" for m in METHOD_NAMES for p in (min(pos), max(pos))]
    styles = ["k-"] + [f"{c}{ls}" for c in _COLORS for ls in (":", "-")]
    fig, axes = plt.subplots(
        len(shown),
        len(TIE_ORDERS),
        figsize=(4.2 * len(TIE_ORDERS), 3.0 * len(shown)),
        squeeze=False,
    )
    for i, task in enumerate(shown):
        for j, suffix in enumerate(TIE_ORDERS):
            ax = axes[i, j]
            for label, style in zip(labels, styles, strict=True):
                curve = curves[(task.name, label)][suffix]
                ax.plot(np.linspace(0, 1, len(curve)), curve, style, lw=1.2, label=label)
            ax.set_title(f"{task.name}: {_TIES[suffix]}", fontsize=8)
            ax.set_xlabel("fraction of regions perturbed (most relevant first)", fontsize=7)
            ax.set_ylabel("p(class) / unperturbed", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def heatmap_figure(heatmaps: dict, tasks: Sequence[Task], ps: Sequence[float]):
    """The first two images of each image task: LRP and both variants for growing p."""
    import matplotlib.pyplot as plt

    image_tasks = [t for t in tasks if t.x.ndim == 4]
    labels = ["LRP"] + [f"{m} p={p:g}" for m in METHOD_NAMES for p in ps if p > 0]
    fig, axes = plt.subplots(
        2 * len(image_tasks),
        len(labels) + 1,
        figsize=(1.6 * (len(labels) + 1), 1.7 * 2 * len(image_tasks)),
        squeeze=False,
    )
    for t, task in enumerate(image_tasks):
        for k in range(min(2, len(task.x))):
            row = axes[2 * t + k]
            img = task.x[k].permute(1, 2, 0).numpy()
            row[0].imshow((img - img.min()) / (np.ptp(img) + 1e-12))
            for ax, label in zip(row[1:], labels, strict=True):
                h = heatmaps[(task.name, label)][k, 0]
                v = np.abs(h).max() + 1e-12
                ax.imshow(h, cmap="bwr", vmin=-v, vmax=v)
                if t == 0 and k == 0:
                    ax.set_title(label, fontsize=7)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    return fig
