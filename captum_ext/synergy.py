"""SynXAI's synergy as Captum attributions: LayerSynergy (layer units) and NeuronSynergy (inputs).

Both mask units alone and in pairs and measure the change of a score p:

- d_U(x) = |p(x) - p_U(x)| (``mode='abs_mean'``, the paper's) or p(x) - p_U(x) ('signed'),
- Δ_i = mean_x d_i(x), Δ_ij = mean_x d_ij(x), S_ij = Δ_ij - Δ_i - Δ_j (i ≠ j), S_ii = 0,
- Z_i = Δ_i + α · mean_j max(S_ij, 0) (mean over all n units).

Reference: B. Farag, "SynXAI: Synergistic Explainability for Neural Networks" (code:
github.com/benedikt20/synXAI). With ``mode='signed'``, S_ij is minus the second-order joint
contribution of the pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _is_tuple,
)
from captum._utils.gradient import _forward_layer_eval
from captum.attr._utils.attribution import (
    LayerAttribution,
    NeuronAttribution,
    PerturbationAttribution,
)
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext import _engine, _fastpaths, scores
from captum_ext._evaluators import (
    ContributionEvaluator,
    LayerHookEvaluator,
    NeuronEvaluator,
    select_neuron,
)
from captum_ext._masking import (
    RowSlice,
    Target,
    Transform,
    Units,
    check_eval_mode,
    check_per_eval,
    format_inputs,
)
from captum_ext.synergy_result import SynergyResult

__all__ = ["LayerSynergy", "NeuronSynergy", "SynergyResult", "MAX_INPUT_UNITS"]

MAX_INPUT_UNITS = 4096
# elements held per chunk of rows (masked-score tables, contributions): 64 MB of float32
_ELEMENTS_PER_CHUNK = 1 << 24


def _check_common(forward_func: Any, layer: Any, mode: str) -> None:
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    if isinstance(forward_func, nn.Module) and all(m is not layer for m in forward_func.modules()):
        raise ValueError(f"layer {layer!r} is not a module of forward_func")
    if mode not in scores.MODES:
        raise ValueError(f"mode must be one of {scores.MODES}, got {mode!r}")


def _check_rows_per_chunk(rows_per_chunk: Any, default: int, rows: int) -> int:
    if rows_per_chunk is None:
        return max(1, min(rows, default))
    if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int):
        raise ValueError(f"rows_per_chunk must be a positive int or None, got {rows_per_chunk!r}")
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be a positive int or None, got {rows_per_chunk!r}")
    return min(rows, rows_per_chunk)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ValueError(f"alpha must be a number, got {alpha!r}")
    return float(alpha)


class LayerSynergy(LayerAttribution, PerturbationAttribution):
    r"""Synergy of a layer's units for the model output at ``target`` (SynXAI's object).

    Units of ``layer``'s output (its elements, or the groups of ``layer_mask`` exactly as in
    Captum's ``LayerFeatureAblation``) are set to ``layer_baselines`` alone and in pairs; the
    score p is the forward output, through ``output_transform``, at ``target``. ``compute``
    gives Δ, Δ_ij and S over all rows (a :class:`SynergyResult`); ``attribute`` gives each
    row's synergistic importance z_i(x) = d_i(x) + α · mean_j max(s_ij(x), 0), shaped like the
    layer output.

    Fast exact paths (same numbers as one forward pass per mask, up to rounding) apply when
    ``forward_func`` is a plain ``nn.Sequential`` (nested plain Sequentials are flattened; a
    model whose forward is ``classifier(features(x))`` can be passed as
    ``nn.Sequential(model.features, model.classifier)``), there is a single input tensor and
    no additional forward arguments, the layer's output is one tensor and the next module
    (past Identity/Dropout) is

    - an ``nn.Linear`` (layer output (N, n), any ``layer_mask`` shared by all rows), or
    - an ``nn.Conv2d`` (zero padding, ``groups=1``) and the units are whole channels
      (``layer_mask`` of shape (1, C, 1, 1), or constant over each channel),

    with an eval-mode BatchNorm right after that map folded in. Each unit's contribution to
    that map's output is computed once; single and pair masks are sums of contributions, and
    only the rest of the network runs, in batches. Otherwise masked forward passes run with a
    forward hook on the layer, ``perturbations_per_eval`` masks per pass.

    Rows are processed in chunks (``rows_per_chunk``, sized so memory stays near 64 MB):
    memory does not grow with N. When ``torch.distributed`` is initialized, ``compute`` on
    each process's rows all-reduces the sums: every rank gets the result of all rows.

    Parameters
    ----------
    forward_func : callable
        The model or any function of it. BatchNorm and Dropout modules must be in eval mode.
    layer : torch.nn.Module
        Layer whose output units are masked (a tensor or a tuple of tensors, batch first).
    device_ids : list of int, optional
        As in Captum, for DataParallel forward functions (used to read the layer output; the
        masking hook needs the whole batch at the layer).
    output_transform : None, 'sigmoid', 'softmax' or callable
        Applied to the forward output before ``target`` selects the score; 'softmax' over the
        last dimension. SynXAI's p is ``'sigmoid'`` of a one-logit model.
    mode : {'abs_mean', 'signed'}
        d = |p - p_U| (the paper's) or p - p_U.

    Examples
    --------
    >>> ls = LayerSynergy(model, model[5], output_transform="sigmoid")  # doctest: +SKIP
    >>> res = ls.compute(x)                      # SynergyResult over the layer's units
    >>> res.synergy.shape, res.ranking().shape   # (n, n), (n,)
    >>> ls.attribute(x, alpha=20.0).shape        # like the layer output, (N, n)
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: list[int] | None = None,
        *,
        output_transform: str | Callable | None = None,
        mode: str = "abs_mean",
    ) -> None:
        _check_common(forward_func, layer, mode)
        self._transform = Transform(output_transform)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)
        self.output_transform = output_transform
        self.mode = mode

    def _plan(
        self, inputs: Any, target: Any, additional_forward_args: Any, layer_baselines: Any,
        layer_mask: Any, perturbations_per_eval: int, show_progress: bool,
        rows_per_chunk: int | None,
    ) -> tuple[_engine.Plan, Units]:  # fmt: skip
        check_eval_mode(self.forward_func)
        per_eval = check_per_eval(perturbations_per_eval)
        inputs = format_inputs(inputs)
        rows = len(inputs[0])
        args = _format_additional_forward_args(additional_forward_args)
        target = Target(target, rows)
        first = RowSlice(inputs, args, target, 0, 1)
        with torch.no_grad():
            probe = _forward_layer_eval(
                self.forward_func, first.inputs, self.layer, first.args or None,
                device_ids=self.device_ids,
            )  # fmt: skip
        units = Units(
            probe, layer_mask, layer_baselines, ("layer_mask", "layer_baselines"),
            "layer output", rows,
        )  # fmt: skip
        split = self._split(inputs, args, units)
        if split is None:
            per_chunk = _ELEMENTS_PER_CHUNK // max(units.n, per_eval)

            def evaluator(start: int, stop: int) -> LayerHookEvaluator:
                part = RowSlice(inputs, args, target, start, stop)
                return LayerHookEvaluator(
                    self.forward_func, self.layer, part, units.rows(start, stop),
                    self._transform, per_eval,
                )  # fmt: skip
        else:
            per_chunk = _ELEMENTS_PER_CHUNK // _fastpaths.elements_per_row(split, units, probe[0])

            def evaluator(start: int, stop: int) -> ContributionEvaluator:
                with torch.no_grad():
                    activation = split.prefix(inputs[0][start:stop])
                    z, c = _fastpaths.contributions(split, units.rows(start, stop), activation)
                return ContributionEvaluator(
                    z, c, split.suffix, target.rows(slice(start, stop)), self._transform
                )

        chunk = _check_rows_per_chunk(rows_per_chunk, per_chunk, rows)
        plan = _engine.Plan(rows, units.n, chunk, evaluator, self.mode, show_progress)
        return plan, units

    def _split(self, inputs: tuple, args: tuple | None, units: Units) -> _fastpaths.Split | None:
        """The fast path's split, or None when masked forward passes are needed."""
        if len(inputs) != 1 or args or len(units.shapes) != 1 or len(units.index[0]) != 1:
            return None
        split = _fastpaths.split_after(self.forward_func, self.layer)
        if split is None:
            return None
        if split.is_conv:
            fits = len(units.shapes[0]) == 3 and _fastpaths.channel_groups(units) is not None
        else:
            fits = len(units.shapes[0]) == 1
        return split if fits else None

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        layer_baselines: Any = None,
        layer_mask: Tensor | tuple[Tensor, ...] | None = None,
        alpha: float = 20.0,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        rows_per_chunk: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Per-row synergistic importance of each layer unit, shaped like the layer output.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            (N, ...) model inputs, as for Captum attributions.
        target : None, int, tuple, list or tensor, optional
            Which output value is the score, with Captum's semantics (per row for a list or
            an N-long tensor). None only for forward functions with one value per row.
        additional_forward_args : any, optional
            Extra arguments of ``forward_func`` after the inputs.
        layer_baselines : number, tensor or tuple, optional
            Value a masked unit takes, broadcastable to the layer output (first dim 1 or N);
            default 0.
        layer_mask : tensor or tuple of tensors, optional
            Integer group ids broadcastable to the layer output (first dim 1 or N); elements
            of one group are masked together and share its value. Default: every element.
        alpha : float
            Weight of the synergy term (5 or 20 in the paper).
        perturbations_per_eval : int
            Masks per forward pass of the model (hook path); the fast paths run no model
            forward per mask and size their blocks by memory.
        show_progress : bool
            Progress bar over pairs (shown only on a terminal).
        rows_per_chunk : int, optional
            Rows evaluated together (default: sized by memory).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Like the layer output, (N, ...): z_i(x) = d_i(x) + α · mean_j max(s_ij(x), 0) of
            the unit each element belongs to, with s_ij(x) = d_ij(x) - d_i(x) - d_j(x) from
            row x alone (a batch gives the rows' separate results). A tuple when the layer
            outputs several tensors, as in ``LayerFeatureAblation``.
        """
        alpha = _check_alpha(alpha)
        plan, units = self._plan(
            inputs, target, additional_forward_args, layer_baselines, layer_mask,
            perturbations_per_eval, show_progress, rows_per_chunk,
        )  # fmt: skip
        values = _engine.per_row_z(plan, alpha)
        expanded = units.expand(values)
        return _format_output(len(expanded) > 1, expanded)

    @log_usage()
    def compute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        layer_baselines: Any = None,
        layer_mask: Tensor | tuple[Tensor, ...] | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        rows_per_chunk: int | None = None,
    ) -> SynergyResult:
        """Δ, Δ_ij and S of the layer's units (or ``layer_mask`` groups) over all rows.

        Arguments as in :meth:`attribute` (without ``alpha``). Under ``torch.distributed``
        the means run over the rows of all processes.

        Returns
        -------
        SynergyResult
            n = number of elements of one layer output, or of groups in ``layer_mask``
            (sorted by id); unit i is element i of the flattened output(s) without a mask.
        """
        plan, units = self._plan(
            inputs, target, additional_forward_args, layer_baselines, layer_mask,
            perturbations_per_eval, show_progress, rows_per_chunk,
        )  # fmt: skip
        single, pair, rows = _engine.sums(plan)
        return SynergyResult.from_sums(single, pair, rows, units.ids, units.shapes, self.mode)


class NeuronSynergy(NeuronAttribution, PerturbationAttribution):
    r"""Synergy of input features for one neuron's value (a Captum neuron attribution).

    Input features (every element, or the groups of ``feature_mask`` exactly as in Captum's
    ``FeatureAblation``: ids global across input tensors) are set to ``baselines`` alone and
    in pairs; the score p is the selected neuron's value, with ``neuron_selector`` exactly as
    in ``NeuronFeatureAblation`` (an int, a tuple of ints and slices — a slice sums its
    neurons — or a callable of the layer output giving one value per row). ``compute`` gives
    Δ, Δ_ij and S over all rows; ``attribute`` gives each row's synergistic importance of
    each feature, shaped like the inputs. Masked inputs run in batches of
    ``perturbations_per_eval`` masks per forward pass. At most 4,096 features or groups (the
    pairs grow as n²): pass a ``feature_mask`` for larger inputs.

    Parameters
    ----------
    forward_func : callable
        The model or any function of it (BatchNorm and Dropout in eval mode).
    layer : torch.nn.Module
        Layer holding the neuron (its output).
    device_ids : list of int, optional
        As in Captum, for DataParallel forward functions.
    mode : {'abs_mean', 'signed'}
        d = |v - v_U| or v - v_U of the neuron value v.

    Examples
    --------
    >>> ns = NeuronSynergy(model, model.conv2)                               # doctest: +SKIP
    >>> ns.attribute(x, neuron_selector=(3, 4, 4), feature_mask=groups)  # like x
    >>> ns.compute(x, neuron_selector=(3, 4, 4), feature_mask=groups).synergy
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: list[int] | None = None,
        *,
        mode: str = "abs_mean",
    ) -> None:
        _check_common(forward_func, layer, mode)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)
        self.mode = mode

    def _plan(
        self, inputs: Any, neuron_selector: Any, additional_forward_args: Any, baselines: Any,
        feature_mask: Any, perturbations_per_eval: int, show_progress: bool,
        rows_per_chunk: int | None,
    ) -> tuple[_engine.Plan, Units]:  # fmt: skip
        check_eval_mode(self.forward_func)
        per_eval = check_per_eval(perturbations_per_eval)
        if not callable(neuron_selector) and not isinstance(neuron_selector, int | tuple):
            raise ValueError(f"neuron_selector must be an int, a tuple of ints and slices or "
                             f"a callable, got {neuron_selector!r}")  # fmt: skip
        inputs = format_inputs(inputs)
        rows = len(inputs[0])
        args = _format_additional_forward_args(additional_forward_args)
        units = Units(inputs, feature_mask, baselines, ("feature_mask", "baselines"), "input",
                      rows)  # fmt: skip
        if units.n > MAX_INPUT_UNITS:
            raise ValueError(
                f"{units.n} input features or groups exceed {MAX_INPUT_UNITS} (pairs grow as "
                "n²): pass a feature_mask grouping the features"
            )
        no_target = Target(None, rows)
        first = RowSlice(inputs, args, no_target, 0, 1)
        with torch.no_grad():  # checks the selector before any masking
            probe = _forward_layer_eval(
                self.forward_func, first.inputs, self.layer, first.args or None,
                device_ids=self.device_ids,
            )  # fmt: skip
        select_neuron(probe, neuron_selector, 1)

        def evaluator(start: int, stop: int) -> NeuronEvaluator:
            part = RowSlice(inputs, args, no_target, start, stop)
            return NeuronEvaluator(
                self.forward_func, self.layer, part, units.rows(start, stop), neuron_selector,
                per_eval, self.device_ids,
            )  # fmt: skip

        per_chunk = _ELEMENTS_PER_CHUNK // max(units.n, per_eval)
        chunk = _check_rows_per_chunk(rows_per_chunk, per_chunk, rows)
        return _engine.Plan(rows, units.n, chunk, evaluator, self.mode, show_progress), units

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple | Callable,
        additional_forward_args: Any = None,
        baselines: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        alpha: float = 20.0,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        rows_per_chunk: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Per-row synergistic importance of each input feature for the selected neuron.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            (N, ...) model inputs.
        neuron_selector : int, tuple of int/slice, or callable
            As in ``NeuronFeatureAblation``: an int (2-D layer output), a tuple with one
            entry per dimension beyond the batch (slices sum their neurons), or a callable
            of the layer output returning one value per row.
        additional_forward_args : any, optional
            Extra arguments of ``forward_func`` after the inputs.
        baselines : number, tensor or tuple, optional
            Value a masked feature takes, as in Captum (broadcastable, first dim 1 or N);
            default 0.
        feature_mask : tensor or tuple of tensors, optional
            Integer group ids as in ``FeatureAblation``; features of a group are masked
            together and share its value. Default: every element is a feature.
        alpha : float
            Weight of the synergy term.
        perturbations_per_eval : int
            Masks per forward pass.
        show_progress : bool
            Progress bar over pairs (shown only on a terminal).
        rows_per_chunk : int, optional
            Rows evaluated together (default: sized by memory).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Shaped like ``inputs`` (tuple in → tuple out): z_i(x) of the feature (group) each
            element belongs to, from row x alone.
        """
        alpha = _check_alpha(alpha)
        plan, units = self._plan(
            inputs, neuron_selector, additional_forward_args, baselines, feature_mask,
            perturbations_per_eval, show_progress, rows_per_chunk,
        )  # fmt: skip
        expanded = units.expand(_engine.per_row_z(plan, alpha))
        return _format_output(_is_tuple(inputs), expanded)

    @log_usage()
    def compute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple | Callable,
        additional_forward_args: Any = None,
        baselines: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        rows_per_chunk: int | None = None,
    ) -> SynergyResult:
        """Δ, Δ_ij and S of the input features (or ``feature_mask`` groups) over all rows.

        Arguments as in :meth:`attribute` (without ``alpha``).
        """
        plan, units = self._plan(
            inputs, neuron_selector, additional_forward_args, baselines, feature_mask,
            perturbations_per_eval, show_progress, rows_per_chunk,
        )  # fmt: skip
        single, pair, rows = _engine.sums(plan)
        return SynergyResult.from_sums(single, pair, rows, units.ids, units.shapes, self.mode)
