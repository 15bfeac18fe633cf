"""The synergy notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations


def test_synergy_notebook_executes(run_notebook):
    outputs = run_notebook("synergy")
    assert "a SynergyResult: True" in outputs
    assert "S symmetric: True" in outputs
    assert "Δ equals Captum LayerFeatureAblation: True" in outputs
    assert "attribute of a batch equals its rows: True" in outputs
    assert "NeuronSynergy shaped like the inputs: True" in outputs
    assert "channel pair equals one masked forward: True" in outputs
    assert "nan" not in outputs
