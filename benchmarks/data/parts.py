"""Part-annotated objects for the synchronization metrics: figures made of 3–4 parts.

Three classes drawn from the same four part types (head, torso, legs, tail) in different
arrangements, each part in its own colour, at random position, scale and orientation (mirror),
on noise. Every part has an exact mask; later parts cover earlier ones, so part masks are
disjoint and their union is the object.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, cached

__all__ = ["load_parts", "PART_NAMES", "PART_CLASSES"]

PART_NAMES = ("torso", "legs", "tail", "head")  # drawing order
PART_CLASSES = ("biped", "quadruped", "bird")
# class -> part -> [(ellipse?, cx, cy, half-width, half-height)] in object units ([-1, 1]², y down)
_LAYOUT = {
    "biped": {
        "torso": [(False, 0.0, 0.0, 0.25, 0.45)],
        "legs": [(False, -0.13, 0.72, 0.08, 0.28), (False, 0.13, 0.72, 0.08, 0.28)],
        "tail": [],
        "head": [(True, 0.0, -0.68, 0.24, 0.24)],
    },
    "quadruped": {
        "torso": [(False, 0.0, 0.0, 0.6, 0.22)],
        "legs": [(False, x, 0.45, 0.07, 0.26) for x in (-0.48, -0.22, 0.22, 0.48)],
        "tail": [(False, -0.8, -0.15, 0.2, 0.05)],
        "head": [(True, 0.76, -0.3, 0.2, 0.18)],
    },
    "bird": {
        "torso": [(True, 0.0, 0.0, 0.42, 0.27)],
        "legs": [(False, -0.08, 0.45, 0.035, 0.2), (False, 0.08, 0.45, 0.035, 0.2)],
        "tail": [(False, -0.58, -0.1, 0.22, 0.07)],
        "head": [(True, 0.45, -0.36, 0.18, 0.18)],
    },
}


def _build(n: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(PART_CLASSES)
    rng.shuffle(y)
    scale = rng.uniform(0.3, 0.42, n) * size
    cx = rng.uniform(scale + 1, size - scale - 1)
    cy = rng.uniform(scale + 1, size - scale - 1)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    grid = np.arange(size) + 0.5
    u = (grid[None, None, :] - cx[:, None, None]) / scale[:, None, None] * flip[:, None, None]
    v = (grid[None, :, None] - cy[:, None, None]) / scale[:, None, None]

    x = rng.uniform(0.0, 0.3, size=(n, 3, size, size))
    masks = np.zeros((n, len(PART_NAMES), size, size), bool)
    for k, part in enumerate(PART_NAMES):
        for c, name in enumerate(PART_CLASSES):
            rows = np.flatnonzero(y == c)
            for ellipse, px, py, hw, hh in _LAYOUT[name][part]:
                du, dv = (u[rows] - px) / hw, (v[rows] - py) / hh
                inside = du**2 + dv**2 <= 1 if ellipse else (np.abs(du) <= 1) & (np.abs(dv) <= 1)
                masks[rows, k] |= inside
        masks[:, :k] &= ~masks[:, k : k + 1]  # this part covers the earlier ones
        colour = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1))
        colour[np.arange(n), k % 3] *= 0.3
        x = np.where(masks[:, k : k + 1], colour, x)
    return {
        "x": torch.from_numpy(x.astype(np.float32)),
        "y": torch.from_numpy(y.astype(np.int64)),
        "mask": torch.from_numpy(masks),
    }


def load_parts(n: int = 256, size: int = 64, seed: int = 0) -> Dataset:
    """Figures of 3–4 coloured parts; the class is the arrangement.

    Parameters
    ----------
    n : int
        Number of images, classes balanced.
    size : int
        Canvas side (≥ 32).
    seed : int
        Seed of everything drawn.

    Returns
    -------
    Dataset
        ``x`` (n, 3, size, size) float32 in [0, 1]; ``y`` (n,) int64 in {0, 1, 2}
        (:data:`PART_CLASSES`); ``mask`` (n, 4, size, size) bool, one disjoint mask per part in
        :data:`PART_NAMES` order (bipeds have no tail: an empty mask).
        ``meta['part_names']`` names the mask channels.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    data = cached(
        "parts", {"n": n, "size": size, "seed": seed, "v": 1}, lambda: _build(n, size, seed)
    )
    meta = {"part_names": PART_NAMES}
    return Dataset(data["x"], data["y"], data["mask"], PART_CLASSES, meta)
