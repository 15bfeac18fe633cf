"""Figures of the paths suite (Bhati et al., arXiv:2412.05686, Figs. 3–7, and our threshold
curves)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402


def _positions(graph, layers: tuple[str, ...]) -> dict:
    """Layered layout: x = depth (input left, output right), y = unit index / layer size."""
    sizes = {name: 0 for name in layers}
    for node in graph.nodes:
        if node != "output":
            sizes[node[0]] = max(sizes[node[0]], node[1] + 1)
    spots = {"output": (len(layers), 0.5)}
    for node, data in graph.nodes(data=True):
        if node != "output":
            spots[node] = (data["depth"], (node[1] + 0.5) / sizes[node[0]])
    return spots


def draw_graph(ax: plt.Axes, graph, layers: tuple[str, ...], title: str = "") -> None:
    """Fig. 3: kept units (dots), each unit's strongest incoming edges (grey), top paths (red,
    thicker for better ranks)."""
    spots = _positions(graph, layers)
    grey, red, widths = [], [], []
    for source, sink, data in graph.edges(data=True):
        segment = (spots[source], spots[sink])
        if "path" in data:
            red.append(segment)
            widths.append(2.5 - 0.3 * data["path"])
        else:
            grey.append(segment)
    ax.add_collection(LineCollection(grey, colors="0.6", linewidths=0.3, alpha=0.3))
    ax.add_collection(LineCollection(red, colors="tab:red", linewidths=widths))
    kept = np.array([spots[n] for n, d in graph.nodes(data=True) if n != "output" and d["kept"]])
    dropped = [spots[n] for n, d in graph.nodes(data=True) if n != "output" and not d["kept"]]
    ax.scatter(kept[:, 0], kept[:, 1], s=2, c="k", zorder=3)
    if dropped:
        dropped = np.array(dropped)
        ax.scatter(dropped[:, 0], dropped[:, 1], s=2, c="0.85", zorder=2)
    ax.scatter([len(layers)], [0.5], s=30, c="tab:red", zorder=4)
    ax.set_xticks(range(len(layers) + 1), [*layers, "output"], rotation=90, fontsize=6)
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(layers) + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=8)


def graphs(drawn: dict, layers: tuple[str, ...], title: str) -> plt.Figure:
    """Fig. 3 once per unit selection: ``{kind: networkx graph}``, one panel per kind."""
    fig, axes = plt.subplots(len(drawn), 1, figsize=(12, 4.2 * len(drawn)), squeeze=False)
    for ax, (kind, graph) in zip(axes[:, 0], drawn.items(), strict=True):
        draw_graph(ax, graph, layers, f"{title} {kind}")
    fig.tight_layout()
    return fig


def _panel(ax: plt.Axes, panel: torch.Tensor, title: str) -> None:
    """An image (H, W, 3) in [0, 1] or a heatmap (H, W) on a symmetric colour scale."""
    panel = panel.detach().cpu().float()
    if panel.dim() == 3:
        ax.imshow(panel.clamp(0, 1).numpy())
    else:
        bound = float(panel.abs().max()) or 1.0
        ax.imshow(panel.numpy(), cmap="bwr", vmin=-bound, vmax=bound)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def heatmap_rows(rows: list[list[tuple[torch.Tensor, str]]], title: str) -> plt.Figure:
    """One row of (panel, title) pairs per image (Figs. 4, 6, 7)."""
    width = max(len(row) for row in rows)
    fig, axes = plt.subplots(
        len(rows), width, figsize=(2.1 * width, 2.2 * len(rows)), squeeze=False
    )
    for ax_row, row in zip(axes, rows, strict=True):
        for ax, (panel, name) in zip(ax_row, row, strict=False):
            _panel(ax, panel, name)
        for ax in ax_row[len(row) :]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def overview(rows: list[dict], layers: tuple[str, ...]) -> plt.Figure:
    """Fig. 5: photo, top-5 predicted classes, neuron graph, back-projection of the top path.

    Each row: ``image`` (H, W, 3), ``classes`` [(name, probability)], ``graph`` (networkx),
    ``projection`` (H, W), ``title``.
    """
    fig, axes = plt.subplots(
        len(rows),
        4,
        figsize=(13, 2.8 * len(rows)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1.1, 2.6, 1]},
    )
    for (ax_image, ax_bar, ax_graph, ax_back), row in zip(axes, rows, strict=True):
        _panel(ax_image, row["image"], row["title"])
        names, probabilities = zip(*row["classes"], strict=True)
        ax_bar.barh(range(len(names))[::-1], probabilities, color="tab:blue")
        ax_bar.set_yticks(range(len(names))[::-1], names, fontsize=6)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_title("(B) prediction", fontsize=7)
        ax_bar.tick_params(axis="x", labelsize=6)
        draw_graph(ax_graph, row["graph"], layers, "(C) neuron graph, top-5 paths in red")
        _panel(ax_back, row["projection"], "(D) deconvolution of the top path")
    fig.tight_layout()
    return fig


def threshold_curves(
    grid: tuple[float, ...], curves: dict[str, dict[str, np.ndarray]], chosen: dict[str, float]
) -> plt.Figure:
    """nMSE, SMAPE, kept fraction and class-score ratio vs c, one line per model."""
    metrics = ("nmse", "smape", "kept_fraction", "score_ratio")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for name, curve in curves.items():
        for ax, metric in zip(axes, metrics, strict=True):
            line = ax.plot(grid, curve[metric], marker="o", label=name)[0]
            ax.axvline(chosen[name], color=line.get_color(), ls=":", lw=1)
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel("c (keep score ≥ mean − c·σ)")
        ax.set_title(metric, fontsize=9)
        ax.invert_xaxis()
    axes[0].legend(fontsize=7)
    fig.suptitle("Threshold curves (dotted: chosen c)", fontsize=9)
    fig.tight_layout()
    return fig


def kept_per_layer(fractions: dict[str, tuple[list[str], np.ndarray]]) -> plt.Figure:
    """Kept fraction per layer at c = 1, one panel per model."""
    columns = min(len(fractions), 2)
    rows = -(-len(fractions) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 2.8 * rows), squeeze=False)
    for ax, (name, (layers, values)) in zip(axes.flat, fractions.items(), strict=False):
        ax.bar(range(len(layers)), values, color="tab:green")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: kept fraction per layer at c = 1", fontsize=8)
    fig.tight_layout()
    return fig
