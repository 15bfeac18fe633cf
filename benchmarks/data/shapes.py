"""Synthetic shapes: one large class-defining object among small distractors on noise.

Fast, exact masks; for unit tests and quick demos.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, cached

__all__ = ["load_shapes", "SHAPE_CLASSES", "shape_masks"]

SHAPE_CLASSES = ("ellipse", "rectangle", "triangle", "cross")


def shape_masks(
    kind: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, angle: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks of rotated shapes, one per row of the parameter arrays.

    Parameters
    ----------
    kind : np.ndarray
        (N,) int, index into :data:`SHAPE_CLASSES`.
    cx, cy, r, angle : np.ndarray
        (N,) centre (pixels), radius (pixels) and rotation (radians).
    size : int
        Canvas side.

    Returns
    -------
    np.ndarray
        (N, size, size) bool.
    """
    grid = np.arange(size, dtype=np.float64) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / r[:, None, None]
    v = (-sin * dx + cos * dy) / r[:, None, None]
    sqrt3 = np.sqrt(3.0)
    candidates = np.stack(
        [
            u**2 + (v / 0.6) ** 2 <= 1.0,
            (np.abs(u) <= 1.0) & (np.abs(v) <= 0.6),
            (v >= -0.5) & (sqrt3 * u + v <= 1.0) & (-sqrt3 * u + v <= 1.0),
            ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0)),
        ]
    )
    return candidates[kind, np.arange(len(kind))]


def _build(n: int, size: int, seed: int, distractors: int) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(y)
    x = rng.uniform(0.0, 0.25, size=(n, 3, size, size)) + rng.uniform(0.0, 0.2, size=(n, 3, 1, 1))
    for _ in range(distractors):  # small blobs of any shape, drawn first
        blob = shape_masks(
            rng.integers(0, len(SHAPE_CLASSES), n),
            rng.uniform(4, size - 4, n),
            rng.uniform(4, size - 4, n),
            rng.uniform(size * 0.05, size * 0.08, n),
            rng.uniform(0, np.pi, n),
            size,
        )
        colour = rng.uniform(0.3, 0.7, size=(n, 3, 1, 1))
        x = np.where(blob[:, None], colour, x)
    radius = rng.uniform(size * 0.18, size * 0.28, n)
    margin = radius + 1
    mask = shape_masks(
        y,
        rng.uniform(margin, size - margin),
        rng.uniform(margin, size - margin),
        radius,
        rng.uniform(0, np.pi, n),
        size,
    )
    colour = rng.uniform(0.75, 1.0, size=(n, 3, 1, 1))
    colour[np.arange(n), rng.integers(0, 3, n)] = 0.0  # saturated: one channel off
    background = x.copy()
    x = np.where(mask[:, None], colour, x)
    return {
        "x": torch.from_numpy(x.astype(np.float32)),
        "y": torch.from_numpy(y.astype(np.int64)),
        "mask": torch.from_numpy(mask[:, None]),
        "background": torch.from_numpy(background.astype(np.float32)),
        "colour": torch.from_numpy(colour[:, :, 0, 0].astype(np.float32)),
    }


def load_shapes(n: int = 512, size: int = 64, seed: int = 0, distractors: int = 2) -> Dataset:
    """Images of one large filled shape (the class) among small distractor blobs.

    Parameters
    ----------
    n : int
        Number of images (classes balanced: ``n // 4`` each, remainder spread).
    size : int
        Canvas side in pixels (≥ 16).
    seed : int
        Seed of everything drawn.
    distractors : int
        Small blobs per image (any of the four shapes, a sixth of the object's size or less,
        duller colours), drawn under the object.

    Returns
    -------
    Dataset
        ``x`` (n, 3, size, size) float32 in [0, 1]; ``y`` (n,) int64 in {0..3}
        (:data:`SHAPE_CLASSES`); ``mask`` (n, 1, size, size) bool, exactly the object's pixels.
        ``meta['background']`` is the image without the object, ``meta['colour']`` (n, 3) its
        colour.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    key = {"n": n, "size": size, "seed": seed, "distractors": distractors, "v": 1}
    data = cached("shapes", key, lambda: _build(n, size, seed, distractors))
    meta = {"background": data["background"], "colour": data["colour"]}
    return Dataset(data["x"], data["y"], data["mask"], SHAPE_CLASSES, meta)
