"""Masked scores of one chunk of rows: by forward passes, or from precomputed contributions.

Every evaluator answers, for R rows and n units, ``singles()`` → p (R,) unmasked,
p_single (R, n) with each unit masked alone and the dtype the model gives its scores in (that
of the results), and ``pairs(index, p_single)`` → (R, P) with the two units of each pair
``index[k]`` masked together. Scores are float64 whatever the model's dtype: the differences
of nearly equal scores are taken from them. ``pairs_per_call`` is the block of pairs it takes
at once.
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.common import _format_tensor_into_tuples, _verify_select_neuron
from captum._utils.gradient import _forward_layer_eval
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_ext.synergy._masking import RowSlice, Target, Transform, Units

__all__ = [
    "LayerHookEvaluator",
    "NeuronEvaluator",
    "ContributionEvaluator",
    "select_neuron",
    "probe_layer",
]

# rows of one stacked forward pass at most (masks per pass shrink below perturbations_per_eval
# when a chunk is large)
_ROWS_PER_PASS = 1 << 16
# elements of one block of masked pre-activations: 4 MB of float32, small enough to stay in cache
_ELEMENTS_PER_BLOCK = 1 << 20


def probe_layer(
    forward_func: Any, layer: nn.Module, first: RowSlice, device_ids: Any, *, layer_input: bool
) -> tuple[Tensor, ...]:
    """The layer's output(s), or its input(s) when ``layer_input``, for the first row alone,
    unmasked: shapes and selector checks."""
    with torch.no_grad():
        return _forward_layer_eval(
            forward_func,
            first.inputs,
            layer,
            first.args or None,
            device_ids=device_ids,
            attribute_to_layer_input=layer_input,
        )


def _pair_masks(index: Tensor, n: int) -> Tensor:
    masks = torch.zeros(len(index), n, dtype=torch.bool)
    masks[torch.arange(len(index))[:, None], index] = True
    return masks


class _MaskedForward:
    """Masks as K stacked copies of the rows, ``per_eval`` masks per forward pass."""

    n: int

    def __init__(self, rows: int, per_eval: int) -> None:
        self.pairs_per_call = max(1, min(per_eval, _ROWS_PER_PASS // rows))

    def _scores(self, masks: Tensor | None) -> tuple[Tensor, torch.dtype]:
        """(R, K) float64 scores for K masks (K, n), None → the unmasked (R, 1); the model's
        dtype of them."""
        raise NotImplementedError

    def _batched(self, masks: Tensor) -> Tensor:
        return torch.cat([self._scores(b)[0] for b in masks.split(self.pairs_per_call)], dim=1)

    def singles(self) -> tuple[Tensor, Tensor, torch.dtype]:
        p, dtype = self._scores(None)
        return p[:, 0], self._batched(torch.eye(self.n, dtype=torch.bool)), dtype

    def pairs(self, index: Tensor, p_single: Tensor) -> Tensor:
        return self._batched(_pair_masks(index, self.n))


class LayerHookEvaluator(_MaskedForward):
    """Units of a layer's output (or input) masked by a forward (pre-)hook, in stacked passes.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs, *additional_args)``.
    layer : nn.Module
        Its output (a tensor or a tuple of tensors, batch first) is masked, or its positional
        inputs when ``layer_input``.
    part : RowSlice
        The rows, their additional arguments and target.
    units : Units
        Units of the layer output (or input) for these rows.
    transform : Transform
    per_eval : int
        Masks per forward pass.
    layer_input : bool
        Mask the layer's inputs by a forward pre-hook (Captum's
        ``attribute_to_layer_input=True``) instead of its output by a forward hook.
    """

    def __init__(
        self,
        forward: Any,
        layer: nn.Module,
        part: RowSlice,
        units: Units,
        transform: Transform,
        per_eval: int,
        layer_input: bool,
    ) -> None:
        super().__init__(len(part), per_eval)
        self.n = units.n
        self._forward, self._layer, self._part = forward, layer, part
        self._units, self._transform, self._layer_input = units, transform, layer_input

    def _scores(self, masks: Tensor | None) -> tuple[Tensor, torch.dtype]:
        rows, copies = len(self._part), 1 if masks is None else len(masks)
        inputs = tuple(x.repeat(copies, *([1] * (x.dim() - 1))) for x in self._part.inputs)
        handle = None if masks is None else self._register(masks, copies * rows)
        try:
            output = self._forward(*inputs, *self._part.repeated_args(copies))
        finally:
            if handle is not None:
                handle.remove()
        scores = self._part.target.select(self._transform(output), copies)
        return scores.reshape(copies, rows).t(), output.dtype

    def _register(self, masks: Tensor, expected: int) -> RemovableHandle:
        """A hook on the layer that masks its output (or inputs) of ``expected`` stacked rows."""

        def mask(value: Any) -> Any:
            parts = _format_tensor_into_tuples(value)
            if len(parts[0]) != expected:
                raise ValueError(
                    f"the layer saw a batch of {len(parts[0])} rows, {expected} expected: "
                    "masking needs the whole batch at the layer (no DataParallel replicas)"
                )
            masked = self._units.apply(parts, masks)
            return masked if isinstance(value, tuple) else masked[0]

        if self._layer_input:
            return self._layer.register_forward_pre_hook(lambda _module, args: mask(args))
        return self._layer.register_forward_hook(lambda _module, _args, output: mask(output))


def select_neuron(layer_eval: tuple[Tensor, ...], selector: Any, rows: int) -> Tensor:
    """The selected neuron's value per row (rows,), as Captum's ``NeuronFeatureAblation``.

    Raises a ValueError naming ``neuron_selector`` when it is out of range, selects nothing,
    or gives other than one value per row.
    """
    shapes = [tuple(t.shape) for t in layer_eval]
    try:
        value = _verify_select_neuron(layer_eval, selector)
    except (IndexError, AssertionError) as error:
        raise ValueError(
            f"neuron_selector {selector!r} is not valid for the layer output of "
            f"shape(s) {shapes}: {error}"
        ) from error
    if not isinstance(value, Tensor):
        raise ValueError(f"neuron_selector {selector!r} must give a tensor, got {value!r}")
    if not callable(selector) and isinstance(selector, tuple):
        picked = layer_eval[0][(slice(None), *selector)]
        if picked[0].numel() == 0:
            raise ValueError(
                f"neuron_selector {selector!r} selects no neuron of the layer "
                f"output of shape {shapes[0]}"
            )
    if value.numel() != rows:
        raise ValueError(
            f"neuron_selector {selector!r} must give one value per row ({rows}), "
            f"got shape {tuple(value.shape)} for layer output(s) {shapes}"
        )
    return value.reshape(rows)


class NeuronEvaluator(_MaskedForward):
    """Input units masked in stacked batches; the score is the selected neuron's value.

    Parameters
    ----------
    forward : callable
    layer : nn.Module
    part : RowSlice
        The rows and their additional arguments (no target).
    units : Units
        Units of the inputs for these rows.
    selector : int, tuple or callable
        Captum's ``neuron_selector``.
    per_eval : int
        Masks per forward pass.
    device_ids : list of int or None
    neuron_input : bool
        Select the neuron from the layer's input instead of its output (Captum's
        ``attribute_to_neuron_input=True``).
    """

    def __init__(
        self,
        forward: Any,
        layer: nn.Module,
        part: RowSlice,
        units: Units,
        selector: Any,
        per_eval: int,
        device_ids: Any,
        neuron_input: bool,
    ) -> None:
        super().__init__(len(part), per_eval)
        self.n = units.n
        self._forward, self._layer, self._part, self._units = forward, layer, part, units
        self._selector, self._device_ids, self._neuron_input = selector, device_ids, neuron_input

    def _scores(self, masks: Tensor | None) -> tuple[Tensor, torch.dtype]:
        rows, copies = len(self._part), 1 if masks is None else len(masks)
        inputs = tuple(x.repeat(copies, *([1] * (x.dim() - 1))) for x in self._part.inputs)
        if masks is not None:
            inputs = self._units.apply(inputs, masks)
        args = self._part.repeated_args(copies) or None
        layer_eval = _forward_layer_eval(
            self._forward,
            inputs,
            self._layer,
            args,
            device_ids=self._device_ids,
            attribute_to_layer_input=self._neuron_input,
        )
        value = select_neuron(layer_eval, self._selector, copies * rows)
        return value.reshape(copies, rows).t().to(torch.float64), value.dtype


class ContributionEvaluator:
    """Exact masked scores from a linear map's per-unit contributions, no prefix re-run.

    The layer feeds a linear map L (an ``nn.Linear`` or ``nn.Conv2d``, eval BatchNorm folded
    in). Masking units U changes L's output z by ``-Σ_{g∈U} C_g`` with C_g = L₀((a - b) ⊙ 1_g)
    (L₀ without bias), so the rest of the network only runs on ``z - C_i`` and
    ``z - C_i - C_j``. A unit whose contribution is zero in a row leaves that row unchanged:
    singles run only the active (row, unit) entries, and pairs (i, j) only the rows where i
    is active (the other rows take the single score of j).

    Parameters
    ----------
    z : torch.Tensor
        (R, *out) L's unmasked output.
    contributions : RankOne or Materialized
        C_g per row and unit (see ``captum_ext.synergy._fastpaths``): ``active`` (R, n),
        ``single(rows, units)`` and ``minus_pairs(base, rows, j)``.
    suffix : callable
        The rest of the network after L, (B, *out) → (B, ...).
    target : Target
        Target of these R rows.
    transform : Transform
    """

    def __init__(
        self,
        z: Tensor,
        contributions: Any,
        suffix: Any,
        target: Target,
        transform: Transform,
    ) -> None:
        self.n = contributions.n
        self.pairs_per_call = max(1, self.n - 1)
        self._z, self._c = z, contributions
        self._suffix, self._target, self._transform = suffix, target, transform
        self._step = max(1, _ELEMENTS_PER_BLOCK // max(1, z[0].numel()))

    def _scores(self, rows: Tensor, z: Tensor) -> tuple[Tensor, torch.dtype]:
        """Float64 scores of the rows ``rows`` with L's output ``z``; the model's dtype of them."""
        output = self._suffix(z)
        return self._target.rows(rows).select(self._transform(output)), output.dtype

    def singles(self) -> tuple[Tensor, Tensor, torch.dtype]:
        all_rows = torch.arange(len(self._z), device=self._z.device)
        p, dtype = self._scores(all_rows, self._z)
        rows, units = torch.nonzero(self._c.active, as_tuple=True)
        p_single = p[:, None].repeat(1, self.n)
        for block in torch.arange(len(rows), device=rows.device).split(self._step):
            r, k = rows[block], units[block]
            p_single[r, k] = self._scores(r, self._z[r] - self._c.single(r, k))[0]
        return p, p_single, dtype

    def pairs(self, index: Tensor, p_single: Tensor) -> Tensor:
        index = index.to(self._z.device)
        out = p_single[:, index[:, 1]].clone()  # rows where unit i is inactive: p_j
        for i in index[:, 0].unique().tolist():
            columns = torch.nonzero(index[:, 0] == i)[:, 0]
            j = index[columns, 1]
            step = max(1, self._step // len(j))
            for rows in torch.nonzero(self._c.active[:, i])[:, 0].split(step):
                base = self._z[rows] - self._c.single(rows, i)
                z = self._c.minus_pairs(base, rows, j)  # (rows, pairs, *out)
                flat_rows = rows[:, None].expand(-1, len(j)).reshape(-1)
                scores = self._scores(flat_rows, z.reshape(-1, *z.shape[2:]))[0]
                out[rows[:, None], columns[None, :]] = scores.reshape(len(rows), len(j))
        return out
