"""Figures of an atlas: reference samples with their heatmaps, and a class graph.

matplotlib is imported inside the functions (``import zennit_ext.atlas`` never loads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zennit_ext.atlas.references import References

__all__ = ["references_figure", "class_graph_figure"]


def _image(x: torch.Tensor) -> Any:
    """(C, H, W) → (H, W, 3) or (H, W) array scaled to [0, 1] for imshow."""
    x = x.detach().cpu().float()
    if x.dim() == 3 and x.shape[0] == 3:
        x = x.permute(1, 2, 0)
    elif x.dim() == 3:
        x = x.mean(0)
    low, high = x.min(), x.max()
    return ((x - low) / (high - low).clamp(min=1e-12)).numpy()


def _heat(ax: Any, heatmap: torch.Tensor) -> None:
    plane = heatmap.detach().cpu().float()
    plane = plane.sum(0) if plane.dim() == 3 else plane
    scale = float(plane.abs().max()) or 1.0
    ax.imshow(plane.numpy(), cmap="bwr", vmin=-scale, vmax=scale)


def references_figure(references: Sequence[References], path: str | Path | None = None) -> Any:
    """Per unit two rows: its reference samples (cut to the heatmap's box) and their
    conditional heatmaps (red positive, blue negative; titles: sample index and value).

    Parameters
    ----------
    references : sequence of References
        One per unit (e.g. from :meth:`ConceptAtlas.references`), image-like inputs (C, H, W).
    path : str or pathlib.Path, optional
        Where to save the figure as PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    columns = max(len(r.indices) for r in references)
    rows = 2 * len(references)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.3 * columns, 1.4 * rows), squeeze=False, constrained_layout=True
    )
    for block, refs in enumerate(references):
        for column, (x, heat) in enumerate(refs.crops()):
            top, bottom = axes[2 * block, column], axes[2 * block + 1, column]
            top.imshow(_image(x))
            top.set_title(
                f"#{int(refs.indices[column])}: {float(refs.values[column]):.3g}", fontsize=6
            )
            if heat is not None:
                _heat(bottom, heat)
        axes[2 * block, 0].set_ylabel(f"{refs.layer}\nunit {refs.unit}\n{refs.mode}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def class_graph_figure(
    graph: Any, k: int = 5, in_edges: int = 4, path: str | Path | None = None
) -> Any:
    """The mean graph of a class: kept units (dots), their strongest incoming edges (grey) and
    the ``k`` best paths (red, thicker for better ranks); output on the right.

    Parameters
    ----------
    graph : ClassGraph
        From :func:`~zennit_ext.atlas.classgraph.class_graph`.
    k : int
        Highlighted paths.
    in_edges : int
        Grey edges drawn into each kept unit.
    path : str or pathlib.Path, optional
        Where to save the figure as PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    nx_graph = graph.to_networkx(sample=0, in_edges=in_edges, k=k)
    layers = graph.layers
    sizes = {name: graph.relevance[name].shape[1] for name in layers}
    spots = {"output": (len(layers), 0.5)}
    for node, data in nx_graph.nodes(data=True):
        if node != "output":
            spots[node] = (data["depth"], (node[1] + 0.5) / sizes[node[0]])
    grey, red, widths = [], [], []
    for source, sink, data in nx_graph.edges(data=True):
        segment = (spots[source], spots[sink])
        if "path" in data:
            red.append(segment)
            widths.append(max(0.5, 2.5 - 0.4 * data["path"]))
        else:
            grey.append(segment)
    fig, ax = plt.subplots(figsize=(2 + 1.5 * len(layers), 4), constrained_layout=True)
    ax.add_collection(LineCollection(grey, colors="0.6", linewidths=0.4, alpha=0.4))
    ax.add_collection(LineCollection(red, colors="tab:red", linewidths=widths))
    for kept, colour in ((True, "k"), (False, "0.8")):
        points = [
            spots[n] for n, d in nx_graph.nodes(data=True) if n != "output" and d["kept"] is kept
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=6, c=colour, zorder=3)
    ax.scatter([len(layers)], [0.5], s=30, c="tab:red", zorder=4)
    ax.set_xticks(range(len(layers) + 1), [*layers, "output"], rotation=45, fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(layers) + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"class {graph.target}: mean graph of {graph.count} samples, top-{k} paths")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
