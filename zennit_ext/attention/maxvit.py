"""A canonizer for torchvision's MaxViT: explicit relative-position attention, ``Sum`` residuals.

MaxViT (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022, arXiv:2204.01697)
alternates an ``MBConv`` (a convolution block with squeeze-and-excitation and a residual
add), window attention and grid attention (``PartitionAttentionLayer``: partition
reshuffles, attention and MLP each with a residual add). While a composite is registered,
:class:`MaxViTCanonizer` overloads the ``forward`` of

- ``MBConv``: the add ``proj(x) + stochastic_depth(layers(x))`` becomes a
  :class:`zennit.layer.Sum`; the squeeze-and-excitation gate inside is the business of
  ``zennit_ext.canonizers``' ``SqueezeExcitationCanonizer`` (chosen by
  :class:`~zennit_ext.canonizers.auto.AutoCanonizer`);
- ``PartitionAttentionLayer``: both residual adds become ``Sum`` (``WindowPartition``,
  ``WindowDepartition`` and ``SwapAxes`` are reshuffles and need nothing);
- ``RelativePositionalMultiHeadAttention``: the scores ``q kᵀ`` (scale ``feat_dim^-1/2``
  as torchvision) an :class:`~zennit_ext.attention.modules.AttentionScores`, the relative
  position bias added through a ``Sum`` (its share is absorbed, like a bias's),
  ``nn.Softmax`` and the weighting ``A v``
  (:class:`~zennit_ext.attention.modules.AttentionWeighting`); ``to_qkv`` and ``merge``
  are the attention's own ``nn.Linear`` modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.layer import Sum

from zennit_ext.attention.canonizers import _trained_like
from zennit_ext.attention.modules import AttentionScores, AttentionWeighting, StreamSum
from zennit_ext.canonizers.core import AtomicAttributeCanonizer

__all__ = ["MaxViTCanonizer"]


def _maxvit_types() -> tuple[type, type, type]:
    from torchvision.models import maxvit

    return (
        maxvit.MBConv,
        maxvit.PartitionAttentionLayer,
        maxvit.RelativePositionalMultiHeadAttention,
    )


def mbconv_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``MBConv.forward`` with the residual add through a ``Sum``; (B, C, H, W) in,
    (B, C', H / stride, W / stride) out."""
    branch = self.stochastic_depth(self.layers(x))
    return self.canonizer_sum(torch.stack([self.proj(x), branch], dim=-1))


def partition_attention_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``PartitionAttentionLayer.forward`` with both residual adds through ``Sum`` modules;
    (B, C, H, W) in and out."""
    gh, gw = self.grid_size[0] // self.p, self.grid_size[1] // self.p
    if self.grid_size[0] % self.p or self.grid_size[1] % self.p:
        raise ValueError(
            f"grid size {self.grid_size} is not divisible by the partition size {self.p}"
        )
    x = self.partition_swap(self.partition_op(x, self.p))
    y = self.stochastic_dropout(self.attn_layer(x))
    x = self.canonizer_sum_attention(torch.stack([x, y], dim=-1))
    y = self.stochastic_dropout(self.mlp_layer(x))
    x = self.canonizer_sum_mlp(torch.stack([x, y], dim=-1))
    return self.departition_op(self.departition_swap(x), self.p, gh, gw)


def relative_attention_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``RelativePositionalMultiHeadAttention.forward`` through the canonizer's modules;
    (B, G, P, D) in and out."""
    batch, groups, length, _ = x.shape
    q, k, v = (
        t.reshape(batch, groups, length, self.n_heads, self.head_dim).transpose(2, 3)
        for t in torch.chunk(self.to_qkv(x), 3, dim=-1)
    )
    scores = self.canonizer_scores(q, k.transpose(-2, -1))  # (B, G, heads, P, P)
    with torch.no_grad():  # a function of parameters only: its share of relevance is absorbed
        bias = self.get_relative_positional_bias().to(scores.dtype)
    scores = self.canonizer_bias_sum(torch.stack([scores, bias.expand_as(scores)], dim=-1))
    weights = self.canonizer_softmax(scores)
    out = self.canonizer_weighting(weights, v).transpose(2, 3).reshape(batch, groups, length, -1)
    return self.merge(out)


class MaxViTCanonizer(AtomicAttributeCanonizer):
    """torchvision's MaxViT: ``Sum`` residuals and explicit relative-position attention.

    Attaches ``canonizer_sum`` to every ``MBConv``; ``canonizer_sum_attention`` and
    ``canonizer_sum_mlp`` to every ``PartitionAttentionLayer``; ``canonizer_scores``,
    ``canonizer_bias_sum``, ``canonizer_softmax`` and ``canonizer_weighting`` to every
    ``RelativePositionalMultiHeadAttention``. Outputs are unchanged up to rounding (the scale
    multiplies the product instead of ``k``); removal restores the model. The
    squeeze-and-excitation gates need ``SqueezeExcitationCanonizer`` as well (``'auto'``
    applies both).
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: Any) -> dict | None:
        if type(module).__module__ != "torchvision.models.maxvit":
            return None
        mbconv, partition, attention = _maxvit_types()
        kind = type(module)
        if kind is mbconv:
            return {"forward": mbconv_forward.__get__(module), "canonizer_sum": Sum()}
        if kind is partition:
            return {
                "forward": partition_attention_forward.__get__(module),
                "canonizer_sum_attention": StreamSum(),
                "canonizer_sum_mlp": StreamSum(),
            }
        if kind is attention:
            modules: dict[str, nn.Module] = {
                "canonizer_scores": AttentionScores(scale=module.scale_factor),
                "canonizer_bias_sum": Sum(),
                "canonizer_softmax": nn.Softmax(dim=-1),
                "canonizer_weighting": AttentionWeighting(),
            }
            attributes: dict[str, Any] = {
                key: _trained_like(value, module) for key, value in modules.items()
            }
            attributes["forward"] = relative_attention_forward.__get__(module)
            return attributes
        return None
