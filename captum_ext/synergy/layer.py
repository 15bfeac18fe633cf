"""LayerSynergy: SynXAI's synergy of a layer's units, a Captum layer attribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args, _format_output
from captum.attr._utils.attribution import LayerAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext.synergy import _engine as _engine
from captum_ext.synergy import _fastpaths as _fastpaths
from captum_ext.synergy._checks import (
    ELEMENTS_PER_CHUNK,
    check_attribution,
    check_eval_mode,
    check_per_eval,
    check_rows_per_chunk,
    hook_rows_per_chunk,
)
from captum_ext.synergy._evaluators import ContributionEvaluator, LayerHookEvaluator, probe_layer
from captum_ext.synergy._masking import RowSlice, Target, Transform, Units, format_inputs
from captum_ext.synergy.result import SynergyResult
from zennit_ext._checks import real_number

__all__ = ["LayerSynergy"]


class LayerSynergy(LayerAttribution, PerturbationAttribution):
    r"""Synergy of a layer's units for the model output at ``target`` (SynXAI's object).

    Units of ``layer``'s output (its elements, or the groups of ``layer_mask`` exactly as in
    Captum's ``LayerFeatureAblation``; of its input with ``attribute_to_layer_input=True``)
    are set to ``layer_baselines`` alone and in pairs; the score p is the forward output,
    through ``output_transform``, at ``target``. ``compute`` gives Δ, Δ_ij and S over all rows
    (a :class:`SynergyResult`); ``attribute`` gives each row's synergistic importance
    z_i(x) = d_i(x) + α · mean_j max(s_ij(x), 0), shaped like the layer output (or input).
    Both begin with the parameters of ``LayerFeatureAblation.attribute``, in Captum's order;
    the synergy-only ones (``alpha``, ``show_progress``, ``rows_per_chunk``) are keyword-only.

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
    only the rest of the network runs, in batches. Otherwise (and always with
    ``attribute_to_layer_input=True``) masked forward passes run with a forward hook on the
    layer (a forward pre-hook for its input), ``perturbations_per_eval`` masks per pass.

    The differences of scores, their sums over rows and S are computed in float64 whatever
    the model's dtype; results come in the dtype of the forward output.

    Rows are processed in chunks (``rows_per_chunk``, sized so memory stays near 64 MB):
    memory does not grow with N. When ``torch.distributed`` is initialized, ``compute`` on
    each process's rows all-reduces the sums: every rank gets the result of all rows.

    Parameters
    ----------
    forward_func : callable
        The model or any function of it. BatchNorm and Dropout modules must be in eval mode.
    layer : torch.nn.Module
        Layer whose output units are masked (a tensor or a tuple of tensors, batch first), or
        whose positional input units are with ``attribute_to_layer_input=True``.
    device_ids : list of int, optional
        As in Captum, for DataParallel forward functions (used to read the layer output; the
        masking hook needs the whole batch at the layer).
    output_transform : None, 'sigmoid', 'softmax' or callable
        Applied to the forward output before ``target`` selects the score; 'softmax' over the
        last dimension. SynXAI's p is ``'sigmoid'`` of a one-logit model. 'sigmoid' and
        'softmax' are evaluated in float64 (a float32 sigmoid near 1 would round away the
        differences between masks); a callable gets the output as the model gives it.
    mode : {'abs_mean', 'signed'}
        ``d = |p - p_U|`` (the paper's) or ``p - p_U``.

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
        check_attribution(forward_func, layer, mode)
        self._transform = Transform(output_transform)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)
        self.output_transform = output_transform
        self.mode = mode

    def _plan(
        self,
        inputs: Any,
        layer_baselines: Any,
        target: Any,
        additional_forward_args: Any,
        layer_mask: Any,
        attribute_to_layer_input: bool,
        perturbations_per_eval: int,
        show_progress: bool,
        rows_per_chunk: int | None,
    ) -> tuple[_engine.Plan, Units]:
        check_eval_mode(self.forward_func)
        per_eval = check_per_eval(perturbations_per_eval)
        if not isinstance(attribute_to_layer_input, bool):
            raise ValueError(
                f"attribute_to_layer_input must be a bool, got {attribute_to_layer_input!r}"
            )
        inputs = format_inputs(inputs)
        rows = len(inputs[0])
        args = _format_additional_forward_args(additional_forward_args)
        target = Target(target, rows)
        first = RowSlice(inputs, args, target, 0, 1)
        probe = probe_layer(
            self.forward_func,
            self.layer,
            first,
            self.device_ids,
            layer_input=attribute_to_layer_input,
        )
        units = Units(
            probe,
            layer_mask,
            layer_baselines,
            ("layer_mask", "layer_baselines"),
            "layer input" if attribute_to_layer_input else "layer output",
            rows,
        )
        split = None if attribute_to_layer_input else self._split(inputs, args, units)
        if split is None:
            per_chunk = hook_rows_per_chunk(units.n, per_eval)

            def hooks(start: int, stop: int) -> LayerHookEvaluator:
                part = RowSlice(inputs, args, target, start, stop)
                return LayerHookEvaluator(
                    self.forward_func,
                    self.layer,
                    part,
                    units.rows(start, stop),
                    self._transform,
                    per_eval,
                    attribute_to_layer_input,
                )
        else:
            per_chunk = ELEMENTS_PER_CHUNK // _fastpaths.elements_per_row(split, units, probe[0])

            def contributions(start: int, stop: int) -> ContributionEvaluator:
                with torch.no_grad():
                    activation = split.prefix(inputs[0][start:stop])
                    z, c = _fastpaths.contributions(split, units.rows(start, stop), activation)
                return ContributionEvaluator(
                    z, c, split.suffix, target.rows(slice(start, stop)), self._transform
                )

        chunk = check_rows_per_chunk(rows_per_chunk, per_chunk, rows)
        evaluator = hooks if split is None else contributions
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
        layer_baselines: None | Tensor | int | float | tuple[Tensor | int | float, ...] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: None | Tensor | tuple[Tensor, ...] = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        alpha: float = 20.0,
        show_progress: bool = False,
        rows_per_chunk: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Per-row synergistic importance of each layer unit, shaped like the layer output.

        The parameters up to ``perturbations_per_eval`` are those of Captum's
        ``LayerFeatureAblation.attribute``, in its order and with its defaults; the others are
        keyword-only.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            (N, ...) model inputs, as for Captum attributions.
        layer_baselines : None, number, tensor or tuple, optional
            Value a masked unit takes, broadcastable to the layer output (or input, see
            ``attribute_to_layer_input``; first dim 1 or N). Default None: 0.
        target : None, int, tuple, list or tensor, optional
            Which output value is the score, with Captum's semantics (per row for a list or
            an N-long tensor). Default None: only for forward functions with one value per
            row.
        additional_forward_args : any, optional
            Extra arguments of ``forward_func`` after the inputs. Default None.
        layer_mask : None, tensor or tuple of tensors, optional
            Integer group ids broadcastable to the layer output (or input; first dim 1 or N);
            elements of one group are masked together and share its value. Default None:
            every element is a unit.
        attribute_to_layer_input : bool, optional
            Units are the elements of the layer's positional input(s), masked by a forward
            pre-hook, instead of its output (as in ``LayerFeatureAblation``; the fast paths
            do not apply). Default False.
        perturbations_per_eval : int, optional
            Masks per forward pass of the model (hook path; fewer when a pass would exceed
            65,536 rows); the fast paths run no model forward per mask and size their blocks
            by memory. Default 1.
        alpha : float, optional
            Weight of the synergy term (5 or 20 in the paper). Keyword-only. Default 20.0.
        show_progress : bool, optional
            Progress bar over pairs (shown only on a terminal). Keyword-only. Default False.
        rows_per_chunk : int, optional
            Rows evaluated together. Keyword-only. Default None: sized by memory, at most
            4,096 on the hook path.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Shaped like the layer output (N, ...), or like its input with
            ``attribute_to_layer_input=True``: z_i(x) = d_i(x) + α · mean_j max(s_ij(x), 0)
            of the unit each element belongs to, with s_ij(x) = d_ij(x) - d_i(x) - d_j(x)
            from row x alone (a batch gives the rows' separate results). A tuple when the
            layer outputs (takes) several tensors, as in ``LayerFeatureAblation``.
        """
        alpha = real_number("alpha", alpha)
        plan, units = self._plan(
            inputs,
            layer_baselines,
            target,
            additional_forward_args,
            layer_mask,
            attribute_to_layer_input,
            perturbations_per_eval,
            show_progress,
            rows_per_chunk,
        )
        values = _engine.per_row_z(plan, alpha)
        expanded = units.expand(values)
        return _format_output(len(expanded) > 1, expanded)

    @log_usage()
    def compute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        layer_baselines: None | Tensor | int | float | tuple[Tensor | int | float, ...] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: None | Tensor | tuple[Tensor, ...] = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        show_progress: bool = False,
        rows_per_chunk: int | None = None,
    ) -> SynergyResult:
        """Δ, Δ_ij and S of the layer's units (or ``layer_mask`` groups) over all rows.

        Parameters as in :meth:`attribute` (without ``alpha``): ``inputs``,
        ``layer_baselines=None``, ``target=None``, ``additional_forward_args=None``,
        ``layer_mask=None``, ``attribute_to_layer_input=False``, ``perturbations_per_eval=1``
        in Captum's order, then the keyword-only ``show_progress=False`` and
        ``rows_per_chunk=None``. Under ``torch.distributed`` the means run over the rows of
        all processes.

        Returns
        -------
        SynergyResult
            n = number of elements of one layer output (or input, with
            ``attribute_to_layer_input=True``), or of groups in ``layer_mask`` (sorted by
            id); unit i is element i of the flattened output(s) without a mask.
        """
        plan, units = self._plan(
            inputs,
            layer_baselines,
            target,
            additional_forward_args,
            layer_mask,
            attribute_to_layer_input,
            perturbations_per_eval,
            show_progress,
            rows_per_chunk,
        )
        single, pair, rows, dtype = _engine.sums(plan)
        return SynergyResult.from_sums(
            single, pair, rows, units.ids, units.shapes, self.mode, dtype
        )
