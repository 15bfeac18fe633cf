"""SynXAI's neuron synergy (Δ_i, Δ_ij, S_ij, Z_i) as a Captum neuron attribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum._utils.gradient import _forward_layer_eval
from captum.attr._utils.attribution import NeuronAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn
from tqdm import tqdm

from captum_ext import scores
from captum_ext._masking import HookEvaluator, LowRankEvaluator, Scorer, split_after

__all__ = ["NeuronSynergy"]


class NeuronSynergy(NeuronAttribution, PerturbationAttribution):
    r"""Synergy of the units of one layer, by masking them alone and in pairs (SynXAI).

    For a score p(x) of the model (its output, optionally through a sigmoid or softmax, at
    ``target``), masking a set of units U of the layer output gives p_U(x). Then

    - Δ_i  = mean_x d(p(x), p_{i}(x))           (importance),
    - Δ_ij = mean_x d(p(x), p_{i,j}(x))         (pair importance),
    - S_ij = Δ_ij - Δ_i - Δ_j for i ≠ j, S_ii = 0 (synergy),
    - Z_i  = Δ_i + α · mean_j max(S_ij, 0)      (synergistic importance, mean over all n),

    with d = |p - p_U| (``mode='abs_mean'``, the paper's) or d = p - p_U (``mode='signed'``;
    then S_ij is minus the second-order joint contribution of NRM, and exactly 0 when
    everything after the layer is linear). Means run over all input rows.

    When the layer is a direct child of an ``nn.Sequential`` forward function and feeds an
    ``nn.Linear``, masks are applied as exact low-rank updates of that Linear's output from
    the cached activation, and only rows where both masked units are active are recomputed;
    otherwise masked forward passes run in batches through a forward hook. Both give the same
    numbers as one forward pass per mask.

    Parameters
    ----------
    forward_func : callable
        The model or any function of it; in eval mode if it is a module.
    layer : torch.nn.Module
        Layer whose output units are masked (a single output tensor, shape (N, ...); the
        units are its elements beyond the batch dimension).
    device_ids : list of int, optional
        As in Captum, for DataParallel forward functions.
    output_transform : None, 'sigmoid', 'softmax' or callable
        Applied to the forward output before the target is selected. None (Captum's default)
        uses the output as it is; SynXAI's p is ``'sigmoid'`` of a one-logit model.
    mode : {'abs_mean', 'signed'}
        How differences are averaged (see above).
    mask_value : float or torch.Tensor
        Value a masked unit takes: 0 (default) or a baseline shaped like one layer output.

    Examples
    --------
    >>> ns = NeuronSynergy(model, model.relu2, output_transform="sigmoid")  # doctest: +SKIP
    >>> ns.synergy_matrix(x)              # (64, 64)                          # doctest: +SKIP
    >>> ns.attribute(x, neuron_selector=3)  # (N, 64): per-row S_3j         # doctest: +SKIP
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: list[int] | None = None,
        *,
        output_transform: str | Callable | None = None,
        mode: str = "abs_mean",
        mask_value: float | Tensor = 0.0,
    ) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        if isinstance(forward_func, nn.Module) and all(
            m is not layer for m in forward_func.modules()
        ):
            raise ValueError(f"layer {layer!r} is not a module of forward_func")
        if mode not in scores.MODES:
            raise ValueError(f"mode must be one of {scores.MODES}, got {mode!r}")
        Scorer(output_transform, None, 1)  # validates the transform early
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)
        self.output_transform = output_transform
        self.mode = mode
        self.mask_value = mask_value

    # ------------------------------------------------------------------ internals
    def _evaluator(
        self, inputs: Any, target: Any, additional_forward_args: Any, masks_per_eval: int
    ) -> tuple[LowRankEvaluator | HookEvaluator, tuple[int, ...]]:
        """An evaluator for these inputs, and the shape of one layer output."""
        if isinstance(self.forward_func, nn.Module) and self.forward_func.training:
            raise ValueError("forward_func is in training mode; call .eval() first (masking "
                             "with batch statistics or dropout is not defined)")  # fmt: skip
        if not isinstance(masks_per_eval, int) or masks_per_eval < 1:
            raise ValueError(
                f"perturbations_per_eval must be a positive int, got {masks_per_eval!r}"
            )
        inputs = _format_tensor_into_tuples(inputs)
        rows = len(inputs[0])
        if rows == 0:
            raise ValueError("inputs must hold at least one row, got an empty batch")
        args = _format_additional_forward_args(additional_forward_args)
        scorer = Scorer(self.output_transform, target, rows)
        with torch.no_grad():
            (activation,) = _forward_layer_eval(
                self.forward_func, inputs, self.layer, args, device_ids=self.device_ids
            )
        unit_shape = tuple(activation.shape[1:])
        flat = activation.reshape(rows, -1)
        mask_value = torch.as_tensor(self.mask_value, dtype=flat.dtype, device=flat.device)
        mask_value = mask_value.expand(unit_shape).reshape(-1)
        split = split_after(self.forward_func, self.layer)
        if split is not None and args is None and len(inputs) == 1 and flat.dim() == 2:
            with torch.no_grad():
                return LowRankEvaluator(flat, *split, scorer, mask_value), unit_shape
        evaluator = HookEvaluator(
            self.forward_func, self.layer, inputs, args, scorer, mask_value, masks_per_eval,
            flat.shape[1],
        )  # fmt: skip
        return evaluator, unit_shape

    @torch.no_grad()
    def _pair_differences(
        self, evaluator: Any, index: Tensor, p: Tensor, p_single: Tensor
    ) -> Tensor:
        """Per-row s_ij = d(p, p_ij) - d(p, p_i) - d(p, p_j) for pairs ``index`` (P, 2) → (N, P)."""
        p_pair = evaluator.pairs(index, p, p_single)
        d_single = scores.score_difference(p[:, None], p_single, self.mode)
        d_pair = scores.score_difference(p[:, None], p_pair, self.mode)
        return d_pair - d_single[:, index[:, 0]] - d_single[:, index[:, 1]]

    @torch.no_grad()
    def _importance_and_synergy(
        self, inputs: Any, target: Any, additional_forward_args: Any, perturbations_per_eval: int,
        show_progress: bool,
    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:  # fmt: skip
        evaluator, unit_shape = self._evaluator(
            inputs, target, additional_forward_args, perturbations_per_eval
        )
        n = evaluator.n
        p, p_single = evaluator.singles()
        importance = scores.score_difference(p[:, None], p_single, self.mode).mean(0)
        upper = torch.triu_indices(n, n, offset=1).t()
        synergy = torch.zeros(n, n, dtype=p.dtype)
        block = max(1, perturbations_per_eval)
        bar = tqdm(
            upper.split(block), desc="synergy pairs", disable=None if show_progress else True
        )
        for index in bar:
            values = self._pair_differences(evaluator, index, p, p_single).mean(0)
            synergy[index[:, 0], index[:, 1]] = values.to(synergy)
            synergy[index[:, 1], index[:, 0]] = values.to(synergy)
        return importance, synergy, unit_shape

    # ------------------------------------------------------------------ Captum entry point
    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple[int, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Per-row synergy of the selected unit with every unit of the layer.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            (N, ...) model inputs, as for Captum attributions.
        neuron_selector : int or tuple of int
            The unit i: an index into one layer output (flat int, or a tuple with one entry
            per dimension beyond the batch).
        target : None, int, sequence of int or tensor, optional
            Output column scored (per row for a sequence); None for one-output models.
        additional_forward_args : any, optional
            Extra arguments of ``forward_func`` after the inputs.
        perturbations_per_eval : int
            Masks evaluated per forward pass (fallback path) / per block (fast path).
        show_progress : bool
            Progress bar over blocks of masks (shown only on a terminal).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Shaped like the layer output (N, ...): entry j of row x is
            ``d(p, p_ij) - d(p, p_i) - d(p, p_j)`` at x, whose mean over rows is S_ij; entry i
            is 0. A tuple input returns a one-tensor tuple, as Captum does.
        """
        is_tuple = _is_tuple(inputs)
        evaluator, unit_shape = self._evaluator(
            inputs, target, additional_forward_args, perturbations_per_eval
        )
        i = self._unit_index(neuron_selector, unit_shape)
        with torch.no_grad():
            p, p_single = evaluator.singles()
            others = torch.tensor([j for j in range(evaluator.n) if j != i], dtype=torch.long)
            index = torch.stack([torch.full_like(others, i), others], dim=1)
            result = torch.zeros(len(p), evaluator.n, dtype=p.dtype)
            for block in tqdm(
                index.split(perturbations_per_eval), disable=None if show_progress else True
            ):
                result[:, block[:, 1]] = self._pair_differences(evaluator, block, p, p_single)
        result = result.reshape(len(p), *unit_shape)
        return (result,) if is_tuple else result

    @staticmethod
    def _unit_index(selector: int | tuple[int, ...], unit_shape: tuple[int, ...]) -> int:
        n = int(torch.tensor(unit_shape).prod()) if unit_shape else 1
        if isinstance(selector, int):
            flat = selector
        elif isinstance(selector, tuple) and all(isinstance(s, int) for s in selector):
            if len(selector) != len(unit_shape):
                raise ValueError(f"neuron_selector {selector} must have {len(unit_shape)} entries "
                                 f"for a layer output of shape {unit_shape}")  # fmt: skip
            for s, size in zip(selector, unit_shape, strict=True):
                if not -size <= s < size:
                    raise ValueError(f"neuron_selector {selector} out of range for {unit_shape}")
            flat = int(torch.arange(n).reshape(unit_shape)[selector])
        else:
            raise TypeError(f"neuron_selector must be an int or a tuple of ints, got {selector!r}")
        if not -n <= flat < n:
            raise ValueError(f"neuron_selector {selector} out of range for {n} units")
        return flat % n

    # ------------------------------------------------------------------ SynXAI quantities
    def importance(
        self, inputs: Tensor | tuple[Tensor, ...], target: Any = None,
        additional_forward_args: Any = None, perturbations_per_eval: int = 64,
    ) -> Tensor:  # fmt: skip
        """Δ_i of every unit, shaped like one layer output (e.g. (n,)).

        Arguments as in :meth:`attribute`.
        """
        evaluator, unit_shape = self._evaluator(
            inputs, target, additional_forward_args, perturbations_per_eval
        )
        with torch.no_grad():
            p, p_single = evaluator.singles()
        return scores.score_difference(p[:, None], p_single, self.mode).mean(0).reshape(unit_shape)

    def synergy_matrix(
        self, inputs: Tensor | tuple[Tensor, ...], target: Any = None,
        additional_forward_args: Any = None, perturbations_per_eval: int = 1024,
        show_progress: bool = False,
    ) -> Tensor:  # fmt: skip
        """S (n, n): symmetric, zero diagonal, units flattened in layer-output order.

        Arguments as in :meth:`attribute`; ``perturbations_per_eval`` pairs per block.
        """
        return self._importance_and_synergy(
            inputs, target, additional_forward_args, perturbations_per_eval, show_progress
        )[1]

    def pair_importance(
        self, inputs: Tensor | tuple[Tensor, ...], target: Any = None,
        additional_forward_args: Any = None, perturbations_per_eval: int = 1024,
        show_progress: bool = False,
    ) -> Tensor:  # fmt: skip
        """Δ_ij (n, n): Δ of masking units i and j together; the diagonal holds Δ_i."""
        importance, synergy, _ = self._importance_and_synergy(
            inputs, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        pair = synergy + importance[:, None] + importance[None, :]
        return pair - torch.diag(pair.diagonal()) + torch.diag(importance)

    def synergistic_importance(
        self, inputs: Tensor | tuple[Tensor, ...], alpha: float = 20.0, target: Any = None,
        additional_forward_args: Any = None, perturbations_per_eval: int = 1024,
        show_progress: bool = False,
    ) -> Tensor:  # fmt: skip
        """Z_i = Δ_i + α · mean_j max(S_ij, 0), shaped like one layer output."""
        importance, synergy, unit_shape = self._importance_and_synergy(
            inputs, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        return scores.synergistic_importance(importance, synergy, alpha).reshape(unit_shape)

    def synergy_ranking(
        self, inputs: Tensor | tuple[Tensor, ...], target: Any = None,
        additional_forward_args: Any = None, perturbations_per_eval: int = 1024,
        show_progress: bool = False,
    ) -> Tensor:  # fmt: skip
        """R_i = Σ_j max(S_ij, 0), shaped like one layer output."""
        _, synergy, unit_shape = self._importance_and_synergy(
            inputs, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        return scores.synergy_ranking(synergy).reshape(unit_shape)
