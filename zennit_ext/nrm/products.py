"""The column-normalized product rule of NRM for element-wise products (gates).

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

from torch import nn

from zennit_ext.rules import ProductRule

__all__ = ["NormalizedProductRule"]


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
