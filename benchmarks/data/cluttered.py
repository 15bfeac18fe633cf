"""Real MNIST / Fashion-MNIST items pasted on real textures, with distractor items.

Our stand-in for ECSSD: Relevance Mass Accuracy needs exact object masks. The canvas is a
grid of 32-px cells (2×2 at 64 px, 3×3 at 96 px); each item sits in its own cell, so items
never overlap. The target item is drawn in a saturated gold, 1–3 distractors (other classes)
in a dimmer grey; the label is the target's class and the mask is exactly the target's
non-zero pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, cached
from benchmarks.data.mnist import FASHION_CLASSES, MNIST_CLASSES, load_items

__all__ = ["load_cluttered", "TEXTURES", "TARGET_COLOUR", "DISTRACTOR_COLOUR"]

TEXTURES = ("brick", "grass", "gravel")
TARGET_COLOUR = np.array([1.0, 0.8, 0.1], dtype=np.float32)
DISTRACTOR_COLOUR = np.array([0.55, 0.55, 0.55], dtype=np.float32)
_CELL = 32
_ITEM = 28


def _textures() -> np.ndarray:
    from skimage import data

    return np.stack([getattr(data, name)().astype(np.float32) / 255.0 for name in TEXTURES])


def _paste(canvas: np.ndarray, item: np.ndarray, top: int, left: int, colour: np.ndarray):
    """Draw ``item``'s non-zero pixels into ``canvas`` (3, S, S) in place; return them (28, 28)."""
    on = item > 0
    region = canvas[:, top : top + _ITEM, left : left + _ITEM]
    region[:, on] = colour[:, None] * (0.4 + 0.6 * item[on])
    return on


def _build(n: int, size: int, seed: int, source: str, split: str) -> dict:
    rng = np.random.default_rng(seed)
    items, labels, used = load_items(source, split)
    textures = _textures()
    per_row = size // _CELL
    max_distractors = min(3, per_row**2 - 1)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    y = np.arange(n) % 10
    rng.shuffle(y)

    x = np.empty((n, 3, size, size), np.float32)
    background = np.empty_like(x)
    mask = np.zeros((n, 1, size, size), bool)
    placement = np.zeros((n, 4), np.int64)  # target's top, left, item index, texture index
    for i in range(n):
        texture = rng.integers(len(TEXTURES))
        top, left = rng.integers(0, textures.shape[1] - size, 2)
        tint = rng.uniform(0.2, 0.45, size=(3, 1, 1)).astype(np.float32)
        canvas = textures[texture, top : top + size, left : left + size][None] * tint
        slots = rng.permutation(per_row**2)[: 1 + rng.integers(1, max_distractors + 1)]
        corners = [
            (s // per_row * _CELL + rng.integers(0, 5), s % per_row * _CELL + rng.integers(0, 5))
            for s in slots
        ]
        others = rng.choice(np.setdiff1d(np.arange(10), [y[i]]), len(slots) - 1)
        for (oy, ox), cls in zip(corners[1:], others, strict=True):
            _paste(canvas, items[rng.choice(by_class[cls])], oy, ox, DISTRACTOR_COLOUR)
        background[i] = canvas
        target = rng.choice(by_class[y[i]])
        oy, ox = corners[0]
        mask[i, 0, oy : oy + _ITEM, ox : ox + _ITEM] = _paste(
            canvas, items[target], oy, ox, TARGET_COLOUR
        )
        x[i] = canvas
        placement[i] = (oy, ox, target, texture)
    return {
        "x": torch.from_numpy(x),
        "y": torch.from_numpy(y.astype(np.int64)),
        "mask": torch.from_numpy(mask),
        "background": torch.from_numpy(background),
        "placement": torch.from_numpy(placement),
        "source": used,
    }


def load_cluttered(
    n: int = 1024, size: int = 64, seed: int = 0, source: str = "auto", split: str = "train"
) -> Dataset:
    """Cluttered real items: classify the gold item among grey distractors on texture.

    Parameters
    ----------
    n : int
        Number of images; classes balanced (``n // 10`` each, remainder spread).
    size : int
        Canvas side, a multiple of 32 from 64 (2×2 cells, 1 distractor) up; 64 → 1–3
        distractors, 96 → 1–3 distractors in a 3×3 grid.
    seed : int
        Seed of everything drawn.
    source : {'auto', 'mnist', 'fashion', 'digits'}
        Where items come from (see :func:`benchmarks.data.mnist.load_items`).
    split : {'train', 'test'}
        Which split of the item source to draw from (use 'test' for evaluation sets).

    Returns
    -------
    Dataset
        ``x`` (n, 3, size, size) float32 in [0, 1]; ``y`` (n,) int64 in {0..9}; ``mask``
        (n, 1, size, size) bool = the target item's non-zero pixels. ``meta``: 'background'
        (the image before the target was pasted), 'placement' (n, 4) = (top, left, item index,
        texture index), 'source'.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 64 or size % _CELL:
        raise ValueError(f"size must be a multiple of 32 and >= 64, got {size}")
    key = {"n": n, "size": size, "seed": seed, "source": source, "split": split, "v": 1}
    data = cached("cluttered", key, lambda: _build(n, size, seed, source, split))
    classes = FASHION_CLASSES if data["source"] == "fashion" else MNIST_CLASSES
    meta = {k: data[k] for k in ("background", "placement", "source")}
    return Dataset(data["x"], data["y"], data["mask"], classes, meta)
