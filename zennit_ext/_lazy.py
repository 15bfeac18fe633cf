"""Lazy public names (PEP 562): a package's ``__getattr__`` imports a name's home on first use.

``import zennit_ext`` or ``import captum_ext`` then loads nothing but this module; each public
name costs what its own module costs when it is first touched.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def _distribution_version() -> str:
    """The version of the installed ``neuron-xai`` distribution (one number for both roots)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neuron-xai")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"


def lazy_exports(
    package: str, homes: Mapping[str, str], *, versioned: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in ``homes``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    homes : mapping of str to str
        Public name → dotted name of the module that defines it.
    versioned : bool
        Whether ``__version__`` resolves to the distribution's version (top-level packages).

    Returns
    -------
    tuple of callables
        ``(__getattr__, __dir__)`` to assign at module level; a resolved name is cached in the
        package's namespace, so ``__getattr__`` runs once per name.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 (the PEP 562 hook's name)
        if versioned and name == "__version__":
            value: Any = _distribution_version()
        elif name in homes:
            value = getattr(importlib.import_module(homes[name]), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        extra = {"__version__"} if versioned else set()
        return sorted(set(vars(sys.modules[package])) | set(homes) | extra)

    return __getattr__, __dir__
