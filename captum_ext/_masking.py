"""Scores of a model with units of one layer masked: a fast low-rank path and a hook fallback.

Both evaluators answer two questions for inputs x (N rows) and a layer with n units:
``singles()`` → p (N,) unmasked and p_single (N, n) with each unit masked alone, and
``pairs(index)`` → (N, P) with the two units of each pair masked together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Scorer", "LowRankEvaluator", "HookEvaluator", "split_after"]

_ROWS_PER_CALL = 1 << 16
# pre-activation elements per pair block: 4 MB of float32, small enough to stay in cache
_ELEMENTS_PER_BLOCK = 1 << 20


class Scorer:
    """Turns model outputs into one score per row: transform, then select the target.

    Parameters
    ----------
    transform : None, 'sigmoid', 'softmax' or callable
        Applied to the output (N, K) first; None keeps it as it is.
    target : None, int, sequence of int or 1-D tensor
        Output column per row; None is allowed for one-column (or 1-D) outputs.
    rows : int
        N, to check and expand the target.
    """

    def __init__(self, transform: Any, target: Any, rows: int) -> None:
        if transform is None or callable(transform):
            self._transform = transform or (lambda out: out)
        elif transform == "sigmoid":
            self._transform = torch.sigmoid
        elif transform == "softmax":
            self._transform = lambda out: out.softmax(-1)
        else:
            raise ValueError(
                "output_transform must be None, 'sigmoid', 'softmax' or a callable, "
                f"got {transform!r}"
            )
        if target is None:
            self._target = None
        elif isinstance(target, int):
            self._target = torch.full((rows,), target, dtype=torch.long)
        elif isinstance(target, Sequence | Tensor):
            self._target = torch.as_tensor(target, dtype=torch.long).reshape(-1)
            if self._target.numel() == 1:
                self._target = self._target.expand(rows)
            if len(self._target) != rows:
                raise ValueError(f"target must have one entry per input row ({rows}), got "
                                 f"{len(self._target)}")  # fmt: skip
        else:
            raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}")

    def __call__(self, output: Tensor, rows: Tensor | None = None) -> Tensor:
        """Scores (R,) of the outputs (R, K) for the rows ``rows`` (default: all, in order)."""
        output = self._transform(output)
        if output.dim() == 1:
            return output
        output = output.reshape(len(output), -1)
        if self._target is None:
            if output.shape[1] != 1:
                raise ValueError(
                    f"target must be given for a forward function with {output.shape[1]} outputs"
                )
            return output[:, 0]
        target = self._target.to(output.device)
        target = target if rows is None else target[rows]
        if int(target.max()) >= output.shape[1] or int(target.min()) < 0:
            raise ValueError(f"target out of range for {output.shape[1]} outputs")
        return output.gather(1, target[:, None])[:, 0]


def split_after(forward_func: Any, layer: nn.Module) -> tuple[Tensor, Tensor, nn.Module] | None:
    """(weight, bias, suffix) of the affine map ``layer`` feeds in an ``nn.Sequential``.

    The map is the next ``nn.Linear``, with an eval-mode ``BatchNorm1d`` right after it folded
    in (both affine: the fold is exact up to rounding and saves one pass over every masked
    pre-activation). Identity and Dropout modules between the layer and the Linear are skipped
    (in eval mode both pass their input on unchanged). Returns None when the fast path does not
    apply: the forward function is not an ``nn.Sequential``, the layer is not one of its direct
    children exactly once, or the next other child is not an ``nn.Linear``.

    Returns
    -------
    weight : torch.Tensor
        (m, n), a new tensor (the model's parameters are not touched).
    bias : torch.Tensor
        (m,).
    suffix : nn.Sequential
        The children after the folded map.
    """
    if not isinstance(forward_func, nn.Sequential):
        return None
    children = list(forward_func)
    where = [k for k, child in enumerate(children) if child is layer]
    if len(where) != 1:
        return None
    k = where[0] + 1
    while k < len(children) and isinstance(
        children[k], nn.Identity | nn.modules.dropout._DropoutNd
    ):
        k += 1
    if k >= len(children) or not isinstance(children[k], nn.Linear):
        return None
    linear = children[k]
    weight = linear.weight.detach().clone()
    bias = torch.zeros_like(weight[:, 0]) if linear.bias is None else linear.bias.detach().clone()
    norm = children[k + 1] if k + 1 < len(children) else None
    if isinstance(norm, nn.BatchNorm1d) and not norm.training and norm.running_var is not None:
        scale = (norm.running_var + norm.eps).rsqrt()
        shift = -norm.running_mean * scale
        if norm.affine:
            scale, shift = (
                scale * norm.weight.detach(),
                shift * norm.weight.detach() + norm.bias.detach(),
            )
        weight, bias = scale[:, None] * weight, scale * bias + shift
        k += 1
    return weight, bias, nn.Sequential(*children[k + 1 :])


def _in_chunks(fn: Callable[[Tensor], Tensor], n: int, like: Tensor) -> Tensor:
    """``fn`` over chunks of ``range(n)``, concatenated (empty like ``like`` when n = 0)."""
    if n == 0:
        return like.new_zeros(0)
    return torch.cat([fn(chunk) for chunk in torch.arange(n).split(_ROWS_PER_CALL)])


class LowRankEvaluator:
    """Exact masked scores from the cached layer activation, without re-running the prefix.

    Masking units S of the layer output ``a`` changes the next affine map's output by
    ``-Σ_{k∈S} (a_k - m_k) W[:, k]``. A unit whose activation already equals the mask value
    changes nothing, so single masks only run the suffix on the rows where the unit is
    active, and pairs (i, j) only on the rows where i is active (all j of a block at once, as
    one broadcast); the other rows take the single-mask score of j.

    Parameters
    ----------
    activation : torch.Tensor
        (N, n) layer output.
    weight : torch.Tensor
        (m, n) weight of the affine map the layer feeds.
    bias : torch.Tensor
        (m,) its bias.
    suffix : callable
        Everything after the affine map, row-wise (eval mode), (R, m) → (R, K).
    scorer : Scorer
    mask_value : torch.Tensor
        (n,) value a masked unit takes.
    """

    def __init__(
        self, activation: Tensor, weight: Tensor, bias: Tensor, suffix: Callable,
        scorer: Scorer, mask_value: Tensor,
    ) -> None:  # fmt: skip
        self.n = activation.shape[1]
        self._delta = activation - mask_value
        self._active = self._delta != 0
        self._z = torch.addmm(bias, activation, weight.t())
        self._weight_t = weight.t().contiguous()  # (n, m)
        self._suffix = suffix
        self._scorer = scorer

    def _scores(self, rows: Tensor, z: Tensor) -> Tensor:
        return self._scorer(self._suffix(z), rows)

    def singles(self) -> tuple[Tensor, Tensor]:
        rows_all = torch.arange(len(self._z))
        p = self._scores(rows_all, self._z)
        rows, units = torch.nonzero(self._active, as_tuple=True)

        def masked(chunk: Tensor) -> Tensor:
            r, k = rows[chunk], units[chunk]
            return self._scores(r, self._z[r] - self._delta[r, k, None] * self._weight_t[k])

        p_single = p[:, None].repeat(1, self.n)
        p_single[rows, units] = _in_chunks(masked, len(rows), p)
        return p, p_single

    def pairs(self, index: Tensor, p: Tensor, p_single: Tensor) -> Tensor:
        out = p_single[:, index[:, 1]].clone()  # rows where unit i is inactive: p_j
        for i in index[:, 0].unique().tolist():
            columns = torch.nonzero(index[:, 0] == i)[:, 0]
            j = index[columns, 1]
            weight_j = self._weight_t[j][None]  # (1, pairs, m)
            # (rows, pairs, m) blocks that stay in cache: one broadcast each, no gathers;
            # inactive j add nothing
            step = max(1, _ELEMENTS_PER_BLOCK // weight_j.numel())
            for rows in torch.nonzero(self._active[:, i])[:, 0].split(step):
                base = self._z[rows] - self._delta[rows, i, None] * self._weight_t[i]
                z = torch.addcmul(base[:, None, :], self._delta[rows][:, j, None], weight_j,
                                  value=-1)  # fmt: skip
                flat_rows = rows[:, None].expand(-1, len(j)).reshape(-1)
                scores = self._scores(flat_rows, z.reshape(-1, z.shape[-1]))
                out[rows[:, None], columns[None, :]] = scores.reshape(len(rows), len(j))
        return out


class HookEvaluator:
    """Masked scores by batched forward passes with a forward hook on the layer.

    Several masks run in one pass: the inputs are repeated along the batch dimension and the
    hook replaces the masked units of each copy.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs, *additional_args)``.
    layer : nn.Module
        Its output (N, ...) is masked; it must be a single tensor.
    inputs : tuple of tensors
        Each (N, ...).
    additional_args : tuple or None
        Extra forward arguments; tensors with N rows are repeated with the inputs.
    scorer : Scorer
    mask_value : torch.Tensor
        (n,) value a masked unit takes.
    masks_per_eval : int
        Masks per forward pass at most; fewer when the repeated batch would exceed 65,536
        rows (so memory stays bounded for large N).
    """

    def __init__(
        self, forward: Callable, layer: nn.Module, inputs: tuple, additional_args: tuple | None,
        scorer: Scorer, mask_value: Tensor, masks_per_eval: int, n: int,
    ) -> None:  # fmt: skip
        self.n = n
        self._forward, self._layer, self._inputs = forward, layer, inputs
        self._args = additional_args or ()
        self._scorer, self._mask_value = scorer, mask_value
        self._per_eval = max(1, min(masks_per_eval, _ROWS_PER_CALL // len(inputs[0])))

    def _run(self, masks: Tensor | None) -> Tensor:
        """Scores (N, K) for K boolean masks (K, n); None → unmasked (N, 1)."""
        rows = len(self._inputs[0])
        copies = 1 if masks is None else len(masks)

        def hook(_module: nn.Module, _inp: Any, output: Tensor) -> Tensor:
            flat = output.reshape(copies, rows, -1)
            masked = torch.where(masks[:, None, :], self._mask_value.to(flat), flat)
            return masked.reshape(output.shape)

        def repeat(value: Any) -> Any:
            if isinstance(value, Tensor) and value.dim() > 0 and len(value) == rows:
                return value.repeat(copies, *([1] * (value.dim() - 1)))
            return value

        handle = self._layer.register_forward_hook(hook) if masks is not None else None
        try:
            output = self._forward(*(repeat(x) for x in self._inputs), *map(repeat, self._args))
        finally:
            if handle is not None:
                handle.remove()
        scores = self._scorer(output, torch.arange(rows).repeat(copies))
        return scores.reshape(copies, rows).t()

    def _batched(self, masks: Tensor) -> Tensor:
        return torch.cat([self._run(block) for block in masks.split(self._per_eval)], dim=1)

    def singles(self) -> tuple[Tensor, Tensor]:
        p = self._run(None)[:, 0]
        return p, self._batched(torch.eye(self.n, dtype=torch.bool))

    def pairs(self, index: Tensor, p: Tensor, p_single: Tensor) -> Tensor:
        masks = torch.zeros(len(index), self.n, dtype=torch.bool)
        masks[torch.arange(len(index))[:, None], index] = True
        return self._batched(masks)
