"""Canonizers that make torchvision's transformers explainable by module rules.

Each canonizer overloads ``forward`` of one block type (Zennit's
:class:`~zennit.canonizers.AttributeCanonizer`) and attaches the modules its rules need, for
the duration of a composite; outputs are unchanged and removal restores the model:

- :class:`MultiheadAttentionCanonizer`: ``nn.MultiheadAttention`` (fused
  ``F.multi_head_attention_forward``) as explicit projections, scores, softmax, weighting;
- :class:`ViTCanonizer`: torchvision's ViT, i.e. the attention above, the residual adds of
  ``EncoderBlock`` as :class:`~zennit_ext.attention.modules.StreamSum`, the position
  embedding added through an :class:`~zennit_ext.attention.modules.EmbeddingSum` (LRP: it
  takes its proportional share, like a bias), the class token concatenated through a
  :class:`~zennit_ext.attention.modules.TokenConcat` (a parameter: its relevance is absorbed);
- :class:`ConvNeXtCanonizer`: ConvNeXt's ``CNBlock`` (layer scale as
  :class:`~zennit_ext.layers.Scale`, residual add as ``Sum``);
- Swin, MaxViT and transformers' BERT/ViT: :mod:`.swin`, :mod:`.maxvit`, :mod:`.huggingface`;

:class:`zennit_ext.canonizers.AutoCanonizer` (``canonizers='auto'``) chooses them, with the CNN
canonizers, for the block types a model has.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from zennit_ext.attention.modules import (
    AttentionScores,
    AttentionWeighting,
    EmbeddingSum,
    StreamSum,
    TokenConcat,
    explicit_attention_forward,
    shared_linear,
)
from zennit_ext.canonizers.core import AtomicAttributeCanonizer, CanonizerGroup
from zennit_ext.layers import Scale

__all__ = [
    "MultiheadAttentionCanonizer",
    "ViTCanonizer",
    "ConvNeXtCanonizer",
    "is_canonized",
]


def is_canonized(module: nn.Module) -> bool:
    """Whether a canonizer has overloaded the module's ``forward`` (an instance attribute)."""
    return "forward" in vars(module)


def _trained_like(module: nn.Module, reference: nn.Module) -> nn.Module:
    return module.train(reference.training)


class MultiheadAttentionCanonizer(AtomicAttributeCanonizer):
    """``nn.MultiheadAttention`` as explicit modules (outputs unchanged).

    Attaches ``canonizer_q``, ``canonizer_k``, ``canonizer_v`` (``nn.Linear`` sharing the
    weights of ``in_proj_weight``/``q_proj_weight``… and ``in_proj_bias``),
    ``canonizer_scores`` (:class:`~zennit_ext.attention.modules.AttentionScores` with
    scale ``1/√d``), ``canonizer_softmax`` (``nn.Softmax(-1)``), ``canonizer_dropout`` and
    ``canonizer_weighting`` (:class:`~zennit_ext.attention.modules.AttentionWeighting`); the
    output projection is the attention's own ``out_proj``.

    Raises
    ------
    NotImplementedError
        On apply, for an attention with ``bias_k``/``bias_v`` or ``add_zero_attn``.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict | None:
        if not isinstance(module, nn.MultiheadAttention):
            return None
        if module.bias_k is not None or module.bias_v is not None or module.add_zero_attn:
            raise NotImplementedError(
                f"MultiheadAttentionCanonizer: {name!r} uses bias_k/bias_v or add_zero_attn, "
                "which the explicit attention does not implement"
            )
        embed = module.embed_dim
        bias = module.in_proj_bias
        biases = (None,) * 3 if bias is None else (bias[:embed], bias[embed:-embed], bias[-embed:])
        if module._qkv_same_embed_dim:
            weight = module.in_proj_weight
            weights = (weight[:embed], weight[embed:-embed], weight[-embed:])
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        q, k, v = (shared_linear(w, b) for w, b in zip(weights, biases, strict=True))
        modules = {
            "canonizer_q": q,
            "canonizer_k": k,
            "canonizer_v": v,
            "canonizer_scores": AttentionScores(scale=module.head_dim**-0.5),
            "canonizer_softmax": nn.Softmax(dim=-1),
            "canonizer_dropout": nn.Dropout(module.dropout),
            "canonizer_weighting": AttentionWeighting(),
        }
        attributes: dict[str, Any] = {
            key: _trained_like(value, module) for key, value in modules.items()
        }
        attributes["forward"] = explicit_attention_forward.__get__(module)
        return attributes


def _vit_types() -> tuple[type, type, type]:
    from torchvision.models.vision_transformer import Encoder, EncoderBlock, VisionTransformer

    return VisionTransformer, Encoder, EncoderBlock


class _ViTBlocksCanonizer(AtomicAttributeCanonizer):
    """torchvision ViT: residual adds and position embedding through ``Sum`` modules."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        vit, encoder, block = _vit_types()
        if type(module) is block:
            return {
                "forward": cls.block_forward.__get__(module),
                "canonizer_sum_attention": StreamSum(),
                "canonizer_sum_mlp": StreamSum(),
            }
        if type(module) is encoder:
            return {
                "forward": cls.encoder_forward.__get__(module),
                "canonizer_sum_position": EmbeddingSum(),
            }
        if type(module) is vit:
            return {
                "forward": cls.vit_forward.__get__(module),
                "canonizer_class_token": TokenConcat(),
            }
        return None

    @staticmethod
    def block_forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``EncoderBlock.forward`` with both residual adds through ``Sum`` modules."""
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = self.canonizer_sum_attention(torch.stack([input, x], dim=-1))
        y = self.mlp(self.ln_2(x))
        return self.canonizer_sum_mlp(torch.stack([x, y], dim=-1))

    @staticmethod
    def encoder_forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``Encoder.forward`` with the position embedding added through a ``Sum``."""
        position = self.pos_embedding.expand_as(input)
        input = self.canonizer_sum_position(torch.stack([input, position], dim=-1))
        return self.ln(self.layers(self.dropout(input)))

    @staticmethod
    def vit_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """``VisionTransformer.forward``: the class token (a parameter) is concatenated."""
        x = self._process_input(x)
        batch_class_token = self.class_token.expand(x.shape[0], -1, -1)
        x = self.canonizer_class_token(x, batch_class_token)
        x = self.encoder(x)
        return self.heads(x[:, 0])


class ViTCanonizer(CanonizerGroup):
    """torchvision's ``VisionTransformer``: explicit attention, ``Sum`` residuals and embedding
    (all or nothing)."""

    def __init__(self) -> None:
        super().__init__((MultiheadAttentionCanonizer(), _ViTBlocksCanonizer()))


class _CNBlockCanonizer(AtomicAttributeCanonizer):
    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        from torchvision.models.convnext import CNBlock

        if type(module) is not CNBlock:
            return None
        return {
            "forward": cls.forward.__get__(module),
            "canonizer_scale": Scale(cast(nn.Parameter, module.layer_scale)),
            "canonizer_sum": StreamSum(),
        }

    @staticmethod
    def forward(self: Any, input: torch.Tensor) -> torch.Tensor:
        """``CNBlock.forward`` with the layer scale a module and the residual add a ``Sum``."""
        result = self.stochastic_depth(self.canonizer_scale(self.block(input)))
        return self.canonizer_sum(torch.stack([input, result], dim=-1))


class ConvNeXtCanonizer(CanonizerGroup):
    """torchvision's ConvNeXt: ``CNBlock`` layer scale and residual add as modules."""

    def __init__(self) -> None:
        super().__init__((_CNBlockCanonizer(),))
