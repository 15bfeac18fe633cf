"""NRM's rules for transformer blocks: residual streams, embeddings, class tokens, attention.

NRM (Xiong et al., arXiv:2606.00557) column-normalizes every rule (eq. 17), so no bias or ε
absorbs relevance. A transformer's residual stream is signed on both sides of an add, where
proportional (``Norm``) shares exceed 1 and turn negative (measured on a 2-block ViT: the
absolute relevance mass reaches 2–4 × the output's); NRM shares such adds by the terms'
absolute contributions instead, so every share lies in [0, 1]. The rules here are
``BasicHook`` rules, which :class:`~zennit_ext.nrm.rules.NormalizedComposite` normalizes like
any other; :func:`~zennit_ext.nrm.rules.nrm_composite` assigns them to the modules the
attention canonizers attach (:mod:`zennit_ext.attention.modules`):

- :class:`AbsoluteShares` for a :class:`~zennit_ext.attention.modules.StreamSum`:
  ``R_j = |x_j| / Σ_k |x_k| · R``;
- :class:`StreamOnly` for an :class:`~zennit_ext.attention.modules.EmbeddingSum`: all
  relevance to the token stream, none to the position or token-type embeddings (biases);
- :class:`TokenRoute` for a :class:`~zennit_ext.attention.modules.TokenConcat` and a
  :class:`~zennit_ext.attention.modules.GridPad`: the copied rows and entries pass their
  relevance on, the class token's rows and the padding stop (counted in NRM's report).

The attention weighting ``A @ v`` (``A`` held constant, as in CP-LRP) is
:class:`~zennit_ext.nrm.products.NormalizedWeightingRule`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from zennit.core import BasicHook
from zennit.rules import NoMod

__all__ = ["AbsoluteShares", "StreamOnly", "TokenRoute"]


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


def _divided(out_grad: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """``out_grad / outputs[0]``, 0 where the output is 0 (nothing to share: the term stops)."""
    total = outputs[0]
    nonzero = total != 0
    return torch.where(nonzero, out_grad / torch.where(nonzero, total, 1.0), 0.0)


def _passed(out_grad: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    return out_grad


def _times_input(inputs: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    return inputs[0] * gradients[0]


def _gradient(inputs: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    return gradients[0]


def _first_term(inputs: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """The gradient on the stacked terms' first entry (the stream), 0 on the others."""
    select = torch.zeros(inputs[0].shape[-1], dtype=inputs[0].dtype, device=inputs[0].device)
    select[0] = 1.0
    return gradients[0] * select


class AbsoluteShares(BasicHook):
    """Sum of signed terms, each receiving the share ``|x_j| / Σ_k |x_k|`` of the relevance.

    For Zennit's :class:`~zennit.layer.Sum` over stacked terms ``x`` (…, n): ``R_j = |x_j|
    / Σ_k |x_k| · R`` per output entry (the ε-rule applied to the absolute contributions,
    without ε). An output whose terms are all 0 passes nothing (its relevance stops there).
    """

    def __init__(self) -> None:
        super().__init__(
            input_modifiers=[torch.abs],
            param_modifiers=[NoMod(param_keys=[])],
            output_modifiers=[_identity],
            gradient_mapper=_divided,
            reducer=_times_input,
        )


Reducer = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]


class _Routing(BasicHook):
    """A rule that moves the message by the module's gradient (a routing, no weighting), the
    gradient reduced by ``reducer``."""

    def __init__(self, reducer: Reducer) -> None:
        super().__init__(
            input_modifiers=[_identity],
            param_modifiers=[NoMod(param_keys=[])],
            output_modifiers=[_identity],
            gradient_mapper=_passed,
            reducer=reducer,
        )


class StreamOnly(_Routing):
    """Sum whose first stacked term is the stream: it receives all the relevance.

    For an :class:`~zennit_ext.attention.modules.EmbeddingSum` over ``(stream, position, …)``
    stacked on the last axis: ``R_stream = R``, 0 for the embeddings, which NRM treats as
    biases (absorbing nothing).
    """

    def __init__(self) -> None:
        super().__init__(_first_term)


class TokenRoute(_Routing):
    """Relevance routed through a copy: each output entry to the input entry it copies.

    For a :class:`~zennit_ext.attention.modules.TokenConcat` (``cat([token, x])``), the rows of
    ``x`` pass their relevance unchanged; the token's rows have no input row (column sum 0),
    so NRM's report counts their relevance as stopped at this module. Likewise the appended
    zeros of a :class:`~zennit_ext.attention.modules.GridPad`.
    """

    def __init__(self) -> None:
        super().__init__(_gradient)
