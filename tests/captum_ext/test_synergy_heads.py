"""Head-pair synergy: LayerSynergy with head_groups equals masking heads by hand (a 2-layer
BERT from transformers, and nn.MultiheadAttention through exposed_heads)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy.heads import exposed_heads, head_groups, head_output_layer

HEADS = 4


def masked_scores(forward, x, projection: nn.Linear, heads_off: tuple[int, ...], target: int):
    """The score at ``target`` with the features of ``heads_off`` set to 0 at the input of
    ``projection`` (a forward pre-hook, written independently of the synergy engine)."""
    width = projection.in_features

    def hook(module, args):
        (context,) = args
        keep = torch.ones(width, dtype=context.dtype)
        for head in heads_off:
            keep[head * (width // HEADS) : (head + 1) * (width // HEADS)] = 0
        return (context * keep,)

    handle = projection.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return forward(x)[:, target]
    finally:
        handle.remove()


def brute_force(forward, x, projection, target):
    """Δ_i, Δ_ij and S_ij of the heads by masking them (mode 'abs_mean')."""
    p = masked_scores(forward, x, projection, (), target)
    single = torch.stack(
        [
            (p - masked_scores(forward, x, projection, (i,), target)).abs().mean()
            for i in range(HEADS)
        ]
    )
    pair = torch.zeros(HEADS, HEADS, dtype=torch.float64)
    for i, j in itertools.combinations(range(HEADS), 2):
        d = (p - masked_scores(forward, x, projection, (i, j), target)).abs().mean()
        pair[i, j] = pair[j, i] = d
    synergy = pair - single[:, None] - single[None, :]
    synergy.fill_diagonal_(0)
    return single, synergy


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_bert_head_synergy_equals_masking_heads(attention):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation=attention,
    )
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(0, 50, (5, 6), generator=torch.Generator().manual_seed(1))

    def forward(x):
        return model(input_ids=x).logits

    name = "bert.encoder.layer.1.attention.self"
    layer = head_output_layer(model, name)
    assert layer is model.bert.encoder.layer[1].attention.output.dense
    mask = head_groups(model, name)
    assert mask.shape == (1, 1, 32) and mask.unique().tolist() == list(range(HEADS))
    result = LayerSynergy(forward, layer).compute(
        ids, target=2, layer_mask=mask, attribute_to_layer_input=True
    )
    single, synergy = brute_force(forward, ids, layer, 2)
    torch.testing.assert_close(result.importance.double(), single, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.synergy.double(), synergy, rtol=1e-9, atol=1e-12)
    z = LayerSynergy(forward, layer).attribute(
        ids, target=2, layer_mask=mask, attribute_to_layer_input=True
    )
    assert z.shape == (5, 6, 32) and torch.isfinite(z).all()


def test_multihead_attention_head_synergy_equals_masking_heads():
    torch.manual_seed(2)
    attention = nn.MultiheadAttention(16, HEADS, batch_first=True).double().eval()
    head = nn.Linear(16, 3).double()

    def forward(x):
        out, _ = attention(x, x, x)
        return head(out.mean(1))

    x = torch.randn(4, 5, 16, dtype=torch.float64)
    reference = forward(x)
    attention_projection = head_output_layer(nn.Sequential(attention), "0")
    with exposed_heads(attention) as projection:
        assert projection is attention_projection
        torch.testing.assert_close(forward(x), reference, rtol=0, atol=1e-12)
        result = LayerSynergy(forward, projection).compute(
            x, target=1, layer_mask=head_groups(attention), attribute_to_layer_input=True
        )
        single, synergy = brute_force(forward, x, projection, 1)
    torch.testing.assert_close(result.importance.double(), single, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.synergy.double(), synergy, rtol=1e-9, atol=1e-12)
    assert "forward" not in vars(attention) and not attention._forward_hooks
    assert isinstance(attention.out_proj, nn.Linear) and torch.equal(forward(x), reference)


def test_head_groups_errors():
    with pytest.raises(ValueError, match="num_heads is needed"):
        head_groups(nn.Linear(8, 8))
    assert head_groups(nn.Linear(8, 8), num_heads=2).tolist() == [[[0] * 4 + [1] * 4]]
    with pytest.raises(ValueError, match="divide 8"):
        head_groups(nn.Linear(8, 8), num_heads=3)
    with pytest.raises(TypeError, match="Conv2d"):
        head_groups(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="not a submodule"):
        head_groups(nn.Sequential(nn.Linear(8, 8)), "missing")
