"""Figures of the synergy suite (SynXAI Fig. 3, 4, A.3–A.5 and §5.5)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def importance_histograms(deltas: dict[str, torch.Tensor]) -> plt.Figure:
    """One histogram of Δ_i per (data set, layer) key."""
    fig, axes = plt.subplots(1, len(deltas), figsize=(3.2 * len(deltas), 2.6))
    for ax, (name, delta) in zip(np.atleast_1d(axes), deltas.items(), strict=True):
        ax.hist(delta.numpy(), bins=30, color="tab:blue")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("Δ_i (mean |p − p_masked|)", fontsize=8)
    fig.tight_layout()
    return fig


def synergy_matrices(matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> plt.Figure:
    """S ordered by ascending R_i, one panel per key: value (S, R)."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.4 * len(matrices), 3.0))
    for ax, (name, (synergy, ranking)) in zip(np.atleast_1d(axes), matrices.items(), strict=True):
        order = torch.argsort(ranking)
        bound = float(synergy.abs().max()) or 1.0
        image = ax.imshow(synergy[order][:, order], cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(f"{name}\nS_ij ordered by R_i", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def pruning_curves(curves: dict[str, dict], title: str) -> plt.Figure:
    """Each metric of the curves (ROC-AUC, accuracy, …) vs pruned fraction, one line per ranking."""
    metrics = [k for k in next(iter(curves.values())) if k not in ("fraction", "pruned")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    for name, curve in curves.items():
        for ax, metric in zip(axes[0], metrics, strict=True):
            ax.plot(curve["fraction"], curve[metric], marker=".", label=name)
            ax.set_xlabel("fraction of units pruned")
            ax.set_ylabel(metric)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def beeswarm(attributions: np.ndarray, values: np.ndarray, names: list[str]) -> plt.Figure:
    """SHAP-style summary: per feature, each row's attribution coloured by its feature value."""
    order = np.argsort(np.abs(attributions).mean(0))
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    for row, feature in enumerate(order):
        v = values[:, feature]
        colour = (v - v.min()) / (np.ptp(v) or 1.0)
        jitter = rng.uniform(-0.3, 0.3, len(v))
        ax.scatter(attributions[:, feature], row + jitter, c=colour, cmap="coolwarm", s=4)
    ax.set_yticks(range(len(names)), [names[f] for f in order], fontsize=7)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("Shapley value (effect on p), colour = feature value (blue low, red high)")
    fig.tight_layout()
    return fig


def waterfalls(attributions: dict[str, np.ndarray], names: list[str], base: float) -> plt.Figure:
    """Rows' Shapley values as waterfalls from the baseline score to the prediction (3 a line)."""
    columns = min(3, len(attributions))
    lines = -(-len(attributions) // columns)
    fig, axes = plt.subplots(
        lines, columns, figsize=(4 * columns, (0.3 * len(names) + 1) * lines), squeeze=False
    )
    for ax, (title, attribution) in zip(axes.flat, attributions.items(), strict=False):
        order = np.argsort(np.abs(attribution))[::-1]
        level = base
        for row, feature in enumerate(order):
            value = attribution[feature]
            ax.barh(row, value, left=level, color="tab:red" if value > 0 else "tab:blue")
            level += value
        ax.set_yticks(range(len(order)), [names[f] for f in order], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(base, color="grey", lw=0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"p: {base:.3f} → {level:.3f}", fontsize=8)
    fig.tight_layout()
    return fig


def decision_boundary(grid_lat, grid_lon, p_grid, points, labels, names) -> plt.Figure:
    """p over a lat/lon grid (other features at their means) with test points."""
    fig, ax = plt.subplots(figsize=(5, 4))
    contour = ax.contourf(grid_lon, grid_lat, p_grid, levels=20, cmap="viridis")
    ax.contour(grid_lon, grid_lat, p_grid, levels=[0.5], colors="white")
    ax.scatter(points[:, 1], points[:, 0], c=labels, cmap="coolwarm", s=3, alpha=0.5)
    fig.colorbar(contour, ax=ax, label="p(present)")
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    fig.tight_layout()
    return fig


def protocol(runs: list[dict], names: list[str], fraction: float) -> plt.Figure:
    """Accuracy at ``fraction`` pruned per ranking and table, one dot per seed.

    ``runs`` rows hold ``data``, ``acc unpruned``, ``always-negative acc`` and
    ``acc 85 % <ranking>`` columns (see the synergy suite's protocol table).
    """
    prefix = "acc 85 % "
    labels = ["acc unpruned"] + [k for k in runs[0] if k.startswith(prefix)]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in runs if r["data"] == name]
        for position, label in enumerate(labels):
            values = [r[label] for r in mine]
            ax.scatter(np.full(len(values), position), values, s=14)
        ax.axhline(mine[0]["always-negative acc"], color="grey", ls="--", lw=1)
        ticks = [label.removeprefix(prefix) for label in labels]
        ax.set_xticks(range(len(labels)), ticks, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{name}: {fraction:.0%} pruned", fontsize=8)
        ax.set_ylabel("test accuracy")
    fig.tight_layout()
    return fig


def rows_at_scale(rows: list[dict]) -> plt.Figure:
    """Time per row and peak memory growth against the row count (log axes)."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    count = [r["rows"] for r in rows]
    for ax, key in zip(axes, ("µs per row", "peak growth MB"), strict=True):
        ax.plot(count, [r[key] for r in rows], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel(key)
    fig.tight_layout()
    return fig


def interaction_comparison(
    exact: np.ndarray, ours: np.ndarray, curves: dict, budget: int, error: float
) -> plt.Figure:
    """Left: ours against exact pair interactions; right: approximators' error by budget."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    i, j = np.triu_indices(len(exact), 1)
    axes[0].scatter(exact[i, j], ours[i, j], s=8)
    bound = float(np.abs(np.concatenate([exact[i, j], ours[i, j]])).max()) or 1.0
    axes[0].plot([-bound, bound], [-bound, bound], color="grey", lw=0.5)
    axes[0].set_xlabel("exact k-SII_ij (shapiq)")
    axes[0].set_ylabel("ours: −S_ij")
    for name, curve in curves.items():
        axes[1].plot(curve["budget"], curve["error"], marker=".", label=name)
    axes[1].scatter([budget], [error], color="black", zorder=3, label="ours (−S)")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("coalitions evaluated")
    axes[1].set_ylabel("relative error vs exact k-SII")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(history: dict[str, list[float]], title: str) -> plt.Figure:
    """SynXAI Fig. A.1: train and validation loss, validation accuracy per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    epochs = np.arange(1, len(history["val_loss"]) + 1)
    axes[0].plot(epochs, history["train_loss"], label="train loss")
    axes[0].plot(epochs, history["val_loss"], label="val loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(epochs, history["val_accuracy"], color="tab:green")
    axes[1].set_ylabel("val accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def lime_cases(cases: dict[str, np.ndarray], names: list[str]) -> plt.Figure:
    """SynXAI Fig. A.8: LIME coefficients of a false-negative and a false-positive row."""
    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 0.3 * len(names) + 1))
    for ax, (title, coefficients) in zip(np.atleast_1d(axes), cases.items(), strict=True):
        order = np.argsort(np.abs(coefficients))
        colours = ["tab:red" if coefficients[f] > 0 else "tab:blue" for f in order]
        ax.barh(range(len(order)), coefficients[order], color=colours)
        ax.set_yticks(range(len(order)), [names[f] for f in order], fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.axvline(0, color="grey", lw=0.5)
    fig.tight_layout()
    return fig
