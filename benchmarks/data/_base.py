"""Containers every loader returns, and the seeded on-disk cache they share."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.cache import cache_dir

__all__ = ["Dataset", "TabularSplits", "cached"]


@dataclass
class Dataset:
    """Inputs, labels and (where there is one) the exact ground-truth mask.

    Attributes
    ----------
    x : torch.Tensor
        Inputs, shape (N, ...), float32.
    y : torch.Tensor
        Labels, shape (N,), int64 class indices (float32 0/1 for binary tabular sets).
    mask : torch.Tensor or None
        Ground truth, bool, shape (N, K, ...) with x's trailing dims (K = 1 or the parts).
    classes : tuple of str
        Class names, indexed by ``y``.
    meta : dict
        Per-set extras (e.g. item positions, motif names).
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None = None
    classes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor | slice) -> Dataset:
        """The samples at ``index`` (meta entries that are per-sample tensors are indexed too)."""
        meta = {
            k: v[index] if isinstance(v, torch.Tensor) and len(v) == len(self) else v
            for k, v in self.meta.items()
        }
        mask = None if self.mask is None else self.mask[index]
        return Dataset(self.x[index], self.y[index], mask, self.classes, meta)


@dataclass
class TabularSplits:
    """Train / validation / test splits of one table, standardised with training statistics."""

    train: Dataset
    val: Dataset
    test: Dataset
    feature_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def cached(name: str, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load ``build()``'s result from the cache, building and saving it (atomically) once.

    Parameters
    ----------
    name : str
        Data set name, the cache sub-folder.
    key : dict
        JSON-able arguments that determine the result (seed, size, ...).
    build : callable
        Returns a dict of tensors and plain values, saved with ``torch.save``.

    Returns
    -------
    dict
        What ``build`` returned (or its cached copy).
    """
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir("data", name)
    path = folder / f"{digest}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    result = build()
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    torch.save(result, tmp)
    os.replace(tmp, path)
    return result
