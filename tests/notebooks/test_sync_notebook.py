"""The sync notebook runs top to bottom and its printed checks hold."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sync_notebook_executes(run_notebook, monkeypatch):
    # the kernel imports this checkout's packages, not whichever one the venv was installed from
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT),
                                                                   os.environ.get("PYTHONPATH")])))
    outputs = run_notebook("sync")
    assert "L_lac blob < scattered: True" in outputs
    assert "L_sync far groups < close groups: True" in outputs
    assert "hooks removed: True" in outputs
    assert "L_lac lower after training with it: True" in outputs
    assert "metrics finite: True" in outputs
    assert "top_rate = mean object area" in outputs
    assert "nan" not in outputs
