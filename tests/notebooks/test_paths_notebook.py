"""The paths notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations


def test_paths_notebook_executes(run_notebook):
    outputs = run_notebook("paths")
    for check in (
        "edge rows sum to the layer relevance: True",
        "top path score is its sum of edges: True",
        "path relevance sums to the k-path heatmap: True",
        "deconvolution is input-shaped: True",
        "kept fraction falls with c: True",
    ):
        assert check in outputs
    assert "nan" not in outputs
