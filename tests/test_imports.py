"""Importing the plugins stays cheap: no Quantus, matplotlib or scikit-learn at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["zennit_ext", "captum_ext"])
def test_import_does_not_pull_heavy_modules(package):
    code = (
        f"import sys, {package}\n"
        "heavy = [m for m in ('quantus', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"{package} imports {result.stdout.strip()}"
