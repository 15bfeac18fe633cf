"""The synergy notebook runs top to bottom with small settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "synergy.ipynb"


def test_synergy_notebook_executes(monkeypatch):
    monkeypatch.setenv("NEURON_XAI_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # fmt: skip
    outputs = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    # symmetry, equality with Captum's LayerFeatureAblation, attribute rows averaging to S
    assert outputs.count("True") == 3 and "False" not in outputs
