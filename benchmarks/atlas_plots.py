"""Figures of the atlas suite (never imports the suite)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from zennit_ext.atlas.figures import class_graph_figure  # noqa: E402


def class_graph(graph, k: int = 5):
    """The mean graph of a class with its ``k`` best paths."""
    return class_graph_figure(graph, k=k, in_edges=4)
