"""Argument validators shared by both packages: early errors that name the argument.

Only ``math`` and ``torch``: ``captum_ext`` imports these without loading any engine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["real_number", "check_finite"]


def real_number(name: str, value: Any) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if a floating-point ``tensor`` holds NaN or ±inf.

    Parameters
    ----------
    name : str
        What the tensor is, for the message (e.g. ``'inputs'``).
    tensor : torch.Tensor
        Any shape; integer and bool tensors always pass.

    Raises
    ------
    ValueError
        Naming ``name``, the number of non-finite entries and the first one's index.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    finite = torch.isfinite(tensor.detach())
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        first = tuple(bad[0].tolist())
        raise ValueError(
            f"{name} must be finite, got {len(bad)} non-finite entries (NaN or ±inf) of "
            f"{tensor.numel()}, the first at index {first}: {tensor.detach()[first].item()}"
        )
