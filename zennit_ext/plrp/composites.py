"""Pruned LRP (PLRP-λ, PLRP-M) as Zennit composites that wrap the rules of a base composite.

A base composite (default: Zennit's ``EpsilonGammaBox`` with input bounds, else
``EpsilonPlusFlat``) assigns a rule hook to each layer. :class:`PLRPLambda` and :class:`PLRPM`
keep those rules and canonizers and wrap the hook of every parameterised layer except the
first in a :class:`PruningHook`, which prunes the relevance the rule returns for the layer's
input (paper, section 3.2):

- PLRP-λ: drop the smallest entries of each sign and rescale the kept ones (conservative per
  sign, signs preserved).
- PLRP-M: zero the input activations of the pruned neurons and recompute the same rule (eq.
  3.4–3.6): pruned neurons get exactly 0, their mass is redistributed LRP-style.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, register_composite
from zennit.core import BasicHook, Composite, Hook
from zennit.types import Linear

from zennit_ext._lxt import check_no_lxt_patch
from zennit_ext._rules import BatchCheck, RuleWrappingComposite, StatefulHook, mixin_hook
from zennit_ext.plrp.masks import (
    check_fraction,
    check_measure,
    mass_threshold_mask,
    rescale_kept,
    sparsity_gain_mask,
)

__all__ = [
    "PruningSpec",
    "PruningHook",
    "pruned_hook",
    "PLRPLambda",
    "PLRPM",
]

Recorder = Callable[[str, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class PruningSpec:
    """How one layer's relevance is pruned: a fixed mass fraction or a minimal sparsity gain.

    Parameters
    ----------
    p : float, optional
        Fraction in [0, 1) of the positive relevance mass to prune (eq. 3.2).
    p_neg : float, optional
        Fraction in [0, 1) of the absolute negative mass to prune; defaults to ``p``.
    sparsity_gain : float, optional
        Minimal sparsity gain ≥ 0 (eq. 3.3); exclusive with ``p``.
    sparsity_measure : {'gini', 'hoyer', 'l0'}
        Sparsity measure of the gain (see :func:`~zennit_ext.plrp.masks.sparsity_gain_mask`);
        only with ``sparsity_gain``.
    """

    p: float | None = None
    p_neg: float | None = None
    sparsity_gain: float | None = None
    sparsity_measure: str = "gini"

    def __post_init__(self) -> None:
        check_measure(self.sparsity_measure)
        if self.sparsity_gain is None and self.sparsity_measure != "gini":
            raise ValueError(
                f"sparsity_measure={self.sparsity_measure!r} needs sparsity_gain, got p={self.p!r}"
            )
        if self.sparsity_gain is not None:
            if self.p is not None or self.p_neg is not None:
                raise ValueError(
                    f"give either p/p_neg or sparsity_gain, got p={self.p!r}, "
                    f"p_neg={self.p_neg!r}, sparsity_gain={self.sparsity_gain!r}"
                )
            sparsity_gain_mask(torch.zeros(1, 1), self.sparsity_gain)  # validates the value
        elif self.p is None:
            raise ValueError("give p (a fraction in [0, 1)) or sparsity_gain, got neither")
        else:
            check_fraction("p", self.p)
            if self.p_neg is not None:
                check_fraction("p_neg", self.p_neg)

    def keep(self, relevance: torch.Tensor) -> torch.Tensor:
        """Bool keep-mask, shape of ``relevance`` (batch, ...), per sample and sign."""
        if self.sparsity_gain is not None:
            return sparsity_gain_mask(relevance, self.sparsity_gain, self.sparsity_measure)
        assert self.p is not None  # __post_init__: p or sparsity_gain is set
        return mass_threshold_mask(relevance, self.p, self.p_neg)


class PruningHook(StatefulHook):
    """Mixin placed before a Zennit rule class: prunes the relevance its ``backward`` returns.

    Instances are made by :func:`pruned_hook`; the rule's own forward/backward machinery is
    inherited unchanged, so the same code runs on zennit 0.5 and 1.0.

    Attributes
    ----------
    spec : PruningSpec
        The pruning settings of this layer.
    variant : str
        ``'lambda'`` (rescale kept relevance) or ``'m'`` (recompute with masked activations).
    layer_name : str
        Name of the module in the model, passed to ``recorder``.
    recorder : callable or None
        ``recorder(layer_name, unpruned, pruned)`` with (batch, ...) relevance of the layer's
        input, called after each pruning step.
    """

    state_names = ("spec", "variant", "layer_name", "recorder")
    spec: PruningSpec
    variant: str
    layer_name: str
    recorder: Recorder | None

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of the layer's input from the wrapped rule, then pruned."""
        result = tuple(super().backward(module, grad_input, grad_output))
        relevance = result[0]
        if relevance is None:
            return result
        keep = self.spec.keep(relevance.detach())
        if self.variant == "lambda":
            pruned = rescale_kept(relevance, keep)
        else:
            stored = self.stored_tensors["input"]
            self.stored_tensors["input"] = (stored[0] * keep, *stored[1:])
            try:
                pruned = tuple(super().backward(module, grad_input, grad_output))[0]
            finally:
                self.stored_tensors["input"] = stored
        if self.recorder is not None:
            self.recorder(self.layer_name, relevance.detach(), pruned.detach())
        return (pruned, *result[1:])


def pruned_hook(
    hook: Hook,
    spec: PruningSpec,
    variant: str = "lambda",
    layer_name: str = "",
    recorder: Recorder | None = None,
) -> Hook:
    """Wrap a Zennit rule hook so that the relevance of its layer's input is pruned.

    Parameters
    ----------
    hook : zennit.core.Hook
        The rule (e.g. ``Gamma()``, ``Epsilon()``); it is copied, not changed.
    spec : PruningSpec
        Pruning settings.
    variant : {'lambda', 'm'}
        PLRP-λ or PLRP-M (needs a ``BasicHook`` rule: it recomputes the rule).
    layer_name : str
        Name passed to ``recorder``.
    recorder : callable, optional
        ``recorder(layer_name, unpruned, pruned)``.

    Returns
    -------
    zennit.core.Hook
        A hook of class ``PruningHook<Rule>``, a subclass of the rule's class.
    """
    if not isinstance(hook, Hook):
        raise TypeError(f"hook must be a zennit Hook, got {type(hook).__name__}")
    if variant not in ("lambda", "m"):
        raise ValueError(f"variant must be 'lambda' or 'm', got {variant!r}")
    if variant == "m" and not isinstance(hook, BasicHook):
        raise TypeError(
            f"PLRP-M recomputes the rule and needs a zennit BasicHook, got {type(hook).__name__}"
        )
    return mixin_hook(
        hook, PruningHook, spec=spec, variant=variant, layer_name=layer_name, recorder=recorder
    )


def _base_composite(
    composite: Composite | None, low: Any, high: Any, canonizers: list | None
) -> Composite:
    if composite is not None:
        if low is not None or high is not None or canonizers is not None:
            raise ValueError(
                "low, high and canonizers configure the default base composite; "
                "with composite= give them to that composite instead"
            )
        return composite
    if (low is None) != (high is None):
        raise ValueError(f"give both low and high or neither, got low={low!r}, high={high!r}")
    if low is not None:
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    return EpsilonPlusFlat(canonizers=canonizers)


class _PLRPComposite(RuleWrappingComposite):
    """Shared wiring of :class:`PLRPLambda` and :class:`PLRPM` (see their docstrings)."""

    variant: ClassVar[str]

    def __init__(
        self,
        p: float | None = None,
        *,
        p_neg: float | None = None,
        sparsity_gain: float | None = None,
        sparsity_measure: str = "gini",
        layer_p: Mapping[str, float] | None = None,
        composite: Composite | None = None,
        low: Any = None,
        high: Any = None,
        canonizers: list | None = None,
        layer_types: type | tuple[type, ...] = Linear,
        recorder: Recorder | None = None,
    ) -> None:
        if p is None and sparsity_gain is None:
            sparsity_gain = 1.0
        self.spec = PruningSpec(p, p_neg, sparsity_gain, sparsity_measure)
        self.layer_p = {
            name: check_fraction(f"layer_p[{name!r}]", v) for name, v in dict(layer_p or {}).items()
        }
        self.layer_types = layer_types
        self.recorder = recorder
        self.pruned_names: list[str] = []
        self.batch_check = BatchCheck(type(self).__name__)
        super().__init__(_base_composite(composite, low, high, canonizers))

    def wrap_rule(self, ctx: dict, name: str, module: nn.Module, template: Hook) -> Hook:
        """The base rule, wrapped in a :class:`PruningHook` unless it is the first layer."""
        if not isinstance(module, self.layer_types):
            return template
        if not ctx.get("plrp_first_layer_seen", False):
            ctx["plrp_first_layer_seen"] = True
            return template  # the first layer is never pruned
        self.pruned_names.append(name)
        spec = self.spec
        if name in self.layer_p:
            spec = PruningSpec(p=self.layer_p[name])
        return pruned_hook(template, spec, self.variant, name, self.recorder)

    def register(self, module: nn.Module) -> None:
        """Register the wrapped rules, then the checks of the model's inputs and outputs.

        Refuses (RuntimeError) while LXT's global patch of Zennit's ``BasicHook`` is active:
        PLRP would prune the patched backward's relevance ÷ input, silently.
        """
        check_no_lxt_patch(type(self).__name__)
        super().register(module)
        self.batch_check.register(module)

    def remove(self) -> None:
        """Remove the input/output checks, the hooks and canonizers; restore the model."""
        self.batch_check.remove()
        super().remove()

    def reset(self) -> None:
        """Forget the pruned layer names of the previous registration."""
        self.pruned_names = []

    def check_registered(self, module: nn.Module) -> None:
        """Raise ValueError if ``layer_p`` names a module that is not a pruned layer."""
        unknown = sorted(set(self.layer_p) - set(self.pruned_names))
        if unknown:
            raise ValueError(
                f"layer_p names {unknown} that are not pruned layers of the model; "
                f"expected some of {self.pruned_names}"
            )


_DOC = """Pruned LRP, {title}, as a Zennit composite (paper eq. 3.2–3.{eq}).

    Wraps the rule the base composite assigns to each parameterised layer (``layer_types``)
    except the first one; keeps the base composite's canonizers. Registered in
    ``zennit.composites.COMPOSITES`` as ``'{key}'``.

    Parameters
    ----------
    p : float, optional
        Fraction in [0, 1) of each layer's positive relevance mass to prune. If neither ``p``
        nor ``sparsity_gain`` is given, ``sparsity_gain=1.0`` (the paper's natural choice).
    p_neg : float, optional
        Fraction of the absolute negative mass to prune; defaults to ``p``.
    sparsity_gain : float, optional
        Minimal sparsity gain ≥ 0: the fraction is chosen per layer and sample (eq. 3.3).
    sparsity_measure : {{'gini', 'hoyer', 'l0'}}
        Sparsity measure ``s`` of the gain (the paper leaves it unnamed): the Gini index,
        Hoyer's l1/l2 measure, or the share of zeros (gain 1 then prunes every entry at most
        the mean of its sign). Only with ``sparsity_gain`` (or its default).
    layer_p : mapping of str to float, optional
        Fixed fraction (both signs) for named layers (names as in ``model.named_modules()``);
        0 disables pruning of that layer.
    composite : zennit.core.Composite, optional
        Base composite whose rules and canonizers are used.
    low, high : float or torch.Tensor, optional
        Input bounds: the default base is ``EpsilonGammaBox(low, high)``; without them it is
        ``EpsilonPlusFlat()``.
    canonizers : list of zennit canonizers, optional
        Canonizers of the default base composite.
    layer_types : type or tuple of types
        Module types whose input relevance is pruned (default ``zennit.types.Linear``:
        dense and convolutional layers).
    recorder : callable, optional
        ``recorder(name, unpruned, pruned)`` called with each pruned layer's input relevance,
        (batch, ...), e.g. to inspect intermediate relevance.

    Raises
    ------
    ValueError
        ``p``/``p_neg``/``layer_p`` outside [0, 1) or NaN, both ``p`` and ``sparsity_gain``,
        a negative or non-finite gain, inconsistent base settings; on a forward pass of the
        registered model: an empty input batch, non-finite inputs or a non-finite output.
    TypeError
        ``composite`` is not a zennit Composite; non-numeric settings{extra}.

    Examples
    --------
    >>> comp = {name}(p=0.2, low=-1.0, high=1.0)                          # doctest: +SKIP
    >>> with Gradient(model=model, composite=comp) as attributor:         # doctest: +SKIP
    ...     output, relevance = attributor(x, torch.eye(10)[target])
    """


@register_composite("plrp_lambda")
class PLRPLambda(_PLRPComposite):
    variant = "lambda"
    __doc__ = _DOC.format(title="PLRP-λ", eq=3, key="plrp_lambda", name="PLRPLambda", extra="")


@register_composite("plrp_m")
class PLRPM(_PLRPComposite):
    variant = "m"
    __doc__ = _DOC.format(
        title="PLRP-M",
        eq=6,
        key="plrp_m",
        name="PLRPM",
        extra="; a base rule that is not a BasicHook (raised on register)",
    )
