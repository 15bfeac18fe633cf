"""AttnLRP and CP-LRP on torchvision's Swin Transformer V1 and V2: canonized outputs, model
restoration (also after an error), the shift mask, conservation on bias-free float64 copies."""

from __future__ import annotations

import pytest
import torch
import torchvision
from attention_common import (
    TINY,
    check_outputs_and_restoration,
    check_restored_after_failure,
    explain,
    relative_difference,
    zero_parameters,
)
from torch import nn
from torchvision.models import swin_transformer as swin

from zennit_ext import CPLRP, AttnLRP
from zennit_ext.attention.swin import SwinCanonizer, shift_mask


def small_swin(v2: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    extra = (
        {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
        if v2
        else {}
    )
    model = swin.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        stochastic_depth_prob=0.0,
        num_classes=5,
        **extra,
    )
    return model.double().eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Biases, LayerNorm shifts and relative position bias tables set to 0 (V2's continuous
    bias stays: CP-LRP gives the scores no relevance, so it cannot matter there)."""
    return zero_parameters(model, ("bias", "relative_position_bias_table"))


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size)).double()


@pytest.mark.parametrize("size", [36])  # 9² patches: the attention and patch merging pad
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("method", [AttnLRP, CPLRP])
def test_canonized_outputs_equal_and_the_model_is_restored(method, v2, size):
    check_outputs_and_restoration(small_swin(v2), method, images(size))


def test_shift_mask_equals_torchvision():
    """The shift mask through torchvision's own function: with zero weights and q = k = 0
    the attention output is the mean of v over the unmasked keys of each window."""
    attention = swin.ShiftedWindowAttention(4, [4, 4], [2, 2], num_heads=1).double().eval()
    x = torch.randn(1, 8, 8, 4, dtype=torch.float64)
    with torch.no_grad():
        attention.qkv.weight[:8].zero_()
        attention.qkv.bias.zero_()
        attention.relative_position_bias_table.zero_()
    expected = attention(x)
    instances = SwinCanonizer().apply(attention)
    try:
        got = attention(x)
    finally:
        for instance in instances:
            instance.remove()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    mask = shift_mask(8, 8, (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all() and (mask[3] != 0).any()


def test_the_model_is_restored_after_an_error_midway(monkeypatch):
    model, x = small_swin(v2=True), images(32)
    check_restored_after_failure(
        monkeypatch, model, x, SwinCanonizer, "features.3.1.attn", AttnLRP()
    )


@pytest.mark.parametrize("v2", [False, True])
def test_cp_lrp_conserves_relevance_without_biases(v2):
    model, x = bias_free(small_swin(v2)), images(36)
    _, relevance = explain(model, CPLRP(epsilon=TINY, stabilizer=TINY, gamma=None), x, (0, 3), 5)
    torch.testing.assert_close(relevance.sum((1, 2, 3)), torch.ones(2).double(), atol=1e-8, rtol=0)


@pytest.mark.parametrize("v2", [False, True])
def test_attnlrp_relevance_is_finite_and_of_the_right_size(v2):
    """AttnLRP does not conserve: the softmax rule (eq. 13) absorbs a share, and in V2 the
    continuous position bias (16·sigmoid(…) ≈ 8 on every score) takes its share at the Sum."""
    model, x = bias_free(small_swin(v2)), images(32)
    _, relevance = explain(model, AttnLRP(epsilon=TINY, stabilizer=TINY, gamma=None), x, (0, 3), 5)
    total = relevance.sum((1, 2, 3))
    assert torch.isfinite(relevance).all() and ((total > 0.2) & (total < 2)).all(), total


@pytest.mark.zoo  # 28 M parameters: building and three passes take 5-20 s each on 2 cores
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_composites_without_arguments_accept_torchvision_swin(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 64, 64)
    reference = model(x)
    for method in (AttnLRP, CPLRP):
        composite = method()
        composite.register(model)
        try:
            assert relative_difference(model(x), reference) < 1e-5  # float32
        finally:
            composite.remove()
    assert torch.equal(model(x), reference)
