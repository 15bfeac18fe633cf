"""AttnLRP and CP-LRP on Hugging Face BERT and ViT (eager and SDPA attention, built from small
configs): canonized outputs, restoration, relevance per token, conservation without biases."""

from __future__ import annotations

import pytest
import torch
from attention_common import TINY, check_outputs_and_restoration, explain, zero_parameters
from torch import nn

from zennit_ext import CPLRP, AttnLRP

transformers = pytest.importorskip("transformers")

from zennit_ext.attention.huggingface import Logits  # noqa: E402

CLASSES = 3
BIASES = ("bias", "position_embeddings.weight", "token_type_embeddings.weight", "cls_token")
BIASES_VIT = (*BIASES, "embeddings.position_embeddings")


def small_bert(attention: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=CLASSES,
        attn_implementation=attention,
    )
    return transformers.BertForSequenceClassification(config).double().eval()


def small_vit(attention: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=CLASSES,
        attn_implementation=attention,
    )
    return transformers.ViTForImageClassification(config).double().eval()


def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -2:] = 0
    return ids, mask


def bert_input(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    ids, mask = tokens()
    embeddings = model.get_input_embeddings()(ids).detach()
    return Logits(model, "inputs_embeds", attention_mask=mask), embeddings


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("method", [AttnLRP, CPLRP])
def test_bert_outputs_equal_and_the_model_is_restored(method, attention):
    wrapped, embeddings = bert_input(small_bert(attention))
    check_outputs_and_restoration(wrapped, method, embeddings)
    ids, mask = tokens()  # called with token ids, without the wrapper, as users do
    model = wrapped.model
    reference = model(input_ids=ids, attention_mask=mask)
    composite = method()
    composite.register(model)
    try:
        output = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        composite.remove()
    torch.testing.assert_close(output.logits, reference.logits, rtol=1e-6, atol=1e-12)
    assert len(output.attentions) == 2 and output.attentions[0].shape == (2, 2, 7, 7)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("method", [AttnLRP, CPLRP])
def test_vit_outputs_equal_and_the_model_is_restored(method, attention):
    check_outputs_and_restoration(Logits(small_vit(attention), "pixel_values"), method, pixels())


def test_relevance_per_token_and_padding():
    wrapped, embeddings = bert_input(small_bert())
    _, relevance = explain(wrapped, AttnLRP(), embeddings, (0, 2), CLASSES)
    per_token = relevance.sum(-1)
    assert per_token.shape == (2, 7) and torch.isfinite(per_token).all()
    _, mask = tokens()  # padded tokens reach no other token, and the logits read token 0
    assert (per_token[mask == 0] == 0).all() and (per_token[mask == 1] != 0).all()


@pytest.mark.parametrize("build", ["bert", "vit"])
def test_cp_lrp_conserves_relevance_without_biases(build):
    if build == "bert":
        wrapped, x = bert_input(zero_parameters(small_bert(), BIASES))
        dims: tuple[int, ...] = (1, 2)
    else:
        wrapped, x = Logits(zero_parameters(small_vit(), BIASES_VIT), "pixel_values"), pixels()
        dims = (1, 2, 3)
    _, relevance = explain(
        wrapped, CPLRP(epsilon=TINY, stabilizer=TINY, gamma=None), x, (0, 2), CLASSES
    )
    torch.testing.assert_close(relevance.sum(dims), torch.ones(2).double(), atol=1e-8, rtol=0)


@pytest.mark.parametrize("build", ["bert", "vit"])
def test_attnlrp_relevance_is_finite_without_biases(build):
    if build == "bert":
        wrapped, x = bert_input(zero_parameters(small_bert(), BIASES))
    else:
        wrapped, x = Logits(zero_parameters(small_vit(), BIASES_VIT), "pixel_values"), pixels()
    _, relevance = explain(
        wrapped, AttnLRP(epsilon=TINY, stabilizer=TINY, gamma=None), x, (0, 2), CLASSES
    )
    assert torch.isfinite(relevance).all()


def test_relative_position_embeddings_are_refused():
    model = small_bert()
    attention = model.bert.encoder.layer[1].attention.self
    attention.position_embedding_type = "relative_key"
    with pytest.raises(NotImplementedError, match="relative_key"):
        AttnLRP().register(model)
    assert "forward" not in vars(model.bert.encoder.layer[0].attention.self)
