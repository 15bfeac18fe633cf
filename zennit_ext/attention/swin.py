"""Canonizers for torchvision's Swin Transformer (V1 and V2) and the modules they attach.

torchvision computes Swin's windowed attention in one function (``shifted_window_attention``)
and the residual adds of its blocks in ``forward``; module hooks see neither. While a
composite is registered, :class:`SwinCanonizer` overloads the ``forward`` of

- ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2``: padding, cyclic shift and the
  window partition stay reshuffles; the projections ``q``, ``k``, ``v`` become
  ``nn.Linear`` modules sharing the ``qkv`` weights (V2's ``k`` has no bias, as in
  torchvision), the scores ``q kᵀ`` an :class:`~zennit_ext.attention.modules.AttentionScores`,
  the relative position bias an additive term of the scores through a
  :class:`zennit.layer.Sum` (it takes its share of relevance, like a bias), then
  ``nn.Softmax`` and the weighting ``A v``
  (:class:`~zennit_ext.attention.modules.AttentionWeighting`). V2's cosine attention
  normalizes ``q`` and ``k`` by :class:`CosineNormalize` (the logit scale goes with ``q``).
  The shift mask (−100 between regions that the cyclic shift made neighbours) is added to the
  scores outside any module, so its share stays with the scores, as torchvision computes it;
- ``SwinTransformerBlock`` and ``SwinTransformerBlockV2``: both residual adds become ``Sum``.

- ``PatchMerging`` and ``PatchMergingV2``: the zero padding of an odd map through a
  :class:`~zennit_ext.attention.modules.GridPad` (NRM counts the relevance that reaches the
  padding as stopped there); the strided slices and the concatenation stay reshuffles.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from zennit.layer import Sum

from zennit_ext.attention.canonizers import _trained_like
from zennit_ext.attention.modules import (
    AttentionScores,
    AttentionWeighting,
    GridPad,
    StreamSum,
    shared_linear,
)
from zennit_ext.canonizers.core import AtomicAttributeCanonizer

__all__ = ["CosineNormalize", "SwinCanonizer", "shift_mask"]


class CosineNormalize(nn.Module):
    """``x / ‖x‖₂`` along the last axis, times ``exp(min(logit_scale, log 100))`` if given.

    Swin V2's cosine attention (Liu et al., "Swin Transformer V2: Scaling Up Capacity and
    Resolution", CVPR 2022, arXiv:2111.09883) normalizes queries and keys; the clamped,
    exponentiated per-head logit scale multiplies the scores (here: the queries). With the
    norm held constant, as the LN rule holds the standard deviation of LayerNorm constant
    (AttnLRP, arXiv:2402.05602, section 3.3.2), the map is diagonal and linear without bias:
    the identity rule (Zennit's ``Pass``) explains it exactly.

    Parameters
    ----------
    logit_scale : torch.nn.Parameter, optional
        (heads, 1, 1) for inputs (N, heads, L, d); the attention's own parameter (shared).
    """

    def __init__(self, logit_scale: nn.Parameter | None = None) -> None:
        super().__init__()
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalized (and scaled) ``x``, shaped like ``x``: (N, heads, L, d)."""
        y = F.normalize(x, dim=-1)
        if self.logit_scale is None:
            return y
        return y * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()


def _swin_types() -> dict[str, type]:
    from torchvision.models import swin_transformer as swin

    return {
        "attention": swin.ShiftedWindowAttention,
        "attention_v2": swin.ShiftedWindowAttentionV2,
        "block": swin.SwinTransformerBlock,
        "block_v2": swin.SwinTransformerBlockV2,
        "merging": swin.PatchMerging,
        "merging_v2": swin.PatchMergingV2,
    }


def _region_ids(length: int, window: int, shift: int) -> torch.Tensor:
    """Region of every position along one axis after the cyclic shift: 0, 1 or 2."""
    index = torch.arange(length)
    return (index >= length - window).long() + (index >= length - shift).long()


def shift_mask(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """The additive mask of shifted-window attention: −100 between positions of different
    regions (neighbours only through the cyclic shift), 0 within a region.

    Parameters
    ----------
    height, width : int
        The padded feature size (multiples of the window size).
    window, shift : (int, int)
        Window size and shift along (height, width).

    Returns
    -------
    torch.Tensor
        (windows, window_h · window_w, window_h · window_w), float32, windows in row-major
        order as the partition.
    """
    rows = _region_ids(height, window[0], shift[0])
    cols = _region_ids(width, window[1], shift[1])
    ids = (rows[:, None] * 3 + cols[None, :]).view(1, height, width, 1)
    ids = _partition(ids, window).squeeze(-1)  # (windows, Wh·Ww)
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


def _partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) → (B · windows, Wh · Ww, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, channels).transpose(2, 3)
    return x.reshape(-1, wh * ww, channels)


def _merge_windows(
    x: torch.Tensor, batch: int, size: tuple[int, int], window: tuple[int, int]
) -> torch.Tensor:
    """(B · windows, Wh · Ww, C) → (B, H, W, C): inverse of :func:`_partition`."""
    (height, width), (wh, ww) = size, window
    x = x.view(batch, height // wh, width // ww, wh, ww, x.shape[-1]).transpose(2, 3)
    return x.reshape(batch, height, width, -1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, C) → (N, heads, L, C / heads)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def swin_attention_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``ShiftedWindowAttention(V2).forward`` through the canonizer's modules.

    ``self`` is the attention (bound as its ``forward``); ``x`` (B, H, W, C) → (B, H, W, C).
    """
    batch, height, width, channels = x.shape
    window = (self.window_size[0], self.window_size[1])
    x = F.pad(x, (0, 0, 0, -width % window[1], 0, -height % window[0]))
    size = (x.shape[1], x.shape[2])
    shift = (
        self.shift_size[0] if window[0] < size[0] else 0,
        self.shift_size[1] if window[1] < size[1] else 0,
    )
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = _partition(x, window)
    q, k, v = (
        _heads(projection(windows), self.num_heads)
        for projection in (self.canonizer_q, self.canonizer_k, self.canonizer_v)
    )
    if hasattr(self, "canonizer_normalize_q"):
        q, k = self.canonizer_normalize_q(q), self.canonizer_normalize_k(k)
    scores = self.canonizer_scores(q, k.transpose(-2, -1))
    with torch.no_grad():  # a function of parameters only: its share of relevance is absorbed
        bias = self.get_relative_position_bias().to(scores.dtype)
    scores = self.canonizer_bias_sum(torch.stack([scores, bias.expand_as(scores)], dim=-1))
    if sum(shift) > 0:
        mask = shift_mask(size[0], size[1], window, shift).to(scores)  # (windows, L, L)
        length = scores.shape[-1]
        scores = scores.view(batch, -1, self.num_heads, length, length) + mask[None, :, None]
        scores = scores.view(-1, self.num_heads, length, length)
    weights = self.canonizer_attention_dropout(self.canonizer_softmax(scores))
    out = self.canonizer_weighting(weights, v).transpose(1, 2).reshape(windows.shape)
    out = self.canonizer_dropout(self.proj(out))
    x = _merge_windows(out, batch, size, window)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


def swin_block_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``SwinTransformerBlock(V2).forward`` with both residual adds through ``Sum`` modules.

    V1 normalizes before the attention and the MLP, V2 after them; (B, H, W, C) in and out.
    """
    post_norm = self.canonizer_post_norm
    y = self.norm1(self.attn(x)) if post_norm else self.attn(self.norm1(x))
    x = self.canonizer_sum_attention(torch.stack([x, self.stochastic_depth(y)], dim=-1))
    y = self.norm2(self.mlp(x)) if post_norm else self.mlp(self.norm2(x))
    return self.canonizer_sum_mlp(torch.stack([x, self.stochastic_depth(y)], dim=-1))


def patch_merging_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``PatchMerging(V2).forward`` with the zero padding of odd maps through
    ``canonizer_pad`` (a :class:`GridPad`); (…, H, W, C) in, (…, ⌈H/2⌉, ⌈W/2⌉, 2C) out.

    V1 normalizes before its reduction, so padded entries are nonzero there and a rule that
    passes relevance elementwise (NRM's on ``LayerNorm``) sends some back to the padding: the
    module makes that visible (NRM reports it as stopped) instead of losing it in ``F.pad``.
    """
    x = self.canonizer_pad(x)
    parts = (x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :])
    x = torch.cat([*parts, x[..., 1::2, 1::2, :]], -1)  # (…, H/2, W/2, 4C)
    if self.canonizer_norm_first:
        return self.reduction(self.norm(x))
    return self.norm(self.reduction(x))


def _attention_attributes(module: Any, v2: bool) -> dict[str, Any]:
    channels = module.proj.in_features
    weight, bias = module.qkv.weight, module.qkv.bias
    weights = (weight[:channels], weight[channels:-channels], weight[-channels:])
    biases: tuple = (None,) * 3
    if bias is not None:
        biases = (bias[:channels], None if v2 else bias[channels:-channels], bias[-channels:])
    q, k, v = (shared_linear(w, b) for w, b in zip(weights, biases, strict=True))
    head_dim = channels // module.num_heads
    modules: dict[str, nn.Module] = {
        "canonizer_q": q,
        "canonizer_k": k,
        "canonizer_v": v,
        "canonizer_scores": AttentionScores(scale=None if v2 else head_dim**-0.5),
        "canonizer_bias_sum": Sum(),
        "canonizer_softmax": nn.Softmax(dim=-1),
        "canonizer_attention_dropout": nn.Dropout(module.attention_dropout),
        "canonizer_weighting": AttentionWeighting(),
        "canonizer_dropout": nn.Dropout(module.dropout),
    }
    if v2:
        modules["canonizer_normalize_q"] = CosineNormalize(module.logit_scale)
        modules["canonizer_normalize_k"] = CosineNormalize()
    attributes: dict[str, Any] = {
        key: _trained_like(value, module) for key, value in modules.items()
    }
    attributes["forward"] = swin_attention_forward.__get__(module)
    return attributes


class SwinCanonizer(AtomicAttributeCanonizer):
    """torchvision's Swin Transformer V1 and V2: explicit windowed attention, ``Sum`` residuals.

    Attaches to every ``ShiftedWindowAttention(V2)`` the projections ``canonizer_q/k/v``
    (sharing the ``qkv`` weights), ``canonizer_scores``, ``canonizer_bias_sum`` (scores +
    relative position bias), ``canonizer_softmax``, ``canonizer_attention_dropout``,
    ``canonizer_weighting`` and ``canonizer_dropout`` (V2 also ``canonizer_normalize_q/k``,
    :class:`CosineNormalize`); the output projection is the attention's own ``proj``. Every
    ``SwinTransformerBlock(V2)`` gets ``canonizer_sum_attention`` and ``canonizer_sum_mlp``,
    every ``PatchMerging(V2)`` ``canonizer_pad`` (:func:`patch_merging_forward`).
    Outputs are unchanged (up to rounding: the ``1/√d`` and the logit scale multiply after
    respectively before the product); removal restores the model.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict | None:
        if not type(module).__module__.startswith("torchvision.models.swin"):
            return None
        types = _swin_types()
        kind = type(module)
        if kind in (types["attention"], types["attention_v2"]):
            return _attention_attributes(module, v2=kind is types["attention_v2"])
        if kind in (types["block"], types["block_v2"]):
            return {
                "forward": swin_block_forward.__get__(module),
                "canonizer_post_norm": kind is types["block_v2"],
                "canonizer_sum_attention": StreamSum(),
                "canonizer_sum_mlp": StreamSum(),
            }
        if kind in (types["merging"], types["merging_v2"]):
            return {
                "forward": patch_merging_forward.__get__(module),
                "canonizer_norm_first": kind is types["merging"],
                "canonizer_pad": GridPad(),
            }
        return None
