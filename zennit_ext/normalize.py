"""Normalized rules for NRM: every neuron passes on exactly the relevance it receives.

A Zennit rule maps the relevance ``R`` at a layer's output to its input with a matrix that is
linear in ``R``: ``R_in = M̃ R``. NRM (notes/nrm-equations.md, eq. 17) divides each column of
``M̃`` by its sum, so that no bias or ε absorbs relevance. :class:`NormalizedHook` does that
for any Zennit ``BasicHook``: it obtains the column sums ``M̃ᵀ 1`` once per forward pass by
differentiating the rule's own backward with respect to a probe of ones (exact, because the
rule is linear in ``R``), and scales the incoming message by their inverse. A neuron whose
column sum is 0 passes 0; a negative column sum at a neuron that carries relevance violates
the positive-sum condition (eq. 15) and raises.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.core import BasicHook, Composite, Hook
from zennit.layer import Sum
from zennit.rules import Flat, Gamma, Norm, Pass, ZBox, ZPlus
from zennit.types import Activation, AvgPool, Convolution
from zennit.types import Linear as AnyLinear

from zennit_ext.hooks import RuleWrappingComposite, StatefulHook, mixin_hook

__all__ = ["NormalizedHook", "NormalizedComposite", "nrm_composite", "PositiveSumError"]


class PositiveSumError(ValueError):
    """A layer's propagation matrix has a negative column sum where relevance flows (eq. 15)."""


@dataclass
class NormalizationSettings:
    """State shared by all hooks of one :class:`NormalizedComposite`.

    Attributes
    ----------
    check : bool
        Test the positive-sum condition on every backward pass. The check reads the message,
        so it is switched off for passes batched with ``is_grads_batched`` (vmap).
    on_violation : {'raise', 'warn'}
        What a failed check does. With 'warn' the neuron's conditionals still sum to 1 but
        have the opposite sign of its unnormalized ones.
    """

    check: bool = True
    on_violation: str = "raise"

    def __post_init__(self) -> None:
        if self.on_violation not in ("raise", "warn"):
            raise ValueError(f"on_violation must be 'raise' or 'warn', got {self.on_violation!r}")


class NormalizedHook(StatefulHook):
    """Mixin placed before a Zennit ``BasicHook`` rule: column-normalized propagation (eq. 17).

    Attributes
    ----------
    layer_name : str
        Name of the module, for error messages.
    settings : NormalizationSettings
        Shared switches.
    """

    state_names = ("layer_name", "settings")
    layer_name: str
    settings: NormalizationSettings

    def column_sums(self, module: nn.Module, grad_input: Any, shape: torch.Size) -> torch.Tensor:
        """Column sums ``Σ_j M̃[j, k]`` of the rule for the stored input, cached per forward.

        Parameters
        ----------
        module : torch.nn.Module
            The hooked layer.
        grad_input : tuple
            As passed to ``backward`` (shapes only).
        shape : torch.Size
            Shape of the layer's output, (batch, ...).

        Returns
        -------
        torch.Tensor
            Shape ``shape``: the relevance the layer's input receives per unit of relevance at
            each output neuron.
        """
        key = self.stored_tensors["input"][0]
        if getattr(self, "_sums_key", None) is not key:
            with torch.enable_grad():
                probe = torch.ones(shape, dtype=key.dtype, device=key.device, requires_grad=True)
                relevance = super().backward(module, grad_input, (probe,))[0]
                (sums,) = torch.autograd.grad(relevance.sum(), probe)
            self._sums_key, self._sums = key, sums.detach()
        return self._sums

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of the layer's input under the column-normalized rule."""
        message = grad_output[0]
        sums = self.column_sums(module, grad_input, message.shape)
        nonzero = sums != 0
        if self.settings.check:
            violated = (sums < 0) & (message != 0)
            if violated.any():
                text = (
                    f"layer {self.layer_name!r} ({type(module).__name__}, rule "
                    f"{type(self).__bases__[1].__name__}) has {int(violated.sum())} negative "
                    "column sums at neurons that carry relevance; NRM needs positive sums "
                    "(eq. 15): use z+ (or a larger gamma) on a ReLU network"
                )
                if self.settings.on_violation == "raise":
                    raise PositiveSumError(text)
                warnings.warn(text, RuntimeWarning, stacklevel=2)
        scaled = torch.where(nonzero, message / torch.where(nonzero, sums, 1.0), 0.0)
        return super().backward(module, grad_input, (scaled, *grad_output[1:]))


class NormalizedComposite(RuleWrappingComposite):
    """A base composite with every ``BasicHook`` rule column-normalized for NRM.

    Parameters
    ----------
    base : zennit.core.Composite
        Its rules define the unnormalized propagation ``M̃``; its canonizers are applied.
    on_violation : {'raise', 'warn'}
        What a negative column sum at a neuron carrying relevance does (eq. 15).

    Raises
    ------
    ValueError
        On register, if a module with parameters of its own (e.g. a BatchNorm that no
        canonizer merged) gets no ``BasicHook`` rule: its gradient would not be normalized.
    """

    def __init__(self, base: Composite, on_violation: str = "raise") -> None:
        self.settings = NormalizationSettings(on_violation=on_violation)
        self.hooked: dict[str, Hook] = {}
        super().__init__(base)

    def wrap_rule(self, ctx: dict, name: str, module: nn.Module, template: Hook) -> Hook:
        """``BasicHook`` rules get normalized; others (e.g. ``Pass``) are kept."""
        if isinstance(template, BasicHook):
            template = mixin_hook(template, NormalizedHook, layer_name=name, settings=self.settings)
        self.hooked[name] = template
        return template

    def reset(self) -> None:
        """Forget the hooked module names of the previous registration."""
        self.hooked = {}

    def check_registered(self, module: nn.Module) -> None:
        """Raise ValueError if a parameterised module has no ``BasicHook`` rule."""
        bare = [
            name
            for name, child in module.named_modules()
            if any(True for _ in child.parameters(recurse=False))
            and not isinstance(self.hooked.get(name), BasicHook)
        ]
        if bare:
            raise ValueError(
                f"modules {bare} have parameters but no BasicHook rule, so NRM cannot normalize "
                "their propagation; merge them with a canonizer (e.g. zennit's "
                "SequentialMergeBatchNorm) or give them a rule in the composite"
            )


def nrm_composite(
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    gamma: float = 0.25,
    canonizers: list | None = None,
) -> Composite:
    """The paper's default rules (§4.4): γ on convolutions, z⁺ on dense layers, and on the
    first layer the box rule (with input bounds) or the flat rule (without).

    Parameters
    ----------
    low, high : float or torch.Tensor, optional
        Bounds of the input, both or neither.
    gamma : float
        γ of the convolution rule.
    canonizers : list of zennit canonizers, optional
        Applied while the composite is registered.

    Returns
    -------
    zennit.core.Composite
        Unnormalized; :class:`NormalizedComposite` (used by :class:`~zennit_ext.NRM`)
        normalizes it.
    """
    if (low is None) != (high is None):
        raise ValueError(f"give both low and high or neither, got low={low!r}, high={high!r}")
    first = Flat() if low is None else ZBox(low=low, high=high)
    layer_map = [
        (Activation, Pass()),
        (Sum, Norm()),
        (AvgPool, Norm()),
        (Convolution, Gamma(gamma=gamma)),
        (nn.Linear, ZPlus()),
    ]
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=[(AnyLinear, first)], canonizers=canonizers
    )
