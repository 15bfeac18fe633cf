"""The PLRP notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations


def test_plrp_notebook_executes(run_notebook):
    outputs = run_notebook("plrp")
    assert "p=0 equals LRP: True" in outputs
    assert outputs.count("Gini") == 3 and "nan" not in outputs
