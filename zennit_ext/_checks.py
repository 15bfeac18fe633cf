"""Argument validators shared by both packages: early errors that name the argument.

Only the standard library and ``torch``: ``captum_ext`` imports these without loading any
engine. :func:`parse_target` is the one parser of Captum's ``target`` for every entry point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch

__all__ = ["TargetType", "real_number", "check_finite", "parse_target"]

#: Captum's ``TargetType`` (``captum._utils.typing``), spelled out without importing Captum.
TargetType = None | int | tuple[int, ...] | torch.Tensor | list[int] | list[tuple[int, ...]]


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


def _is_index(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy) and not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _index_tuple(target: Any) -> tuple[int, ...] | None:
    """``target`` as a tuple of indices if it is an int or a non-empty tuple of ints, else None."""
    if _is_index(target):
        return (int(target),)
    if isinstance(target, tuple) and target and all(_is_index(i) for i in target):
        return tuple(int(i) for i in target)
    return None


def _shown(target: Any) -> str:
    """``repr(target)``, a long list cut after its first 10 entries."""
    if isinstance(target, list) and len(target) > 10:
        return f"{target[:10]!r}[:10] (of {len(target)})"
    return repr(target)


def parse_target(
    target: TargetType, rows: int, output_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Captum's ``target`` as one index tuple per row: the one parser of every entry point.

    - ``None``: no index; the output must have one value per row;
    - an ``int``: that index for every row;
    - a ``tuple`` of ints: ONE index into a multi-dimensional output, for every row;
    - a ``list`` of length N (of ints, or of equal-length tuples of ints) or a 1-D integer
      tensor of length N: one target per row (a one-element tensor counts as an int).

    Indices follow torch indexing: each in ``[-size, size)`` of its output dimension.

    Parameters
    ----------
    target : None, int, tuple of int, list or torch.Tensor
        Captum's ``TargetType``.
    rows : int
        N, the number of rows (samples).
    output_shape : sequence of int, optional
        (M, *S) shape of the output the target indexes (M may differ from N, e.g. for stacked
        copies of the batch). Given, the k indices of a row must fit the first k dimensions of
        S and select one value (the dimensions of S after the k-th have size 1), and negative
        indices are made non-negative; not given, only the structure is checked.

    Returns
    -------
    torch.Tensor
        (N, k) int64 on the CPU, row i indexing the output of row i; k = 0 for ``None``.

    Raises
    ------
    ValueError
        Naming ``target``, the value received and what was expected: another type (a bool, a
        float, a float tensor), a list or tensor not of length N, list entries that are not
        ints or equal-length tuples of ints, or (with ``output_shape``) indices that do not
        select one value per row or are out of range.
    """
    raw = target
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target tensor must hold integer indices, got {target.dtype}")
        if target.numel() == 1:
            target = int(target.reshape(-1)[0])
        elif target.dim() == 1 and len(target) == rows:
            target = target.tolist()
        else:
            raise ValueError(
                f"target tensor must hold one element or one per input row ({rows}), "
                f"got shape {tuple(target.shape)}"
            )
    if target is None:
        index = torch.zeros(rows, 0, dtype=torch.long)
    elif (single := _index_tuple(target)) is not None:
        index = torch.tensor([single], dtype=torch.long).expand(rows, -1)
    elif isinstance(target, list) and len(target) == rows:
        entries = [_index_tuple(t) for t in target]
        width = len(entries[0] or ()) if entries else 1
        if any(e is None or len(e) != width for e in entries):
            raise ValueError(
                f"target list must hold ints or equal-length tuples of ints, got {_shown(raw)}"
            )
        index = torch.tensor(entries, dtype=torch.long).reshape(rows, width)
    else:
        raise ValueError(
            "target must be None, an int, a tuple of ints, a list with one entry per input "
            f"row ({rows}) or a tensor, got {_shown(raw)}"
        )
    if output_shape is None:
        return index
    shape, k = tuple(output_shape), index.shape[1]
    sizes = shape[1:]
    if k > len(sizes):
        raise ValueError(
            f"target {_shown(raw)} indexes {k} dimensions of a forward output of shape {shape}"
        )
    if math.prod(sizes[k:]) != 1:
        if k == 0:
            raise ValueError(
                f"target must be given for a forward output of shape {shape} (more than one "
                "value per row)"
            )
        raise ValueError(
            f"target {_shown(raw)} selects {math.prod(sizes[k:])} values per row of a forward "
            f"output of shape {shape}; one is needed"
        )
    size = torch.tensor(sizes[:k], dtype=torch.long)
    if bool(((index < -size) | (index >= size)).any()):
        raise ValueError(f"target {_shown(raw)} out of range for a forward output of shape {shape}")
    return torch.where(index < 0, index + size, index)
