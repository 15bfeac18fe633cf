"""Hugging Face BERT and ViT (``transformers``) for AttnLRP and CP-LRP.

transformers computes the eager attention (``q kᵀ``, softmax, dropout, ``A v``) and the
residual adds of its blocks as expressions in ``forward``; module hooks see none of them.
While a composite is registered, :class:`HuggingFaceCanonizer` overloads the ``forward`` of

- ``BertSelfAttention`` (also its SDPA subclass) and ``ViTSelfAttention``: ``query``,
  ``key``, ``value`` are the module's own ``nn.Linear``; the scores are an
  :class:`~zennit_ext.attention.modules.AttentionScores` (scale ``1/√d``), then
  ``nn.Softmax``, the module's dropout and the weighting
  :class:`~zennit_ext.attention.modules.AttentionWeighting`. The additive attention mask is
  added to the scores outside any module (its share stays with the scores); a head mask
  multiplies the attention weights (0/1 entries are explained exactly: 0 passes nothing). The
  module still returns ``(context, weights)`` (``weights`` None where transformers returns
  None); no rule is attached to a module that returns a tuple;
- ``BertSelfOutput``, ``BertOutput``: ``LayerNorm(hidden + input)`` with the add a
  :class:`zennit.layer.Sum`; ``ViTLayer`` (first residual add) and ``ViTOutput`` (second);
- ``BertEmbeddings``: ``inputs_embeds + token_type + position`` through one ``Sum`` (the
  tables take their proportional share, like biases); ``ViTEmbeddings``: the class token
  concatenated (a parameter: its relevance is absorbed), the position embedding added
  through a ``Sum``.

Activations: transformers' element-wise activation modules (``GELUActivation`` and kin,
:class:`HFActivation`) get the identity rule; the pooler's ``nn.Tanh`` is Zennit's. The
inputs of BERT are token ids: the explained input is ``inputs_embeds``; :class:`Logits`
makes a model that takes it (or ``pixel_values``) and returns the logits as a tensor, and
the relevance of a token is the sum of its embedding's relevance::

    embeddings = model.get_input_embeddings()(input_ids)
    with Gradient(Logits(model, "inputs_embeds", attention_mask=mask), AttnLRP()) as attr:
        logits, relevance = attr(embeddings, one_hot)
    per_token = relevance.sum(-1)  # (N, L)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zennit_ext.attention.canonizers import _trained_like
from zennit_ext.attention.modules import (
    AttentionScores,
    AttentionWeighting,
    EmbeddingSum,
    StreamSum,
    TokenConcat,
)
from zennit_ext.canonizers.core import AtomicAttributeCanonizer

__all__ = ["HFActivation", "HuggingFaceCanonizer", "Logits"]


class _NamedTypes(type):
    """``isinstance`` by module and class name, so that transformers need not be imported."""

    module: str
    names: frozenset[str]

    def __instancecheck__(cls, instance: Any) -> bool:
        kind = type(instance)
        return kind.__module__ == cls.module and kind.__name__ in cls.names


class HFActivation(metaclass=_NamedTypes):
    """transformers' element-wise activation modules (``isinstance`` matches them by name)."""

    module = "transformers.activations"
    names = frozenset(
        {
            "GELUActivation",
            "NewGELUActivation",
            "FastGELUActivation",
            "QuickGELUActivation",
            "AccurateGELUActivation",
            "ClippedGELUActivation",
            "GELUTanh",
            "PytorchGELUTanh",
            "SiLUActivation",
            "MishActivation",
            "LinearActivation",
        }
    )


class Logits(nn.Module):
    """A transformers model as a module from one float input to its logits (a tensor).

    Zennit's attributors call ``model(input)`` and need a tensor back; transformers' models
    take keyword inputs and return a ``ModelOutput``.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. ``BertForSequenceClassification`` or ``ViTForImageClassification``.
    input_name : str
        The keyword the input goes to: ``'inputs_embeds'`` (N, L, hidden) for text models,
        ``'pixel_values'`` (N, C, H, W) for vision models.
    **fixed : Any
        Further keyword inputs passed unchanged on every call (``attention_mask``,
        ``token_type_ids``, …).
    """

    def __init__(self, model: nn.Module, input_name: str = "inputs_embeds", **fixed: Any) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.fixed = fixed

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the logits, (N, classes)."""
        output = self.model(**{self.input_name: inputs}, **self.fixed)
        return output.logits if hasattr(output, "logits") else output[0]


def _hf_types() -> dict[str, tuple[type, ...]]:
    from transformers.models.bert import modeling_bert as bert
    from transformers.models.vit import modeling_vit as vit

    return {
        "attention": (bert.BertSelfAttention, vit.ViTSelfAttention),
        "residual_norm": (bert.BertSelfOutput, bert.BertOutput),
        "vit_output": (vit.ViTOutput,),
        "vit_layer": (vit.ViTLayer,),
        "bert_embeddings": (bert.BertEmbeddings,),
        "vit_embeddings": (vit.ViTEmbeddings,),
    }


def self_attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager self-attention of BERT or ViT through the canonizer's modules.

    ``hidden_states`` (N, L, hidden) → ``(context (N, L, hidden), weights (N, heads, L, L)
    or None)``. ViT passes its head mask as the second argument (``attention_mask``).
    """
    if encoder_hidden_states is not None or past_key_values is not None:
        raise NotImplementedError(
            f"{type(self).__name__}: cross-attention and key/value caches are not canonized"
        )
    if self.canonizer_head_mask_second:
        attention_mask, head_mask = None, attention_mask
    batch, length, _ = hidden_states.shape
    q, k, v = (
        projection(hidden_states)
        .view(batch, length, self.num_attention_heads, self.attention_head_size)
        .transpose(1, 2)
        for projection in (self.query, self.key, self.value)
    )
    scores = self.canonizer_scores(q, k.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = self.canonizer_dropout(self.canonizer_softmax(scores))
    if head_mask is not None:
        weights = weights * head_mask
    context = self.canonizer_weighting(weights, v).transpose(1, 2).reshape(batch, length, -1)
    returns = self.canonizer_returns_weights or (  # BERT's SDPA falls back to eager then
        not self.canonizer_head_mask_second
        and (kwargs.get("output_attentions") or head_mask is not None)
    )
    return context, weights if returns else None


def residual_norm_forward(
    self: Any, hidden_states: torch.Tensor, input_tensor: torch.Tensor
) -> torch.Tensor:
    """``LayerNorm(dropout(dense(hidden)) + input)`` with the add a ``Sum``; (N, L, hidden)."""
    hidden = self.dropout(self.dense(hidden_states))
    return self.LayerNorm(self.canonizer_sum(torch.stack([hidden, input_tensor], dim=-1)))


def vit_output_forward(
    self: Any, hidden_states: torch.Tensor, input_tensor: torch.Tensor
) -> torch.Tensor:
    """``dropout(dense(hidden)) + input`` with the add a ``Sum``; (N, L, hidden)."""
    hidden = self.dropout(self.dense(hidden_states))
    return self.canonizer_sum(torch.stack([hidden, input_tensor], dim=-1))


def vit_layer_forward(
    self: Any, hidden_states: torch.Tensor, head_mask: Any = None, **kwargs: Any
) -> torch.Tensor:
    """``ViTLayer.forward`` with the first residual add a ``Sum`` (the second is
    ``ViTOutput``'s); (N, L, hidden) in and out."""
    attention = self.attention(self.layernorm_before(hidden_states), head_mask)
    if isinstance(attention, tuple):
        attention = attention[0]
    hidden_states = self.canonizer_sum(torch.stack([attention, hidden_states], dim=-1))
    return self.output(self.intermediate(self.layernorm_after(hidden_states)), hidden_states)


def bert_embeddings_forward(
    self: Any,
    input_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    past_key_values_length: int = 0,
) -> torch.Tensor:
    """``BertEmbeddings.forward`` with the three embeddings added by one ``Sum``;
    → (N, L, hidden)."""
    if inputs_embeds is None:
        inputs_embeds = self.word_embeddings(input_ids)
    batch, length = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = self.position_ids[
            :, past_key_values_length : past_key_values_length + length
        ]
    if token_type_ids is None:
        token_type_ids = self.token_type_ids[:, :length].expand(batch, length)
    table = self.token_type_embeddings.weight
    terms = [inputs_embeds, nn.functional.embedding(token_type_ids, table).to(inputs_embeds)]
    if self.position_embedding_type == "absolute":
        position = nn.functional.embedding(position_ids, self.position_embeddings.weight)
        terms.append(position.to(inputs_embeds).expand_as(inputs_embeds))
    embeddings = self.canonizer_sum(torch.stack(terms, dim=-1))
    return self.dropout(self.LayerNorm(embeddings))


def vit_embeddings_forward(
    self: Any,
    pixel_values: torch.Tensor,
    bool_masked_pos: torch.Tensor | None = None,
    interpolate_pos_encoding: bool = False,
) -> torch.Tensor:
    """``ViTEmbeddings.forward``: class token concatenated, position embedding added by a
    ``Sum``; (N, C, H, W) → (N, 1 + patches, hidden)."""
    if bool_masked_pos is not None:
        raise NotImplementedError("ViTEmbeddings: bool_masked_pos is not canonized")
    batch, _, height, width = pixel_values.shape
    embeddings = self.patch_embeddings(
        pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
    )
    embeddings = self.canonizer_class_token(embeddings, self.cls_token.expand(batch, -1, -1))
    if interpolate_pos_encoding:
        position = self.interpolate_pos_encoding(embeddings, height, width)
    else:
        position = self.position_embeddings
    position = position.to(embeddings).expand_as(embeddings)
    return self.dropout(self.canonizer_sum(torch.stack([embeddings, position], dim=-1)))


def _attention_attributes(module: Any) -> dict[str, Any]:
    position_type = getattr(module, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise NotImplementedError(
            f"HuggingFaceCanonizer: position_embedding_type={position_type!r} of "
            f"{type(module).__name__} is not canonized (only 'absolute')"
        )
    is_vit = type(module).__name__ == "ViTSelfAttention"
    config = getattr(module, "config", None)
    eager = "Sdpa" not in type(module).__name__ and (
        config is None or getattr(config, "_attn_implementation", "eager") == "eager"
    )
    dropout = getattr(module, "dropout", None)  # BERT: a module; ViT: a probability
    probability = dropout.p if isinstance(dropout, nn.Dropout) else module.dropout_prob
    modules: dict[str, nn.Module] = {
        "canonizer_scores": AttentionScores(scale=module.attention_head_size**-0.5),
        "canonizer_softmax": nn.Softmax(dim=-1),
        "canonizer_dropout": nn.Dropout(probability),
        "canonizer_weighting": AttentionWeighting(),
    }
    attributes: dict[str, Any] = {
        key: _trained_like(value, module) for key, value in modules.items()
    }
    attributes.update(
        canonizer_head_mask_second=is_vit,
        canonizer_returns_weights=eager,
        forward=self_attention_forward.__get__(module),
    )
    return attributes


class HuggingFaceCanonizer(AtomicAttributeCanonizer):
    """transformers' BERT and ViT: explicit eager attention, ``Sum`` residuals and embeddings.

    See the module docstring for what each block gets. Outputs are unchanged up to rounding
    (ViT's eager softmax runs in float32 in transformers, here in the model's dtype); removal
    restores the model. Matches the exact BERT and ViT classes (and BERT's SDPA subclass);
    copies such as RoBERTa's are other classes.

    Raises
    ------
    NotImplementedError
        On apply, for relative position embeddings; on the forward pass, for cross-attention,
        key/value caches or ``bool_masked_pos``.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict | None:
        if not type(module).__module__.startswith("transformers.models."):
            return None
        types = _hf_types()
        if isinstance(module, types["attention"]):
            return _attention_attributes(module)
        forwards = {
            "residual_norm": residual_norm_forward,
            "vit_output": vit_output_forward,
            "vit_layer": vit_layer_forward,
            "bert_embeddings": bert_embeddings_forward,
            "vit_embeddings": vit_embeddings_forward,
        }
        for key, forward in forwards.items():
            if type(module) in types[key]:
                embeddings = key.endswith("embeddings")
                attributes = {
                    "forward": forward.__get__(module),
                    "canonizer_sum": EmbeddingSum() if embeddings else StreamSum(),
                }
                if key == "vit_embeddings":
                    attributes["canonizer_class_token"] = TokenConcat()
                return attributes
        return None
