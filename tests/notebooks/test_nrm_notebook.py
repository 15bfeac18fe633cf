"""The NRM notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations


def test_nrm_notebook_executes(run_notebook):
    outputs = run_notebook("nrm")
    for check in (
        "heatmap sums to 1: True",
        "conditional x marginal = joint: True",
        "pairwise sums to the marginals: True",
        "cluster heatmaps add up to the full heatmap: True",
        "reached + stopped = 1: True",
        "one-shot call gives the same: True",
        "edges equal pairwise: True",
    ):
        assert check in outputs
    assert "nan" not in outputs
