"""What synergy masks and what it scores: units (groups of elements), targets, row chunks.

``Units`` turns a Captum feature / layer mask and baselines into n units and applies any set
of unit masks to a batch; ``Target`` selects one score per row from a forward output with
Captum's target semantics; ``RowSlice`` cuts inputs, arguments and targets into row chunks.
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.common import _format_feature_mask, _format_tensor_into_tuples
from torch import Tensor

from zennit_ext._checks import check_finite, parse_target

__all__ = ["Units", "Target", "Transform", "RowSlice", "format_inputs"]


class Transform:
    """The ``output_transform`` of a score: None, 'sigmoid', 'softmax' (last dim) or callable.

    Scores come out in float64: 'sigmoid' and 'softmax' run on the output in float64 (a float32
    sigmoid near 1 rounds the differences of nearly equal outputs away); a callable gets the
    output as the model gives it.
    """

    def __init__(self, transform: Any) -> None:
        if transform is None or callable(transform):
            self._fn = transform
        elif transform == "sigmoid":
            self._fn = lambda out: out.to(torch.float64).sigmoid()
        elif transform == "softmax":
            self._fn = lambda out: out.to(torch.float64).softmax(-1)
        else:
            raise ValueError(
                "output_transform must be None, 'sigmoid', 'softmax' or a callable, "
                f"got {transform!r}"
            )

    def __call__(self, output: Tensor) -> Tensor:
        return (output if self._fn is None else self._fn(output)).to(torch.float64)


class Target:
    """Captum's ``target`` as one index tuple per row, and the selection of one score per row.

    Every kind Captum accepts (None, an int, a tuple of ints, a list of ints or of tuples, a
    tensor with one element or one entry per row), parsed by
    :func:`zennit_ext._checks.parse_target`: its structure when built, its range against each
    output it selects from.

    Parameters
    ----------
    target : None, int, tuple, list or torch.Tensor
    rows : int
        N, the number of input rows.
    """

    def __init__(self, target: Any, rows: int) -> None:
        parse_target(target, rows)
        self.raw = target
        self._count = rows
        self._which: slice | Tensor = slice(None)

    def rows(self, which: slice | Tensor) -> Target:
        """The target of the rows ``which`` (a slice or an index tensor)."""
        part = Target.__new__(Target)
        part.raw, part._count = self.raw, self._count
        if isinstance(which, Tensor):
            which = which.cpu()
        part._which = torch.arange(self._count)[self._which][which]
        return part

    def select(self, output: Tensor, copies: int = 1) -> Tensor:
        """Scores (copies · R,) of an output (copies · R, ...) from ``copies`` stacked batches."""
        shape = (self._count, *output.shape[1:])
        index = parse_target(self.raw, self._count, shape)[self._which]
        index = index.to(output.device).repeat(copies, 1)
        rows = torch.arange(len(output), device=output.device)
        return output[(rows, *index.t())].reshape(len(output))


def _as_rows(value: Tensor, like: Tensor, rows: int, name: str, what: str) -> Tensor:
    """``value`` left-padded to ``like``'s dims; first dim 1 or N, the rest broadcastable."""
    if value.dim() > like.dim():
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} has more dimensions than the "
            f"{what} {tuple(like.shape)}"
        )
    value = value.reshape((1,) * (like.dim() - value.dim()) + tuple(value.shape))
    ok = value.shape[0] in (1, rows) and all(
        v in (1, s) for v, s in zip(value.shape[1:], like.shape[1:], strict=True)
    )
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the "
            f"{what} {tuple(like.shape)} (first dim 1 or {rows})"
        )
    return value


class Units:
    """n units over a tuple of tensors (N, ...): Captum feature-mask groups, or every element.

    Group ids are global across the tensors, as in Captum's ``FeatureAblation``: a masked
    unit sets every element carrying its id to the baseline.

    Parameters
    ----------
    tensors : tuple of torch.Tensor
        Each (·, ...): the layer outputs or the inputs (shapes, dtype, device are used).
    mask : None, torch.Tensor or tuple of torch.Tensor
        Integer ids, each broadcastable to its tensor with first dim 1 or N; None → every
        element is a unit.
    baselines : None, number, torch.Tensor or tuple of those
        Value of a masked element, broadcastable likewise; None → 0.
    names : (str, str)
        How the mask and baseline arguments are called, for errors.
    what : str
        What the tensors are, for errors.
    rows : int
        N (the tensors may hold fewer rows: only their shapes beyond the batch are used).
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        mask: Any,
        baselines: Any,
        names: tuple[str, str],
        what: str,
        rows: int,
    ) -> None:
        self.shapes = tuple(tuple(t.shape[1:]) for t in tensors)
        masks = _format_feature_mask(mask, tensors)
        if len(masks) != len(tensors):
            raise ValueError(
                f"{names[0]} must hold one tensor per {what} tensor "
                f"({len(tensors)}), got {len(masks)}"
            )
        for m in masks:
            if not isinstance(m, Tensor) or m.dtype.is_floating_point or m.dtype == torch.bool:
                raise ValueError(f"{names[0]} must hold integer tensors, got {m!r}")
        masks = tuple(
            _as_rows(m.to(t.device), t, rows, names[0], what)
            for m, t in zip(masks, tensors, strict=True)
        )
        self.ids = torch.unique(torch.cat([m.reshape(-1) for m in masks]))
        self.n = len(self.ids)
        # (1 or N, *shape) positions of each element's unit in ``ids``
        self.index = tuple(
            torch.searchsorted(self.ids, m.contiguous()).expand(m.shape[0], *t.shape[1:])
            for m, t in zip(masks, tensors, strict=True)
        )
        self.baselines = tuple(
            _as_rows(torch.as_tensor(b, dtype=t.dtype, device=t.device), t, rows, names[1], what)
            for b, t in zip(self._baselines(baselines, tensors, names[1]), tensors, strict=True)
        )

    @staticmethod
    def _baselines(baselines: Any, tensors: tuple[Tensor, ...], name: str) -> tuple:
        if baselines is None:
            return (0.0,) * len(tensors)
        baselines = baselines if isinstance(baselines, tuple) else (baselines,)
        if len(baselines) != len(tensors):
            raise ValueError(
                f"{name} must hold one entry per tensor ({len(tensors)}), got {len(baselines)}"
            )
        for b in baselines:
            if not isinstance(b, Tensor | int | float) or isinstance(b, bool):
                raise ValueError(f"{name} entries must be numbers or tensors, got {b!r}")
            check_finite(name, torch.as_tensor(b))
        return baselines

    def rows(self, start: int, stop: int) -> Units:
        """The same units for rows ``start:stop`` (per-row masks and baselines are cut)."""
        part = Units.__new__(Units)
        part.shapes, part.ids, part.n = self.shapes, self.ids, self.n
        part.index = tuple(i if len(i) == 1 else i[start:stop] for i in self.index)
        part.baselines = tuple(b if len(b) == 1 else b[start:stop] for b in self.baselines)
        return part

    @property
    def per_row(self) -> bool:
        """Whether units or baselines differ between rows."""
        return any(len(i) > 1 for i in self.index + self.baselines)

    def apply(self, tensors: tuple[Tensor, ...], masks: Tensor) -> tuple[Tensor, ...]:
        """Tensors (K · R, ...) of K stacked copies with copy k's units ``masks[k]`` masked.

        Parameters
        ----------
        tensors : tuple of torch.Tensor
            Each (K · R, ...).
        masks : torch.Tensor
            (K, n) bool.
        """
        copies = len(masks)
        out = []
        for t, index, baseline in zip(tensors, self.index, self.baselines, strict=True):
            t_k = t.reshape(copies, -1, *t.shape[1:])
            elements = masks.to(t.device)[:, index]  # (K, 1 or R, ...)
            out.append(torch.where(elements, baseline.to(t.dtype), t_k).reshape(t.shape))
        return tuple(out)

    def expand(self, values: Tensor) -> tuple[Tensor, ...]:
        """Per-unit values (R, n) → one tensor (R, *shape) per tensor, each element its unit's."""
        rows = len(values)
        return tuple(
            values.gather(1, index.expand(rows, *index.shape[1:]).reshape(rows, -1)).reshape(
                rows, *index.shape[1:]
            )
            for index in self.index
        )


class RowSlice:
    """Inputs, additional forward arguments and target cut to rows ``start:stop``.

    Tensor arguments whose first dimension is N are cut; others pass unchanged. Stacked copies
    repeat every tensor argument with a batch dimension, as Captum's ablation does.
    """

    def __init__(
        self,
        inputs: tuple[Tensor, ...],
        args: tuple | None,
        target: Target,
        start: int,
        stop: int,
    ) -> None:
        rows = len(inputs[0])
        self.start, self.stop = start, stop
        self.inputs = tuple(x[start:stop] for x in inputs)
        self.args = tuple(
            a[start:stop] if isinstance(a, Tensor) and a.dim() > 0 and len(a) == rows else a
            for a in (args or ())
        )
        self.target = target.rows(slice(start, stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def repeated_args(self, copies: int) -> tuple:
        """Additional arguments for ``copies`` stacked batches."""
        return tuple(
            a.repeat(copies, *([1] * (a.dim() - 1))) if isinstance(a, Tensor) and a.dim() > 0 else a
            for a in self.args
        )


def format_inputs(inputs: Any) -> tuple[Tensor, ...]:
    """Captum's tuple of input tensors, with at least one row and aligned batch dims."""
    inputs = _format_tensor_into_tuples(inputs)
    if not inputs or not all(isinstance(x, Tensor) and x.dim() > 0 for x in inputs):
        raise ValueError(
            f"inputs must be a tensor or a tuple of tensors with a batch dimension, got {inputs!r}"
        )
    rows = len(inputs[0])
    if rows == 0:
        raise ValueError("inputs must hold at least one row, got an empty batch")
    if any(len(x) != rows for x in inputs):
        raise ValueError(
            f"inputs must share the batch dimension, got shapes {[tuple(x.shape) for x in inputs]}"
        )
    for position, x in enumerate(inputs):
        check_finite("inputs" if len(inputs) == 1 else f"inputs[{position}]", x)
    return inputs
