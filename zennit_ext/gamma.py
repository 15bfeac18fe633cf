"""Zennit's generalized γ-rule with a backward pass of four linear maps instead of ten.

Zennit's :class:`~zennit.rules.Gamma` recomputes its layer five times (positive and negative
inputs against the γ-raised positive and negative weights, and the plain layer for the sign
of the output) and differentiates all five. Written with ``W = W⁺ + W⁻`` and
``x = x⁺ + x⁻``, its four terms reduce to two layer evaluations and two transposed ones:

- ``W x`` and ``|W| |x|`` give ``u = W⁺x⁺ + W⁻x⁻ = (|W||x| + W x) / 2`` and
  ``W⁻x⁺ + W⁺x⁻ = W x − u``, hence both denominators
  ``d₊ = W x + b + γ(u + b⁺)`` (outputs > 0) and ``d₋ = W x + b + γ(W x − u + b⁻)`` (outputs < 0);
- with ``m₊ = [z > 0] g / d₊``, ``m₋ = [z < 0] g / d₋`` (disjoint supports), the two
  transposed products ``Wᵀ(m₊ + m₋)`` and ``|W|ᵀ(m₊ − m₋)`` give every back-projection:
  ``R = x⁺ ⊙ (Wᵀs + γ(Wᵀs + |W|ᵀt)/2) + x⁻ ⊙ (Wᵀs + γ(Wᵀs − |W|ᵀt)/2)``.

This is the same relevance (to rounding) at 40 % of the work. The rule keeps Zennit's
modifiers, so NRM and PLRP-M, which recompute a rule from them, see Zennit's ``Gamma``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from zennit.core import Stabilizer
from zennit.rules import Gamma

from zennit_ext._lxt import basic_hook_backward_patched

__all__ = ["FastGamma"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
_FORWARDS = (nn.Linear.forward, *(c.forward for c in _CONVOLUTIONS))


class FastGamma(Gamma):
    """Zennit's generalized γ-rule (:class:`zennit.rules.Gamma`), computed in four linear maps.

    Montavon et al., "Layer-Wise Relevance Propagation: An Overview" (2019) and Andéol et al.,
    "Learning Domain Invariant Representations by Joint Wasserstein Distance Minimization"
    (2021, the generalization to signed inputs), as Zennit implements it: for an output
    ``z_j > 0``,

    ``R_i = Σ_j (x⁺_i (w_ij + γw⁺_ij) + x⁻_i (w_ij + γw⁻_ij)) R_j / d₊_j``,

    with ``d₊_j`` the sum of those terms over ``i`` plus ``b_j + γb⁺_j`` (for ``z_j < 0`` the
    roles of ``w⁺`` and ``w⁻`` swap). On ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (their own
    ``forward``) the backward pass evaluates the layer twice and its transpose twice (see the
    module docstring) instead of five times each; on any other module, with
    ``zero_params`` other than ``['bias']``, extra forward arguments, or when a second-order
    gradient is asked for, it is Zennit's ``Gamma.backward`` (also while LXT's
    ``monkey_patch_zennit`` has replaced ``BasicHook.backward``: then FastGamma is the patched
    Gamma). The relevance equals
    Zennit's to rounding (tested in float64 to 1e-12).

    Parameters
    ----------
    gamma : float
        Multiplier of the added positive (or negative) weights.
    stabilizer : float or callable
        Zennit's stabilizer of the denominators.
    zero_params : list of str, optional
        Parameters set to zero in the modified layers (Zennit's meaning).
    """

    def __init__(
        self,
        gamma: float = 0.25,
        stabilizer: float | Any = 1e-6,
        zero_params: list[str] | None = None,
    ) -> None:
        super().__init__(gamma=gamma, stabilizer=stabilizer, zero_params=zero_params)
        self.gamma = gamma
        self.stabilizer = stabilizer
        self.zero_params = zero_params

    def copy(self) -> FastGamma:
        """A copy with the same γ, stabilizer and zeroed parameters."""
        copy = super().copy()
        copy.gamma, copy.stabilizer, copy.zero_params = (
            self.gamma,
            self.stabilizer,
            self.zero_params,
        )
        return copy

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        """Relevance of the layer's input (Zennit's frame: returned as its gradient)."""
        (x, *extra) = self.stored_tensors["input"]
        zennits = (  # other layers and options; LXT's frame: its patched backward
            extra
            or self.stored_tensors.get("kwargs")
            or not self._fusable(module, grad_output)
            or basic_hook_backward_patched()
        )
        if zennits:
            return super().backward(module, grad_input, grad_output)
        relevance = self._relevance(cast(Layer, module), x.detach(), grad_output[0])
        return tuple(relevance if g.shape == relevance.shape else None for g in grad_input)

    def _fusable(self, module: nn.Module, grad_output: Any) -> bool:
        """Whether the four-map form applies (a linear or convolutional layer's own forward)."""
        own_forward = "forward" not in vars(module) and type(module).forward in _FORWARDS
        return (
            own_forward
            and set(self.zero_params or ()) <= {"bias"}
            and not grad_output[0].requires_grad
        )

    def _relevance(self, module: Layer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``R = x⁺ ⊙ (Wᵀs + γ(Wᵀs + |W|ᵀt)/2) + x⁻ ⊙ (Wᵀs + γ(Wᵀs − |W|ᵀt)/2)``."""
        gamma = self.gamma
        with torch.autograd.enable_grad():
            signed = x.detach().requires_grad_()
            absolute = x.detach().abs().requires_grad_()
            wx = _apply(module, signed, module.weight)
            ax = _apply(module, absolute, module.weight.abs())
        plain = wx.detach()
        u = (ax.detach() + plain) / 2  # W⁺x⁺ + W⁻x⁻
        output, up, down = plain, gamma * u, gamma * (plain - u)
        if module.bias is not None:
            bias = _bias_view(module, module.bias)
            output = plain + bias
            if "bias" not in (self.zero_params or ()):
                up = bias + gamma * bias.clamp(min=0) + up
                down = bias + gamma * bias.clamp(max=0) + down
        stabilize = Stabilizer.ensure(self.stabilizer)
        positive = (output > 0) * g / stabilize(plain + up)
        negative = (output < 0) * g / stabilize(plain + down)
        through_w, through_abs = torch.autograd.grad(
            (wx, ax), (signed, absolute), (positive + negative, positive - negative)
        )
        plus = through_w + gamma * (through_w + through_abs) / 2
        minus = through_w + gamma * (through_w - through_abs) / 2
        return x.clamp(min=0) * plus + x.clamp(max=0) * minus


def _apply(module: Layer, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer without its bias, with ``weight`` in place of its own."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return module._conv_forward(x, weight, None)


def _bias_view(module: Layer, bias: torch.Tensor) -> torch.Tensor:
    """``bias`` shaped to broadcast over the layer's output (channels first for convolutions)."""
    if isinstance(module, nn.Linear):
        return bias
    return bias.view(-1, *(1,) * len(module.kernel_size))
