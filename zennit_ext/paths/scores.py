"""Unit scores of the neuron graph: plain LRP relevance at chosen layers (the paper's setting).

Bhati et al. ("Neural Network Interpretability With Layer-Wise Relevance Propagation: Novel
Techniques for Neuron Selection and Visualization", arXiv:2412.05686, Algorithm 1) keep the
neurons of a layer by their LRP relevance (LRP-0 on dense layers, LRP-γ on the lower layers,
deep Taylor's box rule on the input layer). :func:`lrp_unit_relevance` gives that relevance
with the rules of any Zennit composite, **unnormalized**: biases and stabilizers absorb part of
it, as in LRP. NRM (:class:`~zennit_ext.NRM`) divides every column of the same rules'
matrices by its sum instead, so that no relevance is absorbed; on bias-free LRP-0/γ layers the
two agree up to the output's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from zennit.core import Composite, Hook

from zennit_ext._checks import check_finite
from zennit_ext._rules import RuleWrappingComposite
from zennit_ext.nrm.engine import output_relevance
from zennit_ext.nrm.sets import reduce_units

__all__ = ["RELEVANCES", "lrp_unit_relevance", "unit_sums"]

RELEVANCES = ("nrm", "lrp")


class _PlainComposite(RuleWrappingComposite):
    """The base composite's canonizers and rules, unchanged; restores the model on removal."""

    def wrap_rule(self, ctx: dict, name: str, module: nn.Module, template: Hook) -> Hook:
        return template


def unit_sums(values: torch.Tensor, level: str = "channel") -> torch.Tensor:
    """(batch, ...) → (batch, n_units): the values summed per unit at ``level`` (channels of
    (batch, C, ...) by default; see :data:`zennit_ext.nrm.sets.LEVELS`)."""
    return reduce_units(values, level, values.dim() - 1)


def lrp_unit_relevance(
    model: nn.Module,
    composite: Composite,
    modules: Mapping[str, nn.Module],
    x: torch.Tensor,
    target: Any,
    levels: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Plain LRP relevance at the outputs of ``modules``, summed per unit.

    One forward and one backward pass with ``composite`` registered (its canonizers applied,
    everything removed afterwards, also on error). The output relevance is NRM's ``r̃``
    (:func:`zennit_ext.nrm.engine.output_relevance`): the one-hot vector of the target class,
    i.e. the paper's initialisation ``R_c = f_c(x)`` divided by ``f_c(x)``; a positive
    factor per sample, so it selects the same units and cannot flip their order when
    ``f_c(x) < 0``.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    composite : zennit.core.Composite
        The LRP rules (and canonizers), e.g. :func:`zennit_ext.nrm.rules.nrm_composite`.
    modules : mapping of str to torch.nn.Module
        The layers; the relevance of a layer is the relevance of its output (the modified
        gradient arriving at it).
    x : torch.Tensor
        (batch, ...) inputs.
    target : int, tuple, list, torch.Tensor or None
        Captum's ``TargetType``, or a floating-point output relevance (batch, n_outputs).
    levels : mapping of str to str, optional
        The unit level of each layer (default ``'channel'``).

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: (batch, n_units)}`` in the model's dtype, on ``x``'s device.

    Raises
    ------
    ValueError
        If ``x`` is not finite, or a layer does not run or receives no relevance.
    """
    check_finite("x", x)
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            outputs[name] = output
            return output.clone()  # an in-place rectifier must not overwrite the captured one

        return hook

    plain = _PlainComposite(composite)
    with plain.context(model):
        handles = [module.register_forward_hook(capture(n)) for n, module in modules.items()]
        try:
            with torch.enable_grad():
                output = model(x.detach().requires_grad_(True))
                missing = [name for name in modules if name not in outputs]
                if missing:
                    raise ValueError(f"layers {missing} did not run in the forward pass")
                relevance = output_relevance(output, target)
                grads = torch.autograd.grad(
                    output, [outputs[n] for n in modules], relevance, allow_unused=True
                )
        finally:
            for handle in handles:
                handle.remove()
    unused = [name for name, grad in zip(modules, grads, strict=True) if grad is None]
    if unused:
        raise ValueError(f"layers {unused} receive no relevance from the output")
    levels = dict.fromkeys(modules, "channel") if levels is None else levels
    return {name: unit_sums(grad, levels[name]) for name, grad in zip(modules, grads, strict=True)}
