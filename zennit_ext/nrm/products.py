"""The column-normalized product rules of NRM: element-wise gates and attention's ``A @ v``.

NRM (Xiong et al., arXiv:2606.00557, eq. 17) divides every column of a rule's propagation
matrix by its sum. For an element-wise product ``y = a * b`` (a squeeze-and-excitation gate
made a :class:`~zennit_ext.layers.Multiply` by a canonizer) each output neuron has a single
contribution, so the normalized :class:`~zennit_ext.rules.ProductRule` is a fixed split of
the message between the two factors. :class:`~zennit_ext.nrm.rules.NormalizedComposite`
assigns it wherever the base composite gives a ``Multiply`` a ``ProductRule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from zennit.core import Hook

from zennit_ext.rules import ProductRule

__all__ = ["NormalizedProductRule", "NormalizedWeightingRule"]


class NormalizedProductRule(ProductRule):
    """:class:`~zennit_ext.rules.ProductRule` of an element-wise product, column-normalized.

    For ``y = a * b`` every output neuron has one contribution ``a_k b_k``, so the product
    rule's column sums are ``(s_a + s_b) y / (y + ε sign(y))``; normalized (eq. 17), each
    factor receives its share ``s / (s_a + s_b)`` of the message, summed over the positions
    a broadcast factor was repeated to. With ``shares=(1, 0)`` (a gate held constant) the
    activation receives the message unchanged and the gate nothing.

    Parameters
    ----------
    shares : (float, float)
        ``(s_a, s_b)``, each in [0, 1], with a positive sum.
    """

    def __init__(self, shares: Sequence[float] = (1.0, 0.0)) -> None:
        super().__init__(shares, epsilon=0.0)
        if sum(self.shares) <= 0:
            raise ValueError(f"shares must have a positive sum, got {shares!r}")

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """The message split between the factors, each summed to its factor's shape."""
        factors = self.stored_tensors["input"]
        message = grad_output[0]
        total = sum(self.shares)
        return tuple(
            (share / total) * message.sum_to_size(factor.shape)
            for share, factor in zip(self.shares, factors, strict=True)
        )

    def copy(self) -> NormalizedProductRule:
        """A fresh hook with the same shares."""
        return NormalizedProductRule(self.shares)


class NormalizedWeightingRule(Hook):
    """Attention's weighting ``y = A @ v`` with ``A`` held constant (CP-LRP), column-normalized.

    ``v`` receives every output's relevance in proportion to the absolute contributions:
    ``R_{v_sd} = Σ_t A_ts |v_sd| / (Σ_s' A_ts' |v_s'd|) · R_td`` (``A`` is a softmax, ≥ 0),
    so the shares lie in [0, 1] and sum to 1 per output; ``A`` receives nothing. Ali et al.,
    "XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022
    (arXiv:2202.07304), for the constant attention; NRM (arXiv:2606.00557, eq. 17) for the
    normalization.
    """

    def forward(self, module: nn.Module, input: tuple, output: Any) -> None:
        """Store ``A`` and ``v``."""
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """0 for ``A``, the shared message for ``v``; each shaped like its factor."""
        weights, values = (f.detach() for f in self.stored_tensors["input"])
        magnitude = values.abs().requires_grad_()
        with torch.enable_grad():
            total = module.forward(weights, magnitude)
            nonzero = total != 0
            ratio = torch.where(
                nonzero, grad_output[0] / torch.where(nonzero, total.detach(), 1.0), 0.0
            )
            # differentiable in the message: NRM's reach differentiates the backward pass
            (gradient,) = torch.autograd.grad(
                total, magnitude, ratio, create_graph=ratio.requires_grad
            )
        return (torch.zeros_like(weights), magnitude.detach() * gradient)

    def copy(self) -> NormalizedWeightingRule:
        """A fresh hook."""
        return NormalizedWeightingRule()
