"""NeuronSynergy: SynXAI's synergy of input features for one neuron, a Captum neuron attribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum._utils.common import _format_additional_forward_args, _format_output, _is_tuple
from captum.attr._utils.attribution import NeuronAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext.synergy import _engine as _engine
from captum_ext.synergy._checks import (
    check_attribution,
    check_eval_mode,
    check_per_eval,
    check_rows_per_chunk,
    hook_rows_per_chunk,
)
from captum_ext.synergy._evaluators import NeuronEvaluator, probe_layer, select_neuron
from captum_ext.synergy._masking import RowSlice, Target, Units, format_inputs
from captum_ext.synergy.result import SynergyResult
from zennit_ext._checks import real_number

__all__ = ["NeuronSynergy", "MAX_INPUT_UNITS"]

MAX_INPUT_UNITS = 4096


class NeuronSynergy(NeuronAttribution, PerturbationAttribution):
    r"""Synergy of input features for one neuron's value (a Captum neuron attribution).

    Input features (every element, or the groups of ``feature_mask`` exactly as in Captum's
    ``FeatureAblation``: ids global across input tensors) are set to ``baselines`` alone and
    in pairs; the score p is the selected neuron's value, with ``neuron_selector`` exactly as
    in ``NeuronFeatureAblation`` (an int, a tuple of ints and slices — a slice sums its
    neurons — or a callable of the layer output giving one value per row). ``compute`` gives
    Δ, Δ_ij and S over all rows; ``attribute`` gives each row's synergistic importance of
    each feature, shaped like the inputs. Masked inputs run in batches of
    ``perturbations_per_eval`` masks per forward pass. Both begin with the parameters of
    ``NeuronFeatureAblation.attribute``, in Captum's order (with
    ``attribute_to_neuron_input=True`` the neuron is selected from the layer's input); the
    synergy-only ones (``alpha``, ``show_progress``, ``rows_per_chunk``) are keyword-only.
    At most 4,096 features or groups (the pairs grow as n²): pass a ``feature_mask`` for
    larger inputs. The differences of neuron values, their sums over rows and S are computed
    in float64; results come in the neuron's dtype.

    Parameters
    ----------
    forward_func : callable
        The model or any function of it (BatchNorm and Dropout in eval mode).
    layer : torch.nn.Module
        Layer holding the neuron (its output, or its input with
        ``attribute_to_neuron_input=True``).
    device_ids : list of int, optional
        As in Captum, for DataParallel forward functions.
    mode : {'abs_mean', 'signed'}
        ``d = |v - v_U|`` or ``v - v_U`` of the neuron value v.

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
        check_attribution(forward_func, layer, mode)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)
        self.mode = mode

    def _plan(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any,
        additional_forward_args: Any,
        feature_mask: Any,
        attribute_to_neuron_input: bool,
        perturbations_per_eval: int,
        show_progress: bool,
        rows_per_chunk: int | None,
    ) -> tuple[_engine.Plan, Units]:
        check_eval_mode(self.forward_func)
        per_eval = check_per_eval(perturbations_per_eval)
        if not callable(neuron_selector) and not isinstance(neuron_selector, int | tuple):
            raise ValueError(
                f"neuron_selector must be an int, a tuple of ints and slices or "
                f"a callable, got {neuron_selector!r}"
            )
        if not isinstance(attribute_to_neuron_input, bool):
            raise ValueError(
                f"attribute_to_neuron_input must be a bool, got {attribute_to_neuron_input!r}"
            )
        inputs = format_inputs(inputs)
        rows = len(inputs[0])
        args = _format_additional_forward_args(additional_forward_args)
        units = Units(inputs, feature_mask, baselines, ("feature_mask", "baselines"), "input", rows)
        if units.n > MAX_INPUT_UNITS:
            raise ValueError(
                f"{units.n} input features or groups exceed {MAX_INPUT_UNITS} (pairs grow as "
                "n²): pass a feature_mask grouping the features"
            )
        no_target = Target(None, rows)
        first = RowSlice(inputs, args, no_target, 0, 1)
        probe = probe_layer(
            self.forward_func,
            self.layer,
            first,
            self.device_ids,
            layer_input=attribute_to_neuron_input,
        )
        select_neuron(probe, neuron_selector, 1)  # checks the selector before any masking

        def evaluator(start: int, stop: int) -> NeuronEvaluator:
            part = RowSlice(inputs, args, no_target, start, stop)
            return NeuronEvaluator(
                self.forward_func,
                self.layer,
                part,
                units.rows(start, stop),
                neuron_selector,
                per_eval,
                self.device_ids,
                attribute_to_neuron_input,
            )

        per_chunk = hook_rows_per_chunk(units.n, per_eval)
        chunk = check_rows_per_chunk(rows_per_chunk, per_chunk, rows)
        return _engine.Plan(rows, units.n, chunk, evaluator, self.mode, show_progress), units

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple[int | slice, ...] | Callable,
        baselines: None | Tensor | int | float | tuple[Tensor | int | float, ...] = None,
        additional_forward_args: Any = None,
        feature_mask: None | Tensor | tuple[Tensor, ...] = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        alpha: float = 20.0,
        show_progress: bool = False,
        rows_per_chunk: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Per-row synergistic importance of each input feature for the selected neuron.

        The parameters up to ``perturbations_per_eval`` are those of Captum's
        ``NeuronFeatureAblation.attribute``, in its order and with its defaults; the others
        are keyword-only.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            (N, ...) model inputs.
        neuron_selector : int, tuple of int/slice, or callable
            As in ``NeuronFeatureAblation``: an int (2-D layer output), a tuple with one
            entry per dimension beyond the batch (slices sum their neurons), or a callable
            of the layer output returning one value per row. Required.
        baselines : None, number, tensor or tuple, optional
            Value a masked feature takes, as in Captum (broadcastable, first dim 1 or N).
            Default None: 0.
        additional_forward_args : any, optional
            Extra arguments of ``forward_func`` after the inputs. Default None.
        feature_mask : None, tensor or tuple of tensors, optional
            Integer group ids as in ``FeatureAblation``; features of a group are masked
            together and share its value. Default None: every element is a feature.
        attribute_to_neuron_input : bool, optional
            Select the neuron from the layer's input instead of its output (as in
            ``NeuronFeatureAblation``; ``neuron_selector`` then indexes the layer input).
            Default False.
        perturbations_per_eval : int, optional
            Masks per forward pass (fewer when a pass would exceed 65,536 rows). Default 1.
        alpha : float, optional
            Weight of the synergy term. Keyword-only. Default 20.0.
        show_progress : bool, optional
            Progress bar over pairs (shown only on a terminal). Keyword-only. Default False.
        rows_per_chunk : int, optional
            Rows evaluated together. Keyword-only. Default None: sized by memory, at most
            4,096.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Shaped like ``inputs``, (N, ...) each (tuple in → tuple out): z_i(x) of the
            feature (group) each element belongs to, from row x alone.
        """
        alpha = real_number("alpha", alpha)
        plan, units = self._plan(
            inputs,
            neuron_selector,
            baselines,
            additional_forward_args,
            feature_mask,
            attribute_to_neuron_input,
            perturbations_per_eval,
            show_progress,
            rows_per_chunk,
        )
        expanded = units.expand(_engine.per_row_z(plan, alpha))
        return _format_output(_is_tuple(inputs), expanded)

    @log_usage()
    def compute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple[int | slice, ...] | Callable,
        baselines: None | Tensor | int | float | tuple[Tensor | int | float, ...] = None,
        additional_forward_args: Any = None,
        feature_mask: None | Tensor | tuple[Tensor, ...] = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        show_progress: bool = False,
        rows_per_chunk: int | None = None,
    ) -> SynergyResult:
        """Δ, Δ_ij and S of the input features (or ``feature_mask`` groups) over all rows.

        Parameters as in :meth:`attribute` (without ``alpha``): ``inputs``,
        ``neuron_selector``, ``baselines=None``, ``additional_forward_args=None``,
        ``feature_mask=None``, ``attribute_to_neuron_input=False``,
        ``perturbations_per_eval=1`` in Captum's order, then the keyword-only
        ``show_progress=False`` and ``rows_per_chunk=None``.

        Returns
        -------
        SynergyResult
            n = number of input elements (over all input tensors), or of groups in
            ``feature_mask`` (sorted by id).
        """
        plan, units = self._plan(
            inputs,
            neuron_selector,
            baselines,
            additional_forward_args,
            feature_mask,
            attribute_to_neuron_input,
            perturbations_per_eval,
            show_progress,
            rows_per_chunk,
        )
        single, pair, rows, dtype = _engine.sums(plan)
        return SynergyResult.from_sums(
            single, pair, rows, units.ids, units.shapes, self.mode, dtype
        )
