"""Run a notebook from ``notebooks/`` top to bottom with small settings."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute ``notebooks/<name>.ipynb`` in quick mode; return its stdout, cell by cell."""
    monkeypatch.setenv("NEURON_XAI_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel runs in notebooks/: the checkout goes first on its path, so that it imports
    # this checkout's packages and benchmarks/ (which is never installed)
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *([path] if path else [])]))

    def run(name: str) -> str:
        path = NOTEBOOKS / f"{name}.ipynb"
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook, timeout=240, kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        client.execute()
        return "".join(
            output.get("text", "")
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output.get("name") == "stdout"
        )

    return run
