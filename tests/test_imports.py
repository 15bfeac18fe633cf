"""Importing the plugins stays cheap: no Quantus, matplotlib or scikit-learn at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("quantus", "matplotlib", "sklearn")


def _heavy_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(filter(None, result.stdout.strip().split(",")))


@pytest.mark.parametrize("package", ["zennit_ext", "captum_ext"])
def test_import_does_not_pull_heavy_modules(package):
    assert _heavy_after(f"import {package}") == set()


@pytest.mark.parametrize(
    ("statement", "anchor"),
    [
        ("from zennit_ext import PLRPLambda, PLRPM", "import zennit.composites"),
        ("from captum_ext import NeuronSynergy", "import captum.attr"),
    ],
)
def test_public_names_cost_no_more_than_their_anchor(statement, anchor):
    assert _heavy_after(statement) <= _heavy_after(anchor)


def test_lazy_names_resolve_and_unknown_names_fail():
    import captum_ext

    assert set(captum_ext.__all__) <= set(dir(captum_ext))
    assert all(callable(getattr(captum_ext, name)) for name in captum_ext.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        captum_ext.no_such_name  # noqa: B018
