"""The Sphinx docs build without a warning and document every public name.

The notebooks are rendered without executing them here (``nb_execution_mode=off``): they run in
``tests/notebooks``; ``make docs`` executes them.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")


def public_names() -> list[tuple[str, str]]:
    """(module, name) for every name in the ``__all__`` of a public module."""
    names = []
    for package in ("zennit_ext", "captum_ext"):
        modules = [package] + [
            info.name
            for info in pkgutil.walk_packages(
                importlib.import_module(package).__path__, prefix=f"{package}."
            )
            if not any(part.startswith("_") for part in info.name.split("."))
        ]
        for module in modules:
            names += [(module, name) for name in importlib.import_module(module).__all__]
    return names


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-D",
            "nb_execution_mode=off",
            "-d",
            str(out / "doctrees"),
            str(ROOT / "docs"),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out / "html"


def test_docs_build_without_warnings(html):
    for page in ("index", "getting-started", "references", "api/index", "howto/index"):
        assert (html / f"{page}.html").is_file(), page
    for notebook in ("plrp", "nrm", "paths", "synergy", "sync"):
        assert (html / "notebooks" / f"{notebook}.html").is_file(), notebook


def test_every_public_name_has_a_page(html):
    generated = html / "api" / "generated"
    missing = []
    names = public_names()
    for module, name in names:
        value = getattr(importlib.import_module(module), name)
        # the page is in the module that defines it, or, for data, in one that re-exports it
        homes = {module, getattr(value, "__module__", module)} | {
            other
            for other, other_name in names
            if other_name == name and getattr(importlib.import_module(other), name) is value
        }
        candidates = [generated / f"{home}.{name}.html" for home in homes if isinstance(home, str)]
        if not any(path.is_file() for path in candidates):
            missing.append(f"{module}.{name}")
    assert not missing, missing
    assert len(public_names()) > 80  # both packages' names were found
