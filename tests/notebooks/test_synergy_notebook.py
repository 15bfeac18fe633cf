"""The synergy notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations


def test_synergy_notebook_executes(run_notebook):
    outputs = run_notebook("synergy")
    assert "S symmetric: True" in outputs
    assert "Δ equals Captum LayerFeatureAblation: True" in outputs
    assert "attribute rows average to S: True" in outputs
    assert "nan" not in outputs
