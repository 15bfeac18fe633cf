"""Where the benchmarks keep what they derive: data, checkpoints, downloads made at set-up."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "sources_dir"]

_DEFAULT = Path(__file__).resolve().parents[1] / ".cache"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the project's git-ignored cache.

    The root is ``$NEURON_XAI_CACHE`` when set, else ``.cache/`` beside ``pyproject.toml``.

    Parameters
    ----------
    *parts : str
        Sub-folders below the root, e.g. ``cache_dir("models")``.

    Returns
    -------
    pathlib.Path
        The existing folder.
    """
    root = Path(os.environ.get("NEURON_XAI_CACHE", _DEFAULT))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sources_dir(*parts: str) -> Path:
    """Return (and create) the folder of raw sources fetched at set-up (``make data``).

    Kept apart from :func:`cache_dir` so that redirecting the derived cache (tests do) still
    finds the fetched files. The root is ``$NEURON_XAI_SOURCES`` when set, else
    ``.cache/sources/`` beside ``pyproject.toml``.
    """
    path = Path(os.environ.get("NEURON_XAI_SOURCES", _DEFAULT / "sources")).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
