"""Where the benchmarks keep what they derive: data, checkpoints, downloads made at set-up."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]

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
