"""Explicit modules for operations that models write as functions, so rules can be attached.

Zennit assigns rules to modules. An operation written in ``forward`` as an expression (the
gate ``x * s`` of squeeze-and-excitation, the products ``q @ kᵀ`` and ``A @ v`` of attention)
has no module, and its plain gradient then stands in for relevance. Canonizers replace such
expressions by these modules for the duration of a composite; the outputs are unchanged. The
residual add uses Zennit's own :class:`zennit.layer.Sum` (inputs stacked on the last axis).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Multiply", "MatMul", "Scale"]


class Multiply(nn.Module):
    """Element-wise product of two activations, ``a * b`` (broadcasting as in torch).

    The rule of :class:`zennit_ext.rules.ProductRule` decides how relevance is shared between
    the factors (AttnLRP's uniform rule, or one factor held constant like a gate).
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a * b``."""
        return a * b


class MatMul(nn.Module):
    """Matrix product of two activations, ``a @ b`` (batched as :func:`torch.matmul`).

    Parameters
    ----------
    scale : float, optional
        A constant factor of the product, ``scale · (a @ b)`` (the ``1/√d`` of attention
        scores). Inside the module it is part of every contribution ``a_ik b_kj``, so the rule
        sees the scaled product; outside, the plain gradient would multiply relevance by it.
    """

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = None if scale is None else float(scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a @ b`` (times ``scale`` if given); shapes as :func:`torch.matmul`."""
        product = torch.matmul(a, b)
        return product if self.scale is None else product * self.scale

    def extra_repr(self) -> str:
        return "" if self.scale is None else f"scale={self.scale:g}"


class Scale(nn.Module):
    """Element-wise product with a parameter, ``x * weight`` (ConvNeXt's layer scale).

    A diagonal linear map: Zennit's linear rules (ε, γ) apply to it. The parameter is the
    model's own object, shared, not copied.

    Parameters
    ----------
    weight : torch.nn.Parameter
        Broadcastable to the input, e.g. (C, 1, 1) for (N, C, H, W) inputs.
    """

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x * weight``, shaped like the broadcast of both."""
        return x * self.weight
