"""Sphinx configuration of the neuron-xai documentation (``make docs``).

The API pages are written at build time from each public module's ``__all__`` (``api/*.rst``,
git-ignored), so that every public name is documented and a new one cannot be forgotten. The
notebooks (``docs/notebooks`` links to ``notebooks/``) are executed by myst-nb with the quick
settings the tests use (``NEURON_XAI_QUICK=1``); ``-D nb_execution_mode=off`` renders them
without outputs (``tests/test_docs.py``: the notebooks run in ``tests/notebooks``).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# the notebooks' kernels import this checkout's packages and benchmarks/ (never installed) and
# run with the small settings of tests/notebooks (the full ones take long on a small machine)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
)
os.environ.setdefault("NEURON_XAI_QUICK", "1")

import zennit_ext  # noqa: E402  (after the path above)

project = "neuron-xai"
author = "the neuron-xai contributors"
copyright = "2026, the neuron-xai contributors"
release = zennit_ext.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "README.md"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_static_path: list[str] = []

# numpydoc-style docstrings through napoleon; attributes as fields (no duplicate descriptions)
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
napoleon_use_rtype = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autosummary_generate = True
autosummary_imported_members = False

# notebooks: executed (quick settings) unless -D nb_execution_mode=off; an error fails the build
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
myst_enable_extensions = ["dollarmath", "amsmath"]

# the public modules: both packages and every (sub)module of theirs without a leading underscore;
# names re-exported from another public module link to their home page instead of being
# documented twice
PACKAGES = ("zennit_ext", "captum_ext")


@functools.cache
def _modules() -> tuple[str, ...]:
    modules: list[str] = []
    for package in PACKAGES:
        modules.append(package)
        path = importlib.import_module(package).__path__
        modules += sorted(
            info.name
            for info in pkgutil.walk_packages(path, prefix=f"{package}.")
            if not any(part.startswith("_") for part in info.name.split("."))
        )
    return tuple(modules)


def _home(module: str, name: str) -> str:
    """The public module whose page documents ``module.name``: the deepest public module that
    exports the same object (its defining module; data such as dicts have no ``__module__``)."""
    value = getattr(importlib.import_module(module), name)
    homes = [
        other
        for other in _modules()
        if name in getattr(importlib.import_module(other), "__all__", ())
        and getattr(importlib.import_module(other), name) is value
    ]
    return max(homes, key=lambda other: other.count("."), default=module)


def _page(module: str) -> str:
    imported = importlib.import_module(module)
    names = list(imported.__all__)
    own = [name for name in names if _home(module, name) == module]
    elsewhere = [name for name in names if _home(module, name) != module]
    heading = f"``{module}``"
    lines = [heading, "=" * len(heading), "", f".. automodule:: {module}", "   :no-members:", ""]
    if own:
        lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in own] + [""]
    if elsewhere:
        lines += ["Also exported here:", ""]
        lines += [
            f"- :py:obj:`{module}.{name} <{_home(module, name)}.{name}>`" for name in elsewhere
        ]
        lines += [""]
    return "\n".join(lines)


def write_api_pages() -> None:
    """``api/<module>.rst`` for each public module and ``api/index.rst`` listing them."""
    api = DOCS / "api"
    api.mkdir(exist_ok=True)
    modules = _modules()
    for module in modules:
        text = _page(module)
        path = api / f"{module}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages stay cached
            path.write_text(text)
    index = [
        "API reference",
        "=============",
        "",
        "Every name in a public module's ``__all__``, from its docstring (numpydoc sections,",
        "tensor shapes, equation numbers of the papers).",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *[f"   {module}" for module in modules],
        "",
    ]
    text = "\n".join(index)
    if not (api / "index.rst").exists() or (api / "index.rst").read_text() != text:
        (api / "index.rst").write_text(text)
    # pages of modules or names that no longer exist (a move or a rename) would be orphans
    pages = {*modules, "index"}
    names = {
        f"{module}.{name}"
        for module in modules
        for name in importlib.import_module(module).__all__
        if _home(module, name) == module
    }
    for stale in [p for p in api.glob("*.rst") if p.stem not in pages] + [
        p for p in api.glob("generated/*.rst") if p.stem not in names
    ]:
        stale.unlink()


write_api_pages()
