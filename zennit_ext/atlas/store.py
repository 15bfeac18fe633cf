"""The on-disk atlas: a safetensors file of the state plus a small JSON index, both replaced
atomically, so a stopped fit resumes and another process reads while a fit writes.

Layout of a store directory::

    index.json                 {"format", "config", "state", "batches_done", "n_batches", ...}
    state-<generation>.safetensors

A write saves ``state-<g+1>`` under a temporary name, renames it (``os.replace``), then replaces
``index.json`` the same way and removes generations older than ``g``. A reader reads the index,
then the state file it names (retrying if a writer removed it meanwhile).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "INDEX", "write", "read", "check_config"]

FORMAT = "neuron-xai/atlas-1"
INDEX = "index.json"


def _atomic(path: Path, save: Callable[[str], object]) -> None:
    """Write ``path`` by ``save(temporary path)`` and one ``os.replace``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write(
    directory: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], **progress: Any
) -> None:
    """Write the next generation of the state and the index naming it.

    Parameters
    ----------
    directory : pathlib.Path
        The store (created if missing).
    config : mapping
        What the state was computed for (:func:`check_config` compares it on resume).
    tensors : mapping of str to torch.Tensor
        The state (CPU tensors).
    **progress
        JSON values stored in the index beside the config (``batches_done``, ...).
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    previous = _index(directory)
    generation = previous["generation"] + 1 if previous else 0
    name = f"state-{generation:06d}.safetensors"
    cpu = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    _atomic(directory / name, lambda path: save_file(cpu, path, metadata={"format": FORMAT}))
    index = {
        "format": FORMAT,
        "generation": generation,
        "state": name,
        "config": dict(config),
        "updated": time.time(),
        **progress,
    }
    text = json.dumps(index, indent=1, sort_keys=True)
    _atomic(directory / INDEX, lambda path: Path(path).write_text(text))
    for old in directory.glob("state-*.safetensors"):
        if old.name != name and old.name < f"state-{generation - 1:06d}.safetensors":
            old.unlink(missing_ok=True)


def _index(directory: Path) -> dict[str, Any] | None:
    path = directory / INDEX
    if not path.exists():
        return None
    index = json.loads(path.read_text())
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(
            f"store {str(directory)!r} holds {INDEX} that is not an atlas index (format "
            f"{index.get('format') if isinstance(index, dict) else None!r}, expected {FORMAT!r})"
        )
    return index


def read(directory: str | Path, attempts: int = 5) -> tuple[dict[str, Any], dict] | None:
    """``(index, tensors)`` of the store's current generation, or None if there is no index.

    Raises
    ------
    ValueError
        If the directory holds an index of another format.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for attempt in range(attempts):
        index = _index(directory)
        if index is None:
            return None
        try:
            return index, load_file(directory / index["state"])
        except FileNotFoundError:  # a writer replaced the generation meanwhile
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    return None


def check_config(directory: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise ValueError naming ``store`` and every differing entry unless the configs agree."""
    differing = [
        f"{key} {found.get(key)!r} (expected {expected.get(key)!r})"
        for key in sorted(set(found) | set(expected))
        if found.get(key) != expected.get(key)
    ]
    if differing:
        raise ValueError(
            f"store {str(directory)!r} was written for another configuration: "
            + "; ".join(differing)
            + ". Give another store directory or remove this one."
        )
