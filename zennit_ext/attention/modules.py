"""Explicit attention: ``nn.MultiheadAttention`` written as modules a composite can hook.

:func:`explicit_attention_forward` computes what ``F.multi_head_attention_forward`` computes,
step by step through child modules that :class:`~zennit_ext.attention.canonizers.
MultiheadAttentionCanonizer` attaches for the duration of a composite: the projections
(``nn.Linear`` sharing the attention's weights), the scaled scores ``q kᵀ/√d``
(:class:`AttentionScores`), ``nn.Softmax``, dropout, the weighting ``A v``
(:class:`AttentionWeighting`) and the attention's own ``out_proj``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from zennit.layer import Sum

from zennit_ext.layers import MatMul

__all__ = [
    "AttentionProjection",
    "AttentionScores",
    "AttentionWeighting",
    "EmbeddingSum",
    "StreamSum",
    "TokenConcat",
    "GridPad",
    "shared_linear",
    "explicit_attention_forward",
]


class AttentionScores(MatMul):
    """The scaled scores ``scale · q @ kᵀ`` of attention (a :class:`~zennit_ext.layers.MatMul`).

    Inputs ``q`` (N, H, L, d) and ``kᵀ`` (N, H, d, S); output (N, H, L, S).
    """


class AttentionWeighting(MatMul):
    """The weighting ``A @ v`` of attention (a :class:`~zennit_ext.layers.MatMul`).

    Inputs ``A`` (N, H, L, S) and ``v`` (N, H, S, d); output (N, H, L, d). A distinct type so
    that a composite can hold ``A`` constant (CP-LRP) while other products share uniformly.
    """


class StreamSum(Sum):
    """A residual add of a transformer-style block (``x + f(x)`` on the signed stream).

    Zennit's :class:`~zennit.layer.Sum` over the stacked terms (…, 2), a type of its own so
    that NRM's composite can share its relevance by the terms' absolute contributions (both
    terms are signed, where proportional shares exceed 1 and turn negative); LRP composites
    treat it as any ``Sum``.
    """


class EmbeddingSum(Sum):
    """The addition of position (and token-type) embeddings to a token stream.

    Zennit's :class:`~zennit.layer.Sum` over the stacked terms (…, n), the stream first. LRP
    composites share relevance proportionally (the embeddings absorb their share, like a bias);
    NRM, which lets no bias absorb relevance, passes all of it to the stream.
    """


class TokenConcat(nn.Module):
    """``torch.cat([token, x], dim=1)``: a learned token (ViT's class token) put before ``x``.

    ``forward(x, token)`` with ``x`` (N, T, D) and ``token`` (N, k, D); output (N, k + T, D).
    The stream ``x`` is the first argument, so a Zennit rule sees it as the module's input;
    the relevance at the token's positions goes to the parameter (LRP: absorbed; NRM counts it
    as stopped there).
    """

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The token's rows, then ``x``'s, along dim 1."""
        return torch.cat([token, x], dim=1)


class GridPad(nn.Module):
    """Zero padding of a (…, H, W, C) map to even H and W (Swin's patch merging).

    Relevance at a copied entry goes back to it; the padded entries have no input entry, so
    NRM counts the relevance that reaches them as stopped at this module (LRP rules that
    weigh by the input give them none).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, H, W, C) → (…, H + H mod 2, W + W mod 2, C), zeros appended."""
        height, width = x.shape[-3:-1]
        return F.pad(x, (0, 0, 0, width % 2, 0, height % 2))


class AttentionProjection(nn.Linear):
    """A q, k or v projection of attention: an ``nn.Linear`` (a type of its own, so that a
    composite's ``layer_map`` can give the projections a rule of their own)."""


def shared_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> AttentionProjection:
    """An ``nn.Linear`` whose parameters share memory with ``weight`` and ``bias`` (views).

    Parameters
    ----------
    weight : torch.Tensor
        (out_features, in_features), e.g. a slice of ``in_proj_weight``.
    bias : torch.Tensor, optional
        (out_features,).

    Returns
    -------
    AttentionProjection
        On the device and with the dtype of ``weight``; no memory is allocated.
    """
    linear = AttentionProjection(
        weight.shape[1], weight.shape[0], bias=bias is not None, device="meta"
    )
    linear.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
    return linear


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask (True = not allowed) as −inf/0, a float mask as given."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _merged_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``attn_mask`` (L, S) or (N·H, L, S) plus ``key_padding_mask`` (N, S), broadcastable to
    the scores (N, H, L, S)."""
    attn = _additive_mask(attn_mask, dtype)
    padding = _additive_mask(key_padding_mask, dtype)
    if attn is not None and attn.dim() == 3:
        attn = attn.view(batch, heads, *attn.shape[-2:])
    if padding is not None:
        padding = padding.view(batch, 1, 1, -1)
        return padding if attn is None else attn + padding
    return attn


def explicit_attention_forward(
    self: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` through the canonizer's child modules.

    ``self`` is the ``nn.MultiheadAttention`` (bound as its ``forward``); the arguments and
    the returned ``(output, weights)`` are those of ``nn.MultiheadAttention.forward``. A
    float mask is added to the scores (its share of relevance stays with the scores; −inf
    entries get none); ``is_causal`` is a hint that ``attn_mask`` is causal, as in torch.
    """
    batched = query.dim() == 3
    if not batched:
        query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    q = self.canonizer_q(query)
    k = self.canonizer_k(key)
    v = self.canonizer_v(value)
    batch, length, embed = q.shape
    heads = self.num_heads
    q = q.view(batch, length, heads, -1).transpose(1, 2)
    k = k.view(batch, k.shape[1], heads, -1).transpose(1, 2)
    v = v.view(batch, v.shape[1], heads, -1).transpose(1, 2)
    scores = self.canonizer_scores(q, k.transpose(-2, -1))
    mask = _merged_mask(attn_mask, key_padding_mask, batch, heads, scores.dtype)
    if mask is not None:
        scores = scores + mask
    weights = self.canonizer_dropout(self.canonizer_softmax(scores))
    output = self.canonizer_weighting(weights, v).transpose(1, 2).reshape(batch, length, embed)
    output = self.out_proj(output)
    if not batched:
        output = output.squeeze(0)
    elif not self.batch_first:
        output = output.transpose(0, 1)
    if not need_weights:
        return output, None
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return output, weights if batched else weights.squeeze(0)
