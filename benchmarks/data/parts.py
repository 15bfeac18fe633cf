"""Part-annotated objects for the synchronization metrics: figures made of 3–4 parts.

Three classes drawn from the same four part types (head, torso, legs, tail) in different
arrangements, each part in its own colour, at random position, scale and orientation (mirror),
on noise. Every part has an exact mask; later parts cover earlier ones, so part masks are
disjoint and their union is the object.

The hard variant takes away the shortcuts: every part's colour is drawn from one shared
distribution (colour no longer names the part), the background is a tinted real texture (as in
:mod:`benchmarks.data.cluttered`), and 1–3 flat occluders in colours from the same
distribution are drawn over and around the figure; part masks keep only the visible pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, cached
from benchmarks.data.cluttered import _textures

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


def _background(rng: np.random.Generator, n: int, size: int, hard: bool) -> np.ndarray:
    """(n, 3, size, size): uniform noise, or crops of the real textures under a random tint."""
    if not hard:
        return rng.uniform(0.0, 0.3, size=(n, 3, size, size))
    textures = _textures()
    kind = rng.integers(len(textures), size=n)
    top, left = rng.integers(0, textures.shape[1] - size, size=(2, n))
    tint = rng.uniform(0.4, 1.6, size=(n, 3, 1, 1))
    crops = np.stack(
        [textures[k, t : t + size, c : c + size] for k, t, c in zip(kind, top, left, strict=True)]
    )
    return np.clip(crops[:, None] * tint, 0.0, 1.0)


def _occlude(
    rng: np.random.Generator, x: np.ndarray, masks: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Draw 1–3 flat rectangles or ellipses near each figure over ``x``; clear them from masks.

    ``u, v`` are the pixel grids in object units, so occluders sit in and around the figure.
    Returns the union of the occluders, (n, size, size) bool.
    """
    n = len(x)
    count = rng.integers(1, 4, size=n)
    covered = np.zeros((n,) + x.shape[2:], bool)
    for slot in range(3):
        ellipse = rng.random(n) < 0.5
        centre = rng.uniform(-1.0, 1.0, size=(2, n, 1, 1))
        half = rng.uniform(0.12, 0.35, size=(2, n, 1, 1))
        du, dv = (u - centre[0]) / half[0], (v - centre[1]) / half[1]
        inside = np.where(
            ellipse[:, None, None], du**2 + dv**2 <= 1, (np.abs(du) <= 1) & (np.abs(dv) <= 1)
        )
        inside &= (slot < count)[:, None, None]
        colour = rng.uniform(0.1, 0.9, size=(n, 3, 1, 1))
        x[:] = np.where(inside[:, None], colour, x)
        covered |= inside
    masks &= ~covered[:, None]
    return covered


def _build(n: int, size: int, seed: int, hard: bool = False) -> dict:
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

    x = _background(rng, n, size, hard)
    masks = np.zeros((n, len(PART_NAMES), size, size), bool)
    for k, part in enumerate(PART_NAMES):
        for c, name in enumerate(PART_CLASSES):
            rows = np.flatnonzero(y == c)
            for ellipse, px, py, hw, hh in _LAYOUT[name][part]:
                du, dv = (u[rows] - px) / hw, (v[rows] - py) / hh
                inside = du**2 + dv**2 <= 1 if ellipse else (np.abs(du) <= 1) & (np.abs(dv) <= 1)
                masks[rows, k] |= inside
        masks[:, :k] &= ~masks[:, k : k + 1]  # this part covers the earlier ones
        if hard:  # one shared distribution for every part
            colour = rng.uniform(0.1, 0.9, size=(n, 3, 1, 1))
        else:
            colour = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1))
            colour[np.arange(n), k % 3] *= 0.3
        x = np.where(masks[:, k : k + 1], colour, x)
    result = {}
    if hard:
        result["occluder"] = torch.from_numpy(_occlude(rng, x, masks, u, v))
    return {
        **result,
        "x": torch.from_numpy(x.astype(np.float32)),
        "y": torch.from_numpy(y.astype(np.int64)),
        "mask": torch.from_numpy(masks),
    }


def load_parts(n: int = 256, size: int = 64, seed: int = 0, hard: bool = False) -> Dataset:
    """Figures of 3–4 coloured parts; the class is the arrangement.

    Parameters
    ----------
    n : int
        Number of images, classes balanced.
    size : int
        Canvas side (≥ 32).
    seed : int
        Seed of everything drawn.
    hard : bool
        Part colours from one shared distribution, textured backgrounds and 1–3 random
        occluders (see the module docstring); the easy default is unchanged.

    Returns
    -------
    Dataset
        ``x`` (n, 3, size, size) float32 in [0, 1]; ``y`` (n,) int64 in {0, 1, 2}
        (:data:`PART_CLASSES`); ``mask`` (n, 4, size, size) bool, one disjoint mask per part in
        :data:`PART_NAMES` order (bipeds have no tail: an empty mask).
        ``meta['part_names']`` names the mask channels; with ``hard``, ``meta['occluder']``
        (n, size, size) bool is where occluders were drawn (no part there), and masks may be
        empty where occluders hide a whole part.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    key = {"n": n, "size": size, "seed": seed, "v": 1} | ({"hard": True} if hard else {})
    data = cached("parts", key, lambda: _build(n, size, seed, hard))
    meta = {"part_names": PART_NAMES} | ({"occluder": data["occluder"]} if hard else {})
    return Dataset(data["x"], data["y"], data["mask"], PART_CLASSES, meta)
